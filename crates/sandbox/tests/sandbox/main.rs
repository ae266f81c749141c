//! The sandbox's integration tests, one binary: each WeChat surface it plays (login, user
//! data, Pay v2 and v3, notifies), its console, `serve`, and the wechat client against it.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod client;
mod console;
mod helpers;
mod login;
mod notify;
mod pay;
mod pay_v3;
mod serve;
mod user_data;
mod xpay;
mod xpay_coins;
mod xpay_push;
