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
    /// The merchant's move from certificates to the public key (平台证书切换微信支付公钥), with the
    /// switch turned on in the merchant platform. As WeChat Pay's support describes it: callbacks
    /// are signed with the public key at a share WeChat raises daily (0.1 % → 1 % → 5 % → 10 % →
    /// 20 % → 50 % → 100 % over seven days; here `SANDBOX_PAY_V3_PUBLIC_KEY_SHARE`), the rest with
    /// the platform certificate, picked per callback; an API answer is signed with the key the
    /// request's `Wechatpay-Serial` named (the public key for `PUB_KEY_ID_…`, the certificate for
    /// anything else or nothing), "应答场景是跟商户请求时的wechatpay-serial保持一致,但回调场景是随机的"
    /// (developers.weixin.qq.com/community/develop/doc/0004e8c40b09182972936db6d69400,
    /// …/community/pay/doc/000a4e6c9a00209af2335313c61400; pay.weixin.qq.com/doc/v3/merchant/4012154180).
    /// `/v3/certificates` still lists the certificates.
    Migration,
}

impl Mode {
    /// Whether `/v3/certificates` lists certificates.
    pub fn lists_certificates(self) -> bool {
        matches!(self, Mode::Certificate | Mode::Migration)
    }
}

/// Which key signs one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// An API answer; `named_public_key`: the request's `Wechatpay-Serial` was the public key id.
    Answer { named_public_key: bool },
    /// A callback; `public_key_draw`: true for the share of callbacks signed with the public key
    /// (drawn per callback by the caller).
    Notify { public_key_draw: bool },
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

    /// The serial and key WeChat signs with now (in migration mode: the certificate, what a
    /// message gets unless the public key is picked for it).
    pub fn current(&self, mode: Mode, rotated: bool) -> (&'static str, &Signer) {
        match (mode, rotated) {
            (Mode::PublicKey, _) => self.public_key(),
            (Mode::Certificate | Mode::Migration, false) => {
                (dev::PLATFORM_A_SERIAL, &self.platform_a)
            }
            (Mode::Certificate | Mode::Migration, true) => {
                (dev::PLATFORM_B_SERIAL, &self.platform_b)
            }
        }
    }

    /// The serial and key that sign one message of `use_` (see [`Mode::Migration`]).
    pub fn for_use(&self, mode: Mode, rotated: bool, use_: Use) -> (&'static str, &Signer) {
        let public = match use_ {
            Use::Answer { named_public_key } => named_public_key,
            Use::Notify { public_key_draw } => public_key_draw,
        };
        if mode == Mode::Migration && public {
            self.public_key()
        } else {
            self.current(mode, rotated)
        }
    }

    fn public_key(&self) -> (&'static str, &Signer) {
        (dev::PUBLIC_KEY_ID, &self.public_key)
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
