//! Virtual payment across the whole stack (issue 26): a product sold through
//! `wx.requestVirtualPayment` is bought through the gateway's `POST /pay/` (signData from the
//! catalog price, paySig with the AppKey, signature with the session_key auth-service holds),
//! paid on the sandbox's phone (which checks both signatures with its own code) and its
//! `xpay_goods_deliver_notify` push, safe-mode signed by the sandbox, reaches the gateway's
//! `/wechat/push/{appid}` and pays the order once.

use std::time::Duration;

use sandbox::xpay::{DEV_XPAY_OFFER_ID, DEV_XPAY_SANDBOX_APP_KEY};
use serde_json::{Value, json};
use wxmp::operator::{Pay, PayTarget};
use wxmp_proto::pay::v1 as pb;
use wxmp_tests::{Backend, TestStack, on_both_backends};

async fn buy_virtual_product(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.pay_args.extend(
            [
                "--xpay-products",
                "coffee:coffee_xpay",
                "--xpay-offer-id",
                DEV_XPAY_OFFER_ID,
                "--xpay-sandbox-app-key",
                DEV_XPAY_SANDBOX_APP_KEY,
                "--xpay-env",
                "1",
            ]
            .map(str::to_owned),
        );
    })
    .await;
    let (token, openid) = t.login(None).await;
    let (status, answer) = t.pay_product(&token, "coffee").await;
    assert!(status.is_success(), "{answer}");
    let data = &answer["data"];
    let order_no = data["order_no"].as_str().expect("order_no").to_owned();
    assert_eq!(data["mode"], "short_series_goods", "{answer}");
    assert!(data.get("package").is_none(), "no JSAPI params: {answer}");
    let sign_data: Value = serde_json::from_str(data["signData"].as_str().unwrap()).unwrap();
    assert_eq!(sign_data["outTradeNo"], order_no.as_str());
    assert_eq!(sign_data["productId"], "coffee_xpay");
    // The phone pays (the sandbox checks paySig and the user-state signature).
    let (status, paid) = t
        .post(
            &t.sandbox("/sandbox/xpay/pay"),
            json!({ "openid": openid, "mode": data["mode"], "signData": data["signData"],
                "paySig": data["paySig"], "signature": data["signature"] }),
        )
        .await;
    assert!(status.is_success(), "{paid}");
    assert_eq!(paid["errcode"], 0, "{paid}");
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(30))
        .await;
    assert_eq!(order["state"], "PAID");
    let mut pay = Pay::connect(&PayTarget {
        url: t.stack.pay_url.clone(),
        internal_token: None,
    })
    .await
    .unwrap();
    let (o, _) = pay.order(&order_no).await.unwrap();
    assert_eq!(o.state, pb::OrderState::Paid as i32);
    assert_eq!(o.transaction_id, paid["wx_order_id"].as_str().unwrap());
    // The push was answered "success" once; nothing was retried.
    let (_, all) = t.get(&t.sandbox("/sandbox/shipping"), "").await;
    let pushes: Vec<&Value> = all["pushes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["event"] == "xpay_goods_deliver_notify")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(pushes.len(), 1, "{all}");
    assert_eq!(pushes[0]["outcome"], "success", "{all}");
}

on_both_backends!(
    buy_virtual_product as virtual_product_bought_through_the_gateway_and_the_sandbox
);
