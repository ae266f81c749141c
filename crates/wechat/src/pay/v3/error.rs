//! Why a v3 call failed. v3 answers an error with an HTTP status and `{code, message}`
//! (公共错误码 and 业务错误码, e.g. <https://pay.weixin.qq.com/doc/v3/merchant/4012556398>).

use crate::pay::v3::aead::DecryptError;
use crate::pay::v3::verify::VerifyError;

/// The `code`s of v3 errors that callers act on.
pub mod code {
    /// 400: the order is closed.
    pub const ORDER_CLOSED: &str = "ORDER_CLOSED";
    /// 403: the order is already paid.
    pub const ORDERPAID: &str = "ORDERPAID";
    /// 404: no such order (query).
    pub const ORDER_NOT_EXIST: &str = "ORDER_NOT_EXIST";
    /// 404: no such refund (refund query).
    pub const RESOURCE_NOT_EXISTS: &str = "RESOURCE_NOT_EXISTS";
    /// 500: WeChat's side failed; retry later.
    pub const SYSTEM_ERROR: &str = "SYSTEM_ERROR";
    /// 429: too many requests; retry later.
    pub const FREQUENCY_LIMITED: &str = "FREQUENCY_LIMITED";
    /// 403: the merchant's balance cannot cover a refund.
    pub const NOT_ENOUGH: &str = "NOT_ENOUGH";
    /// 401: our request signature was refused.
    pub const SIGN_ERROR: &str = "SIGN_ERROR";
    /// 400: a parameter is wrong.
    pub const PARAM_ERROR: &str = "PARAM_ERROR";
    /// 400: the request breaks an API rule (e.g. out_trade_no reused with other parameters).
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// 403: out_trade_no already used.
    pub const OUT_TRADE_NO_USED: &str = "OUT_TRADE_NO_USED";
}

/// Why a v3 call failed. Messages name no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V3Error {
    /// Timeout, connection failure, or an HTTP 5xx without an error body.
    #[error("WeChat Pay transport error: {0}")]
    Transport(String),
    /// WeChat answered an error status with `{code, message}`.
    #[error("WeChat Pay error {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// A 2xx response that is not authenticated as WeChat's: treat as WeChat unavailable.
    #[error("WeChat Pay response not authenticated: {0}")]
    Verify(#[from] VerifyError),
    /// A certificate or resource did not decrypt.
    #[error("WeChat Pay ciphertext: {0}")]
    Decrypt(#[from] DecryptError),
    /// The body is not what the API documents.
    #[error("bad WeChat Pay response: {0}")]
    BadResponse(String),
}

impl V3Error {
    /// WeChat's `code` for [`V3Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            V3Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when repeating the same request later may succeed: transport errors, 5xx,
    /// `SYSTEM_ERROR`, `FREQUENCY_LIMITED`, and responses that did not authenticate.
    pub fn is_retryable(&self) -> bool {
        match self {
            V3Error::Transport(_) | V3Error::Verify(_) => true,
            V3Error::Api { status, code, .. } => {
                *status >= 500 || code == code::SYSTEM_ERROR || code == code::FREQUENCY_LIMITED
            }
            _ => false,
        }
    }
}
