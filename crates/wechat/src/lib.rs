//! Everything in wxmp that speaks WeChat.
//!
//! * [`auth`]: `code2Session` and `access_token` over HTTPS,
//! * [`openapi`]: `stable_token` and the server APIs that take an access_token (phone number
//!   by code, subscribe messages),
//! * [`crypto`]: the mini program's encrypted user data (AES-128-CBC, watermark, `rawData` signature),
//! * [`pay`]: WeChat Pay v2 (signatures, the flat XML codec, `unifiedorder`, `orderquery`,
//!   `closeorder`, payment notifications, `wx.requestPayment` parameters, and refunds: the
//!   mutual-TLS `secapi/pay/refund`, `refundquery` and the encrypted refund notify), and Pay v3 in
//!   [`pay::v3`] (RSA-SHA256 signatures both ways, AES-256-GCM notifies, public-key and
//!   certificate mode).
//!
//! * [`push`]: the mini program's message push (GET check, plaintext and safe mode, JSON and
//!   XML),
//! * [`shipping`]: the order shipping APIs (`upload_shipping_info` and friends),
//! * [`xpay`]: virtual payment (`wx.requestVirtualPayment` parameters, `query_order`...).
//!
//! Pure functions where possible; the HTTP calls go through one [`WechatClient`] whose base URLs
//! come from [`WechatConfig`], so the same code talks to WeChat or to the wxmp sandbox.
//! Secrets (app secret, `session_key`, pay key, access token) never appear in `Debug` output or
//! error messages.
//!
//! ```
//! use wechat::{WechatClient, WechatConfig};
//!
//! let config = WechatConfig {
//!     api_base: "http://127.0.0.1:9000".into(),
//!     pay_base: "http://127.0.0.1:9000".into(),
//!     ..WechatConfig::default()
//! };
//! let client = WechatClient::new(config).expect("client");
//! assert_eq!(client.config().api_base, "http://127.0.0.1:9000");
//! ```

pub mod auth;
pub mod client;
pub mod config;
pub mod crypto;
mod http;
pub mod openapi;
pub mod pay;
pub mod push;
pub mod shipping;
pub mod xpay;

pub use auth::{AccessToken, ApiError, Code2SessionError, Session};
pub use client::{ClientBuildError, MerchantCert, WechatClient};
pub use config::WechatConfig;
pub use crypto::DecryptError;
pub use openapi::{PhoneInfo, SubscribeMessage};
pub use pay::{PayConfig, PayError, SignType};
