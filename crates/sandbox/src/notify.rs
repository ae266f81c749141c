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
    wx::{self, SignType},
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

/// Body of `POST /sandbox/pay`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PayRequest {
    pub prepay_id: String,
    pub outcome: PayOutcome,
    /// Notify faults fixed for this order (else the global faults are read at each attempt).
    pub faults: Option<Faults>,
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
    let body: PayRequest = parse_body(&body)?;
    if let Some(paid) = crate::v3::pay_v3_order(&sandbox, &body.prepay_id, body.outcome) {
        return paid;
    }
    let fixed_faults = match body.faults {
        Some(f) => Some(f),
        None => faults::from_header(&req)?,
    };
    if let Some(f) = &fixed_faults {
        f.validate().map_err(DevError::BadRequest)?;
    }
    let mut state = sandbox.state();
    let key = state
        .prepay_ids
        .get(&body.prepay_id)
        .cloned()
        .ok_or_else(|| DevError::UnknownPrepay(body.prepay_id.clone()))?;
    let order = state
        .orders
        .get_mut(&key)
        .ok_or_else(|| DevError::UnknownPrepay(body.prepay_id.clone()))?;
    if order.prepay_issued.elapsed() >= PREPAY_LIFETIME {
        return Err(DevError::Conflict(format!(
            "prepay_id {} has expired",
            body.prepay_id
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
    ]);
    if order.sign_type != SignType::Md5 {
        out.push(("sign_type".into(), order.sign_type.as_str().into()));
    }
    out.extend(pairs([
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
    ]));
    if let Some(attach) = &order.attach {
        out.push(("attach".into(), attach.clone()));
    }
    out.push((
        "time_end".into(),
        order.time_end.clone().unwrap_or_default(),
    ));
    let sign = if faults.notify_bad_signature {
        applied.push("bad_signature".to_owned());
        // A well-formed signature made with another key.
        wx::sign(&out, "sandbox-wrong-key-0000000000000000", order.sign_type)
    } else {
        wx::sign(&out, key, order.sign_type)
    };
    out.insert(5, ("sign".into(), sign));
    (wx::to_xml(&out), applied)
}

/// Sends the notify until an answer accepts it or the schedule runs out; stops on shutdown.
async fn deliver_notify(sandbox: Arc<Sandbox>, key: OrderKey) {
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
                let record = send(sandbox, order, xml, attempt as u32 + 1, copy, applied).await;
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
