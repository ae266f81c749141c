//! pay-service's integration tests, one binary: payments (and their hardening), refunds,
//! order events and webhooks, and `serve`, against the real sandbox on PostgreSQL and SQLite.

mod events;
mod helpers;
mod pay;
mod refunds;
mod serve;
