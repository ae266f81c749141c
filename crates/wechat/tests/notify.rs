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

#[test]
fn hmac_notify_uses_its_own_sign_type() {
    let fields = with(&sample(), "sign_type", "HMAC-SHA256");
    let n = verify_notify(body(&fields, KEY, SignType::HmacSha256).as_bytes(), &pay()).unwrap();
    assert_eq!(n.total_fee, 1);
    // Declaring HMAC but signing MD5 fails, and so does an unknown algorithm.
    assert_eq!(
        verify_notify(body(&fields, KEY, SignType::Md5).as_bytes(), &pay()),
        Err(NotifyError::BadSignature)
    );
    let unknown = with(&sample(), "sign_type", "SHA1");
    assert_eq!(
        verify_notify(body(&unknown, KEY, SignType::Md5).as_bytes(), &pay()),
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
    assert!(verify_notify(doc.as_bytes(), &pay()).is_ok());
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
