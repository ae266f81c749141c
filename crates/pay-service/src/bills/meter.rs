//! The bill job's Prometheus metrics; `deploy/observability/alerts.yml` reads these names.

use crate::{bills::flow::RunOutcome, bills::rules::Mismatch, error::Error};

/// Differences recorded between WeChat's bill and the ledger, by `kind` (PAYMENT_AMOUNT,
/// PAYMENT_MISSING, REFUND_OUTSIDE, …): counted once, when first recorded.
pub const BILL_MISMATCHES: &str = "wxmp_pay_bill_mismatches_total";
/// Runs of a bill day, by `api` and `result`: `done`, `retry` (no bill yet, bad hash, WeChat
/// unreachable), `skipped` (another replica holds it, or nothing due), `error`.
pub const BILL_RUNS: &str = "wxmp_pay_bill_runs_total";

/// Registers every series at zero, so that the first difference of a kind is an increase
/// Prometheus sees (a counter born at 1 shows no `increase()`), and the series exist before the
/// first run.
pub fn init(apis: &[&'static str]) {
    for kind in crate::bills::rules::MismatchKind::ALL {
        metrics::counter!(BILL_MISMATCHES, "kind" => kind.as_str()).increment(0);
    }
    for api in apis {
        for result in ["done", "retry", "skipped", "error"] {
            metrics::counter!(BILL_RUNS, "api" => *api, "result" => result).increment(0);
        }
    }
}

pub fn mismatches(new: &[Mismatch]) {
    for m in new {
        metrics::counter!(BILL_MISMATCHES, "kind" => m.kind.as_str()).increment(1);
    }
}

pub fn run(api: &'static str, result: &Result<RunOutcome, Error>) {
    let result = match result {
        Ok(RunOutcome::Done { .. }) => "done",
        Ok(RunOutcome::RetryAt { .. }) => "retry",
        Ok(RunOutcome::Skipped) => "skipped",
        Err(_) => "error",
    };
    metrics::counter!(BILL_RUNS, "api" => api, "result" => result).increment(1);
}
