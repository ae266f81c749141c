//! Arbitrary bytes as the gateway's JSON request bodies, then the `wechat` calls the services
//! make with what they carry. Must never panic.
//!
//! TODO(gateway): the gateway crate was being written when this target was added, so the body
//! types below are local mirrors (same serde attributes) of:
//!   * `LoginBody`     -> `gateway::routes::session::LoginBody`     (`POST /login/`)
//!   * `TokenBody`     -> `gateway::routes::session::TokenBody`     (`POST /logout`)
//!   * `EncryptedBody` -> `gateway::routes::user::EncryptedBody`    (`POST /userinfo/`, `/phone/`)
//!   * `PayBody`       -> `gateway::routes::pay::PayBody`           (`POST /pay/`)
//!
//! Once those are stable, add `gateway = { path = "../crates/gateway" }` to fuzz/Cargo.toml,
//! delete the mirrors and deserialize into the gateway's own types (their fields are private,
//! so keep reading the wechat inputs from the `serde_json::Value`). Better still, route the
//! bytes through the gateway's body extractor (`gateway::extract::JsonBody`) if it grows a
//! function that does not need an actix `HttpRequest`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use wechat::crypto;

/// A session key as WeChat issues them (16 bytes, base64).
const SESSION_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
const APPID: &str = "wx4f4bc4dec97d474b";

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct LoginBody {
    code: Option<String>,
    #[serde(default, alias = "appid", alias = "appId")]
    app_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[allow(dead_code)]
struct TokenBody {
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct EncryptedBody {
    token: Option<String>,
    #[serde(rename = "encryptedData", alias = "encrypted_data")]
    encrypted_data: Option<String>,
    iv: Option<String>,
    #[serde(rename = "rawData", alias = "raw_data")]
    raw_data: Option<String>,
    signature: Option<String>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct PayBody {
    token: Option<String>,
    #[serde(alias = "orderNo")]
    order_no: Option<String>,
    #[serde(alias = "productId")]
    product_id: Option<String>,
}

fn str_field<'a>(value: &'a Value, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| value.get(n))
        .and_then(Value::as_str)
}

fuzz_target!(|data: &[u8]| {
    // The typed bodies: errors are fine, panics are not.
    let _ = serde_json::from_slice::<LoginBody>(data);
    let _ = serde_json::from_slice::<TokenBody>(data);
    let _ = serde_json::from_slice::<PayBody>(data);
    let _ = serde_json::from_slice::<EncryptedBody>(data);

    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // What serde_json accepts it can write back and read again (not compared for equality:
    // without serde_json's `float_roundtrip` feature floats may differ in the last bit).
    let written = serde_json::to_vec(&value).expect("a Value always serializes");
    assert!(
        serde_json::from_slice::<Value>(&written).is_ok(),
        "{written:?}"
    );

    // What user-service does with /userinfo/ and /phone/ bodies (under a fixed session key).
    let encrypted = str_field(&value, &["encryptedData", "encrypted_data"]);
    let iv = str_field(&value, &["iv"]);
    if let (Some(encrypted), Some(iv)) = (encrypted, iv) {
        let _ = crypto::decrypt(SESSION_KEY, encrypted, iv);
        let _ = crypto::decrypt_typed::<crypto::UserInfo>(SESSION_KEY, encrypted, iv, APPID);
        let _ = crypto::decrypt_typed::<crypto::PhoneNumber>(SESSION_KEY, encrypted, iv, APPID);
    }
    let raw = str_field(&value, &["rawData", "raw_data"]);
    let signature = str_field(&value, &["signature"]);
    if let (Some(raw), Some(signature)) = (raw, signature) {
        let ok = crypto::verify_raw_data_signature(raw, SESSION_KEY, signature).is_ok();
        assert_eq!(
            ok,
            crypto::raw_data_signature(raw, SESSION_KEY) == signature
        );
    }
    // The decrypted payload is JSON too: the same typed parsers must cope with any Value.
    let _ = serde_json::from_value::<crypto::UserInfo>(value.clone());
    let _ = serde_json::from_value::<crypto::PhoneNumber>(value);
});
