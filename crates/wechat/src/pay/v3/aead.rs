//! AES-256-GCM with the APIv3 key: the `resource` of a notify and the certificates of
//! `/v3/certificates` (证书和回调报文解密,
//! <https://pay.weixin.qq.com/wiki/doc/apiv3_partner/wechatpay/wechatpay4_2.shtml>:
//! `AEAD_AES_256_GCM`, 12-byte nonce as given, `associated_data` as AAD, base64 ciphertext with
//! the 16-byte tag at its end).

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// The merchant's APIv3 key: 32 bytes set in the merchant platform. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiV3Key([u8; 32]);

/// The APIv3 key is not 32 bytes long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the APIv3 key must be 32 bytes, it is {0}")]
pub struct BadApiV3Key(pub usize);

impl ApiV3Key {
    /// Takes the key as set in the merchant platform (32 ASCII characters).
    pub fn new(key: &str) -> Result<Self, BadApiV3Key> {
        let bytes: [u8; 32] = key
            .as_bytes()
            .try_into()
            .map_err(|_| BadApiV3Key(key.len()))?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key(<redacted>)")
    }
}

/// An encrypted `resource` as WeChat sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedResource {
    /// `AEAD_AES_256_GCM`.
    pub algorithm: String,
    /// Base64 ciphertext followed by the tag.
    pub ciphertext: String,
    #[serde(default)]
    pub associated_data: String,
    /// 12 characters.
    pub nonce: String,
    /// The type of the plaintext (`transaction`, `refund`), present on notifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_type: Option<String>,
}

/// Why a resource did not decrypt. Names no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("unsupported resource algorithm {0}")]
    Algorithm(String),
    #[error("resource nonce must be 12 bytes")]
    Nonce,
    #[error("resource ciphertext is not base64")]
    Base64,
    /// Wrong key, tampered ciphertext, nonce or associated data.
    #[error("resource does not authenticate (tampered, or another APIv3 key)")]
    Tag,
}

/// Decrypts and authenticates `resource`.
pub fn decrypt(key: &ApiV3Key, resource: &EncryptedResource) -> Result<Vec<u8>, DecryptError> {
    if resource.algorithm != "AEAD_AES_256_GCM" {
        return Err(DecryptError::Algorithm(resource.algorithm.clone()));
    }
    decrypt_parts(
        key,
        &resource.nonce,
        &resource.associated_data,
        &resource.ciphertext,
    )
}

/// Decrypts base64 `ciphertext` (tag at the end) with `nonce` and `associated_data`.
pub fn decrypt_parts(
    key: &ApiV3Key,
    nonce: &str,
    associated_data: &str,
    ciphertext: &str,
) -> Result<Vec<u8>, DecryptError> {
    let nonce: [u8; NONCE_LEN] = nonce
        .as_bytes()
        .try_into()
        .map_err(|_| DecryptError::Nonce)?;
    let mut buf = B64.decode(ciphertext).map_err(|_| DecryptError::Base64)?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key.0).expect("a 32-byte key fits AES-256-GCM"),
    );
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data.as_bytes()),
            &mut buf,
        )
        .map_err(|_| DecryptError::Tag)?;
    Ok(plain.to_vec())
}
