//! A Pay v3 notify as WeChat posts it: the fuzz input is the four `Wechatpay-*` header values
//! (`Timestamp`, `Nonce`, `Signature`, `Serial`, one line each, lossy UTF-8) and then the body.
//! `wechat::pay::v3::notify::open` runs with a fixed key set (the test platform key in public-key
//! mode and as a downloaded certificate, the test APIv3 key) at a fixed `NOW`, and must never
//! panic; a notify it accepts must be signed by the test key, which is checked here without the
//! crate (message built by hand, signature verified with aws-lc-rs directly) along with the clock.
//!
//! A fuzzer cannot forge RSA or GCM, so two more passes reach the code after each: the body is
//! decrypted as if its signature had verified, and the body is also sealed as a resource with the
//! APIv3 key and opened again (the round trip must give it back), then parsed as a transaction
//! and a refund.
#![no_main]

use std::sync::LazyLock;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use wechat::pay::v3::aead::{ApiV3Key, EncryptedResource};
use wechat::pay::v3::model::{RefundNotice, Transaction, rfc3339_unix};
use wechat::pay::v3::notify::{self, Notification};
use wechat::pay::v3::verify::{
    self, MAX_CLOCK_SKEW_SECS, PlatformCertificate, PlatformKeys, SignatureHeaders, header,
};
use wechat::pay::v3::{PublicKey, VerifyError};

/// The keys of crates/wechat/testdata/pay_v3 (TEST-ONLY), as the seeds were made with.
const PLATFORM_PUB: &str = include_str!("../../crates/wechat/testdata/pay_v3/platform_pub.pem");
const PLATFORM_CERT: &str = include_str!("../../crates/wechat/testdata/pay_v3/platform_cert.pem");
const PUB_KEY_ID: &str = "PUB_KEY_ID_0112345678902026120100000000000001";
const CERT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const APIV3_KEY: &str = "0123456789abcdefghijABCDEFGHIJ01";
/// Our clock: the seeds are signed at this time.
const NOW: i64 = 1_800_000_000;

static PLATFORM: LazyLock<PlatformKeys> = LazyLock::new(|| {
    let keys = PlatformKeys::public_key_and_certificates(
        PUB_KEY_ID,
        PublicKey::from_spki_pem(PLATFORM_PUB).unwrap(),
    );
    let cert = PlatformCertificate {
        serial_no: CERT_SERIAL.to_owned(),
        key: PublicKey::from_certificate_pem(PLATFORM_CERT).unwrap(),
        expires_at: NOW + 365 * 86_400,
    };
    keys.install_certificates(vec![cert], NOW);
    keys
});
static APIV3: LazyLock<ApiV3Key> = LazyLock::new(|| ApiV3Key::new(APIV3_KEY).unwrap());
/// The DER SubjectPublicKeyInfo of the test platform key, read without the crate.
static SPKI_DER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let b64: String = PLATFORM_PUB
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    B64.decode(b64).unwrap()
});

/// The clock rule, in i128 so that no input can overflow it.
fn within_clock(timestamp: &str, now: i64) -> bool {
    timestamp
        .parse::<i64>()
        .is_ok_and(|ts| (i128::from(ts) - i128::from(now)).abs() <= i128::from(MAX_CLOCK_SKEW_SECS))
}

/// What an accepted signature must be: the test key's SHA256withRSA over
/// `timestamp\nnonce\nbody\n` (header values trimmed, as HTTP does), at a time within the clock.
fn assert_signed_by_test_key(ts: &str, nonce: &str, sig: &str, serial: &str, body: &[u8]) {
    let (ts, nonce, sig, serial) = (ts.trim(), nonce.trim(), sig.trim(), serial.trim());
    assert!(serial == PUB_KEY_ID || serial == CERT_SERIAL, "{serial:?}");
    assert!(within_clock(ts, NOW), "accepted Wechatpay-Timestamp {ts:?}");
    let mut message = format!("{ts}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    let sig = B64.decode(sig).expect("an accepted signature is base64");
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, SPKI_DER.as_slice())
        .verify(&message, &sig)
        .expect("an accepted notify is signed by the test platform key");
}

/// The decrypted resource as the pay service reads it.
fn parse_resource(plaintext: &[u8]) {
    if let Ok(tx) = serde_json::from_slice::<Transaction>(plaintext) {
        let _ = (tx.state(), tx.total(), tx.success_unix());
    }
    if let Ok(refund) = serde_json::from_slice::<RefundNotice>(plaintext) {
        let _ = refund.success_time.as_deref().map(rfc3339_unix);
    }
}

/// `plaintext` as WeChat would send it: AES-256-GCM under the APIv3 key, tag appended, base64.
fn seal(plaintext: &[u8], nonce: &str, associated_data: &str) -> String {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, APIV3_KEY.as_bytes()).unwrap());
    let nonce = Nonce::try_assume_unique_for_key(nonce.as_bytes()).unwrap();
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(associated_data.as_bytes()), &mut buf)
        .unwrap();
    B64.encode(buf)
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut line = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (ts, nonce, sig, serial) = (line(), line(), line(), line());
    let body = parts.next().unwrap_or_default();

    // The clock check agrees with the rule for any timestamp, at our clock and at the extremes.
    for now in [NOW, 0, i64::MIN, i64::MAX] {
        let checked = verify::check_clock(ts.trim(), now);
        assert_eq!(
            checked.is_ok(),
            within_clock(ts.trim(), now),
            "{ts:?} at {now}"
        );
        if let Err(VerifyError::Clock { skew_secs }) = checked {
            assert!(skew_secs.unsigned_abs() > MAX_CLOCK_SKEW_SECS.unsigned_abs());
        }
    }

    // 1. As posted: verified, then decrypted.
    let headers = SignatureHeaders::from_lookup(|name| match name {
        header::TIMESTAMP => Some(ts.as_str()),
        header::NONCE => Some(nonce.as_str()),
        header::SIGNATURE => Some(sig.as_str()),
        header::SERIAL => Some(serial.as_str()),
        _ => None,
    });
    if let Ok(headers) = headers {
        if PLATFORM.verify(&headers, body, NOW).is_ok() {
            assert_signed_by_test_key(&ts, &nonce, &sig, &serial, body);
        }
        if let Ok(opened) = notify::open(&PLATFORM, &APIV3, &headers, body, NOW) {
            assert_signed_by_test_key(&ts, &nonce, &sig, &serial, body);
            assert_eq!(opened.notification.resource.algorithm, "AEAD_AES_256_GCM");
            parse_resource(&opened.plaintext);
        }
    }

    // 2. What follows a valid signature, on any body.
    if let Ok(opened) = notify::decrypt_verified(&APIV3, body) {
        parse_resource(&opened.plaintext);
    }

    // 3. The body as a resource's plaintext (the serial line as its associated data): sealed,
    //    put in a notify, opened again.
    let notification = Notification {
        id: "EV-fuzz".to_owned(),
        create_time: String::new(),
        event_type: "TRANSACTION.SUCCESS".to_owned(),
        resource_type: "encrypt-resource".to_owned(),
        summary: String::new(),
        resource: EncryptedResource {
            algorithm: "AEAD_AES_256_GCM".to_owned(),
            ciphertext: seal(body, "fdasflkjaQWE", &serial),
            associated_data: serial.clone(),
            nonce: "fdasflkjaQWE".to_owned(),
            original_type: Some("transaction".to_owned()),
        },
    };
    let json = serde_json::to_vec(&notification).unwrap();
    let opened = notify::decrypt_verified(&APIV3, &json).expect("a sealed resource opens");
    assert_eq!(opened.plaintext, body);
    assert_eq!(opened.notification, notification);
    parse_resource(body);
});
