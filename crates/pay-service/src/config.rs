//! `wxmp-pay`'s configuration: environment variables, validated at start.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use service_kit::{
    Secret,
    grpc::{DrainConfig, InternalAuthConfig},
    telemetry::TelemetryConfig,
};
use wechat::SignType;

use crate::orders::{MAX_AMOUNT_FEN, MAX_DESCRIPTION_BYTES};

/// Default of `PAY_PRODUCT_REUSE_SECS`.
pub const DEFAULT_PRODUCT_REUSE_SECS: u64 = 60;
/// Default of `PAY_NOTIFY_RETENTION_DAYS`.
pub const DEFAULT_NOTIFY_RETENTION_DAYS: u64 = 90;
/// Default of `PAY_RECONCILE_LEASE_SECS`.
pub const DEFAULT_RECONCILE_LEASE_SECS: u64 = 120;

/// Everything `wxmp-pay` reads at start.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "wxmp-pay",
    about = "wxmp pay-service: orders and WeChat Pay v2 (JSAPI)"
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(
        long,
        env = "PAY_LISTEN_ADDR",
        value_name = "PAY_LISTEN_ADDR",
        default_value = "0.0.0.0:50053"
    )]
    pub listen_addr: SocketAddr,

    /// postgres://... or sqlite://path (the URL may hold a password: never logged).
    #[arg(
        long,
        env = "PAY_DATABASE_URL",
        value_name = "PAY_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Secret,

    /// Most database connections held open.
    #[arg(
        long,
        env = "PAY_DB_POOL_SIZE",
        value_name = "PAY_DB_POOL_SIZE",
        default_value_t = 16
    )]
    pub db_pool_size: usize,

    /// Where WeChat posts payment notifies (the gateway's /pay/notify), http(s) without a query.
    #[arg(long, env = "PAY_NOTIFY_URL", value_name = "PAY_NOTIFY_URL")]
    pub notify_url: String,

    /// Product catalog, `id:price_fen:name;id:price_fen:name` (may be empty).
    #[arg(
        long,
        env = "PAY_PRODUCTS",
        value_name = "PAY_PRODUCTS",
        default_value = ""
    )]
    pub products: Catalog,

    /// Lifetime of an unpaid order; sent to WeChat as time_expire.
    #[arg(
        long,
        env = "PAY_ORDER_TTL_SECS",
        value_name = "PAY_ORDER_TTL_SECS",
        default_value_t = 1800
    )]
    pub order_ttl_secs: u64,

    /// How often the reconciler runs.
    #[arg(
        long,
        env = "PAY_RECONCILE_INTERVAL_SECS",
        value_name = "PAY_RECONCILE_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub reconcile_interval_secs: u64,

    /// How long a PAYING order waits for its notify before the reconciler asks WeChat.
    #[arg(
        long,
        env = "PAY_RECONCILE_AFTER_SECS",
        value_name = "PAY_RECONCILE_AFTER_SECS",
        default_value_t = 60
    )]
    pub reconcile_after_secs: u64,

    /// POST /pay/ of a product without an idempotency key answers the caller's open order of
    /// the same product made within this many seconds, instead of a new order (a double tap
    /// buys once). 0 turns the reuse off.
    #[arg(
        long,
        env = "PAY_PRODUCT_REUSE_SECS",
        value_name = "PAY_PRODUCT_REUSE_SECS",
        default_value_t = DEFAULT_PRODUCT_REUSE_SECS
    )]
    pub product_reuse_secs: u64,

    /// Stored notifies older than this many days are deleted by the reconciler. 0 keeps them.
    #[arg(
        long,
        env = "PAY_NOTIFY_RETENTION_DAYS",
        value_name = "PAY_NOTIFY_RETENTION_DAYS",
        default_value_t = DEFAULT_NOTIFY_RETENTION_DAYS
    )]
    pub notify_retention_days: u64,
    /// How long a reconciler replica's claim on an order lasts: longer than a WeChat call or
    /// two can take. A replica that dies mid-way leaves its orders to the others after this.
    #[arg(long, env = "PAY_RECONCILE_LEASE_SECS", value_name = "PAY_RECONCILE_LEASE_SECS", default_value_t = DEFAULT_RECONCILE_LEASE_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconcile_lease_secs: u64,

    /// The merchant id (mch_id).
    #[arg(long, env = "WXMP_PAY_MCH_ID", value_name = "WXMP_PAY_MCH_ID")]
    pub mch_id: String,

    /// The merchant's API v2 key (required with `WXMP_PAY_API=v2`).
    #[arg(
        long,
        env = "WXMP_PAY_KEY",
        value_name = "WXMP_PAY_KEY",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub pay_key: Secret,

    /// MD5 or HMAC-SHA256.
    #[arg(
        long,
        env = "WXMP_PAY_SIGN_TYPE",
        value_name = "WXMP_PAY_SIGN_TYPE",
        default_value = "MD5"
    )]
    pub sign_type: String,

    /// WeChat Pay's base URL (the sandbox's in development).
    #[arg(long, env = "WXMP_WECHAT_PAY_BASE", value_name = "WXMP_WECHAT_PAY_BASE", default_value = wechat::config::DEFAULT_PAY_BASE)]
    pub wechat_pay_base: String,

    /// Timeout of one WeChat Pay request.
    #[arg(
        long,
        env = "WXMP_WECHAT_TIMEOUT_MS",
        value_name = "WXMP_WECHAT_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub wechat_timeout_ms: u64,

    #[command(flatten)]
    pub events: EventsConfig,

    #[command(flatten)]
    pub paid_message: crate::subscribe::PaidMessageConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    #[command(flatten)]
    pub internal: InternalAuthConfig,

    #[command(flatten)]
    pub drain: DrainConfig,

    #[command(flatten)]
    pub refunds: RefundConfig,

    #[command(flatten)]
    pub v3: PayV3Config,
}

/// Refunds (issue 12). v2 refunds are on when the merchant certificate is configured; v3
/// refunds need only the v3 settings ([`PayV3Config`]).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RefundConfig {
    /// The merchant's API certificate (apiclient_cert.pem) for secapi/pay/refund. Setting it
    /// (or the key) turns refunds on.
    #[arg(long, env = "WXMP_PAY_CERT_PATH", value_name = "WXMP_PAY_CERT_PATH")]
    pub cert_path: Option<PathBuf>,

    /// The certificate's private key (apiclient_key.pem).
    #[arg(
        long,
        env = "WXMP_PAY_CERT_KEY_PATH",
        value_name = "WXMP_PAY_CERT_KEY_PATH"
    )]
    pub cert_key_path: Option<PathBuf>,

    /// Where WeChat posts refund notifies: the gateway's /pay/refund-notify (v2); v3 refunds
    /// are sent with this + `/v3` (/pay/refund-notify/v3). Required with v2 refunds; optional
    /// on v3 (unset: the merchant platform's setting, and the reconciler's query settles).
    #[arg(
        long,
        env = "PAY_REFUND_NOTIFY_URL",
        value_name = "PAY_REFUND_NOTIFY_URL"
    )]
    pub refund_notify_url: Option<String>,

    /// Base URL of the mutual-TLS secapi calls; default WXMP_WECHAT_PAY_BASE (the sandbox
    /// serves them on its own HTTPS port).
    #[arg(
        long,
        env = "WXMP_WECHAT_PAY_SECAPI_BASE",
        value_name = "WXMP_WECHAT_PAY_SECAPI_BASE"
    )]
    pub secapi_base: Option<String>,

    /// PEM CA to trust instead of the system roots for the secapi server (the sandbox's dev
    /// CA); unset for WeChat.
    #[arg(
        long,
        env = "WXMP_WECHAT_PAY_CA_PATH",
        value_name = "WXMP_WECHAT_PAY_CA_PATH"
    )]
    pub ca_path: Option<PathBuf>,
}

impl RefundConfig {
    /// True when refunds are configured.
    pub fn enabled(&self) -> bool {
        self.cert_path.is_some() || self.cert_key_path.is_some()
    }

    /// Checks what clap cannot, naming the variable at fault (the files are read by
    /// [`RefundConfig::merchant_cert`]).
    pub fn validate(&self) -> Result<(), String> {
        // Also without v2 refunds: v3 refunds carry it (+ `/v3`).
        if let Some(url) = &self.refund_notify_url {
            validate_notify_url(url)
                .map_err(|e| e.replace("PAY_NOTIFY_URL", "PAY_REFUND_NOTIFY_URL"))?;
        }
        if !self.enabled() {
            return Ok(());
        }
        if self.cert_path.is_none() {
            return Err("WXMP_PAY_CERT_PATH must be set when WXMP_PAY_CERT_KEY_PATH is".into());
        }
        if self.cert_key_path.is_none() {
            return Err("WXMP_PAY_CERT_KEY_PATH must be set when WXMP_PAY_CERT_PATH is".into());
        }
        match &self.refund_notify_url {
            None => {
                return Err(
                    "PAY_REFUND_NOTIFY_URL must be set when refunds are on (WXMP_PAY_CERT_PATH)"
                        .into(),
                );
            }
            Some(url) => validate_notify_url(url)
                .map_err(|e| e.replace("PAY_NOTIFY_URL", "PAY_REFUND_NOTIFY_URL"))?,
        }
        if let Some(base) = &self.secapi_base
            && !(base.starts_with("https://") || base.starts_with("http://"))
        {
            return Err("WXMP_WECHAT_PAY_SECAPI_BASE must be an http(s) URL".into());
        }
        Ok(())
    }

    /// Reads the certificate, key and CA files: a missing or unreadable one is an error naming
    /// its variable. `None` when refunds are off.
    pub fn merchant_cert(&self) -> Result<Option<wechat::MerchantCert>, String> {
        if !self.enabled() {
            return Ok(None);
        }
        self.validate()?;
        let read = |var: &str, path: &Option<PathBuf>| -> Result<Vec<u8>, String> {
            let path = path.as_ref().ok_or_else(|| format!("{var} must be set"))?;
            let bytes = std::fs::read(path)
                .map_err(|e| format!("{var}: cannot read {}: {e}", path.display()))?;
            if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(format!("{var}: {} is not a PEM file", path.display()));
            }
            Ok(bytes)
        };
        let cert_pem = read("WXMP_PAY_CERT_PATH", &self.cert_path)?;
        let key_pem = read("WXMP_PAY_CERT_KEY_PATH", &self.cert_key_path)?;
        let ca_pem = match &self.ca_path {
            Some(_) => Some(read("WXMP_WECHAT_PAY_CA_PATH", &self.ca_path)?),
            None => None,
        };
        Ok(Some(wechat::MerchantCert {
            cert_pem,
            key_pem,
            secapi_base: self.secapi_base.clone(),
            ca_pem,
        }))
    }
}

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

impl Config {
    /// Checks what clap cannot, naming the variable at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.database_url.expose().trim().is_empty() {
            return Err("PAY_DATABASE_URL must not be empty".into());
        }
        if self.db_pool_size == 0 {
            return Err("PAY_DB_POOL_SIZE must be > 0".into());
        }
        validate_notify_url(&self.notify_url)?;
        // WeChat wants time_expire at least 5 minutes ahead when the order is placed.
        if !(360..=30 * 86_400).contains(&self.order_ttl_secs) {
            return Err("PAY_ORDER_TTL_SECS must be between 360 and 2592000".into());
        }
        if self.reconcile_interval_secs == 0 {
            return Err("PAY_RECONCILE_INTERVAL_SECS must be > 0".into());
        }
        if self.reconcile_after_secs > 86_400 {
            return Err("PAY_RECONCILE_AFTER_SECS must be at most 86400".into());
        }
        if self.product_reuse_secs > 3600 {
            return Err("PAY_PRODUCT_REUSE_SECS must be at most 3600".into());
        }
        if self.notify_retention_days > 36_500 {
            return Err("PAY_NOTIFY_RETENTION_DAYS must be at most 36500".into());
        }
        if self.mch_id.trim().is_empty() {
            return Err("WXMP_PAY_MCH_ID must not be empty".into());
        }
        if self.v3.api == PayApi::V2 && self.pay_key.is_empty() {
            return Err("WXMP_PAY_KEY must not be empty (WXMP_PAY_API=v2)".into());
        }
        if self.v3.configured() {
            self.v3.load()?;
        }
        self.sign_type()?;
        if !(self.wechat_pay_base.starts_with("http://")
            || self.wechat_pay_base.starts_with("https://"))
        {
            return Err("WXMP_WECHAT_PAY_BASE must be an http(s) URL".into());
        }
        if self.wechat_timeout_ms == 0 {
            return Err("WXMP_WECHAT_TIMEOUT_MS must be > 0".into());
        }
        self.refunds.validate()?;
        self.events.validate()
    }

    /// The parsed `WXMP_PAY_SIGN_TYPE`.
    pub fn sign_type(&self) -> Result<SignType, String> {
        self.sign_type.parse().map_err(|_| {
            format!(
                "WXMP_PAY_SIGN_TYPE must be MD5 or HMAC-SHA256, not {:?}",
                self.sign_type
            )
        })
    }

    pub fn wechat_timeout(&self) -> Duration {
        Duration::from_millis(self.wechat_timeout_ms)
    }
}

fn validate_notify_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    // WeChat calls the URL as given and refuses one with a query string.
    match rest {
        Some(rest) if !rest.is_empty() && !url.contains('?') && url.len() <= 256 => Ok(()),
        _ => Err(format!(
            "PAY_NOTIFY_URL must be an http(s) URL of at most 256 characters without a query, not {url:?}"
        )),
    }
}

/// A product of the catalog: the server decides its price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub price_fen: i64,
    /// Shown on the payment sheet (WeChat's `body`).
    pub name: String,
}

/// The configured products, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog(pub Vec<Product>);

impl Catalog {
    pub fn get(&self, id: &str) -> Option<&Product> {
        self.0.iter().find(|p| p.id == id)
    }
}

/// Longest product id; ids are `[0-9A-Za-z_-]`.
pub const MAX_PRODUCT_ID_LEN: usize = 32;

pub fn valid_product_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PRODUCT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FromStr for Catalog {
    type Err = String;

    /// `id:price_fen:name;...`; the name may contain `:` but not `;`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut products: Vec<Product> = Vec::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.splitn(3, ':');
            let (Some(id), Some(price), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "PAY_PRODUCTS: {entry:?} is not id:price_fen:name (entries separated by ';')"
                ));
            };
            let (id, price, name) = (id.trim(), price.trim(), name.trim());
            if !valid_product_id(id) {
                return Err(format!(
                    "PAY_PRODUCTS: product id {id:?} must be 1..={MAX_PRODUCT_ID_LEN} characters of [0-9A-Za-z_-]"
                ));
            }
            let price_fen = price
                .parse::<i64>()
                .ok()
                .filter(|p| (1..=MAX_AMOUNT_FEN).contains(p))
                .ok_or_else(|| {
                    format!(
                        "PAY_PRODUCTS: price of {id} must be an integer number of fen in 1..={MAX_AMOUNT_FEN}, not {price:?}"
                    )
                })?;
            if name.is_empty() || name.len() > MAX_DESCRIPTION_BYTES {
                return Err(format!(
                    "PAY_PRODUCTS: name of {id} must be 1..={MAX_DESCRIPTION_BYTES} bytes"
                ));
            }
            if products.iter().any(|p| p.id == id) {
                return Err(format!("PAY_PRODUCTS: product {id} is listed twice"));
            }
            products.push(Product {
                id: id.to_owned(),
                price_fen,
                name: name.to_owned(),
            });
        }
        Ok(Self(products))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses() {
        let c: Catalog = "vip:100:VIP 1 month; coins_10 : 1000 : 10 coins: bonus"
            .parse()
            .unwrap();
        assert_eq!(c.0.len(), 2);
        assert_eq!(c.get("vip").map(|p| p.price_fen), Some(100));
        assert_eq!(
            c.get("coins_10").map(|p| p.name.as_str()),
            Some("10 coins: bonus")
        );
        assert_eq!("".parse::<Catalog>().unwrap(), Catalog::default());
    }

    #[test]
    fn catalog_rejects_and_names_the_variable() {
        for bad in [
            "vip",
            "vip:100",
            "vip:0:x",
            "vip:-5:x",
            "vip:1.5:x",
            "vip:100:",
            "v ip:100:x",
            "vip:100:x;vip:200:y",
            "vip:99999999999:x",
        ] {
            let err = bad.parse::<Catalog>().unwrap_err();
            assert!(err.starts_with("PAY_PRODUCTS"), "{bad}: {err}");
        }
    }

    #[test]
    fn lease_and_drain_parse_with_defaults_and_bounds() {
        use clap::Parser;
        let base = [
            "wxmp-pay",
            "--database-url",
            "sqlite::memory:",
            "--notify-url",
            "http://127.0.0.1/pay/notify",
            "--mch-id",
            "1900000109",
            "--pay-key",
            "k",
        ];
        let c = Config::try_parse_from(base).unwrap();
        assert_eq!(c.reconcile_lease_secs, DEFAULT_RECONCILE_LEASE_SECS);
        let c = Config::try_parse_from(base.iter().copied().chain([
            "--reconcile-lease-secs",
            "5",
            "--drain-delay-ms",
            "1500",
        ]))
        .unwrap();
        assert_eq!(c.reconcile_lease_secs, 5);
        assert_eq!(c.drain.delay(), Duration::from_millis(1500));
        for bad in [
            ["--reconcile-lease-secs", "0"],
            ["--drain-delay-ms", "600000"],
        ] {
            assert!(Config::try_parse_from(base.iter().copied().chain(bad)).is_err());
        }
    }

    /// Rollback: v3 is built whenever the merchant's v3 key is given, also on
    /// `WXMP_PAY_API=v2`, and then its settings must be whole; the APIv3 key alone (an
    /// optional Secret key) does not turn it on.
    #[test]
    fn v3_is_built_whenever_the_merchant_v3_key_is_given() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("merchant_key.pem");
        std::fs::write(&key_path, sandbox::v3::dev::MERCHANT_PRIVATE_KEY).unwrap();
        let v2 = |v3: PayV3Config| {
            let mut c = Config::try_parse_from([
                "wxmp-pay",
                "--database-url",
                "sqlite::memory:",
                "--notify-url",
                "http://127.0.0.1/pay/notify",
                "--mch-id",
                "1900000109",
                "--pay-key",
                "devpaykey00000000000000000000key",
            ])
            .unwrap();
            c.v3 = v3;
            c
        };
        let only_apiv3_key = PayV3Config {
            v3_key: Some(Secret::new(sandbox::v3::dev::APIV3_KEY)),
            ..Default::default()
        };
        assert!(!only_apiv3_key.configured());
        assert_eq!(v2(only_apiv3_key).validate(), Ok(()));
        let whole = PayV3Config {
            api: PayApi::V2,
            v3_key: Some(Secret::new(sandbox::v3::dev::APIV3_KEY)),
            private_key_path: Some(key_path.clone()),
            cert_serial: Some(sandbox::v3::dev::MERCHANT_SERIAL.into()),
            public_key_path: None,
            public_key_id: None,
        };
        assert!(whole.configured());
        assert_eq!(v2(whole.clone()).validate(), Ok(()));
        let no_serial = PayV3Config {
            cert_serial: None,
            ..whole
        };
        let err = v2(no_serial).validate().unwrap_err();
        assert!(err.contains("WXMP_PAY_CERT_SERIAL"), "{err}");
    }

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

    #[test]
    fn notify_url_rules() {
        assert!(validate_notify_url("https://example.com/pay/notify").is_ok());
        assert!(validate_notify_url("http://127.0.0.1:8080/pay/notify").is_ok());
        for bad in ["", "ftp://x", "https://", "https://x/n?a=1"] {
            assert!(
                validate_notify_url(bad)
                    .unwrap_err()
                    .contains("PAY_NOTIFY_URL")
            );
        }
    }

    #[test]
    fn a_refund_notify_url_is_checked_without_v2_refunds_too() {
        // No certificate (v2 refunds off): v3 refunds still send it, with `/v3` appended.
        let mut refunds = RefundConfig {
            refund_notify_url: Some("https://x/pay/refund-notify?a=1".into()),
            ..RefundConfig::default()
        };
        assert!(
            refunds
                .validate()
                .unwrap_err()
                .contains("PAY_REFUND_NOTIFY_URL")
        );
        refunds.refund_notify_url = Some("https://x/pay/refund-notify".into());
        assert_eq!(refunds.validate(), Ok(()));
        refunds.refund_notify_url = None;
        assert_eq!(refunds.validate(), Ok(()));
    }
}

/// The outbox's consumers: the event stream, webhooks and retention.
#[derive(clap::Args, Clone, Debug)]
pub struct EventsConfig {
    /// How often event streams and the webhook worker look for events of other replicas.
    #[arg(
        long,
        env = "PAY_EVENT_POLL_MS",
        value_name = "PAY_EVENT_POLL_MS",
        default_value_t = DEFAULT_EVENT_POLL_MS
    )]
    pub event_poll_ms: u64,

    /// Order events are kept this many days, then pruned.
    #[arg(
        long,
        env = "PAY_EVENT_RETENTION_DAYS",
        value_name = "PAY_EVENT_RETENTION_DAYS",
        default_value_t = DEFAULT_EVENT_RETENTION_DAYS
    )]
    pub event_retention_days: u64,

    /// Endpoints that receive every event as a signed JSON POST, comma-separated (empty: none).
    #[arg(
        long,
        env = "PAY_WEBHOOK_URLS",
        value_name = "PAY_WEBHOOK_URLS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub webhook_urls: Vec<String>,

    /// The HMAC-SHA256 key of X-Wxmp-Signature; required with PAY_WEBHOOK_URLS.
    #[arg(
        long,
        env = "PAY_WEBHOOK_SECRET",
        value_name = "PAY_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,

    /// Time allowed for one webhook request.
    #[arg(
        long,
        env = "PAY_WEBHOOK_TIMEOUT_MS",
        value_name = "PAY_WEBHOOK_TIMEOUT_MS",
        default_value_t = DEFAULT_WEBHOOK_TIMEOUT_MS
    )]
    pub webhook_timeout_ms: u64,

    /// A failing delivery is retried until its event is this old, then dead-lettered.
    #[arg(
        long,
        env = "PAY_WEBHOOK_MAX_AGE_SECS",
        value_name = "PAY_WEBHOOK_MAX_AGE_SECS",
        default_value_t = DEFAULT_WEBHOOK_MAX_AGE_SECS
    )]
    pub webhook_max_age_secs: u64,

    /// The first retry's delay in seconds; each later one doubles (with jitter, at most 1 h).
    #[arg(
        long,
        env = "PAY_WEBHOOK_BACKOFF_SECS",
        value_name = "PAY_WEBHOOK_BACKOFF_SECS",
        default_value_t = DEFAULT_WEBHOOK_BACKOFF_SECS
    )]
    pub webhook_backoff_secs: u64,
}

pub const DEFAULT_EVENT_POLL_MS: u64 = 500;
pub const DEFAULT_EVENT_RETENTION_DAYS: u64 = 30;
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_WEBHOOK_MAX_AGE_SECS: u64 = 86_400;
pub const DEFAULT_WEBHOOK_BACKOFF_SECS: u64 = 5;

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            event_poll_ms: DEFAULT_EVENT_POLL_MS,
            event_retention_days: DEFAULT_EVENT_RETENTION_DAYS,
            webhook_urls: Vec::new(),
            webhook_secret: None,
            webhook_timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
            webhook_max_age_secs: DEFAULT_WEBHOOK_MAX_AGE_SECS,
            webhook_backoff_secs: DEFAULT_WEBHOOK_BACKOFF_SECS,
        }
    }
}

impl EventsConfig {
    fn validate(&self) -> Result<(), String> {
        if !(10..=60_000).contains(&self.event_poll_ms) {
            return Err("PAY_EVENT_POLL_MS must be between 10 and 60000".into());
        }
        if self.event_retention_days == 0 {
            return Err("PAY_EVENT_RETENTION_DAYS must be > 0".into());
        }
        for url in self.webhook_endpoints() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("PAY_WEBHOOK_URLS: {url:?} is not an http(s) URL"));
            }
        }
        if !self.webhook_endpoints().is_empty()
            && self.webhook_secret.as_ref().is_none_or(Secret::is_empty)
        {
            return Err("PAY_WEBHOOK_SECRET is required when PAY_WEBHOOK_URLS is set".into());
        }
        if self.webhook_timeout_ms == 0 {
            return Err("PAY_WEBHOOK_TIMEOUT_MS must be > 0".into());
        }
        if self.webhook_backoff_secs == 0 {
            return Err("PAY_WEBHOOK_BACKOFF_SECS must be > 0".into());
        }
        Ok(())
    }

    /// The configured endpoints, blanks dropped.
    pub fn webhook_endpoints(&self) -> Vec<String> {
        self.webhook_urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.event_poll_ms)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_days.saturating_mul(86_400))
    }
}
