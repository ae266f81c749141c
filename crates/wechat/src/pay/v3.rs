//! WeChat Pay API v3: JSON over HTTPS, RSA-SHA256 signatures both ways, AES-256-GCM for
//! notifies and certificates.
//!
//! * [`keys`]: the merchant private key (PKCS#8 PEM) and WeChat Pay's public keys,
//! * [`sign`](mod@sign): the signed strings and the `Authorization` header,
//! * [`verify`]: `Wechatpay-*` header checks with public keys, certificates or both (the migration),
//! * [`refresh`]: one certificate download at a time, backing off while it fails,
//! * [`aead`]: AES-256-GCM with the APIv3 key,
//! * [`client`]: JSAPI, query, close, refund, refund query and `/v3/certificates`,
//! * [`notify`]: opening a notify, [`jsapi`]: `wx.requestPayment` with `signType` RSA,
//! * [`model`]: the JSON bodies, [`error`]: v3 errors and their codes.

pub mod aead;
pub mod client;
pub mod error;
pub mod jsapi;
pub mod keys;
pub mod model;
pub mod notify;
pub mod refresh;
pub mod sign;
pub mod verify;

pub use aead::{ApiV3Key, BadApiV3Key, DecryptError, EncryptedResource};
pub use client::{Merchant, V3Client};
pub use error::V3Error;
pub use keys::{KeyError, MerchantKey, PublicKey};
pub use model::{
    AbnormalRefundRequest, JsapiOrder, OrderAmount, Payer, Refund, RefundAmountRequest,
    RefundNotice, RefundNoticeAmount, RefundRequest, Transaction,
};
pub use notify::{Notification, NotifyError, OpenedNotify};
pub use verify::{PlatformCertificate, PlatformKeys, SignatureHeaders, VerifyError};
