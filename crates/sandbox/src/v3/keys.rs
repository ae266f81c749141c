//! The sandbox's v3 identities: its built-in (dev/test-only) keys, which key signs now, and the
//! merchant's public key it verifies requests with.

use serde::{Deserialize, Serialize};

use crate::v3::crypto::Signer;

/// DEV/TEST-ONLY keys (see `crates/sandbox/devkeys/README.md`): public on purpose, so that
/// `wxmp up` and the tests run offline. Never use them with real WeChat Pay.
pub mod dev {
    /// The dev merchant's API private key (what `WXMP_PAY_PRIVATE_KEY_PATH` points to in dev).
    pub const MERCHANT_PRIVATE_KEY: &str = include_str!("../../devkeys/merchant_key.pem");
    /// Its public half: what the sandbox verifies merchant requests with by default.
    pub const MERCHANT_PUBLIC_KEY: &str = include_str!("../../devkeys/merchant_pub.pem");
    /// The serial of the dev merchant API certificate (`WXMP_PAY_CERT_SERIAL`).
    pub const MERCHANT_SERIAL: &str = "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C";
    /// The dev APIv3 key (`WXMP_PAY_V3_KEY`), 32 characters.
    pub const APIV3_KEY: &str = "devapiv3key00000000000000000v3ky";
    /// WeChat Pay's public key in public-key mode (`WXMP_PAY_PUBLIC_KEY_PATH`) and its id.
    pub const WECHATPAY_PUBLIC_KEY: &str = include_str!("../../devkeys/wechatpay_pub.pem");
    pub const PUBLIC_KEY_ID: &str = "PUB_KEY_ID_0119000001092026120100000000000001";
    /// WeChat Pay's private key of public-key mode: what signs answers and notifies (public so
    /// that tests can write a WeChat notify of their own, e.g. a mismatched one).
    pub const WECHATPAY_PRIVATE_KEY: &str = include_str!("../../devkeys/wechatpay_pub_key.pem");
    /// Platform certificate A (the first one) and B (after a rotation).
    pub const PLATFORM_A_SERIAL: &str = "3A1F0C5E7B2D4A6C8E0F1A2B3C4D5E6F70819203";
    pub const PLATFORM_B_SERIAL: &str = "4B2E1D6F8C3E5B7D9F1A2B3C4D5E6F7081920314";
    pub(crate) const PLATFORM_A_CERT: &str = include_str!("../../devkeys/platform_a_cert.pem");
    pub(crate) const PLATFORM_B_CERT: &str = include_str!("../../devkeys/platform_b_cert.pem");
    pub(crate) const PLATFORM_A_KEY: &str = include_str!("../../devkeys/platform_a_key.pem");
    pub(crate) const PLATFORM_B_KEY: &str = include_str!("../../devkeys/platform_b_key.pem");
}

/// How WeChat Pay signs for this merchant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `Wechatpay-Serial: PUB_KEY_ID_…`, one public key the merchant downloads by hand.
    #[default]
    PublicKey,
    /// Platform certificates, listed (encrypted) by `/v3/certificates`.
    Certificate,
}

/// The signing keys WeChat owns in the sandbox.
pub struct Signers {
    public_key: Signer,
    platform_a: Signer,
    platform_b: Signer,
    /// Signs "bad signature" faults: a valid RSA signature by a key WeChat never published.
    stranger: Signer,
}

impl Signers {
    pub fn built_in() -> Self {
        let load = |pem| Signer::from_pem(pem).expect("built-in sandbox key");
        Self {
            public_key: load(dev::WECHATPAY_PRIVATE_KEY),
            platform_a: load(dev::PLATFORM_A_KEY),
            platform_b: load(dev::PLATFORM_B_KEY),
            stranger: load(dev::MERCHANT_PRIVATE_KEY),
        }
    }

    /// The serial and key WeChat signs with now.
    pub fn current(&self, mode: Mode, rotated: bool) -> (&'static str, &Signer) {
        match (mode, rotated) {
            (Mode::PublicKey, _) => (dev::PUBLIC_KEY_ID, &self.public_key),
            (Mode::Certificate, false) => (dev::PLATFORM_A_SERIAL, &self.platform_a),
            (Mode::Certificate, true) => (dev::PLATFORM_B_SERIAL, &self.platform_b),
        }
    }

    pub fn stranger(&self) -> &Signer {
        &self.stranger
    }
}

/// The certificates `/v3/certificates` lists: A, and B too once rotated (both stay valid
/// during the overlap, as WeChat's rotation notice promises).
pub fn listed_certificates(rotated: bool) -> Vec<(&'static str, &'static str)> {
    let mut certs = vec![(dev::PLATFORM_A_SERIAL, dev::PLATFORM_A_CERT)];
    if rotated {
        certs.push((dev::PLATFORM_B_SERIAL, dev::PLATFORM_B_CERT));
    }
    certs
}
