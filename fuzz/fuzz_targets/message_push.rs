//! The mini program's message push: `wechat::push::PushApp::open` on arbitrary bodies, in safe
//! and plaintext mode, with the query signed for whatever the body holds; `decrypt` on arbitrary
//! `Encrypt` strings; `xml_to_json` on arbitrary bytes. Must never panic.
//!
//! The input is read three ways:
//! 1. as a push body with a valid plaintext-mode signature: parsed (JSON or XML) or refused;
//! 2. as a safe-mode body whose `Encrypt` (if any) is signed: the cipher, the padding, the frame
//!    and the appid check run on what the fuzzer wrote;
//! 3. as a plaintext: encrypted for our appid, wrapped in a safe-mode envelope and opened again,
//!    which drives the message parsers past the cipher (a fuzzer cannot guess a valid padding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat::push::{self, Mode, PushApp, PushError, PushQuery, signature};

const APPID: &str = "wx0000000000shiptest";
const TOKEN: &str = "wxmpPushToken1";
const KEY: &str = "kWxPfcbLMi4nK5oWXQhzfLFCeRj3dQWdUg1N2xk5fEP";
const NOW: i64 = 1_700_000_000;
const NONCE: &str = "38271653";

fn query(encrypt: Option<&str>) -> PushQuery {
    let ts = NOW.to_string();
    PushQuery {
        signature: Some(signature(&[TOKEN, &ts, NONCE])),
        timestamp: Some(ts.clone()),
        nonce: Some(NONCE.into()),
        encrypt_type: encrypt.map(|_| "aes".into()),
        msg_signature: encrypt.map(|e| signature(&[TOKEN, &ts, NONCE, e])),
        ..PushQuery::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let plain = PushApp::new(APPID, TOKEN, "", Mode::Plaintext).unwrap();
    let safe = PushApp::new(APPID, TOKEN, KEY, Mode::Safe).unwrap();

    // 1. plaintext mode.
    if let Ok(m) = plain.open(&query(None), data, NOW, 300) {
        assert!(m.fields.is_object());
        assert!(!m.dedup_key.is_empty());
    }
    let _ = push::xml_to_json(data);

    // 2. safe mode, the body's Encrypt signed.
    let encrypt = push::Format::detect(data)
        .and_then(|f| push::parse_body(data, f).ok())
        .and_then(|v| v.get("Encrypt").and_then(|e| e.as_str()).map(str::to_owned));
    match safe.open(&query(encrypt.as_deref()), data, NOW, 300) {
        Ok(m) => assert!(m.fields.is_object()),
        Err(PushError::BadAesKey | PushError::BadToken) => panic!("configuration is valid"),
        Err(_) => {}
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(msg) = safe.decrypt(s) {
            // What decrypts was framed for our appid: it encrypts back to something that
            // decrypts to the same message.
            let again = safe.encrypt(&msg, [1; 16]).unwrap();
            assert_eq!(safe.decrypt(&again).unwrap(), msg);
        }
    }

    // 3. the input as a message, encrypted and opened again.
    let enc = safe.encrypt(data, [7; 16]).unwrap();
    assert_eq!(safe.decrypt(&enc).unwrap(), data);
    let body = serde_json::json!({ "ToUserName": "gh_1", "Encrypt": enc }).to_string();
    let opened = safe.open(&query(Some(&enc)), body.as_bytes(), NOW, 300);
    let direct = push::Format::detect(data).and_then(|f| push::parse_body(data, f).ok());
    // (The envelope of a large input passes the body limit first: compare below it.)
    if data.len() > 16 * 1024 {
        return;
    }
    match (opened, direct) {
        (Ok(m), Some(v)) => assert_eq!(m.fields, v),
        (Err(_), None) => {}
        (o, d) => panic!("open and parse disagree: {o:?} / {d:?}"),
    }
});
