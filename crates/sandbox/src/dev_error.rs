//! Errors of the `/sandbox/*` developer endpoints: `{"error": <kind>, "message": <text>}`.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown appid {0}")]
    UnknownApp(String),
    #[error("unknown user {openid} of app {appid}")]
    UnknownUser { appid: String, openid: String },
    #[error("user {openid} of app {appid} never logged in (no session_key yet)")]
    NotLoggedIn { appid: String, openid: String },
    #[error("unknown prepay_id {0}")]
    UnknownPrepay(String),
    #[error("unknown order {0}")]
    UnknownOrder(String),
    #[error("{0}")]
    Conflict(String),
    /// What `wx.requestPayment`'s fail callback would say (`requestPayment:fail ...`).
    #[error("{0}")]
    RequestPaymentFail(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl DevError {
    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::UnknownApp(_) => "unknown_app",
            Self::UnknownUser { .. } => "unknown_user",
            Self::NotLoggedIn { .. } => "not_logged_in",
            Self::UnknownPrepay(_) => "unknown_prepay_id",
            Self::UnknownOrder(_) => "unknown_order",
            Self::Conflict(_) => "conflict",
            Self::RequestPaymentFail(_) => "request_payment_fail",
            Self::Internal(_) => "internal",
        }
    }
}

impl ResponseError for DevError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::RequestPaymentFail(_) => StatusCode::BAD_REQUEST,
            Self::UnknownApp(_)
            | Self::UnknownUser { .. }
            | Self::NotLoggedIn { .. }
            | Self::UnknownPrepay(_)
            | Self::UnknownOrder(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(json!({ "error": self.kind(), "message": self.to_string() }))
    }
}

/// Parses a developer endpoint's JSON body; an empty body is the type's default, and no
/// content-type is required (curl users forget it).
pub fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, DevError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| DevError::BadRequest(format!("invalid JSON body: {e}")))
}
