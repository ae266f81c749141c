//! Virtual payment's Prometheus metrics (the dashboard and the alert rules in
//! `deploy/observability/` read these names; the README's metrics table lists them).
//!
//! The delivery push is what pays a virtual order, so its outcomes are counted apart from the
//! generic `wxmp_pay_message_pushes_total`: a push that is correctly signed (the gateway
//! checked that) but does not match its order is a user who paid and got nothing, unless
//! someone holds the push Token and AESKey; either way a human must look.

use super::rules::DeliveryMismatch;
use crate::{error::Error, payments::Payments};

/// Delivery pushes (`xpay_goods_deliver_notify`) handled, by `outcome`: `applied` (this push
/// paid the order), `duplicate` (a retry, a copy, or late after `query_order` repaired it),
/// `refused` (by `reason`: `unknown_order`, `malformed`, `not_configured`, `not_virtual`,
/// `openid`, `env`, `product`, `amount`), `needs_review` (paid after the order was closed).
pub const PUSHES: &str = "wxmp_pay_xpay_pushes_total";
/// The reconciler's `query_order` of PAYING virtual orders, by `result`: `repaired` (paid at
/// WeChat, its push late or lost: made PAID here), `duplicate` (paid meanwhile), `unpaid`,
/// `mismatch` (WeChat says paid, but not this order's payer or amount: not delivered),
/// `error` (WeChat or auth-service failed; asked again later).
pub const QUERY_ORDER: &str = "wxmp_pay_xpay_query_order_total";
/// Virtual orders whose payment sheet was opened longer ago than `PAY_RECONCILE_AFTER_SECS`
/// and that are still PAYING (neither a push nor `query_order` delivered them), at the last
/// reconciler pass. Mostly abandoned sheets; a rise with `query_order` errors is not.
pub const WAITING: &str = "wxmp_pay_xpay_waiting_orders";

/// Counts a delivery push by the verdict its handler recorded; a `mismatch` is counted
/// with its reason by [`refused_mismatch`] instead.
pub(crate) fn push(verdict: &str) {
    let (outcome, reason) = match verdict {
        "handled" => ("applied", ""),
        "duplicate" => ("duplicate", ""),
        "mismatch" => return,
        "unknown_order" => ("refused", "unknown_order"),
        "malformed" => ("refused", "malformed"),
        "not_configured" => ("refused", "not_configured"),
        _ => ("needs_review", ""),
    };
    metrics::counter!(PUSHES, "outcome" => outcome, "reason" => reason).increment(1);
}

/// Counts a delivery push refused for not matching its order.
pub(crate) fn refused_mismatch(why: &DeliveryMismatch) {
    metrics::counter!(PUSHES, "outcome" => "refused", "reason" => mismatch_label(why)).increment(1);
}

fn mismatch_label(why: &DeliveryMismatch) -> &'static str {
    match why {
        DeliveryMismatch::NotVirtual => "not_virtual",
        DeliveryMismatch::Openid => "openid",
        DeliveryMismatch::Env => "env",
        DeliveryMismatch::Product => "product",
        DeliveryMismatch::Amount => "amount",
    }
}

/// Counts one `query_order` of the reconciler.
pub(crate) fn query_order(result: &'static str) {
    metrics::counter!(QUERY_ORDER, "result" => result).increment(1);
}

/// Exports every series at 0 once virtual payment is configured, so the alert has series to
/// read before the first push.
pub(crate) fn register() {
    for (outcome, reason) in [("applied", ""), ("duplicate", ""), ("refused", "amount")] {
        metrics::counter!(PUSHES, "outcome" => outcome, "reason" => reason).increment(0);
    }
    for result in ["repaired", "mismatch", "error"] {
        metrics::counter!(QUERY_ORDER, "result" => result).increment(0);
    }
    metrics::gauge!(WAITING).set(0.0);
}

impl Payments {
    /// Sets [`WAITING`] (after each reconciler pass; nothing without virtual payment).
    pub(crate) async fn export_xpay_waiting(&self) -> Result<(), Error> {
        if self.xpay().is_none() {
            return Ok(());
        }
        let now = self.now();
        let before = now - self.inner.settings.reconcile_after_secs;
        let n = crate::orders::store::count_xpay_paying(self.database(), before, now).await?;
        metrics::gauge!(WAITING).set(n as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mismatch_has_its_own_bounded_reason() {
        let all = [
            DeliveryMismatch::NotVirtual,
            DeliveryMismatch::Openid,
            DeliveryMismatch::Env,
            DeliveryMismatch::Product,
            DeliveryMismatch::Amount,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(mismatch_label).collect();
        assert_eq!(labels.len(), all.len());
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
