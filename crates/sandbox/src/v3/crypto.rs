//! WeChat's side of the v3 cryptography, written from WeChat's documents (not from
//! `crates/wechat`, which it tests):
//!
//! * a merchant request carries `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",
//!   nonce_str="…",signature="…",timestamp="…",serial_no="…"` (the five items in any order) and
//!   the signature is SHA256withRSA (PKCS#1 v1.5), base64, over five lines each ended by `\n`:
//!   method, path with query, timestamp, nonce, body (签名生成,
//!   <https://wechatpay-api.gitbook.io/wechatpay-api-v3/qian-ming-zhi-nan-1/qian-ming-sheng-cheng>);
//! * WeChat signs its answers and notifies over three lines: timestamp, nonce, body, and sends
//!   `Wechatpay-Timestamp`, `Wechatpay-Nonce`, `Wechatpay-Signature`, `Wechatpay-Serial`
//!   (签名验证, <https://pay.weixin.qq.com/wiki/doc/apiv3/wechatpay/wechatpay4_1.shtml>);
//! * notify resources and downloaded certificates are `AEAD_AES_256_GCM` with the APIv3 key,
//!   a 12-byte nonce, `associated_data` as AAD and the 16-byte tag appended before base64
//!   (证书和回调报文解密, <https://pay.weixin.qq.com/wiki/doc/apiv3_partner/wechatpay/wechatpay4_2.shtml>).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, RsaKeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Body of a PEM block (`label` e.g. `PRIVATE KEY`); `None` if absent or not base64.
pub fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop].split_whitespace().collect();
    B64.decode(b64).ok()
}

/// An RSA signing key of WeChat's (or the merchant's, in tests).
pub struct Signer(RsaKeyPair);

impl Signer {
    /// From a PKCS#8 PEM; panics on a broken built-in key (they are checked in and tested).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = pem_body(pem, "PRIVATE KEY").ok_or("no PKCS#8 PRIVATE KEY block")?;
        RsaKeyPair::from_pkcs8(&der)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// base64(SHA256withRSA(message)).
    pub fn sign(&self, message: &[u8]) -> String {
        let mut out = vec![0; self.0.public_modulus_len()];
        self.0
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut out,
            )
            .expect("modulus-sized signature buffer");
        B64.encode(out)
    }
}

/// Whether `signature_b64` is SHA256withRSA over `message` by the key in `public_pem`
/// (`PUBLIC KEY` SubjectPublicKeyInfo).
pub fn verify(public_pem: &str, message: &[u8], signature_b64: &str) -> bool {
    let (Some(spki), Ok(sig)) = (
        pem_body(public_pem, "PUBLIC KEY"),
        B64.decode(signature_b64),
    ) else {
        return false;
    };
    UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, spki)
        .verify(message, &sig)
        .is_ok()
}

/// Lines each followed by `\n`: both signed strings of v3 are built this way.
pub fn signed_lines(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.push(b'\n');
    }
    out
}

/// The parameters of a merchant's `Authorization` header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub mchid: String,
    pub nonce_str: String,
    pub signature: String,
    pub timestamp: String,
    pub serial_no: String,
}

/// Parses `WECHATPAY2-SHA256-RSA2048 k="v",…`; `None` for another scheme or a missing item.
pub fn parse_authorization(header: &str) -> Option<Authorization> {
    let params = header.strip_prefix("WECHATPAY2-SHA256-RSA2048 ")?;
    let mut auth = Authorization::default();
    for item in params.split(',') {
        let (k, v) = item.trim().split_once('=')?;
        let v = v.trim().strip_prefix('"')?.strip_suffix('"')?.to_owned();
        match k.trim() {
            "mchid" => auth.mchid = v,
            "nonce_str" => auth.nonce_str = v,
            "signature" => auth.signature = v,
            "timestamp" => auth.timestamp = v,
            "serial_no" => auth.serial_no = v,
            _ => {}
        }
    }
    let complete = [
        &auth.mchid,
        &auth.nonce_str,
        &auth.signature,
        &auth.timestamp,
        &auth.serial_no,
    ]
    .iter()
    .all(|v| !v.is_empty());
    complete.then_some(auth)
}

/// AES-256-GCM seal; returns base64(ciphertext ‖ tag).
pub fn seal(key: &[u8; 32], nonce: &[u8; 12], associated_data: &[u8], plaintext: &[u8]) -> String {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(*nonce),
        Aad::from(associated_data),
        &mut buf,
    )
    .expect("GCM seal of a small buffer");
    B64.encode(buf)
}

/// A 12-character alphanumeric nonce, as WeChat's resources carry.
pub fn resource_nonce() -> [u8; 12] {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut out = [0u8; 12];
    for b in &mut out {
        *b = rng.sample(rand::distr::Alphanumeric);
    }
    out
}

/// Opens a sensitive request field (敏感信息加密: RSAES-OAEP with SHA-1 / MGF1-SHA-1, base64)
/// sealed for WeChat's key of `serial` (the request's `Wechatpay-Serial`: the public key id or
/// a platform certificate serial), as 发起异常退款's `bank_account` / `real_name` are
/// (<https://pay.weixin.qq.com/docs/merchant/apis/refund/refunds/create-abnormal-refund.html>).
/// `None`: an unknown serial, or not sealed for that key.
pub fn open_sensitive(serial: &str, sealed_b64: &str) -> Option<String> {
    use super::keys::dev;
    use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, PrivateDecryptingKey};
    use base64::Engine as _;
    let pem = match serial {
        s if s == dev::PUBLIC_KEY_ID => dev::WECHATPAY_PRIVATE_KEY,
        s if s == dev::PLATFORM_A_SERIAL => dev::PLATFORM_A_KEY,
        s if s == dev::PLATFORM_B_SERIAL => dev::PLATFORM_B_KEY,
        _ => return None,
    };
    let der = pem_body(pem, "PRIVATE KEY")?;
    let key = OaepPrivateDecryptingKey::new(PrivateDecryptingKey::from_pkcs8(&der).ok()?).ok()?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(sealed_b64)
        .ok()?;
    let mut out = vec![0u8; key.min_output_size()];
    let plain = key
        .decrypt(&OAEP_SHA1_MGF1SHA1, &sealed, &mut out, None)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same OpenSSL vectors as crates/wechat/tests/pay_v3.rs, re-derived for the sandbox's
    // own code: printf '1554209980\nc5ac…\n{"prepay_id":…}\n' | openssl dgst -sha256 -sign …
    #[test]
    fn authorization_parses_in_any_order_and_rejects_others() {
        let a = parse_authorization(
            r#"WECHATPAY2-SHA256-RSA2048 serial_no="S",mchid="1900000109",timestamp="1",nonce_str="n",signature="c2ln""#,
        )
        .unwrap();
        assert_eq!(
            (a.mchid.as_str(), a.serial_no.as_str()),
            ("1900000109", "S")
        );
        assert!(parse_authorization(r#"Bearer x"#).is_none());
        assert!(parse_authorization(r#"WECHATPAY2-SHA256-RSA2048 mchid="1""#).is_none());
    }

    #[test]
    fn seal_matches_openssl_gcm_vector() {
        // python3 -c 'from cryptography.hazmat.primitives.ciphers.aead import AESGCM; …'
        // (key 0123456789abcdefghijABCDEFGHIJ01, nonce fdasflkjaQWE, AAD "transaction")
        let sealed = seal(
            b"0123456789abcdefghijABCDEFGHIJ01",
            b"fdasflkjaQWE",
            b"transaction",
            br#"{"out_trade_no":"1217752501201407033233368018","trade_state":"SUCCESS","amount":{"total":100}}"#,
        );
        assert_eq!(
            sealed,
            "6DJu39B/+ckcMS4yAXi4djAWANUIeVhuRfU1sydhTA20TbSJz3+dCGfBli4GdcuvglCsW2U65xvpoxft9DUQ3bEiw9sTuuc7g873bb6DEHZZVqS1HbD3efr7bdfKPlZ2PWpK5i3qus+CHDxGtoc="
        );
    }

    #[test]
    fn dev_keys_sign_and_verify() {
        use crate::v3::keys::dev;
        let signer = Signer::from_pem(dev::MERCHANT_PRIVATE_KEY).unwrap();
        let msg = signed_lines(&[b"GET", b"/v3/certificates", b"1", b"n", b""]);
        assert_eq!(msg, b"GET\n/v3/certificates\n1\nn\n\n");
        let sig = signer.sign(&msg);
        assert!(verify(dev::MERCHANT_PUBLIC_KEY, &msg, &sig));
        assert!(!verify(dev::WECHATPAY_PUBLIC_KEY, &msg, &sig));
    }

    #[test]
    fn sensitive_fields_open_with_the_key_the_serial_names() {
        use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
        use base64::Engine as _;
        let der = pem_body(crate::v3::keys::dev::WECHATPAY_PUBLIC_KEY, "PUBLIC KEY").unwrap();
        let key =
            OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&der).unwrap()).unwrap();
        let mut out = vec![0u8; key.ciphertext_size()];
        let sealed = key
            .encrypt(
                &OAEP_SHA1_MGF1SHA1,
                "6222020202020202".as_bytes(),
                &mut out,
                None,
            )
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(sealed);
        let id = crate::v3::keys::dev::PUBLIC_KEY_ID;
        assert_eq!(
            open_sensitive(id, &b64).as_deref(),
            Some("6222020202020202")
        );
        assert_eq!(
            open_sensitive(crate::v3::keys::dev::PLATFORM_A_SERIAL, &b64),
            None
        );
        assert_eq!(open_sensitive("nobody", &b64), None);
        assert_eq!(open_sensitive(id, "not base64!"), None);
    }
}
