//! `wxmp demo`: plays a mini program against a running gateway and sandbox, step by step,
//! exactly as a phone would: wx.login → /login/ → getUserProfile → /userinfo/ → /pay/ →
//! getPhoneNumber (a code) → /phone/ → wx.requestSubscribeMessage → /pay/ → wx.requestPayment
//! (the sandbox pays) → poll the order until PAID → the "order paid" message in the sandbox;
//! then, when pay-service's gRPC address is given, the order's PAID event from the event
//! stream, and the shop refunds part of it while the demo waits for WeChat to settle it; then
//! the shop ships it, the user confirms receipt in the sandbox and WeChat settles the payment
//! (both pushed to the gateway's message push). After the phone number (before subscribing, so
//! the one "order paid" message is the WeChat Pay order's), when the catalog sells a product
//! through virtual payment, the user buys it through wx.requestVirtualPayment
//! ([`crate::demo_virtual`]): PAID, delivered once, one ORDER_PAID.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where the demo points.
#[derive(Clone, Debug)]
pub struct DemoTarget {
    pub gateway: String,
    pub sandbox: String,
    /// Product to buy; the first of the catalog when `None`.
    pub product_id: Option<String>,
    /// How long to wait for the order to become PAID (and the refund to settle).
    pub pay_timeout: Duration,
    /// The subscribe message template the user accepts (PAY_PAID_TEMPLATE_ID of the stack).
    pub paid_template_id: String,
    /// pay-service's gRPC address for the PAID event and the closing partial refund; `None`
    /// skips both.
    pub pay: Option<crate::operator::PayTarget>,
    /// A product sold through virtual payment, bought first through
    /// `wx.requestVirtualPayment` (skipped when `None` or not in the catalog).
    pub virtual_product: Option<String>,
}

/// What the demo did, for callers that check it (the end-to-end tests).
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub openid: String,
    pub token: String,
    pub nickname: String,
    pub order_no: String,
    pub amount_fen: i64,
    pub final_state: String,
    /// The phone number stored from the getPhoneNumber code.
    pub phone_number: String,
    /// The "order paid" message the sandbox recorded, if it arrived.
    pub paid_message: Option<Value>,
    /// The closing partial refund: out_refund_no, its final state, the order's refunded_fen.
    pub refund: Option<(String, String, i64)>,
    /// The order's last shipping state (SETTLED once shipped, received and settled).
    pub shipping: Option<String>,
    /// The virtual purchase, when one was made.
    pub virtual_purchase: Option<crate::demo_virtual::VirtualPurchase>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{step}: {source}")]
    Http {
        step: &'static str,
        source: reqwest::Error,
    },
    #[error("{step}: unexpected answer {body}")]
    Unexpected { step: &'static str, body: String },
    #[error("refund: {0}")]
    Refund(#[from] crate::operator::OperatorError),
    #[error("the order {order_no} was still {state} after {waited:?}")]
    NotPaid {
        order_no: String,
        state: String,
        waited: Duration,
    },
}

/// Runs the whole journey, calling `say` with one line per step.
pub async fn run(
    target: &DemoTarget,
    mut say: impl FnMut(String),
) -> Result<DemoReport, DemoError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|source| DemoError::Http {
            step: "client",
            source,
        })?;
    let gw = target.gateway.trim_end_matches('/');
    let sb = target.sandbox.trim_end_matches('/');

    let login_code = post(
        &http,
        &format!("{sb}/sandbox/login-code"),
        json!({}),
        "sandbox login code",
    )
    .await?;
    let code = field(&login_code, "/code", "sandbox login code")?;
    let openid = field(&login_code, "/openid", "sandbox login code")?;
    say(format!(
        "1. wx.login() in the sandbox gave code {code} for openid {openid}"
    ));

    let login = envelope(
        post(
            &http,
            &format!("{gw}/login/"),
            json!({ "code": code }),
            "POST /login/",
        )
        .await?,
        "POST /login/",
    )?;
    let token = field(&login, "/token", "POST /login/")?;
    say(format!(
        "2. POST /login/ answered a token (expires in {}s)",
        login["expires_in"]
    ));

    let profile = json!({
        "nickName": "微信用户🐼",
        "gender": 1,
        "language": "zh_CN",
        "city": "Shenzhen",
        "province": "Guangdong",
        "country": "China",
        "avatarUrl": "https://thirdwx.qlogo.cn/mmopen/vi_32/demo/132"
    });
    let user_data = post(
        &http,
        &format!("{sb}/sandbox/user-data"),
        json!({ "openid": openid, "profile": profile }),
        "sandbox user data",
    )
    .await?;
    say("3. the sandbox encrypted a profile with the user's session_key".to_owned());

    let stored = envelope(
        post(
            &http,
            &format!("{gw}/userinfo/"),
            json!({
                "token": token,
                "encryptedData": user_data["encryptedData"],
                "iv": user_data["iv"],
                "rawData": user_data["rawData"],
                "signature": user_data["signature"],
            }),
            "POST /userinfo/",
        )
        .await?,
        "POST /userinfo/",
    )?;
    let nickname = field(&stored, "/nickname", "POST /userinfo/")?;
    say(format!(
        "4. POST /userinfo/ decrypted and stored the profile of {nickname}"
    ));

    let phone_code = post(
        &http,
        &format!("{sb}/sandbox/phone-code"),
        json!({ "purePhoneNumber": "13800138000" }),
        "sandbox phone code",
    )
    .await?;
    let phone = envelope(
        post(
            &http,
            &format!("{gw}/phone/"),
            json!({ "token": token, "code": phone_code["code"] }),
            "POST /phone/",
        )
        .await?,
        "POST /phone/",
    )?;
    let phone_number = field(&phone, "/phone_number", "POST /phone/")?;
    say(format!(
        "4b. getPhoneNumber gave a code; POST /phone/ exchanged it at getuserphonenumber (with the shared access_token) for {phone_number}"
    ));

    // Before the subscription: the one message it allows is for the WeChat Pay order below.
    let mut virtual_purchase = match &target.virtual_product {
        Some(product) => {
            let buyer = crate::demo_virtual::Buyer {
                http: &http,
                gw,
                sb,
                token: &token,
                openid: &openid,
                timeout: target.pay_timeout,
            };
            crate::demo_virtual::buy(&buyer, product, &mut say).await?
        }
        None => None,
    };

    post(
        &http,
        &format!("{sb}/sandbox/subscribe"),
        json!({ "openid": openid, "template_id": target.paid_template_id }),
        "sandbox subscribe",
    )
    .await?;
    say(format!(
        "4c. wx.requestSubscribeMessage: the user accepted template {}",
        target.paid_template_id
    ));

    let product_id = match &target.product_id {
        Some(id) => id.clone(),
        None => {
            let products = envelope(
                get(&http, &format!("{gw}/products"), &token, "GET /products").await?,
                "GET /products",
            )?;
            field(&products, "/products/0/id", "GET /products")?
        }
    };
    let pay = envelope(
        post(
            &http,
            &format!("{gw}/pay/"),
            json!({ "token": token, "product_id": product_id }),
            "POST /pay/",
        )
        .await?,
        "POST /pay/",
    )?;
    let order_no = field(&pay, "/order_no", "POST /pay/")?;
    let package = field(&pay, "/package", "POST /pay/")?;
    say(format!(
        "5. POST /pay/ placed order {order_no} for {product_id}: wx.requestPayment({{package: {package}, signType: {}}})",
        pay["signType"]
    ));

    // The phone: wx.requestPayment with exactly what /pay/ answered; the sandbox checks
    // paySign as WeChat does.
    let mut request_payment = serde_json::Map::new();
    for name in [
        "appId",
        "timeStamp",
        "nonceStr",
        "package",
        "signType",
        "paySign",
    ] {
        request_payment.insert(
            name.to_owned(),
            json!(field(&pay, &format!("/{name}"), "POST /pay/")?),
        );
    }
    let paid = post(
        &http,
        &format!("{sb}/sandbox/pay"),
        Value::Object(request_payment),
        "sandbox pay",
    )
    .await?;
    if paid.get("error").is_some() {
        // wx.requestPayment's fail callback: the stack signed something the phone refuses.
        return Err(DemoError::Unexpected {
            step: "sandbox pay",
            body: paid.to_string(),
        });
    }
    say("6. the user paid in the sandbox; WeChat's notify is on its way".to_owned());

    let started = Instant::now();
    let mut state;
    loop {
        let order = envelope(
            get(
                &http,
                &format!("{gw}/orders/{order_no}"),
                &token,
                "GET /orders",
            )
            .await?,
            "GET /orders",
        )?;
        state = field(&order, "/state", "GET /orders")?;
        if state == "PAID" {
            let amount_fen = order["amount_fen"].as_i64().unwrap_or_default();
            say(format!(
                "7. GET /orders/{order_no}: PAID ({}.{:02} yuan, transaction {})",
                amount_fen / 100,
                amount_fen % 100,
                order["transaction_id"].as_str().unwrap_or("?")
            ));
            let paid_message = wait_for_message(&http, sb, &openid, &order_no).await?;
            match &paid_message {
                Some(m) => say(format!(
                    "8. the \"order paid\" subscribe message arrived in the sandbox: {}",
                    m["data"]
                )),
                None => say(
                    "8. no \"order paid\" message arrived (is PAY_PAID_TEMPLATE_ID set on the stack?)"
                        .to_owned(),
                ),
            }
            if let Some(pay) = &target.pay {
                let token = pay.internal_token.clone().map(service_kit::Secret::new);
                let mut events = crate::events::paid_events_until(
                    &pay.url,
                    token.as_ref(),
                    &order_no,
                    target.pay_timeout,
                )
                .await
                .map_err(|body| DemoError::Unexpected {
                    step: "WatchOrderEvents",
                    body,
                })?;
                // Ids follow commit order: the virtual order, paid and delivered before this
                // one, has all its ORDER_PAID events among these.
                if let Some(v) = virtual_purchase.as_mut() {
                    let n = events.iter().filter(|e| e.order_no == v.order_no).count();
                    v.paid_events = Some(n);
                    say(format!(
                        "9v. WatchOrderEvents: {n} ORDER_PAID event(s) for the virtual order {}",
                        v.order_no
                    ));
                }
                let event = events.pop().ok_or_else(|| DemoError::Unexpected {
                    step: "WatchOrderEvents",
                    body: "the event stream ended".to_owned(),
                })?;
                say(format!(
                    "9. WatchOrderEvents: event #{} ORDER_PAID for {order_no}, as a shop service receives it",
                    event.id
                ));
            }
            let mut report = DemoReport {
                openid,
                token,
                nickname,
                order_no,
                amount_fen,
                final_state: state,
                phone_number,
                paid_message,
                refund: None,
                shipping: None,
                virtual_purchase,
            };
            if let Some(pay) = &target.pay {
                partial_refund(pay, target.pay_timeout, &mut report, &mut say).await?;
                ship_and_settle(pay, &http, sb, target.pay_timeout, &mut report, &mut say).await?;
            }
            return Ok(report);
        }
        if started.elapsed() > target.pay_timeout {
            return Err(DemoError::NotPaid {
                order_no,
                state,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `/sandbox/messages` for a message about `order_no` for a few seconds.
async fn wait_for_message(
    http: &reqwest::Client,
    sb: &str,
    openid: &str,
    order_no: &str,
) -> Result<Option<Value>, DemoError> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let response = http
            .get(format!("{sb}/sandbox/messages"))
            .query(&[("touser", openid)])
            .send()
            .await
            .map_err(|source| DemoError::Http {
                step: "sandbox messages",
                source,
            })?;
        let messages: Vec<Value> = response.json().await.map_err(|source| DemoError::Http {
            step: "sandbox messages",
            source,
        })?;
        let about_order = messages.into_iter().find(|m| {
            m["data"]
                .as_object()
                .is_some_and(|d| d.values().any(|v| v == order_no))
        });
        if about_order.is_some() {
            return Ok(about_order);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

/// The shop gives a third of the money back (pay-service's Refund) and waits until WeChat (the
/// sandbox) settles it and its encrypted notify reaches the gateway.
async fn partial_refund(
    pay: &crate::operator::PayTarget,
    timeout: Duration,
    report: &mut DemoReport,
    say: &mut impl FnMut(String),
) -> Result<(), DemoError> {
    use crate::operator::{Pay, describe_order, describe_refund, order_state, refund_state};
    let mut client = Pay::connect(pay).await?;
    let amount = (report.amount_fen / 3).max(1);
    let answer = client
        .refund(&report.order_no, amount, "wxmp demo: partial refund", "")
        .await?;
    let mut refund = answer.refund.unwrap_or_default();
    say(format!("10. Refund (gRPC): {}", describe_refund(&refund)));
    let started = Instant::now();
    while matches!(refund_state(&refund), "PENDING" | "PROCESSING") {
        if started.elapsed() > timeout {
            return Err(DemoError::Unexpected {
                step: "GetRefund",
                body: describe_refund(&refund),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        refund = client.get_refund(&refund.out_refund_no).await?;
    }
    let (order, _) = client.order(&report.order_no).await?;
    say(format!(
        "11. WeChat settled it: {}",
        describe_refund(&refund)
    ));
    say(format!("   {}", describe_order(&order)));
    report.final_state = order_state(&order).to_owned();
    report.refund = Some((
        refund.out_refund_no.clone(),
        refund_state(&refund).to_owned(),
        order.refunded_fen,
    ));
    Ok(())
}

/// The shop ships the order (pay-service's Ship: uploaded to WeChat in the background, retried
/// while WeChat answers 10060001), the user confirms receipt in the sandbox and WeChat settles:
/// both arrive as message pushes at the gateway, and the order shows SETTLED.
async fn ship_and_settle(
    pay: &crate::operator::PayTarget,
    http: &reqwest::Client,
    sb: &str,
    timeout: Duration,
    report: &mut DemoReport,
    say: &mut impl FnMut(String),
) -> Result<(), DemoError> {
    use crate::operator::{Pay, describe_shipping};
    use wxmp_proto::pay::v1 as pb;
    let mut client = Pay::connect(pay).await?;
    let order = client
        .ship(pb::ShipRequest {
            order_no: report.order_no.clone(),
            logistics_type: 1,
            delivery_mode: 1,
            shipping_list: vec![pb::Parcel {
                tracking_no: format!(
                    "ZTO{}",
                    &report.order_no[report.order_no.len().saturating_sub(10)..]
                ),
                express_company: "ZTO".into(),
                item_desc: "wxmp demo parcel".into(),
                ..Default::default()
            }],
            is_all_delivered: false,
        })
        .await?;
    say(format!("12. Ship (gRPC): {}", describe_shipping(&order)));
    let transaction_id = order.transaction_id.clone();
    let mut wait_for = async |state: pb::ShippingState| -> Result<pb::Order, DemoError> {
        let started = Instant::now();
        loop {
            let (order, _) = client.order(&report.order_no).await?;
            if order
                .shipping
                .as_ref()
                .is_some_and(|s| s.state == state as i32)
            {
                return Ok(order);
            }
            if started.elapsed() > timeout {
                return Err(DemoError::Unexpected {
                    step: "shipping",
                    body: describe_shipping(&order),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let shipped = wait_for(pb::ShippingState::Shipped).await?;
    say(format!(
        "13. WeChat took the shipping: {}",
        describe_shipping(&shipped)
    ));
    post(
        http,
        &format!("{sb}/sandbox/shipping/confirm"),
        json!({ "transaction_id": transaction_id }),
        "sandbox confirm receipt",
    )
    .await?;
    let received = wait_for(pb::ShippingState::Received).await?;
    say(format!(
        "14. the user confirmed receipt; the push reached pay-service: {}",
        describe_shipping(&received)
    ));
    post(
        http,
        &format!("{sb}/sandbox/shipping/settle"),
        json!({ "transaction_id": transaction_id }),
        "sandbox settle",
    )
    .await?;
    let settled = wait_for(pb::ShippingState::Settled).await?;
    say(format!(
        "15. WeChat settled the payment: {}",
        describe_shipping(&settled)
    ));
    report.shipping = Some("SETTLED".to_owned());
    Ok(())
}

pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Value,
    step: &'static str,
) -> Result<Value, DemoError> {
    let response = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|source| DemoError::Http { step, source })?;
    response
        .json()
        .await
        .map_err(|source| DemoError::Http { step, source })
}

pub(crate) async fn get(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    step: &'static str,
) -> Result<Value, DemoError> {
    let response = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|source| DemoError::Http { step, source })?;
    response
        .json()
        .await
        .map_err(|source| DemoError::Http { step, source })
}

/// The `data` of a `{"code":200,"msg":"suc","data":...}` envelope.
pub(crate) fn envelope(body: Value, step: &'static str) -> Result<Value, DemoError> {
    if body["code"] == 200 {
        Ok(body["data"].clone())
    } else {
        Err(DemoError::Unexpected {
            step,
            body: body.to_string(),
        })
    }
}

pub(crate) fn field(value: &Value, pointer: &str, step: &'static str) -> Result<String, DemoError> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| DemoError::Unexpected {
            step,
            body: value.to_string(),
        })
}
