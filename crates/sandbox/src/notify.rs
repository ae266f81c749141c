//! `POST /sandbox/pay` (plays the user paying) and the payment notify it triggers: signed XML
//! to the order's notify_url, retried on WeChat's schedule until answered SUCCESS.

use std::{sync::Arc, time::Duration};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::{
    clock,
    dev_error::{DevError, parse_body},
    faults::{self, Faults},
    ids,
    order::{NotifyState, Order, OrderKey, OrderView, PREPAY_LIFETIME, TradeState},
    pay::pairs,
    state::Sandbox,
    wx,
};

/// WeChat's documented delays between notify attempts, in seconds (16 attempts in all).
pub const RETRY_SCHEDULE_SECS: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];

/// Most of a merchant's answer kept in a record.
const MAX_ANSWER_CHARS: usize = 4096;

/// What the user does with the payment sheet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayOutcome {
    /// Paid: SUCCESS, transaction_id, time_end, and a notify.
    #[default]
    Success,
    /// Payment failed: trade_state PAYERROR, no notify.
    Fail,
    /// The user closed the sheet: stays NOTPAY.
    Cancel,
    /// Still entering the password: USERPAYING.
    Paying,
}

/// Body of `POST /sandbox/pay`: the parameters the mini program passes to
/// `wx.requestPayment` (plus the `appId` they were signed with, the mini program's own), and
/// what the user then does with the payment sheet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PayRequest {
    #[serde(rename = "appId")]
    pub app_id: String,
    /// Unix seconds, as a string.
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    /// `prepay_id=<the unifiedorder's prepay_id>`.
    pub package: String,
    /// `MD5` or `HMAC-SHA256`: the unifiedorder's sign type.
    #[serde(rename = "signType")]
    pub sign_type: String,
    #[serde(rename = "paySign")]
    pub pay_sign: String,
    pub outcome: PayOutcome,
    /// Notify faults fixed for this order (else the global faults are read at each attempt).
    pub faults: Option<Faults>,
}

impl PayRequest {
    /// The prepay_id in `package`.
    fn prepay_id(&self) -> Result<&str, DevError> {
        self.package
            .strip_prefix("prepay_id=")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| fail("package参数格式错误, 应为prepay_id=***"))
    }
}

fn fail(reason: &str) -> DevError {
    DevError::RequestPaymentFail(format!("requestPayment:fail {reason}"))
}

/// What WeChat checks before it shows the payment sheet (小程序调起支付API,
/// https://pay.weixin.qq.com/wiki/doc/api/wxa/wxa_api.php?chapter=7_7): all five signed
/// fields present; `signType` the one the order was placed with ("注意此处需与统一下单的签名
/// 类型一致"); `appId` the app of the order; `paySign` = sign(appId, nonceStr, package,
/// signType, timeStamp) with the merchant key, else the phone's fail callback with
/// "支付验证签名失败".
fn check_request_payment(req: &PayRequest, order: &Order, key: &str) -> Result<(), DevError> {
    for (name, value) in [
        ("appId", &req.app_id),
        ("timeStamp", &req.time_stamp),
        ("nonceStr", &req.nonce_str),
        ("signType", &req.sign_type),
        ("paySign", &req.pay_sign),
    ] {
        if value.is_empty() {
            return Err(fail(&format!("调用支付JSAPI缺少参数: {name}")));
        }
    }
    if req.time_stamp.len() > 32 || !req.time_stamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("timeStamp参数格式错误"));
    }
    if req.nonce_str.len() > 32 {
        return Err(fail("nonceStr参数长度有误"));
    }
    let sign_type = wx::parse_sign_type(&req.sign_type)
        .filter(|t| *t == order.sign_type)
        .ok_or_else(|| fail("signType与统一下单的签名类型不一致"))?;
    if req.app_id != order.appid {
        return Err(fail("appId与下单的appid不一致"));
    }
    let signed = pairs([
        ("appId", req.app_id.as_str()),
        ("timeStamp", &req.time_stamp),
        ("nonceStr", &req.nonce_str),
        ("package", &req.package),
        ("signType", &req.sign_type),
    ]);
    if !wx::verify(&signed, key, sign_type, &req.pay_sign) {
        return Err(fail("支付验证签名失败"));
    }
    Ok(())
}

/// One HTTP request of a notify (`GET /sandbox/notifies`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyRecord {
    pub mch_id: String,
    pub out_trade_no: String,
    /// 1-based attempt number in the retry schedule.
    pub attempt: u32,
    /// 1-based copy within the attempt (more than 1 with the duplicate_notify fault).
    pub copy: u32,
    /// When it was sent, unix milliseconds.
    pub at_ms: i64,
    pub url: String,
    /// The XML sent.
    pub request: String,
    /// The merchant's HTTP status, if it answered.
    pub status: Option<u16>,
    /// The merchant's answer body (truncated), if it answered.
    pub response: Option<String>,
    /// Why there was no answer (connection refused, timeout...).
    pub error: Option<String>,
    /// The answer was HTTP 200 with XML return_code SUCCESS.
    pub accepted: bool,
    /// Faults applied to this request (`wrong_total_fee`, `bad_signature`).
    pub faults: Vec<String>,
}

/// `POST /sandbox/pay`.
pub async fn pay(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let mut body: PayRequest = parse_body(&body)?;
    // A Pay v3 order is paid by the v3 module (its paySign is RSA, not the v2 key's).
    let prepay_id = body.prepay_id()?.to_owned();
    if let Some(paid) = crate::v3::pay_v3_order(&sandbox, &body, &prepay_id) {
        return paid;
    }
    let fixed_faults = match body.faults.take() {
        Some(f) => Some(f),
        None => faults::from_header(&req)?,
    };
    if let Some(f) = &fixed_faults {
        f.validate().map_err(DevError::BadRequest)?;
    }
    let mut state = sandbox.state();
    let key = state
        .prepay_ids
        .get(&prepay_id)
        .cloned()
        .ok_or_else(|| DevError::UnknownPrepay(prepay_id.clone()))?;
    let order = state
        .orders
        .get_mut(&key)
        .ok_or_else(|| DevError::UnknownPrepay(prepay_id.clone()))?;
    let merchant = sandbox
        .merchant(&order.mch_id)
        .ok_or_else(|| DevError::Internal(format!("no merchant {}", order.mch_id)))?;
    check_request_payment(&body, order, merchant.key.expose())?;
    if order.prepay_issued.elapsed() >= PREPAY_LIFETIME {
        return Err(DevError::Conflict(format!(
            "prepay_id {prepay_id} has expired"
        )));
    }
    if order.time_expire.is_some_and(|t| clock::now() > t) {
        return Err(DevError::Conflict(format!(
            "order {} expired (time_expire)",
            order.out_trade_no
        )));
    }
    match order.trade_state {
        TradeState::Success => {
            return Err(DevError::Conflict(format!(
                "order {} is already paid",
                order.out_trade_no
            )));
        }
        TradeState::Closed => {
            return Err(DevError::Conflict(format!(
                "order {} is closed",
                order.out_trade_no
            )));
        }
        _ => {}
    }
    let mut deliver = false;
    match body.outcome {
        PayOutcome::Success => {
            order.trade_state = TradeState::Success;
            order.transaction_id = Some(ids::transaction_id());
            order.time_end = Some(clock::wx_time(&clock::now()));
            sandbox.shipping.paid(crate::shipping::Paid {
                appid: order.appid.clone(),
                mchid: order.mch_id.clone(),
                out_trade_no: order.out_trade_no.clone(),
                transaction_id: order.transaction_id.clone().unwrap_or_default(),
                openid: order.openid.clone(),
                amount_fen: order.total_fee,
                paid_at_ms: clock::unix_ms(),
                paid: std::time::Instant::now(),
            });
            let drop = fixed_faults
                .as_ref()
                .map_or_else(|| sandbox.current_faults().drop_notify, |f| f.drop_notify);
            order.notify_faults = fixed_faults;
            order.notify_state = if drop {
                NotifyState::Dropped
            } else {
                NotifyState::Pending
            };
            deliver = !drop;
        }
        PayOutcome::Fail => order.trade_state = TradeState::PayError,
        PayOutcome::Cancel => {}
        PayOutcome::Paying => order.trade_state = TradeState::UserPaying,
    }
    let view = OrderView::from(&*order);
    drop(state);

    tracing::info!(out_trade_no = view.out_trade_no, outcome = ?body.outcome, "sandbox payment");
    if deliver {
        let sandbox = sandbox.into_inner();
        sandbox.runtime.clone().spawn(deliver_notify(sandbox, key));
    }
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Deserialize)]
pub struct NotifiesQuery {
    pub out_trade_no: Option<String>,
    pub mch_id: Option<String>,
}

/// `GET /sandbox/notifies[?out_trade_no=][&mch_id=]`: every notify request, oldest first.
pub async fn list(sandbox: web::Data<Sandbox>, query: web::Query<NotifiesQuery>) -> HttpResponse {
    let state = sandbox.state();
    let records: Vec<&NotifyRecord> = state
        .notifies
        .iter()
        .filter(|r| {
            query
                .out_trade_no
                .as_ref()
                .is_none_or(|o| *o == r.out_trade_no)
        })
        .filter(|r| query.mch_id.as_ref().is_none_or(|m| *m == r.mch_id))
        .collect();
    HttpResponse::Ok().json(records)
}

/// The notify XML for `order`, with the faults that change its content.
///
/// As WeChat sends it: fields in name order with `sign` among them (the 支付结果通知
/// document's sample, https://pay.weixin.qq.com/wiki/doc/api/wxa/wxa_api.php?chapter=9_7, and
/// merchants' captures), `total_fee` plain and the rest in CDATA (see [`wx::to_xml`]), signed
/// with the order's sign type — and with NO `sign_type` field even when that is HMAC-SHA256,
/// although the document lists one. Merchants found this the hard way: WxJava issue 1585
/// (https://github.com/binarywang/WxJava/issues/1585, a 64-hex-digit `sign` and no
/// `sign_type` in a captured notify), easy-swoole/pay issue 38
/// (https://github.com/easy-swoole/pay/issues/38, "并没有携带签名类型sign_type的字段"),
/// WxJava 1633 and WXPay-SDK-Java issue 1: an SDK that falls back to MD5 when the field is
/// absent rejects every genuine notify of an HMAC merchant.
fn notify_xml(order: &Order, key: &str, faults: &Faults) -> (String, Vec<String>) {
    let mut applied = Vec::new();
    let mut total_fee = order.total_fee;
    if faults.notify_wrong_total_fee {
        total_fee += 1;
        applied.push("wrong_total_fee".to_owned());
    }
    let total_fee = total_fee.to_string();
    let mut out = pairs([
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", &order.appid),
        ("mch_id", &order.mch_id),
        ("nonce_str", &wx::nonce_str()),
        ("result_code", "SUCCESS"),
        ("openid", &order.openid),
        ("is_subscribe", "N"),
        ("trade_type", &order.trade_type),
        ("bank_type", "OTHERS"),
        ("total_fee", &total_fee),
        ("fee_type", "CNY"),
        ("cash_fee", &total_fee),
        (
            "transaction_id",
            order.transaction_id.as_deref().unwrap_or_default(),
        ),
        ("out_trade_no", &order.out_trade_no),
        ("time_end", order.time_end.as_deref().unwrap_or_default()),
    ]);
    if let Some(attach) = &order.attach {
        out.push(("attach".into(), attach.clone()));
    }
    let sign = if faults.notify_bad_signature {
        applied.push("bad_signature".to_owned());
        // A well-formed signature made with another key.
        wx::sign(&out, "sandbox-wrong-key-0000000000000000", order.sign_type)
    } else {
        wx::sign(&out, key, order.sign_type)
    };
    out.push(("sign".into(), sign));
    out.sort();
    (wx::to_xml(&out), applied)
}

/// Sends the notify until an answer accepts it or the schedule runs out; stops on shutdown.
pub(crate) async fn deliver_notify(sandbox: Arc<Sandbox>, key: OrderKey) {
    let shutdown = sandbox.shutdown.clone();
    tokio::select! {
        _ = deliver_attempts(&sandbox, &key) => {}
        _ = shutdown.wait() => {}
    }
}

async fn deliver_attempts(sandbox: &Sandbox, key: &OrderKey) {
    let scale = sandbox.settings.notify_time_scale;
    for attempt in 0..=RETRY_SCHEDULE_SECS.len() {
        if attempt > 0 {
            let delay = RETRY_SCHEDULE_SECS[attempt - 1] as f64 * scale;
            tokio::time::sleep(Duration::from_secs_f64(delay)).await;
        }
        let Some(order) = sandbox.state().orders.get(key).cloned() else {
            return;
        };
        // Dropped meanwhile (the console's "drop notify"): WeChat stops sending.
        if order.notify_state == NotifyState::Dropped {
            return;
        }
        let Some(merchant) = sandbox.merchant(&order.mch_id) else {
            return;
        };
        let faults = order
            .notify_faults
            .clone()
            .unwrap_or_else(|| sandbox.current_faults());
        let (xml, applied) = notify_xml(&order, merchant.key.expose(), &faults);
        let copies = (1..=faults.copies()).map(|copy| {
            let (xml, applied) = (xml.clone(), applied.clone());
            let order = &order;
            async move {
                let record = send(
                    sandbox,
                    order,
                    xml,
                    u32::try_from(attempt + 1).unwrap_or(u32::MAX),
                    copy,
                    applied,
                )
                .await;
                sandbox.state().record_notify(record.clone());
                record.accepted
            }
        });
        let accepted = futures::future::join_all(copies)
            .await
            .into_iter()
            .any(|a| a);
        let mut state = sandbox.state();
        if let Some(order) = state.orders.get_mut(key) {
            order.notify_attempts += 1;
            if accepted {
                order.notify_state = NotifyState::Accepted;
            }
        }
        if accepted {
            return;
        }
    }
    if let Some(order) = sandbox.state().orders.get_mut(key) {
        order.notify_state = NotifyState::GaveUp;
    }
    tracing::warn!(
        mch_id = key.0,
        out_trade_no = key.1,
        "notify never accepted; gave up"
    );
}

/// One HTTP request: accepted when the answer is HTTP 200 with XML `return_code` SUCCESS.
async fn send(
    sandbox: &Sandbox,
    order: &Order,
    xml: String,
    attempt: u32,
    copy: u32,
    faults: Vec<String>,
) -> NotifyRecord {
    let mut record = NotifyRecord {
        mch_id: order.mch_id.clone(),
        out_trade_no: order.out_trade_no.clone(),
        attempt,
        copy,
        at_ms: clock::unix_ms(),
        url: order.notify_url.clone(),
        request: xml.clone(),
        status: None,
        response: None,
        error: None,
        accepted: false,
        faults,
    };
    let sent = sandbox
        .http
        .post(&order.notify_url)
        .header(reqwest::header::CONTENT_TYPE, "text/xml")
        .body(xml)
        .send()
        .await;
    match sent {
        Err(e) => record.error = Some(e.to_string()),
        Ok(response) => {
            let status = response.status();
            record.status = Some(status.as_u16());
            match response.text().await {
                Err(e) => record.error = Some(e.to_string()),
                Ok(text) => {
                    record.accepted = status.as_u16() == 200
                        && wx::parse_xml(text.as_bytes()).is_ok_and(|f| {
                            f.iter().any(|(k, v)| k == "return_code" && v == "SUCCESS")
                        });
                    record.response = Some(text.chars().take(MAX_ANSWER_CHARS).collect());
                }
            }
        }
    }
    tracing::debug!(
        out_trade_no = record.out_trade_no,
        attempt,
        copy,
        status = record.status,
        accepted = record.accepted,
        "notify sent"
    );
    record
}
