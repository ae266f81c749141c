//! Pay v3: which API new orders use, and the v3 keys (read and checked at start).

use service_kit::Secret;

/// Which WeChat Pay API new orders are placed with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PayApi {
    /// XML, MD5/HMAC-SHA256 with the v2 key.
    #[default]
    V2,
    /// JSON, RSA signatures, AES-256-GCM notifies.
    V3,
}

impl PayApi {
    /// As stored in `orders.api`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }
}

/// The Pay v3 settings, used whenever the merchant's v3 key is given (`WXMP_PAY_API` only
/// picks the API of new orders: a service switched back to v2 keeps serving its v3 orders
/// while they are set; see [`PayV3Config::configured`]), and required with `WXMP_PAY_API=v3`.
///
/// WeChat Pay's keys: the public key (`WXMP_PAY_PUBLIC_KEY_PATH` + `WXMP_PAY_PUBLIC_KEY_ID`,
/// comma-separated lists for WeChat's own key rotation, the first being the one requests name),
/// platform certificates downloaded from `/v3/certificates`, or both at once while WeChat moves
/// the merchant from certificates to the public key (`WXMP_PAY_PLATFORM_CERTIFICATES=true` with
/// the public key set: every message is verified with the key its `Wechatpay-Serial` names).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PayV3Config {
    /// `v2` or `v3`: the API new orders are placed with (orders keep the API that placed them).
    #[arg(long = "pay-api", env = "WXMP_PAY_API", value_name = "WXMP_PAY_API", value_enum, default_value_t = PayApi::V2)]
    pub api: PayApi,
    /// The APIv3 key (32 characters): decrypts notifies and certificates.
    #[arg(
        long = "pay-v3-key",
        env = "WXMP_PAY_V3_KEY",
        value_name = "WXMP_PAY_V3_KEY",
        hide_env_values = true
    )]
    pub v3_key: Option<Secret>,
    /// PKCS#8 PEM of the merchant API private key (`apiclient_key.pem`).
    #[arg(
        long = "pay-private-key-path",
        env = "WXMP_PAY_PRIVATE_KEY_PATH",
        value_name = "WXMP_PAY_PRIVATE_KEY_PATH"
    )]
    pub private_key_path: Option<std::path::PathBuf>,
    /// Serial number of the merchant API certificate.
    #[arg(
        long = "pay-cert-serial",
        env = "WXMP_PAY_CERT_SERIAL",
        value_name = "WXMP_PAY_CERT_SERIAL"
    )]
    pub cert_serial: Option<String>,
    /// PEM of WeChat Pay's public key (public-key mode).
    #[arg(
        long = "pay-public-key-path",
        env = "WXMP_PAY_PUBLIC_KEY_PATH",
        value_name = "WXMP_PAY_PUBLIC_KEY_PATH"
    )]
    pub public_key_path: Option<std::path::PathBuf>,
    /// Its id, `PUB_KEY_ID_…` (public-key mode).
    #[arg(
        long = "pay-public-key-id",
        env = "WXMP_PAY_PUBLIC_KEY_ID",
        value_name = "WXMP_PAY_PUBLIC_KEY_ID"
    )]
    pub public_key_id: Option<String>,
    /// Download platform certificates from `/v3/certificates` and verify with them. Unset: only
    /// when no public key is set. `true` with a public key: both, for WeChat's switch from
    /// certificates to the public key (README, "Moving Pay v3 to the public key").
    #[arg(
        long = "pay-platform-certificates",
        env = "WXMP_PAY_PLATFORM_CERTIFICATES",
        value_name = "WXMP_PAY_PLATFORM_CERTIFICATES"
    )]
    pub platform_certificates: Option<bool>,
    /// How long a call or notify waits for a certificate download when no key to verify with
    /// is held yet, in milliseconds (with keys in hand, downloads never hold anything up).
    #[arg(long = "pay-certificate-wait-ms", env = "WXMP_PAY_CERTIFICATE_WAIT_MS", value_name = "WXMP_PAY_CERTIFICATE_WAIT_MS",
          default_value_t = DEFAULT_CERTIFICATE_WAIT_MS, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub certificate_wait_ms: u64,
}

/// Default of `WXMP_PAY_CERTIFICATE_WAIT_MS`.
pub const DEFAULT_CERTIFICATE_WAIT_MS: u64 = 3000;

/// Everything v3 needs, read and checked.
pub struct PayV3Settings {
    pub apiv3_key: wechat::pay::v3::ApiV3Key,
    pub merchant_key: wechat::pay::v3::MerchantKey,
    pub cert_serial: String,
    /// WeChat Pay's public keys by id, the first the one requests name; empty: certificates only.
    pub public_keys: Vec<(String, wechat::pay::v3::PublicKey)>,
    /// Whether platform certificates are downloaded and trusted too.
    pub platform_certificates: bool,
}

impl PayV3Settings {
    /// The keys to verify WeChat's answers and notifies with.
    pub fn platform_keys(&self) -> wechat::pay::v3::PlatformKeys {
        use wechat::pay::v3::PlatformKeys;
        let mut keys = self.public_keys.iter();
        let mut platform = match keys.next() {
            None => return PlatformKeys::certificate_mode(),
            Some((id, key)) if self.platform_certificates => {
                PlatformKeys::public_key_and_certificates(id.clone(), key.clone())
            }
            Some((id, key)) => PlatformKeys::public_key_mode(id.clone(), key.clone()),
        };
        for (id, key) in keys {
            platform = platform.with_public_key(id.clone(), key.clone());
        }
        platform
    }
}

impl PayV3Config {
    /// True when v3 is to be built: with `WXMP_PAY_API=v3`, or whenever the merchant's v3
    /// signing key (`WXMP_PAY_PRIVATE_KEY_PATH`) is given, whatever `WXMP_PAY_API` says; then
    /// every v3 setting must be valid. (The APIv3 key alone, e.g. an optional Secret key, does
    /// not turn v3 on.)
    pub fn configured(&self) -> bool {
        self.api == PayApi::V3 || self.private_key_path.is_some()
    }

    /// Reads the key files and checks every piece, naming the variable at fault. Never
    /// includes key material in the message.
    pub fn load(&self) -> Result<PayV3Settings, String> {
        use wechat::pay::v3::{ApiV3Key, MerchantKey};
        let apiv3_key = self.v3_key.as_ref().filter(|k| !k.is_empty()).ok_or(
            "WXMP_PAY_V3_KEY is required with WXMP_PAY_API=v3 or WXMP_PAY_PRIVATE_KEY_PATH",
        )?;
        let apiv3_key =
            ApiV3Key::new(apiv3_key.expose()).map_err(|e| format!("WXMP_PAY_V3_KEY: {e}"))?;
        let path = self
            .private_key_path
            .as_ref()
            .ok_or("WXMP_PAY_PRIVATE_KEY_PATH is required with WXMP_PAY_API=v3")?;
        let pem = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "WXMP_PAY_PRIVATE_KEY_PATH: cannot read {}: {e}",
                path.display()
            )
        })?;
        let merchant_key = MerchantKey::from_pkcs8_pem(&pem)
            .map_err(|e| format!("WXMP_PAY_PRIVATE_KEY_PATH: {e}"))?;
        let cert_serial = self
            .cert_serial
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or("WXMP_PAY_CERT_SERIAL is required with WXMP_PAY_API=v3 or WXMP_PAY_PRIVATE_KEY_PATH")?;
        if !cert_serial.bytes().all(|b| b.is_ascii_hexdigit()) || cert_serial.len() > 64 {
            return Err("WXMP_PAY_CERT_SERIAL must be the certificate's hex serial".into());
        }
        let public_keys = self.public_keys()?;
        if self.platform_certificates == Some(false) && public_keys.is_empty() {
            return Err("WXMP_PAY_PLATFORM_CERTIFICATES=false needs WXMP_PAY_PUBLIC_KEY_PATH and WXMP_PAY_PUBLIC_KEY_ID: nothing would verify WeChat".into());
        }
        Ok(PayV3Settings {
            apiv3_key,
            merchant_key,
            cert_serial: cert_serial.to_owned(),
            platform_certificates: self.platform_certificates.unwrap_or(public_keys.is_empty()),
            public_keys,
        })
    }

    /// `WXMP_PAY_PUBLIC_KEY_PATH` and `WXMP_PAY_PUBLIC_KEY_ID`, as comma-separated lists of the
    /// same length (one id per key file), read and checked.
    fn public_keys(&self) -> Result<Vec<(String, wechat::pay::v3::PublicKey)>, String> {
        use wechat::pay::v3::PublicKey;
        let list = |v: Option<&str>| -> Vec<String> {
            v.into_iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let paths = list(
            self.public_key_path
                .as_ref()
                .map(|p| p.to_string_lossy())
                .as_deref(),
        );
        let ids = list(self.public_key_id.as_deref());
        match (paths.is_empty(), ids.is_empty()) {
            (true, true) => return Ok(Vec::new()),
            (false, true) => {
                return Err(
                    "WXMP_PAY_PUBLIC_KEY_ID is required with WXMP_PAY_PUBLIC_KEY_PATH".into(),
                );
            }
            (true, false) => {
                return Err(
                    "WXMP_PAY_PUBLIC_KEY_PATH is required with WXMP_PAY_PUBLIC_KEY_ID".into(),
                );
            }
            (false, false) if paths.len() != ids.len() => {
                return Err(format!(
                    "WXMP_PAY_PUBLIC_KEY_PATH names {} key files and WXMP_PAY_PUBLIC_KEY_ID {} ids: one id per file, in the same order",
                    paths.len(),
                    ids.len()
                ));
            }
            (false, false) => {}
        }
        let mut keys = Vec::with_capacity(ids.len());
        for (path, id) in paths.iter().zip(ids) {
            if !id.starts_with("PUB_KEY_ID_") {
                return Err("WXMP_PAY_PUBLIC_KEY_ID must start with PUB_KEY_ID_".into());
            }
            if keys.iter().any(|(held, _)| *held == id) {
                return Err(format!("WXMP_PAY_PUBLIC_KEY_ID names {id} twice"));
            }
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("WXMP_PAY_PUBLIC_KEY_PATH: cannot read {path}: {e}"))?;
            let key = PublicKey::from_spki_pem(&pem)
                .map_err(|e| format!("WXMP_PAY_PUBLIC_KEY_PATH: {e}"))?;
            keys.push((id, key));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_pieces_are_each_a_start_up_error_naming_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("merchant_key.pem");
        std::fs::write(&key_path, sandbox::v3::dev::MERCHANT_PRIVATE_KEY).unwrap();
        let pub_path = dir.path().join("pub.pem");
        std::fs::write(&pub_path, sandbox::v3::dev::WECHATPAY_PUBLIC_KEY).unwrap();
        let pkcs1_path = dir.path().join("pkcs1.pem");
        std::fs::write(
            &pkcs1_path,
            "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let good = PayV3Config {
            api: PayApi::V3,
            v3_key: Some(Secret::new(sandbox::v3::dev::APIV3_KEY)),
            private_key_path: Some(key_path.clone()),
            cert_serial: Some(sandbox::v3::dev::MERCHANT_SERIAL.into()),
            public_key_path: Some(pub_path.clone()),
            public_key_id: Some(sandbox::v3::dev::PUBLIC_KEY_ID.into()),
            platform_certificates: None,
            certificate_wait_ms: DEFAULT_CERTIFICATE_WAIT_MS,
        };
        assert_eq!(good.load().unwrap().public_keys.len(), 1);
        assert!(!good.load().unwrap().platform_certificates);
        let certificate_mode = PayV3Config {
            public_key_path: None,
            public_key_id: None,
            ..good.clone()
        };
        assert!(certificate_mode.load().unwrap().public_keys.is_empty());
        assert!(certificate_mode.load().unwrap().platform_certificates);
        let cases: Vec<(PayV3Config, &str)> = vec![
            (
                PayV3Config {
                    v3_key: None,
                    ..good.clone()
                },
                "WXMP_PAY_V3_KEY",
            ),
            (
                PayV3Config {
                    v3_key: Some(Secret::new("short")),
                    ..good.clone()
                },
                "WXMP_PAY_V3_KEY",
            ),
            (
                PayV3Config {
                    private_key_path: None,
                    ..good.clone()
                },
                "WXMP_PAY_PRIVATE_KEY_PATH",
            ),
            (
                PayV3Config {
                    private_key_path: Some(dir.path().join("missing.pem")),
                    ..good.clone()
                },
                "WXMP_PAY_PRIVATE_KEY_PATH",
            ),
            (
                PayV3Config {
                    private_key_path: Some(pkcs1_path),
                    ..good.clone()
                },
                "WXMP_PAY_PRIVATE_KEY_PATH",
            ),
            (
                PayV3Config {
                    private_key_path: Some(pub_path.clone()),
                    ..good.clone()
                },
                "WXMP_PAY_PRIVATE_KEY_PATH",
            ),
            (
                PayV3Config {
                    cert_serial: None,
                    ..good.clone()
                },
                "WXMP_PAY_CERT_SERIAL",
            ),
            (
                PayV3Config {
                    cert_serial: Some("not hex!".into()),
                    ..good.clone()
                },
                "WXMP_PAY_CERT_SERIAL",
            ),
            (
                PayV3Config {
                    public_key_id: None,
                    ..good.clone()
                },
                "WXMP_PAY_PUBLIC_KEY_ID",
            ),
            (
                PayV3Config {
                    public_key_path: None,
                    ..good.clone()
                },
                "WXMP_PAY_PUBLIC_KEY_PATH",
            ),
            (
                PayV3Config {
                    public_key_id: Some("KEY1".into()),
                    ..good.clone()
                },
                "WXMP_PAY_PUBLIC_KEY_ID",
            ),
            (
                PayV3Config {
                    public_key_path: Some(key_path),
                    ..good.clone()
                },
                "WXMP_PAY_PUBLIC_KEY_PATH",
            ),
        ];
        for (config, variable) in cases {
            let Err(err) = config.load() else {
                panic!("{variable}: accepted");
            };
            assert!(err.starts_with(variable), "{variable}: {err}");
            assert!(!err.contains("MII"), "no key material: {err}");
        }
    }
}
