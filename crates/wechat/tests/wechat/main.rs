//! The wechat crate's integration tests, one binary: login and Pay over HTTP against a
//! canned WeChat, user-data crypto, notifies, refund notifies, Pay v3, property tests.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod auth_http;
mod bills;
mod crypto;
mod helpers;
mod notify;
mod pay_http;
mod pay_props;
mod pay_v3;
mod push;
mod refund_notify;
mod shipping_http;
mod xpay;
mod xpay_coins;
