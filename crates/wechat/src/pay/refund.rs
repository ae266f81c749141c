//! Refunds on Pay v2: `secapi/pay/refund` (mutual TLS with the merchant's API certificate),
//! `pay/refundquery`, and the encrypted refund notify.
//!
//! * Apply: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_4> — the only v2 call
//!   that needs the merchant certificate (`apiclient_cert.pem` + `apiclient_key.pem`); WeChat
//!   dedupes on `out_refund_no`, so repeating a request whose answer was lost is safe.
//! * Query: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_5> — `refund_status_$n`
//!   is `SUCCESS`, `REFUNDCLOSE`, `PROCESSING` or `CHANGE` (failed: the money stays with the
//!   merchant and must be refunded by other means).
//! * Notify: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10> — the body
//!   is `return_code`, `appid`, `mch_id`, `nonce_str`, `req_info` and **no `sign`**: `req_info`
//!   is base64 of AES-256-ECB (PKCS#7) under the lower-case hex MD5 of the API key (32 ASCII
//!   bytes used as the AES-256 key). Decrypting is the authentication; the plaintext is a flat
//!   `<root>` document. Merchants' write-ups of the same steps (and of the BadPadding one gets
//!   with the wrong key): <https://blog.youkuaiyun.com/lkforce/article/details/96880110>.
//!
//! ```
//! use wechat::pay::refund::{decrypt_req_info, encrypt_req_info};
//!
//! let req_info = encrypt_req_info("key", b"<root><refund_status>SUCCESS</refund_status></root>");
//! let plain = decrypt_req_info("key", &req_info).unwrap();
//! assert!(plain.starts_with(b"<root>"));
//! assert!(decrypt_req_info("other key", &req_info).is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit, block_padding::Pkcs7};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest as _, Md5};

use crate::client::WechatClient;
use crate::config::join;
use crate::http;
use crate::pay::api::{PayConfig, PayError, check_response, signed_request_xml};
use crate::pay::xml::{self, Fields, XmlError};

type Aes256EcbDec = ecb::Decryptor<aes::Aes256>;
type Aes256EcbEnc = ecb::Encryptor<aes::Aes256>;

/// `POST {secapi_base}/secapi/pay/refund`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefundRequest {
    /// The paid order.
    pub out_trade_no: String,
    /// Our refund number, unique per merchant (≤ 64 chars `[0-9A-Za-z_\-|*@]`): WeChat's
    /// idempotency key for the refund.
    pub out_refund_no: String,
    /// The order's amount in fen (must equal what was paid).
    pub total_fee: i64,
    /// The amount to give back, in fen.
    pub refund_fee: i64,
    /// Shown to the payer (≤ 80 characters).
    pub refund_desc: Option<String>,
    /// Where WeChat posts the refund notify (else the one set in the merchant platform).
    pub notify_url: Option<String>,
}

/// The useful part of an accepted refund request: WeChat has it and will settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundResponse {
    pub out_refund_no: String,
    /// WeChat's refund id.
    pub refund_id: String,
    pub refund_fee: i64,
    /// Everything WeChat answered (signature verified).
    pub fields: Fields,
}

/// Where a refund stands at WeChat (`refund_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    /// The money is back with the payer.
    Success,
    /// Closed without refunding.
    RefundClose,
    /// Accepted, not settled yet.
    Processing,
    /// Failed (e.g. the payer's card was cancelled): the money stays with the merchant.
    Change,
}

impl RefundStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::RefundClose => "REFUNDCLOSE",
            Self::Processing => "PROCESSING",
            Self::Change => "CHANGE",
        }
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundStatus {
    type Err = PayError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "SUCCESS" => Self::Success,
            "REFUNDCLOSE" => Self::RefundClose,
            "PROCESSING" => Self::Processing,
            "CHANGE" => Self::Change,
            _ => return Err(PayError::BadResponse("unknown refund_status".into())),
        })
    }
}

/// One refund of a `refundquery` answer (the `_$n` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundQueryItem {
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_fee: i64,
    pub status: RefundStatus,
    /// `yyyy-MM-dd HH:mm:ss` (China time) once SUCCESS.
    pub success_time: Option<String>,
}

/// A `refundquery` answer: the order and its refunds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundQueryResponse {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub total_fee: i64,
    pub refunds: Vec<RefundQueryItem>,
    /// Everything WeChat answered (signature verified).
    pub fields: Fields,
}

/// What a refund query looks up (WeChat takes one of them, most specific first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundQueryBy {
    OutRefundNo(String),
    OutTradeNo(String),
}

/// How many refunds of one order [`WechatClient::refund_query`] lists at most.
const MAX_LISTED_REFUNDS: usize = 1000;

/// An integer field WeChat may leave out.
fn optional_integer(fields: &Fields, name: &str) -> Result<Option<i64>, PayError> {
    fields.get(name).map(|_| integer(fields, name)).transpose()
}

fn integer(fields: &Fields, name: &str) -> Result<i64, PayError> {
    fields
        .get(name)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| PayError::BadResponse(format!("{name} is missing or not an integer")))
}

fn text(fields: &Fields, name: &str) -> Result<String, PayError> {
    match fields.get(name) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(PayError::BadResponse(format!("missing {name}"))),
    }
}

impl WechatClient {
    /// Applies for a refund (`POST {secapi_base}/secapi/pay/refund`) over mutual TLS.
    ///
    /// Without a merchant certificate (see [`WechatClient::with_merchant_cert`]) this fails
    /// with [`PayError::NoCertificate`] and sends nothing. A lost answer (transport error,
    /// `SYSTEMERROR`) is repaired by sending the same request again: WeChat dedupes on
    /// `out_refund_no`.
    pub async fn refund(
        &self,
        pay: &PayConfig,
        req: &RefundRequest,
    ) -> Result<RefundResponse, PayError> {
        let (secapi, base) = self.secapi().ok_or(PayError::NoCertificate)?;
        let mut fields = Fields::new();
        fields.insert("out_trade_no".into(), req.out_trade_no.clone());
        fields.insert("out_refund_no".into(), req.out_refund_no.clone());
        fields.insert("total_fee".into(), req.total_fee.to_string());
        fields.insert("refund_fee".into(), req.refund_fee.to_string());
        if let Some(desc) = req.refund_desc.as_ref().filter(|d| !d.is_empty()) {
            fields.insert("refund_desc".into(), desc.clone());
        }
        if let Some(url) = req.notify_url.as_ref().filter(|u| !u.is_empty()) {
            fields.insert("notify_url".into(), url.clone());
        }
        let body = signed_request_xml(pay, fields);
        let resp = secapi
            .post(join(base, "/secapi/pay/refund"))
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| PayError::Transport(http::describe(&e)))?;
        let bytes = http::read_body(resp).await?;
        let fields = check_response(pay, xml::parse(&bytes)?)?;
        Ok(RefundResponse {
            out_refund_no: text(&fields, "out_refund_no")?,
            refund_id: text(&fields, "refund_id")?,
            refund_fee: integer(&fields, "refund_fee")?,
            fields,
        })
    }

    /// Queries refunds (`POST {pay_base}/pay/refundquery`; no certificate needed). An unknown
    /// refund is `PayError::Business` with `err_code` `REFUNDNOTEXIST`.
    ///
    /// By order, WeChat answers 10 refunds at a time with `total_refund_count` when there are
    /// more (分页查询, <https://pay.weixin.qq.com/doc/v2/merchant/4011939577>): the pages are
    /// followed with `offset` until every refund is listed, so an order refunded in many
    /// parts is never read as having only its first ten.
    pub async fn refund_query(
        &self,
        pay: &PayConfig,
        by: &RefundQueryBy,
    ) -> Result<RefundQueryResponse, PayError> {
        let mut answer = self.refund_query_page(pay, by, None).await?;
        let RefundQueryBy::OutTradeNo(_) = by else {
            return Ok(answer);
        };
        let Some(total) = optional_integer(&answer.fields, "total_refund_count")? else {
            return Ok(answer);
        };
        // WeChat keeps at most a few dozen partial refunds per order; the bound only stops a
        // confused answer from looping.
        while i64::try_from(answer.refunds.len()).unwrap_or(i64::MAX) < total
            && answer.refunds.len() < MAX_LISTED_REFUNDS
        {
            let offset = answer.refunds.len();
            let page = self.refund_query_page(pay, by, Some(offset)).await?;
            if page.refunds.is_empty() {
                return Err(PayError::BadResponse(format!(
                    "refundquery offset {offset}: no refunds of total_refund_count {total}"
                )));
            }
            answer.refunds.extend(page.refunds);
        }
        Ok(answer)
    }

    /// One refundquery call (from `offset` when given).
    async fn refund_query_page(
        &self,
        pay: &PayConfig,
        by: &RefundQueryBy,
        offset: Option<usize>,
    ) -> Result<RefundQueryResponse, PayError> {
        let mut fields = Fields::new();
        match by {
            RefundQueryBy::OutRefundNo(no) => fields.insert("out_refund_no".into(), no.clone()),
            RefundQueryBy::OutTradeNo(no) => fields.insert("out_trade_no".into(), no.clone()),
        };
        if let Some(offset) = offset {
            fields.insert("offset".into(), offset.to_string());
        }
        let body = signed_request_xml(pay, fields);
        let resp = self
            .http()
            .post(join(&self.config().pay_base, "/pay/refundquery"))
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| PayError::Transport(http::describe(&e)))?;
        let bytes = http::read_body(resp).await?;
        let fields = check_response(pay, xml::parse(&bytes)?)?;
        let count = integer(&fields, "refund_count")?;
        if !(0..=50).contains(&count) {
            return Err(PayError::BadResponse("refund_count out of range".into()));
        }
        let mut refunds = Vec::new();
        for n in 0..count {
            refunds.push(RefundQueryItem {
                out_refund_no: text(&fields, &format!("out_refund_no_{n}"))?,
                refund_id: fields
                    .get(&format!("refund_id_{n}"))
                    .cloned()
                    .unwrap_or_default(),
                refund_fee: integer(&fields, &format!("refund_fee_{n}"))?,
                status: text(&fields, &format!("refund_status_{n}"))?.parse()?,
                success_time: fields
                    .get(&format!("refund_success_time_{n}"))
                    .filter(|v| !v.is_empty())
                    .cloned(),
            });
        }
        Ok(RefundQueryResponse {
            out_trade_no: text(&fields, "out_trade_no")?,
            transaction_id: fields.get("transaction_id").cloned().unwrap_or_default(),
            total_fee: integer(&fields, "total_fee")?,
            refunds,
            fields,
        })
    }
}

/// Why a refund notify was not accepted. Messages name no key material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RefundNotifyError {
    #[error("refund notify XML: {0}")]
    Xml(#[from] XmlError),
    #[error("refund notify is missing {0}")]
    MissingField(&'static str),
    /// `return_code` is not `SUCCESS` (carries no refund).
    #[error("refund notify return_code FAIL: {0}")]
    ReturnFail(String),
    #[error("refund notify mch_id does not match")]
    MchIdMismatch,
    /// `req_info` is not base64, not whole blocks, or badly padded: forged, corrupted or
    /// encrypted with another key.
    #[error("refund notify req_info does not decrypt")]
    Undecryptable,
    /// An amount is not a non-negative integer, or the status is unknown.
    #[error("refund notify has a malformed {0}")]
    Malformed(&'static str),
}

/// A decrypted refund notify. Trust it only when its `out_refund_no`, `out_trade_no` and
/// `refund_fee` match a refund we asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundNotify {
    pub appid: String,
    pub mch_id: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub out_refund_no: String,
    pub refund_id: String,
    pub total_fee: i64,
    pub refund_fee: i64,
    /// SUCCESS, CHANGE or REFUNDCLOSE.
    pub refund_status: RefundStatus,
    /// `yyyy-MM-dd HH:mm:ss` (China time), when SUCCESS.
    pub success_time: Option<String>,
    /// Every field of the decrypted `req_info`.
    pub info: Fields,
}

/// The AES-256 key of `req_info`: the lower-case hex MD5 of the API key, as 32 ASCII bytes.
fn req_info_key(pay_key: &str) -> [u8; 32] {
    let digest = Md5::digest(pay_key.as_bytes());
    let mut key = [0u8; 32];
    hex::encode_to_slice(digest, &mut key).expect("32 hex characters for 16 bytes");
    key
}

/// Decrypts a `req_info` (base64 of AES-256-ECB/PKCS#7 under md5hex(pay_key)).
pub fn decrypt_req_info(pay_key: &str, req_info: &str) -> Result<Vec<u8>, RefundNotifyError> {
    let data = STANDARD
        .decode(req_info.trim())
        .map_err(|_| RefundNotifyError::Undecryptable)?;
    if data.is_empty() || data.len() % 16 != 0 {
        return Err(RefundNotifyError::Undecryptable);
    }
    Aes256EcbDec::new(&req_info_key(pay_key).into())
        .decrypt_padded_vec_mut::<Pkcs7>(&data)
        .map_err(|_| RefundNotifyError::Undecryptable)
}

/// The inverse of [`decrypt_req_info`] (tests and benches; WeChat does this side).
pub fn encrypt_req_info(pay_key: &str, plain: &[u8]) -> String {
    let data =
        Aes256EcbEnc::new(&req_info_key(pay_key).into()).encrypt_padded_vec_mut::<Pkcs7>(plain);
    STANDARD.encode(data)
}

fn required(fields: &Fields, name: &'static str) -> Result<String, RefundNotifyError> {
    match fields.get(name) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(RefundNotifyError::MissingField(name)),
    }
}

fn amount(fields: &Fields, name: &'static str) -> Result<i64, RefundNotifyError> {
    required(fields, name)?
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or(RefundNotifyError::Malformed(name))
}

/// Parses a refund notify body and decrypts its `req_info` with `pay.key`. `mch_id` must be
/// ours; the appid is returned for the caller to check against the order (one merchant key
/// serves every app bound to it).
pub fn decrypt_refund_notify(
    body: &[u8],
    pay: &PayConfig,
) -> Result<RefundNotify, RefundNotifyError> {
    let fields = xml::parse(body)?;
    let return_code = required(&fields, "return_code")?;
    if return_code != "SUCCESS" {
        return Err(RefundNotifyError::ReturnFail(
            fields.get("return_msg").cloned().unwrap_or_default(),
        ));
    }
    let mch_id = required(&fields, "mch_id")?;
    if mch_id != pay.mch_id {
        return Err(RefundNotifyError::MchIdMismatch);
    }
    let req_info = required(&fields, "req_info")?;
    let plain = decrypt_req_info(&pay.key, &req_info)?;
    let info = xml::parse_root(&plain, b"root").map_err(|_| RefundNotifyError::Undecryptable)?;
    let refund_status = required(&info, "refund_status")?
        .parse::<RefundStatus>()
        .ok()
        .filter(|s| *s != RefundStatus::Processing)
        .ok_or(RefundNotifyError::Malformed("refund_status"))?;
    Ok(RefundNotify {
        appid: fields.get("appid").cloned().unwrap_or_default(),
        mch_id,
        out_trade_no: required(&info, "out_trade_no")?,
        transaction_id: info.get("transaction_id").cloned().unwrap_or_default(),
        out_refund_no: required(&info, "out_refund_no")?,
        refund_id: info.get("refund_id").cloned().unwrap_or_default(),
        total_fee: amount(&info, "total_fee")?,
        refund_fee: amount(&info, "refund_fee")?,
        refund_status,
        success_time: info.get("success_time").filter(|v| !v.is_empty()).cloned(),
        info,
    })
}
