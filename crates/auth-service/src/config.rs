//! `wxmp-auth`'s configuration, from the environment (see ARCHITECTURE.md).

use std::{str::FromStr, time::Duration};

use service_kit::{
    Secret,
    grpc::{DrainConfig, InternalAuthConfig},
    settings::{Listen, ListenVar, WechatApi},
    telemetry::{LogFormat, TelemetryConfig},
};

/// `AUTH_LISTEN_ADDR`, by default port 50051.
pub struct ListenAddr;

impl ListenVar for ListenAddr {
    const ENV: &'static str = "AUTH_LISTEN_ADDR";
    const DEFAULT: &'static str = "0.0.0.0:50051";
}

/// One mini program this deployment serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub app_id: String,
    pub secret: Secret,
}

/// `appid:secret[,appid:secret...]`; the first app is the default one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Apps(Vec<App>);

impl Apps {
    /// At least one app is required: the first is the default.
    pub fn new(apps: Vec<App>) -> Result<Self, String> {
        if apps.is_empty() {
            return Err(
                "WXMP_APPS: no app configured (expected appid:secret[,appid:secret...])".into(),
            );
        }
        for (i, app) in apps.iter().enumerate() {
            if app.app_id.is_empty() || app.secret.is_empty() {
                return Err("WXMP_APPS: an appid or secret is empty".into());
            }
            if apps[..i].iter().any(|a| a.app_id == app.app_id) {
                return Err(format!("WXMP_APPS: appid {} is listed twice", app.app_id));
            }
        }
        Ok(Self(apps))
    }

    /// The app used when a request names none.
    pub fn default_app(&self) -> &App {
        // `new` guarantees one app at least.
        &self.0[0]
    }

    /// The app `app_id` names; empty selects the default one.
    pub fn resolve(&self, app_id: &str) -> Option<&App> {
        if app_id.is_empty() {
            Some(self.default_app())
        } else {
            self.0.iter().find(|a| a.app_id == app_id)
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &App> {
        self.0.iter()
    }
}

impl FromStr for Apps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut apps = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (app_id, secret) = entry
                .split_once(':')
                .map(|(a, s)| (a.trim(), s.trim()))
                .filter(|(a, s)| !a.is_empty() && !s.is_empty())
                // Never echo the entry: it holds a secret.
                .ok_or_else(|| {
                    format!(
                        "WXMP_APPS: entry {} is not appid:secret (expected appid:secret[,appid:secret...])",
                        apps.len() + 1
                    )
                })?;
            apps.push(App {
                app_id: app_id.to_owned(),
                secret: Secret::new(secret),
            });
        }
        Self::new(apps)
    }
}

/// Parses `WXMP_APPS` for clap without clap quoting the value in its error (it holds secrets).
#[derive(Clone, Copy, Debug)]
struct AppsParser;

impl clap::builder::TypedValueParser for AppsParser {
    type Value = Apps;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Apps, clap::Error> {
        let invalid = |msg: String| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{msg}\n"))
        };
        value
            .to_str()
            .ok_or_else(|| invalid("WXMP_APPS is not valid UTF-8".into()))?
            .parse()
            .map_err(invalid)
    }
}

/// Everything `wxmp-auth` reads at start.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "wxmp-auth",
    about = "wxmp auth-service: WeChat login and sessions"
)]
pub struct Config {
    #[command(flatten)]
    pub listen: Listen<ListenAddr>,

    /// Redis for sessions, e.g. redis://127.0.0.1:6379/0. Unset keeps sessions in memory
    /// (one replica only; sessions are lost on restart).
    #[arg(
        long,
        env = "AUTH_REDIS_URL",
        value_name = "AUTH_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<Secret>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(
        long,
        env = "AUTH_REDIS_PREFIX",
        value_name = "AUTH_REDIS_PREFIX",
        default_value = "wxmp:"
    )]
    pub redis_prefix: String,

    /// Lifetime of a session token, in seconds.
    #[arg(long, env = "AUTH_SESSION_TTL_SECS", value_name = "AUTH_SESSION_TTL_SECS", default_value_t = 604_800,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub session_ttl_secs: u64,

    /// user-service's gRPC URL (EnsureUser).
    #[arg(
        long,
        env = "AUTH_USER_SERVICE_URL",
        value_name = "AUTH_USER_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub user_service_url: String,

    /// The mini programs served, `appid:secret[,appid:secret...]`; the first is the default.
    #[arg(long, env = "WXMP_APPS", value_name = "WXMP_APPS", hide_env_values = true, value_parser = AppsParser)]
    pub apps: Apps,

    #[command(flatten)]
    pub wechat: WechatApi,

    /// Which WeChat endpoint issues access_tokens: `stable` (`/cgi-bin/stable_token`, a fetch
    /// does not invalidate the token others hold) or `legacy` (`/cgi-bin/token`).
    #[arg(
        long,
        env = "WXMP_ACCESS_TOKEN_API",
        value_name = "WXMP_ACCESS_TOKEN_API",
        default_value = "stable"
    )]
    pub access_token_api: crate::access_token::TokenApi,

    /// Refresh the access_token this long before WeChat expires it (at most a fifth of its
    /// lifetime). Under 300: stable_token renews only in a token's last 5 minutes.
    #[arg(long, env = "AUTH_ACCESS_TOKEN_REFRESH_BEFORE_SECS", value_name = "AUTH_ACCESS_TOKEN_REFRESH_BEFORE_SECS",
          default_value_t = DEFAULT_REFRESH_BEFORE_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub access_token_refresh_before_secs: u64,

    /// TTL of the Redis lock one replica holds while it refreshes the access_token: a replica
    /// that dies mid-refresh blocks the others this long at most.
    #[arg(long, env = "AUTH_ACCESS_TOKEN_LOCK_TTL_MS", value_name = "AUTH_ACCESS_TOKEN_LOCK_TTL_MS",
          default_value_t = DEFAULT_LOCK_TTL_MS, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub access_token_lock_ttl_ms: u64,

    /// How long GetAccessToken waits for another replica's refresh before failing.
    #[arg(long, env = "AUTH_ACCESS_TOKEN_WAIT_MS", value_name = "AUTH_ACCESS_TOKEN_WAIT_MS",
          default_value_t = DEFAULT_WAIT_MS, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub access_token_wait_ms: u64,

    /// At most one forced access_token refresh per app per this many seconds (WeChat allows a
    /// forced stable_token every 30 s, 20 a day).
    #[arg(long, env = "AUTH_ACCESS_TOKEN_FORCE_INTERVAL_SECS", value_name = "AUTH_ACCESS_TOKEN_FORCE_INTERVAL_SECS",
          default_value_t = DEFAULT_FORCE_INTERVAL_SECS, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub access_token_force_interval_secs: u64,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    #[command(flatten)]
    pub internal: InternalAuthConfig,

    #[command(flatten)]
    pub drain: DrainConfig,
}

const DEFAULT_REFRESH_BEFORE_SECS: u64 = 240;
const DEFAULT_LOCK_TTL_MS: u64 = 10_000;
const DEFAULT_WAIT_MS: u64 = 15_000;
const DEFAULT_FORCE_INTERVAL_SECS: u64 = 30;

impl Config {
    /// The defaults clap would give with only `WXMP_APPS` set, pointed at the given WeChat
    /// base URL and user-service: for tests and `wxmp up`. Every field is public to adjust.
    pub fn new(
        apps: Apps,
        wechat_api_base: impl Into<String>,
        user_service_url: impl Into<String>,
    ) -> Self {
        Self {
            listen: Listen::default_addr(),
            redis_url: None,
            redis_prefix: "wxmp:".into(),
            session_ttl_secs: 604_800,
            user_service_url: user_service_url.into(),
            apps,
            wechat: WechatApi::new(wechat_api_base),
            access_token_api: crate::access_token::TokenApi::Stable,
            access_token_refresh_before_secs: DEFAULT_REFRESH_BEFORE_SECS,
            access_token_lock_ttl_ms: DEFAULT_LOCK_TTL_MS,
            access_token_wait_ms: DEFAULT_WAIT_MS,
            access_token_force_interval_secs: DEFAULT_FORCE_INTERVAL_SECS,
            telemetry: TelemetryConfig {
                log_format: LogFormat::Pretty,
                metrics_addr: None,
            },
            internal: InternalAuthConfig {
                internal_token: None,
                ..Default::default()
            },
            drain: DrainConfig::none(),
        }
    }

    /// Checks what clap cannot, naming the variable at fault (also for configs built in code).
    pub fn validate(&self) -> Result<(), String> {
        if self.session_ttl_secs == 0 {
            return Err("AUTH_SESSION_TTL_SECS must be at least 1".into());
        }
        if !(self.user_service_url.starts_with("http://")
            || self.user_service_url.starts_with("https://"))
        {
            return Err("AUTH_USER_SERVICE_URL must start with http:// or https://".into());
        }
        self.wechat.validate()?;
        if self.access_token_wait_ms <= self.access_token_lock_ttl_ms {
            return Err(
                "AUTH_ACCESS_TOKEN_WAIT_MS must exceed AUTH_ACCESS_TOKEN_LOCK_TTL_MS (a waiter must outlive a dead holder's lock)".into(),
            );
        }
        if let Some(url) = &self.redis_url
            && !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://"))
        {
            return Err("AUTH_REDIS_URL must start with redis:// or rediss://".into());
        }
        Ok(())
    }

    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_secs)
    }

    /// The access_token refresh protocol's knobs.
    pub fn token_options(&self) -> crate::access_token::TokenOptions {
        crate::access_token::TokenOptions {
            api: self.access_token_api,
            refresh_before: Duration::from_secs(self.access_token_refresh_before_secs),
            lock_ttl: Duration::from_millis(self.access_token_lock_ttl_ms),
            wait: Duration::from_millis(self.access_token_wait_ms),
            force_interval: Duration::from_secs(self.access_token_force_interval_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn apps_parse_and_default_to_the_first() {
        let apps: Apps = "wxa:sa, wxb:sb".parse().unwrap();
        assert_eq!(apps.default_app().app_id, "wxa");
        assert_eq!(apps.resolve("").unwrap().app_id, "wxa");
        assert_eq!(apps.resolve("wxb").unwrap().secret.expose(), "sb");
        assert!(apps.resolve("wxc").is_none());
    }

    #[test]
    fn bad_apps_name_the_variable_and_hide_secrets() {
        for bad in ["", "wxa", "wxa:", ":s", "wxa:s,wxa:t", " , "] {
            let err = bad.parse::<Apps>().unwrap_err();
            assert!(err.starts_with("WXMP_APPS"), "{bad:?}: {err}");
        }
        let err = "wxa:topsecret,broken".parse::<Apps>().unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn parses_with_defaults() {
        let c = Config::try_parse_from(["wxmp-auth", "--apps", "wxa:sa"]).unwrap();
        // The environment of the test process may override defaults; check only unset ones.
        if std::env::var_os("AUTH_SESSION_TTL_SECS").is_none() {
            assert_eq!(c.session_ttl_secs, 604_800);
        }
        if std::env::var_os("AUTH_REDIS_PREFIX").is_none() {
            assert_eq!(c.redis_prefix, "wxmp:");
        }
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("sa\""), "secret leaked: {c:?}");
    }

    #[test]
    fn clap_errors_name_the_variable_and_hide_secrets() {
        let err = Config::try_parse_from(["wxmp-auth", "--apps", "wxa:topsecret,broken"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WXMP_APPS"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
        if std::env::var_os("WXMP_APPS").is_none() {
            let err = Config::try_parse_from(["wxmp-auth"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("WXMP_APPS"), "{err}");
        }
    }

    #[test]
    fn validate_names_the_variable() {
        let mut c = Config::new("wxa:sa".parse().unwrap(), "http://x", "http://y");
        assert!(c.validate().is_ok());
        c.redis_url = Some(Secret::new("localhost:6379"));
        assert!(c.validate().unwrap_err().contains("AUTH_REDIS_URL"));
        c.redis_url = None;
        c.session_ttl_secs = 0;
        assert!(c.validate().unwrap_err().contains("AUTH_SESSION_TTL_SECS"));
    }
}
