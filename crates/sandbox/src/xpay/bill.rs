//! `download_bill` as the sandbox plays it:
//! <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_download_bill.html>
//!
//! `POST /xpay/download_bill?access_token=&pay_sig=` with `{begin_ds, end_ds}` (days as
//! `YYYYMMDD` numbers); `pay_sig` only, and the body carries no `env`, so it is keyed with the
//! live AppKey. The answer is `{url}`, valid for half an hour ("下载地址（有效时间为半小时）").
//! The url is served here (`GET /xpay/bill/download?token=`); the file lists the sandbox's
//! virtual orders paid on those days (China time) as CSV. WeChat's own column layout is not in
//! the API page, so the sandbox's is its own: a header row, then
//! `order_id,wx_order_id,openid,env,product_id,paid_fee,paid_time,status`.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{FixedOffset, TimeZone as _};
use serde_json::{Value, json};

use super::{check_pay_sig, wx};
use crate::{
    clock,
    state::Sandbox,
    token::authorize,
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

/// How long a bill url works.
pub const BILL_URL_SECS: i64 = 30 * 60;
/// 268490002: a request field is wrong.
const ERR_PARAM: i64 = 268_490_002;

/// Bills handed out: token → (bytes, expiry in unix seconds).
#[derive(Debug, Default)]
pub struct Bills {
    downloads: Mutex<HashMap<String, (Vec<u8>, i64)>>,
}

impl Bills {
    fn downloads(&self) -> MutexGuard<'_, HashMap<String, (Vec<u8>, i64)>> {
        self.downloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `YYYYMMDD` of a unix time, China time.
fn china_day(unix: i64) -> Option<i64> {
    let tz = FixedOffset::east_opt(8 * 3600)?;
    let t = tz.timestamp_opt(unix, 0).single()?;
    t.format("%Y%m%d").to_string().parse().ok()
}

/// A `YYYYMMDD` number that is a real day.
fn valid_day(v: Option<&Value>) -> Option<i64> {
    let d = v?.as_i64()?;
    let text = d.to_string();
    chrono::NaiveDate::parse_from_str(&text, "%Y%m%d").ok()?;
    Some(d)
}

/// `POST /xpay/download_bill`.
pub async fn download_bill(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let json = match check_pay_sig(&req, "/xpay/download_bill", &body) {
        Ok(j) => j,
        Err(r) => return Ok(*r),
    };
    let (Some(begin), Some(end)) = (
        valid_day(json.get("begin_ds")),
        valid_day(json.get("end_ds")),
    ) else {
        return Ok(wx(
            ERR_PARAM,
            "begin_ds and end_ds must be days like 20230801",
        ));
    };
    if begin > end {
        return Ok(wx(ERR_PARAM, "begin_ds is after end_ds"));
    }
    let mut csv =
        String::from("order_id,wx_order_id,openid,env,product_id,paid_fee,paid_time,status\n");
    let mut rows: Vec<(String, super::XOrder)> = sandbox
        .xpay
        .orders()
        .iter()
        .filter(|(_, o)| o.appid == appid)
        .filter(|(_, o)| china_day(o.paid_time).is_some_and(|d| (begin..=end).contains(&d)))
        .map(|(no, o)| (no.clone(), o.clone()))
        .collect();
    rows.sort_by(|a, b| (a.1.paid_time, &a.0).cmp(&(b.1.paid_time, &b.0)));
    for (no, o) in rows {
        csv.push_str(&format!(
            "{no},{},{},{},{},{},{},{}\n",
            o.wx_order_id, o.openid, o.env, o.product_id, o.price, o.paid_time, o.status
        ));
    }
    let token = hex::encode(rand::random::<[u8; 16]>());
    let now = clock::unix_ms() / 1000;
    sandbox
        .xpay
        .bills
        .downloads()
        .insert(token.clone(), (csv.into_bytes(), now + BILL_URL_SECS));
    let info = req.connection_info();
    let url = format!(
        "{}://{}/xpay/bill/download?token={token}",
        info.scheme(),
        info.host()
    );
    Ok(HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(json!({"errcode": 0, "errmsg": "ok", "url": url}).to_string()))
}

/// `GET /xpay/bill/download?token=`: the bill, while its url lives.
pub async fn download(
    sandbox: web::Data<Sandbox>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let token = q.get("token").cloned().unwrap_or_default();
    let now = clock::unix_ms() / 1000;
    let mut downloads = sandbox.xpay.bills.downloads();
    downloads.retain(|_, (_, expiry)| *expiry > now);
    match downloads.get(&token) {
        Some((bytes, _)) => HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(bytes.clone()),
        None => HttpResponse::NotFound().body("bill url unknown or expired"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_checked_and_china_time() {
        assert_eq!(valid_day(Some(&json!(20_261_206))), Some(20_261_206));
        assert_eq!(valid_day(Some(&json!(20_261_306))), None);
        assert_eq!(valid_day(Some(&json!("20261206"))), None);
        // 2026-12-06 17:00 UTC is the 7th in China.
        assert_eq!(china_day(1_796_576_400), Some(20_261_207));
    }
}
