//! The HTTP envelope `{"code", "msg", "data"}` and the one table that maps failures to it.
//!
//! Every JSON answer of the gateway, success or failure, goes through this module: handlers
//! return [`ok`] or an [`ApiError`], and [`fallback`] wraps whatever actix itself answers
//! (unknown route, wrong method, body errors) so a client never sees anything but the envelope.

use std::fmt;

use actix_web::{
    HttpResponse, ResponseError,
    body::{BoxBody, MessageBody},
    dev::ServiceResponse,
    http::{StatusCode, header},
};
use serde::Serialize;
use service_kit::ErrorReason;

/// The envelope codes. The numeric value is the `code` field; see the crate docs for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Suc,
    MissingParameter,
    InvalidCredential,
    InvalidRequest,
    BodyTooLarge,
    DecryptFailed,
    Forbidden,
    NotFound,
    RateLimited,
    OrderState,
    IdempotencyConflict,
    WechatError,
    WechatUnavailable,
    ServiceUnavailable,
    PhoneCodeInvalid,
    WechatBusy,
    AppMisconfigured,
    Internal,
}

impl Code {
    /// Every code, in the order of the table (the OpenAPI document lists them from here; a
    /// test checks every reason and HTTP status maps to one of these).
    pub const ALL: [Code; 18] = [
        Code::Suc,
        Code::MissingParameter,
        Code::InvalidCredential,
        Code::InvalidRequest,
        Code::BodyTooLarge,
        Code::DecryptFailed,
        Code::Forbidden,
        Code::NotFound,
        Code::RateLimited,
        Code::OrderState,
        Code::IdempotencyConflict,
        Code::WechatError,
        Code::WechatUnavailable,
        Code::ServiceUnavailable,
        Code::PhoneCodeInvalid,
        Code::WechatBusy,
        Code::AppMisconfigured,
        Code::Internal,
    ];

    /// The whole table: (envelope code, HTTP status, default msg).
    pub const fn entry(self) -> (u16, StatusCode, &'static str) {
        match self {
            Code::Suc => (200, StatusCode::OK, "suc"),
            Code::MissingParameter => (201, StatusCode::BAD_REQUEST, "missing parameter"),
            Code::InvalidCredential => (202, StatusCode::UNAUTHORIZED, "invalid code or token"),
            Code::InvalidRequest => (203, StatusCode::BAD_REQUEST, "invalid request"),
            Code::BodyTooLarge => (204, StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
            Code::DecryptFailed => (205, StatusCode::BAD_REQUEST, "decryption failed"),
            Code::Forbidden => (206, StatusCode::FORBIDDEN, "forbidden"),
            Code::NotFound => (207, StatusCode::NOT_FOUND, "not found"),
            Code::RateLimited => (208, StatusCode::TOO_MANY_REQUESTS, "rate limited"),
            Code::OrderState => (209, StatusCode::CONFLICT, "order state conflict"),
            Code::IdempotencyConflict => (210, StatusCode::CONFLICT, "idempotency conflict"),
            Code::WechatError => (211, StatusCode::BAD_GATEWAY, "wechat error"),
            Code::WechatUnavailable => (212, StatusCode::SERVICE_UNAVAILABLE, "wechat unavailable"),
            Code::ServiceUnavailable => {
                (213, StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
            }
            Code::PhoneCodeInvalid => (221, StatusCode::BAD_REQUEST, "invalid phone code"),
            Code::WechatBusy => (222, StatusCode::SERVICE_UNAVAILABLE, "wechat busy, retry"),
            Code::AppMisconfigured => (223, StatusCode::BAD_GATEWAY, "app misconfigured"),
            Code::Internal => (500, StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        }
    }

    pub const fn value(self) -> u16 {
        self.entry().0
    }

    pub const fn http_status(self) -> StatusCode {
        self.entry().1
    }

    pub const fn default_msg(self) -> &'static str {
        self.entry().2
    }

    /// The code and message for a reason a service failed with.
    pub const fn for_reason(reason: ErrorReason) -> (Code, &'static str) {
        use ErrorReason as R;
        match reason {
            R::MissingParameter => (Code::MissingParameter, "missing parameter"),
            R::InvalidCode => (Code::InvalidCredential, "invalid code"),
            R::InvalidToken => (Code::InvalidCredential, "invalid token"),
            R::InvalidArgument => (Code::InvalidRequest, "invalid request"),
            R::UnknownApp => (Code::InvalidRequest, "unknown app"),
            R::DecryptFailed => (Code::DecryptFailed, "decryption failed"),
            R::PermissionDenied => (Code::Forbidden, "forbidden"),
            R::NotFound => (Code::NotFound, "not found"),
            R::RateLimited => (Code::RateLimited, "rate limited"),
            R::OrderState => (Code::OrderState, "order state conflict"),
            // Refunds are internal (gRPC only); should one surface here, it reads as the
            // order-state / idempotency conflicts they are.
            R::RefundExceedsPaid | R::RefundsDisabled => (Code::OrderState, "order state conflict"),
            R::IdempotencyConflict => (Code::IdempotencyConflict, "idempotency conflict"),
            R::RefundConflict => (Code::IdempotencyConflict, "idempotency conflict"),
            R::WechatError => (Code::WechatError, "wechat error"),
            R::WechatUnavailable => (Code::WechatUnavailable, "wechat unavailable"),
            R::DependencyUnavailable => (Code::ServiceUnavailable, "service unavailable"),
            R::PhoneCodeInvalid => (Code::PhoneCodeInvalid, "invalid phone code"),
            R::WechatBusy => (Code::WechatBusy, "wechat busy, retry"),
            R::AppMisconfigured => (Code::AppMisconfigured, "app misconfigured"),
            R::Internal | R::Unspecified => (Code::Internal, "internal error"),
        }
    }

    /// The code for an HTTP error status that actix produced on its own.
    pub fn for_http_status(status: StatusCode) -> Code {
        match status.as_u16() {
            401 => Code::InvalidCredential,
            403 => Code::Forbidden,
            404 => Code::NotFound,
            413 => Code::BodyTooLarge,
            429 => Code::RateLimited,
            503 | 504 => Code::ServiceUnavailable,
            400..=499 => Code::InvalidRequest,
            _ => Code::Internal,
        }
    }
}

/// The envelope itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Envelope<T: Serialize> {
    /// 200 on success; see the envelope code table.
    pub code: u16,
    /// `suc` on success, else a short reason.
    pub msg: String,
    pub data: Option<T>,
}

/// Marks a response already in its final format (the envelope, or the notify's XML), so
/// [`fallback`] leaves it alone.
#[derive(Clone, Copy, Debug)]
pub struct Formatted;

fn respond<T: Serialize>(code: Code, msg: &str, data: Option<T>) -> HttpResponse {
    let body = serde_json::to_vec(&Envelope {
        code: code.value(),
        msg: msg.to_owned(),
        data,
    })
    // Serialising plain data structs cannot fail; answer a fixed envelope if it ever does.
    .unwrap_or_else(|_| br#"{"code":500,"msg":"internal error","data":null}"#.to_vec());
    let mut response = HttpResponse::build(code.http_status())
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(body);
    response.extensions_mut().insert(Formatted);
    response
}

/// A success: `{"code":200,"msg":"suc","data":<data>}` with HTTP 200.
pub fn ok<T: Serialize>(data: T) -> HttpResponse {
    respond(Code::Suc, Code::Suc.default_msg(), Some(data))
}

/// A failure as the client sees it: an envelope code and a short message, no data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub msg: String,
}

impl ApiError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    pub fn missing(what: &str) -> Self {
        Self::new(Code::MissingParameter, format!("missing parameter: {what}"))
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, msg)
    }

    pub fn from_reason(reason: ErrorReason) -> Self {
        let (code, msg) = Code::for_reason(reason);
        Self::new(code, msg)
    }
}

impl From<Code> for ApiError {
    fn from(code: Code) -> Self {
        Self::new(code, code.default_msg())
    }
}

/// An upstream call failed: the reason decides the envelope. The status message may carry
/// details meant for logs (addresses, transport errors), so clients get the table's message.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let reason = service_kit::reason::reason_of(&status);
        let error = Self::from_reason(reason);
        if error.code.http_status().is_server_error() {
            tracing::warn!(grpc_code = ?status.code(), reason = reason.as_str_name(), message = status.message(), "upstream call failed");
        } else {
            tracing::debug!(grpc_code = ?status.code(), reason = reason.as_str_name(), message = status.message(), "upstream refused the call");
        }
        error
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.value(), self.msg)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.http_status()
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        respond::<()>(self.code, &self.msg, None)
    }
}

/// Middleware step: any error response that is not an envelope yet (actix's own 404, 405,
/// payload errors, a panic-free 500) is replaced by one, keeping its HTTP status.
pub fn fallback<B: MessageBody + 'static>(res: ServiceResponse<B>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || res.response().extensions().get::<Formatted>().is_some()
    {
        return res.map_into_boxed_body();
    }
    let code = Code::for_http_status(status);
    let msg = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "content type must be application/json",
        _ => code.default_msg(),
    };
    let mut replacement = respond::<()>(code, msg, None);
    // Keep the status actix chose (e.g. 405), only the body changes.
    *replacement.status_mut() = status;
    let (req, _) = res.into_parts();
    ServiceResponse::new(req, replacement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_an_entry_and_no_reason_is_a_success() {
        for value in (0..=15).chain(20..=22).chain(30..=32) {
            let reason = ErrorReason::try_from(value).expect("reason");
            let (code, msg) = Code::for_reason(reason);
            assert_ne!(code, Code::Suc);
            assert!(!msg.is_empty());
            assert!(code.http_status().as_u16() >= 400);
        }
    }

    #[test]
    fn table_matches_the_documented_codes() {
        let expected = [
            (ErrorReason::MissingParameter, 201, 400),
            (ErrorReason::InvalidCode, 202, 401),
            (ErrorReason::InvalidToken, 202, 401),
            (ErrorReason::InvalidArgument, 203, 400),
            (ErrorReason::DecryptFailed, 205, 400),
            (ErrorReason::PermissionDenied, 206, 403),
            (ErrorReason::NotFound, 207, 404),
            (ErrorReason::RateLimited, 208, 429),
            (ErrorReason::OrderState, 209, 409),
            (ErrorReason::IdempotencyConflict, 210, 409),
            (ErrorReason::WechatError, 211, 502),
            (ErrorReason::WechatUnavailable, 212, 503),
            (ErrorReason::DependencyUnavailable, 213, 503),
            (ErrorReason::Internal, 500, 500),
            (ErrorReason::PhoneCodeInvalid, 221, 400),
            (ErrorReason::WechatBusy, 222, 503),
            (ErrorReason::AppMisconfigured, 223, 502),
        ];
        for (reason, code, http) in expected {
            let (c, _) = Code::for_reason(reason);
            assert_eq!(
                (c.value(), c.http_status().as_u16()),
                (code, http),
                "{reason:?}"
            );
        }
        assert_eq!(Code::BodyTooLarge.value(), 204);
        assert_eq!(Code::BodyTooLarge.http_status().as_u16(), 413);
    }

    #[test]
    fn all_lists_every_code_once() {
        use std::collections::HashSet;
        let all: HashSet<Code> = Code::ALL.into_iter().collect();
        assert_eq!(all.len(), Code::ALL.len());
        for value in (0..=15).chain(20..=22).chain(30..=32) {
            let reason = ErrorReason::try_from(value).expect("reason");
            assert!(all.contains(&Code::for_reason(reason).0), "{reason:?}");
        }
        for status in 400..=599 {
            let status = StatusCode::from_u16(status).expect("status");
            assert!(all.contains(&Code::for_http_status(status)), "{status}");
        }
    }

    #[test]
    fn bare_transport_errors_are_service_unavailable() {
        let e = ApiError::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(e.code, Code::ServiceUnavailable);
        assert_eq!(e.msg, "service unavailable");
    }
}
