//! The wechat crate's integration tests, one binary: login and Pay over HTTP against a
//! canned WeChat, user-data crypto, notifies, refund notifies, Pay v3, property tests.

mod auth_http;
mod crypto;
mod helpers;
mod notify;
mod pay_http;
mod pay_props;
mod pay_v3;
mod refund_notify;
