//! WeChat's JSON error answers (`{"errcode": n, "errmsg": "..., rid: ..."}`, HTTP 200) for the
//! login and token paths. Codes and messages are the documented ones.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde_json::json;

/// The content type api.weixin.qq.com answers with.
pub const JSON_CONTENT_TYPE: &str = "application/json; encoding=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WxError {
    #[error("system error")]
    System,
    #[error("invalid grant_type")]
    InvalidGrantType,
    #[error("invalid appid")]
    InvalidAppid,
    #[error("invalid code")]
    InvalidCode,
    #[error("invalid appsecret")]
    InvalidSecret,
    #[error("code been used")]
    CodeUsed,
    #[error("appid missing")]
    AppidMissing,
    #[error("appsecret missing")]
    SecretMissing,
    #[error("missing code")]
    CodeMissing,
    #[error("reach max api daily quota limit")]
    DailyQuota,
    #[error("api minute-quota reach limit mustslower retry next minute")]
    MinuteQuota,
    #[error("data format error")]
    DataFormat,
    /// A replaced or unknown access_token (WeChat's text for 40001).
    #[error("invalid credential, access_token is invalid or not latest")]
    InvalidCredential,
    #[error("access_token expired")]
    TokenExpired,
    #[error("access_token missing")]
    TokenMissing,
    #[error("invalid openid")]
    InvalidOpenid,
    #[error("user refuse to accept the msg")]
    UserRefused,
    #[error("argument invalid!")]
    ArgumentInvalid,
}

impl WxError {
    pub fn errcode(self) -> i64 {
        match self {
            Self::System => -1,
            Self::InvalidGrantType => 40002,
            Self::InvalidAppid => 40013,
            Self::InvalidCode => 40029,
            Self::InvalidSecret => 40125,
            Self::CodeUsed => 40163,
            Self::AppidMissing => 41002,
            Self::SecretMissing => 41004,
            Self::CodeMissing => 41008,
            Self::DailyQuota => 45009,
            Self::MinuteQuota => 45011,
            Self::DataFormat => 47001,
            Self::InvalidCredential => 40001,
            Self::TokenExpired => 42001,
            Self::TokenMissing => 41001,
            Self::InvalidOpenid => 40003,
            Self::UserRefused => 43101,
            Self::ArgumentInvalid => 47003,
        }
    }
}

impl ResponseError for WxError {
    fn status_code(&self) -> StatusCode {
        StatusCode::OK
    }

    fn error_response(&self) -> HttpResponse {
        // WeChat appends a request id to every errmsg; clients must match on errcode.
        let rid = format!(
            "{:08x}-{:08x}-{:08x}",
            rand::random::<u32>(),
            rand::random::<u32>(),
            rand::random::<u32>()
        );
        HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
            json!({ "errcode": self.errcode(), "errmsg": format!("{self}, rid: {rid}") })
                .to_string(),
        )
    }
}
