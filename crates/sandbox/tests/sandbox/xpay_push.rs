//! Virtual payment's delivery push and its faults, at a push receiver of the test's own: a
//! payment held open (the console's pending order) and then paid or failed, and the push
//! `duplicated` (copies at once), `lost` (never sent) and `late` (delayed), each from the
//! global fault set or the payment's `x-sandbox-faults` header.

use std::time::{Duration, Instant};

use sandbox::{
    DEV_APP_ID, DEV_APP_SECRET, SandboxHandle,
    xpay::{DEV_XPAY_OFFER_ID, DEV_XPAY_SANDBOX_APP_KEY},
};
use serde_json::{Value, json};

use crate::helpers::{Answer, Receiver, config, get_json, http, login, post_json};

/// hex(HMAC-SHA256(key, msg)), written here from RFC 2104 over sha2 (not the sandbox's code;
/// xpay.rs checks the same rule against openssl vectors).
fn hmac_hex(key: &str, msg: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A sandbox pushing (plaintext JSON) to a receiver that answers "success" after `delay_ms`.
async fn start(delay_ms: u64) -> (SandboxHandle, Receiver) {
    let rx = Receiver::start(vec![Answer {
        status: 200,
        body: "success",
        delay_ms,
    }])
    .await;
    let mut c = config();
    c.shipping.push_url = Some(rx.url.clone());
    c.shipping.push_token = "xpayPushTestToken".into();
    c.shipping.push_mode = "plaintext".into();
    let sb = sandbox::spawn(c).await.expect("sandbox starts");
    (sb, rx)
}

/// The phone's `wx.requestVirtualPayment` body for a new order, correctly signed.
async fn sheet(sb: &SandboxHandle, out_trade_no: &str) -> Value {
    let (openid, session_key, _) = login(sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let data = json!({"offerId": DEV_XPAY_OFFER_ID, "buyQuantity": 1, "env": 1,
        "currencyType": "CNY", "platform": "android", "productId": "vip_month",
        "goodsPrice": 3000, "outTradeNo": out_trade_no, "attach": ""})
    .to_string();
    json!({"openid": openid, "mode": "short_series_goods",
        "paySig": hmac_hex(DEV_XPAY_SANDBOX_APP_KEY, &format!("requestVirtualPayment&{data}")),
        "signature": hmac_hex(&session_key, &data), "signData": data})
}

async fn pay_with_header(sb: &SandboxHandle, body: &Value, faults: Value) -> Value {
    http()
        .post(sb.url("/sandbox/xpay/pay"))
        .header(sandbox::FAULT_HEADER, faults.to_string())
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The sandbox's finished pushes of `wx_order_id`.
async fn records(sb: &SandboxHandle, wx_order_id: &str) -> Vec<Value> {
    let (_, all) = get_json(sb, "/sandbox/shipping").await;
    all["pushes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["transaction_id"] == wx_order_id)
        .cloned()
        .collect()
}

async fn wait_records(sb: &SandboxHandle, wx_order_id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = records(sb, wx_order_id).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn order(sb: &SandboxHandle, out_trade_no: &str) -> Value {
    let (_, all) = get_json(sb, "/sandbox/xpay/orders").await;
    all["orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["out_trade_no"] == out_trade_no)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_held_payment_is_failed_then_paid_and_pushed_once() {
    let (sb, rx) = start(0).await;
    let mut body = sheet(&sb, "xpayhold0001").await;
    body["hold"] = json!(true);
    let (_, held) = post_json(&sb, "/sandbox/xpay/pay", body).await;
    assert_eq!(held["errcode"], 0, "{held}");
    assert_eq!(held["status"], 1, "the sheet is open, nothing paid");
    // Failing it pays nothing (the order stays unpaid; the user may try again).
    let (status, failed) =
        post_json(&sb, "/sandbox/xpay/orders/xpayhold0001/fail", json!({})).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["status"], 1);
    assert_eq!(failed["failed"], true);
    let (status, _) = post_json(&sb, "/sandbox/xpay/orders/nosuchorder/pay", json!({})).await;
    assert_eq!(status, 409);
    // The user pays after all: paid, one push, answered "success": delivered.
    let (status, paid) = post_json(&sb, "/sandbox/xpay/orders/xpayhold0001/pay", json!({})).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], 2);
    let wx_order_id = paid["wx_order_id"].as_str().unwrap();
    let sent = wait_records(&sb, wx_order_id, 1).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["outcome"], "success");
    let push: Value = serde_json::from_str(&rx.received()[0]).unwrap();
    assert_eq!(push["Event"], "xpay_goods_deliver_notify");
    assert_eq!(push["OutTradeNo"], "xpayhold0001");
    assert_eq!(push["GoodsInfo"]["ActualPrice"], 3000);
    assert_eq!(order(&sb, "xpayhold0001").await["status"], 4, "delivered");
    // Paid orders are no longer pending.
    let (status, _) = post_json(&sb, "/sandbox/xpay/orders/xpayhold0001/pay", json!({})).await;
    assert_eq!(status, 409);
    let (status, _) = post_json(&sb, "/sandbox/xpay/orders/xpayhold0001/fail", json!({})).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn a_duplicated_push_is_sent_n_times_at_once() {
    // The receiver answers after 300 ms, so copies sent at once overlap there.
    let (sb, rx) = start(300).await;
    let body = sheet(&sb, "xpaydup0001").await;
    let paid = pay_with_header(&sb, &body, json!({"xpay_push_duplicated": 3})).await;
    assert_eq!(paid["errcode"], 0, "{paid}");
    let sent = wait_records(&sb, paid["wx_order_id"].as_str().unwrap(), 3).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.iter().all(|p| p["outcome"] == "success"));
    assert_eq!(rx.received().len(), 3);
    let bodies: Vec<Value> = rx
        .received()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "the same push three times"
    );
    assert!(
        rx.in_flight.lock().unwrap().1 >= 2,
        "copies sent concurrently"
    );
}

#[tokio::test]
async fn a_lost_push_is_never_sent_and_a_late_one_waits() {
    let (sb, rx) = start(0).await;
    // Lost, from the global set: paid at WeChat, recorded as never sent.
    let (status, _) = post_json(&sb, "/sandbox/faults", json!({"xpay_push_lost": true})).await;
    assert_eq!(status, 200);
    let (_, paid) = post_json(&sb, "/sandbox/xpay/pay", sheet(&sb, "xpaylost0001").await).await;
    assert_eq!(paid["errcode"], 0, "{paid}");
    let lost = wait_records(&sb, paid["wx_order_id"].as_str().unwrap(), 1).await;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["attempts"], 0);
    assert!(
        lost[0]["outcome"].as_str().unwrap().starts_with("lost"),
        "{lost:?}"
    );
    assert_eq!(
        order(&sb, "xpaylost0001").await["status"],
        2,
        "paid, not delivered"
    );
    let (status, _) = post_json(&sb, "/sandbox/faults", json!({})).await;
    assert_eq!(status, 200);

    // Late, from the header: the push arrives no sooner than asked.
    let body = sheet(&sb, "xpaylate0001").await;
    let started = Instant::now();
    let paid = pay_with_header(&sb, &body, json!({"xpay_push_late_ms": 700})).await;
    assert_eq!(paid["errcode"], 0, "{paid}");
    let got = rx.wait_for(1).await;
    assert!(started.elapsed() >= Duration::from_millis(700));
    let push: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(
        push["OutTradeNo"], "xpaylate0001",
        "the lost one never came"
    );
    let sent = wait_records(&sb, paid["wx_order_id"].as_str().unwrap(), 1).await;
    assert_eq!(sent[0]["outcome"], "success");
}

#[tokio::test]
async fn push_faults_are_validated() {
    let (sb, _rx) = start(0).await;
    let (status, _) = post_json(&sb, "/sandbox/faults", json!({"xpay_push_duplicated": 99})).await;
    assert_eq!(status, 400);
    let body = sheet(&sb, "xpaybad0001").await;
    let answer = pay_with_header(&sb, &body, json!({"xpay_push_late_ms": 999_999})).await;
    assert_ne!(answer["errcode"], 0, "{answer}");
    assert_eq!(order(&sb, "xpaybad0001").await, Value::Null, "nothing paid");
}
