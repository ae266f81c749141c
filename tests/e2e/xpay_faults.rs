//! Virtual payment's delivery push as merchants meet it (the sandbox's push faults): sent
//! several times at once, lost (the reconciler's `query_order` repairs the order), and late
//! (after that repair). Whatever WeChat does, the order is PAID once with one ORDER_PAID.
//! The stack sells `vip_month` as `wxmp up` does, with the reconciler asking every second.

use std::time::Duration;

use serde_json::{Value, json};
use wxmp::stack::DEMO_XPAY_PRODUCT;
use wxmp_tests::{Backend, TestStack, eventually, on_both_backends};

async fn start(backend: Backend) -> TestStack {
    TestStack::start_with(backend, |o| {
        o.sell_demo_virtual_product();
        o.pay_args.extend(
            [
                "--reconcile-interval-secs",
                "1",
                "--reconcile-after-secs",
                "0",
            ]
            .map(String::from),
        );
    })
    .await
}

/// `POST /pay/` of the virtual product and the phone's `wx.requestVirtualPayment`, with the
/// push faults of this payment in the header: (order_no, WeChat's order id).
async fn buy(t: &TestStack, token: &str, openid: &str, faults: Value) -> (String, String) {
    let (status, answer) = t.pay_product(token, DEMO_XPAY_PRODUCT).await;
    assert!(status.is_success(), "{answer}");
    let data = &answer["data"];
    let order_no = data["order_no"].as_str().expect("order_no").to_owned();
    let paid: Value = t
        .http
        .post(t.sandbox("/sandbox/xpay/pay"))
        .header(sandbox::FAULT_HEADER, faults.to_string())
        .json(
            &json!({ "openid": openid, "mode": data["mode"], "signData": data["signData"],
            "paySig": data["paySig"], "signature": data["signature"] }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["errcode"], 0, "{paid}");
    (order_no, paid["wx_order_id"].as_str().unwrap().to_owned())
}

/// The delivery pushes the sandbox finished for `wx_order_id` (sent or given up).
async fn pushes(t: &TestStack, wx_order_id: &str) -> Vec<Value> {
    let (_, all) = t.get(&t.sandbox("/sandbox/shipping"), "").await;
    all["pushes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| {
                    p["event"] == "xpay_goods_deliver_notify" && p["transaction_id"] == wx_order_id
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// WeChat's view of a virtual order (`/sandbox/xpay/orders`).
async fn at_wechat(t: &TestStack, order_no: &str) -> Value {
    let (_, all) = t.get(&t.sandbox("/sandbox/xpay/orders"), "").await;
    all["orders"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["out_trade_no"] == order_no))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The ORDER_PAID events of `order_no`, counted up to the ORDER_PAID of `marker` (paid after
/// every push of `order_no` was answered; event ids follow commit order).
async fn paid_events(t: &TestStack, order_no: &str, marker: &str) -> usize {
    wxmp::events::paid_events_until(&t.stack.pay_url, None, marker, Duration::from_secs(20))
        .await
        .unwrap()
        .iter()
        .filter(|e| e.order_no == order_no)
        .count()
}

/// A later paid order: the marker for [`paid_events`].
async fn marker(t: &TestStack, token: &str, openid: &str) -> String {
    let (no, _) = buy(t, token, openid, json!({})).await;
    let order = t
        .wait_for_order_state(token, &no, "PAID", Duration::from_secs(30))
        .await;
    assert_eq!(order["state"], "PAID", "{order}");
    no
}

async fn duplicated_push_delivers_once(backend: Backend) {
    let t = start(backend).await;
    let (token, openid) = t.login(None).await;
    let (order_no, wx_order_id) =
        buy(&t, &token, &openid, json!({"xpay_push_duplicated": 3})).await;
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(30))
        .await;
    assert_eq!(order["state"], "PAID", "{order}");
    assert_eq!(order["transaction_id"], wx_order_id.as_str());
    // All three copies reached the gateway and were answered "success" (the two late ones as
    // duplicates): WeChat stops retrying.
    let sent = eventually(Duration::from_secs(30), || async {
        let p = pushes(&t, &wx_order_id).await;
        (p.len() == 3).then_some(p)
    })
    .await
    .expect("three delivery pushes finished");
    assert!(sent.iter().all(|p| p["outcome"] == "success"), "{sent:?}");
    assert_eq!(at_wechat(&t, &order_no).await["status"], 4, "delivered");
    let marker = marker(&t, &token, &openid).await;
    assert_eq!(paid_events(&t, &order_no, &marker).await, 1);
}

async fn lost_push_repaired_and_late_push_changes_nothing(backend: Backend) {
    let t = start(backend).await;
    let (token, openid) = t.login(None).await;

    // Lost: WeChat has the payment, pay-service never hears of it but by query_order.
    let (lost, lost_wx) = buy(&t, &token, &openid, json!({"xpay_push_lost": true})).await;
    let never = eventually(Duration::from_secs(10), || async {
        pushes(&t, &lost_wx).await.into_iter().next()
    })
    .await
    .expect("the lost push is recorded by the sandbox");
    assert_eq!(never["attempts"], 0, "{never}");
    let order = t
        .wait_for_order_state(&token, &lost, "PAID", Duration::from_secs(30))
        .await;
    assert_eq!(order["state"], "PAID", "repaired by query_order: {order}");
    assert_eq!(order["transaction_id"], lost_wx.as_str());
    assert_eq!(pushes(&t, &lost_wx).await.len(), 1, "still never sent");
    // The repair tells WeChat the goods were delivered (notify_provide_goods), since no push
    // was ever answered "success": its order leaves 待发货.
    let delivered = eventually(Duration::from_secs(30), || async {
        (at_wechat(&t, &lost).await["status"] == 4).then_some(())
    })
    .await;
    assert!(delivered.is_some(), "{}", at_wechat(&t, &lost).await);

    // Late: the push comes 4 s after the payment, after the reconciler (every second) has
    // repaired the order; it is answered "success" and changes nothing.
    let (late, late_wx) = buy(&t, &token, &openid, json!({"xpay_push_late_ms": 4000})).await;
    let repaired = t
        .wait_for_order_state(&token, &late, "PAID", Duration::from_secs(30))
        .await;
    assert_eq!(repaired["state"], "PAID", "{repaired}");
    let sent = eventually(Duration::from_secs(30), || async {
        pushes(&t, &late_wx).await.into_iter().next()
    })
    .await
    .expect("the late push is sent");
    assert_eq!(sent["outcome"], "success", "{sent}");
    assert_eq!(at_wechat(&t, &late).await["status"], 4, "delivered");
    let (_, after) = t.get(&t.gateway(&format!("/orders/{late}")), &token).await;
    let after = &after["data"];
    assert_eq!(after["state"], "PAID");
    assert_eq!(after["paid_at"], repaired["paid_at"], "{after}");
    assert_eq!(after["transaction_id"], repaired["transaction_id"]);

    let marker = marker(&t, &token, &openid).await;
    assert_eq!(paid_events(&t, &lost, &marker).await, 1);
    assert_eq!(paid_events(&t, &late, &marker).await, 1);
}

on_both_backends!(
    duplicated_push_delivers_once as xpay_push_sent_three_times_at_once_delivers_once,
    lost_push_repaired_and_late_push_changes_nothing
        as xpay_push_lost_is_repaired_by_query_order_and_a_late_one_changes_nothing
);
