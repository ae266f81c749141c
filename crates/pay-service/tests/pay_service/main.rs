//! pay-service's integration tests, one binary: payments (and their hardening), refunds,
//! order events and webhooks, Pay v3's move to the public key (`migration`), and `serve`,
//! against the real sandbox on PostgreSQL and SQLite.

mod events;
mod helpers;
mod migration;
mod pay;
mod refunds;
mod serve;
