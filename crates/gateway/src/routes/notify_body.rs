//! What WeChat's notify routes share: a body read under a limit (WeChat's notifies are a few
//! KiB; a bigger body is refused before it is buffered), and the HTTP status of a pay-service
//! failure (both make WeChat retry).

use actix_web::{HttpRequest, http::StatusCode, web};
use futures::StreamExt;
use service_kit::ErrorReason;

/// Why a notify body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body too large")]
    TooLarge,
    #[error("unreadable body")]
    Unreadable,
}

impl BodyError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unreadable => StatusCode::BAD_REQUEST,
        }
    }
}

/// The whole body, refused as soon as its declared or received length passes `limit`.
pub async fn read_bounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, BodyError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The status of a notify pay-service could not handle: 503 when it (or what it needs) is
/// down, so operators and proxies see our outage; 500 otherwise. The body is FAIL either way.
pub fn upstream_failure(status: &tonic::Status, what: &str) -> StatusCode {
    let reason = service_kit::reason::reason_of(status);
    tracing::warn!(grpc_code = ?status.code(), reason = reason.as_str_name(), message = status.message(), "{what} not handled");
    match reason {
        ErrorReason::DependencyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
