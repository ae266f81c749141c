//! Refunds as WeChat Pay v2 does them: `POST /secapi/pay/refund` (on the mutual-TLS port
//! only), `POST /pay/refundquery`, settlement after `SANDBOX_REFUND_DELAY_MS`, and the
//! encrypted refund notify, retried on WeChat's schedule until answered SUCCESS.
//!
//! Written from WeChat's documents, not from `crates/wechat`:
//! - apply: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_4> (certificate
//!   required; out_refund_no is the merchant's key: the same request answers the same refund;
//!   NOTENOUGH when the merchant's balance is too low; SYSTEMERROR: retry with the same
//!   out_refund_no);
//! - query: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_5> (`refund_count`,
//!   `_$n` fields, REFUNDNOTEXIST);
//! - notify: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10> —
//!   `return_code`, `appid`, `mch_id`, `nonce_str`, `req_info`, no `sign`; `req_info` =
//!   base64(AES-256-ECB/PKCS#7(key = lower-case hex md5(API key), plaintext = `<root>` XML)),
//!   as merchants describe it: <https://blog.youkuaiyun.com/lkforce/article/details/96880110>.
//!   The encryption below uses the `aes`/`ecb` block primitives directly.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix_web::{HttpRequest, HttpResponse, web};
use aes::cipher::{BlockEncryptMut, KeyInit, block_padding::Pkcs7};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

use crate::{
    clock,
    dev_error::DevError,
    faults::{self, Faults},
    ids,
    notify::RETRY_SCHEDULE_SECS,
    order::{NotifyState, TradeState},
    pay::{Authed, ErrCode, PayError, business, handle, pairs},
    state::Sandbox,
    wx::{self, Pairs},
};

/// (mch_id, out_refund_no): out_refund_no is unique per merchant.
pub type RefundKey = (String, String);

/// `refund_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundStatus {
    #[serde(rename = "PROCESSING")]
    Processing,
    #[serde(rename = "SUCCESS")]
    Success,
    #[serde(rename = "CHANGE")]
    Change,
    #[serde(rename = "REFUNDCLOSE")]
    RefundClose,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "PROCESSING",
            Self::Success => "SUCCESS",
            Self::Change => "CHANGE",
            Self::RefundClose => "REFUNDCLOSE",
        }
    }

    /// Counts against the order's refundable amount (a closed refund does not). CHANGE does:
    /// the money left the merchant's account and waits in WeChat's intermediate refund
    /// account until re-routed ("退款资金会停留在退款的中间账户内",
    /// <https://pay.weixin.qq.com/doc/v3/merchant/4013071031>, 2.4).
    fn holds_money(self) -> bool {
        matches!(self, Self::Processing | Self::Success | Self::Change)
    }

    /// The outcomes a refund in this status may still reach: a PROCESSING one any of the
    /// three; a CHANGE one SUCCESS (re-routed in the merchant platform) or REFUNDCLOSE.
    fn may_become(self, outcome: Self) -> bool {
        match self {
            Self::Processing => outcome != Self::Processing,
            Self::Change => matches!(outcome, Self::Success | Self::RefundClose),
            Self::Success | Self::RefundClose => false,
        }
    }
}

/// A refund as WeChat keeps it (`GET /sandbox/refunds/{out_refund_no}`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refund {
    pub appid: String,
    pub mch_id: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub out_refund_no: String,
    pub refund_id: String,
    pub total_fee: u64,
    pub refund_fee: u64,
    pub refund_desc: Option<String>,
    pub notify_url: Option<String>,
    pub refund_status: RefundStatus,
    /// `yyyy-MM-dd HH:mm:ss` (Beijing time) once SUCCESS.
    pub success_time: Option<String>,
    pub created_at_ms: i64,
    pub notify_state: NotifyState,
    pub notify_attempts: u32,
    /// How many refund requests named this out_refund_no (repeats answer the same refund).
    pub requests: u32,
    #[serde(skip)]
    pub faults: Faults,
}

/// One HTTP request of a refund notify (`GET /sandbox/refund-notifies`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotifyRecord {
    pub mch_id: String,
    pub out_refund_no: String,
    pub attempt: u32,
    pub at_ms: i64,
    pub url: String,
    /// The XML sent (req_info encrypted).
    pub request: String,
    pub status: Option<u16>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub accepted: bool,
}

/// The refunds of the sandbox and their notifies.
#[derive(Default)]
pub struct Refunds {
    pub by_key: HashMap<RefundKey, Refund>,
    pub notifies: Vec<RefundNotifyRecord>,
}

/// Most refund notify records kept.
const MAX_NOTIFY_RECORDS: usize = 50_000;

/// True when the order has a refund (orderquery then answers REFUND).
pub fn has_refunds(sandbox: &Sandbox, mch_id: &str, out_trade_no: &str) -> bool {
    sandbox
        .state()
        .refunds
        .by_key
        .values()
        .any(|r| r.mch_id == mch_id && r.out_trade_no == out_trade_no)
}

/// The AES-256 key of `req_info`: md5 of the API key as 32 lower-case hex characters.
fn req_info_key(pay_key: &str) -> [u8; 32] {
    let hex = hex::encode(Md5::digest(pay_key.as_bytes()));
    let mut key = [0u8; 32];
    key.copy_from_slice(hex.as_bytes());
    key
}

/// base64(AES-256-ECB/PKCS#7(md5hex(key), plain)).
pub fn encrypt_req_info(pay_key: &str, plain: &[u8]) -> String {
    let cipher = ecb::Encryptor::<aes::Aes256>::new(&req_info_key(pay_key).into());
    base64::engine::general_purpose::STANDARD.encode(cipher.encrypt_padded_vec_mut::<Pkcs7>(plain))
}

/// The `<root>` document of `req_info`, every value in CDATA as WeChat writes it.
fn root_xml(fields: &[(&str, String)]) -> String {
    let mut xml = String::from("<root>");
    for (name, value) in fields {
        xml.push_str(&format!(
            "<{name}><![CDATA[{}]]></{name}>",
            value.replace("]]>", "]]]]><![CDATA[>")
        ));
    }
    xml.push_str("</root>");
    xml
}

fn positive_fee(a: &Authed, name: &str) -> Result<u64, PayError> {
    let raw = a.require(name)?;
    raw.parse::<u64>()
        .ok()
        .filter(|f| *f > 0 && raw.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            business(
                ErrCode::ParamError,
                format!("{name}参数格式错误: 必须为正整数(分)"),
            )
        })
}

fn answer_of(r: &Refund) -> Pairs {
    let total = r.total_fee.to_string();
    let fee = r.refund_fee.to_string();
    pairs([
        ("transaction_id", r.transaction_id.as_str()),
        ("out_trade_no", &r.out_trade_no),
        ("out_refund_no", &r.out_refund_no),
        ("refund_id", &r.refund_id),
        ("refund_channel", ""),
        ("refund_fee", &fee),
        ("coupon_refund_fee", "0"),
        ("total_fee", &total),
        ("cash_fee", &total),
        ("cash_refund_fee", &fee),
        ("fee_type", "CNY"),
    ])
}

/// The refund logic of `/secapi/pay/refund`.
fn apply(
    sandbox: &Sandbox,
    a: &Authed,
    faults: &Faults,
) -> Result<(Pairs, Option<RefundKey>), PayError> {
    let out_refund_no = a.require("out_refund_no")?.to_owned();
    let total_fee = positive_fee(a, "total_fee")?;
    let refund_fee = positive_fee(a, "refund_fee")?;
    if out_refund_no.len() > 64
        || !out_refund_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
    {
        return Err(business(ErrCode::ParamError, "out_refund_no参数格式错误"));
    }
    if a.get("refund_desc").is_some_and(|d| d.chars().count() > 80) {
        return Err(business(ErrCode::ParamError, "refund_desc参数长度有误"));
    }
    let order = crate::pay::find_order(sandbox, a)?;
    let key = (a.merchant.mch_id.clone(), out_refund_no.clone());
    let mut state = sandbox.state();
    if let Some(existing) = state.refunds.by_key.get_mut(&key) {
        // The same out_refund_no: the same refund, or a conflicting request.
        if existing.out_trade_no != order.out_trade_no
            || existing.refund_fee != refund_fee
            || existing.total_fee != total_fee
        {
            return Err(business(
                ErrCode::Error,
                "订单金额或退款金额与之前请求不一致，请核实后再试",
            ));
        }
        existing.requests += 1;
        return Ok((answer_of(existing), None));
    }
    if order.trade_state != TradeState::Success {
        return Err(business(ErrCode::Error, "订单未支付，不能发起退款"));
    }
    if total_fee != order.total_fee {
        return Err(business(ErrCode::ParamError, "订单金额与之前请求不一致"));
    }
    let held: u64 = state
        .refunds
        .by_key
        .values()
        .filter(|r| r.mch_id == order.mch_id && r.out_trade_no == order.out_trade_no)
        .filter(|r| r.refund_status.holds_money())
        .map(|r| r.refund_fee)
        .sum();
    if held + refund_fee > order.total_fee {
        return Err(business(ErrCode::Error, "退款金额大于支付金额"));
    }
    if faults.refund_not_enough {
        return Err(business(
            ErrCode::NotEnough,
            "基本账户余额不足，请充值后重新发起",
        ));
    }
    let refund = Refund {
        appid: a.appid.clone(),
        mch_id: order.mch_id.clone(),
        out_trade_no: order.out_trade_no.clone(),
        transaction_id: order.transaction_id.clone().unwrap_or_default(),
        out_refund_no,
        refund_id: ids::refund_id(),
        total_fee,
        refund_fee,
        refund_desc: a.get("refund_desc").map(str::to_owned),
        notify_url: a.get("notify_url").map(str::to_owned),
        refund_status: RefundStatus::Processing,
        success_time: None,
        created_at_ms: clock::unix_ms(),
        notify_state: NotifyState::None,
        notify_attempts: 0,
        requests: 1,
        faults: faults.clone(),
    };
    let answer = answer_of(&refund);
    state.refunds.by_key.insert(key.clone(), refund);
    Ok((answer, Some(key)))
}

/// `POST /secapi/pay/refund` (mutual TLS port only).
pub async fn refund(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    let faults = faults::of_request(&req);
    if faults.refund_refused {
        return crate::pay::refused("签名错误");
    }
    let mut created = None;
    let response = handle(&req, &sandbox, &body, |sandbox, a| {
        let (answer, key) = apply(sandbox, a, &faults)?;
        created = key;
        if faults.refund_answer_lost {
            // Recorded (and settled later), but the merchant only hears SYSTEMERROR.
            return Err(business(ErrCode::SystemError, "系统超时"));
        }
        Ok(answer)
    });
    if let Some(key) = created {
        let sandbox = sandbox.clone().into_inner();
        sandbox.runtime.clone().spawn(settle(sandbox, key));
    }
    if faults.refund_reply_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.refund_reply_delay_ms)).await;
    }
    response
}

/// `POST /pay/refundquery`: by out_refund_no, refund_id, out_trade_no or transaction_id.
pub async fn refundquery(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    handle(&req, &sandbox, &body, query)
}

/// Refunds of one order in a refundquery answer.
const REFUNDS_PER_PAGE: usize = 10;

fn query(sandbox: &Sandbox, a: &Authed) -> Result<Pairs, PayError> {
    let mch = a.merchant.mch_id.clone();
    let state = sandbox.state();
    let mut found: Vec<&Refund> = state
        .refunds
        .by_key
        .values()
        .filter(|r| r.mch_id == mch && r.appid == a.appid)
        .filter(|r| {
            if let Some(no) = a.get("out_refund_no") {
                r.out_refund_no == no
            } else if let Some(id) = a.get("refund_id") {
                r.refund_id == id
            } else if let Some(no) = a.get("out_trade_no") {
                r.out_trade_no == no
            } else if let Some(id) = a.get("transaction_id") {
                r.transaction_id == id
            } else {
                false
            }
        })
        .collect();
    if [
        "out_refund_no",
        "refund_id",
        "out_trade_no",
        "transaction_id",
    ]
    .iter()
    .all(|f| a.get(f).is_none())
    {
        return Err(business(ErrCode::LackParams, "缺少参数out_refund_no"));
    }
    if found.is_empty() {
        return Err(business(ErrCode::RefundNotExist, "not exist"));
    }
    found.sort_by_key(|r| r.created_at_ms);
    let first = found[0];
    let total = first.total_fee.to_string();
    let refunded: u64 = found.iter().map(|r| r.refund_fee).sum();
    // 分页查询: by order, WeChat answers 10 refunds from `offset` (default 0) and, past 10,
    // `total_refund_count`; an offset past the total is PARAM_ERROR (查询退款,
    // <https://pay.weixin.qq.com/doc/v2/merchant/4011939577>).
    let by_order = a.get("out_refund_no").is_none() && a.get("refund_id").is_none();
    let all = found.len();
    let offset = match a.get("offset") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(o) if o <= all => o,
            _ => {
                return Err(business(
                    ErrCode::ParamError,
                    "offset 超过 total_refund_count",
                ));
            }
        },
    };
    let page: Vec<&Refund> = if by_order {
        found
            .iter()
            .skip(offset)
            .take(REFUNDS_PER_PAGE)
            .copied()
            .collect()
    } else {
        found.clone()
    };
    let mut out = pairs([
        ("transaction_id", first.transaction_id.as_str()),
        ("out_trade_no", &first.out_trade_no),
        ("total_fee", &total),
        ("cash_fee", &total),
        ("fee_type", "CNY"),
        ("refund_fee", &refunded.to_string()),
        ("refund_count", &page.len().to_string()),
    ]);
    if by_order && (all > REFUNDS_PER_PAGE || a.get("offset").is_some()) {
        out.push(("total_refund_count".into(), all.to_string()));
    }
    for (n, r) in page.iter().enumerate() {
        out.push((format!("out_refund_no_{n}"), r.out_refund_no.clone()));
        out.push((format!("refund_id_{n}"), r.refund_id.clone()));
        out.push((format!("refund_channel_{n}"), "ORIGINAL".into()));
        out.push((format!("refund_fee_{n}"), r.refund_fee.to_string()));
        out.push((
            format!("settlement_refund_fee_{n}"),
            r.refund_fee.to_string(),
        ));
        out.push((
            format!("refund_status_{n}"),
            r.refund_status.as_str().into(),
        ));
        out.push((
            format!("refund_account_{n}"),
            "REFUND_SOURCE_RECHARGE_FUNDS".into(),
        ));
        out.push((format!("refund_recv_accout_{n}"), "支付用户零钱".into()));
        if let Some(t) = &r.success_time {
            out.push((format!("refund_success_time_{n}"), t.clone()));
        }
    }
    Ok(out)
}

/// Settles a refund after the configured delay (unless the refund_hold fault keeps it
/// PROCESSING for the console), then notifies.
async fn settle(sandbox: Arc<Sandbox>, key: RefundKey) {
    let shutdown = sandbox.shutdown.clone();
    tokio::select! {
        _ = settle_and_notify(&sandbox, &key) => {}
        _ = shutdown.wait() => {}
    }
}

async fn settle_and_notify(sandbox: &Sandbox, key: &RefundKey) {
    tokio::time::sleep(sandbox.settings.refund_delay).await;
    let outcome = {
        let state = sandbox.state();
        let Some(r) = state.refunds.by_key.get(key) else {
            return;
        };
        if r.faults.refund_hold {
            tracing::info!(out_refund_no = key.1, "sandbox refund held PROCESSING");
            return;
        }
        if r.faults.refund_change {
            RefundStatus::Change
        } else if r.faults.refund_close {
            RefundStatus::RefundClose
        } else {
            RefundStatus::Success
        }
    };
    // Already finished from the console meanwhile: nothing more to do.
    if let Ok(deliver) = conclude(sandbox, key, outcome)
        && deliver
    {
        deliver_attempts(sandbox, key).await;
    }
}

/// Why a refund cannot be concluded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConcludeError {
    #[error("unknown refund {0}")]
    Unknown(String),
    #[error("refund {0} is {1}, not PROCESSING")]
    NotProcessing(String, String),
    #[error("a refund cannot end PROCESSING")]
    NotFinal,
}

/// WeChat finishes a PROCESSING refund: SUCCESS (the money reached the payer; success_time
/// set), CHANGE (退款异常: e.g. the payer's card is frozen; the money is held by WeChat, see
/// [`RefundStatus::holds_money`]) or REFUNDCLOSE (退款关闭); a CHANGE one later SUCCESS (the
/// merchant re-routed it) or REFUNDCLOSE. Each of the three ends in a refund notify (退款结果通知: "当商户
/// 申请的退款有结果后(退款状态为:退款成功、退款关闭、退款异常),微信会把相关结果发送给商户",
/// <https://pay.weixin.qq.com/doc/global/v2/zh/4013636494>). One change under the lock, so the
/// settle timer and the console cannot both conclude a refund. `Ok(true)` when the notify is
/// to be delivered (a notify_url, and no drop_notify fault).
pub fn conclude(
    sandbox: &Sandbox,
    key: &RefundKey,
    outcome: RefundStatus,
) -> Result<bool, ConcludeError> {
    if outcome == RefundStatus::Processing {
        return Err(ConcludeError::NotFinal);
    }
    let drop_all = sandbox.current_faults().drop_notify;
    let deliver = {
        let mut state = sandbox.state();
        let Some(r) = state.refunds.by_key.get_mut(key) else {
            return Err(ConcludeError::Unknown(key.1.clone()));
        };
        if !r.refund_status.may_become(outcome) {
            return Err(ConcludeError::NotProcessing(
                key.1.clone(),
                r.refund_status.as_str().to_owned(),
            ));
        }
        r.refund_status = outcome;
        if outcome == RefundStatus::Success {
            r.success_time = Some(clock::now().format("%Y-%m-%d %H:%M:%S").to_string());
        }
        let drop = r.faults.drop_notify || drop_all;
        match (&r.notify_url, drop) {
            (None, _) => false,
            (Some(_), true) => {
                r.notify_state = NotifyState::Dropped;
                false
            }
            (Some(_), false) => {
                r.notify_state = NotifyState::Pending;
                true
            }
        }
    };
    tracing::info!(
        out_refund_no = key.1,
        status = outcome.as_str(),
        "sandbox refund settled"
    );
    Ok(deliver)
}

/// Delivers the refund notify of `key` in the background (after [`conclude`] said so).
pub fn spawn_notify(sandbox: Arc<Sandbox>, key: RefundKey) {
    let runtime = sandbox.runtime.clone();
    runtime.spawn(async move {
        let shutdown = sandbox.shutdown.clone();
        tokio::select! {
            _ = deliver_attempts(&sandbox, &key) => {}
            _ = shutdown.wait() => {}
        }
    });
}

/// The refund notify of `r`, req_info encrypted with the merchant key.
fn notify_xml(r: &Refund, pay_key: &str) -> String {
    let info = root_xml(&[
        ("out_refund_no", r.out_refund_no.clone()),
        ("out_trade_no", r.out_trade_no.clone()),
        ("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS".into()),
        ("refund_fee", r.refund_fee.to_string()),
        ("refund_id", r.refund_id.clone()),
        ("refund_recv_accout", "支付用户零钱".into()),
        ("refund_request_source", "API".into()),
        ("refund_status", r.refund_status.as_str().into()),
        ("settlement_refund_fee", r.refund_fee.to_string()),
        ("settlement_total_fee", r.total_fee.to_string()),
        ("success_time", r.success_time.clone().unwrap_or_default()),
        ("total_fee", r.total_fee.to_string()),
        ("transaction_id", r.transaction_id.clone()),
    ]);
    wx::to_xml(&pairs([
        ("return_code", "SUCCESS"),
        ("appid", &r.appid),
        ("mch_id", &r.mch_id),
        ("nonce_str", &wx::nonce_str()),
        ("req_info", &encrypt_req_info(pay_key, info.as_bytes())),
    ]))
}

async fn deliver_attempts(sandbox: &Sandbox, key: &RefundKey) {
    let scale = sandbox.settings.notify_time_scale;
    for attempt in 0..=RETRY_SCHEDULE_SECS.len() {
        if attempt > 0 {
            let delay = RETRY_SCHEDULE_SECS[attempt - 1] as f64 * scale;
            tokio::time::sleep(Duration::from_secs_f64(delay)).await;
        }
        let Some(r) = sandbox.state().refunds.by_key.get(key).cloned() else {
            return;
        };
        let (Some(url), Some(merchant)) = (r.notify_url.clone(), sandbox.merchant(&r.mch_id))
        else {
            return;
        };
        let xml = notify_xml(&r, merchant.key.expose());
        let mut record = RefundNotifyRecord {
            mch_id: r.mch_id.clone(),
            out_refund_no: r.out_refund_no.clone(),
            attempt: u32::try_from(attempt + 1).unwrap_or(u32::MAX),
            at_ms: clock::unix_ms(),
            url: url.clone(),
            request: xml.clone(),
            status: None,
            response: None,
            error: None,
            accepted: false,
        };
        match sandbox
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .body(xml)
            .send()
            .await
        {
            Err(e) => record.error = Some(e.to_string()),
            Ok(response) => {
                let status = response.status().as_u16();
                record.status = Some(status);
                match response.text().await {
                    Err(e) => record.error = Some(e.to_string()),
                    Ok(text) => {
                        record.accepted = status == 200
                            && wx::parse_xml(text.as_bytes()).is_ok_and(|f| {
                                f.iter().any(|(k, v)| k == "return_code" && v == "SUCCESS")
                            });
                        record.response = Some(text.chars().take(4096).collect());
                    }
                }
            }
        }
        let accepted = record.accepted;
        {
            let mut state = sandbox.state();
            if state.refunds.notifies.len() >= MAX_NOTIFY_RECORDS {
                state.refunds.notifies.remove(0);
            }
            state.refunds.notifies.push(record);
            if let Some(r) = state.refunds.by_key.get_mut(key) {
                r.notify_attempts += 1;
                if accepted {
                    r.notify_state = NotifyState::Accepted;
                }
            }
        }
        if accepted {
            return;
        }
    }
    if let Some(r) = sandbox.state().refunds.by_key.get_mut(key) {
        r.notify_state = NotifyState::GaveUp;
    }
}

#[derive(Debug, Deserialize)]
pub struct RefundsQuery {
    pub out_trade_no: Option<String>,
}

/// `GET /sandbox/refunds[?out_trade_no=]`: every refund, oldest first.
pub async fn list(sandbox: web::Data<Sandbox>, query: web::Query<RefundsQuery>) -> HttpResponse {
    let state = sandbox.state();
    let mut refunds: Vec<&Refund> = state
        .refunds
        .by_key
        .values()
        .filter(|r| {
            query
                .out_trade_no
                .as_ref()
                .is_none_or(|o| *o == r.out_trade_no)
        })
        .collect();
    refunds.sort_by_key(|r| r.created_at_ms);
    HttpResponse::Ok().json(refunds)
}

/// `GET /sandbox/refunds/{out_refund_no}`.
pub async fn get(
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
) -> Result<HttpResponse, DevError> {
    let no = path.into_inner();
    let state = sandbox.state();
    state
        .refunds
        .by_key
        .values()
        .find(|r| r.out_refund_no == no)
        .map(|r| HttpResponse::Ok().json(r))
        .ok_or(DevError::UnknownOrder(no))
}

#[derive(Debug, Deserialize)]
pub struct RefundNotifiesQuery {
    pub out_refund_no: Option<String>,
}

/// `GET /sandbox/refund-notifies[?out_refund_no=]`: every refund notify request.
pub async fn notifies(
    sandbox: web::Data<Sandbox>,
    query: web::Query<RefundNotifiesQuery>,
) -> HttpResponse {
    let state = sandbox.state();
    let records: Vec<&RefundNotifyRecord> = state
        .refunds
        .notifies
        .iter()
        .filter(|r| {
            query
                .out_refund_no
                .as_ref()
                .is_none_or(|o| *o == r.out_refund_no)
        })
        .collect();
    HttpResponse::Ok().json(records)
}

/// How `POST /sandbox/refunds/{out_refund_no}/finish` ends a refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishOutcome {
    /// SUCCESS (an abnormal one: re-routed by the merchant).
    Success,
    /// CHANGE / v3 ABNORMAL (only from PROCESSING).
    Abnormal,
    /// REFUNDCLOSE / v3 CLOSED.
    Close,
}

#[derive(Debug, Deserialize)]
pub struct FinishBody {
    pub outcome: FinishOutcome,
}

/// `POST /sandbox/refunds/{out_refund_no}/finish` `{"outcome": "success" | "abnormal" |
/// "close"}`: what the console's buttons do, for scripts and tests, on v2 or v3 (whichever
/// holds the out_refund_no): a PROCESSING refund ends any way; an abnormal one (CHANGE /
/// ABNORMAL, money held) settles or closes. The refund notify follows.
pub async fn finish(
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let no = path.into_inner();
    let FinishBody { outcome } = serde_json::from_slice(&body)
        .map_err(|e| DevError::BadRequest(format!("expected {{\"outcome\": ...}}: {e}")))?;
    let v2_key = sandbox
        .state()
        .refunds
        .by_key
        .keys()
        .find(|(_, k)| *k == no)
        .cloned();
    let sandbox = sandbox.into_inner();
    let (status, concluded) = if let Some(key) = v2_key {
        let status = match outcome {
            FinishOutcome::Success => RefundStatus::Success,
            FinishOutcome::Abnormal => RefundStatus::Change,
            FinishOutcome::Close => RefundStatus::RefundClose,
        };
        let concluded = conclude(&sandbox, &key, status);
        if concluded == Ok(true) {
            spawn_notify(sandbox, key);
        }
        (status.as_str(), concluded)
    } else {
        let end = match outcome {
            FinishOutcome::Success => crate::v3::V3RefundEnd::Success,
            FinishOutcome::Abnormal => crate::v3::V3RefundEnd::Abnormal,
            FinishOutcome::Close => crate::v3::V3RefundEnd::Closed,
        };
        (end.as_str(), crate::v3::conclude_refund(&sandbox, &no, end))
    };
    match concluded {
        Ok(notified) => Ok(HttpResponse::Ok().json(
            serde_json::json!({ "out_refund_no": no, "status": status, "notified": notified }),
        )),
        Err(ConcludeError::Unknown(no)) => Err(DevError::UnknownOrder(no)),
        Err(e) => Err(DevError::Conflict(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct OutsideBody {
    pub out_trade_no: String,
    pub refund_fee: u64,
    /// Generated (as the merchant platform does) when absent.
    pub out_refund_no: Option<String>,
}

/// `POST /sandbox/refunds/outside` `{"out_trade_no", "refund_fee", "out_refund_no"?}`: a v2
/// refund made outside the merchant's own system, as an operator makes one in the merchant
/// platform (交易中心 → 交易订单 → 申请退款). WeChat holds it like any other: it counts against
/// the order (a later refund beyond what is left is refused, "退款金额大于支付金额"), settles
/// after `SANDBOX_REFUND_DELAY_MS`, and the order's refundquery lists it (`refund_count`,
/// `out_refund_no_$n`, ..., <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_5>);
/// no notify is sent (it names no notify_url).
pub async fn outside(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let body: OutsideBody = serde_json::from_slice(&body).map_err(|e| {
        DevError::BadRequest(format!(
            "expected {{\"out_trade_no\", \"refund_fee\", \"out_refund_no\"?}}: {e}"
        ))
    })?;
    if body.refund_fee == 0 {
        return Err(DevError::BadRequest("refund_fee must be positive".into()));
    }
    let out_refund_no = body
        .out_refund_no
        .unwrap_or_else(|| format!("mp{}", ids::refund_id()));
    let key = {
        let mut state = sandbox.state();
        let order = state
            .orders
            .values()
            .find(|o| o.out_trade_no == body.out_trade_no)
            .cloned()
            .ok_or_else(|| DevError::UnknownOrder(body.out_trade_no.clone()))?;
        if order.trade_state != TradeState::Success {
            return Err(DevError::Conflict("the order is not paid".into()));
        }
        let key = (order.mch_id.clone(), out_refund_no.clone());
        if state.refunds.by_key.contains_key(&key) {
            return Err(DevError::Conflict(format!(
                "out_refund_no {out_refund_no} is taken"
            )));
        }
        let held: u64 = state
            .refunds
            .by_key
            .values()
            .filter(|r| r.mch_id == order.mch_id && r.out_trade_no == order.out_trade_no)
            .filter(|r| r.refund_status.holds_money())
            .map(|r| r.refund_fee)
            .sum();
        if held + body.refund_fee > order.total_fee {
            return Err(DevError::Conflict("退款金额大于支付金额".into()));
        }
        state.refunds.by_key.insert(
            key.clone(),
            Refund {
                appid: order.appid.clone(),
                mch_id: order.mch_id.clone(),
                out_trade_no: order.out_trade_no.clone(),
                transaction_id: order.transaction_id.clone().unwrap_or_default(),
                out_refund_no: out_refund_no.clone(),
                refund_id: ids::refund_id(),
                total_fee: order.total_fee,
                refund_fee: body.refund_fee,
                refund_desc: Some("商户平台退款".into()),
                notify_url: None,
                refund_status: RefundStatus::Processing,
                success_time: None,
                created_at_ms: clock::unix_ms(),
                notify_state: NotifyState::None,
                notify_attempts: 0,
                requests: 1,
                faults: Faults::default(),
            },
        );
        key
    };
    let sandbox = sandbox.into_inner();
    sandbox.runtime.clone().spawn(settle(sandbox, key));
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "out_trade_no": body.out_trade_no,
        "out_refund_no": out_refund_no,
        "refund_fee": body.refund_fee,
    })))
}
