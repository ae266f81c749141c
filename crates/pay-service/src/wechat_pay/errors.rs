//! Why a WeChat Pay call failed, the same for v2 and v3, and what that means for the service.
//!
//! Two enums, not one: an order call ([`WxError`]) is judged by what it says about the order
//! (paid, closed, unknown, a duplicate number), while a refund call ([`RefundCallError`]) must
//! keep WeChat's own code of a refusal (NOTENOUGH, REFUNDNOTEXIST, ...) and treats every answer
//! it cannot trust as "unknown: send the same request again", never as a refusal. The same
//! WeChat failure can land on different sides of those two lines (e.g. v2's `Mismatch` is a
//! refusal for an order call and unknown for a refund).

use wechat::{PayError, pay::v3::V3Error};

use crate::error::Error;

/// True for WeChat's `err_code` `code`.
pub fn is_err_code(e: &PayError, code: &str) -> bool {
    e.err_code() == Some(code)
}

/// WeChat's answers to a unifiedorder whose out_trade_no it already holds with other
/// parameters: `INVALID_REQUEST` ("201 商户订单号重复"; WeChat's unifiedorder document lists it for
/// a re-entered order whose parameters differ) and `OUT_TRADE_NO_USED` (the same number used
/// for another trade). ORDERPAID and ORDERCLOSED are handled on their own.
pub fn is_duplicate_order(e: &PayError) -> bool {
    matches!(e.err_code(), Some("INVALID_REQUEST" | "OUT_TRADE_NO_USED"))
}

/// WeChat's failure as the service's error: unreachable or SYSTEMERROR → WECHAT_UNAVAILABLE
/// (retry later), anything else → WECHAT_ERROR.
pub fn map_error(e: PayError) -> Error {
    if e.is_retryable() {
        Error::WechatUnavailable(e.to_string())
    } else {
        Error::Wechat(e.to_string())
    }
}

/// Why a WeChat Pay call failed, the same for v2 and v3: what callers act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WxError {
    /// v2 `ORDERPAID`, v3 `ORDERPAID`.
    OrderPaid,
    /// v2 `ORDERCLOSED`, v3 `ORDER_CLOSED`.
    OrderClosed,
    /// v2 `ORDERNOTEXIST`, v3 `ORDER_NOT_EXIST` (404).
    OrderNotExist,
    /// WeChat holds this out_trade_no with other parameters (see [`is_duplicate_order`]): no
    /// retry can pay it; the caller must start a new order.
    DuplicateOrder(String),
    /// Unreachable, 5xx, `SYSTEMERROR`/`SYSTEM_ERROR`, `FREQUENCY_LIMITED`, or an answer whose
    /// signature did not verify: retry later; nothing is known to have changed.
    Unavailable(String),
    /// Anything else WeChat refused.
    Refused(String),
}

impl std::fmt::Display for WxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OrderPaid => f.write_str("WeChat Pay: order already paid"),
            Self::OrderClosed => f.write_str("WeChat Pay: order closed"),
            Self::OrderNotExist => f.write_str("WeChat Pay: order does not exist"),
            Self::DuplicateOrder(m) | Self::Unavailable(m) | Self::Refused(m) => f.write_str(m),
        }
    }
}

impl From<PayError> for WxError {
    fn from(e: PayError) -> Self {
        match e.err_code() {
            Some("ORDERPAID") => Self::OrderPaid,
            Some("ORDERCLOSED") => Self::OrderClosed,
            Some("ORDERNOTEXIST") => Self::OrderNotExist,
            _ if is_duplicate_order(&e) => Self::DuplicateOrder(e.to_string()),
            _ if e.is_retryable() => Self::Unavailable(e.to_string()),
            _ => Self::Refused(e.to_string()),
        }
    }
}

impl From<V3Error> for WxError {
    fn from(e: V3Error) -> Self {
        use wechat::pay::v3::error::code;
        match e.code() {
            Some(code::ORDERPAID) => Self::OrderPaid,
            Some(code::ORDER_CLOSED) => Self::OrderClosed,
            Some(code::ORDER_NOT_EXIST) => Self::OrderNotExist,
            // 403 OUT_TRADE_NO_USED (商户订单号重复: the number was placed with other
            // parameters, JSAPI下单 error codes, https://pay.weixin.qq.com/doc/v3/merchant/4012556398):
            // v2's duplicate-order answer, no retry can pay it.
            Some(code::OUT_TRADE_NO_USED) => Self::DuplicateOrder(e.to_string()),
            _ if e.is_retryable() => Self::Unavailable(e.to_string()),
            _ => Self::Refused(e.to_string()),
        }
    }
}

/// [`WxError`] as the service's error.
pub fn map_wx_error(e: WxError) -> Error {
    match e {
        WxError::Unavailable(m) => Error::WechatUnavailable(m),
        WxError::DuplicateOrder(m) => {
            // Not WeChat failing, and no retry of ours can pay it: the caller's cue to start a
            // new order.
            tracing::error!(error = %m, "WeChat refuses the order number as a duplicate");
            Error::OrderState(
                "order number is already used at WeChat with other parameters; create a new order"
                    .into(),
            )
        }
        other => Error::Wechat(other.to_string()),
    }
}

/// Why a refund call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundCallError {
    /// No answer, `SYSTEMERROR` / `SYSTEM_ERROR`, `FREQUENCY_LIMITED`, 5xx, or an answer that
    /// did not authenticate: WeChat may have the refund; send the same request again later.
    Unknown(String),
    /// WeChat refused it for good with `code` (v2 err_code, e.g. NOTENOUGH; v3 code, e.g.
    /// NOT_ENOUGH, INVALID_REQUEST, RESOURCE_NOT_EXISTS).
    Refused { code: String, message: String },
}

impl std::fmt::Display for RefundCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(m) | Self::Refused { message: m, .. } => f.write_str(m),
        }
    }
}

impl RefundCallError {
    /// WeChat's code of a final refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            Self::Unknown(_) => None,
        }
    }

    /// True when the merchant's balance cannot cover the refund (v2 NOTENOUGH, v3 NOT_ENOUGH).
    pub fn is_not_enough(&self) -> bool {
        matches!(self.code(), Some("NOTENOUGH" | "NOT_ENOUGH"))
    }

    /// True when WeChat knows no such refund (v2 REFUNDNOTEXIST, v3 RESOURCE_NOT_EXISTS).
    pub fn is_not_found(&self) -> bool {
        matches!(self.code(), Some("REFUNDNOTEXIST" | "RESOURCE_NOT_EXISTS"))
    }
}

impl From<PayError> for RefundCallError {
    fn from(e: PayError) -> Self {
        if e.is_retryable() || !matches!(e, PayError::Business { .. } | PayError::Return { .. }) {
            return Self::Unknown(e.to_string());
        }
        Self::Refused {
            code: e
                .err_code()
                .filter(|c| !c.is_empty())
                .unwrap_or("REFUSED")
                .to_owned(),
            message: e.to_string(),
        }
    }
}

impl From<V3Error> for RefundCallError {
    fn from(e: V3Error) -> Self {
        match &e {
            V3Error::Api { code, .. } if !e.is_retryable() => Self::Refused {
                code: if code.is_empty() {
                    "REFUSED".to_owned()
                } else {
                    code.clone()
                },
                message: e.to_string(),
            },
            _ => Self::Unknown(e.to_string()),
        }
    }
}

/// [`RefundCallError`] as the service's error: Unknown → WECHAT_UNAVAILABLE (retry later),
/// a refusal → WECHAT_ERROR.
pub fn map_refund_error(e: RefundCallError) -> Error {
    match e {
        RefundCallError::Unknown(m) => Error::WechatUnavailable(m),
        RefundCallError::Refused { message, .. } => Error::Wechat(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(status: u16, code: &str) -> V3Error {
        V3Error::Api {
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    fn v2(err_code: &str) -> PayError {
        PayError::Business {
            err_code: err_code.into(),
            err_code_des: "d".into(),
        }
    }

    fn refused(code: &str) -> Option<String> {
        Some(code.to_owned())
    }

    /// Each WeChat order failure, v2 and v3, as one meaning and one service error: the same
    /// word on both APIs (ORDERCLOSED / ORDER_CLOSED, OUT_TRADE_NO_USED on both) acts alike.
    #[test]
    fn order_failures_of_both_apis_map_to_one_meaning() {
        use service_kit::ErrorReason as R;
        let cases: Vec<(WxError, WxError, R)> = vec![
            (v2("ORDERPAID").into(), WxError::OrderPaid, R::WechatError),
            (
                v3(403, "ORDERPAID").into(),
                WxError::OrderPaid,
                R::WechatError,
            ),
            (
                v2("ORDERCLOSED").into(),
                WxError::OrderClosed,
                R::WechatError,
            ),
            (
                v3(400, "ORDER_CLOSED").into(),
                WxError::OrderClosed,
                R::WechatError,
            ),
            (
                v2("ORDERNOTEXIST").into(),
                WxError::OrderNotExist,
                R::WechatError,
            ),
            (
                v3(404, "ORDER_NOT_EXIST").into(),
                WxError::OrderNotExist,
                R::WechatError,
            ),
        ];
        for (got, meaning, reason) in cases {
            assert_eq!(got, meaning);
            assert_eq!(map_wx_error(got).reason(), reason, "{meaning:?}");
        }
        let kind = |e: &WxError| std::mem::discriminant(e);
        let duplicate = WxError::DuplicateOrder(String::new());
        let unavailable = WxError::Unavailable(String::new());
        let refused = WxError::Refused(String::new());
        let cases: Vec<(WxError, &WxError, R)> = vec![
            (v2("OUT_TRADE_NO_USED").into(), &duplicate, R::OrderState),
            (v2("INVALID_REQUEST").into(), &duplicate, R::OrderState),
            (
                v3(403, "OUT_TRADE_NO_USED").into(),
                &duplicate,
                R::OrderState,
            ),
            (v2("SYSTEMERROR").into(), &unavailable, R::WechatUnavailable),
            (
                v3(500, "SYSTEM_ERROR").into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                v3(429, "FREQUENCY_LIMITED").into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                v3(502, "BAD_GATEWAY").into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                V3Error::Transport("timeout".into()).into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                V3Error::Verify(wechat::pay::v3::VerifyError::Signature("S".into())).into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (v3(401, "SIGN_ERROR").into(), &refused, R::WechatError),
            (v3(400, "PARAM_ERROR").into(), &refused, R::WechatError),
            (v3(400, "INVALID_REQUEST").into(), &refused, R::WechatError),
            (v2("NOAUTH").into(), &refused, R::WechatError),
        ];
        for (got, meaning, reason) in cases {
            assert_eq!(kind(&got), kind(meaning), "{got:?}");
            assert_eq!(map_wx_error(got.clone()).reason(), reason, "{got:?}");
        }
    }

    /// Each WeChat refund failure, v2 and v3, as what the refund flow does with it: Unknown
    /// keeps the refund PENDING (WECHAT_UNAVAILABLE), Refused fails it with the code.
    #[test]
    fn refund_failures_of_both_apis_map_to_one_meaning() {
        let cases: Vec<(RefundCallError, Option<String>)> = vec![
            (v3(403, "NOT_ENOUGH").into(), refused("NOT_ENOUGH")),
            (
                v3(400, "INVALID_REQUEST").into(),
                refused("INVALID_REQUEST"),
            ),
            (
                v3(404, "RESOURCE_NOT_EXISTS").into(),
                refused("RESOURCE_NOT_EXISTS"),
            ),
            (v3(401, "SIGN_ERROR").into(), refused("SIGN_ERROR")),
            (v3(429, "FREQUENCY_LIMITED").into(), None),
            (v3(500, "SYSTEM_ERROR").into(), None),
            (v3(502, "BAD_GATEWAY").into(), None),
            (V3Error::Transport("timeout".into()).into(), None),
            (
                V3Error::Verify(wechat::pay::v3::VerifyError::Signature("S".into())).into(),
                None,
            ),
            (V3Error::BadResponse("json".into()).into(), None),
            (v2("NOTENOUGH").into(), refused("NOTENOUGH")),
            (v2("SYSTEMERROR").into(), None),
            (PayError::Transport("timeout".into()).into(), None),
            (PayError::BadSignature.into(), None),
            (PayError::NoCertificate.into(), None),
        ];
        for (e, code) in cases {
            assert_eq!(e.code().map(str::to_owned), code, "{e:?}");
            let mapped = map_refund_error(e.clone());
            match code {
                Some(_) => assert!(matches!(mapped, Error::Wechat(_)), "{e:?}"),
                None => assert!(matches!(mapped, Error::WechatUnavailable(_)), "{e:?}"),
            }
        }
        assert!(RefundCallError::from(v3(403, "NOT_ENOUGH")).is_not_enough());
        assert!(RefundCallError::from(v2("NOTENOUGH")).is_not_enough());
        assert!(RefundCallError::from(v3(404, "RESOURCE_NOT_EXISTS")).is_not_found());
        assert!(RefundCallError::from(v2("REFUNDNOTEXIST")).is_not_found());
    }
}
