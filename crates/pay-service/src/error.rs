//! The service's errors and their one mapping to gRPC statuses.

use service_kit::{ErrorReason, db::DbError, reason::status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing parameter: {0}")]
    MissingParameter(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No such order or product (also: another user's order, so existence does not leak).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The order's state forbids the request.
    #[error("{0}")]
    OrderState(String),
    #[error("idempotency key reused with different parameters")]
    IdempotencyConflict,
    /// A refund would take the order's refunds past the amount paid.
    #[error("refund exceeds what is left to refund ({left_fen} fen)")]
    RefundExceedsPaid { left_fen: i64 },
    /// An out_refund_no reused with another order, amount or reason.
    #[error("out_refund_no reused with different parameters")]
    RefundConflict,
    /// No merchant certificate is configured.
    #[error("refunds are not configured (WXMP_PAY_CERT_PATH)")]
    RefundsDisabled,
    /// WeChat refused or failed the call in a way retrying will not fix.
    #[error("WeChat Pay error: {0}")]
    Wechat(String),
    /// WeChat was unreachable, timed out, or answered SYSTEMERROR.
    #[error("WeChat Pay unavailable: {0}")]
    WechatUnavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::from(e))
    }
}

impl Error {
    /// The reason reported to callers.
    pub fn reason(&self) -> ErrorReason {
        match self {
            Self::MissingParameter(_) => ErrorReason::MissingParameter,
            Self::InvalidArgument(_) => ErrorReason::InvalidArgument,
            Self::NotFound(_) => ErrorReason::NotFound,
            Self::OrderState(_) => ErrorReason::OrderState,
            Self::IdempotencyConflict => ErrorReason::IdempotencyConflict,
            Self::RefundExceedsPaid { .. } => ErrorReason::RefundExceedsPaid,
            Self::RefundConflict => ErrorReason::RefundConflict,
            Self::RefundsDisabled => ErrorReason::RefundsDisabled,
            Self::Wechat(_) => ErrorReason::WechatError,
            Self::WechatUnavailable(_) => ErrorReason::WechatUnavailable,
            Self::Db(DbError::Unavailable(_)) => ErrorReason::DependencyUnavailable,
            Self::Db(_) | Self::Internal(_) | Self::Config(_) | Self::Server(_) => {
                ErrorReason::Internal
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let reason = error.reason();
        match &error {
            Error::Db(DbError::Unavailable(e)) => {
                tracing::warn!(error = %e, "database unavailable");
                status(reason, "database unavailable")
            }
            Error::Db(_) | Error::Internal(_) | Error::Config(_) | Error::Server(_) => {
                // Details stay in the logs.
                tracing::error!(error = %error, "internal error");
                status(reason, "internal error")
            }
            Error::Wechat(_) | Error::WechatUnavailable(_) => {
                tracing::warn!(error = %error, "WeChat Pay call failed");
                status(reason, error.to_string())
            }
            _ => status(reason, error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_errors_map_to_their_reasons_and_codes() {
        for (error, reason, code) in [
            (
                Error::RefundExceedsPaid { left_fen: 3 },
                ErrorReason::RefundExceedsPaid,
                tonic::Code::FailedPrecondition,
            ),
            (
                Error::RefundConflict,
                ErrorReason::RefundConflict,
                tonic::Code::AlreadyExists,
            ),
            (
                Error::RefundsDisabled,
                ErrorReason::RefundsDisabled,
                tonic::Code::FailedPrecondition,
            ),
        ] {
            assert_eq!(error.reason(), reason);
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(service_kit::reason::reason_of(&status), reason);
        }
    }
}
