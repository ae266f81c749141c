//! pay-service's integration tests, one binary: payments (and their hardening), refunds,
//! order events and webhooks, Pay v3's move to the public key (`migration`), and `serve`,
//! against the real sandbox on PostgreSQL and SQLite.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod bills;
mod catch_up;
mod events;
mod helpers;
mod migration;
mod pay;
mod refunds;
mod relay;
mod serve;
mod shipping;
mod xpay;
mod xpay_coins;
mod xpay_refunds;
