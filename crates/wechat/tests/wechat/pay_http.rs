//! unifiedorder, orderquery and closeorder against a local server answering WeChat's documented
//! samples (re-signed with the test key).

use std::time::{Duration, Instant};

use crate::helpers::{Reply, Request, client_for, serve, serve_silence};
use wechat::pay::sign::{SignType, sign, verify};
use wechat::pay::xml::{self, Fields, XmlError};
use wechat::pay::{PayConfig, PayError, TradeState, UnifiedOrderRequest};

const APPID: &str = "wx2421b1c4370ec43b";
const MCH_ID: &str = "10000100";
const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn pay(sign_type: SignType) -> PayConfig {
    PayConfig {
        sign_type,
        ..PayConfig::new(APPID, MCH_ID, KEY)
    }
}

fn order() -> UnifiedOrderRequest {
    UnifiedOrderRequest {
        body: "腾讯充值中心-QQ会员充值".into(),
        out_trade_no: "20150806125346".into(),
        total_fee: 88,
        spbill_create_ip: "123.12.12.123".into(),
        notify_url: "http://www.weixin.qq.com/wxpay/pay.php".into(),
        openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
        attach: Some("深圳分店".into()),
        time_expire: Some("20091227091010".into()),
    }
}

/// Signs `fields` with `st` (adding `sign`) and wraps them as WeChat would.
fn signed(fields: &[(&str, &str)], key: &str, st: SignType) -> Reply {
    let mut all = fields.to_vec();
    let signature = sign(all.iter().copied(), key, st);
    all.push(("sign", &signature));
    Reply::new("text/plain", xml::to_xml(all))
}

const UNIFIED_OK: &[(&str, &str)] = &[
    ("return_code", "SUCCESS"),
    ("return_msg", "OK"),
    ("appid", APPID),
    ("mch_id", MCH_ID),
    ("nonce_str", "IITRi8Iabbblz1Jc"),
    ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
    ("result_code", "SUCCESS"),
    ("prepay_id", "wx201411101639507cbf6ffd8b0779950874"),
    ("trade_type", "JSAPI"),
];

fn request_fields(req: &Request) -> Fields {
    xml::parse(&req.body).expect("request is valid XML")
}

#[tokio::test]
async fn unified_order_md5() {
    let server = serve(|_| signed(UNIFIED_OK, KEY, SignType::Md5)).await;
    let res = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap();
    assert_eq!(res.prepay_id, "wx201411101639507cbf6ffd8b0779950874");
    assert_eq!(res.trade_type, "JSAPI");
    assert_eq!(res.fields["nonce_str"], "IITRi8Iabbblz1Jc");

    let requests = server.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].target, "/pay/unifiedorder");
    let f = request_fields(&requests[0]);
    assert_eq!(f["appid"], APPID);
    assert_eq!(f["mch_id"], MCH_ID);
    assert_eq!(f["trade_type"], "JSAPI");
    assert_eq!(f["total_fee"], "88");
    assert_eq!(f["openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert_eq!(f["body"], "腾讯充值中心-QQ会员充值");
    assert_eq!(f["attach"], "深圳分店");
    assert_eq!(f["time_expire"], "20091227091010");
    assert_eq!(f["nonce_str"].len(), 32);
    assert!(f["nonce_str"].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(!f.contains_key("sign_type"));
    assert!(verify(
        f.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        KEY,
        SignType::Md5,
        &f["sign"]
    ));
}

#[tokio::test]
async fn unified_order_hmac_sha256() {
    let server = serve(|_| signed(UNIFIED_OK, KEY, SignType::HmacSha256)).await;
    let mut req = order();
    req.attach = None;
    req.time_expire = None;
    let res = server
        .client()
        .unified_order(&pay(SignType::HmacSha256), &req)
        .await
        .unwrap();
    assert_eq!(res.prepay_id, "wx201411101639507cbf6ffd8b0779950874");
    let f = request_fields(&server.requests()[0]);
    assert_eq!(f["sign_type"], "HMAC-SHA256");
    assert_eq!(f["sign"].len(), 64);
    assert!(!f.contains_key("attach") && !f.contains_key("time_expire"));
    assert!(verify(
        f.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        KEY,
        SignType::HmacSha256,
        &f["sign"]
    ));
    // A response signed with MD5 does not pass an HMAC-SHA256 merchant.
    let server = serve(|_| signed(UNIFIED_OK, KEY, SignType::Md5)).await;
    let err = server
        .client()
        .unified_order(&pay(SignType::HmacSha256), &req)
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn nonces_differ_between_requests() {
    let server = serve(|_| signed(UNIFIED_OK, KEY, SignType::Md5)).await;
    let client = server.client();
    client
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap();
    client
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap();
    let r = server.requests();
    assert_ne!(
        request_fields(&r[0])["nonce_str"],
        request_fields(&r[1])["nonce_str"]
    );
}

#[tokio::test]
async fn return_code_fail() {
    let server = serve(|_| {
        Reply::new(
            "text/xml",
            "<xml><return_code><![CDATA[FAIL]]></return_code>\n<return_msg><![CDATA[签名错误]]></return_msg>\n</xml>",
        )
    })
    .await;
    let err = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PayError::Return { return_msg } if return_msg == "签名错误"),
        "{err:?}"
    );
    assert_eq!(err.err_code(), None);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn business_errors() {
    for (code, des, retryable) in [
        ("ORDERPAID", "该订单已支付", false),
        ("SYSTEMERROR", "系统错误", true),
        ("OUT_TRADE_NO_USED", "商户订单号重复", false),
        ("NOTENOUGH", "余额不足", false),
    ] {
        let server = serve(move |_| {
            signed(
                &[
                    ("return_code", "SUCCESS"),
                    ("return_msg", "OK"),
                    ("appid", APPID),
                    ("mch_id", MCH_ID),
                    ("nonce_str", "IITRi8Iabbblz1Jc"),
                    ("result_code", "FAIL"),
                    ("err_code", code),
                    ("err_code_des", des),
                ],
                KEY,
                SignType::Md5,
            )
        })
        .await;
        let err = server
            .client()
            .unified_order(&pay(SignType::Md5), &order())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PayError::Business { err_code_des, .. } if err_code_des == des),
            "{err:?}"
        );
        assert_eq!(err.err_code(), Some(code));
        assert_eq!(err.is_retryable(), retryable);
    }
}

#[tokio::test]
async fn unverifiable_responses() {
    // Signed with another key.
    let server = serve(|_| signed(UNIFIED_OK, "another-key", SignType::Md5)).await;
    let err = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::BadSignature), "{err:?}");
    // Unsigned.
    let server = serve(|_| Reply::new("text/xml", xml::to_xml(UNIFIED_OK.iter().copied()))).await;
    let err = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::BadSignature), "{err:?}");
    // A business failure must be signed too before we believe it.
    let server = serve(|_| {
        Reply::new(
            "text/xml",
            xml::to_xml([
                ("return_code", "SUCCESS"),
                ("result_code", "FAIL"),
                ("err_code", "ORDERPAID"),
                ("sign", "X"),
            ]),
        )
    })
    .await;
    let err = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn other_appid_or_merchant() {
    let mut other_app = UNIFIED_OK.to_vec();
    other_app[2] = ("appid", "wx0000000000000000");
    let server = serve(move |_| signed(&other_app, KEY, SignType::Md5)).await;
    let err = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::Mismatch("appid")), "{err:?}");

    let mut other_mch = UNIFIED_OK.to_vec();
    other_mch[3] = ("mch_id", "99999999");
    let server = serve(move |_| signed(&other_mch, KEY, SignType::Md5)).await;
    let err = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::Mismatch("mch_id")), "{err:?}");
}

#[tokio::test]
async fn missing_prepay_id() {
    let fields: Vec<_> = UNIFIED_OK
        .iter()
        .copied()
        .filter(|(k, _)| *k != "prepay_id")
        .collect();
    let server = serve(move |_| signed(&fields, KEY, SignType::Md5)).await;
    let err = server
        .client()
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::BadResponse(_)), "{err:?}");
}

#[tokio::test]
async fn bad_xml_and_http_errors() {
    let server = serve(|_| Reply::new("text/html", "<html><body>502</body></html>")).await;
    let err = server
        .client()
        .order_query(&pay(SignType::Md5), "1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PayError::Xml(XmlError::Malformed(_))),
        "{err:?}"
    );

    let server =
        serve(|_| Reply::new("text/xml", "<!DOCTYPE xml [<!ENTITY a \"b\">]><xml/>")).await;
    let err = server
        .client()
        .order_query(&pay(SignType::Md5), "1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PayError::Xml(XmlError::DoctypeNotAllowed)),
        "{err:?}"
    );

    let server = serve(|_| Reply::new("text/xml", vec![b'x'; 70 * 1024])).await;
    let err = server
        .client()
        .order_query(&pay(SignType::Md5), "1")
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::Xml(XmlError::TooLarge)), "{err:?}");

    let server = serve(|_| Reply::new("text/xml", "").status(503)).await;
    let err = server
        .client()
        .order_query(&pay(SignType::Md5), "1")
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());

    let server = serve(|_| Reply::new("text/xml", "").status(404)).await;
    let err = server
        .client()
        .order_query(&pay(SignType::Md5), "1")
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::BadResponse(_)), "{err:?}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let base = serve_silence().await;
    let client = client_for(&base, Duration::from_millis(300));
    let started = Instant::now();
    let err = client
        .unified_order(&pay(SignType::Md5), &order())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(&err, PayError::Transport(m) if m.contains("timeout")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(!format!("{err:?}").contains(KEY));
}

#[tokio::test]
async fn order_query_paid() {
    let server = serve(|_| {
        signed(
            &[
                ("return_code", "SUCCESS"),
                ("return_msg", "OK"),
                ("appid", APPID),
                ("mch_id", MCH_ID),
                ("device_info", "1000"),
                ("nonce_str", "TN55wO9Pba5yENl8"),
                ("result_code", "SUCCESS"),
                ("openid", "oUpF8uN95-Ptaags6E_roPHg7AG0"),
                ("is_subscribe", "Y"),
                ("trade_type", "JSAPI"),
                ("bank_type", "CCB_DEBIT"),
                ("total_fee", "1"),
                ("fee_type", "CNY"),
                ("transaction_id", "1008450740201411110005820873"),
                ("out_trade_no", "1415757673"),
                ("attach", "订单额外描述"),
                ("time_end", "20141111170043"),
                ("trade_state", "SUCCESS"),
            ],
            KEY,
            SignType::Md5,
        )
    })
    .await;
    let res = server
        .client()
        .order_query(&pay(SignType::Md5), "1415757673")
        .await
        .unwrap();
    assert_eq!(res.trade_state, TradeState::Success);
    assert_eq!(res.out_trade_no, "1415757673");
    assert_eq!(
        res.transaction_id.as_deref(),
        Some("1008450740201411110005820873")
    );
    assert_eq!(res.total_fee, Some(1));
    assert_eq!(res.time_end.as_deref(), Some("20141111170043"));
    assert_eq!(res.fields["bank_type"], "CCB_DEBIT");
    let r = &server.requests()[0];
    assert_eq!(r.target, "/pay/orderquery");
    assert_eq!(request_fields(r)["out_trade_no"], "1415757673");
}

fn query_reply(trade_state: &'static str) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    move |_| {
        signed(
            &[
                ("return_code", "SUCCESS"),
                ("appid", APPID),
                ("mch_id", MCH_ID),
                ("nonce_str", "n"),
                ("result_code", "SUCCESS"),
                ("out_trade_no", "A1"),
                ("trade_state", trade_state),
                ("trade_state_desc", "订单未支付"),
            ],
            KEY,
            SignType::Md5,
        )
    }
}

#[tokio::test]
async fn order_query_states() {
    for (wire, state) in [
        ("NOTPAY", TradeState::NotPay),
        ("CLOSED", TradeState::Closed),
        ("REFUND", TradeState::Refund),
        ("REVOKED", TradeState::Revoked),
        ("USERPAYING", TradeState::UserPaying),
        ("PAYERROR", TradeState::PayError),
    ] {
        let server = serve(query_reply(wire)).await;
        let res = server
            .client()
            .order_query(&pay(SignType::Md5), "A1")
            .await
            .unwrap();
        assert_eq!(res.trade_state, state);
        assert_eq!(state.as_str(), wire);
        assert_eq!(res.transaction_id, None);
        assert_eq!(res.total_fee, None);
    }
    let server = serve(query_reply("SOMETHING_NEW")).await;
    let err = server
        .client()
        .order_query(&pay(SignType::Md5), "A1")
        .await
        .unwrap_err();
    assert!(matches!(err, PayError::BadResponse(_)), "{err:?}");
}

#[tokio::test]
async fn order_query_not_found() {
    let server = serve(|_| {
        signed(
            &[
                ("return_code", "SUCCESS"),
                ("appid", APPID),
                ("mch_id", MCH_ID),
                ("nonce_str", "n"),
                ("result_code", "FAIL"),
                ("err_code", "ORDERNOTEXIST"),
                ("err_code_des", "订单不存在"),
            ],
            KEY,
            SignType::Md5,
        )
    })
    .await;
    let err = server
        .client()
        .order_query(&pay(SignType::Md5), "nope")
        .await
        .unwrap_err();
    assert_eq!(err.err_code(), Some("ORDERNOTEXIST"));
}

#[tokio::test]
async fn close_order() {
    let server = serve(|req| {
        let f = xml::parse(&req.body).unwrap();
        let (result, err_code) = if f["out_trade_no"] == "paid" {
            ("FAIL", "ORDERPAID")
        } else {
            ("SUCCESS", "")
        };
        signed(
            &[
                ("return_code", "SUCCESS"),
                ("return_msg", "OK"),
                ("appid", APPID),
                ("mch_id", MCH_ID),
                ("nonce_str", "BFK89FC6rxKCOjLX"),
                ("result_code", result),
                ("err_code", err_code),
                ("result_msg", "OK"),
            ],
            KEY,
            SignType::Md5,
        )
    })
    .await;
    let client = server.client();
    client
        .close_order(&pay(SignType::Md5), "1415983244")
        .await
        .unwrap();
    assert_eq!(server.requests()[0].target, "/pay/closeorder");
    let err = client
        .close_order(&pay(SignType::Md5), "paid")
        .await
        .unwrap_err();
    assert_eq!(err.err_code(), Some("ORDERPAID"));
}
