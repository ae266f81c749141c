//! `wxmp demo` (what `make demo` runs) against a stack assembled as `wxmp up` assembles it
//! with the sandbox: it buys the virtual product through `wx.requestVirtualPayment` (PAID,
//! delivered once, one ORDER_PAID), then the WeChat Pay journey (paid, partly refunded,
//! shipped and settled).

use std::time::Duration;

use wxmp::{
    demo::{DemoTarget, run},
    operator::PayTarget,
    stack::{DEMO_PAID_TEMPLATE_DATA, DEMO_PAID_TEMPLATE_ID, DEMO_XPAY_PRODUCT},
};
use wxmp_tests::{Backend, TestStack, on_both_backends};

async fn demo_buys_the_virtual_product_once(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.sell_demo_virtual_product();
        o.pay_args.extend(
            [
                "--paid-template-id",
                DEMO_PAID_TEMPLATE_ID,
                "--paid-template-data",
                DEMO_PAID_TEMPLATE_DATA,
            ]
            .map(String::from),
        );
    })
    .await;
    let target = DemoTarget {
        gateway: t.stack.gateway_url.clone(),
        sandbox: t.sandbox(""),
        product_id: None,
        pay_timeout: Duration::from_secs(60),
        paid_template_id: DEMO_PAID_TEMPLATE_ID.to_owned(),
        pay: Some(PayTarget {
            url: t.stack.pay_url.clone(),
            internal_token: None,
        }),
        virtual_product: Some(DEMO_XPAY_PRODUCT.to_owned()),
    };
    let mut lines = Vec::new();
    let report = run(&target, |l| lines.push(l))
        .await
        .unwrap_or_else(|e| panic!("demo failed: {e}\n{}", lines.join("\n")));
    let all = lines.join("\n");
    let bought = report.virtual_purchase.expect("a virtual purchase");
    assert_eq!(bought.product_id, DEMO_XPAY_PRODUCT);
    assert_eq!(bought.state, "PAID", "{all}");
    assert_eq!(bought.amount_fen, 3000, "the catalog price");
    assert_eq!(bought.deliveries, 1, "{all}");
    assert_eq!(bought.paid_events, Some(1), "{all}");
    assert!(bought.transaction_id.starts_with("xpay"), "{all}");
    assert!(all.contains("wx.requestVirtualPayment"), "{all}");
    // The WeChat Pay journey still runs to its end, with its "order paid" message.
    assert!(report.paid_message.is_some(), "{all}");
    assert_ne!(report.order_no, bought.order_no);
    assert_eq!(report.shipping.as_deref(), Some("SETTLED"), "{all}");
}

on_both_backends!(
    workers = 4;
    demo_buys_the_virtual_product_once as make_demo_buys_a_virtual_product_delivered_once
);
