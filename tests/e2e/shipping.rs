//! Shipping and the message push across the whole stack (issue 25): a virtual product is
//! uploaded by itself once paid (through auth-service's access_token, past the sandbox's
//! 10060001), then the user confirms receipt and WeChat settles in the sandbox, whose pushes
//! (its own safe-mode crypto, or plaintext XML) reach the gateway's `/wechat/push/{appid}`,
//! are verified there and move pay-service's order to RECEIVED and SETTLED.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxmp::operator::{Pay, PayTarget};
use wxmp_proto::pay::v1 as pb;
use wxmp_tests::{Backend, TestStack, on_both_backends, order_and_prepay};

async fn shipping_of(pay: &mut Pay, order_no: &str) -> pb::OrderShipping {
    pay.order(order_no)
        .await
        .unwrap()
        .0
        .shipping
        .unwrap_or_default()
}

async fn wait_for(pay: &mut Pay, order_no: &str, state: pb::ShippingState) -> pb::OrderShipping {
    let started = Instant::now();
    loop {
        let s = shipping_of(pay, order_no).await;
        if s.state == state as i32 {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still {s:?}, waiting for {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pushes(t: &TestStack) -> Vec<Value> {
    let (_, all) = t.get(&t.sandbox("/sandbox/shipping"), "").await;
    all["pushes"].as_array().cloned().unwrap_or_default()
}

async fn ship_confirm_settle(t: TestStack) {
    let (token, _) = t.login(None).await;
    let (_, answer) = t.pay_product(&token, "coffee").await;
    let (order_no, request_payment) = order_and_prepay(&answer).expect("pay answer");
    t.sandbox_pay(&request_payment, "success", None).await;
    let paid = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(30))
        .await;
    assert_eq!(paid["state"], "PAID");
    let mut pay = Pay::connect(&PayTarget {
        url: t.stack.pay_url.clone(),
        internal_token: None,
    })
    .await
    .unwrap();
    // Virtual goods: uploaded by pay-service's worker once WeChat knows the payment.
    let shipped = wait_for(&mut pay, &order_no, pb::ShippingState::Shipped).await;
    assert_eq!(shipped.logistics_type, 3);
    assert!(
        shipped.upload_attempts >= 2,
        "the sandbox answered 10060001 first: {shipped:?}"
    );
    let transaction_id = pay.order(&order_no).await.unwrap().0.transaction_id;
    let (status, _) = t
        .post(
            &t.sandbox("/sandbox/shipping/confirm"),
            json!({ "transaction_id": transaction_id }),
        )
        .await;
    assert!(status.is_success());
    let received = wait_for(&mut pay, &order_no, pb::ShippingState::Received).await;
    assert!(received.received_at > 0);
    let (status, _) = t
        .post(
            &t.sandbox("/sandbox/shipping/settle"),
            json!({ "transaction_id": transaction_id }),
        )
        .await;
    assert!(status.is_success());
    let settled = wait_for(&mut pay, &order_no, pb::ShippingState::Settled).await;
    assert!(settled.settled_at >= received.received_at);
    // Both pushes were answered "success" the first time.
    let sent = pushes(&t).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter()
            .all(|p| p["outcome"] == "success" && p["attempts"] == 1),
        "{sent:?}"
    );
    // The payment state is untouched by shipping.
    let (order, _) = pay.order(&order_no).await.unwrap();
    assert_eq!(order.state, pb::OrderState::Paid as i32);
    // The mini program sees the shipping on its own order.
    let (status, mine) = t
        .get(&t.gateway(&format!("/orders/{order_no}")), &token)
        .await;
    assert!(status.is_success(), "{mine}");
    let shipping = &mine["data"]["shipping"];
    assert_eq!(shipping["state"], "SETTLED", "{mine}");
    assert_eq!(shipping["logistics_type"], 3);
    assert_eq!(shipping["settled_at"], settled.settled_at);
    assert_eq!(mine["data"]["state"], "PAID");
}

async fn safe_mode_json(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.pay_args
            .extend(["--virtual-products".to_owned(), "coffee".to_owned()]);
    })
    .await;
    ship_confirm_settle(t).await;
}

async fn plaintext_xml(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.pay_args
            .extend(["--virtual-products".to_owned(), "coffee".to_owned()]);
        if let wxmp::stack::WechatTarget::Sandbox(config) = &mut o.wechat {
            config.shipping.push_mode = "plaintext".into();
            config.shipping.push_format = "xml".into();
        }
    })
    .await;
    ship_confirm_settle(t).await;
}

on_both_backends!(
    safe_mode_json as virtual_goods_ship_and_settle_through_safe_mode_json_pushes,
    plaintext_xml as virtual_goods_ship_and_settle_through_plaintext_xml_pushes,
);
