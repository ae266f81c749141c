//! Error reasons across gRPC: every service fails with a [`tonic::Status`] that carries an
//! [`ErrorReason`] in the `wxmp-error-reason` metadata; the gateway maps reasons to HTTP.

use tonic::{Code, Status, metadata::MetadataValue};

pub use wxmp_proto::common::v1::ErrorReason;

/// The response metadata key holding the reason's proto name, e.g. `INVALID_CODE`.
pub const METADATA_KEY: &str = "wxmp-error-reason";

/// The gRPC code that goes with a reason, as documented in `errors.proto`.
pub fn code_of(reason: ErrorReason) -> Code {
    use ErrorReason as R;
    match reason {
        R::MissingParameter | R::InvalidArgument | R::DecryptFailed | R::UnknownApp => {
            Code::InvalidArgument
        }
        R::InvalidCode | R::InvalidToken => Code::Unauthenticated,
        R::PermissionDenied => Code::PermissionDenied,
        R::NotFound => Code::NotFound,
        R::RateLimited => Code::ResourceExhausted,
        R::OrderState | R::RefundExceedsPaid | R::RefundsDisabled => Code::FailedPrecondition,
        R::IdempotencyConflict | R::RefundConflict => Code::AlreadyExists,
        R::WechatError | R::WechatUnavailable | R::DependencyUnavailable => Code::Unavailable,
        R::PhoneCodeInvalid => Code::InvalidArgument,
        R::WechatBusy => Code::Unavailable,
        R::AppMisconfigured => Code::FailedPrecondition,
        R::Internal | R::Unspecified => Code::Internal,
    }
}

/// A status with the reason's code and the reason in its metadata. `message` is shown to
/// callers: never put a secret, token or session_key in it.
pub fn status(reason: ErrorReason, message: impl Into<String>) -> Status {
    let mut status = Status::new(code_of(reason), message);
    status.metadata_mut().insert(
        METADATA_KEY,
        MetadataValue::from_static(reason.as_str_name()),
    );
    status
}

/// The reason a status carries. A status without one (a transport error, a deadline) is
/// classified by its code, so the gateway still answers something meaningful.
pub fn reason_of(status: &Status) -> ErrorReason {
    if let Some(reason) = status
        .metadata()
        .get(METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorReason::from_str_name)
    {
        return reason;
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            ErrorReason::DependencyUnavailable
        }
        // Made on this side from a transport failure (the connection to a replica broke
        // mid-call, say it was killed): tonic keeps the error as the status's source. A
        // server's own UNKNOWN has none.
        Code::Unknown if std::error::Error::source(status).is_some() => {
            ErrorReason::DependencyUnavailable
        }
        Code::Unauthenticated => ErrorReason::InvalidToken,
        Code::NotFound => ErrorReason::NotFound,
        Code::PermissionDenied => ErrorReason::PermissionDenied,
        Code::ResourceExhausted => ErrorReason::RateLimited,
        Code::InvalidArgument => ErrorReason::InvalidArgument,
        _ => ErrorReason::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_survives_the_round_trip() {
        let s = status(ErrorReason::InvalidCode, "invalid code");
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(reason_of(&s), ErrorReason::InvalidCode);
    }

    #[test]
    fn bare_statuses_are_classified_by_code() {
        assert_eq!(
            reason_of(&Status::deadline_exceeded("slow")),
            ErrorReason::DependencyUnavailable
        );
        assert_eq!(reason_of(&Status::unknown("?")), ErrorReason::Internal);
        // What tonic makes of a transport failure it cannot classify.
        let broken = Status::from_error(Box::new(std::fmt::Error));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(reason_of(&broken), ErrorReason::DependencyUnavailable);
    }
}
