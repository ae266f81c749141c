//! A Pay v2 refund notify: `wechat::pay::refund::decrypt_refund_notify` on arbitrary bytes, and
//! `decrypt_req_info` / `encrypt_req_info` (base64 of AES-256-ECB/PKCS#7 under md5hex(key)), must
//! never panic.
//!
//! The input is read three ways:
//! 1. as a notify body, decrypted with the fixed merchant key; an accepted one is ours;
//! 2. as a `req_info` string: what decrypts re-encrypts to the same base64 (ECB is deterministic,
//!    and the decoder takes only canonical base64);
//! 3. as a plaintext: encrypted, decrypted back to the same bytes, and wrapped in a notify, which
//!    drives the `<root>` parse and the field checks past the cipher (a fuzzer cannot guess a
//!    valid padding under the key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat::pay::PayConfig;
use wechat::pay::refund::{
    RefundNotify, RefundNotifyError, RefundStatus, decrypt_refund_notify, decrypt_req_info,
    encrypt_req_info,
};
use wechat::pay::xml::{self, MAX_XML_BYTES};

/// The test merchant of the seeds (see fuzz/seeds/make-seeds.sh).
const APPID: &str = "wx2421b1c4370ec43b";
const MCH_ID: &str = "10000100";
const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn pay() -> PayConfig {
    PayConfig::new(APPID, MCH_ID, KEY)
}

/// What the pay service relies on in an accepted refund notify.
fn assert_sane(n: &RefundNotify) {
    assert_eq!(n.mch_id, MCH_ID);
    assert!(n.total_fee >= 0 && n.refund_fee >= 0);
    assert_ne!(n.refund_status, RefundStatus::Processing);
    assert!(!n.out_trade_no.is_empty() && !n.out_refund_no.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let pay = pay();

    // 1. A posted body.
    if let Ok(n) = decrypt_refund_notify(data, &pay) {
        assert_sane(&n);
    }

    // 2. A req_info string.
    let text = String::from_utf8_lossy(data);
    if let Ok(plain) = decrypt_req_info(KEY, &text) {
        assert_eq!(encrypt_req_info(KEY, &plain), text.trim());
    }

    // 3. A plaintext.
    let req_info = encrypt_req_info(KEY, data);
    assert_eq!(decrypt_req_info(KEY, &req_info).as_deref(), Ok(data));
    let body = xml::to_xml([
        ("return_code", "SUCCESS"),
        ("appid", APPID),
        ("mch_id", MCH_ID),
        ("nonce_str", "TeqClE3i0mvn3DrK"),
        ("req_info", req_info.as_str()),
    ]);
    if body.len() > MAX_XML_BYTES {
        return;
    }
    match decrypt_refund_notify(body.as_bytes(), &pay) {
        Ok(n) => {
            assert_sane(&n);
            assert_eq!(n.appid, APPID);
            assert_eq!(xml::parse_root(data, b"root").as_ref(), Ok(&n.info));
        }
        // The envelope is ours and the cipher right, so only the plaintext can be refused.
        Err(e) => assert!(
            matches!(
                e,
                RefundNotifyError::Undecryptable
                    | RefundNotifyError::MissingField(_)
                    | RefundNotifyError::Malformed(_)
            ),
            "{e:?}"
        ),
    }
    // Undecryptable here means the plaintext is no flat <root> document.
    if xml::parse_root(data, b"root").is_ok() {
        assert_ne!(
            decrypt_refund_notify(body.as_bytes(), &pay).err(),
            Some(RefundNotifyError::Undecryptable)
        );
    }
});
