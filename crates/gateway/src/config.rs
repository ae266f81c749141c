//! The gateway's configuration, from the environment.

use std::{net::IpAddr, str::FromStr, time::Duration};

use service_kit::{Secret, grpc::InternalAuthConfig, telemetry::TelemetryConfig};

/// Default of `GATEWAY_REDIS_PREFIX`.
pub const DEFAULT_REDIS_PREFIX: &str = "wxmp:";
/// Default of `GATEWAY_UPSTREAM_CHECK_MS`.
pub const DEFAULT_UPSTREAM_CHECK_MS: u64 = 1000;
/// Default of `GATEWAY_SESSION_CACHE_TTL_MS`.
pub const DEFAULT_SESSION_CACHE_TTL_MS: u64 = 5000;
/// Default of `GATEWAY_SESSION_CACHE_MAX_ENTRIES`.
pub const DEFAULT_SESSION_CACHE_MAX_ENTRIES: u64 = 10_000;
/// Default of `GATEWAY_USER_CACHE_TTL_MS`.
pub const DEFAULT_USER_CACHE_TTL_MS: u64 = 5000;
/// Default of `GATEWAY_USER_CACHE_MAX_ENTRIES`.
pub const DEFAULT_USER_CACHE_MAX_ENTRIES: u64 = 10_000;

/// Every setting of the gateway. Parse with `Config::parse()` (environment and flags).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "wxmp-gateway",
    about = "HTTP JSON API of the wxmp mini program"
)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "GATEWAY_LISTEN_ADDR",
        value_name = "GATEWAY_LISTEN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen_addr: String,
    /// auth-service gRPC URL; a comma-separated list of replicas (or a host with several
    /// addresses) is balanced per call over the healthy ones.
    #[arg(
        long,
        env = "GATEWAY_AUTH_URL",
        value_name = "GATEWAY_AUTH_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_url: String,
    /// user-service gRPC URL; a comma-separated list of replicas (or a host with several
    /// addresses) is balanced per call over the healthy ones.
    #[arg(
        long,
        env = "GATEWAY_USER_URL",
        value_name = "GATEWAY_USER_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub user_url: String,
    /// pay-service gRPC URL; a comma-separated list of replicas (or a host with several
    /// addresses) is balanced per call over the healthy ones.
    #[arg(
        long,
        env = "GATEWAY_PAY_URL",
        value_name = "GATEWAY_PAY_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub pay_url: String,
    /// Deadline of every upstream gRPC call, in milliseconds.
    #[arg(long, env = "GATEWAY_RPC_TIMEOUT_MS", value_name = "GATEWAY_RPC_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rpc_timeout_ms: u64,
    /// Largest accepted JSON body, in bytes (larger: envelope code 204).
    #[arg(long, env = "GATEWAY_BODY_LIMIT", value_name = "GATEWAY_BODY_LIMIT", default_value_t = 65536,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_limit: u64,
    /// Proxies whose X-Forwarded-For is believed: comma-separated IPs or CIDRs.
    #[arg(
        long,
        env = "GATEWAY_TRUSTED_PROXIES",
        value_name = "GATEWAY_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: TrustedProxies,
    /// `/login/` attempts allowed per client IP per minute (over it: envelope 208, HTTP 429);
    /// 0 turns the limit off.
    #[arg(
        long,
        env = "GATEWAY_LOGIN_RATE_PER_MIN",
        value_name = "GATEWAY_LOGIN_RATE_PER_MIN",
        default_value_t = 60
    )]
    pub login_rate_per_min: u32,
    /// Notifies failing their signature check allowed per client IP per window on
    /// `/pay/notify`; beyond it the sender's notifies are authenticated before anything else
    /// and dropped unrecorded (HTTP 429, FAIL) unless they verify, so a genuine notify always
    /// passes. 0 turns the limit off.
    #[arg(
        long,
        env = "GATEWAY_NOTIFY_FAIL_LIMIT",
        value_name = "GATEWAY_NOTIFY_FAIL_LIMIT",
        default_value_t = 20
    )]
    pub notify_fail_limit: u32,
    /// The window of `GATEWAY_NOTIFY_FAIL_LIMIT`, in seconds.
    #[arg(long, env = "GATEWAY_NOTIFY_FAIL_WINDOW_SECS", value_name = "GATEWAY_NOTIFY_FAIL_WINDOW_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub notify_fail_window_secs: u64,
    /// Redis holding the `/login/` and `/pay/notify` rate-limit windows, shared by every
    /// replica (e.g. redis://127.0.0.1:6379/0). Unset: each replica limits in its own memory.
    /// While Redis fails, each replica falls back to its memory (gauge
    /// `wxmp_rate_limit_shared` 0).
    #[arg(
        long,
        env = "GATEWAY_REDIS_URL",
        value_name = "GATEWAY_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<Secret>,
    /// Prefix of the gateway's Redis keys (`<prefix>ratelimit:<limit>:<client>`).
    #[arg(
        long,
        env = "GATEWAY_REDIS_PREFIX",
        value_name = "GATEWAY_REDIS_PREFIX",
        default_value = DEFAULT_REDIS_PREFIX
    )]
    pub redis_prefix: String,
    /// How often each upstream's gRPC health is checked, in milliseconds. The calls of an
    /// upstream found down fail fast (envelope 213) until a check finds it serving again.
    #[arg(long, env = "GATEWAY_UPSTREAM_CHECK_MS", value_name = "GATEWAY_UPSTREAM_CHECK_MS", default_value_t = DEFAULT_UPSTREAM_CHECK_MS,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub upstream_check_ms: u64,
    /// How long an `Authenticate` answer is reused (token hash → principal), in
    /// milliseconds; never past the session's own expiry. A logout is seen at once while the
    /// revocation feed is connected and within this bound when it is cut silently. The cache
    /// serves only with a feed: `GATEWAY_REDIS_URL` (the channel below) or, in `wxmp up`, the
    /// in-process one. 0 turns it off.
    #[arg(long, env = "GATEWAY_SESSION_CACHE_TTL_MS", value_name = "GATEWAY_SESSION_CACHE_TTL_MS", default_value_t = DEFAULT_SESSION_CACHE_TTL_MS,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub session_cache_ttl_ms: u64,
    /// Most answers the session cache holds (per replica); 0 turns it off.
    #[arg(long, env = "GATEWAY_SESSION_CACHE_MAX_ENTRIES", value_name = "GATEWAY_SESSION_CACHE_MAX_ENTRIES", default_value_t = DEFAULT_SESSION_CACHE_MAX_ENTRIES,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub session_cache_max_entries: u64,
    /// The Redis channel auth-service announces ended sessions on; default
    /// `<GATEWAY_REDIS_PREFIX>session-revoked` (auth-service publishes on
    /// `<AUTH_REDIS_PREFIX>session-revoked`: keep the prefixes equal or set this).
    #[arg(
        long,
        env = "GATEWAY_SESSION_REVOCATION_CHANNEL",
        value_name = "GATEWAY_SESSION_REVOCATION_CHANNEL"
    )]
    pub session_revocation_channel: Option<String>,
    /// How long a user row is reused for `GET /me` (user id → the row user-service answered),
    /// in milliseconds. user-service announces every user whose row it changes; a change is
    /// seen at once while that feed is connected and within this bound when an announcement
    /// is lost. Serves only with a feed, as the session cache. 0 turns it off.
    #[arg(long, env = "GATEWAY_USER_CACHE_TTL_MS", value_name = "GATEWAY_USER_CACHE_TTL_MS", default_value_t = DEFAULT_USER_CACHE_TTL_MS,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub user_cache_ttl_ms: u64,
    /// Most user rows the cache holds (per replica); 0 turns it off.
    #[arg(long, env = "GATEWAY_USER_CACHE_MAX_ENTRIES", value_name = "GATEWAY_USER_CACHE_MAX_ENTRIES", default_value_t = DEFAULT_USER_CACHE_MAX_ENTRIES,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub user_cache_max_entries: u64,
    /// The Redis channel user-service announces changed users on; default
    /// `<GATEWAY_REDIS_PREFIX>user-changed` (user-service's `USER_CHANGE_CHANNEL`).
    #[arg(
        long,
        env = "GATEWAY_USER_CHANGE_CHANNEL",
        value_name = "GATEWAY_USER_CHANGE_CHANNEL"
    )]
    pub user_change_channel: Option<String>,
    /// Follow the in-process revocation feed (set by `wxmp up`, where auth-service runs in the
    /// same process); without Redis it is the session cache's only feed.
    #[arg(long, hide = true)]
    pub in_process_revocation: bool,
    /// HTTP worker threads; default: the number of cores.
    #[arg(long, env = "GATEWAY_WORKERS", value_name = "GATEWAY_WORKERS", value_parser = clap::value_parser!(u64).range(1..1024))]
    pub workers: Option<u64>,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    #[command(flatten)]
    pub internal: InternalAuthConfig,
    /// The mini programs' message push (`/wechat/push/{appid}`): `appid|token|EncodingAESKey|mode`
    /// entries separated by `;`, mode `safe` or `plaintext` (the key may be empty in plaintext
    /// mode). The token and key are the ones typed into the admin (开发管理 → 消息推送).
    #[arg(
        long,
        env = "GATEWAY_PUSH_APPS",
        value_name = "GATEWAY_PUSH_APPS",
        hide_env_values = true
    )]
    pub push_apps: Option<Secret>,
    /// A push whose timestamp is further than this from the gateway's clock is refused as a
    /// replay (seconds).
    #[arg(long, env = "GATEWAY_PUSH_MAX_SKEW_SECS", value_name = "GATEWAY_PUSH_MAX_SKEW_SECS", default_value_t = DEFAULT_PUSH_MAX_SKEW_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub push_max_skew_secs: u64,
}

/// Default of `GATEWAY_PUSH_MAX_SKEW_SECS`.
pub const DEFAULT_PUSH_MAX_SKEW_SECS: u64 = 300;

/// Parses `GATEWAY_PUSH_APPS` (see [`Config::push_apps`]); errors name the variable and the
/// appid, never the token or key.
pub fn parse_push_apps(spec: &str) -> Result<Vec<wechat::push::PushApp>, String> {
    let mut apps: Vec<wechat::push::PushApp> = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split('|').map(str::trim).collect();
        let [appid, token, key, mode] = parts[..] else {
            return Err("GATEWAY_PUSH_APPS: each entry is appid|token|EncodingAESKey|mode".into());
        };
        if appid.is_empty() || apps.iter().any(|a| a.appid() == appid) {
            return Err(format!(
                "GATEWAY_PUSH_APPS: appid {appid:?} is empty or listed twice"
            ));
        }
        let mode = wechat::push::Mode::parse(mode).ok_or_else(|| {
            format!("GATEWAY_PUSH_APPS: mode of {appid} must be safe or plaintext")
        })?;
        apps.push(
            wechat::push::PushApp::new(appid, token, key, mode)
                .map_err(|e| format!("GATEWAY_PUSH_APPS: {appid}: {e}"))?,
        );
    }
    Ok(apps)
}

impl Config {
    /// A configuration for upstreams at the given URLs, everything else at its default.
    /// Handy for `wxmp up` and tests, which do not read the environment.
    pub fn new(auth_url: &str, user_url: &str, pay_url: &str) -> Self {
        Self {
            listen_addr: "127.0.0.1:0".into(),
            auth_url: auth_url.into(),
            user_url: user_url.into(),
            pay_url: pay_url.into(),
            rpc_timeout_ms: 5000,
            body_limit: 65536,
            trusted_proxies: TrustedProxies::default(),
            login_rate_per_min: 60,
            notify_fail_limit: 20,
            notify_fail_window_secs: 60,
            redis_url: None,
            redis_prefix: DEFAULT_REDIS_PREFIX.into(),
            upstream_check_ms: DEFAULT_UPSTREAM_CHECK_MS,
            session_cache_ttl_ms: DEFAULT_SESSION_CACHE_TTL_MS,
            session_cache_max_entries: DEFAULT_SESSION_CACHE_MAX_ENTRIES,
            session_revocation_channel: None,
            user_cache_ttl_ms: DEFAULT_USER_CACHE_TTL_MS,
            user_cache_max_entries: DEFAULT_USER_CACHE_MAX_ENTRIES,
            user_change_channel: None,
            in_process_revocation: false,
            workers: None,
            telemetry: TelemetryConfig {
                log_format: Default::default(),
                metrics_addr: None,
            },
            internal: InternalAuthConfig {
                internal_token: None,
                ..Default::default()
            },
            push_apps: None,
            push_max_skew_secs: DEFAULT_PUSH_MAX_SKEW_SECS,
        }
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    pub fn notify_fail_window(&self) -> Duration {
        Duration::from_secs(self.notify_fail_window_secs)
    }

    pub fn upstream_check_interval(&self) -> Duration {
        Duration::from_millis(self.upstream_check_ms)
    }

    pub fn session_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.session_cache_ttl_ms)
    }

    pub fn user_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.user_cache_ttl_ms)
    }

    /// The channel the cache of user rows follows on `GATEWAY_REDIS_URL`.
    pub fn user_change_channel(&self) -> String {
        self.user_change_channel
            .clone()
            .unwrap_or_else(|| service_kit::session_cache::user_channel(&self.redis_prefix))
    }

    /// The channel the session cache follows on `GATEWAY_REDIS_URL`.
    pub fn session_revocation_channel(&self) -> String {
        self.session_revocation_channel
            .clone()
            .unwrap_or_else(|| service_kit::session_cache::channel(&self.redis_prefix))
    }

    pub fn body_limit(&self) -> usize {
        usize::try_from(self.body_limit).unwrap_or(usize::MAX)
    }

    pub fn workers(&self) -> usize {
        self.workers
            .and_then(|w| usize::try_from(w).ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            })
    }
}

/// One trusted proxy: an address or a network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network = addr
            .trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(Self { network, prefix })
    }
}

/// The proxies allowed to tell the client's address in `X-Forwarded-For`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for TrustedProxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.7 ,fd00::/8".parse().unwrap();
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd00::1")));
        assert!(!t.contains(ip("fe80::1")));
        assert!(
            t.contains(ip("::ffff:10.9.9.9")),
            "v4-mapped peers count as v4"
        );
        assert!(!t.contains(ip("11.0.0.1")));
        let all: TrustedProxies = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(TrustedProxies::from_str("").unwrap().is_empty());
    }

    #[test]
    fn bad_proxies_are_rejected() {
        assert!(TrustedProxies::from_str("10.0.0.0/33").is_err());
        assert!(TrustedProxies::from_str("example.com").is_err());
        assert!(TrustedProxies::from_str("::1/129").is_err());
    }

    #[test]
    fn defaults_parse() {
        let c = Config::try_parse_from(["wxmp-gateway"]).unwrap();
        assert_eq!(c.listen_addr, "0.0.0.0:8080");
        assert_eq!(c.auth_url, "http://127.0.0.1:50051");
        assert_eq!(c.rpc_timeout(), Duration::from_millis(5000));
        assert_eq!(c.body_limit(), 65536);
        assert!(c.workers() >= 1);
        assert_eq!(c.login_rate_per_min, 60);
        assert_eq!(c.notify_fail_limit, 20);
        assert_eq!(c.notify_fail_window(), Duration::from_secs(60));
        assert!(c.redis_url.is_none());
        assert_eq!(c.redis_prefix, "wxmp:");
        assert_eq!(c.upstream_check_interval(), Duration::from_secs(1));
        assert_eq!(c.session_cache_ttl(), Duration::from_secs(5));
        assert_eq!(c.session_cache_max_entries, 10_000);
        assert_eq!(c.session_revocation_channel(), "wxmp:session-revoked");
        assert_eq!(c.user_cache_ttl(), Duration::from_secs(5));
        assert_eq!(c.user_cache_max_entries, 10_000);
        assert_eq!(c.user_change_channel(), "wxmp:user-changed");
        assert!(!c.in_process_revocation);
        let bad = Config::try_parse_from(["wxmp-gateway", "--trusted-proxies", "nope"]);
        assert!(bad.is_err());
    }
}
