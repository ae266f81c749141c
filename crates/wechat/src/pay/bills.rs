//! WeChat Pay's daily bills (对账单): downloading them on v2 and v3, and reading them.
//!
//! * [`table`]: the backquoted CSV every bill is written in (header, detail rows, summary
//!   header, summary row), read line by line; exact decimal amounts,
//! * [`trade`]: the trade bill's typed rows and summary (amounts in integer fen),
//! * [`fund_flow`]: the fund flow bill's,
//! * [`v2`]: `pay/downloadbill` and `pay/downloadfundflow` (XML request, the bill or an XML
//!   error as the answer),
//! * [`v3`]: `GET /v3/bill/tradebill` / `/v3/bill/fundflowbill` (signed JSON answer with
//!   `download_url` and the SHA1 `hash_value`) and the download itself.
//!
//! The bill bytes are never signed (v3: "该接口响应的信息请求头中不包含微信接口响应的签名值，因此需要
//! 跳过验签的流程", <https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter4_5_8.shtml>;
//! wechatpay-apache-httpclient#25). On v3 the SHA1 `hash_value` of the signed apply answer is
//! the only check, and it covers the *original* bill: "原始账单(gzip需要解压缩)的摘要值"
//! (<https://pay.weixin.qq.com/doc/v3/merchant/4012556654>). Hashing the gzip bytes instead is
//! the bug of wechatpay-java#384 (its `DigestInputStream` wraps the compressed stream), so
//! [`DownloadedBill::sha1_hex`] is over the decompressed text.

pub mod fund_flow;
pub mod table;
pub mod trade;
pub mod v2;
pub mod v3;

use std::io::Read;

use sha1::{Digest as _, Sha1};

pub use fund_flow::{FundFlowBill, FundFlowRow, FundFlowSummary};
pub use table::{AmountError, format_decimal, parse_decimal};
pub use trade::{RowKind, TradeBill, TradeBillReader, TradeRow, TradeSummary, write_all_bill};
pub use v3::BillLink;

/// Largest bill (decompressed) this crate reads: 256 MiB, about a million rows.
pub const MAX_BILL_BYTES: usize = 256 * 1024 * 1024;

/// Which rows a trade bill holds (`bill_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BillType {
    /// Payments and refunds of the day.
    #[default]
    All,
    /// Payments only.
    Success,
    /// Refunds only.
    Refund,
}

impl BillType {
    pub const fn as_str(self) -> &'static str {
        match self {
            BillType::All => "ALL",
            BillType::Success => "SUCCESS",
            BillType::Refund => "REFUND",
        }
    }
}

/// The account of a fund flow bill (`account_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FundAccount {
    /// 基本账户.
    #[default]
    Basic,
    /// 运营账户.
    Operation,
    /// 手续费账户.
    Fees,
}

impl FundAccount {
    /// v2 spelling (`Basic`, `Operation`, `Fees`).
    pub const fn v2(self) -> &'static str {
        match self {
            FundAccount::Basic => "Basic",
            FundAccount::Operation => "Operation",
            FundAccount::Fees => "Fees",
        }
    }

    /// v3 spelling (`BASIC`, `OPERATION`, `FEES`).
    pub const fn v3(self) -> &'static str {
        match self {
            FundAccount::Basic => "BASIC",
            FundAccount::Operation => "OPERATION",
            FundAccount::Fees => "FEES",
        }
    }
}

/// Why a bill could not be had or read. Messages name no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    /// WeChat holds no bill for the date: v2 `No Bill Exist`, v3 `NO_STATEMENT_EXIST`. Either
    /// the merchant had no trade that day, or the bill is not made yet (before ~10:00 next day).
    #[error("WeChat has no bill for that date")]
    NoBill,
    /// The bill is being made (v2 `Bill Creating`, v3 `STATEMENT_CREATING`): ask later.
    #[error("WeChat is still making the bill")]
    NotReady,
    /// WeChat refused the request (signature, parameters, permission).
    #[error("WeChat refused the bill request: {code} {message}")]
    Refused { code: String, message: String },
    /// No answer, a 5xx, a retryable error code, or an answer that did not authenticate.
    #[error("WeChat Pay transport error: {0}")]
    Transport(String),
    /// The answer is not what the API documents.
    #[error("bad bill answer: {0}")]
    BadResponse(String),
    /// The downloaded bill's SHA1 differs from `hash_value`: refused, nothing read.
    #[error("bill hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    /// The gzip body did not decompress.
    #[error("bill gzip: {0}")]
    Gzip(String),
    /// The bill is larger than [`MAX_BILL_BYTES`].
    #[error("bill too large")]
    TooLarge,
    /// A line of the bill is malformed.
    #[error("bill line {line}: {reason}")]
    Format { line: usize, reason: String },
    /// The summary disagrees with the rows.
    #[error("bill summary: {0}")]
    Summary(String),
    /// A secapi call (fund flow) without a merchant certificate: nothing was sent.
    #[error("no merchant API certificate configured for the fund flow bill")]
    NoCertificate,
}

impl BillError {
    /// True when asking again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BillError::NotReady
                | BillError::Transport(_)
                | BillError::HashMismatch { .. }
                | BillError::Gzip(_)
        )
    }
}

/// A downloaded bill: the bytes as received and the text they hold.
#[derive(Clone, PartialEq, Eq)]
pub struct DownloadedBill {
    /// True when the body was gzip (decompressed into `text`).
    pub gzip: bool,
    /// The body as received.
    pub raw: Vec<u8>,
    /// The bill itself (decompressed).
    pub text: Vec<u8>,
}

impl std::fmt::Debug for DownloadedBill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadedBill")
            .field("gzip", &self.gzip)
            .field("raw", &self.raw.len())
            .field("text", &self.text.len())
            .finish()
    }
}

impl DownloadedBill {
    /// Decodes a body: gzip when it starts with gzip's magic bytes, else the text itself.
    pub fn decode(raw: Vec<u8>) -> Result<Self, BillError> {
        let gzip = raw.starts_with(&[0x1f, 0x8b]);
        let text = if gzip {
            gunzip(&raw, MAX_BILL_BYTES)?
        } else {
            raw.clone()
        };
        Ok(Self { gzip, raw, text })
    }

    /// Lower-case hex SHA1 of the decompressed bill (what v3's `hash_value` covers).
    pub fn sha1_hex(&self) -> String {
        sha1_hex(&self.text)
    }

    /// Parses the text as a trade bill.
    pub fn trade_bill(&self) -> Result<TradeBill, BillError> {
        TradeBill::parse(&self.text)
    }
}

/// Lower-case hex SHA1 of `bytes`.
pub fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(Sha1::digest(bytes))
}

/// Decompresses gzip (one or more members), refusing more than `limit` bytes of output.
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, BillError> {
    let decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    decoder
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| BillError::Gzip(e.to_string()))?;
    if out.len() > limit {
        return Err(BillError::TooLarge);
    }
    Ok(out)
}

/// Reads a response body of at most [`MAX_BILL_BYTES`].
pub(crate) async fn read_bill_body(mut resp: reqwest::Response) -> Result<Vec<u8>, BillError> {
    if resp
        .content_length()
        .is_some_and(|len| len > MAX_BILL_BYTES as u64)
    {
        return Err(BillError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BillError::Transport(crate::http::describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_BILL_BYTES {
            return Err(BillError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
