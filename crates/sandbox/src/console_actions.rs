//! The console's buttons: HTML form posts that play the phone and WeChat, then redirect back
//! to `/` (303, so a reload does not repeat them) with the outcome in `?msg=`.
//!
//! - `POST /console/pay` `prepay_id, outcome=success|fail`: the user pays (or the payment
//!   fails). v2: through `POST /sandbox/pay`, with the `wx.requestPayment` parameters the
//!   merchant would have signed for that prepay_id (the console stands in for the mini
//!   program too). v3: the sandbox holds only the merchant's public key, so the console
//!   cannot sign the phone's RSA paySign; it applies the outcome `/sandbox/pay` applies after
//!   its check (SUCCESS + the encrypted TRANSACTION.SUCCESS notify, or PAYERROR).
//! - `POST /console/notify/resend` `api=v2|v3, mch_id, out_trade_no`: WeChat sends the paid
//!   order's notify again, from the first attempt of its schedule.
//! - `POST /console/notify/drop` `api, mch_id, out_trade_no`: WeChat stops delivering the
//!   pending notify (the reconciler must repair the order).
//! - `POST /console/refund/finish` `mch_id, out_refund_no, outcome=success|change|close`:
//!   WeChat finishes a PROCESSING v2 refund as SUCCESS, CHANGE (退款异常) or REFUNDCLOSE and
//!   sends the refund notify (encrypted req_info) to its notify_url (see [`refund::conclude`]).
//! - `POST /console/token/expire` `appid`: the app's stable access_token expires now.
//!
//! Cross-site requests: the console is a dev tool, but a page on another site could still
//! make a browser post to it. Every form carries [`csrf_token`] (random per process, only
//! readable from the console page itself: no CORS), and a post whose `Origin` is not the
//! console's own or whose `Sec-Fetch-Site` says cross-site is refused with 403 before
//! anything changes.

use std::{sync::OnceLock, time::Instant};

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use serde_json::json;

use crate::{
    notify::{self, PayOutcome},
    order::{NotifyState, TradeState},
    refund::{self, RefundStatus},
    state::Sandbox,
};

pub const PAY: &str = "/console/pay";
pub const RESEND_NOTIFY: &str = "/console/notify/resend";
pub const DROP_NOTIFY: &str = "/console/notify/drop";
pub const FINISH_REFUND: &str = "/console/refund/finish";
pub const EXPIRE_TOKEN: &str = "/console/token/expire";
/// The hidden form field carrying [`csrf_token`].
pub const CSRF_FIELD: &str = "csrf";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(PAY, web::post().to(pay))
        .route(RESEND_NOTIFY, web::post().to(resend_notify))
        .route(DROP_NOTIFY, web::post().to(drop_notify))
        .route(FINISH_REFUND, web::post().to(finish_refund))
        .route(EXPIRE_TOKEN, web::post().to(expire_token))
        .configure(crate::shipping_console::routes)
        .configure(crate::xpay_console::routes);
}

/// The token every console form posts back: random per process, so only a page that could
/// read the console (same origin) knows it.
pub fn csrf_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| hex::encode(rand::random::<[u8; 16]>()))
}

/// 403 unless the post comes from the console page itself.
pub(crate) fn refuse_cross_site(req: &HttpRequest, csrf: &str) -> Option<HttpResponse> {
    let forbidden = |why: &str| {
        tracing::warn!(path = req.path(), why, "console post refused");
        Some(
            HttpResponse::Forbidden()
                .content_type("text/plain; charset=utf-8")
                .body(format!("console post refused: {why}")),
        )
    };
    let header_str = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    // Fetch metadata (sent by current browsers): only the console's own pages may post.
    if let Some(site) = header_str("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return forbidden("cross-site request");
    }
    if let Some(origin) = header_str(header::ORIGIN.as_str()) {
        let host = req.connection_info().host().to_owned();
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|h| h.eq_ignore_ascii_case(&host));
        if !own {
            return forbidden("Origin is not the console's");
        }
    }
    if csrf != csrf_token() {
        return forbidden("missing or wrong csrf token (reload the console)");
    }
    None
}

/// Back to the console with `msg` shown at the top.
pub(crate) fn back(msg: &str) -> HttpResponse {
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

/// Which WeChat Pay API an order belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    #[default]
    V2,
    V3,
}

#[derive(Debug, Deserialize)]
pub struct PayForm {
    prepay_id: String,
    outcome: PayOutcome,
    #[serde(default)]
    csrf: String,
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

fn paid_msg(outcome: PayOutcome, what: &str) -> String {
    match outcome {
        PayOutcome::Fail => format!("payment failed for {what}"),
        _ => format!("paid {what}"),
    }
}

/// `POST /console/pay`: v2 runs `/sandbox/pay` itself, so the button and the API cannot
/// differ; v3 applies the outcome `/sandbox/pay` applies once the phone's paySign checks out.
pub async fn pay(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<PayForm>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(&req, &form.csrf) {
        return refused;
    }
    if !matches!(form.outcome, PayOutcome::Success | PayOutcome::Fail) {
        return back("refused: the console pays (success) or fails a payment (fail)");
    }
    let v3_order = sandbox.v3.state().prepay_ids.get(&form.prepay_id).cloned();
    if let Some(out_trade_no) = v3_order {
        return match crate::v3::settle_v3_payment(&sandbox, &out_trade_no, form.outcome, None) {
            Ok(_) => back(&paid_msg(form.outcome, &form.prepay_id)),
            Err(e) => back(&format!("refused: {e}")),
        };
    }
    let Some(body) = pay_body(&sandbox, &form) else {
        return back(&format!("refused: unknown prepay_id {}", form.prepay_id));
    };
    let body = web::Bytes::from(body.to_string());
    match notify::pay(req, sandbox, body).await {
        Ok(_) => back(&paid_msg(form.outcome, &form.prepay_id)),
        Err(e) => back(&format!("refused: {e}")),
    }
}

#[derive(Debug, Deserialize)]
pub struct OrderForm {
    #[serde(default)]
    api: Api,
    mch_id: String,
    out_trade_no: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /console/notify/resend`: a paid order's notify, sent again from attempt 1.
pub async fn resend_notify(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<OrderForm>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(&req, &form.csrf) {
        return refused;
    }
    if form.api == Api::V3 {
        let order = {
            let mut state = sandbox.v3.state();
            let Some(order) = state.orders.get_mut(&form.out_trade_no) else {
                return back(&format!("unknown order {}", form.out_trade_no));
            };
            if !matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND") {
                return back(&format!("order {} is not paid", form.out_trade_no));
            }
            order.notify_state = "pending".into();
            order.clone()
        };
        crate::v3::spawn_transaction_notify(&sandbox, &order);
        return back(&format!("notify of {} sent again", form.out_trade_no));
    }
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
pub async fn drop_notify(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<OrderForm>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(&req, &form.csrf) {
        return refused;
    }
    let no_pending = || {
        back(&format!(
            "order {} has no pending notify",
            form.out_trade_no
        ))
    };
    if form.api == Api::V3 {
        let mut state = sandbox.v3.state();
        let Some(order) = state.orders.get_mut(&form.out_trade_no) else {
            return back(&format!("unknown order {}", form.out_trade_no));
        };
        if order.notify_state != "pending" {
            return no_pending();
        }
        order.notify_state = "dropped".into();
        return back(&format!("notify of {} dropped", form.out_trade_no));
    }
    let key = (form.mch_id.clone(), form.out_trade_no.clone());
    let mut state = sandbox.state();
    let Some(order) = state.orders.get_mut(&key) else {
        return back(&format!("unknown order {}", form.out_trade_no));
    };
    if order.notify_state != NotifyState::Pending {
        return no_pending();
    }
    order.notify_state = NotifyState::Dropped;
    back(&format!("notify of {} dropped", form.out_trade_no))
}

/// How the console finishes a refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefundOutcome {
    /// SUCCESS: the money reached the payer.
    Success,
    /// CHANGE (退款异常): the money is held by WeChat until re-routed (then settle or close).
    Change,
    /// REFUNDCLOSE (退款关闭).
    Close,
}

#[derive(Debug, Deserialize)]
pub struct RefundForm {
    #[serde(default)]
    api: Api,
    mch_id: String,
    out_refund_no: String,
    outcome: RefundOutcome,
    #[serde(default)]
    csrf: String,
}

/// `POST /console/refund/finish`: WeChat finishes a PROCESSING refund (or settles / closes an
/// abnormal one) and notifies.
pub async fn finish_refund(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<RefundForm>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(&req, &form.csrf) {
        return refused;
    }
    // Each API concludes in its own words; the console says the same of both.
    let (status, concluded) = if form.api == Api::V3 {
        let end = match form.outcome {
            RefundOutcome::Success => crate::v3::V3RefundEnd::Success,
            RefundOutcome::Change => crate::v3::V3RefundEnd::Abnormal,
            RefundOutcome::Close => crate::v3::V3RefundEnd::Closed,
        };
        let sandbox = sandbox.into_inner();
        (
            end.as_str(),
            crate::v3::conclude_refund(&sandbox, &form.out_refund_no, end),
        )
    } else {
        let status = match form.outcome {
            RefundOutcome::Success => RefundStatus::Success,
            RefundOutcome::Change => RefundStatus::Change,
            RefundOutcome::Close => RefundStatus::RefundClose,
        };
        let key = (form.mch_id.clone(), form.out_refund_no.clone());
        let concluded = refund::conclude(&sandbox, &key, status);
        if concluded == Ok(true) {
            refund::spawn_notify(sandbox.into_inner(), key);
        }
        (status.as_str(), concluded)
    };
    match concluded {
        Err(e) => back(&format!("refused: {e}")),
        Ok(sent) => back(&format!(
            "refund {} is {status}{}",
            form.out_refund_no,
            if sent { ", notify sent" } else { "" }
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct AppForm {
    appid: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /console/token/expire`.
pub async fn expire_token(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<AppForm>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(&req, &form.csrf) {
        return refused;
    }
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
