//! Mini program login (`code2Session`) and the app's `access_token`.

use std::fmt;

use serde::Deserialize;

use crate::client::WechatClient;
use crate::config::join;
use crate::http::{self, BodyError};

/// What `code2Session` returns. `Debug` redacts the `session_key`.
///
/// The `session_key` belongs to (appid, openid) and may change with every login: keep only the
/// latest one per user and never send it to the mini program.
///
/// ```
/// let s = wechat::Session {
///     openid: "o1".into(),
///     session_key: "tiihtNczf5v6AKRyjwEUhQ==".into(),
///     unionid: None,
/// };
/// assert!(!format!("{s:?}").contains("tiiht"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub openid: String,
    /// Base64 of the 16-byte AES key for this user's encrypted data.
    pub session_key: String,
    /// Only when the app is bound to an open platform account.
    pub unionid: Option<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("openid", &self.openid)
            .field("session_key", &"<redacted>")
            .field("unionid", &self.unionid)
            .finish()
    }
}

/// The app's interface credential. `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub access_token: String,
    /// Lifetime in seconds (7200 today); refresh before it ends.
    pub expires_in: i64,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why a JSON API call (`code2Session`, `access_token`) failed.
///
/// Messages never contain the app secret, the code or the request URL.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 40029: the login code is invalid (or expired, or for another app).
    #[error("invalid code (40029)")]
    InvalidCode,
    /// 40163: the login code was already used.
    #[error("code already used (40163)")]
    CodeUsed,
    /// 45011: too many calls; back off before retrying.
    #[error("rate limited (45011)")]
    RateLimited,
    /// 40226: WeChat blocked the login of a high-risk user.
    #[error("high-risk user blocked (40226)")]
    HighRiskUser,
    /// 40125: the app secret is wrong.
    #[error("invalid appsecret (40125)")]
    InvalidAppSecret,
    /// 40013: the appid is wrong.
    #[error("invalid appid (40013)")]
    InvalidAppId,
    /// -1: WeChat is busy; retry shortly.
    #[error("WeChat system busy (-1)")]
    SystemBusy,
    /// Any other errcode.
    #[error("WeChat error {errcode}: {errmsg}")]
    Other { errcode: i64, errmsg: String },
    /// Timeout, connection failure or HTTP 5xx.
    #[error("WeChat transport error: {0}")]
    Transport(String),
    /// Not the JSON we expect (or an unexpected HTTP status).
    #[error("bad WeChat response: {0}")]
    BadResponse(String),
}

/// The name the login path uses; the same type as [`ApiError`].
pub type Code2SessionError = ApiError;

impl ApiError {
    pub(crate) fn from_errcode(errcode: i64, errmsg: String) -> Self {
        match errcode {
            40029 => ApiError::InvalidCode,
            40163 => ApiError::CodeUsed,
            45011 => ApiError::RateLimited,
            40226 => ApiError::HighRiskUser,
            40125 => ApiError::InvalidAppSecret,
            40013 => ApiError::InvalidAppId,
            -1 => ApiError::SystemBusy,
            _ => ApiError::Other { errcode, errmsg },
        }
    }

    /// WeChat's errcode, for errors WeChat reported.
    ///
    /// ```
    /// use wechat::ApiError;
    /// assert_eq!(ApiError::CodeUsed.errcode(), Some(40163));
    /// assert_eq!(ApiError::Transport("timeout".into()).errcode(), None);
    /// ```
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::InvalidCode => Some(40029),
            ApiError::CodeUsed => Some(40163),
            ApiError::RateLimited => Some(45011),
            ApiError::HighRiskUser => Some(40226),
            ApiError::InvalidAppSecret => Some(40125),
            ApiError::InvalidAppId => Some(40013),
            ApiError::SystemBusy => Some(-1),
            ApiError::Other { errcode, .. } => Some(*errcode),
            ApiError::Transport(_) | ApiError::BadResponse(_) => None,
        }
    }

    /// True for failures worth retrying shortly: transport errors and `-1` (system busy).
    ///
    /// A login code is single-use: after a transport error WeChat may already have consumed it,
    /// so a retry can answer [`ApiError::CodeUsed`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, ApiError::Transport(_) | ApiError::SystemBusy)
    }

    /// True when WeChat rejected the access_token itself: 40001 (invalid or not the latest:
    /// another holder refreshed it), 42001 (expired) or 40014 (malformed). The cure is one
    /// forced refresh and one retry.
    ///
    /// ```
    /// use wechat::ApiError;
    /// let e = ApiError::Other { errcode: 42001, errmsg: "access_token expired".into() };
    /// assert!(e.is_token_rejected());
    /// assert!(!ApiError::SystemBusy.is_token_rejected());
    /// ```
    pub fn is_token_rejected(&self) -> bool {
        matches!(self.errcode(), Some(40001 | 42001 | 40014))
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Transport(msg) => ApiError::Transport(msg),
            BodyError::Status(code) => ApiError::BadResponse(format!("unexpected HTTP {code}")),
            BodyError::TooLarge => ApiError::BadResponse("response too large".into()),
        }
    }
}

#[derive(Deserialize)]
struct Code2SessionBody {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    openid: Option<String>,
    session_key: Option<String>,
    unionid: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    access_token: Option<String>,
    expires_in: Option<i64>,
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde_json's messages can quote input values; keep only the position.
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadResponse(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))
    })
}

fn non_empty(v: Option<String>, name: &str) -> Result<String, ApiError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadResponse(format!("missing {name}")))
}

impl WechatClient {
    async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<u8>, ApiError> {
        let resp = self
            .http()
            .get(join(&self.config().api_base, path))
            .query(query)
            .send()
            .await
            .map_err(|e| ApiError::Transport(http::describe(&e)))?;
        // WeChat sometimes labels its JSON text/plain: the content type is ignored.
        Ok(http::read_body(resp).await?)
    }

    /// Exchanges a `wx.login` code for the user's openid and session_key
    /// (`GET {api_base}/sns/jscode2session`).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use wechat::{Code2SessionError, WechatClient, WechatConfig};
    ///
    /// let client = WechatClient::new(WechatConfig::default())?;
    /// match client.code2session("wx1", "app-secret", "code-from-wx.login").await {
    ///     Ok(session) => println!("openid {}", session.openid),
    ///     Err(Code2SessionError::InvalidCode | Code2SessionError::CodeUsed) => println!("log in again"),
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn code2session(
        &self,
        appid: &str,
        secret: &str,
        code: &str,
    ) -> Result<Session, Code2SessionError> {
        if code.is_empty() {
            // WeChat would answer 40029; spare the round trip.
            return Err(ApiError::InvalidCode);
        }
        let body = self
            .get_json(
                "/sns/jscode2session",
                &[
                    ("appid", appid),
                    ("secret", secret),
                    ("js_code", code),
                    ("grant_type", "authorization_code"),
                ],
            )
            .await?;
        let body: Code2SessionBody = parse_json(&body)?;
        if body.errcode != 0 {
            return Err(ApiError::from_errcode(body.errcode, body.errmsg));
        }
        Ok(Session {
            openid: non_empty(body.openid, "openid")?,
            session_key: non_empty(body.session_key, "session_key")?,
            unionid: body.unionid.filter(|s| !s.is_empty()),
        })
    }

    /// Fetches the app's access token (`GET {api_base}/cgi-bin/token`).
    ///
    /// Errcodes without a variant of their own (e.g. 40001 wrong secret, 40164 IP not
    /// whitelisted) come back as [`ApiError::Other`].
    pub async fn access_token(&self, appid: &str, secret: &str) -> Result<AccessToken, ApiError> {
        let body = self
            .get_json(
                "/cgi-bin/token",
                &[
                    ("grant_type", "client_credential"),
                    ("appid", appid),
                    ("secret", secret),
                ],
            )
            .await?;
        let body: TokenBody = parse_json(&body)?;
        if body.errcode != 0 {
            return Err(ApiError::from_errcode(body.errcode, body.errmsg));
        }
        Ok(AccessToken {
            access_token: non_empty(body.access_token, "access_token")?,
            expires_in: body
                .expires_in
                .ok_or_else(|| ApiError::BadResponse("missing expires_in".into()))?,
        })
    }
}
