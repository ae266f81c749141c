//! Payment result notifications (`notify_url`) and our answer to them.
//!
//! WeChat retries a notification until it gets `SUCCESS`, so the handler must be idempotent;
//! this module only authenticates the message.
//!
//! ```
//! use wechat::pay::{PayConfig, notify, sign::{SignType, sign}, xml};
//!
//! let pay = PayConfig::new("wx1", "1900000109", "key");
//! let mut fields = vec![
//!     ("return_code", "SUCCESS"), ("result_code", "SUCCESS"), ("appid", "wx1"),
//!     ("mch_id", "1900000109"), ("nonce_str", "n"), ("openid", "o1"), ("out_trade_no", "A1"),
//!     ("transaction_id", "4200001"), ("total_fee", "100"), ("time_end", "20260101120000"),
//! ];
//! let signature = sign(fields.iter().copied(), "key", SignType::Md5);
//! fields.push(("sign", &signature));
//! let body = xml::to_xml(fields);
//!
//! let paid = notify::verify_notify(body.as_bytes(), &pay).unwrap();
//! assert_eq!(paid.total_fee, 100);
//! assert!(paid.is_success());
//! let reply = notify::notify_reply_success();
//! ```

use crate::pay::api::PayConfig;
use crate::pay::sign::{SignType, verify};
use crate::pay::xml::{self, Fields, XmlError};

/// An authenticated payment notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayNotify {
    pub appid: String,
    pub mch_id: String,
    pub out_trade_no: String,
    /// Empty in a failed payment (`result_code` FAIL).
    pub transaction_id: String,
    /// Amount paid in fen; compare with the order's amount. 0 in a failed payment without it.
    pub total_fee: i64,
    pub openid: String,
    /// `yyyyMMddHHmmss` payment time.
    pub time_end: String,
    /// `SUCCESS` or `FAIL`: only `SUCCESS` means paid.
    pub result_code: String,
    pub attach: Option<String>,
    /// Every field of the notification.
    pub fields: Fields,
}

impl PayNotify {
    /// `result_code == "SUCCESS"`.
    pub fn is_success(&self) -> bool {
        self.result_code == "SUCCESS"
    }
}

/// Why a notification was not accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    #[error("notify XML: {0}")]
    Xml(#[from] XmlError),
    #[error("notify is missing {0}")]
    MissingField(&'static str),
    /// Forged, corrupted, signed with another key or algorithm, or a `sign_type` other than
    /// the expected one.
    #[error("notify signature does not verify")]
    BadSignature,
    #[error("notify appid does not match")]
    AppIdMismatch,
    #[error("notify mch_id does not match")]
    MchIdMismatch,
    /// `return_code` is not `SUCCESS` (such messages are unsigned and carry no payment).
    #[error("notify return_code FAIL: {0}")]
    ReturnFail(String),
    /// `total_fee` is not a positive integer.
    #[error("notify total_fee is not a positive integer")]
    BadAmount,
}

fn required(fields: &Fields, name: &'static str) -> Result<String, NotifyError> {
    match fields.get(name) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(NotifyError::MissingField(name)),
    }
}

/// Parses and authenticates a notification body.
///
/// The signature is checked with `pay.sign_type` — the algorithm the order was placed with —
/// before any other field is trusted; the notify never chooses it. WeChat signs a notify with
/// the algorithm of the unifiedorder but sends **no `sign_type`** field in it (a 64-hex `sign`
/// and nothing else, as merchants report in <https://github.com/binarywang/WxJava/issues/1585>
/// and <https://github.com/easy-swoole/pay/issues/38>), so falling back to MD5 when the field
/// is absent would refuse every genuine notify of an HMAC-SHA256 merchant. A `sign_type` that
/// is present must name the expected algorithm: a notify cannot downgrade the check.
///
/// `return_code` is read first: FAIL is a transport-level message, unsigned and carrying no
/// payment ([`NotifyError::ReturnFail`]). Then `result_code`: a verified payment FAIL (e.g.
/// `PAYERROR`) has no `transaction_id`, `total_fee` or `time_end` to require; its payment
/// fields are empty (and `total_fee` 0) unless WeChat sent them. Only a SUCCESS result must
/// carry them all; appid and mch_id must be ours either way.
pub fn verify_notify(body: &[u8], pay: &PayConfig) -> Result<PayNotify, NotifyError> {
    let fields = xml::parse(body)?;
    let return_code = required(&fields, "return_code")?;
    if return_code != "SUCCESS" {
        return Err(NotifyError::ReturnFail(
            fields.get("return_msg").cloned().unwrap_or_default(),
        ));
    }
    let result_code = required(&fields, "result_code")?;
    if let Some(declared) = fields.get("sign_type").filter(|v| !v.is_empty())
        && declared.parse::<SignType>() != Ok(pay.sign_type)
    {
        return Err(NotifyError::BadSignature);
    }
    let signature = required(&fields, "sign")?;
    let pairs = fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    if !verify(pairs, &pay.key, pay.sign_type, &signature) {
        return Err(NotifyError::BadSignature);
    }
    let appid = required(&fields, "appid")?;
    if appid != pay.appid {
        return Err(NotifyError::AppIdMismatch);
    }
    let mch_id = required(&fields, "mch_id")?;
    if mch_id != pay.mch_id {
        return Err(NotifyError::MchIdMismatch);
    }
    let paid = result_code == "SUCCESS";
    // A failed payment's fields are informational: empty when absent, never refused.
    let payment_field = |name: &'static str| -> Result<String, NotifyError> {
        if paid {
            required(&fields, name)
        } else {
            Ok(fields.get(name).cloned().unwrap_or_default())
        }
    };
    let total_fee = match (paid, payment_field("total_fee")?.parse::<i64>()) {
        (_, Ok(fee)) if fee > 0 => fee,
        (true, _) => return Err(NotifyError::BadAmount),
        (false, _) => 0,
    };
    Ok(PayNotify {
        appid,
        mch_id,
        out_trade_no: required(&fields, "out_trade_no")?,
        transaction_id: payment_field("transaction_id")?,
        total_fee,
        openid: payment_field("openid")?,
        time_end: payment_field("time_end")?,
        result_code,
        attach: fields.get("attach").filter(|v| !v.is_empty()).cloned(),
        fields,
    })
}

/// The answer that stops WeChat's retries.
///
/// ```
/// assert_eq!(
///     wechat::pay::notify_reply_success(),
///     "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
/// );
/// ```
pub fn notify_reply_success() -> String {
    xml::to_xml([("return_code", "SUCCESS"), ("return_msg", "OK")])
}

/// The answer asking WeChat to retry later; `msg` is for WeChat's logs.
pub fn notify_reply_fail(msg: &str) -> String {
    xml::to_xml([("return_code", "FAIL"), ("return_msg", msg)])
}
