//! auth-service's errors, mapped to gRPC statuses in one place.

use service_kit::{ErrorReason, reason::status};
use tonic::Status;

use crate::store::StoreError;

/// Everything that can go wrong in auth-service, at start-up or in a call. Messages never
/// contain a token, a session_key or an AppSecret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is required")]
    MissingParameter(&'static str),
    #[error("app {0} is not configured")]
    UnknownApp(String),
    #[error("invalid or used login code")]
    InvalidCode,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("no live session_key for this user")]
    NotFound,
    #[error("WeChat rate limit reached, retry later")]
    RateLimited,
    /// code2Session errcode 40226: WeChat blocks this user's login as high-risk. The answer is
    /// about the user, not a WeChat failure: refused (403), never retried as a 502.
    #[error("WeChat refuses to log this user in (high-risk user)")]
    RiskyUser,
    /// WeChat answered with an error that is not the caller's fault.
    #[error("WeChat refused the login: {0}")]
    Wechat(wechat::ApiError),
    /// WeChat could not be reached, timed out, or said it is busy.
    #[error("WeChat is unavailable: {0}")]
    WechatUnavailable(wechat::ApiError),
    /// WeChat refused the app's own credentials (appid, secret, IP whitelist).
    #[error("WeChat rejected the app's credentials: {0}")]
    AppMisconfigured(wechat::ApiError),
    /// Another replica's access_token refresh did not finish within the wait.
    #[error("timed out waiting for the access_token refresh")]
    TokenRefreshTimeout,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// user-service failed; `Unavailable` is kept apart from its other failures.
    #[error("user-service: {}", .0.message())]
    UserService(Status),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl From<wechat::ApiError> for Error {
    fn from(e: wechat::ApiError) -> Self {
        use wechat::ApiError as W;
        match e {
            W::InvalidCode | W::CodeUsed => Self::InvalidCode,
            W::RateLimited => Self::RateLimited,
            W::HighRiskUser => Self::RiskyUser,
            W::Transport(_) | W::SystemBusy => Self::WechatUnavailable(e),
            W::InvalidAppSecret | W::InvalidAppId | W::Other { .. } | W::BadResponse(_) => {
                Self::Wechat(e)
            }
        }
    }
}

impl Error {
    /// A failed access_token fetch: the app's own credentials are an operator's problem,
    /// quotas are rate limits (45009 daily, 45011 per minute), the rest as for login.
    pub fn from_token_fetch(e: wechat::ApiError) -> Self {
        use wechat::ApiError as W;
        match e.errcode() {
            // 40013 appid, 40125 secret, 40164 IP not whitelisted, 41002/41004 missing.
            Some(40013 | 40125 | 40164 | 41002 | 41004 | 40001) => Self::AppMisconfigured(e),
            Some(45009 | 45011) => Self::RateLimited,
            _ => match e {
                W::Transport(_) | W::SystemBusy => Self::WechatUnavailable(e),
                _ => Self::Wechat(e),
            },
        }
    }

    /// The reason callers see; also the `result` label of the login counter.
    pub fn reason(&self) -> ErrorReason {
        use ErrorReason as R;
        match self {
            Self::MissingParameter(_) => R::MissingParameter,
            Self::UnknownApp(_) => R::UnknownApp,
            Self::InvalidCode => R::InvalidCode,
            Self::InvalidToken => R::InvalidToken,
            Self::NotFound => R::NotFound,
            Self::RateLimited => R::RateLimited,
            Self::RiskyUser => R::PermissionDenied,
            Self::Wechat(_) => R::WechatError,
            Self::WechatUnavailable(_) => R::WechatUnavailable,
            Self::AppMisconfigured(_) => R::AppMisconfigured,
            Self::TokenRefreshTimeout => R::DependencyUnavailable,
            Self::Store(StoreError::Unavailable(_)) => R::DependencyUnavailable,
            Self::Store(StoreError::Corrupt(_)) => R::Internal,
            Self::UserService(s) => match service_kit::reason::reason_of(s) {
                R::DependencyUnavailable => R::DependencyUnavailable,
                // Anything else (a rejected internal token, a bug) is ours to fix, not the caller's.
                _ => R::Internal,
            },
            Self::Internal(_) | Self::Config(_) | Self::Serve(_) => R::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let reason = e.reason();
        let message = match reason {
            ErrorReason::Internal => {
                tracing::error!(error = %e, "internal error");
                "internal error".to_owned()
            }
            ErrorReason::DependencyUnavailable
            | ErrorReason::WechatError
            | ErrorReason::WechatUnavailable
            | ErrorReason::RateLimited
            | ErrorReason::AppMisconfigured => {
                tracing::warn!(error = %e, "dependency failed");
                e.to_string()
            }
            _ => {
                tracing::debug!(error = %e, "request refused");
                e.to_string()
            }
        };
        status(reason, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wechat_errors_map_to_reasons() {
        use wechat::ApiError as W;
        let cases = [
            (W::InvalidCode, ErrorReason::InvalidCode),
            (W::CodeUsed, ErrorReason::InvalidCode),
            (W::RateLimited, ErrorReason::RateLimited),
            (W::SystemBusy, ErrorReason::WechatUnavailable),
            (
                W::Transport("timeout".into()),
                ErrorReason::WechatUnavailable,
            ),
            (W::InvalidAppSecret, ErrorReason::WechatError),
            (W::HighRiskUser, ErrorReason::PermissionDenied),
            (W::BadResponse("x".into()), ErrorReason::WechatError),
            (
                W::Other {
                    errcode: 1,
                    errmsg: "x".into(),
                },
                ErrorReason::WechatError,
            ),
        ];
        for (e, want) in cases {
            let got = Status::from(Error::from(e));
            assert_eq!(service_kit::reason::reason_of(&got), want);
        }
    }

    #[test]
    fn token_fetch_errors_map_to_reasons() {
        use wechat::ApiError as W;
        let other = |errcode| W::Other {
            errcode,
            errmsg: "x".into(),
        };
        let cases = [
            (W::InvalidAppId, ErrorReason::AppMisconfigured),
            (W::InvalidAppSecret, ErrorReason::AppMisconfigured),
            (other(40164), ErrorReason::AppMisconfigured),
            (other(45009), ErrorReason::RateLimited),
            (W::RateLimited, ErrorReason::RateLimited),
            (W::SystemBusy, ErrorReason::WechatUnavailable),
            (W::Transport("t".into()), ErrorReason::WechatUnavailable),
            (other(48001), ErrorReason::WechatError),
        ];
        for (e, want) in cases {
            let got = Status::from(Error::from_token_fetch(e));
            assert_eq!(service_kit::reason::reason_of(&got), want);
        }
        let s = Status::from(Error::TokenRefreshTimeout);
        assert_eq!(
            service_kit::reason::reason_of(&s),
            ErrorReason::DependencyUnavailable
        );
    }

    #[test]
    fn internal_details_stay_in_the_logs() {
        let s = Status::from(Error::Store(StoreError::Corrupt("details".into())));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("details"));
        let s = Status::from(Error::Store(StoreError::Unavailable("down".into())));
        assert_eq!(
            service_kit::reason::reason_of(&s),
            ErrorReason::DependencyUnavailable
        );
    }
}
