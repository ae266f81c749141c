//! `POST /pay/refund-notify`: WeChat Pay's refund notify. XML in, XML out, no token and no
//! signature: pay-service decrypts `req_info` (AES-256-ECB under md5 of the pay key) and
//! trusts it only when it matches a refund we asked for. The gateway bounds the body and
//! relays the reply.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use wxmp_proto::pay::v1::HandleRefundNotifyRequest;

use super::{
    notify::{fail, xml},
    notify_body::{read_bounded, upstream_failure},
};
use crate::{request_id::RequestId, server::AppState};

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
        (status = 500, description = "FAIL: internal error; WeChat retries", body = String, content_type = "text/xml"),
        (status = 503, description = "FAIL: pay-service unavailable; WeChat retries", body = String, content_type = "text/xml"),
    ))]
pub async fn refund_notify(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let body = match read_bounded(&req, payload, REFUND_NOTIFY_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return fail(e.status(), &e.to_string()),
    };
    let upstreams = &state.upstreams;
    let outcome = upstreams
        .pay()
        .handle_refund_notify(upstreams.request(
            &request_id,
            HandleRefundNotifyRequest {
                raw_body: body.to_vec(),
            },
        ))
        .await;
    match outcome {
        Ok(response) => {
            let response = response.into_inner();
            tracing::info!(verdict = %response.verdict, accepted = response.accepted, "refund notify");
            metrics::counter!("wxmp_refund_notify_total", "verdict" => response.verdict.clone())
                .increment(1);
            xml(StatusCode::OK, response.reply_xml)
        }
        Err(status) => fail(
            upstream_failure(&status, "refund notify"),
            "temporarily unavailable",
        ),
    }
}
