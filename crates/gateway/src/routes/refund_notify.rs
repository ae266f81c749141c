//! `POST /pay/refund-notify`: WeChat Pay's refund notify. XML in, XML out, no token and no
//! signature: pay-service decrypts `req_info` (AES-256-ECB under md5 of the pay key) and
//! trusts it only when it matches a refund we asked for. The gateway bounds the body and
//! relays the reply.
//!
//! `POST /pay/refund-notify/v3`: the v3 refund notify (JSON, signed like every v3 notify,
//! AES-256-GCM resource), relayed like `/pay/notify/v3` to pay.HandleRefundNotifyV3.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use wxmp_proto::pay::v1::HandleRefundNotifyRequest;

use super::{
    notify::{V3Notify, fail, marked, relay_v3, xml},
    notify_body::{read_bounded, upstream_failure},
};
use crate::{extract, request_id::RequestId, server::AppState};

/// Real refund notifies are about 1.5 KiB; anything this big is not one.
pub const REFUND_NOTIFY_BODY_LIMIT: usize = 64 * 1024;

/// `POST /pay/refund-notify`: WeChat's refund notify, relayed as is to pay-service.
#[utoipa::path(post, path = "/pay/refund-notify", tag = "wechat",
    summary = "WeChat Pay v2 refund notify (pay.HandleRefundNotify); WeChat's, not the mini program's",
    description = "Point `PAY_REFUND_NOTIFY_URL` here. XML whose `req_info` is AES-256-ECB encrypted with md5(pay key): the encryption is the credential (no token, no sign). Not enveloped.",
    request_body(content = String, content_type = "text/xml", description = "WeChat's refund notify XML"),
    responses(
        (status = 200, description = "return_code SUCCESS (settled, or already settled) or FAIL (refused: undecryptable, unknown or mismatched refund)", body = String, content_type = "text/xml"),
        (status = 400, description = "FAIL: unreadable body", body = String, content_type = "text/xml"),
        (status = 413, description = "FAIL: body too large", body = String, content_type = "text/xml"),
        (status = 429, description = "FAIL: an undecryptable notify from an address over its budget of undecryptable notifies", body = String, content_type = "text/xml"),
        (status = 500, description = "FAIL: internal error; WeChat retries", body = String, content_type = "text/xml"),
        (status = 503, description = "FAIL: pay-service unavailable; WeChat retries", body = String, content_type = "text/xml"),
    ))]
pub async fn refund_notify(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    // As for pay notifies (see notify.rs): a body that does not decrypt with the merchant key
    // (`undecryptable`: the v2 refund notify's only credential failed) counts against its
    // sender; a sender over GATEWAY_NOTIFY_FAIL_LIMIT is marked throttled, and pay-service then
    // decrypts before anything else and drops a forgery unrecorded (429, `rate_limited`).
    let client_ip = extract::client_ip(&req, &state.trusted_proxies);
    let limit = state.notify_fail_limit.as_deref().zip(client_ip);
    let throttled = match limit {
        Some((limit, ip)) => limit.exhausted(ip).await,
        None => false,
    };
    if let (true, Some(ip)) = (throttled, client_ip) {
        tracing::info!(client_ip = %ip, "refund notify from a throttled sender: decrypt first");
    }
    let body = match read_bounded(&req, payload, REFUND_NOTIFY_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return fail(e.status(), &e.to_string()),
    };
    let upstreams = &state.upstreams;
    let outcome = upstreams
        .pay()
        .handle_refund_notify(marked(
            throttled,
            upstreams.request(
                &request_id,
                HandleRefundNotifyRequest {
                    raw_body: body.to_vec(),
                },
            ),
        ))
        .await;
    match outcome {
        Ok(response) => {
            let response = response.into_inner();
            tracing::info!(verdict = %response.verdict, accepted = response.accepted, "refund notify");
            metrics::counter!("wxmp_refund_notify_total", "verdict" => response.verdict.clone())
                .increment(1);
            match response.verdict.as_str() {
                "undecryptable" => {
                    if let Some((limit, ip)) = limit {
                        limit.record(ip).await;
                    }
                }
                "rate_limited" => {
                    if let Some(ip) = client_ip {
                        tracing::warn!(client_ip = %ip, "refund notify refused: too many undecryptable notifies");
                    }
                    return xml(StatusCode::TOO_MANY_REQUESTS, response.reply_xml);
                }
                _ => {}
            }
            xml(StatusCode::OK, response.reply_xml)
        }
        Err(status) => fail(
            upstream_failure(&status, "refund notify"),
            "temporarily unavailable",
        ),
    }
}

/// `POST /pay/refund-notify/v3`: WeChat Pay v3's refund notify (`REFUND.SUCCESS`,
/// `REFUND.ABNORMAL`, `REFUND.CLOSED`), relayed with its four `Wechatpay-*` headers.
#[utoipa::path(post, path = "/pay/refund-notify/v3", tag = "wechat",
    summary = "WeChat Pay v3 refund notify (pay.HandleRefundNotifyV3); WeChat's, not the mini program's",
    description = "v3 refunds send their notify to `PAY_REFUND_NOTIFY_URL` + `/v3`, i.e. here. JSON with an AES-256-GCM encrypted `resource` (the refund: out_refund_no, out_trade_no, refund_status, amount), signed in the `Wechatpay-Timestamp`, `-Nonce`, `-Signature` and `-Serial` headers: the signature is the credential; the refund must then match ours (identity and amounts). At most 64 KiB. Not enveloped.",
    request_body(content = String, content_type = "application/json", description = "WeChat's v3 refund notify"),
    params(
        ("Wechatpay-Timestamp" = String, Header, description = "Unix seconds; refused outside ±5 minutes"),
        ("Wechatpay-Nonce" = String, Header, description = "Random string of the signature"),
        ("Wechatpay-Signature" = String, Header, description = "base64 SHA256withRSA over timestamp, nonce and body"),
        ("Wechatpay-Serial" = String, Header, description = "PUB_KEY_ID_… or the platform certificate's serial"),
    ),
    responses(
        (status = 204, description = "accepted (settled now or before)"),
        (status = 400, description = "`{\"code\":\"FAIL\",\"message\"}`: refused (signature, clock, ciphertext, unknown or mismatched refund...), or an unreadable body", body = String, content_type = "application/json"),
        (status = 413, description = "`{\"code\":\"FAIL\"}`: body too large", body = String, content_type = "application/json"),
        (status = 429, description = "`{\"code\":\"FAIL\",\"message\":\"rate_limited\"}`: a forgery from an address over its budget of failed signatures", body = String, content_type = "application/json"),
        (status = 500, description = "`{\"code\":\"FAIL\"}`: internal error; WeChat retries", body = String, content_type = "application/json"),
        (status = 503, description = "`{\"code\":\"FAIL\"}`: pay-service unavailable; WeChat retries", body = String, content_type = "application/json"),
    ))]
pub async fn refund_notify_v3(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    relay_v3(state, request_id, req, payload, V3Notify::Refund).await
}
