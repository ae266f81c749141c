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
/// while they are set; see [`PayV3Config::configured`]), and required with `WXMP_PAY_API=v3`. WeChat Pay's key is either the public key of
/// public-key mode (`WXMP_PAY_PUBLIC_KEY_PATH` + `WXMP_PAY_PUBLIC_KEY_ID`) or, when neither is
/// set, platform certificates downloaded from `/v3/certificates` (certificate mode).
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
}

/// Everything v3 needs, read and checked.
pub struct PayV3Settings {
    pub apiv3_key: wechat::pay::v3::ApiV3Key,
    pub merchant_key: wechat::pay::v3::MerchantKey,
    pub cert_serial: String,
    /// `None`: certificate mode.
    pub public_key: Option<(String, wechat::pay::v3::PublicKey)>,
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
        use wechat::pay::v3::{ApiV3Key, MerchantKey, PublicKey};
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
        let public_key = match (&self.public_key_path, &self.public_key_id) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    "WXMP_PAY_PUBLIC_KEY_ID is required with WXMP_PAY_PUBLIC_KEY_PATH".into(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "WXMP_PAY_PUBLIC_KEY_PATH is required with WXMP_PAY_PUBLIC_KEY_ID".into(),
                );
            }
            (Some(path), Some(id)) => {
                if !id.starts_with("PUB_KEY_ID_") {
                    return Err("WXMP_PAY_PUBLIC_KEY_ID must start with PUB_KEY_ID_".into());
                }
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "WXMP_PAY_PUBLIC_KEY_PATH: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                let key = PublicKey::from_spki_pem(&pem)
                    .map_err(|e| format!("WXMP_PAY_PUBLIC_KEY_PATH: {e}"))?;
                Some((id.clone(), key))
            }
        };
        Ok(PayV3Settings {
            apiv3_key,
            merchant_key,
            cert_serial: cert_serial.to_owned(),
            public_key,
        })
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
        };
        assert!(good.load().unwrap().public_key.is_some());
        let certificate_mode = PayV3Config {
            public_key_path: None,
            public_key_id: None,
            ..good.clone()
        };
        assert!(certificate_mode.load().unwrap().public_key.is_none());
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
