//! Orders as the sandbox (WeChat) sees them, and `GET /sandbox/orders[/{out_trade_no}]`.

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::{
    clock,
    dev_error::DevError,
    faults::Faults,
    state::Sandbox,
    wx::{Pairs, SignType},
};

/// (mch_id, out_trade_no): out_trade_no is unique per merchant.
pub type OrderKey = (String, String);

/// A prepay_id is valid for two hours; an identical unifiedorder after that gets a new one.
pub const PREPAY_LIFETIME: Duration = Duration::from_secs(2 * 3600);

/// orderquery's trade_state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TradeState {
    #[serde(rename = "NOTPAY")]
    NotPay,
    #[serde(rename = "USERPAYING")]
    UserPaying,
    #[serde(rename = "SUCCESS")]
    Success,
    #[serde(rename = "CLOSED")]
    Closed,
    #[serde(rename = "PAYERROR")]
    PayError,
}

impl TradeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotPay => "NOTPAY",
            Self::UserPaying => "USERPAYING",
            Self::Success => "SUCCESS",
            Self::Closed => "CLOSED",
            Self::PayError => "PAYERROR",
        }
    }

    /// trade_state_desc as WeChat words it.
    pub fn desc(self) -> &'static str {
        match self {
            Self::NotPay => "订单未支付",
            Self::UserPaying => "用户支付中",
            Self::Success => "支付成功",
            Self::Closed => "订单已关闭",
            Self::PayError => "支付失败(其他原因，如银行返回失败)",
        }
    }
}

/// Where the order's payment notify stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyState {
    /// Not paid yet: nothing to notify.
    None,
    /// Being delivered (or waiting for the next retry).
    Pending,
    /// A merchant answer had return_code SUCCESS.
    Accepted,
    /// The drop_notify fault: paid, never notified.
    Dropped,
    /// Every attempt of WeChat's schedule failed.
    GaveUp,
}

#[derive(Clone, Debug)]
pub struct Order {
    pub appid: String,
    pub mch_id: String,
    pub out_trade_no: String,
    pub body: String,
    pub attach: Option<String>,
    pub total_fee: u64,
    pub openid: String,
    pub notify_url: String,
    pub trade_type: String,
    /// After this (Beijing time) the order can no longer be paid.
    pub time_expire: Option<DateTime<FixedOffset>>,
    pub sign_type: SignType,
    /// The unifiedorder parameters minus nonce_str/sign/sign_type: a repeat must match them.
    pub params: Pairs,
    pub prepay_id: String,
    pub prepay_issued: Instant,
    pub trade_state: TradeState,
    pub transaction_id: Option<String>,
    pub time_end: Option<String>,
    pub created_at_ms: i64,
    pub notify_state: NotifyState,
    pub notify_attempts: u32,
    /// Notify faults fixed for this order by `/sandbox/pay` (else the global ones apply).
    pub notify_faults: Option<Faults>,
    /// Authenticated unifiedorder calls naming this out_trade_no (the first included), so
    /// tests can count what a merchant asked WeChat.
    pub unifiedorder_calls: u32,
}

/// The sandbox's view of an order (`GET /sandbox/orders/{out_trade_no}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub appid: String,
    pub mch_id: String,
    pub out_trade_no: String,
    pub prepay_id: String,
    pub body: String,
    pub attach: Option<String>,
    pub total_fee: u64,
    pub openid: String,
    pub notify_url: String,
    pub trade_type: String,
    /// yyyyMMddHHmmss, when the request set one.
    pub time_expire: Option<String>,
    pub sign_type: String,
    pub trade_state: TradeState,
    pub trade_state_desc: String,
    pub transaction_id: Option<String>,
    pub time_end: Option<String>,
    pub created_at_ms: i64,
    pub notify_state: NotifyState,
    pub notify_attempts: u32,
    /// Authenticated unifiedorder calls naming this out_trade_no, answered or refused.
    #[serde(default)]
    pub unifiedorder_calls: u32,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        Self {
            appid: o.appid.clone(),
            mch_id: o.mch_id.clone(),
            out_trade_no: o.out_trade_no.clone(),
            prepay_id: o.prepay_id.clone(),
            body: o.body.clone(),
            attach: o.attach.clone(),
            total_fee: o.total_fee,
            openid: o.openid.clone(),
            notify_url: o.notify_url.clone(),
            trade_type: o.trade_type.clone(),
            time_expire: o.time_expire.as_ref().map(clock::wx_time),
            sign_type: o.sign_type.as_str().to_owned(),
            trade_state: o.trade_state,
            trade_state_desc: o.trade_state.desc().to_owned(),
            transaction_id: o.transaction_id.clone(),
            time_end: o.time_end.clone(),
            created_at_ms: o.created_at_ms,
            notify_state: o.notify_state,
            notify_attempts: o.notify_attempts,
            unifiedorder_calls: o.unifiedorder_calls,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct OrdersQuery {
    pub mch_id: Option<String>,
    pub trade_state: Option<TradeState>,
}

/// `GET /sandbox/orders/{out_trade_no}[?mch_id=]`.
pub async fn get(
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    query: web::Query<OrdersQuery>,
) -> Result<HttpResponse, DevError> {
    let out_trade_no = path.into_inner();
    let state = sandbox.state();
    let order = state
        .orders
        .values()
        .find(|o| {
            o.out_trade_no == out_trade_no && query.mch_id.as_ref().is_none_or(|m| *m == o.mch_id)
        })
        .ok_or(DevError::UnknownOrder(out_trade_no))?;
    Ok(HttpResponse::Ok().json(OrderView::from(order)))
}

/// `GET /sandbox/orders[?trade_state=SUCCESS][&mch_id=]`: every order, oldest first.
pub async fn list(sandbox: web::Data<Sandbox>, query: web::Query<OrdersQuery>) -> HttpResponse {
    let state = sandbox.state();
    let mut orders: Vec<OrderView> = state
        .orders
        .values()
        .filter(|o| query.mch_id.as_ref().is_none_or(|m| *m == o.mch_id))
        .filter(|o| query.trade_state.is_none_or(|s| s == o.trade_state))
        .map(OrderView::from)
        .collect();
    drop(state);
    orders.sort_by(|a, b| {
        (a.created_at_ms, &a.out_trade_no).cmp(&(b.created_at_ms, &b.out_trade_no))
    });
    HttpResponse::Ok().json(orders)
}
