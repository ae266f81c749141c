//! Pay v2 bills.
//!
//! * `POST /pay/downloadbill` (<https://pay.weixin.qq.com/doc/v2/merchant/4011985040>, no
//!   certificate): `bill_date` `yyyyMMdd`, `bill_type` ALL / SUCCESS / REFUND, `tar_type` GZIP
//!   or absent (text). Success is the bill itself (unsigned); failure is XML with
//!   `return_code` FAIL, `return_msg` and `error_code` — "No Bill Exist" (20002) when there is
//!   no bill for the date (the spelling WxJava PR #1241 fixed), "Bill Creating" while it is
//!   being made.
//! * `POST /pay/downloadfundflow` (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_18&index=7>):
//!   the merchant certificate (mutual TLS, like refunds), `sign_type` HMAC-SHA256 only,
//!   `account_type` Basic / Operation / Fees.

use chrono::NaiveDate;

use crate::client::WechatClient;
use crate::config::join;
use crate::http;
use crate::pay::api::{PayConfig, signed_request_xml};
use crate::pay::bills::{BillError, BillType, DownloadedBill, FundAccount, read_bill_body};
use crate::pay::sign::SignType;
use crate::pay::xml::{self, Fields};

/// The v2 `bill_date`: `yyyyMMdd`.
pub fn bill_date(date: NaiveDate) -> String {
    date.format("%Y%m%d").to_string()
}

/// Reads a v2 bill answer: an XML error, or the bill (gzip or text).
pub fn decode_answer(body: Vec<u8>) -> Result<DownloadedBill, BillError> {
    let head = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&body[..0], |i| &body[i..]);
    if head.starts_with(b"<xml") {
        let fields = xml::parse(head).map_err(|e| BillError::BadResponse(e.to_string()))?;
        return Err(error_of(&fields));
    }
    DownloadedBill::decode(body)
}

fn error_of(fields: &Fields) -> BillError {
    let msg = fields.get("return_msg").cloned().unwrap_or_default();
    let code = fields
        .get("error_code")
        .or_else(|| fields.get("err_code"))
        .cloned()
        .unwrap_or_default();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("no bill exist") {
        BillError::NoBill
    } else if lower.contains("bill creating") {
        BillError::NotReady
    } else if code == "20100" || lower.contains("systemerror") {
        // 20100 系统错误 / 下载失败: retry later.
        BillError::Transport(format!("downloadbill {code}: {msg}"))
    } else {
        BillError::Refused { code, message: msg }
    }
}

impl WechatClient {
    /// Downloads the trade bill of `date` (`POST {pay_base}/pay/downloadbill`).
    pub async fn download_bill(
        &self,
        pay: &PayConfig,
        date: NaiveDate,
        bill_type: BillType,
        gzip: bool,
    ) -> Result<DownloadedBill, BillError> {
        let mut fields = Fields::new();
        fields.insert("bill_date".into(), bill_date(date));
        fields.insert("bill_type".into(), bill_type.as_str().into());
        if gzip {
            fields.insert("tar_type".into(), "GZIP".into());
        }
        let body = signed_request_xml(pay, fields);
        let resp = self
            .http()
            .post(join(&self.config().pay_base, "/pay/downloadbill"))
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| BillError::Transport(http::describe(&e)))?;
        decode_answer(checked(resp).await?)
    }

    /// Downloads the fund flow bill of `date` over mutual TLS
    /// (`POST {secapi}/pay/downloadfundflow`, always HMAC-SHA256).
    pub async fn download_fund_flow(
        &self,
        pay: &PayConfig,
        date: NaiveDate,
        account: FundAccount,
        gzip: bool,
    ) -> Result<DownloadedBill, BillError> {
        let (http, base) = self.secapi().ok_or(BillError::NoCertificate)?;
        let hmac = PayConfig {
            sign_type: SignType::HmacSha256,
            ..pay.clone()
        };
        let mut fields = Fields::new();
        fields.insert("bill_date".into(), bill_date(date));
        fields.insert("account_type".into(), account.v2().into());
        if gzip {
            fields.insert("tar_type".into(), "GZIP".into());
        }
        let body = signed_request_xml(&hmac, fields);
        let resp = http
            .post(join(base, "/pay/downloadfundflow"))
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| BillError::Transport(http::describe(&e)))?;
        decode_answer(checked(resp).await?)
    }
}

async fn checked(resp: reqwest::Response) -> Result<Vec<u8>, BillError> {
    let status = resp.status();
    if status.is_server_error() {
        return Err(BillError::Transport(format!("HTTP {}", status.as_u16())));
    }
    if !status.is_success() {
        return Err(BillError::BadResponse(format!("HTTP {}", status.as_u16())));
    }
    read_bill_body(resp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_map() {
        let no_bill = b"<xml><return_code><![CDATA[FAIL]]></return_code>\
            <return_msg><![CDATA[No Bill Exist]]></return_msg>\
            <error_code><![CDATA[20002]]></error_code></xml>";
        assert_eq!(decode_answer(no_bill.to_vec()), Err(BillError::NoBill));
        let creating =
            b"<xml><return_code>FAIL</return_code><return_msg>Bill Creating</return_msg></xml>";
        assert_eq!(decode_answer(creating.to_vec()), Err(BillError::NotReady));
        let sign = b"<xml><return_code>FAIL</return_code><return_msg>sign error</return_msg><error_code>20003</error_code></xml>";
        assert!(matches!(
            decode_answer(sign.to_vec()),
            Err(BillError::Refused { code, .. }) if code == "20003"
        ));
        let bill = decode_answer("交易时间\n".as_bytes().to_vec()).unwrap();
        assert!(!bill.gzip);
    }
}
