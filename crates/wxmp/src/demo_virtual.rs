//! The demo's virtual purchase (虚拟支付, issue 26): `POST /pay/` of a product sold through
//! virtual payment answers the `wx.requestVirtualPayment` parameters; the sandbox's phone
//! checks paySig and the user-state signature as WeChat does and pushes
//! `xpay_goods_deliver_notify` to the gateway; the demo waits for the order PAID and for
//! WeChat's view of it delivered (the push answered "success"), and counts the deliveries.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::demo::{DemoError, envelope, field, get, post};

/// What the virtual purchase did.
#[derive(Clone, Debug)]
pub struct VirtualPurchase {
    pub order_no: String,
    pub product_id: String,
    pub amount_fen: i64,
    /// The order's state at the gateway (PAID).
    pub state: String,
    /// pay-service's transaction id: WeChat's virtual-payment order id.
    pub transaction_id: String,
    /// Delivery pushes the sandbox sent for it that were answered "success".
    pub deliveries: usize,
    /// ORDER_PAID events of the order (counted when pay-service's stream is reachable).
    pub paid_events: Option<usize>,
}

/// Where and as whom the purchase runs.
pub(crate) struct Buyer<'a> {
    pub http: &'a reqwest::Client,
    pub gw: &'a str,
    pub sb: &'a str,
    pub token: &'a str,
    pub openid: &'a str,
    pub timeout: Duration,
}

/// Buys `product_id` through virtual payment; `None` (and says so) when the catalog does not
/// have it.
pub(crate) async fn buy(
    buyer: &Buyer<'_>,
    product_id: &str,
    say: &mut impl FnMut(String),
) -> Result<Option<VirtualPurchase>, DemoError> {
    let Buyer {
        http,
        gw,
        sb,
        token,
        openid,
        timeout,
    } = *buyer;
    let products = envelope(
        get(http, &format!("{gw}/products"), token, "GET /products").await?,
        "GET /products",
    )?;
    let listed = products["products"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["id"] == product_id));
    if !listed {
        say(format!(
            "4d. skipped the virtual purchase: {product_id} is not in this catalog"
        ));
        return Ok(None);
    }
    let pay = envelope(
        post(
            http,
            &format!("{gw}/pay/"),
            json!({ "token": token, "product_id": product_id }),
            "POST /pay/ (virtual)",
        )
        .await?,
        "POST /pay/ (virtual)",
    )?;
    let order_no = field(&pay, "/order_no", "POST /pay/ (virtual)")?;
    let mode = field(&pay, "/mode", "POST /pay/ (virtual)")?;
    let sign_data = field(&pay, "/signData", "POST /pay/ (virtual)")?;
    say(format!(
        "4d. POST /pay/ placed order {order_no} for {product_id}: wx.requestVirtualPayment({{mode: {mode}, signData: {sign_data}, paySig, signature}})"
    ));
    // The phone: wx.requestVirtualPayment with exactly what /pay/ answered; the sandbox checks
    // paySig (the AppKey) and the signature (the session_key it issued) as WeChat does.
    let mut request = serde_json::Map::new();
    request.insert("openid".into(), json!(openid));
    for name in ["mode", "signData", "paySig", "signature"] {
        request.insert(
            name.to_owned(),
            json!(field(&pay, &format!("/{name}"), "POST /pay/ (virtual)")?),
        );
    }
    let paid = post(
        http,
        &format!("{sb}/sandbox/xpay/pay"),
        Value::Object(request),
        "sandbox requestVirtualPayment",
    )
    .await?;
    if paid["errcode"] != 0 {
        return Err(DemoError::Unexpected {
            step: "sandbox requestVirtualPayment",
            body: paid.to_string(),
        });
    }
    let wx_order_id = field(&paid, "/wx_order_id", "sandbox requestVirtualPayment")?;
    say(format!(
        "4e. the user paid in the sandbox (WeChat order {wx_order_id}); xpay_goods_deliver_notify is on its way"
    ));

    let started = Instant::now();
    let order = loop {
        let order = envelope(
            get(
                http,
                &format!("{gw}/orders/{order_no}"),
                token,
                "GET /orders (virtual)",
            )
            .await?,
            "GET /orders (virtual)",
        )?;
        let state = field(&order, "/state", "GET /orders (virtual)")?;
        if state == "PAID" {
            break order;
        }
        if started.elapsed() > timeout {
            return Err(DemoError::NotPaid {
                order_no,
                state,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // WeChat's side: the push answered "success" marks its order delivered (status 4).
    loop {
        let orders = get(
            http,
            &format!("{sb}/sandbox/xpay/orders"),
            "",
            "sandbox xpay orders",
        )
        .await?;
        let status = orders["orders"]
            .as_array()
            .and_then(|os| os.iter().find(|o| o["out_trade_no"] == order_no.as_str()))
            .and_then(|o| o["status"].as_i64());
        if status == Some(4) {
            break;
        }
        if started.elapsed() > timeout {
            return Err(DemoError::Unexpected {
                step: "sandbox xpay orders",
                body: orders.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pushes = get(
        http,
        &format!("{sb}/sandbox/shipping"),
        "",
        "sandbox pushes",
    )
    .await?;
    let deliveries = pushes["pushes"].as_array().map_or(0, |ps| {
        ps.iter()
            .filter(|p| {
                p["event"] == "xpay_goods_deliver_notify"
                    && p["transaction_id"] == wx_order_id.as_str()
                    && p["outcome"] == "success"
            })
            .count()
    });
    let amount_fen = order["amount_fen"].as_i64().unwrap_or_default();
    let transaction_id = order["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    say(format!(
        "4f. GET /orders/{order_no}: PAID ({}.{:02} yuan, transaction {transaction_id}); WeChat shows it delivered, its push answered \"success\" {deliveries} time(s)",
        amount_fen / 100,
        amount_fen % 100,
    ));
    Ok(Some(VirtualPurchase {
        order_no,
        product_id: product_id.to_owned(),
        amount_fen,
        state: "PAID".to_owned(),
        transaction_id,
        deliveries,
        paid_events: None,
    }))
}
