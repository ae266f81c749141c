//! The service's errors and their one mapping to gRPC statuses.

use service_kit::{ErrorReason, db::DbError, reason::status};
use wechat::DecryptError;

/// The one answer to every decryption or check failure: it names no cause, so a caller
/// learns nothing (no padding oracle) beyond "log in again and retry".
pub const DECRYPT_FAILED_MESSAGE: &str =
    "encrypted data could not be decrypted or verified; log in again and retry";

/// Why encrypted data was rejected. Only ever logged (at debug level), never returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecryptCause {
    #[error(transparent)]
    Crypto(#[from] DecryptError),
    #[error("the user has no live session_key")]
    NoSessionKey,
    #[error("decrypted openId is not the caller's")]
    OpenIdMismatch,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing parameter: {0}")]
    MissingParameter(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("user not found")]
    NotFound,
    /// The session token given instead of a principal is unknown or expired.
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("decrypt failed: {0}")]
    DecryptFailed(#[from] DecryptCause),
    #[error("auth-service call failed: {0}")]
    AuthService(tonic::Status),
    /// 40029: the getPhoneNumber code is invalid, expired or used.
    #[error("invalid or used phone code")]
    PhoneCodeInvalid,
    /// -1: WeChat is busy; the code was not used, retry shortly.
    #[error("WeChat is busy, retry shortly")]
    WechatBusy,
    /// WeChat rejected the app's own credentials (40013 and alike).
    #[error("WeChat rejected the app's credentials: {0}")]
    AppMisconfigured(wechat::ApiError),
    #[error("WeChat error: {0}")]
    Wechat(wechat::ApiError),
    #[error("WeChat unavailable: {0}")]
    WechatUnavailable(wechat::ApiError),
    /// auth-service could not give an access_token; its reason is passed on.
    #[error("access_token: {}", .0.message())]
    AccessToken(tonic::Status),
    /// Phone numbers by code are not configured on this instance.
    #[error("phone number by code is not configured")]
    PhoneCodesOff,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
}

impl Error {
    /// A failed getuserphonenumber call.
    pub fn from_phone_api(e: wechat::ApiError) -> Self {
        use wechat::ApiError as W;
        match e {
            W::InvalidCode | W::CodeUsed => Self::PhoneCodeInvalid,
            W::SystemBusy => Self::WechatBusy,
            W::InvalidAppId | W::InvalidAppSecret => Self::AppMisconfigured(e),
            W::Transport(_) => Self::WechatUnavailable(e),
            _ => Self::Wechat(e),
        }
    }

    /// The reason reported to callers (and used as a metrics label).
    pub fn reason(&self) -> ErrorReason {
        match self {
            Self::MissingParameter(_) => ErrorReason::MissingParameter,
            Self::InvalidArgument(_) => ErrorReason::InvalidArgument,
            Self::NotFound => ErrorReason::NotFound,
            Self::InvalidToken => ErrorReason::InvalidToken,
            Self::DecryptFailed(_) => ErrorReason::DecryptFailed,
            Self::AuthService(_) => ErrorReason::DependencyUnavailable,
            Self::PhoneCodeInvalid => ErrorReason::PhoneCodeInvalid,
            Self::WechatBusy => ErrorReason::WechatBusy,
            Self::AppMisconfigured(_) => ErrorReason::AppMisconfigured,
            Self::Wechat(_) => ErrorReason::WechatError,
            Self::WechatUnavailable(_) => ErrorReason::WechatUnavailable,
            Self::AccessToken(s) => match service_kit::reason::reason_of(s) {
                r @ (ErrorReason::RateLimited
                | ErrorReason::AppMisconfigured
                | ErrorReason::WechatError
                | ErrorReason::WechatUnavailable
                | ErrorReason::DependencyUnavailable) => r,
                _ => ErrorReason::Internal,
            },
            Self::PhoneCodesOff => ErrorReason::Internal,
            Self::Db(DbError::Unavailable(_)) => ErrorReason::DependencyUnavailable,
            Self::Db(e) if e.is_not_found() => ErrorReason::NotFound,
            Self::Db(_) | Self::Config(_) | Self::Server(_) => ErrorReason::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let reason = error.reason();
        match &error {
            Error::MissingParameter(_) | Error::InvalidArgument(_) => {
                status(reason, error.to_string())
            }
            Error::NotFound => status(reason, "user not found"),
            Error::InvalidToken => status(reason, error.to_string()),
            Error::DecryptFailed(cause) => {
                // The cause stays in the logs; the key is never in it.
                tracing::debug!(%cause, "rejected encrypted data");
                status(reason, DECRYPT_FAILED_MESSAGE)
            }
            Error::AuthService(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "auth-service call failed");
                status(reason, "auth-service unavailable")
            }
            Error::PhoneCodeInvalid | Error::WechatBusy => status(reason, error.to_string()),
            Error::AppMisconfigured(_)
            | Error::Wechat(_)
            | Error::WechatUnavailable(_)
            | Error::AccessToken(_)
            | Error::PhoneCodesOff => {
                tracing::warn!(error = %error, "phone number by code failed");
                status(
                    reason,
                    match reason {
                        ErrorReason::AppMisconfigured => "WeChat rejected the app's credentials",
                        ErrorReason::WechatUnavailable => "WeChat unavailable",
                        ErrorReason::RateLimited => "WeChat rate limit reached",
                        ErrorReason::DependencyUnavailable => "auth-service unavailable",
                        ErrorReason::Internal => "internal error",
                        _ => "WeChat error",
                    },
                )
            }
            Error::Db(e) if reason == ErrorReason::NotFound => {
                tracing::debug!(error = %e, "row not found");
                status(reason, "user not found")
            }
            Error::Db(e) => {
                tracing::error!(error = %e, "database error");
                status(
                    reason,
                    if reason == ErrorReason::DependencyUnavailable {
                        "database unavailable"
                    } else {
                        "internal error"
                    },
                )
            }
            Error::Config(_) | Error::Server(_) => {
                tracing::error!(error = %error, "internal error");
                status(reason, "internal error")
            }
        }
    }
}
