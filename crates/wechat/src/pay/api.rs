//! `unifiedorder`, `orderquery` and `closeorder`.

use std::fmt;
use std::str::FromStr;

use crate::client::WechatClient;
use crate::config::join;
use crate::http::{self, BodyError};
use crate::pay::jsapi::nonce_str;
use crate::pay::sign::{SignType, sign, verify};
use crate::pay::xml::{self, Fields, XmlError};

/// A merchant account: who we are to WeChat Pay.
///
/// `Debug` redacts the key.
///
/// ```
/// use wechat::pay::{PayConfig, SignType};
///
/// let pay = PayConfig::new("wx1", "1900000109", "secret-key-of-32-characters-long");
/// assert_eq!(pay.sign_type, SignType::Md5);
/// assert!(!format!("{pay:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PayConfig {
    /// The mini program's appid the merchant is bound to.
    pub appid: String,
    /// The merchant id (`mch_id`).
    pub mch_id: String,
    /// The API v2 key (32 characters) set in the merchant platform.
    pub key: String,
    /// How we sign requests and expect responses to be signed.
    pub sign_type: SignType,
}

impl PayConfig {
    /// A config signing with MD5, WeChat's default.
    pub fn new(
        appid: impl Into<String>,
        mch_id: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            appid: appid.into(),
            mch_id: mch_id.into(),
            key: key.into(),
            sign_type: SignType::Md5,
        }
    }
}

impl fmt::Debug for PayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayConfig")
            .field("appid", &self.appid)
            .field("mch_id", &self.mch_id)
            .field("key", &"<redacted>")
            .field("sign_type", &self.sign_type)
            .finish()
    }
}

/// A JSAPI `unifiedorder` (the payer is `openid`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnifiedOrderRequest {
    /// What is bought, shown to the payer (≤ 128 bytes).
    pub body: String,
    /// Our order number, unique per merchant (≤ 32 chars `[A-Za-z0-9_\-|*]`).
    pub out_trade_no: String,
    /// Amount in fen (CNY cents).
    pub total_fee: i64,
    /// The payer's IP address.
    pub spbill_create_ip: String,
    /// Where WeChat posts the payment notification.
    pub notify_url: String,
    /// The payer.
    pub openid: String,
    /// Echoed back in query and notify.
    pub attach: Option<String>,
    /// `yyyyMMddHHmmss` (Beijing time) after which the order can no longer be paid.
    pub time_expire: Option<String>,
}

/// The useful part of a successful `unifiedorder`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnifiedOrderResponse {
    /// Valid for two hours; feed it to [`request_payment_params`](crate::pay::request_payment_params).
    pub prepay_id: String,
    /// `JSAPI`.
    pub trade_type: String,
    /// Everything WeChat answered (signature verified).
    pub fields: Fields,
}

/// `trade_state` of `orderquery`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TradeState {
    /// `SUCCESS`: paid.
    Success,
    /// `REFUND`: (partly) refunded.
    Refund,
    /// `NOTPAY`: not paid yet.
    NotPay,
    /// `CLOSED`: closed, can no longer be paid.
    Closed,
    /// `REVOKED`: revoked (micropay only).
    Revoked,
    /// `USERPAYING`: the payer is entering the password.
    UserPaying,
    /// `PAYERROR`: payment failed at the bank.
    PayError,
}

impl TradeState {
    /// The wire name, e.g. `"NOTPAY"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::NotPay => "NOTPAY",
            TradeState::Closed => "CLOSED",
            TradeState::Revoked => "REVOKED",
            TradeState::UserPaying => "USERPAYING",
            TradeState::PayError => "PAYERROR",
        }
    }
}

impl fmt::Display for TradeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TradeState {
    type Err = PayError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "SUCCESS" => TradeState::Success,
            "REFUND" => TradeState::Refund,
            "NOTPAY" => TradeState::NotPay,
            "CLOSED" => TradeState::Closed,
            "REVOKED" => TradeState::Revoked,
            "USERPAYING" => TradeState::UserPaying,
            "PAYERROR" => TradeState::PayError,
            _ => return Err(PayError::BadResponse("unknown trade_state".into())),
        })
    }
}

/// The useful part of a successful `orderquery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQueryResponse {
    pub trade_state: TradeState,
    pub out_trade_no: String,
    /// WeChat's transaction id, once paid.
    pub transaction_id: Option<String>,
    /// Amount in fen, once paid.
    pub total_fee: Option<i64>,
    /// `yyyyMMddHHmmss` payment time, once paid.
    pub time_end: Option<String>,
    /// Everything WeChat answered (signature verified).
    pub fields: Fields,
}

/// Why a WeChat Pay call failed. Messages name no key.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// Timeout, connection failure or HTTP 5xx: the request may or may not have been processed.
    #[error("WeChat Pay transport error: {0}")]
    Transport(String),
    /// The response is not acceptable XML.
    #[error("WeChat Pay sent bad XML: {0}")]
    Xml(#[from] XmlError),
    /// `return_code` FAIL: the request itself was refused (signature, parameters, ...).
    #[error("WeChat Pay refused the request: {return_msg}")]
    Return { return_msg: String },
    /// `result_code` FAIL: the business operation failed, `err_code` says why.
    #[error("WeChat Pay business error {err_code}: {err_code_des}")]
    Business {
        err_code: String,
        err_code_des: String,
    },
    /// The response's signature did not verify with our key.
    #[error("WeChat Pay response signature does not verify")]
    BadSignature,
    /// The response is for another appid or merchant (names the field).
    #[error("WeChat Pay response {0} does not match ours")]
    Mismatch(&'static str),
    /// A required field is missing or malformed, or an unexpected HTTP status.
    #[error("bad WeChat Pay response: {0}")]
    BadResponse(String),
    /// A `secapi` call (refund) without a merchant certificate: nothing was sent.
    #[error("no merchant API certificate configured for WeChat Pay secapi calls")]
    NoCertificate,
}

impl PayError {
    /// WeChat's `err_code` for [`PayError::Business`].
    pub fn err_code(&self) -> Option<&str> {
        match self {
            PayError::Business { err_code, .. } => Some(err_code),
            _ => None,
        }
    }

    /// True when repeating the same request later may succeed (transport errors, `SYSTEMERROR`).
    pub fn is_retryable(&self) -> bool {
        match self {
            PayError::Transport(_) => true,
            // Documented retry-with-the-same-request codes (refund: BIZERR_NEED_RETRY,
            // FREQUENCY_LIMITED).
            PayError::Business { err_code, .. } => matches!(
                err_code.as_str(),
                "SYSTEMERROR" | "BIZERR_NEED_RETRY" | "FREQUENCY_LIMITED"
            ),
            _ => false,
        }
    }
}

impl From<BodyError> for PayError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Transport(msg) => PayError::Transport(msg),
            BodyError::Status(code) => PayError::BadResponse(format!("unexpected HTTP {code}")),
            BodyError::TooLarge => PayError::Xml(XmlError::TooLarge),
        }
    }
}

/// Adds appid, mch_id, nonce_str, sign_type (when not MD5) and sign, and writes the XML.
pub(crate) fn signed_request_xml(pay: &PayConfig, mut fields: Fields) -> String {
    fields.insert("appid".into(), pay.appid.clone());
    fields.insert("mch_id".into(), pay.mch_id.clone());
    fields.insert("nonce_str".into(), nonce_str());
    if pay.sign_type != SignType::Md5 {
        fields.insert("sign_type".into(), pay.sign_type.as_str().into());
    }
    let signature = sign(pairs(&fields), &pay.key, pay.sign_type);
    fields.insert("sign".into(), signature);
    xml::to_xml(pairs(&fields))
}

fn pairs(fields: &Fields) -> impl Iterator<Item = (&str, &str)> + Clone {
    fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

fn field(fields: &Fields, name: &'static str) -> Result<String, PayError> {
    match fields.get(name) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(PayError::BadResponse(format!("missing {name}"))),
    }
}

/// Checks return_code, the signature, appid/mch_id, then result_code, in that order: only a
/// verified response may tell us about the business result.
pub(crate) fn check_response(pay: &PayConfig, fields: Fields) -> Result<Fields, PayError> {
    if fields.get("return_code").map(String::as_str) != Some("SUCCESS") {
        return Err(PayError::Return {
            return_msg: fields.get("return_msg").cloned().unwrap_or_default(),
        });
    }
    let signature = fields.get("sign").ok_or(PayError::BadSignature)?;
    if !verify(pairs(&fields), &pay.key, pay.sign_type, signature) {
        return Err(PayError::BadSignature);
    }
    if fields.get("appid") != Some(&pay.appid) {
        return Err(PayError::Mismatch("appid"));
    }
    if fields.get("mch_id") != Some(&pay.mch_id) {
        return Err(PayError::Mismatch("mch_id"));
    }
    if fields.get("result_code").map(String::as_str) != Some("SUCCESS") {
        return Err(PayError::Business {
            err_code: fields.get("err_code").cloned().unwrap_or_default(),
            err_code_des: fields.get("err_code_des").cloned().unwrap_or_default(),
        });
    }
    Ok(fields)
}

impl WechatClient {
    async fn pay_call(
        &self,
        pay: &PayConfig,
        path: &str,
        fields: Fields,
    ) -> Result<Fields, PayError> {
        let body = signed_request_xml(pay, fields);
        let resp = self
            .http()
            .post(join(&self.config().pay_base, path))
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| PayError::Transport(http::describe(&e)))?;
        let bytes = http::read_body(resp).await?;
        check_response(pay, xml::parse(&bytes)?)
    }

    /// Creates a JSAPI prepay order (`POST {pay_base}/pay/unifiedorder`).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use wechat::pay::{PayConfig, UnifiedOrderRequest};
    /// use wechat::{WechatClient, WechatConfig};
    ///
    /// let client = WechatClient::new(WechatConfig::default())?;
    /// let pay = PayConfig::new("wx1", "1900000109", "key");
    /// let order = UnifiedOrderRequest {
    ///     body: "wxmp-T-shirt".into(),
    ///     out_trade_no: "20260101000001".into(),
    ///     total_fee: 1,
    ///     spbill_create_ip: "127.0.0.1".into(),
    ///     notify_url: "https://example.com/pay/notify".into(),
    ///     openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
    ///     ..Default::default()
    /// };
    /// let prepay = client.unified_order(&pay, &order).await?;
    /// println!("{}", prepay.prepay_id);
    /// # Ok(()) }
    /// ```
    pub async fn unified_order(
        &self,
        pay: &PayConfig,
        req: &UnifiedOrderRequest,
    ) -> Result<UnifiedOrderResponse, PayError> {
        let mut fields = Fields::new();
        fields.insert("body".into(), req.body.clone());
        fields.insert("out_trade_no".into(), req.out_trade_no.clone());
        fields.insert("total_fee".into(), req.total_fee.to_string());
        fields.insert("spbill_create_ip".into(), req.spbill_create_ip.clone());
        fields.insert("notify_url".into(), req.notify_url.clone());
        fields.insert("trade_type".into(), "JSAPI".into());
        fields.insert("openid".into(), req.openid.clone());
        if let Some(attach) = &req.attach {
            fields.insert("attach".into(), attach.clone());
        }
        if let Some(time_expire) = &req.time_expire {
            fields.insert("time_expire".into(), time_expire.clone());
        }
        let fields = self.pay_call(pay, "/pay/unifiedorder", fields).await?;
        Ok(UnifiedOrderResponse {
            prepay_id: field(&fields, "prepay_id")?,
            trade_type: field(&fields, "trade_type")?,
            fields,
        })
    }

    /// Queries an order by our order number (`POST {pay_base}/pay/orderquery`).
    ///
    /// An unknown order is `PayError::Business` with `err_code` `ORDERNOTEXIST`.
    pub async fn order_query(
        &self,
        pay: &PayConfig,
        out_trade_no: &str,
    ) -> Result<OrderQueryResponse, PayError> {
        let mut fields = Fields::new();
        fields.insert("out_trade_no".into(), out_trade_no.into());
        let fields = self.pay_call(pay, "/pay/orderquery", fields).await?;
        let trade_state = field(&fields, "trade_state")?.parse()?;
        let total_fee = match fields.get("total_fee").filter(|v| !v.is_empty()) {
            Some(v) => Some(
                v.parse::<i64>()
                    .map_err(|_| PayError::BadResponse("total_fee is not an integer".into()))?,
            ),
            None => None,
        };
        let optional = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        Ok(OrderQueryResponse {
            trade_state,
            out_trade_no: optional("out_trade_no").unwrap_or_else(|| out_trade_no.to_owned()),
            transaction_id: optional("transaction_id"),
            total_fee,
            time_end: optional("time_end"),
            fields,
        })
    }

    /// Closes an unpaid order (`POST {pay_base}/pay/closeorder`).
    ///
    /// A paid order is `PayError::Business` with `err_code` `ORDERPAID`; an already closed one
    /// `ORDERCLOSED`.
    pub async fn close_order(&self, pay: &PayConfig, out_trade_no: &str) -> Result<(), PayError> {
        let mut fields = Fields::new();
        fields.insert("out_trade_no".into(), out_trade_no.into());
        self.pay_call(pay, "/pay/closeorder", fields).await?;
        Ok(())
    }
}
