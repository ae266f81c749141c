//! Refund notifies: `req_info` decrypts (AES-256-ECB, key = md5hex(API key)) against a vector
//! made by an independent tool, and anything forged or foreign is refused.

use wechat::pay::refund::{
    RefundNotifyError, RefundStatus, decrypt_refund_notify, decrypt_req_info, encrypt_req_info,
};
use wechat::pay::{PayConfig, xml};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

/// Made with OpenSSL 3.0 (not with this crate):
///
/// ```sh
/// PAYKEY='192006250b4c09247ec02edce69f6a2d'
/// KEY=$(printf '%s' "$PAYKEY" | md5sum | cut -c1-32)      # d96eb16afdd491fa1e705096edbc2205
/// HEXKEY=$(printf '%s' "$KEY" | xxd -p -c 64)             # the 32 ASCII bytes as the AES-256 key
/// printf '%s' "$PLAIN" | openssl enc -aes-256-ecb -K "$HEXKEY" -nosalt | base64 -w0
/// ```
///
/// with $PLAIN = [`PLAIN`] (openssl pads with PKCS#7 by default).
const VECTOR: &str = "WBzGpzQuNpcFxIlFjUUD9BfnwwNUlVAs7bwvgHME4/TMVUtgiZevC1m7jTnrrcP47JPeq9YvbNVlSO5e2C9BYu0C/eAlXacYIkANOG7wWeMshqBNzdTjjpHsbAbP4k6uy+oMYDtNlNptOqWrB3ya5Dc1ZE3KFDCubt69C01a7hVD0kt7tsb3UQWp7N/kmUkbBqP0ZYAz0mUTfDscr/GAxEKZ1+1eNvsAdgk4Fn+MgM9jZuiRUvo1HXy1nB4sBTiAZPiRTd0DryF9Pkg0UsPav8iH09mCT7ZkPx9ZAPq24oBRo5o9d5y1DFib6EUBMg4DchVzKY1y6XLzbXtnCG7AEkCaBF7JAhJwnAhc9/QBbwxnj+38kAiFSOe67ZVyXr9kBUyKaPMXklJhJHRHyo/K5biD/QVTamlvD+M3d9pcA5X/X5WXm+sNbGDaGJab0kK20nmQAcP/1cHqF8zQEfiLB/9n8Vk74QK87YD1u6qekJ67zZZ8NETTsfZquj0jqE3jPzW1WawXCebA09h/A1ukhxS67h6D/yO+BottyQEALMoLpRJEPoddhilc4hAYrfWfFR+XzLc27WZyv5673YY1nBa1fj+Eorgndx3fNxf3KAYa3LPgsjvZgxaeYyrhV05KVHCeUY+xJzyC0MMcmy3iooEhFpcGBhBZ6vQG+lerQLVnV4k0+C7Yh8hIx4jP7oR6vuAdyR2rnhEjl+BgYVR2vMtVounhTOz6CpUtICHLSpXAxxRqC8TFpqu3gKxheAMSHI5yGigmK9eVwBH5vWcNzPCIqXc4uoaODM8mUEDZD5X7u1xIizzC/QIS3w6unlAj9cyePZqzYutArl9gPmtexxRLjGZUfrkgpshXmo4RAx22IzQSWrPCbu4+sGU/tt2ayJKzbceaa0FeRit29S0gBeL1IjQS4lIrSTtMlLO2UbbHcDrSdlpvw/FFtLP7gSYWzDJJc5xDVdFSbbl5rXXsq1GIBNMnVD3dwqdn6QPLYGQZh1rIFl0WIgKoDCLxWGJLxysQQdbzyrGb1q4QY8PZcubr3sHuORLPtPog/+J6Ogo=";

const PLAIN: &str = "<root><out_refund_no><![CDATA[R20261201A1]]></out_refund_no><out_trade_no><![CDATA[20261201abcdEFGH12345678]]></out_trade_no><refund_account><![CDATA[REFUND_SOURCE_RECHARGE_FUNDS]]></refund_account><refund_fee><![CDATA[300]]></refund_fee><refund_id><![CDATA[50000000382019052709732678859]]></refund_id><refund_recv_accout><![CDATA[支付用户零钱]]></refund_recv_accout><refund_request_source><![CDATA[API]]></refund_request_source><refund_status><![CDATA[SUCCESS]]></refund_status><settlement_refund_fee><![CDATA[300]]></settlement_refund_fee><settlement_total_fee><![CDATA[1800]]></settlement_total_fee><success_time><![CDATA[2026-12-01 12:00:05]]></success_time><total_fee><![CDATA[1800]]></total_fee><transaction_id><![CDATA[4200000000202612010000000001]]></transaction_id></root>";

fn pay() -> PayConfig {
    PayConfig::new("wx2421b1c4370ec43b", "10000100", KEY)
}

/// The outer body WeChat posts: no sign, req_info carries everything.
fn body(mch_id: &str, req_info: &str) -> Vec<u8> {
    xml::to_xml([
        ("return_code", "SUCCESS"),
        ("appid", "wx2421b1c4370ec43b"),
        ("mch_id", mch_id),
        ("nonce_str", "TeqClE3i0mvn3DrK"),
        ("req_info", req_info),
    ])
    .into_bytes()
}

#[test]
fn openssl_vector_decrypts() {
    let plain = decrypt_req_info(KEY, VECTOR).unwrap();
    assert_eq!(plain, PLAIN.as_bytes());
    // And our encryption is the same function as openssl's (ECB is deterministic).
    assert_eq!(encrypt_req_info(KEY, PLAIN.as_bytes()), VECTOR);
}

#[test]
fn a_refund_notify_parses() {
    let n = decrypt_refund_notify(&body("10000100", VECTOR), &pay()).unwrap();
    assert_eq!(n.out_refund_no, "R20261201A1");
    assert_eq!(n.out_trade_no, "20261201abcdEFGH12345678");
    assert_eq!(n.refund_fee, 300);
    assert_eq!(n.total_fee, 1800);
    assert_eq!(n.refund_status, RefundStatus::Success);
    assert_eq!(n.refund_id, "50000000382019052709732678859");
    assert_eq!(n.success_time.as_deref(), Some("2026-12-01 12:00:05"));
    assert_eq!(n.appid, "wx2421b1c4370ec43b");
}

#[test]
fn forged_and_foreign_notifies_are_refused() {
    // Encrypted with another key: the padding check fails (or the plaintext is garbage).
    let other = encrypt_req_info("another key", PLAIN.as_bytes());
    assert_eq!(
        decrypt_refund_notify(&body("10000100", &other), &pay()),
        Err(RefundNotifyError::Undecryptable)
    );
    // Not base64, not whole blocks, tampered with.
    for bad in ["not base64!", "AAAA", &VECTOR[..VECTOR.len() - 24]] {
        assert_eq!(
            decrypt_refund_notify(&body("10000100", bad), &pay()),
            Err(RefundNotifyError::Undecryptable),
            "{bad}"
        );
    }
    // Another merchant.
    assert_eq!(
        decrypt_refund_notify(&body("10000999", VECTOR), &pay()),
        Err(RefundNotifyError::MchIdMismatch)
    );
    // No req_info, return_code FAIL, not XML.
    let no_info = xml::to_xml([("return_code", "SUCCESS"), ("mch_id", "10000100")]);
    assert_eq!(
        decrypt_refund_notify(no_info.as_bytes(), &pay()),
        Err(RefundNotifyError::MissingField("req_info"))
    );
    let fail = xml::to_xml([("return_code", "FAIL"), ("return_msg", "x")]);
    assert!(matches!(
        decrypt_refund_notify(fail.as_bytes(), &pay()),
        Err(RefundNotifyError::ReturnFail(_))
    ));
    assert!(matches!(
        decrypt_refund_notify(b"{}", &pay()),
        Err(RefundNotifyError::Xml(_))
    ));
    // A well-encrypted plaintext that is not a refund (wrong root, unknown status).
    for plain in [
        "<xml><refund_status>SUCCESS</refund_status></xml>",
        "<root><out_refund_no>R1</out_refund_no><out_trade_no>A</out_trade_no><refund_fee>1</refund_fee><total_fee>1</total_fee><refund_status>MAYBE</refund_status></root>",
        "<root><out_refund_no>R1</out_refund_no><out_trade_no>A</out_trade_no><refund_fee>-1</refund_fee><total_fee>1</total_fee><refund_status>SUCCESS</refund_status></root>",
    ] {
        let info = encrypt_req_info(KEY, plain.as_bytes());
        assert!(
            decrypt_refund_notify(&body("10000100", &info), &pay()).is_err(),
            "{plain}"
        );
    }
}
