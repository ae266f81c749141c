//! `wxmp-pay`'s configuration: environment variables, validated at start. The top-level
//! [`Config`] is here; each sub-config it flattens has a file of its own under `config/`
//! ([`catalog`], [`events`], [`nats`], [`refunds`], [`subscribe`], [`v3`]), the way crates.io and Lemmy split settings.

pub mod bills;
pub mod catalog;
pub mod events;
pub mod nats;
pub mod refunds;
pub mod shipping;
pub mod subscribe;
pub mod v3;
pub mod xpay;

use std::time::Duration;

use service_kit::{
    Secret,
    grpc::{DrainConfig, InternalAuthConfig},
    settings::{Listen, ListenVar, WechatApi},
    telemetry::TelemetryConfig,
};

/// `PAY_LISTEN_ADDR`, by default port 50053.
pub struct ListenAddr;

impl ListenVar for ListenAddr {
    const ENV: &'static str = "PAY_LISTEN_ADDR";
    const DEFAULT: &'static str = "0.0.0.0:50053";
}
use wechat::SignType;

pub use bills::BillsConfig;
pub use catalog::{Catalog, MAX_PRODUCT_ID_LEN, Product, valid_product_id};
pub use events::{
    DEFAULT_EVENT_POLL_MS, DEFAULT_EVENT_RETENTION_DAYS, DEFAULT_WEBHOOK_BACKOFF_SECS,
    DEFAULT_WEBHOOK_MAX_AGE_SECS, DEFAULT_WEBHOOK_TIMEOUT_MS, EventsConfig,
};
pub use nats::NatsConfig;
pub use refunds::RefundConfig;
pub use shipping::ShippingConfig;
pub use subscribe::PaidMessageConfig;
pub use v3::{PayApi, PayV3Config, PayV3Settings};
pub use xpay::XpayConfig;

/// Default of `PAY_PRODUCT_REUSE_SECS`.
pub const DEFAULT_PRODUCT_REUSE_SECS: u64 = 60;
/// Default of `PAY_NOTIFY_RETENTION_DAYS`.
pub const DEFAULT_NOTIFY_RETENTION_DAYS: u64 = 90;
/// Default of `PAY_RECONCILE_LEASE_SECS`.
pub const DEFAULT_RECONCILE_LEASE_SECS: u64 = 120;
/// Default of `PAY_RECONCILE_CONCURRENCY`.
pub const DEFAULT_RECONCILE_CONCURRENCY: u64 = 8;

/// Everything `wxmp-pay` reads at start.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "wxmp-pay",
    about = "wxmp pay-service: orders and WeChat Pay v2 (JSAPI)"
)]
pub struct Config {
    #[command(flatten)]
    pub listen: Listen<ListenAddr>,

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
    /// WeChat queries (orderquery, closeorder) one reconciler replica runs at once while it
    /// drains a backlog page by page.
    #[arg(long, env = "PAY_RECONCILE_CONCURRENCY", value_name = "PAY_RECONCILE_CONCURRENCY", default_value_t = DEFAULT_RECONCILE_CONCURRENCY,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub reconcile_concurrency: u64,

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

    /// WeChat's server API (subscribe/send) and the timeout of every WeChat and WeChat Pay call.
    #[command(flatten)]
    pub wechat: WechatApi,

    #[command(flatten)]
    pub events: EventsConfig,

    #[command(flatten)]
    pub paid_message: PaidMessageConfig,

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

    #[command(flatten)]
    pub bills: BillsConfig,

    #[command(flatten)]
    pub nats: NatsConfig,

    #[command(flatten)]
    pub shipping: ShippingConfig,

    #[command(flatten)]
    pub xpay: XpayConfig,
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
        self.wechat.validate()?;
        self.refunds.validate()?;
        self.bills.validate()?;
        self.nats.validate()?;
        self.shipping.validate(&self.products)?;
        self.xpay
            .validate(&self.products, &self.shipping.virtual_product_ids())?;
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
        self.wechat.timeout()
    }
}

/// Checks a notify URL WeChat will call (also `PAY_REFUND_NOTIFY_URL`, see [`RefundConfig`]).
pub(crate) fn validate_notify_url(url: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.reconcile_concurrency, DEFAULT_RECONCILE_CONCURRENCY);
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
            ..Default::default()
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
}
