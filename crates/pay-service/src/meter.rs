//! The reconciler's Prometheus metrics (exported by service-kit's recorder when configured).
//! The dashboard and alert rules in `deploy/observability/` read these names.

use crate::{error::Error, orders::ReconcileReport};

/// Orders the reconciler changed or failed on, by `outcome`: `paid` (a payment whose notify
/// never came, repaired by orderquery or closeorder's ORDERPAID), `closed` (expired unpaid),
/// `error` (WeChat or the database failed; retried next pass).
pub const RECONCILER_ORDERS: &str = "wxmp_pay_reconciler_orders_total";
/// Reconciler passes by `result`: `ok` or `error` (the pass itself failed, e.g. database down).
pub const RECONCILER_PASSES: &str = "wxmp_pay_reconciler_passes_total";
/// Open (CREATED or PAYING) orders past their expiry found at the start of the last pass (at
/// most one batch): above zero for long means orders stuck open that cannot be closed.
pub const RECONCILER_OVERDUE: &str = "wxmp_pay_reconciler_overdue_orders";

/// Records one pass of the reconciler.
pub fn reconcile_pass(result: &Result<ReconcileReport, Error>) {
    match result {
        Ok(report) => {
            metrics::counter!(RECONCILER_PASSES, "result" => "ok").increment(1);
            for (outcome, n) in [
                ("paid", report.paid),
                ("closed", report.closed),
                ("error", report.errors),
            ] {
                metrics::counter!(RECONCILER_ORDERS, "outcome" => outcome).increment(n as u64);
            }
            metrics::gauge!(RECONCILER_OVERDUE).set(report.overdue as f64);
        }
        Err(_) => metrics::counter!(RECONCILER_PASSES, "result" => "error").increment(1),
    }
}
