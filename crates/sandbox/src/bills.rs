//! WeChat Pay's daily trade bill (对账单), made from the sandbox's own orders and refunds,
//! written from WeChat's documents (not from `crates/wechat`):
//!
//! * v2 `POST /pay/downloadbill` (<https://pay.weixin.qq.com/doc/v2/merchant/4011985040>):
//!   `bill_date` yyyyMMdd, `bill_type` ALL / SUCCESS / REFUND, `tar_type` GZIP or absent. The
//!   answer is the bill itself, unsigned ("成功时，数据以文本表格的方式返回，第一行为表头，后面
//!   各行为对应的字段内容"); a failure is XML `return_code` FAIL with `return_msg` and
//!   `error_code` — "No Bill Exist" / 20002 for a day without a bill (WxJava PR #1241 spells it).
//! * v3 `GET /v3/bill/tradebill?bill_date=yyyy-MM-dd&bill_type=&tar_type=`
//!   (<https://pay.weixin.qq.com/doc/v3/merchant/4012556654>): a signed JSON answer
//!   `{hash_type: "SHA1", hash_value, download_url}`, where hash_value is the SHA1 of the
//!   *original* bill ("原始账单(gzip需要解压缩)的摘要值"); no bill: 400 NO_STATEMENT_EXIST.
//!   `GET download_url` (signed like any v3 request) answers the bytes with no
//!   `Wechatpay-Signature` ("该接口响应的信息请求头中不包含微信接口响应的签名值",
//!   <https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter4_5_8.shtml>); the url lives 5 min.
//!
//! The format (both APIs): a header row; detail rows with a backquote before every value; then
//! a summary header and a summary row ("交易账单文件内包含：明细数据表头、明细数据内容、汇总数据
//! 表头、汇总数据四个部分 … 明细数据内容每个字段前会增加1个字符`",
//! <https://pay.weixin.qq.com/docs/partner/apis/partner-h5-payment/download-bill.html>). Amounts
//! in yuan with two decimals; 手续费 with five. The ALL columns since 2018 (免充值券结算):
//! 交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款
//! 银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,
//! 退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注. A bill holds the payments
//! whose time_end is that China-time day and the refunds *accepted* that day ("当天发起退款成功的
//! 退款单，退款发起成功就会出账"), of every API (the bill is the merchant's).
//!
//! Faults (`POST /sandbox/bills/faults`, see [`BillFaults`]): no bill yet, a bad hash, an order
//! left out, an amount one fen off, a payment made elsewhere, and refunds made in the merchant
//! platform (`POST /sandbox/bills/outside-refund`, a real refund the merchant never asked for).

use std::{collections::HashMap, io::Write as _};

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone as _};
use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use crate::{
    clock,
    dev_error::{DevError, parse_body},
    ids,
    order::{NotifyState, TradeState},
    pay::{self, PayError},
    refund::{Refund, RefundStatus},
    state::Sandbox,
    wx,
};

/// How long a v3 download_url works (the documents say 30 s in one place and 5 min in the
/// newer one; the longer is kept).
const DOWNLOAD_TTL_SECS: i64 = 300;

/// The bill faults, set with `POST /sandbox/bills/faults` (JSON, every field optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillFaults {
    /// Days (yyyy-MM-dd) for which WeChat answers "no bill" (not made yet).
    pub no_bill: Vec<String>,
    /// v3 answers a hash_value that is not the bill's.
    pub bad_hash: bool,
    /// Orders (out_trade_no) the bill leaves out.
    pub drop_orders: Vec<String>,
    /// Orders whose amount the bill shows one fen higher.
    pub amount_plus_one: Vec<String>,
    /// Refunds (out_refund_no) the bill leaves out.
    pub drop_refunds: Vec<String>,
    /// Payments the bill shows that no merchant order placed here (made by another system).
    pub extra_payments: Vec<ExtraPayment>,
}

/// A payment only the bill knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraPayment {
    pub out_trade_no: String,
    pub total_fee: u64,
}

/// The bill state of the sandbox: faults and the v3 downloads handed out.
#[derive(Default)]
pub struct BillState {
    pub faults: BillFaults,
    /// token → (bytes to answer, expires at unix seconds).
    downloads: HashMap<String, (Vec<u8>, i64)>,
}

/// One detail row, in fen (written as yuan).
struct Row {
    time: String,
    appid: String,
    mch_id: String,
    transaction_id: String,
    out_trade_no: String,
    openid: String,
    state: &'static str,
    order_fen: u64,
    refund_id: String,
    out_refund_no: String,
    refund_fen: u64,
    refund_status: String,
    body: String,
    attach: String,
}

const ALL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";
/// The fee rate of the sandbox's merchant: 0.6% (fee per fen: 6 thousandths of a fen).
const RATE: &str = "0.60%";
const FEE_MILLIFEN_PER_FEN: u64 = 6;

fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Five decimals of yuan from thousandths of a fen (signed: a refund returns its fee).
fn fee(millifen: i64) -> String {
    let sign = if millifen < 0 { "-" } else { "" };
    let m = millifen.unsigned_abs();
    format!("{sign}{}.{:05}", m / 100_000, m % 100_000)
}

fn cell(v: &str) -> String {
    if v.contains([',', '"', '\r', '\n']) {
        format!("`\"{}\"", v.replace('"', "\"\""))
    } else {
        format!("`{v}")
    }
}

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!("UTC+8 is valid"))
}

fn ms_time(ms: i64) -> DateTime<FixedOffset> {
    beijing()
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(clock::now)
}

fn bill_time(t: &DateTime<FixedOffset>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The day's rows of merchant `mch_id`, with the faults applied; None when WeChat has no bill.
fn rows(sandbox: &Sandbox, mch_id: &str, date: NaiveDate, bill_type: &str) -> Option<Vec<Row>> {
    let day = date.format("%Y-%m-%d").to_string();
    let on_day = |t: &DateTime<FixedOffset>| t.date_naive() == date;
    let mut out = Vec::new();
    let faults;
    {
        let state = sandbox.state();
        faults = state.bills.faults.clone();
        if faults.no_bill.contains(&day) {
            return None;
        }
        for o in state.orders.values() {
            if o.mch_id != mch_id || o.trade_state != TradeState::Success {
                continue;
            }
            let Some(paid) = o.time_end.as_deref().and_then(clock::parse_wx_time) else {
                continue;
            };
            if !on_day(&paid) {
                continue;
            }
            out.push(Row {
                time: bill_time(&paid),
                appid: o.appid.clone(),
                mch_id: o.mch_id.clone(),
                transaction_id: o.transaction_id.clone().unwrap_or_default(),
                out_trade_no: o.out_trade_no.clone(),
                openid: o.openid.clone(),
                state: "SUCCESS",
                order_fen: o.total_fee,
                refund_id: String::new(),
                out_refund_no: String::new(),
                refund_fen: 0,
                refund_status: String::new(),
                body: o.body.clone(),
                attach: o.attach.clone().unwrap_or_default(),
            });
        }
        for r in state.refunds.by_key.values() {
            let at = ms_time(r.created_at_ms);
            if r.mch_id != mch_id || !on_day(&at) {
                continue;
            }
            let order = state
                .orders
                .get(&(r.mch_id.clone(), r.out_trade_no.clone()));
            out.push(refund_row(
                &at,
                r.appid.clone(),
                r.mch_id.clone(),
                &r.transaction_id,
                &r.out_trade_no,
                order.map(|o| o.openid.clone()).unwrap_or_default(),
                r.total_fee,
                &r.refund_id,
                &r.out_refund_no,
                r.refund_fee,
                r.refund_status.as_str(),
                order.map(|o| o.body.clone()).unwrap_or_default(),
            ));
        }
    }
    {
        // Pay v3: the same merchant's bill holds them too.
        let v3 = sandbox.v3.state();
        for o in v3.orders.values() {
            if o.mchid != mch_id || o.transaction_id.is_none() {
                continue;
            }
            let Some(paid) = o
                .success_time
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&beijing()))
            else {
                continue;
            };
            if !on_day(&paid) {
                continue;
            }
            out.push(Row {
                time: bill_time(&paid),
                appid: o.appid.clone(),
                mch_id: o.mchid.clone(),
                transaction_id: o.transaction_id.clone().unwrap_or_default(),
                out_trade_no: o.out_trade_no.clone(),
                openid: o.openid.clone(),
                state: "SUCCESS",
                order_fen: u64::try_from(o.total).unwrap_or(0),
                refund_id: String::new(),
                out_refund_no: String::new(),
                refund_fen: 0,
                refund_status: String::new(),
                body: o.description.clone(),
                attach: o.attach.clone().unwrap_or_default(),
            });
        }
        for r in v3.refunds.values() {
            let at = ms_time(r.created_at_ms);
            if r.mchid != mch_id || !on_day(&at) {
                continue;
            }
            let order = v3.orders.get(&r.out_trade_no);
            out.push(refund_row(
                &at,
                order.map(|o| o.appid.clone()).unwrap_or_default(),
                r.mchid.clone(),
                &r.transaction_id,
                &r.out_trade_no,
                order.map(|o| o.openid.clone()).unwrap_or_default(),
                u64::try_from(r.total).unwrap_or(0),
                &r.refund_id,
                &r.out_refund_no,
                u64::try_from(r.refund).unwrap_or(0),
                &r.status,
                order.map(|o| o.description.clone()).unwrap_or_default(),
            ));
        }
    }
    for extra in &faults.extra_payments {
        out.push(Row {
            time: format!("{day} 12:00:00"),
            appid: sandbox.default_app().appid.clone(),
            mch_id: mch_id.to_owned(),
            transaction_id: ids::transaction_id(),
            out_trade_no: extra.out_trade_no.clone(),
            openid: String::new(),
            state: "SUCCESS",
            order_fen: extra.total_fee,
            refund_id: String::new(),
            out_refund_no: String::new(),
            refund_fen: 0,
            refund_status: String::new(),
            body: "elsewhere".into(),
            attach: String::new(),
        });
    }
    let dropped = |r: &Row| match r.state {
        "SUCCESS" => faults.drop_orders.contains(&r.out_trade_no),
        "REFUND" => faults.drop_refunds.contains(&r.out_refund_no),
        _ => false,
    };
    out.retain(|r| !dropped(r));
    for r in &mut out {
        if r.state == "SUCCESS" && faults.amount_plus_one.contains(&r.out_trade_no) {
            r.order_fen += 1;
        }
    }
    out.retain(|r| match bill_type {
        "SUCCESS" => r.state == "SUCCESS",
        "REFUND" => r.state == "REFUND",
        _ => true,
    });
    out.sort_by(|a, b| (&a.time, &a.out_trade_no).cmp(&(&b.time, &b.out_trade_no)));
    if out.is_empty() {
        // WeChat makes no bill for a day without trades ("No Bill Exist").
        return None;
    }
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn refund_row(
    at: &DateTime<FixedOffset>,
    appid: String,
    mch_id: String,
    transaction_id: &str,
    out_trade_no: &str,
    openid: String,
    total_fee: u64,
    refund_id: &str,
    out_refund_no: &str,
    refund_fee: u64,
    status: &str,
    body: String,
) -> Row {
    Row {
        time: bill_time(at),
        appid,
        mch_id,
        transaction_id: transaction_id.to_owned(),
        out_trade_no: out_trade_no.to_owned(),
        openid,
        state: "REFUND",
        order_fen: total_fee,
        refund_id: refund_id.to_owned(),
        out_refund_no: out_refund_no.to_owned(),
        refund_fen: refund_fee,
        refund_status: status.to_owned(),
        body,
        attach: String::new(),
    }
}

/// Writes the ALL bill (every bill_type uses the ALL columns here; SUCCESS and REFUND only
/// filter the rows).
fn write(rows: &[Row]) -> String {
    let mut out = String::with_capacity(rows.len() * 300 + 600);
    out.push_str(ALL_HEADER);
    out.push_str("\r\n");
    let (mut paid, mut refunded, mut fees) = (0_u64, 0_u64, 0_i64);
    for r in rows {
        let refund = r.state == "REFUND";
        let fee_millifen = if refund {
            -i64::try_from(r.refund_fen * FEE_MILLIFEN_PER_FEN).unwrap_or(0)
        } else {
            i64::try_from(r.order_fen * FEE_MILLIFEN_PER_FEN).unwrap_or(0)
        };
        fees += fee_millifen;
        if refund {
            refunded += r.refund_fen;
        } else {
            paid += r.order_fen;
        }
        let or_zero = |s: &str| {
            if s.is_empty() {
                "0".to_owned()
            } else {
                s.to_owned()
            }
        };
        let values = [
            r.time.clone(),
            r.appid.clone(),
            r.mch_id.clone(),
            "0".into(),
            String::new(),
            r.transaction_id.clone(),
            r.out_trade_no.clone(),
            r.openid.clone(),
            "JSAPI".into(),
            r.state.into(),
            "OTHERS".into(),
            "CNY".into(),
            yuan(r.order_fen),
            yuan(0),
            or_zero(&r.refund_id),
            or_zero(&r.out_refund_no),
            yuan(r.refund_fen),
            yuan(0),
            if refund {
                "ORIGINAL".into()
            } else {
                String::new()
            },
            r.refund_status.clone(),
            r.body.clone(),
            r.attach.clone(),
            fee(fee_millifen),
            RATE.into(),
            yuan(r.order_fen),
            yuan(r.refund_fen),
            String::new(),
        ];
        let line: Vec<String> = values.iter().map(|v| cell(v)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out.push_str(SUMMARY_HEADER);
    out.push_str("\r\n");
    let summary = [
        rows.len().to_string(),
        yuan(paid),
        yuan(refunded),
        yuan(0),
        fee(fees),
        yuan(paid),
        yuan(refunded),
    ];
    let line: Vec<String> = summary.iter().map(|v| format!("`{v}")).collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
    out
}

fn gzip(text: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(text);
    enc.finish().unwrap_or_default()
}

/// v2 `POST /pay/downloadbill`.
pub async fn downloadbill(sandbox: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    let authed = match pay::authenticate(&sandbox, &body) {
        Ok(a) => a,
        Err(PayError::Return(msg)) => return fail(&msg, "20003"),
        Err(e) => return fail(&e.to_string(), "20001"),
    };
    let Some(date) = authed
        .get("bill_date")
        .filter(|d| d.len() == 8)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
    else {
        return fail("invalid bill_date", "20001");
    };
    let bill_type = authed.get("bill_type").unwrap_or("ALL");
    if !["ALL", "SUCCESS", "REFUND", "RECHARGE_REFUND"].contains(&bill_type) {
        return fail("invalid bill_type", "20001");
    }
    let tar_type = authed.get("tar_type");
    if tar_type.is_some_and(|t| t != "GZIP") {
        return fail("invalid tar_type", "20001");
    }
    let Some(rows) = rows(&sandbox, &authed.merchant.mch_id, date, bill_type) else {
        return fail("No Bill Exist", "20002");
    };
    let text = write(&rows);
    if tar_type == Some("GZIP") {
        HttpResponse::Ok()
            .content_type("application/x-gzip")
            .body(gzip(text.as_bytes()))
    } else {
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(text)
    }
}

fn fail(msg: &str, code: &str) -> HttpResponse {
    pay::xml_response(wx::to_xml(&pay::pairs([
        ("return_code", "FAIL"),
        ("return_msg", msg),
        ("error_code", code),
    ])))
}

/// v3 `GET /v3/bill/tradebill`: the signed link to the bill.
pub async fn tradebill(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let v3 = &sandbox.v3;
    let mchid = match crate::v3::authenticate_request(&sandbox, &req, b"") {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let Some(date) = query
        .get("bill_date")
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    else {
        return crate::v3::error_response(v3, 400, "PARAM_ERROR", "bill_date 格式错误");
    };
    let bill_type = query.get("bill_type").map_or("ALL", String::as_str);
    if !["ALL", "SUCCESS", "REFUND"].contains(&bill_type) {
        return crate::v3::error_response(v3, 400, "PARAM_ERROR", "bill_type 取值错误");
    }
    let tar = query.get("tar_type").map(String::as_str);
    if tar.is_some_and(|t| t != "GZIP") {
        return crate::v3::error_response(v3, 400, "PARAM_ERROR", "tar_type 取值错误");
    }
    let Some(rows) = rows(&sandbox, &mchid, date, bill_type) else {
        return crate::v3::error_response(v3, 400, "NO_STATEMENT_EXIST", "账单文件不存在");
    };
    let text = write(&rows);
    let mut hash = hex::encode(Sha1::digest(text.as_bytes()));
    let bytes = if tar == Some("GZIP") {
        gzip(text.as_bytes())
    } else {
        text.into_bytes()
    };
    let token = hex::encode(rand::random::<[u8; 16]>());
    {
        let mut state = sandbox.state();
        let now = clock::unix_secs();
        state.bills.downloads.retain(|_, (_, exp)| *exp > now);
        if state.bills.faults.bad_hash {
            hash = hex::encode(Sha1::digest(b"not this bill"));
        }
        state
            .bills
            .downloads
            .insert(token.clone(), (bytes, now + DOWNLOAD_TTL_SECS));
    }
    let info = req.connection_info();
    let url = format!(
        "{}://{}/v3/billdownload/file?token={token}",
        info.scheme(),
        info.host()
    );
    crate::v3::signed_response(
        v3,
        actix_web::http::StatusCode::OK,
        serde_json::json!({ "hash_type": "SHA1", "hash_value": hash, "download_url": url })
            .to_string(),
    )
}

/// v3 `GET /v3/billdownload/file?token=`: the bill bytes, unsigned.
pub async fn download(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    if let Err(resp) = crate::v3::authenticate_request(&sandbox, &req, b"") {
        return *resp;
    }
    let token = query.get("token").cloned().unwrap_or_default();
    let found = {
        let state = sandbox.state();
        state
            .bills
            .downloads
            .get(&token)
            .filter(|(_, exp)| *exp > clock::unix_secs())
            .map(|(bytes, _)| bytes.clone())
    };
    match found {
        Some(bytes) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes),
        None => crate::v3::error_response(&sandbox.v3, 400, "INVALID_REQUEST", "下载链接已失效"),
    }
}

/// `GET /sandbox/bills/faults`.
pub async fn get_faults(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.state().bills.faults.clone())
}

/// `POST /sandbox/bills/faults`: replaces the bill faults.
pub async fn set_faults(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let faults: BillFaults = parse_body(&body)?;
    sandbox.state().bills.faults = faults.clone();
    Ok(HttpResponse::Ok().json(faults))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutsideRefund {
    out_trade_no: String,
    refund_fee: u64,
    #[serde(default)]
    out_refund_no: Option<String>,
}

/// `POST /sandbox/bills/outside-refund {out_trade_no, refund_fee[, out_refund_no]}`: a refund
/// of a paid v2 order made in the merchant platform (not through the API): settled at once,
/// no notify. It shows in the bill and in refundquery like any refund.
pub async fn outside_refund(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let req: OutsideRefund = parse_body(&body)?;
    let mut state = sandbox.state();
    let order = state
        .orders
        .values()
        .find(|o| o.out_trade_no == req.out_trade_no && o.trade_state == TradeState::Success)
        .cloned()
        .ok_or_else(|| DevError::UnknownOrder(req.out_trade_no.clone()))?;
    let refunded: u64 = state
        .refunds
        .by_key
        .values()
        .filter(|r| r.mch_id == order.mch_id && r.out_trade_no == order.out_trade_no)
        .map(|r| r.refund_fee)
        .sum();
    if req.refund_fee == 0 || refunded + req.refund_fee > order.total_fee {
        return Err(DevError::BadRequest(
            "refund_fee must be > 0 and at most what is left".into(),
        ));
    }
    let refund_id = ids::refund_id();
    let out_refund_no = req.out_refund_no.unwrap_or_else(|| refund_id.clone());
    let now = clock::now();
    let refund = Refund {
        appid: order.appid.clone(),
        mch_id: order.mch_id.clone(),
        out_trade_no: order.out_trade_no.clone(),
        transaction_id: order.transaction_id.clone().unwrap_or_default(),
        out_refund_no: out_refund_no.clone(),
        refund_id: refund_id.clone(),
        total_fee: order.total_fee,
        refund_fee: req.refund_fee,
        refund_desc: Some("merchant platform".into()),
        notify_url: None,
        refund_status: RefundStatus::Success,
        success_time: Some(bill_time(&now)),
        created_at_ms: now.timestamp_millis(),
        notify_state: NotifyState::None,
        notify_attempts: 0,
        requests: 1,
        faults: Default::default(),
    };
    state
        .refunds
        .by_key
        .insert((order.mch_id.clone(), out_refund_no.clone()), refund);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "out_refund_no": out_refund_no,
        "refund_id": refund_id,
        "out_trade_no": order.out_trade_no,
        "refund_fee": req.refund_fee,
    })))
}
