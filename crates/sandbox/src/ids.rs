//! Random identifiers shaped like WeChat's own (length and alphabet), so clients that store
//! them in sized columns meet realistic values.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use rand::{Rng, distr::Alphanumeric};

use crate::clock;

fn alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn digits(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// `o` + 27 URL-safe base64 characters: 28 characters like a real openid.
pub fn openid() -> String {
    let bytes: [u8; 21] = rand::random();
    let mut id = String::from("o");
    id.push_str(&URL_SAFE_NO_PAD.encode(bytes)[..27]);
    id
}

/// 28 characters, same alphabet as an openid (real unionids look alike).
pub fn unionid() -> String {
    openid()
}

/// A login code: 32 alphanumerics, as `wx.login` gives.
pub fn login_code() -> String {
    alphanumeric(32)
}

/// A session_key: 16 random bytes, base64 (24 characters).
pub fn session_key() -> String {
    STANDARD.encode(rand::random::<[u8; 16]>())
}

/// An AES IV: 16 random bytes, base64.
pub fn iv() -> String {
    STANDARD.encode(rand::random::<[u8; 16]>())
}

/// An access_token (WeChat's are opaque and long; clients must keep 512 characters).
pub fn access_token() -> String {
    format!("sbx_{}", alphanumeric(132))
}

/// `wx` + yyyyMMddHHmmss + 20 hex digits: 36 characters like a real prepay_id.
pub fn prepay_id() -> String {
    format!(
        "wx{}{}",
        clock::wx_time(&clock::now()),
        hex::encode(rand::random::<[u8; 10]>())
    )
}

/// 28 digits like a real transaction_id (`4200` + digits + the date + digits).
pub fn transaction_id() -> String {
    let date = clock::now().format("%Y%m%d").to_string();
    format!("4200{}{date}{}", digits(6), digits(10))
}

/// 29 digits like a real refund_id (`5000` + digits + the date + digits).
pub fn refund_id() -> String {
    let date = clock::now().format("%Y%m%d").to_string();
    format!("5000{}{date}{}", digits(7), digits(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let o = openid();
        assert_eq!(o.len(), 28);
        assert!(o.starts_with('o'));
        assert_eq!(login_code().len(), 32);
        assert_eq!(session_key().len(), 24);
        assert_eq!(prepay_id().len(), 36);
        let t = transaction_id();
        assert_eq!(t.len(), 28);
        assert!(t.bytes().all(|b| b.is_ascii_digit()));
    }
}
