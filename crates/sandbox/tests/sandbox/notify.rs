//! `/sandbox/pay` and the payment notify: content, signature, retry schedule, faults.

use std::time::{Duration, Instant};

use crate::helpers::*;
use sandbox::{Config, DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY};
use serde_json::{Value, json};

const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// The phone pays an MD5 order with correctly signed wx.requestPayment parameters.
async fn pay(sb: &sandbox::SandboxHandle, prepay_id: &str, extra: Value) -> Value {
    let body = request_payment(prepay_id, DEV_PAY_KEY, false, extra);
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
    // As WeChat writes it: total_fee plain, every other value in CDATA, fields in name order
    // (the 支付结果通知 sample; WxJava issue 1585's capture).
    assert!(
        bodies[0].starts_with("<xml><appid><![CDATA["),
        "{}",
        bodies[0]
    );
    assert!(
        bodies[0].contains("<total_fee>888</total_fee>"),
        "{}",
        bodies[0]
    );
    assert!(
        bodies[0].contains("<cash_fee><![CDATA[888]]></cash_fee>"),
        "{}",
        bodies[0]
    );
    let notify = xml_fields(&bodies[0]);
    let in_order: Vec<&str> = bodies[0]
        .split("></")
        .filter_map(|s| s.split('>').next())
        .collect();
    let mut sorted = in_order.clone();
    sorted.sort();
    assert_eq!(in_order, sorted, "fields in name order");
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

    // No more notifies once accepted: `accepted` is final (the delivery task has returned), and
    // by then exactly one request was made.
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn hmac_orders_get_hmac_notifies() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    let mut fields = order_fields("NOTIFY-HMAC", "1", OPENID, &receiver.url);
    fields.insert("sign_type".into(), "HMAC-SHA256".into());
    let answer = pay_call(&sb, "/pay/unifiedorder", signed_xml(fields, DEV_PAY_KEY)).await;
    let body = request_payment(&answer["prepay_id"], DEV_PAY_KEY, true, json!({}));
    let (status, order) = post_json(&sb, "/sandbox/pay", body).await;
    assert_eq!(status, 200, "{order}");
    let raw = receiver.wait_for(1).await[0].clone();
    let notify = xml_fields(&raw);
    // WeChat signs an HMAC order's notify with HMAC-SHA256 but sends no sign_type (WxJava
    // issue 1585, easy-swoole/pay issue 38): the merchant must know its own sign type.
    assert!(!notify.contains_key("sign_type"), "{raw}");
    assert_eq!(notify["sign"].len(), 64, "{raw}");
    assert!(signature_ok(&notify, DEV_PAY_KEY, true));
    assert!(!signature_ok(&notify, DEV_PAY_KEY, false));
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
    // The user tries again and pays.
    let order = pay(&sb, &prepay, json!({ "outcome": "success" })).await;
    assert_eq!(order["trade_state"], "SUCCESS");
    wait_notify_state(&sb, "OUTCOME-0001", "accepted").await;
    // The success notify is the first and only one the merchant got: none for the failure.
    let received = receiver.received();
    assert_eq!(received.len(), 1, "no notify for a failed payment");
    assert_eq!(
        xml_fields(&received[0])["transaction_id"],
        order["transaction_id"].as_str().unwrap()
    );
    let (status, v) = post_json(
        &sb,
        "/sandbox/pay",
        request_payment(&prepay, DEV_PAY_KEY, false, json!({})),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (409, Some("conflict")),
        "already paid"
    );
    let (status, v) = post_json(
        &sb,
        "/sandbox/pay",
        request_payment("wx-unknown", DEV_PAY_KEY, false, json!({})),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("unknown_prepay_id"))
    );
    let (status, _) = post_json(
        &sb,
        "/sandbox/pay",
        request_payment(&prepay, DEV_PAY_KEY, false, json!({ "outcome": "refund" })),
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
    // A later order's notify to the same merchant is the first one it gets: none was sent for
    // the dropped one in the meantime.
    post_json(&sb, "/sandbox/faults", json!({})).await;
    let later = place_order(&sb, "DROP-0002", 1, OPENID, &receiver.url).await;
    pay(&sb, &later, json!({})).await;
    wait_notify_state(&sb, "DROP-0002", "accepted").await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(xml_fields(&received[0])["out_trade_no"], "DROP-0002");
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
        .json(&request_payment(&prepay, DEV_PAY_KEY, false, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let notify = xml_fields(&receiver.wait_for(1).await[0]);
    assert!(!signature_ok(&notify, DEV_PAY_KEY, false));
    assert_eq!(notify["sign"].len(), 32);
    assert_eq!(notify["total_fee"], "100");
}

/// `/sandbox/pay` is the phone's `wx.requestPayment`: WeChat checks the paySign (and that
/// signType and appId match the order) before it shows the sheet, and a mismatch ends in the
/// fail callback — no payment, no notify.
#[tokio::test]
async fn a_wrong_pay_sign_is_refused_like_request_payment_fail() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    let prepay = place_order(&sb, "PAYSIGN-01", 100, OPENID, &receiver.url).await;
    let good = request_payment(&prepay, DEV_PAY_KEY, false, json!({}));
    let with = |name: &str, value: Value| {
        let mut body = good.clone();
        body[name] = value;
        body
    };
    let refused = [
        (
            "signed with another key",
            request_payment(
                &prepay,
                "another-key-00000000000000000000",
                false,
                json!({}),
            ),
        ),
        (
            "lower-case paySign",
            with(
                "paySign",
                json!(good["paySign"].as_str().unwrap().to_lowercase()),
            ),
        ),
        (
            "timeStamp changed after signing",
            with("timeStamp", json!("1700000001")),
        ),
        (
            "HMAC-SHA256 for an MD5 order",
            request_payment(&prepay, DEV_PAY_KEY, true, json!({})),
        ),
        ("appId of another app", with("appId", json!(APP2_ID))),
        ("no paySign", with("paySign", json!(""))),
        ("no signType", with("signType", json!(""))),
    ];
    for (what, body) in refused {
        let (status, answer) = post_json(&sb, "/sandbox/pay", body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("request_payment_fail")),
            "{what}: {answer}"
        );
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("requestPayment:fail")),
            "{what}: {answer}"
        );
    }
    let (status, answer) =
        post_json(&sb, "/sandbox/pay", with("package", json!(prepay.clone()))).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("request_payment_fail")),
        "{answer}"
    );
    // The old shape (a bare prepay_id) is not the phone's and is refused.
    let (status, _) = post_json(&sb, "/sandbox/pay", json!({ "prepay_id": prepay })).await;
    assert_eq!(status, 400);

    // Nothing happened: the order is unpaid and nothing was (or will be) notified.
    let (_, order) = get_json(&sb, "/sandbox/orders/PAYSIGN-01").await;
    assert_eq!(
        (
            order["trade_state"].as_str(),
            order["notify_state"].as_str()
        ),
        (Some("NOTPAY"), Some("none")),
        "{order}"
    );
    assert!(receiver.received().is_empty());

    // The genuine parameters pay.
    let (status, order) = post_json(&sb, "/sandbox/pay", good).await;
    assert_eq!(
        (status, order["trade_state"].as_str()),
        (200, Some("SUCCESS")),
        "{order}"
    );
    receiver.wait_for(1).await;
}
