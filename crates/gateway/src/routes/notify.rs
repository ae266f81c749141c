//! `POST /pay/notify`: WeChat Pay's payment notify. XML in, XML out, no token: pay-service
//! verifies the signature. The gateway only bounds the body, relays the reply, and throttles
//! senders of forged notifies.
//!
//! The limiter counts only notifies whose signature failed (`bad_signature`; for v2 refund
//! notifies, which have no signature, those that do not decrypt: `undecryptable`): an unknown
//! order, a wrong amount or a body our parser rejects can come from WeChat itself, and must
//! never lock WeChat out. After `GATEWAY_NOTIFY_FAIL_LIMIT` signature failures from a client
//! IP in `GATEWAY_NOTIFY_FAIL_WINDOW_SECS`, its notifies still reach pay-service, marked
//! throttled ([`service_kit::grpc::NOTIFY_SENDER_THROTTLED`]): pay-service then checks the
//! signature before anything else and drops a notify that does not verify, unrecorded
//! (verdict `rate_limited`, HTTP 429 with a FAIL reply), while a verified one is handled as
//! usual. So the throttle costs a forger's notify one signature check and no database work,
//! and a genuine notify is never refused, whoever shares its address (a proxy, a NAT).

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use wxmp_proto::pay::v1::{
    HandlePayNotifyRequest, HandlePayNotifyV3Request, HandlePayNotifyV3Response,
    HandleRefundNotifyV3Request, HandleRefundNotifyV3Response,
};

use super::notify_body::{read_bounded, upstream_failure};
use crate::{envelope::Formatted, extract, request_id::RequestId, server::AppState};

/// Real notifies are about 1 KiB; anything this big is not one.
pub const NOTIFY_BODY_LIMIT: usize = 64 * 1024;

pub(crate) fn xml(status: StatusCode, body: String) -> HttpResponse {
    let mut response = HttpResponse::build(status)
        .content_type("text/xml; charset=utf-8")
        .body(body);
    // WeChat reads XML: keep the JSON envelope away from these answers.
    response.extensions_mut().insert(Formatted);
    response
}

/// WeChat's FAIL answer; it retries the notify later.
pub(crate) fn fail(status: StatusCode, msg: &str) -> HttpResponse {
    xml(
        status,
        format!(
            "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[{msg}]]></return_msg></xml>"
        ),
    )
}

/// WeChat Pay's payment notify: XML in, XML out.
#[utoipa::path(post, path = "/pay/notify", tag = "wechat",
    summary = "WeChat Pay v2 payment notify (pay.HandlePayNotify); WeChat's, not the mini program's",
    description = "Point `PAY_NOTIFY_URL` here. Signed XML, at most 64 KiB; no token: the signature is the credential. Not enveloped.",
    request_body(content = String, content_type = "text/xml", description = "WeChat's notify XML"),
    responses(
        (status = 200, description = "return_code SUCCESS (handled, or already handled) or FAIL (refused: bad signature, amount, appid...)", body = String, content_type = "text/xml"),
        (status = 400, description = "FAIL: unreadable body", body = String, content_type = "text/xml"),
        (status = 413, description = "FAIL: body too large", body = String, content_type = "text/xml"),
        (status = 429, description = "FAIL: too many failed notifies from this IP", body = String, content_type = "text/xml"),
        (status = 500, description = "FAIL: internal error; WeChat retries", body = String, content_type = "text/xml"),
        (status = 503, description = "FAIL: pay-service unavailable; WeChat retries", body = String, content_type = "text/xml"),
    ))]
pub async fn pay_notify(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let client_ip = extract::client_ip(&req, &state.trusted_proxies);
    let limit = state.notify_fail_limit.as_deref().zip(client_ip);
    let throttled = match limit {
        Some((limit, ip)) => limit.exhausted(ip).await,
        None => false,
    };
    if let (true, Some(ip)) = (throttled, client_ip) {
        tracing::info!(client_ip = %ip, "pay notify from a throttled sender: verify first");
    }
    let body = match read_bounded(&req, payload, NOTIFY_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return fail(e.status(), &e.to_string()),
    };
    let upstreams = &state.upstreams;
    let request = marked(
        throttled,
        upstreams.request(
            &request_id,
            HandlePayNotifyRequest {
                raw_body: body.to_vec(),
            },
        ),
    );
    let outcome = upstreams.pay().handle_pay_notify(request).await;
    match outcome {
        Ok(response) => {
            let response = response.into_inner();
            tracing::info!(verdict = %response.verdict, accepted = response.accepted, "pay notify");
            metrics::counter!("wxmp_pay_notify_total", "verdict" => response.verdict.clone())
                .increment(1);
            match response.verdict.as_str() {
                // Forged (or signed with another key): the one failure a sender is counted for.
                "bad_signature" => {
                    if let Some((limit, ip)) = limit {
                        limit.record(ip).await;
                    }
                }
                "rate_limited" => {
                    if let Some(ip) = client_ip {
                        tracing::warn!(client_ip = %ip, "pay notify refused: too many failed signatures");
                    }
                    return xml(StatusCode::TOO_MANY_REQUESTS, response.reply_xml);
                }
                _ => {}
            }
            xml(StatusCode::OK, response.reply_xml)
        }
        Err(status) => fail(
            upstream_failure(&status, "pay notify"),
            "temporarily unavailable",
        ),
    }
}

/// `request`, marked for pay-service when its sender is throttled (authenticate first).
pub(crate) fn marked<T>(throttled: bool, mut request: tonic::Request<T>) -> tonic::Request<T> {
    if throttled {
        request.metadata_mut().insert(
            service_kit::grpc::NOTIFY_SENDER_THROTTLED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    request
}

/// Pay v3's refusal: WeChat retries on any 4xx/5xx; the body is `{"code":"FAIL","message"}`.
fn fail_v3(status: StatusCode, message: &str) -> HttpResponse {
    let mut response =
        HttpResponse::build(status).json(serde_json::json!({ "code": "FAIL", "message": message }));
    response.extensions_mut().insert(Formatted);
    response
}

fn accepted_v3() -> HttpResponse {
    let mut response = HttpResponse::NoContent().finish();
    response.extensions_mut().insert(Formatted);
    response
}

/// `POST /pay/notify/v3`: a WeChat Pay v3 notify (JSON, `Wechatpay-*` headers, encrypted
/// resource). pay-service verifies and decrypts; the gateway bounds the body, relays the four
/// headers, and answers 204 or `{"code":"FAIL","message"}`.
#[utoipa::path(post, path = "/pay/notify/v3", tag = "wechat",
    summary = "WeChat Pay v3 payment notify (pay.HandlePayNotifyV3); WeChat's, not the mini program's",
    description = "JSON with an AES-256-GCM encrypted `resource`, signed in the `Wechatpay-Timestamp`, `-Nonce`, `-Signature` and `-Serial` headers: the signature is the credential. At most 64 KiB. Not enveloped.",
    request_body(content = String, content_type = "application/json", description = "WeChat's v3 notify"),
    params(
        ("Wechatpay-Timestamp" = String, Header, description = "Unix seconds; refused outside ±5 minutes"),
        ("Wechatpay-Nonce" = String, Header, description = "Random string of the signature"),
        ("Wechatpay-Signature" = String, Header, description = "base64 SHA256withRSA over timestamp, nonce and body"),
        ("Wechatpay-Serial" = String, Header, description = "PUB_KEY_ID_… or the platform certificate's serial"),
    ),
    responses(
        (status = 204, description = "accepted (applied now or before)"),
        (status = 400, description = "`{\"code\":\"FAIL\",\"message\"}`: refused (signature, clock, ciphertext, amount, appid...), or an unreadable body", body = String, content_type = "application/json"),
        (status = 413, description = "`{\"code\":\"FAIL\"}`: body too large", body = String, content_type = "application/json"),
        (status = 429, description = "`{\"code\":\"FAIL\",\"message\":\"rate_limited\"}`: a forgery from an address over its budget of failed signatures", body = String, content_type = "application/json"),
        (status = 500, description = "`{\"code\":\"FAIL\"}`: internal error; WeChat retries", body = String, content_type = "application/json"),
        (status = 503, description = "`{\"code\":\"FAIL\"}`: pay-service unavailable; WeChat retries", body = String, content_type = "application/json"),
    ))]
pub async fn pay_notify_v3(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay_v3(state, request_id, req, payload, V3Notify::Payment).await
}

/// Which v3 notify a relay carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum V3Notify {
    /// `TRANSACTION.*` → pay.HandlePayNotifyV3.
    Payment,
    /// `REFUND.*` → pay.HandleRefundNotifyV3.
    Refund,
}

/// What pay-service answered a v3 notify (payment or refund: the same three fields).
struct V3Answer {
    accepted: bool,
    verdict: String,
    message: String,
}

impl From<HandlePayNotifyV3Response> for V3Answer {
    fn from(r: HandlePayNotifyV3Response) -> Self {
        Self {
            accepted: r.accepted,
            verdict: r.verdict,
            message: r.message,
        }
    }
}

impl From<HandleRefundNotifyV3Response> for V3Answer {
    fn from(r: HandleRefundNotifyV3Response) -> Self {
        Self {
            accepted: r.accepted,
            verdict: r.verdict,
            message: r.message,
        }
    }
}

/// Relays one v3 notify: bound the body, pass it with the four `Wechatpay-*` headers to
/// pay-service, answer 204 or `{"code":"FAIL","message"}` (503 when WeChat should retry soon).
pub(crate) async fn relay_v3(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
    kind: V3Notify,
) -> HttpResponse {
    let client_ip = extract::client_ip(&req, &state.trusted_proxies);
    let limit = state.notify_fail_limit.as_deref().zip(client_ip);
    // As on v2: a sender over its budget of forged signatures is marked, and pay-service
    // authenticates its notifies before anything else (a genuine one is still applied; a
    // forged one is dropped unrecorded, 429).
    let throttled = match limit {
        Some((limit, ip)) => limit.exhausted(ip).await,
        None => false,
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let body = match read_bounded(&req, payload, NOTIFY_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return fail_v3(e.status(), &e.to_string()),
    };
    let raw_body = body.to_vec();
    let (timestamp, nonce, signature, serial) = (
        header("Wechatpay-Timestamp"),
        header("Wechatpay-Nonce"),
        header("Wechatpay-Signature"),
        header("Wechatpay-Serial"),
    );
    let upstreams = &state.upstreams;
    let (what, metric) = match kind {
        V3Notify::Payment => ("v3 pay notify", "wxmp_pay_notify_total"),
        V3Notify::Refund => ("v3 refund notify", "wxmp_refund_notify_total"),
    };
    let outcome = match kind {
        V3Notify::Payment => upstreams
            .pay()
            .handle_pay_notify_v3(marked(
                throttled,
                upstreams.request(
                    &request_id,
                    HandlePayNotifyV3Request {
                        raw_body,
                        timestamp,
                        nonce,
                        signature,
                        serial,
                    },
                ),
            ))
            .await
            .map(|r| V3Answer::from(r.into_inner())),
        V3Notify::Refund => upstreams
            .pay()
            .handle_refund_notify_v3(marked(
                throttled,
                upstreams.request(
                    &request_id,
                    HandleRefundNotifyV3Request {
                        raw_body,
                        timestamp,
                        nonce,
                        signature,
                        serial,
                    },
                ),
            ))
            .await
            .map(|r| V3Answer::from(r.into_inner())),
    };
    match outcome {
        Ok(response) => {
            tracing::info!(verdict = %response.verdict, accepted = response.accepted, "{what}");
            metrics::counter!(metric, "verdict" => response.verdict.clone()).increment(1);
            if response.accepted {
                return accepted_v3();
            }
            if response.verdict == "internal_error" {
                return fail_v3(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
            }
            if response.verdict == "rate_limited" {
                if let Some(ip) = client_ip {
                    tracing::warn!(client_ip = %ip, "{what} refused: too many failed signatures");
                }
                return fail_v3(StatusCode::TOO_MANY_REQUESTS, &response.message);
            }
            if response.verdict == "bad_signature"
                && let Some((limit, ip)) = limit
            {
                limit.record(ip).await;
            }
            fail_v3(StatusCode::BAD_REQUEST, &response.message)
        }
        Err(status) => fail_v3(upstream_failure(&status, what), "temporarily unavailable"),
    }
}
