//! `xpay_goods_deliver_notify`: WeChat's push that a 道具直购 order was paid and its goods are
//! to be delivered (retried until acknowledged; the payment's fallback is `query_order`):
//! <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/virtual-payment.html>
//!
//! The gateway verified the push (message-push signature, safe-mode decryption, appid, replay
//! window) and routed it here by event name. The push must name a virtual order of the same
//! app, payer, env, xpay product and price; then the order's one PAID transition runs (a
//! conditional UPDATE with ORDER_PAID in the outbox, in one transaction), so retries and
//! copies handled by other replicas at the same time change nothing more.

use wechat::xpay::GoodsDeliverNotify;

use super::rules::check_delivery;
use crate::{
    error::Error,
    orders::{Order, PaidOutcome, store},
    payments::Payments,
    shipping::push::{Handled, Push, record},
};

pub(crate) fn on_goods_deliver<'a>(p: &'a Payments, push: &'a Push) -> Handled<'a> {
    Box::pin(async move {
        let verdict = goods_deliver(p, push).await?;
        super::meter::push(verdict);
        Ok(verdict)
    })
}

async fn goods_deliver(payments: &Payments, push: &Push) -> Result<&'static str, Error> {
    let Some(xpay) = payments.xpay() else {
        return record(payments, push, "not_configured").await;
    };
    let Ok(notify) = serde_json::from_value::<GoodsDeliverNotify>(push.message.clone()) else {
        return record(payments, push, "malformed").await;
    };
    let Some(order) = order_of(payments, push, &notify.out_trade_no).await? else {
        return record(payments, push, "unknown_order").await;
    };
    let transaction_id = match check_delivery(&order, &notify, &xpay.settings) {
        Ok(t) => t,
        Err(why) => {
            tracing::error!(order_no = %order.order_no, %why, "virtual-payment push does not match its order; not applied");
            let verdict = record(payments, push, "mismatch").await?;
            if verdict == "mismatch" {
                super::meter::refused_mismatch(&why);
            }
            return Ok(verdict);
        }
    };
    pay(
        payments,
        push,
        &order,
        &transaction_id,
        notify.wechat_pay_info.paid_time,
        "xpay_push",
    )
    .await
}

/// The order a virtual-payment push names, if it is one of the push's app.
pub(super) async fn order_of(
    payments: &Payments,
    push: &Push,
    out_trade_no: &str,
) -> Result<Option<Order>, Error> {
    if out_trade_no.is_empty() {
        return Ok(None);
    }
    Ok(store::find_order(payments.database(), out_trade_no)
        .await?
        .filter(|o| o.app_id == push.app_id))
}

/// The order's one PAID transition for a checked push (paid at `paid_time`, or now when
/// WeChat gave none), then the push recorded with what it did.
pub(super) async fn pay(
    payments: &Payments,
    push: &Push,
    order: &Order,
    transaction_id: &str,
    paid_time: i64,
    source: &'static str,
) -> Result<&'static str, Error> {
    let now = payments.now();
    let paid_at = if paid_time > 0 { paid_time } else { now };
    let outcome = store::mark_paid(
        payments.database(),
        &order.order_no,
        transaction_id,
        paid_at,
        now,
    )
    .await?;
    crate::orders::flow::log_paid_outcome(&outcome, source);
    crate::subscribe::on_paid(payments, &outcome).await;
    let verdict = match outcome {
        PaidOutcome::Applied(_) => "handled",
        PaidOutcome::Duplicate(_) => "duplicate",
        _ => "needs_review",
    };
    record(payments, push, verdict).await
}
