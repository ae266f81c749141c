//! The sandbox's configuration, from the same environment variables as the real services.

use std::{net::SocketAddr, str::FromStr};

use service_kit::{
    Secret,
    telemetry::{LogFormat, TelemetryConfig},
};

use crate::{DEV_APP_ID, DEV_APP_SECRET, DEV_MCH_ID, DEV_PAY_KEY, faults::Faults};

/// `WXMP_APPS` when unset: the dev app alone (kept equal to `DEV_APP_ID:DEV_APP_SECRET` by a test).
const DEV_APPS: &str = "wx00000000000dev01:devsecret000000000000000000000ff";

/// One registered mini program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub appid: String,
    pub secret: Secret,
}

/// `appid:secret[,appid:secret...]`; the first app is the default one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppList(pub Vec<App>);

impl FromStr for AppList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut apps: Vec<App> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (appid, secret) = entry
                .split_once(':')
                .map(|(a, s)| (a.trim(), s.trim()))
                .filter(|(a, s)| !a.is_empty() && !s.is_empty())
                .ok_or_else(|| {
                    format!("WXMP_APPS: {entry:?} is not appid:secret (expected appid:secret[,appid:secret...])")
                })?;
            if apps.iter().any(|a| a.appid == appid) {
                return Err(format!("WXMP_APPS: appid {appid} is listed twice"));
            }
            apps.push(App {
                appid: appid.to_owned(),
                secret: Secret::new(secret),
            });
        }
        if apps.is_empty() {
            return Err(
                "WXMP_APPS: no app configured (expected appid:secret[,appid:secret...])".into(),
            );
        }
        Ok(Self(apps))
    }
}

/// Everything `wxmp-sandbox` reads at start. Faults set here are the initial run-time faults.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "wxmp-sandbox",
    about = "Offline WeChat simulator (login, user data, Pay v2)"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long,
        env = "SANDBOX_LISTEN_ADDR",
        value_name = "SANDBOX_LISTEN_ADDR",
        default_value = "0.0.0.0:9000"
    )]
    pub listen_addr: SocketAddr,

    /// Registered mini programs, `appid:secret[,appid:secret...]`; the first is the default app.
    #[arg(long, env = "WXMP_APPS", value_name = "WXMP_APPS", default_value = DEV_APPS)]
    pub apps: AppList,

    /// The merchant (mch_id), bound to every configured app.
    #[arg(long, env = "WXMP_PAY_MCH_ID", value_name = "WXMP_PAY_MCH_ID", default_value = DEV_MCH_ID)]
    pub mch_id: String,

    /// The merchant's API key (v2), used to verify requests and sign answers and notifies.
    #[arg(long, env = "WXMP_PAY_KEY", value_name = "WXMP_PAY_KEY", default_value = DEV_PAY_KEY, hide_default_value = true)]
    pub pay_key: Secret,

    /// Multiplies WeChat's notify retry schedule (15s, 15s, 30s, 3m, ...): 0.001 in tests.
    #[arg(
        long,
        env = "SANDBOX_NOTIFY_TIME_SCALE",
        value_name = "SANDBOX_NOTIFY_TIME_SCALE",
        default_value_t = 1.0
    )]
    pub notify_time_scale: f64,

    /// How long one notify request may take before it counts as failed.
    #[arg(
        long,
        env = "SANDBOX_NOTIFY_TIMEOUT_MS",
        value_name = "SANDBOX_NOTIFY_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub notify_timeout_ms: u64,

    /// Lifetime of a login code (WeChat: 5 minutes).
    #[arg(
        long,
        env = "SANDBOX_CODE_TTL_SECS",
        value_name = "SANDBOX_CODE_TTL_SECS",
        default_value_t = 300
    )]
    pub code_ttl_secs: u64,

    /// jscode2session calls allowed per minute with one code before 45011 (0 = unlimited).
    #[arg(
        long,
        env = "SANDBOX_CODE_RATE_PER_MIN",
        value_name = "SANDBOX_CODE_RATE_PER_MIN",
        default_value_t = 10
    )]
    pub code_rate_per_min: u32,

    /// jscode2session calls allowed per minute for one appid before 45011 (0 = unlimited).
    #[arg(
        long,
        env = "SANDBOX_APP_RATE_PER_MIN",
        value_name = "SANDBOX_APP_RATE_PER_MIN",
        default_value_t = 10_000
    )]
    pub app_rate_per_min: u32,

    /// Lifetime of an access_token in seconds (WeChat: 7200); short in tests.
    #[arg(long, env = "SANDBOX_TOKEN_EXPIRES_IN_SECS", value_name = "SANDBOX_TOKEN_EXPIRES_IN_SECS", default_value_t = 7200,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub token_expires_in_secs: u64,

    /// How long a replaced /cgi-bin/token token keeps working, and how early stable_token
    /// renews (WeChat: 5 minutes).
    #[arg(
        long,
        env = "SANDBOX_TOKEN_GRACE_MS",
        value_name = "SANDBOX_TOKEN_GRACE_MS",
        default_value_t = 300_000
    )]
    pub token_grace_ms: u64,

    /// /cgi-bin/token calls allowed per app per day before 45009 (WeChat: 2000).
    #[arg(
        long,
        env = "SANDBOX_TOKEN_DAILY_QUOTA",
        value_name = "SANDBOX_TOKEN_DAILY_QUOTA",
        default_value_t = 2000
    )]
    pub token_daily_quota: u32,
    /// Address of the HTTPS port serving `/secapi/pay/refund`; it requires a client
    /// certificate signed by the sandbox's dev CA.
    #[arg(
        long,
        env = "SANDBOX_SECAPI_LISTEN_ADDR",
        value_name = "SANDBOX_SECAPI_LISTEN_ADDR",
        default_value = "0.0.0.0:9001"
    )]
    pub secapi_listen_addr: SocketAddr,

    /// Where the dev CA (`ca.pem`) and the merchant certificate (`apiclient_cert.pem`,
    /// `apiclient_key.pem`) are written at start, for services in other processes.
    #[arg(long, env = "SANDBOX_CERT_DIR", value_name = "SANDBOX_CERT_DIR")]
    pub cert_dir: Option<std::path::PathBuf>,

    /// Extra host names / IPs for the secapi port's certificate (comma separated), e.g. the
    /// compose service name.
    #[arg(
        long,
        env = "SANDBOX_SECAPI_HOSTS",
        value_name = "SANDBOX_SECAPI_HOSTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub secapi_hosts: Vec<String>,

    /// How long an accepted refund takes to settle (then its notify is sent).
    #[arg(
        long,
        env = "SANDBOX_REFUND_DELAY_MS",
        value_name = "SANDBOX_REFUND_DELAY_MS",
        default_value_t = 2000
    )]
    pub refund_delay_ms: u64,

    /// HTTP worker threads.
    #[arg(
        long,
        env = "SANDBOX_WORKERS",
        value_name = "SANDBOX_WORKERS",
        default_value_t = 2
    )]
    pub workers: usize,

    #[command(flatten)]
    pub faults: Faults,

    #[command(flatten)]
    pub pay_v3: crate::v3::V3Config,

    #[command(flatten)]
    pub shipping: crate::shipping::ShippingConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// The first configured app's appid (the default app).
    pub fn default_appid(&self) -> &str {
        self.apps.0.first().map_or("", |a| a.appid.as_str())
    }

    /// The dev app and merchant, no faults, real-time notifies: for tests and `wxmp up`.
    pub fn dev() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 9000)),
            apps: AppList(vec![App {
                appid: DEV_APP_ID.to_owned(),
                secret: Secret::new(DEV_APP_SECRET),
            }]),
            mch_id: DEV_MCH_ID.to_owned(),
            pay_key: Secret::new(DEV_PAY_KEY),
            notify_time_scale: 1.0,
            notify_timeout_ms: 5000,
            code_ttl_secs: 300,
            code_rate_per_min: 10,
            app_rate_per_min: 10_000,
            workers: 2,
            token_expires_in_secs: 7200,
            token_grace_ms: 300_000,
            token_daily_quota: 2000,
            // A free port: several dev sandboxes (tests) run side by side.
            secapi_listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_dir: None,
            secapi_hosts: Vec::new(),
            refund_delay_ms: 2000,
            faults: Faults::default(),
            pay_v3: crate::v3::V3Config::default(),
            shipping: crate::shipping::ShippingConfig::default(),
            telemetry: TelemetryConfig {
                log_format: LogFormat::Pretty,
                metrics_addr: None,
            },
        }
    }

    /// Checks what clap cannot, naming the variable at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.mch_id.trim().is_empty() {
            return Err("WXMP_PAY_MCH_ID must not be empty".into());
        }
        if self.pay_key.is_empty() {
            return Err("WXMP_PAY_KEY must not be empty".into());
        }
        if !(self.notify_time_scale.is_finite() && self.notify_time_scale >= 0.0) {
            return Err("SANDBOX_NOTIFY_TIME_SCALE must be a finite number >= 0".into());
        }
        if self.notify_timeout_ms == 0 {
            return Err("SANDBOX_NOTIFY_TIMEOUT_MS must be > 0".into());
        }
        if self.token_grace_ms >= self.token_expires_in_secs.saturating_mul(1000) {
            return Err(
                "SANDBOX_TOKEN_GRACE_MS must be shorter than SANDBOX_TOKEN_EXPIRES_IN_SECS".into(),
            );
        }
        self.shipping.validate()?;
        if self.workers == 0 {
            return Err("SANDBOX_WORKERS must be > 0".into());
        }
        if self.refund_delay_ms > 3_600_000 {
            return Err("SANDBOX_REFUND_DELAY_MS must be at most 3600000".into());
        }
        self.pay_v3.validate()?;
        self.faults
            .validate()
            .map_err(|e| format!("SANDBOX_FAULT_*: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn dev_constants_are_consistent() {
        assert_eq!(DEV_APPS, format!("{DEV_APP_ID}:{DEV_APP_SECRET}"));
        for v in [DEV_APP_SECRET, DEV_PAY_KEY] {
            assert_eq!(v.len(), 32, "{v}");
        }
        assert_eq!(DEV_APP_ID.len(), 18);
        let parsed = Config::try_parse_from(["wxmp-sandbox"]);
        // The environment of the test process may set these; only check when it does not.
        if std::env::var_os("WXMP_APPS").is_none() && std::env::var_os("WXMP_PAY_KEY").is_none() {
            let parsed = parsed.unwrap();
            assert_eq!(parsed.apps, Config::dev().apps);
            assert_eq!(parsed.pay_key, Config::dev().pay_key);
        }
    }

    #[test]
    fn app_list_parses_and_rejects() {
        let list: AppList = "wxa:sa, wxb:sb".parse().unwrap();
        assert_eq!(list.0.len(), 2);
        assert_eq!(list.0[1].appid, "wxb");
        assert_eq!(list.0[1].secret.expose(), "sb");
        for bad in ["", "wxa", "wxa:", ":s", "wxa:s,wxa:t"] {
            let err = bad.parse::<AppList>().unwrap_err();
            assert!(err.starts_with("WXMP_APPS"), "{bad}: {err}");
        }
    }

    #[test]
    fn validate_names_the_variable() {
        let mut c = Config::dev();
        assert!(c.validate().is_ok());
        c.notify_time_scale = f64::NAN;
        assert!(
            c.validate()
                .unwrap_err()
                .contains("SANDBOX_NOTIFY_TIME_SCALE")
        );
    }
}
