//! `HandleMessagePush`: the message-push events pay-service owns, dispatched by name through
//! one table ([`HANDLERS`]); the next capability (virtual payment's `xpay_*` events) adds rows.
//!
//! The gateway verified the push (signature, timestamp window, appid) before routing it here.
//! Each push is recorded once per dedup key in `message_pushes`, in the transaction of the
//! change it causes, so WeChat's retries and replays change nothing, across replicas.
//!
//! Events of the order-shipping document
//! (<https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/order-shipping/order-shipping.html>):
//! `trade_manage_order_settlement` (receipt confirmed, then settled), `trade_manage_remind_access_api`
//! (WeChat reminds the developer to use the shipping API), `trade_manage_remind_shipping`
//! (an order waits for its shipping), `wxa_trade_controlled` (the app came under trade management).

use std::{future::Future, pin::Pin};

use super::{
    rules::{self, Settlement},
    store::{self, Applied, NewPush},
};
use crate::{error::Error, orders::Order, payments::Payments};

/// A verified push handed to a handler.
#[derive(Clone, Debug)]
pub struct Push {
    pub app_id: String,
    pub event: String,
    pub message: serde_json::Value,
    pub dedup_key: String,
}

pub(crate) type Handled<'a> =
    Pin<Box<dyn Future<Output = Result<&'static str, Error>> + Send + 'a>>;
type Handler = for<'a> fn(&'a Payments, &'a Push) -> Handled<'a>;

/// Event name → handler. Add a row for a new event.
pub const HANDLERS: &[(&str, Handler)] = &[
    ("trade_manage_order_settlement", on_settlement),
    ("trade_manage_remind_access_api", on_notice),
    ("trade_manage_remind_shipping", on_remind_shipping),
    ("wxa_trade_controlled", on_notice),
    // Virtual payment (issue 26): a 道具直购 order paid.
    (
        wechat::xpay::EVENT_GOODS_DELIVER,
        crate::xpay::push::on_goods_deliver,
    ),
    // Virtual payment, coin mode: a coin purchase paid.
    (
        wechat::xpay::coins::EVENT_COIN_PAY,
        crate::xpay::coins::on_coin_pay,
    ),
    // Virtual payment: the result of a virtual order's refund (refund_order).
    (
        wechat::xpay::EVENT_REFUND,
        crate::xpay::refund::on_refund_notify,
    ),
];

fn on_settlement<'a>(p: &'a Payments, push: &'a Push) -> Handled<'a> {
    Box::pin(settlement(p, push))
}

fn on_remind_shipping<'a>(p: &'a Payments, push: &'a Push) -> Handled<'a> {
    Box::pin(remind_shipping(p, push))
}

/// An event that changes no state: recorded once.
fn on_notice<'a>(p: &'a Payments, push: &'a Push) -> Handled<'a> {
    Box::pin(record(p, push, "recorded"))
}

/// The handler of `event`, if pay-service owns it.
pub fn handler(event: &str) -> Option<Handler> {
    HANDLERS
        .iter()
        .find(|(name, _)| *name == event)
        .map(|(_, h)| *h)
}

impl Payments {
    /// Dispatches a verified push by its event name. The verdict: `handled`, `duplicate`,
    /// `recorded`, `unknown_order`, `unknown_event`.
    #[tracing::instrument(skip_all, fields(event = %event))]
    pub async fn handle_message_push(
        &self,
        app_id: &str,
        event: &str,
        message_json: &str,
        dedup_key: &str,
    ) -> Result<&'static str, Error> {
        if dedup_key.is_empty() {
            return Err(Error::MissingParameter("dedup_key"));
        }
        let message: serde_json::Value = serde_json::from_str(message_json)
            .map_err(|_| Error::InvalidArgument("message_json is not JSON".into()))?;
        let push = Push {
            app_id: app_id.to_owned(),
            event: event.to_owned(),
            message,
            dedup_key: dedup_key.to_owned(),
        };
        let verdict = match handler(event) {
            Some(h) => h(self, &push).await?,
            None => record(self, &push, "unknown_event").await?,
        };
        metrics::counter!("wxmp_pay_message_pushes_total", "event" => event_label(event), "verdict" => verdict)
            .increment(1);
        tracing::info!(verdict, "message push");
        Ok(verdict)
    }
}

/// Bounded label values: the known events by name, the rest as "other".
fn event_label(event: &str) -> &'static str {
    HANDLERS
        .iter()
        .find(|(name, _)| *name == event)
        .map_or("other", |(name, _)| *name)
}

fn row(payments: &Payments, push: &Push, verdict: &str) -> NewPush {
    NewPush {
        dedup_key: push.dedup_key.clone(),
        app_id: push.app_id.clone(),
        event: push.event.chars().take(64).collect(),
        message: push.message.to_string(),
        verdict: verdict.to_owned(),
        received_at: payments.now(),
    }
}

/// Records the push once; `duplicate` when seen before.
pub(crate) async fn record(
    payments: &Payments,
    push: &Push,
    verdict: &'static str,
) -> Result<&'static str, Error> {
    Ok(
        if store::record_push(payments.database(), &row(payments, push, verdict)).await? {
            verdict
        } else {
            "duplicate"
        },
    )
}

/// The order a push names: `merchant_trade_no` is our order_no; else by `transaction_id`.
async fn order_of(payments: &Payments, push: &Push) -> Result<Option<Order>, Error> {
    let trade_no = rules::str_field(&push.message, "merchant_trade_no");
    let found = if trade_no.is_empty() {
        None
    } else {
        crate::orders::store::find_order(payments.database(), trade_no).await?
    };
    let transaction_id = rules::str_field(&push.message, "transaction_id");
    Ok(found.filter(|o| transaction_id.is_empty() || o.transaction_id == transaction_id))
}

async fn remind_shipping(payments: &Payments, push: &Push) -> Result<&'static str, Error> {
    if let Some(order) = order_of(payments, push).await? {
        tracing::warn!(order_no = %order.order_no, "WeChat reminds: this order waits for its shipping");
    }
    record(payments, push, "recorded").await
}

async fn settlement(payments: &Payments, push: &Push) -> Result<&'static str, Error> {
    let Some(order) = order_of(payments, push).await? else {
        return record(payments, push, "unknown_order").await;
    };
    let Some(settlement) = rules::settlement_of(&push.message) else {
        return record(payments, push, "recorded").await;
    };
    let verdict = match settlement {
        Settlement::Received { .. } => "received",
        Settlement::Settled { .. } => "settled",
    };
    let applied = store::apply_settlement(
        payments.database(),
        &row(payments, push, verdict),
        &order,
        settlement,
        payments.now(),
    )
    .await?;
    Ok(match applied {
        Applied::Duplicate => "duplicate",
        Applied::Moved => "handled",
        Applied::AlreadyThere => "recorded",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_event_once() {
        let mut names: Vec<&str> = HANDLERS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), HANDLERS.len());
        assert!(handler("trade_manage_order_settlement").is_some());
        assert!(handler("no_such_event").is_none());
        assert_eq!(event_label("no_such_event"), "other");
    }
}
