//! The mini program's encrypted user data.
//!
//! `wx.getUserInfo`, `getPhoneNumber` (legacy) and friends hand the mini program an
//! `encryptedData` + `iv` pair: AES-128-CBC with PKCS#7 padding under the user's current
//! `session_key`, all three base64-encoded. The plaintext is JSON carrying a `watermark` whose
//! `appid` must be ours, otherwise the data was produced for another app.
//!
//! ```
//! use wechat::crypto;
//!
//! let key = "tiihtNczf5v6AKRyjwEUhQ==";
//! let iv = "r7BXXKkLb8qrSNn05n0qiA==";
//! let data = crypto::encrypt(key, iv, br#"{"x":1,"watermark":{"appid":"wx1","timestamp":1}}"#).unwrap();
//! let json = crypto::decrypt_user_data(key, &data, iv, "wx1").unwrap();
//! assert_eq!(json["x"], 1);
//! assert_eq!(
//!     crypto::decrypt_user_data(key, &data, iv, "wx2"),
//!     Err(crypto::DecryptError::WatermarkMismatch)
//! );
//! ```

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha1::{Digest as _, Sha1};
use subtle::ConstantTimeEq as _;

type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;
type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;

const BLOCK: usize = 16;

/// Why encrypted user data was rejected. Messages name no key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum DecryptError {
    /// `session_key`, `encryptedData` or `iv` is not standard padded base64.
    #[error("invalid base64")]
    BadBase64,
    /// The `session_key` does not decode to 16 bytes.
    #[error("session_key must decode to 16 bytes")]
    BadKeyLength,
    /// The `iv` does not decode to 16 bytes.
    #[error("iv must decode to 16 bytes")]
    BadIvLength,
    /// Not a whole number of blocks, or invalid PKCS#7 padding: usually a wrong (stale) `session_key`.
    #[error(
        "bad padding: the data is corrupt or the session_key is not the one it was encrypted with"
    )]
    BadPadding,
    /// The plaintext is not the expected JSON.
    #[error("decrypted data is not valid JSON")]
    BadJson,
    /// `watermark.appid` is missing or differs from our appid.
    #[error("watermark appid does not match")]
    WatermarkMismatch,
    /// The `rawData` signature does not match.
    #[error("rawData signature does not match")]
    SignatureMismatch,
}

fn decode_b64(s: &str) -> Result<Vec<u8>, DecryptError> {
    STANDARD.decode(s).map_err(|_| DecryptError::BadBase64)
}

fn key_and_iv(session_key_b64: &str, iv_b64: &str) -> Result<([u8; 16], [u8; 16]), DecryptError> {
    let key: [u8; 16] = decode_b64(session_key_b64)?
        .try_into()
        .map_err(|_| DecryptError::BadKeyLength)?;
    let iv: [u8; 16] = decode_b64(iv_b64)?
        .try_into()
        .map_err(|_| DecryptError::BadIvLength)?;
    Ok((key, iv))
}

/// Decrypts `encryptedData` (AES-128-CBC, strict PKCS#7) and returns the plaintext bytes.
///
/// Use [`decrypt_user_data`] unless you check the watermark yourself.
pub fn decrypt(
    session_key_b64: &str,
    encrypted_data_b64: &str,
    iv_b64: &str,
) -> Result<Vec<u8>, DecryptError> {
    let (key, iv) = key_and_iv(session_key_b64, iv_b64)?;
    let data = decode_b64(encrypted_data_b64)?;
    if data.is_empty() || data.len() % BLOCK != 0 {
        return Err(DecryptError::BadPadding);
    }
    Aes128CbcDec::new(&key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&data)
        .map_err(|_| DecryptError::BadPadding)
}

/// Decrypts, parses the JSON and requires `watermark.appid == expected_appid`.
pub fn decrypt_user_data(
    session_key_b64: &str,
    encrypted_data_b64: &str,
    iv_b64: &str,
    expected_appid: &str,
) -> Result<serde_json::Value, DecryptError> {
    let plain = decrypt(session_key_b64, encrypted_data_b64, iv_b64)?;
    let value: serde_json::Value =
        serde_json::from_slice(&plain).map_err(|_| DecryptError::BadJson)?;
    match value.pointer("/watermark/appid").and_then(|v| v.as_str()) {
        Some(appid) if appid == expected_appid => Ok(value),
        _ => Err(DecryptError::WatermarkMismatch),
    }
}

/// [`decrypt_user_data`] into a typed payload such as [`UserInfo`] or [`PhoneNumber`].
///
/// ```
/// use wechat::crypto::{self, PhoneNumber};
///
/// let key = "tiihtNczf5v6AKRyjwEUhQ==";
/// let iv = "r7BXXKkLb8qrSNn05n0qiA==";
/// let json = br#"{"phoneNumber":"+86 13800000000","purePhoneNumber":"13800000000","countryCode":"86","watermark":{"appid":"wx1","timestamp":1}}"#;
/// let data = crypto::encrypt(key, iv, json).unwrap();
/// let phone: PhoneNumber = crypto::decrypt_typed(key, &data, iv, "wx1").unwrap();
/// assert_eq!(phone.pure_phone_number, "13800000000");
/// ```
pub fn decrypt_typed<T: DeserializeOwned>(
    session_key_b64: &str,
    encrypted_data_b64: &str,
    iv_b64: &str,
    expected_appid: &str,
) -> Result<T, DecryptError> {
    let value = decrypt_user_data(session_key_b64, encrypted_data_b64, iv_b64, expected_appid)?;
    serde_json::from_value(value).map_err(|_| DecryptError::BadJson)
}

/// Encrypts `plaintext` the way WeChat does (the sandbox uses this to play the phone).
///
/// Only key and iv errors are possible ([`DecryptError::BadBase64`], `BadKeyLength`, `BadIvLength`).
pub fn encrypt(
    session_key_b64: &str,
    iv_b64: &str,
    plaintext: &[u8],
) -> Result<String, DecryptError> {
    let (key, iv) = key_and_iv(session_key_b64, iv_b64)?;
    let data =
        Aes128CbcEnc::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    Ok(STANDARD.encode(data))
}

/// `sha1(rawData + session_key)` as lowercase hex: the `signature` WeChat returns with `rawData`.
///
/// The session key is used as the base64 text WeChat issued, not decoded.
///
/// ```
/// // The example of WeChat's "开放数据校验与解密" document.
/// let raw = r#"{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/1vZvI39NWFQ9XM4LtQpFrQJ1xlgZxx3w7bQxKARol6503Iuswjjn6nIGBiaycAjAtpujxyzYsrztuuICqIM5ibXQ/0"}"#;
/// let sig = wechat::crypto::raw_data_signature(raw, "HyVFkGl5F5OQWJZZaNzBBg==");
/// assert_eq!(sig, "75e81ceda165f4ffa64f4068af58c64b8f54b88c");
/// assert!(wechat::crypto::verify_raw_data_signature(raw, "HyVFkGl5F5OQWJZZaNzBBg==", &sig).is_ok());
/// ```
pub fn raw_data_signature(raw_data: &str, session_key_b64: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(raw_data.as_bytes());
    hasher.update(session_key_b64.as_bytes());
    hex::encode(hasher.finalize())
}

/// Checks a `rawData` signature (exact lowercase hex, as WeChat sends it) in constant time.
pub fn verify_raw_data_signature(
    raw_data: &str,
    session_key_b64: &str,
    signature_hex: &str,
) -> Result<(), DecryptError> {
    let expected = raw_data_signature(raw_data, session_key_b64);
    if bool::from(expected.as_bytes().ct_eq(signature_hex.as_bytes())) {
        Ok(())
    } else {
        Err(DecryptError::SignatureMismatch)
    }
}

/// The `watermark` WeChat puts in every decrypted payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The appid the data was produced for.
    pub appid: String,
    /// Unix seconds when WeChat produced the data.
    #[serde(default)]
    pub timestamp: i64,
}

/// Decrypted `wx.getUserInfo` data (field names as WeChat sends them: `openId`, `nickName`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    /// Present in the legacy `encryptedData`, absent from newer profile APIs.
    #[serde(default)]
    pub open_id: Option<String>,
    #[serde(default)]
    pub nick_name: String,
    /// 0 unknown, 1 male, 2 female (WeChat now always sends 0).
    #[serde(default)]
    pub gender: i32,
    #[serde(default)]
    pub language: String,
    #[serde(default)]
    pub city: String,
    #[serde(default)]
    pub province: String,
    #[serde(default)]
    pub country: String,
    #[serde(default)]
    pub avatar_url: String,
    /// Only when the app is bound to an open platform account.
    #[serde(default)]
    pub union_id: Option<String>,
    pub watermark: Watermark,
}

/// Decrypted `getPhoneNumber` data (legacy encrypted form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhoneNumber {
    /// With country code for non-mainland numbers, e.g. `+1 2025550123`.
    pub phone_number: String,
    /// Without country code.
    pub pure_phone_number: String,
    pub country_code: String,
    pub watermark: Watermark,
}
