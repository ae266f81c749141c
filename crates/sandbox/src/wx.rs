//! The one place that calls `crates/wechat` (signing, XML, user-data encryption), so the
//! sandbox's own tests can check these against independent code and fixed samples.

use std::fmt::Display;

pub use wechat::pay::sign::SignType;

/// Ordered key/value pairs: answers keep WeChat's documented field order.
pub type Pairs = Vec<(String, String)>;

/// The most a pay request body may hold.
pub const MAX_XML_BYTES: usize = wechat::pay::xml::MAX_XML_BYTES;

fn borrowed(pairs: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> + Clone {
    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

pub fn parse_sign_type(s: &str) -> Option<SignType> {
    s.parse().ok()
}

/// Uppercase hex signature over the non-empty fields except `sign`.
pub fn sign(pairs: &[(String, String)], key: &str, sign_type: SignType) -> String {
    wechat::pay::sign::sign(borrowed(pairs), key, sign_type)
}

pub fn verify(pairs: &[(String, String)], key: &str, sign_type: SignType, signature: &str) -> bool {
    wechat::pay::sign::verify(borrowed(pairs), key, sign_type, signature)
}

pub fn to_xml(pairs: &[(String, String)]) -> String {
    wechat::pay::xml::to_xml(borrowed(pairs))
}

/// The `<xml>` document as pairs (sorted by name), or why it is not one.
pub fn parse_xml(body: &[u8]) -> Result<Pairs, String> {
    wechat::pay::xml::parse(body)
        .map(|fields| fields.into_iter().collect())
        .map_err(|e| e.to_string())
}

pub fn nonce_str() -> String {
    wechat::pay::jsapi::nonce_str()
}

/// AES-128-CBC/PKCS#7 with the session_key, base64 out.
pub fn encrypt(session_key: &str, iv: &str, plain: &[u8]) -> Result<String, impl Display> {
    wechat::crypto::encrypt(session_key, iv, plain)
}

/// sha1(rawData + session_key), lowercase hex.
pub fn raw_data_signature(raw_data: &str, session_key: &str) -> String {
    wechat::crypto::raw_data_signature(raw_data, session_key)
}
