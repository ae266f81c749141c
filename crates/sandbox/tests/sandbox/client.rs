//! The real client (`crates/wechat`) against the sandbox: log in, decrypt a profile, place an
//! order, receive and verify the notify, query the order.

use std::sync::{Arc, Mutex};

use crate::helpers::*;
use sandbox::{DEV_APP_ID, DEV_APP_SECRET, DEV_MCH_ID, DEV_PAY_KEY};
use serde_json::json;
use wechat::{
    Code2SessionError, WechatClient, WechatConfig,
    pay::{
        PayConfig, PayNotify, SignType, TradeState, UnifiedOrderRequest, notify_reply_fail,
        notify_reply_success, verify_notify,
    },
};

/// A merchant notify endpoint that verifies with `wechat::pay::verify_notify`.
struct VerifyingReceiver {
    url: String,
    verified: Arc<Mutex<Vec<PayNotify>>>,
    rejected: Arc<Mutex<Vec<String>>>,
}

impl VerifyingReceiver {
    async fn start(pay: PayConfig) -> Self {
        let verified = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(Mutex::new(Vec::new()));
        let (v, r) = (verified.clone(), rejected.clone());
        let server =
            TestServer::start_with(move |request| match verify_notify(&request.body, &pay) {
                Ok(notify) => {
                    v.lock().unwrap().push(notify);
                    wxmp_testkit::http::Response::new("text/plain", notify_reply_success())
                }
                Err(e) => {
                    r.lock().unwrap().push(e.to_string());
                    wxmp_testkit::http::Response::new(
                        "text/plain",
                        notify_reply_fail(&e.to_string()),
                    )
                }
            })
            .await;
        Self {
            url: server.url("/pay/notify"),
            verified,
            rejected,
        }
    }

    async fn wait_verified(&self) -> PayNotify {
        for _ in 0..500 {
            if let Some(n) = self.verified.lock().unwrap().first() {
                return n.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "no verified notify; rejected: {:?}",
            self.rejected.lock().unwrap()
        );
    }
}

fn client(base: &str) -> WechatClient {
    WechatClient::new(WechatConfig {
        api_base: base.to_owned(),
        pay_base: base.to_owned(),
        ..WechatConfig::default()
    })
    .unwrap()
}

async fn full_flow(sign_type: SignType, out_trade_no: &str) {
    let sb = start().await;
    let client = client(&sb.base_url);

    // Log in.
    let (_, code) = post_json(&sb, "/sandbox/login-code", json!({})).await;
    let code = code["code"].as_str().unwrap();
    let session = client
        .code2session(DEV_APP_ID, DEV_APP_SECRET, code)
        .await
        .unwrap();
    assert!(session.unionid.is_some());
    assert!(matches!(
        client.code2session(DEV_APP_ID, DEV_APP_SECRET, code).await,
        Err(Code2SessionError::CodeUsed)
    ));
    assert!(matches!(
        client
            .code2session(DEV_APP_ID, DEV_APP_SECRET, "unknown")
            .await,
        Err(Code2SessionError::InvalidCode)
    ));

    // Decrypt a profile with the session_key the client got.
    let profile = json!({ "nickName": "小明", "gender": 1, "language": "zh_CN", "city": "Shenzhen", "province": "Guangdong", "country": "CN", "avatarUrl": "https://example.com/a.png" });
    let (status, data) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": session.openid, "profile": profile }),
    )
    .await;
    assert_eq!(status, 200);
    let (enc, iv, raw, sig) = (
        data["encryptedData"].as_str().unwrap(),
        data["iv"].as_str().unwrap(),
        data["rawData"].as_str().unwrap(),
        data["signature"].as_str().unwrap(),
    );
    let info: wechat::crypto::UserInfo =
        wechat::crypto::decrypt_typed(&session.session_key, enc, iv, DEV_APP_ID).unwrap();
    assert_eq!(info.nick_name, "小明");
    assert_eq!(info.open_id.as_deref(), Some(session.openid.as_str()));
    assert_eq!(info.union_id, session.unionid);
    wechat::crypto::verify_raw_data_signature(raw, &session.session_key, sig).unwrap();
    let (status, phone) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": session.openid, "kind": "phone", "phone": "13800138000" }),
    )
    .await;
    assert_eq!(status, 200);
    let phone: wechat::crypto::PhoneNumber = wechat::crypto::decrypt_typed(
        &session.session_key,
        phone["encryptedData"].as_str().unwrap(),
        phone["iv"].as_str().unwrap(),
        DEV_APP_ID,
    )
    .unwrap();
    assert_eq!(phone.pure_phone_number, "13800138000");

    // Place an order and pay it.
    let pay = PayConfig {
        sign_type,
        ..PayConfig::new(DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY)
    };
    let receiver = VerifyingReceiver::start(pay.clone()).await;
    let request = UnifiedOrderRequest {
        body: "wxmp-T恤".into(),
        out_trade_no: out_trade_no.into(),
        total_fee: 1999,
        spbill_create_ip: "127.0.0.1".into(),
        notify_url: receiver.url.clone(),
        openid: session.openid.clone(),
        attach: Some("coupon=none".into()),
        ..UnifiedOrderRequest::default()
    };
    let prepay = client.unified_order(&pay, &request).await.unwrap();
    assert_eq!(prepay.trade_type, "JSAPI");
    let again = client.unified_order(&pay, &request).await.unwrap();
    assert_eq!(
        again.prepay_id, prepay.prepay_id,
        "a retried unifiedorder gets the same prepay_id"
    );
    let params =
        wechat::pay::request_payment_params(&pay, &prepay.prepay_id, 1_700_000_000, "nonce");
    assert_eq!(params.package, format!("prepay_id={}", prepay.prepay_id));

    let before = client.order_query(&pay, out_trade_no).await.unwrap();
    assert_eq!(before.trade_state, TradeState::NotPay);

    // The phone pays with the parameters the library signed: the sandbox checks its paySign
    // with its own code.
    let (status, answer) =
        post_json(&sb, "/sandbox/pay", serde_json::to_value(&params).unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    let notify = receiver.wait_verified().await;
    assert!(notify.is_success());
    assert_eq!(notify.out_trade_no, out_trade_no);
    assert_eq!(notify.total_fee, 1999);
    assert_eq!(notify.openid, session.openid);
    assert_eq!(notify.attach.as_deref(), Some("coupon=none"));
    wait_notify_state(&sb, out_trade_no, "accepted").await;

    let after = client.order_query(&pay, out_trade_no).await.unwrap();
    assert_eq!(after.trade_state, TradeState::Success);
    assert_eq!(after.total_fee, Some(1999));
    assert_eq!(
        after.transaction_id.as_deref(),
        Some(notify.transaction_id.as_str())
    );
    let err = client.close_order(&pay, out_trade_no).await.unwrap_err();
    assert_eq!(err.err_code(), Some("ORDERPAID"));
}

#[tokio::test]
async fn wechat_client_md5_flow() {
    full_flow(SignType::Md5, "CLIENT-MD5-0001").await;
}

/// The sandbox's HMAC-SHA256 notify carries no `sign_type`, as WeChat's (WxJava issue 1585,
/// easy-swoole/pay issue 38); the library must verify it with the merchant's sign type.
#[tokio::test]
async fn wechat_client_hmac_flow() {
    full_flow(SignType::HmacSha256, "CLIENT-HMAC-0001").await;
}

#[tokio::test]
async fn wechat_client_rejects_faulty_notifies() {
    let sb = start().await;
    let client = client(&sb.base_url);
    let pay = PayConfig::new(DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY);
    let receiver = VerifyingReceiver::start(pay.clone()).await;
    let order = |no: &str| UnifiedOrderRequest {
        body: "x".into(),
        out_trade_no: no.into(),
        total_fee: 1,
        spbill_create_ip: "127.0.0.1".into(),
        notify_url: receiver.url.clone(),
        openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
        ..UnifiedOrderRequest::default()
    };
    let prepay = client
        .unified_order(&pay, &order("FORGED-0001"))
        .await
        .unwrap();
    let mut body = serde_json::to_value(wechat::pay::request_payment_params(
        &pay,
        &prepay.prepay_id,
        1_700_000_000,
        "nonce",
    ))
    .unwrap();
    body["faults"] = json!({ "notify_bad_signature": true });
    let (status, answer) = post_json(&sb, "/sandbox/pay", body).await;
    assert_eq!(status, 200, "{answer}");
    for _ in 0..200 {
        if !receiver.rejected.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(receiver.rejected.lock().unwrap()[0].contains("signature"));
    assert!(receiver.verified.lock().unwrap().is_empty());

    // SYSTEMERROR surfaces as a business error with that err_code.
    post_json(
        &sb,
        "/sandbox/faults",
        json!({ "pay_system_error": true, "times": 1 }),
    )
    .await;
    let err = client
        .unified_order(&pay, &order("SYSERR-0001"))
        .await
        .unwrap_err();
    assert_eq!(err.err_code(), Some("SYSTEMERROR"));
    // A 503 is an error the client may retry.
    post_json(
        &sb,
        "/sandbox/faults",
        json!({ "http_status": 503, "times": 1 }),
    )
    .await;
    let err = client
        .unified_order(&pay, &order("SYSERR-0001"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let placed = client
        .unified_order(&pay, &order("SYSERR-0001"))
        .await
        .unwrap();
    assert!(placed.prepay_id.starts_with("wx"), "{}", placed.prepay_id);
    assert_eq!(placed.trade_type, "JSAPI");
}
