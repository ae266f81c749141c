//! End-to-end tests of the whole stack, one binary: a module per area. The harness
//! (`TestStack`, mini-program helpers) is this crate's library; the scale-out suite is a
//! binary of its own (`scale/`).

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod bad_input;
mod bills;
mod demo;
mod faults;
mod login;
mod observability;
mod pay;
mod pay_v3;
mod processes;
mod secrets;
mod security;
mod session_cache;
mod shipping;
mod user_cache;
mod user_session_cache;
mod userinfo;
mod wechat_api;
mod xpay;
mod xpay_faults;
