//! The RSA keys of Pay v3: our merchant private key (PKCS#8 PEM) and WeChat Pay's public keys
//! (a `PUB_KEY_ID_…` public key, or the key inside a platform certificate).
//!
//! RSA runs on `aws-lc-rs` (constant-time, the same library rustls uses), never on the `rsa`
//! crate, whose private-key operations have an open timing advisory (RUSTSEC-2023-0071).

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// A key file could not be used. Names the problem, never the key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM block labelled {0}")]
    NoPem(&'static str),
    #[error("PEM body is not valid base64")]
    Base64,
    #[error(
        "the private key is PKCS#1 (BEGIN RSA PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    Pkcs1,
    #[error("not an RSA key of 2048 to 8192 bits: {0}")]
    Rejected(String),
    #[error("certificate DER is malformed: {0}")]
    Certificate(&'static str),
}

/// The body of the first PEM block labelled `label`.
pub fn pem_decode(pem: &str, label: &'static str) -> Result<Vec<u8>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or(KeyError::NoPem(label))? + begin.len();
    let stop = pem[start..].find(&end).ok_or(KeyError::NoPem(label))? + start;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    B64.decode(body).map_err(|_| KeyError::Base64)
}

/// The merchant's API private key (`apiclient_key.pem`): signs requests and `paySign`.
///
/// `Debug` shows no key material.
pub struct MerchantKey {
    pair: RsaKeyPair,
    rng: SystemRandom,
}

impl MerchantKey {
    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as WeChat's certificate tool writes it.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            return Err(KeyError::Pkcs1);
        }
        let der = pem_decode(pem, "PRIVATE KEY")?;
        let pair = RsaKeyPair::from_pkcs8(&der).map_err(|e| KeyError::Rejected(e.to_string()))?;
        let bits = pair.public_modulus_len() * 8;
        if !(2048..=8192).contains(&bits) {
            return Err(KeyError::Rejected(format!("{bits} bits")));
        }
        Ok(Self {
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// Base64 of the SHA256withRSA (PKCS#1 v1.5) signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
            // Fails only when the buffer has the wrong length, which it cannot have here.
            .expect("RSA signing with a modulus-sized buffer");
        B64.encode(sig)
    }
}

impl fmt::Debug for MerchantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MerchantKey(<redacted>)")
    }
}

/// One of WeChat Pay's RSA public keys, parsed once.
#[derive(Clone)]
pub struct PublicKey {
    key: signature::ParsedPublicKey,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.as_ref() == other.key.as_ref()
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Reads `-----BEGIN PUBLIC KEY-----` (the `pub_key.pem` of public-key mode).
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        Self::from_spki_der(pem_decode(pem, "PUBLIC KEY")?)
    }

    /// Takes a DER SubjectPublicKeyInfo, checking it is an RSA key of an acceptable size.
    pub fn from_spki_der(spki: Vec<u8>) -> Result<Self, KeyError> {
        let key = signature::ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, spki)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        Ok(Self { key })
    }

    /// The public key of a platform certificate (`-----BEGIN CERTIFICATE-----`).
    pub fn from_certificate_pem(pem: &str) -> Result<Self, KeyError> {
        Self::from_certificate_der(&pem_decode(pem, "CERTIFICATE")?)
    }

    /// The public key of a DER X.509 certificate.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, KeyError> {
        Self::from_spki_der(certificate_spki(der)?.to_vec())
    }

    /// A sensitive request field sealed for WeChat (敏感信息加密: RSAES-OAEP, SHA-1 and
    /// MGF1-SHA-1, under WeChat's public key or a platform certificate's; the request then
    /// names that key in `Wechatpay-Serial`), base64. E.g. `bank_account` and `real_name` of
    /// 发起异常退款 (<https://pay.weixin.qq.com/docs/merchant/apis/refund/refunds/create-abnormal-refund.html>:
    /// "该字段需要使用微信支付公钥加密").
    pub fn encrypt_sensitive(&self, plain: &[u8]) -> Result<String, KeyError> {
        use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
        use base64::Engine as _;
        let key = PublicEncryptingKey::from_der(self.key.as_ref())
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        let key = OaepPublicEncryptingKey::new(key)
            .map_err(|_| KeyError::Rejected("not an RSA encryption key".into()))?;
        let mut out = vec![0u8; key.ciphertext_size()];
        let sealed = key
            .encrypt(&OAEP_SHA1_MGF1SHA1, plain, &mut out, None)
            .map_err(|_| KeyError::Rejected("plaintext too long for the key".into()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    /// Whether `signature_b64` is this key's SHA256withRSA signature of `message`.
    pub fn verify(&self, message: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = B64.decode(signature_b64.trim()) else {
            return false;
        };
        self.key.verify_sig(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bytes)", self.key.as_ref().len())
    }
}

/// One DER TLV: (tag, contents, rest).
fn der_next(input: &[u8]) -> Result<(u8, &[u8], &[u8]), KeyError> {
    let bad = KeyError::Certificate("truncated TLV");
    let (&tag, rest) = input.split_first().ok_or(bad.clone())?;
    let (&first, mut rest) = rest.split_first().ok_or(bad.clone())?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(KeyError::Certificate("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(bad);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The SubjectPublicKeyInfo (with its SEQUENCE header) of an X.509 certificate:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }` (RFC 5280 §4.1).
fn certificate_spki(der: &[u8]) -> Result<&[u8], KeyError> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = der_next(der)?;
    if tag != SEQUENCE {
        return Err(KeyError::Certificate("not a SEQUENCE"));
    }
    let (tag, tbs, _) = der_next(cert)?;
    if tag != SEQUENCE {
        return Err(KeyError::Certificate("tbsCertificate is not a SEQUENCE"));
    }
    let mut rest = tbs;
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = der_next(rest)?.2;
    }
    let (tag, _, after) = der_next(rest)?;
    if tag != SEQUENCE {
        return Err(KeyError::Certificate(
            "subjectPublicKeyInfo is not a SEQUENCE",
        ));
    }
    Ok(&rest[..rest.len() - after.len()])
}
