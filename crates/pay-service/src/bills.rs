//! Bills (issue 27): WeChat's daily statement of what it charged and refunded, matched line by
//! line against the ledger. [`rules`] (what a line means against orders and refunds: pure,
//! unit-tested), [`flow`] (the daily job and the on-demand run, resumable per day), [`store`]
//! (`bill_days`, `bill_lines`, `bill_mismatches`), [`meter`] (metrics).
//!
//! Each difference is one `bill_mismatches` row (unique per day, kind and key: a re-run writes
//! nothing twice), counted in `wxmp_pay_bill_mismatches_total{kind}` and published to the
//! outbox as `BILL_MISMATCH` in the same transaction. A refund WeChat made that wxmp did not
//! (the merchant platform, another system) is also recorded against its order as a refund
//! whose reason names the bill it came from ([`store::record_outside_refund`]).

pub mod flow;
pub mod meter;
pub mod rules;
pub mod store;

pub use flow::{BillReport, BillsSettings, RunOutcome, parse_date};
pub use rules::{Mismatch, MismatchKind};
