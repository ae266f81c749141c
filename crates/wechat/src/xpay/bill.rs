//! `download_bill`: the virtual-payment bill of a range of days, as a download url.
//! <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_download_bill.html>
//!
//! The body is `{begin_ds, end_ds}` (days as numbers, e.g. 20230801), signed with `pay_sig`
//! only. The first call starts generating the bill: until it is ready WeChat answers
//! 268490011 (数据生成中) and the caller polls again; the url it answers is valid for half
//! an hour.

use serde::Deserialize;

use crate::auth::{ApiError, parse_json};
use crate::client::WechatClient;

/// 268490011: the bill is being generated; call again later.
pub const ERR_DATA_GENERATING: i64 = 268_490_011;

#[derive(Deserialize)]
struct BillAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    url: String,
}

/// A day as `download_bill` takes it (`YYYYMMDD` as a number); None for an impossible date.
pub fn bill_day(year: u32, month: u32, day: u32) -> Option<u32> {
    ((2000..=9999).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day))
        .then(|| year * 10_000 + month * 100 + day)
}

impl WechatClient {
    /// `POST /xpay/download_bill`: the bill url of the days `begin_ds..=end_ds`
    /// (`YYYYMMDD`). 268490011 comes back as that errcode: poll again.
    pub async fn xpay_download_bill(
        &self,
        access_token: &str,
        app_key: &str,
        begin_ds: u32,
        end_ds: u32,
    ) -> Result<String, ApiError> {
        if begin_ds > end_ds {
            return Err(ApiError::BadResponse(
                "download_bill: begin_ds is after end_ds".into(),
            ));
        }
        let body = serde_json::json!({ "begin_ds": begin_ds, "end_ds": end_ds }).to_string();
        let answer: BillAnswer = parse_json(
            &self
                .xpay_post("/xpay/download_bill", access_token, app_key, &body)
                .await?,
        )?;
        if answer.errcode != 0 {
            return Err(ApiError::from_errcode(answer.errcode, answer.errmsg));
        }
        if answer.url.is_empty() {
            return Err(ApiError::BadResponse("download_bill: missing url".into()));
        }
        Ok(answer.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bill_days_are_yyyymmdd_numbers() {
        assert_eq!(bill_day(2026, 12, 6), Some(20_261_206));
        assert_eq!(bill_day(2026, 13, 1), None);
        assert_eq!(bill_day(2026, 1, 0), None);
        assert_eq!(bill_day(99, 1, 1), None);
    }
}
