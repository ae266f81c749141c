//! `GET/POST /wechat/push/{appid}`: the mini program's message push (消息推送), one URL per
//! configured app (`GATEWAY_PUSH_APPS`: its token, EncodingAESKey and mode).
//!
//! * GET is WeChat's server check: `echostr` back when `signature` matches.
//! * POST is an event: verified here once ([`wechat::push::PushApp::open`]: the signature, or
//!   in safe mode `msg_signature` and the AES-256-CBC decryption with its appid check; a
//!   timestamp further than `GATEWAY_PUSH_MAX_SKEW_SECS` from our clock is a replay), then
//!   routed by event name through [`ROUTES`] to the service that owns it, which deduplicates
//!   WeChat's retries where its state lives (the push's dedup key, unique in its database).
//!   WeChat waits 5 s for `success` and retries 3 times: the owner's call is bounded by
//!   [`PUSH_DEADLINE`], and a failure answers 503 so that WeChat retries.
//! * An event no service owns is acknowledged (`success`) and counted
//!   (`wxmp_push_total{verdict="unknown_event"}`), never an error.
//! * A push that does not verify changes nothing, answers 401, and counts against its sender
//!   in the notify throttle (`GATEWAY_NOTIFY_FAIL_LIMIT`), like a forged pay notify: a throttled
//!   sender's pushes are still verified (WeChat is never locked out), its failures answer 429.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use wechat::push::{PushError, PushQuery};
use wxmp_proto::pay::v1::HandleMessagePushRequest;

use super::notify_body::{read_bounded, upstream_failure};
use crate::{envelope::Formatted, extract, request_id::RequestId, server::AppState};

/// WeChat's messages are about 1 KiB.
pub const PUSH_BODY_LIMIT: usize = 64 * 1024;
/// How long the owning service may take: WeChat gives up after 5 s.
pub const PUSH_DEADLINE: Duration = Duration::from_millis(4000);

/// The services an event can belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// pay-service's `HandleMessagePush`.
    Pay,
}

/// Event name → owner. The next capability's events (virtual payment's `xpay_*`,
/// complaints) are new rows.
pub const ROUTES: &[(&str, Owner)] = &[
    // Order shipping (发货信息管理): settlement, reminders, trade management.
    ("trade_manage_order_settlement", Owner::Pay),
    ("trade_manage_remind_access_api", Owner::Pay),
    ("trade_manage_remind_shipping", Owner::Pay),
    ("wxa_trade_controlled", Owner::Pay),
    // Virtual payment (虚拟支付): a 道具直购 order paid, its goods to deliver.
    ("xpay_goods_deliver_notify", Owner::Pay),
    // Virtual payment, coin mode (代币): a coin purchase paid.
    ("xpay_coin_pay_notify", Owner::Pay),
    // Virtual payment: the result of a virtual order's refund.
    ("xpay_refund_notify", Owner::Pay),
];

/// The owner of `event`, if any.
pub fn route(event: &str) -> Option<(&'static str, Owner)> {
    ROUTES.iter().find(|(name, _)| *name == event).copied()
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body);
    // WeChat reads the plain text: keep the JSON envelope away.
    response.extensions_mut().insert(Formatted);
    response
}

/// Exports `wxmp_push_total` from the start (at 0), so its alert has a series before the first
/// refused push.
pub fn register_metrics() {
    for verdict in ["routed", "bad_signature"] {
        metrics::counter!("wxmp_push_total", "verdict" => verdict, "event" => "none").increment(0);
    }
}

fn counted(verdict: &'static str, event: &'static str) {
    metrics::counter!("wxmp_push_total", "verdict" => verdict, "event" => event).increment(1);
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A refused push: counted, the sender's failure recorded, 401 (429 when throttled).
async fn refused(
    state: &AppState,
    req: &HttpRequest,
    why: &PushError,
    throttled: bool,
) -> HttpResponse {
    let verdict = match why {
        PushError::BadSignature | PushError::MissingParameter(_) => "bad_signature",
        PushError::StaleTimestamp => "stale_timestamp",
        PushError::AppIdMismatch => "appid_mismatch",
        _ => "malformed",
    };
    counted(verdict, "none");
    let ip = extract::client_ip(req, &state.trusted_proxies);
    if let (Some(limit), Some(ip)) = (state.notify_fail_limit.as_deref(), ip) {
        limit.record(ip).await;
    }
    tracing::warn!(client_ip = ?ip, verdict, error = %why, "message push refused");
    if throttled {
        text(StatusCode::TOO_MANY_REQUESTS, "too many failed pushes")
    } else {
        text(StatusCode::UNAUTHORIZED, "refused")
    }
}

async fn throttled(state: &AppState, req: &HttpRequest) -> bool {
    let ip = extract::client_ip(req, &state.trusted_proxies);
    match (state.notify_fail_limit.as_deref(), ip) {
        (Some(limit), Some(ip)) => limit.exhausted(ip).await,
        _ => false,
    }
}

fn query_of(req: &HttpRequest) -> Result<PushQuery, PushError> {
    web::Query::<PushQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|_| PushError::MissingParameter("signature"))
}

/// WeChat's server check (GET): `echostr` when signed with the app's token.
#[utoipa::path(get, path = "/wechat/push/{appid}", tag = "wechat",
    summary = "WeChat message push: the server check; WeChat's, not the mini program's",
    description = "Paste `https://<host>/wechat/push/<appid>` as the URL of 开发管理 → 消息推送, with the token and EncodingAESKey of `GATEWAY_PUSH_APPS`. Answers `echostr` when `signature` matches. Not enveloped.",
    params(("appid" = String, Path, description = "the mini program's appid")),
    responses(
        (status = 200, description = "echostr", body = String, content_type = "text/plain"),
        (status = 401, description = "bad signature or stale timestamp", body = String, content_type = "text/plain"),
        (status = 404, description = "appid not configured", body = String, content_type = "text/plain"),
    ))]
pub async fn check(
    state: web::Data<AppState>,
    req: HttpRequest,
    appid: web::Path<String>,
) -> HttpResponse {
    let throttled = throttled(&state, &req).await;
    let Some(app) = state.push_apps.get(appid.as_str()) else {
        counted("unknown_app", "none");
        return text(StatusCode::NOT_FOUND, "unknown app");
    };
    let query = match query_of(&req) {
        Ok(q) => q,
        Err(e) => return refused(&state, &req, &e, throttled).await,
    };
    match app.check_url(&query, now(), state.push_max_skew_secs) {
        Ok(echostr) => {
            counted("url_check", "none");
            let mut response = HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .body(echostr.to_owned());
            response.extensions_mut().insert(Formatted);
            response
        }
        Err(e) => refused(&state, &req, &e, throttled).await,
    }
}

/// A pushed event (POST): verified, routed by event name, `success` once its owner handled it.
#[utoipa::path(post, path = "/wechat/push/{appid}", tag = "wechat",
    summary = "WeChat message push: an event (shipping, settlement...); WeChat's, not the mini program's",
    description = "JSON or XML, plaintext or safe mode (as configured for the app). Answers `success` when the event is handled, a duplicate, or not owned by any service (counted). Not enveloped.",
    params(("appid" = String, Path, description = "the mini program's appid")),
    request_body(content = String, description = "WeChat's push (JSON or XML)"),
    responses(
        (status = 200, description = "success", body = String, content_type = "text/plain"),
        (status = 401, description = "refused: signature, timestamp window or appid", body = String, content_type = "text/plain"),
        (status = 404, description = "appid not configured", body = String, content_type = "text/plain"),
        (status = 413, description = "body too large", body = String, content_type = "text/plain"),
        (status = 429, description = "refused, from a sender with too many failed pushes", body = String, content_type = "text/plain"),
        (status = 503, description = "the owning service is unavailable: WeChat retries", body = String, content_type = "text/plain"),
    ))]
pub async fn receive(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    appid: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let throttled = throttled(&state, &req).await;
    let Some(app) = state.push_apps.get(appid.as_str()) else {
        counted("unknown_app", "none");
        return text(StatusCode::NOT_FOUND, "unknown app");
    };
    let body = match read_bounded(&req, payload, PUSH_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => {
            counted("malformed", "none");
            return text(e.status(), "unreadable body");
        }
    };
    let query = match query_of(&req) {
        Ok(q) => q,
        Err(e) => return refused(&state, &req, &e, throttled).await,
    };
    let message = match app.open(&query, &body, now(), state.push_max_skew_secs) {
        Ok(m) => m,
        Err(e) => return refused(&state, &req, &e, throttled).await,
    };
    let Some((event, owner)) = route(&message.event) else {
        counted("unknown_event", "other");
        tracing::info!(event = %message.event.chars().take(64).collect::<String>(), "message push of an event no service owns: acknowledged");
        return text(StatusCode::OK, "success");
    };
    match owner {
        Owner::Pay => {
            let upstreams = &state.upstreams;
            let mut pay = upstreams.pay();
            let call = pay.handle_message_push(upstreams.request(
                &request_id,
                HandleMessagePushRequest {
                    app_id: app.appid().to_owned(),
                    event: event.to_owned(),
                    message_json: message.fields.to_string(),
                    dedup_key: message.dedup_key,
                },
            ));
            match tokio::time::timeout(PUSH_DEADLINE, call).await {
                Ok(Ok(response)) => {
                    let verdict = response.into_inner().verdict;
                    tracing::info!(event, verdict = %verdict, "message push");
                    counted("routed", event);
                    text(StatusCode::OK, "success")
                }
                Ok(Err(status)) => {
                    counted("upstream_failed", event);
                    text(upstream_failure(&status, "message push"), "retry")
                }
                Err(_) => {
                    counted("upstream_timeout", event);
                    tracing::warn!(
                        event,
                        "message push: pay-service too slow; WeChat will retry"
                    );
                    text(StatusCode::SERVICE_UNAVAILABLE, "retry")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_routed_once() {
        let mut names: Vec<&str> = ROUTES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ROUTES.len());
        assert_eq!(
            route("trade_manage_order_settlement").map(|r| r.1),
            Some(Owner::Pay)
        );
        assert_eq!(route("xpay_unknown_future_event"), None);
    }
}
