//! `/sandbox/pay` and the payment notify: content, signature, retry schedule, faults.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sandbox::{Config, DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY};
use serde_json::{Value, json};

const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

async fn pay(sb: &sandbox::SandboxHandle, prepay_id: &str, extra: Value) -> Value {
    let mut body = json!({ "prepay_id": prepay_id });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, order) = post_json(sb, "/sandbox/pay", body).await;
    assert_eq!(status, 200, "{order}");
    order
}

#[tokio::test]
async fn notify_content_matches_the_document() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    let mut fields = order_fields("NOTIFY-0001", "888", OPENID, &receiver.url);
    fields.insert("attach".into(), "深圳分店".into());
    let answer = pay_call(&sb, "/pay/unifiedorder", signed_xml(fields, DEV_PAY_KEY)).await;
    let order = pay(&sb, &answer["prepay_id"], json!({})).await;
    assert_eq!(order["trade_state"], "SUCCESS");
    assert_eq!(order["transaction_id"].as_str().unwrap().len(), 28);

    let bodies = receiver.wait_for(1).await;
    let notify = xml_fields(&bodies[0]);
    let names: Vec<&str> = notify.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "appid",
            "attach",
            "bank_type",
            "cash_fee",
            "fee_type",
            "is_subscribe",
            "mch_id",
            "nonce_str",
            "openid",
            "out_trade_no",
            "result_code",
            "return_code",
            "return_msg",
            "sign",
            "time_end",
            "total_fee",
            "trade_type",
            "transaction_id"
        ]
    );
    assert!(
        signature_ok(&notify, DEV_PAY_KEY, false),
        "MD5-signed like the order"
    );
    assert_eq!(notify["return_code"], "SUCCESS");
    assert_eq!(notify["result_code"], "SUCCESS");
    assert_eq!(notify["appid"], DEV_APP_ID);
    assert_eq!(notify["mch_id"], DEV_MCH_ID);
    assert_eq!(notify["openid"], OPENID);
    assert_eq!(notify["trade_type"], "JSAPI");
    assert_eq!(notify["total_fee"], "888");
    assert_eq!(notify["cash_fee"], "888");
    assert_eq!(notify["fee_type"], "CNY");
    assert_eq!(notify["is_subscribe"], "N");
    assert_eq!(notify["out_trade_no"], "NOTIFY-0001");
    assert_eq!(notify["attach"], "深圳分店");
    assert_eq!(
        notify["transaction_id"],
        order["transaction_id"].as_str().unwrap()
    );
    assert_eq!(notify["time_end"], order["time_end"].as_str().unwrap());

    let order = wait_notify_state(&sb, "NOTIFY-0001", "accepted").await;
    assert_eq!(order["notify_attempts"], 1);
    let (_, records) = get_json(&sb, "/sandbox/notifies?out_trade_no=NOTIFY-0001").await;
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (
            r["attempt"].as_u64(),
            r["copy"].as_u64(),
            r["status"].as_u64()
        ),
        (Some(1), Some(1), Some(200))
    );
    assert_eq!(r["accepted"], true);
    assert_eq!(r["response"], SUCCESS_XML);
    assert_eq!(r["request"], bodies[0].as_str());
    assert_eq!(r["url"], receiver.url.as_str());
    assert!(r["at_ms"].as_i64().unwrap() > 1_600_000_000_000);

    // No more notifies once accepted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn hmac_orders_get_hmac_notifies() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    let mut fields = order_fields("NOTIFY-HMAC", "1", OPENID, &receiver.url);
    fields.insert("sign_type".into(), "HMAC-SHA256".into());
    let answer = pay_call(&sb, "/pay/unifiedorder", signed_xml(fields, DEV_PAY_KEY)).await;
    pay(&sb, &answer["prepay_id"], json!({ "outcome": "success" })).await;
    let notify = xml_fields(&receiver.wait_for(1).await[0]);
    assert_eq!(notify["sign_type"], "HMAC-SHA256");
    assert!(signature_ok(&notify, DEV_PAY_KEY, true));
}

#[tokio::test]
async fn retries_until_success() {
    let sb = start().await;
    let receiver = Receiver::start(vec![
        Answer {
            status: 500,
            body: "oops",
            delay_ms: 0,
        },
        Answer {
            status: 200,
            body: FAIL_XML,
            delay_ms: 0,
        },
        Answer {
            status: 200,
            body: "SUCCESS",
            delay_ms: 0,
        },
        ok(),
    ])
    .await;
    let prepay = place_order(&sb, "RETRY-0001", 1, OPENID, &receiver.url).await;
    let started = Instant::now();
    pay(&sb, &prepay, json!({})).await;
    let order = wait_notify_state(&sb, "RETRY-0001", "accepted").await;
    assert_eq!(order["notify_attempts"], 4);
    // 15 + 15 + 30 seconds scaled by 0.001.
    assert!(started.elapsed() >= Duration::from_millis(60));
    let (_, records) = get_json(&sb, "/sandbox/notifies?out_trade_no=RETRY-0001").await;
    let accepted: Vec<bool> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["accepted"].as_bool().unwrap())
        .collect();
    assert_eq!(accepted, [false, false, false, true]);
    let statuses: Vec<u64> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 200, 200, 200]);
    // Every attempt is a fresh, validly signed message for the same payment.
    let bodies = receiver.received();
    let nonces: std::collections::HashSet<String> = bodies
        .iter()
        .map(|b| xml_fields(b)["nonce_str"].clone())
        .collect();
    assert_eq!(nonces.len(), 4);
    assert!(
        bodies
            .iter()
            .all(|b| signature_ok(&xml_fields(b), DEV_PAY_KEY, false))
    );
}

#[tokio::test]
async fn gives_up_after_the_whole_schedule() {
    let sb = sandbox::spawn(Config {
        notify_time_scale: 0.00001,
        ..config()
    })
    .await
    .unwrap();
    let receiver = Receiver::start(vec![Answer {
        status: 200,
        body: FAIL_XML,
        delay_ms: 0,
    }])
    .await;
    let prepay = place_order(&sb, "GIVEUP-0001", 1, OPENID, &receiver.url).await;
    pay(&sb, &prepay, json!({})).await;
    let order = wait_notify_state(&sb, "GIVEUP-0001", "gave_up").await;
    assert_eq!(
        order["notify_attempts"], 16,
        "1 + the 15 documented retries"
    );
    assert_eq!(
        sandbox::RETRY_SCHEDULE_SECS,
        [
            15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600
        ]
    );
    assert_eq!(receiver.received().len(), 16);
    // Still SUCCESS as far as WeChat is concerned.
    assert_eq!(order["trade_state"], "SUCCESS");
}

#[tokio::test]
async fn unreachable_notify_url_is_recorded() {
    let sb = sandbox::spawn(Config {
        notify_time_scale: 0.00001,
        ..config()
    })
    .await
    .unwrap();
    // Port 9 (discard) on loopback: nothing listens there.
    let prepay = place_order(&sb, "DOWN-0001", 1, OPENID, "http://127.0.0.1:9/notify").await;
    pay(&sb, &prepay, json!({})).await;
    wait_notify_state(&sb, "DOWN-0001", "gave_up").await;
    let (_, records) = get_json(&sb, "/sandbox/notifies?out_trade_no=DOWN-0001").await;
    let first = &records[0];
    assert_eq!(first["status"], Value::Null);
    assert!(!first["error"].as_str().unwrap().is_empty());
    assert_eq!(first["accepted"], false);
}

#[tokio::test]
async fn outcomes_fail_cancel_paying() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    let prepay = place_order(&sb, "OUTCOME-0001", 1, OPENID, &receiver.url).await;
    let order = pay(&sb, &prepay, json!({ "outcome": "cancel" })).await;
    assert_eq!(order["trade_state"], "NOTPAY");
    let order = pay(&sb, &prepay, json!({ "outcome": "paying" })).await;
    assert_eq!(order["trade_state"], "USERPAYING");
    let order = pay(&sb, &prepay, json!({ "outcome": "fail" })).await;
    assert_eq!(order["trade_state"], "PAYERROR");
    assert_eq!(order["notify_state"], "none");
    assert_eq!(order["transaction_id"], Value::Null);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        receiver.received().is_empty(),
        "no notify for a failed payment"
    );
    // The user tries again and pays.
    let order = pay(&sb, &prepay, json!({ "outcome": "success" })).await;
    assert_eq!(order["trade_state"], "SUCCESS");
    receiver.wait_for(1).await;
    let (status, v) = post_json(&sb, "/sandbox/pay", json!({ "prepay_id": prepay })).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (409, Some("conflict")),
        "already paid"
    );
    let (status, v) = post_json(&sb, "/sandbox/pay", json!({ "prepay_id": "wx-unknown" })).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("unknown_prepay_id"))
    );
    let (status, _) = post_json(
        &sb,
        "/sandbox/pay",
        json!({ "prepay_id": prepay, "outcome": "refund" }),
    )
    .await;
    assert_eq!(status, 400);

    let (_, paid) = get_json(&sb, "/sandbox/orders?trade_state=SUCCESS").await;
    let paid: Vec<&str> = paid
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["out_trade_no"].as_str().unwrap())
        .collect();
    assert_eq!(paid, ["OUTCOME-0001"]);
}

#[tokio::test]
async fn drop_notify_fault() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    post_json(&sb, "/sandbox/faults", json!({ "drop_notify": true })).await;
    let prepay = place_order(&sb, "DROP-0001", 1, OPENID, &receiver.url).await;
    let order = pay(&sb, &prepay, json!({})).await;
    assert_eq!(order["trade_state"], "SUCCESS");
    assert_eq!(order["notify_state"], "dropped");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(receiver.received().is_empty());
    // The payment is still visible to orderquery.
    let q = signed_xml(
        map(&[
            ("appid", DEV_APP_ID),
            ("mch_id", DEV_MCH_ID),
            ("nonce_str", "n"),
            ("out_trade_no", "DROP-0001"),
        ]),
        DEV_PAY_KEY,
    );
    assert_eq!(
        pay_call(&sb, "/pay/orderquery", q).await["trade_state"],
        "SUCCESS"
    );
}

#[tokio::test]
async fn duplicate_notify_fault_sends_concurrent_copies() {
    let sb = start().await;
    // Slow answers: the copies are in flight together.
    let receiver = Receiver::start(vec![Answer {
        status: 200,
        body: SUCCESS_XML,
        delay_ms: 100,
    }])
    .await;
    let prepay = place_order(&sb, "DUP-0001", 1, OPENID, &receiver.url).await;
    pay(&sb, &prepay, json!({ "faults": { "duplicate_notify": 3 } })).await;
    wait_notify_state(&sb, "DUP-0001", "accepted").await;
    assert_eq!(
        receiver.in_flight.lock().unwrap().1,
        3,
        "the copies were in flight together"
    );
    let bodies = receiver.received();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "the same message three times"
    );
    let (_, records) = get_json(&sb, "/sandbox/notifies?out_trade_no=DUP-0001").await;
    let mut copies: Vec<u64> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["copy"].as_u64().unwrap())
        .collect();
    copies.sort();
    assert_eq!(copies, [1, 2, 3]);
}

#[tokio::test]
async fn wrong_total_fee_and_bad_signature_faults() {
    // Slower retries (750 ms) so the fault can be cleared between two attempts.
    let sb = sandbox::spawn(Config {
        notify_time_scale: 0.05,
        ..config()
    })
    .await
    .unwrap();
    // The merchant rejects (FAIL) the first answer of each order, then accepts.
    let receiver = Receiver::start(vec![
        Answer {
            status: 200,
            body: FAIL_XML,
            delay_ms: 0,
        },
        ok(),
    ])
    .await;
    let prepay = place_order(&sb, "WRONGFEE-01", 100, OPENID, &receiver.url).await;
    post_json(
        &sb,
        "/sandbox/faults",
        json!({ "notify_wrong_total_fee": true }),
    )
    .await;
    pay(&sb, &prepay, json!({})).await;
    let first = xml_fields(&receiver.wait_for(1).await[0]);
    assert_eq!(first["total_fee"], "101");
    assert!(
        signature_ok(&first, DEV_PAY_KEY, false),
        "validly signed, wrong amount"
    );
    // Clearing the global fault: the retry carries the right amount.
    http()
        .delete(sb.url("/sandbox/faults"))
        .send()
        .await
        .unwrap();
    wait_notify_state(&sb, "WRONGFEE-01", "accepted").await;
    let second = xml_fields(&receiver.received()[1]);
    assert_eq!(second["total_fee"], "100");
    let (_, records) = get_json(&sb, "/sandbox/notifies?out_trade_no=WRONGFEE-01").await;
    assert_eq!(records[0]["faults"], json!(["wrong_total_fee"]));
    assert_eq!(records[1]["faults"], json!([]));

    // Bad signature fixed for one order through the header.
    let receiver = Receiver::start(vec![ok()]).await;
    let prepay = place_order(&sb, "BADSIGN-01", 100, OPENID, &receiver.url).await;
    let res = http()
        .post(sb.url("/sandbox/pay"))
        .header("X-Sandbox-Faults", r#"{"notify_bad_signature":true}"#)
        .json(&json!({ "prepay_id": prepay }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let notify = xml_fields(&receiver.wait_for(1).await[0]);
    assert!(!signature_ok(&notify, DEV_PAY_KEY, false));
    assert_eq!(notify["sign"].len(), 32);
    assert_eq!(notify["total_fee"], "100");
}
