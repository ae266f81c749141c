//! Pay v3 bills: apply, then download.
//!
//! * 申请交易账单 `GET /v3/bill/tradebill?bill_date=yyyy-MM-dd&bill_type=ALL&tar_type=GZIP`
//!   (<https://pay.weixin.qq.com/doc/v3/merchant/4012556654>) and 申请资金账单
//!   `GET /v3/bill/fundflowbill?bill_date=…&account_type=BASIC&tar_type=GZIP`
//!   (<https://pay.weixin.qq.com/doc/v3/merchant/4012556656>): a signed, verified JSON answer
//!   `{hash_type: "SHA1", hash_value, download_url}`; the url lives 5 minutes. No bill:
//!   400 `NO_STATEMENT_EXIST`; still being made: 400 `STATEMENT_CREATING`
//!   (<https://pay.weixin.qq.com/docs/partner/apis/combine-payment-identity/bill-download/download-fund-bill.html>).
//! * 下载账单: a GET of `download_url` signed like any v3 request (the signed URL is its path
//!   and query); the answer carries no `Wechatpay-Signature`, so it is not verified
//!   (<https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter4_5_8.shtml>; wechatpay-apache-httpclient#25),
//!   and the SHA1 of the decompressed bill against `hash_value` is the only check.

use chrono::NaiveDate;
use serde::Deserialize;

use crate::pay::bills::{BillError, BillType, DownloadedBill, FundAccount, MAX_BILL_BYTES};
use crate::pay::v3::client::V3Client;
use crate::pay::v3::error::V3Error;

/// The v3 `bill_date`: `yyyy-MM-dd`.
pub fn bill_date(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// The answer of 申请交易账单 / 申请资金账单.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BillLink {
    /// `SHA1`.
    pub hash_type: String,
    /// Hex SHA1 of the original (decompressed) bill.
    pub hash_value: String,
    pub download_url: String,
}

impl BillLink {
    /// Checks `bill` against `hash_value` (case-insensitive hex). Only SHA1 is defined.
    pub fn verify(&self, bill: &DownloadedBill) -> Result<(), BillError> {
        if !self.hash_type.eq_ignore_ascii_case("SHA1") {
            return Err(BillError::BadResponse(format!(
                "unknown hash_type {}",
                self.hash_type
            )));
        }
        let actual = bill.sha1_hex();
        if actual.eq_ignore_ascii_case(self.hash_value.trim()) {
            Ok(())
        } else {
            Err(BillError::HashMismatch {
                expected: self.hash_value.clone(),
                actual,
            })
        }
    }
}

/// Maps a v3 error of the apply call.
fn bill_error(e: V3Error) -> BillError {
    match e.code() {
        Some("NO_STATEMENT_EXIST") => BillError::NoBill,
        Some("STATEMENT_CREATING") => BillError::NotReady,
        _ if e.is_retryable() => BillError::Transport(e.to_string()),
        _ => match e {
            V3Error::Api { code, message, .. } => BillError::Refused { code, message },
            other => BillError::BadResponse(other.to_string()),
        },
    }
}

impl V3Client {
    /// 申请交易账单.
    pub async fn trade_bill(
        &self,
        date: NaiveDate,
        bill_type: BillType,
        gzip: bool,
    ) -> Result<BillLink, BillError> {
        let mut url = format!(
            "/v3/bill/tradebill?bill_date={}&bill_type={}",
            bill_date(date),
            bill_type.as_str()
        );
        if gzip {
            url.push_str("&tar_type=GZIP");
        }
        self.apply(&url).await
    }

    /// 申请资金账单.
    pub async fn fund_flow_bill(
        &self,
        date: NaiveDate,
        account: FundAccount,
        gzip: bool,
    ) -> Result<BillLink, BillError> {
        let mut url = format!(
            "/v3/bill/fundflowbill?bill_date={}&account_type={}",
            bill_date(date),
            account.v3()
        );
        if gzip {
            url.push_str("&tar_type=GZIP");
        }
        self.apply(&url).await
    }

    async fn apply(&self, url: &str) -> Result<BillLink, BillError> {
        let link: BillLink = self
            .call_json(reqwest::Method::GET, url, b"")
            .await
            .map_err(bill_error)?;
        if link.download_url.trim().is_empty() || link.hash_value.trim().is_empty() {
            return Err(BillError::BadResponse(
                "empty download_url or hash_value".into(),
            ));
        }
        Ok(link)
    }

    /// 下载账单: the signed GET of `link.download_url`, decompressed and checked against
    /// `hash_value`. A mismatch is [`BillError::HashMismatch`] and nothing of the bill is
    /// returned. The url must be on WeChat Pay's base URL (our signature goes nowhere else).
    pub async fn download(&self, link: &BillLink) -> Result<DownloadedBill, BillError> {
        let base = self.wechat().config().pay_base.trim_end_matches('/');
        let url = link.download_url.trim();
        let path = url
            .strip_prefix(base)
            .filter(|rest| rest.starts_with('/'))
            .ok_or_else(|| {
                BillError::BadResponse("download_url is not on the WeChat Pay base URL".into())
            })?;
        let answer = self
            .send_limited(reqwest::Method::GET, path, b"", MAX_BILL_BYTES)
            .await
            .map_err(|e| match e {
                V3Error::BadResponse(m) if m.contains("too large") => BillError::TooLarge,
                other => bill_error(other),
            })?;
        if !(200..300).contains(&answer.status) {
            return Err(bill_error(V3Client::error_of(&answer)));
        }
        let bill = DownloadedBill::decode(answer.body)?;
        link.verify(&bill)?;
        Ok(bill)
    }
}
