//! Arbitrary bytes as the mini program's encrypted user data: `wechat::crypto::decrypt` and
//! `decrypt_user_data` (and the typed variants) must never panic.
//!
//! The input is read twice:
//! 1. as `session_key \n encryptedData \n iv \n appid` (lossy UTF-8; missing parts are empty),
//!    which exercises base64, key/iv lengths and padding on hostile strings;
//! 2. as a plaintext that is encrypted under a fixed key and decrypted again, which gets past
//!    AES (the fuzzer cannot forge a valid padding under an unknown key) into the JSON and
//!    watermark checks; the round trip must give back the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat::crypto::{self, PhoneNumber, UserInfo};

/// The WXBizDataCrypt demo key, iv and appid.
const KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
const IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
const APPID: &str = "wx4f4bc4dec97d474b";

fn all_paths(key: &str, data: &str, iv: &str, appid: &str) {
    let plain = crypto::decrypt(key, data, iv);
    let json = crypto::decrypt_user_data(key, data, iv, appid);
    if let Ok(json) = &json {
        // Only a matching watermark is accepted.
        assert_eq!(
            json.pointer("/watermark/appid").and_then(|v| v.as_str()),
            Some(appid)
        );
        assert!(plain.is_ok());
    }
    let _ = crypto::decrypt_typed::<UserInfo>(key, data, iv, appid);
    let _ = crypto::decrypt_typed::<PhoneNumber>(key, data, iv, appid);
    let _ = crypto::encrypt(key, iv, data.as_bytes());
}

fuzz_target!(|input: &[u8]| {
    // 1. Hostile key / data / iv strings.
    let text = String::from_utf8_lossy(input);
    let mut parts = text.splitn(4, '\n');
    let key = parts.next().unwrap_or_default();
    let data = parts.next().unwrap_or_default();
    let iv = parts.next().unwrap_or_default();
    let appid = parts.next().unwrap_or_default();
    all_paths(key, data, iv, appid);
    // The same data under the demo key, so a valid ciphertext line reaches the padding check.
    all_paths(KEY, data, IV, APPID);

    // 2. The whole input as a plaintext.
    let encrypted = crypto::encrypt(KEY, IV, input).expect("fixed key and iv are valid");
    assert_eq!(crypto::decrypt(KEY, &encrypted, IV).as_deref(), Ok(input));
    all_paths(KEY, &encrypted, IV, APPID);
});
