//! Payment notifications: accepted when authentic, rejected otherwise.

use wechat::pay::sign::{SignType, sign};
use wechat::pay::xml::{self, XmlError};
use wechat::pay::{NotifyError, PayConfig, notify_reply_fail, notify_reply_success, verify_notify};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn pay() -> PayConfig {
    PayConfig::new("wx2421b1c4370ec43b", "10000100", KEY)
}

/// The notify sample of WeChat Pay's "支付结果通知" document (its sign recomputed with KEY).
fn sample() -> Vec<(&'static str, String)> {
    [
        ("appid", "wx2421b1c4370ec43b"),
        ("attach", "支付测试"),
        ("bank_type", "CFT"),
        ("fee_type", "CNY"),
        ("is_subscribe", "Y"),
        ("mch_id", "10000100"),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("out_trade_no", "1409811653"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("sub_mch_id", "10000100"),
        ("time_end", "20140903131540"),
        ("total_fee", "1"),
        ("coupon_fee", "10"),
        ("coupon_count", "1"),
        ("coupon_type", "CASH"),
        ("coupon_id", "10000"),
        ("coupon_fee_0", "100"),
        ("trade_type", "JSAPI"),
        ("transaction_id", "1004400740201409030005092168"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

fn body(fields: &[(&str, String)], key: &str, st: SignType) -> String {
    let mut all: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let signature = sign(all.iter().copied(), key, st);
    all.push(("sign", &signature));
    xml::to_xml(all)
}

fn with(
    fields: &[(&'static str, String)],
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut out: Vec<_> = fields.iter().filter(|(k, _)| *k != name).cloned().collect();
    out.push((name, value.to_owned()));
    out
}

#[test]
fn valid_notify_is_accepted() {
    let n = verify_notify(body(&sample(), KEY, SignType::Md5).as_bytes(), &pay()).unwrap();
    assert_eq!(n.out_trade_no, "1409811653");
    assert_eq!(n.transaction_id, "1004400740201409030005092168");
    assert_eq!(n.total_fee, 1);
    assert_eq!(n.openid, "oUpF8uMEb4qRXf22hE3X68TekukE");
    assert_eq!(n.time_end, "20140903131540");
    assert_eq!(n.attach.as_deref(), Some("支付测试"));
    assert!(n.is_success());
    assert_eq!(n.fields["bank_type"], "CFT");
}

fn pay_with(sign_type: SignType) -> PayConfig {
    PayConfig { sign_type, ..pay() }
}

/// A genuine HMAC-SHA256 notify as WeChat sends it: **no `sign_type` field**, a 64-hex `sign`,
/// plain and CDATA values mixed. Shape from the notify merchants posted in
/// <https://github.com/binarywang/WxJava/issues/1585> (also
/// <https://github.com/easy-swoole/pay/issues/38>), with our test appid, mch_id and KEY. The
/// signature was made outside this crate, over the documented string-to-sign (non-empty fields
/// but `sign`, sorted, `k=v&…&key=KEY`):
///
/// ```sh
/// printf '%s' 'appid=wx2421b1c4370ec43b&bank_type=OTHERS&cash_fee=1&fee_type=CNY&is_subscribe=N&mch_id=10000100&nonce_str=1590477937689&openid=oUpF8uMEb4qRXf22hE3X68TekukE&out_trade_no=20052615250005&result_code=SUCCESS&return_code=SUCCESS&time_end=20200526152550&total_fee=1&trade_type=JSAPI&transaction_id=4200000540202005267407409907&key=192006250b4c09247ec02edce69f6a2d' \
///   | openssl dgst -sha256 -hmac 192006250b4c09247ec02edce69f6a2d | tr a-f A-F
/// ```
const HMAC_NOTIFY_WITHOUT_SIGN_TYPE: &str = "<xml><appid><![CDATA[wx2421b1c4370ec43b]]></appid>
<bank_type><![CDATA[OTHERS]]></bank_type>
<cash_fee><![CDATA[1]]></cash_fee>
<fee_type><![CDATA[CNY]]></fee_type>
<is_subscribe><![CDATA[N]]></is_subscribe>
<mch_id><![CDATA[10000100]]></mch_id>
<nonce_str><![CDATA[1590477937689]]></nonce_str>
<openid><![CDATA[oUpF8uMEb4qRXf22hE3X68TekukE]]></openid>
<out_trade_no><![CDATA[20052615250005]]></out_trade_no>
<result_code><![CDATA[SUCCESS]]></result_code>
<return_code><![CDATA[SUCCESS]]></return_code>
<sign><![CDATA[823FD7964C579F9FAC2D645169FBBEC821DAC770AEBFBEE31C45A7A76A51C8F6]]></sign>
<time_end><![CDATA[20200526152550]]></time_end>
<total_fee>1</total_fee>
<trade_type><![CDATA[JSAPI]]></trade_type>
<transaction_id><![CDATA[4200000540202005267407409907]]></transaction_id>
</xml>";

#[test]
fn hmac_notify_without_sign_type_verifies_with_the_orders_algorithm() {
    let n = verify_notify(
        HMAC_NOTIFY_WITHOUT_SIGN_TYPE.as_bytes(),
        &pay_with(SignType::HmacSha256),
    )
    .unwrap();
    assert_eq!(n.transaction_id, "4200000540202005267407409907");
    assert_eq!(n.total_fee, 1);
    assert!(n.is_success());
    // The same bytes are not an MD5 notify: the absent field must not mean MD5 for an HMAC
    // order, nor HMAC for an MD5 one.
    assert_eq!(
        verify_notify(HMAC_NOTIFY_WITHOUT_SIGN_TYPE.as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
}

#[test]
fn the_notify_cannot_choose_the_algorithm() {
    // An MD5-signed notify declaring MD5, for an order placed with HMAC-SHA256: a downgrade.
    let md5 = with(&sample(), "sign_type", "MD5");
    let body_md5 = body(&md5, KEY, SignType::Md5);
    assert_eq!(
        verify_notify(body_md5.as_bytes(), &pay())
            .unwrap()
            .out_trade_no,
        "1409811653"
    );
    assert_eq!(
        verify_notify(body_md5.as_bytes(), &pay_with(SignType::HmacSha256)),
        Err(NotifyError::BadSignature)
    );
    // An undeclared MD5 signature for an HMAC order, too.
    assert_eq!(
        verify_notify(
            body(&sample(), KEY, SignType::Md5).as_bytes(),
            &pay_with(SignType::HmacSha256)
        ),
        Err(NotifyError::BadSignature)
    );
    // A declared HMAC-SHA256 that matches the order verifies; declaring it on an MD5 order
    // does not switch the check.
    let hmac = with(&sample(), "sign_type", "HMAC-SHA256");
    let body_hmac = body(&hmac, KEY, SignType::HmacSha256);
    assert_eq!(
        verify_notify(body_hmac.as_bytes(), &pay_with(SignType::HmacSha256))
            .unwrap()
            .out_trade_no,
        "1409811653"
    );
    assert_eq!(
        verify_notify(body_hmac.as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
    // An unknown algorithm.
    let unknown = with(&sample(), "sign_type", "SHA1");
    assert_eq!(
        verify_notify(body(&unknown, KEY, SignType::Md5).as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
}

/// A payment that failed (`result_code` FAIL, `err_code` NOTENOUGH): signed, but without
/// transaction_id, total_fee, openid or time_end (the notify document marks them required,
/// WeChat leaves them out when nothing was paid). Signature made outside this crate:
///
/// ```sh
/// printf '%s' 'appid=wx2421b1c4370ec43b&err_code=NOTENOUGH&err_code_des=余额不足&mch_id=10000100&nonce_str=5d2b6c2a8db53831f7eda20af46e531c&out_trade_no=1409811653&result_code=FAIL&return_code=SUCCESS&trade_type=JSAPI&key=192006250b4c09247ec02edce69f6a2d' \
///   | openssl dgst -md5 | tr a-f A-F
/// ```
const FAILED_PAYMENT_NOTIFY: &str = "<xml><appid><![CDATA[wx2421b1c4370ec43b]]></appid>
<err_code><![CDATA[NOTENOUGH]]></err_code>
<err_code_des><![CDATA[余额不足]]></err_code_des>
<mch_id>10000100</mch_id>
<nonce_str><![CDATA[5d2b6c2a8db53831f7eda20af46e531c]]></nonce_str>
<out_trade_no><![CDATA[1409811653]]></out_trade_no>
<result_code><![CDATA[FAIL]]></result_code>
<return_code><![CDATA[SUCCESS]]></return_code>
<sign><![CDATA[433FB5331B34D300448A4BDED8DFDCE6]]></sign>
<trade_type><![CDATA[JSAPI]]></trade_type>
</xml>";

#[test]
fn failed_payment_notify_is_read_not_judged_malformed() {
    let n = verify_notify(FAILED_PAYMENT_NOTIFY.as_bytes(), &pay()).unwrap();
    assert!(!n.is_success());
    assert_eq!(n.result_code, "FAIL");
    assert_eq!(n.out_trade_no, "1409811653");
    assert_eq!((n.transaction_id.as_str(), n.total_fee), ("", 0));
    assert_eq!(n.fields["err_code"], "NOTENOUGH");
    // Still authenticated: a tampered one fails.
    let forged = FAILED_PAYMENT_NOTIFY.replace("NOTENOUGH", "USERPAYING");
    assert_eq!(
        verify_notify(forged.as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
}

#[test]
fn plain_text_notify_as_wechat_may_send_it() {
    let fields = sample();
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let signature = sign(pairs.iter().copied(), KEY, SignType::Md5);
    let mut doc = String::from("<xml>\n");
    for (k, v) in &pairs {
        doc.push_str(&format!("  <{k}>{v}</{k}>\n"));
    }
    doc.push_str(&format!("  <sign>{signature}</sign>\n</xml>"));
    let notify = verify_notify(doc.as_bytes(), &pay()).unwrap();
    assert_eq!(
        (
            notify.out_trade_no.as_str(),
            notify.total_fee,
            notify.openid.as_str()
        ),
        ("1409811653", 1, "oUpF8uMEb4qRXf22hE3X68TekukE")
    );
}

#[test]
fn forged_signature_is_rejected() {
    let good = body(&sample(), KEY, SignType::Md5);
    // Amount changed after signing.
    let forged = good.replace("<total_fee><![CDATA[1]]>", "<total_fee><![CDATA[100]]>");
    assert_ne!(forged, good);
    assert_eq!(
        verify_notify(forged.as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
    // Signed with another key.
    let other = body(&sample(), "00000000000000000000000000000000", SignType::Md5);
    assert_eq!(
        verify_notify(other.as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
    // Lowercase hex of the right signature.
    let fields = sample();
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let lower = sign(pairs.iter().copied(), KEY, SignType::Md5).to_lowercase();
    let mut all = pairs.clone();
    all.push(("sign", &lower));
    assert_eq!(
        verify_notify(xml::to_xml(all).as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
    // No signature at all.
    assert_eq!(
        verify_notify(xml::to_xml(pairs).as_bytes(), &pay()),
        Err(NotifyError::MissingField("sign"))
    );
}

#[test]
fn other_appid_or_merchant_is_rejected() {
    let fields = with(&sample(), "appid", "wx0000000000000000");
    assert_eq!(
        verify_notify(body(&fields, KEY, SignType::Md5).as_bytes(), &pay()),
        Err(NotifyError::AppIdMismatch)
    );
    let fields = with(&sample(), "mch_id", "99999999");
    assert_eq!(
        verify_notify(body(&fields, KEY, SignType::Md5).as_bytes(), &pay()),
        Err(NotifyError::MchIdMismatch)
    );
}

#[test]
fn missing_fields_are_rejected() {
    for name in [
        "appid",
        "mch_id",
        "out_trade_no",
        "transaction_id",
        "openid",
        "time_end",
        "result_code",
        "return_code",
    ] {
        let fields: Vec<_> = sample().into_iter().filter(|(k, _)| *k != name).collect();
        assert_eq!(
            verify_notify(body(&fields, KEY, SignType::Md5).as_bytes(), &pay()),
            Err(NotifyError::MissingField(name)),
            "{name}"
        );
    }
    let fields: Vec<_> = sample()
        .into_iter()
        .filter(|(k, _)| *k != "total_fee")
        .collect();
    assert_eq!(
        verify_notify(body(&fields, KEY, SignType::Md5).as_bytes(), &pay()),
        Err(NotifyError::MissingField("total_fee"))
    );
}

#[test]
fn bad_amounts_are_rejected() {
    for fee in ["0", "-1", "1.00", "abc", "99999999999999999999"] {
        let fields = with(&sample(), "total_fee", fee);
        assert_eq!(
            verify_notify(body(&fields, KEY, SignType::Md5).as_bytes(), &pay()),
            Err(NotifyError::BadAmount),
            "{fee}"
        );
    }
}

#[test]
fn return_code_fail_is_rejected() {
    let doc = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[签名失败]]></return_msg></xml>";
    assert_eq!(
        verify_notify(doc.as_bytes(), &pay()),
        Err(NotifyError::ReturnFail("签名失败".into()))
    );
}

#[test]
fn bad_xml_is_rejected() {
    assert_eq!(
        verify_notify(b"<!DOCTYPE x><xml/>", &pay()),
        Err(NotifyError::Xml(XmlError::DoctypeNotAllowed))
    );
    assert!(matches!(
        verify_notify(b"not xml", &pay()),
        Err(NotifyError::Xml(_))
    ));
}

#[test]
fn replies() {
    assert_eq!(
        notify_reply_success(),
        "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    );
    let fail = xml::parse(notify_reply_fail("db down ]]> <x>").as_bytes()).unwrap();
    assert_eq!(fail["return_code"], "FAIL");
    assert_eq!(fail["return_msg"], "db down ]]> <x>");
}

#[test]
fn pay_config_debug_redacts_the_key() {
    let shown = format!("{:?}", pay());
    assert!(!shown.contains(KEY));
    assert!(shown.contains("10000100"));
}
