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
    #[error("decrypt failed: {0}")]
    DecryptFailed(#[from] DecryptCause),
    #[error("auth-service call failed: {0}")]
    AuthService(tonic::Status),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
}

impl Error {
    /// The reason reported to callers (and used as a metrics label).
    pub fn reason(&self) -> ErrorReason {
        match self {
            Self::MissingParameter(_) => ErrorReason::MissingParameter,
            Self::InvalidArgument(_) => ErrorReason::InvalidArgument,
            Self::NotFound => ErrorReason::NotFound,
            Self::DecryptFailed(_) => ErrorReason::DecryptFailed,
            Self::AuthService(_) => ErrorReason::DependencyUnavailable,
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
            Error::DecryptFailed(cause) => {
                // The cause stays in the logs; the key is never in it.
                tracing::debug!(%cause, "rejected encrypted data");
                status(reason, DECRYPT_FAILED_MESSAGE)
            }
            Error::AuthService(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "auth-service GetSessionKey failed");
                status(reason, "auth-service unavailable")
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
