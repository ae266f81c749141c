//! Notifies on v3: a JSON envelope signed like a response, its `resource` encrypted with the
//! APIv3 key (支付通知, <https://pay.weixin.qq.com/docs/partner/products/notification/decryption.html>).
//! The merchant answers `200`/`204` to accept, or a 4xx/5xx with `{"code":"FAIL","message":…}`
//! to have WeChat retry.

use serde::{Deserialize, Serialize};

use crate::pay::v3::aead::{self, ApiV3Key, DecryptError, EncryptedResource};
use crate::pay::v3::verify::{PlatformKeys, SignatureHeaders, VerifyError};

/// The outer, unencrypted part of a notify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    #[serde(default)]
    pub create_time: String,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, `REFUND.ABNORMAL`, `REFUND.CLOSED`.
    pub event_type: String,
    #[serde(default)]
    pub resource_type: String,
    #[serde(default)]
    pub summary: String,
    pub resource: EncryptedResource,
}

/// An authenticated, decrypted notify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedNotify {
    pub notification: Notification,
    /// The decrypted resource (JSON of a transaction or a refund).
    pub plaintext: Vec<u8>,
}

/// Why a notify was refused. Names the failed check, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("notify {0}")]
    Verify(#[from] VerifyError),
    #[error("notify resource: {0}")]
    Decrypt(#[from] DecryptError),
    #[error("notify JSON: {0}")]
    Json(String),
    #[error("notify {0} is not ours")]
    Mismatch(&'static str),
    #[error("WeChat Pay keys unavailable: {0}")]
    Keys(String),
}

/// Verifies with `platform` at `now`, then decrypts (no certificate download: see
/// [`V3Client::open_notify`](crate::pay::v3::V3Client::open_notify) for that).
pub fn open(
    platform: &PlatformKeys,
    apiv3_key: &ApiV3Key,
    headers: &SignatureHeaders,
    body: &[u8],
    now: i64,
) -> Result<OpenedNotify, NotifyError> {
    platform.verify(headers, body, now)?;
    decrypt_verified(apiv3_key, body)
}

/// Parses and decrypts a notify whose signature has been verified.
pub fn decrypt_verified(apiv3_key: &ApiV3Key, body: &[u8]) -> Result<OpenedNotify, NotifyError> {
    let notification: Notification =
        serde_json::from_slice(body).map_err(|e| NotifyError::Json(e.to_string()))?;
    let plaintext = aead::decrypt(apiv3_key, &notification.resource)?;
    Ok(OpenedNotify {
        notification,
        plaintext,
    })
}

/// The body of a refusal: `{"code":"FAIL","message":…}`.
pub fn reply_fail(message: &str) -> String {
    serde_json::json!({ "code": "FAIL", "message": message }).to_string()
}
