//! The console's buttons: HTML form posts that play the phone and WeChat, then redirect back
//! to `/` (303, so a reload does not repeat them) with the outcome in `?msg=`.
//!
//! - `POST /console/pay` `prepay_id, outcome=success|fail`: the user pays (or the payment
//!   fails) through `POST /sandbox/pay`, with the `wx.requestPayment` parameters the merchant
//!   would have signed for that prepay_id (the console stands in for the mini program too).
//! - `POST /console/notify/resend` `mch_id, out_trade_no`: WeChat sends the paid order's
//!   notify again, from the first attempt of its schedule.
//! - `POST /console/notify/drop` `mch_id, out_trade_no`: WeChat stops delivering the pending
//!   notify (the reconciler must repair the order).
//! - `POST /console/token/expire` `appid`: the app's stable access_token expires now.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use serde_json::json;

use crate::{
    notify::{self, PayOutcome},
    order::{NotifyState, TradeState},
    state::Sandbox,
};

pub const PAY: &str = "/console/pay";
pub const RESEND_NOTIFY: &str = "/console/notify/resend";
pub const DROP_NOTIFY: &str = "/console/notify/drop";
pub const EXPIRE_TOKEN: &str = "/console/token/expire";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(PAY, web::post().to(pay))
        .route(RESEND_NOTIFY, web::post().to(resend_notify))
        .route(DROP_NOTIFY, web::post().to(drop_notify))
        .route(EXPIRE_TOKEN, web::post().to(expire_token));
}

/// Back to the console with `msg` shown at the top.
fn back(msg: &str) -> HttpResponse {
    let mut location = String::from("/?msg=");
    for b in msg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            location.push(b as char);
        } else {
            location.push_str(&format!("%{b:02X}"));
        }
    }
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

#[derive(Debug, Deserialize)]
pub struct PayForm {
    prepay_id: String,
    outcome: PayOutcome,
}

/// The body of `POST /sandbox/pay` the button sends: the `wx.requestPayment` parameters of
/// `form.prepay_id`, signed with the merchant's key and the order's sign type as the merchant's
/// backend signs them (the console plays the mini program, so it holds what the mini program
/// would). None for an unknown prepay_id.
fn pay_body(sandbox: &Sandbox, form: &PayForm) -> Option<serde_json::Value> {
    let state = sandbox.state();
    let order = state.orders.get(state.prepay_ids.get(&form.prepay_id)?)?;
    let key = sandbox.merchant(&order.mch_id)?.key.expose().to_owned();
    let params = [
        ("appId", order.appid.clone()),
        ("timeStamp", crate::clock::now().timestamp().to_string()),
        ("nonceStr", crate::wx::nonce_str()),
        ("package", format!("prepay_id={}", form.prepay_id)),
        ("signType", order.sign_type.as_str().to_owned()),
    ];
    let pairs: crate::wx::Pairs = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let pay_sign = crate::wx::sign(&pairs, &key, order.sign_type);
    let mut body = json!({ "outcome": form.outcome, "paySign": pay_sign });
    for (k, v) in params {
        body[k] = json!(v);
    }
    Some(body)
}

/// `POST /console/pay`: runs `/sandbox/pay` itself, so the button and the API cannot differ.
pub async fn pay(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<PayForm>,
) -> HttpResponse {
    let Some(body) = pay_body(&sandbox, &form) else {
        return back(&format!("refused: unknown prepay_id {}", form.prepay_id));
    };
    let body = web::Bytes::from(body.to_string());
    match notify::pay(req, sandbox, body).await {
        Ok(_) => back(&format!(
            "{} {}",
            match form.outcome {
                PayOutcome::Fail => "payment failed for",
                _ => "paid",
            },
            form.prepay_id
        )),
        Err(e) => back(&format!("refused: {e}")),
    }
}

#[derive(Debug, Deserialize)]
pub struct OrderForm {
    mch_id: String,
    out_trade_no: String,
}

/// `POST /console/notify/resend`: a paid order's notify, sent again from attempt 1.
pub async fn resend_notify(
    sandbox: web::Data<Sandbox>,
    form: web::Form<OrderForm>,
) -> HttpResponse {
    let key = (form.mch_id.clone(), form.out_trade_no.clone());
    {
        let mut state = sandbox.state();
        let Some(order) = state.orders.get_mut(&key) else {
            return back(&format!("unknown order {}", form.out_trade_no));
        };
        if order.trade_state != TradeState::Success {
            return back(&format!("order {} is not paid", form.out_trade_no));
        }
        order.notify_state = NotifyState::Pending;
    }
    let sandbox = sandbox.into_inner();
    sandbox
        .runtime
        .clone()
        .spawn(notify::deliver_notify(sandbox.clone(), key));
    back(&format!("notify of {} sent again", form.out_trade_no))
}

/// `POST /console/notify/drop`: no further attempt of a pending notify.
pub async fn drop_notify(sandbox: web::Data<Sandbox>, form: web::Form<OrderForm>) -> HttpResponse {
    let key = (form.mch_id.clone(), form.out_trade_no.clone());
    let mut state = sandbox.state();
    let Some(order) = state.orders.get_mut(&key) else {
        return back(&format!("unknown order {}", form.out_trade_no));
    };
    if order.notify_state != NotifyState::Pending {
        return back(&format!(
            "order {} has no pending notify",
            form.out_trade_no
        ));
    }
    order.notify_state = NotifyState::Dropped;
    back(&format!("notify of {} dropped", form.out_trade_no))
}

#[derive(Debug, Deserialize)]
pub struct AppForm {
    appid: String,
}

/// `POST /console/token/expire`.
pub async fn expire_token(sandbox: web::Data<Sandbox>, form: web::Form<AppForm>) -> HttpResponse {
    let expired = sandbox
        .state()
        .tokens
        .expire_stable(&form.appid, Instant::now());
    if expired {
        back(&format!("access_token of {} expired", form.appid))
    } else {
        back(&format!("{} has no access_token", form.appid))
    }
}
