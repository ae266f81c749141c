//! Arbitrary bytes as a WeChat Pay message: `wechat::pay::xml::parse` and
//! `wechat::pay::notify::verify_notify` must never panic.
//!
//! A fuzzer cannot forge an MD5/HMAC signature, so every document that parses is also re-signed
//! with the merchant key and verified again: that drives the checks after the signature
//! (appid, mch_id, total_fee, required fields) with attacker-chosen values.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use wechat::pay::xml::{self, Fields, MAX_XML_BYTES};
use wechat::pay::{PayConfig, SignType, notify, sign};

const APPID: &str = "wx2421b1c4370ec43b";
const MCH_ID: &str = "10000100";
const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

static PAY: LazyLock<PayConfig> = LazyLock::new(|| PayConfig::new(APPID, MCH_ID, KEY));

fn pairs(fields: &Fields) -> impl Iterator<Item = (&str, &str)> + Clone {
    fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Names `to_xml` promises to write correctly (WeChat's are `[a-z_]+`, plus digits).
fn plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_notify(body: &[u8]) {
    if let Ok(paid) = notify::verify_notify(body, &PAY) {
        // Anything accepted is ours and names the order.
        assert_eq!(paid.appid, APPID);
        assert_eq!(paid.mch_id, MCH_ID);
        assert!(!paid.out_trade_no.is_empty());
        assert_eq!(
            paid.fields.get("return_code").map(String::as_str),
            Some("SUCCESS")
        );
        // A paid one carries a positive amount and the transaction; a failed payment (any other
        // result_code) is read with its payment fields empty and total_fee 0 unless sent.
        if paid.is_success() {
            assert!(paid.total_fee > 0);
            assert!(!paid.transaction_id.is_empty());
            assert!(!paid.time_end.is_empty());
        } else {
            assert!(paid.total_fee >= 0);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_notify(data);

    let Ok(fields) = xml::parse(data) else {
        return;
    };

    // Round trip: writing the parsed fields and parsing them again gives the same fields.
    if fields.keys().all(|k| plain_name(k)) {
        let doc = xml::to_xml(pairs(&fields));
        if doc.len() <= MAX_XML_BYTES {
            assert_eq!(xml::parse(doc.as_bytes()).as_ref(), Ok(&fields), "{doc:?}");
        }
    }

    // Re-sign with the merchant key (under the message's own sign_type when it names one).
    let sign_type = fields
        .get("sign_type")
        .and_then(|t| t.parse::<SignType>().ok())
        .unwrap_or_default();
    let mut signed = fields;
    let signature = sign(pairs(&signed), KEY, sign_type);
    signed.insert("sign".to_owned(), signature);
    if signed.keys().all(|k| plain_name(k)) {
        let body = xml::to_xml(pairs(&signed));
        check_notify(body.as_bytes());
    }
});
