//! WeChat Pay v2 (the XML API at `api.mch.weixin.qq.com`).
//!
//! * [`sign`](mod@sign): the MD5 / HMAC-SHA256 parameter signature,
//! * [`xml`]: the flat `<xml><field>…</field></xml>` codec,
//! * [`api`]: `unifiedorder`, `orderquery`, `closeorder` on [`WechatClient`](crate::WechatClient),
//! * [`notify`]: verifying payment notifications and answering them,
//! * [`refund`]: refunds (mutual TLS), refund queries and the AES-256-ECB refund notify,
//! * [`jsapi`]: the parameters of `wx.requestPayment`,
//! * [`time`]: the `yyyyMMddHHmmss` China-time timestamps,
//! * [`bills`]: the daily trade and fund flow bills (v2 and v3 downloads, the backquoted CSV),
//! * [`v3`]: WeChat Pay API v3 (JSON, RSA signatures, AES-256-GCM), beside v2.

pub mod api;
pub mod bills;
pub mod jsapi;
pub mod notify;
pub mod refund;
pub mod sign;
pub mod time;
pub mod v3;
pub mod xml;

pub use api::{
    OrderQueryResponse, PayConfig, PayError, TradeState, UnifiedOrderRequest, UnifiedOrderResponse,
};
pub use jsapi::{RequestPaymentParams, nonce_str, request_payment_params};
pub use notify::{NotifyError, PayNotify, notify_reply_fail, notify_reply_success, verify_notify};
pub use refund::{
    RefundNotify, RefundNotifyError, RefundQueryBy, RefundQueryItem, RefundQueryResponse,
    RefundRequest, RefundResponse, RefundStatus, decrypt_refund_notify,
};
pub use sign::{SignType, UnsupportedSignType, sign, verify};
pub use xml::{Fields, MAX_XML_BYTES, XmlError};
