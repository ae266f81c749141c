//! What `wxmp-user` reads at start, from the environment.

use service_kit::{
    Secret,
    grpc::{DrainConfig, InternalAuthConfig},
    settings::{Listen, ListenVar, WechatApi},
    telemetry::TelemetryConfig,
};

use crate::writes::DEFAULT_WRITE_WORKERS;

/// `USER_LISTEN_ADDR`, by default port 50052.
pub struct ListenAddr;

impl ListenVar for ListenAddr {
    const ENV: &'static str = "USER_LISTEN_ADDR";
    const DEFAULT: &'static str = "0.0.0.0:50052";
}

/// Default of `USER_SESSION_CACHE_TTL_MS`.
pub const DEFAULT_SESSION_CACHE_TTL_MS: u64 = 5000;
/// Default of `USER_SESSION_CACHE_MAX_ENTRIES`.
pub const DEFAULT_SESSION_CACHE_MAX_ENTRIES: u64 = 10_000;
/// Default of `USER_SESSION_REVOCATION_CHANNEL`: auth-service's default prefix's channel.
pub const DEFAULT_SESSION_REVOCATION_CHANNEL: &str = "wxmp:session-revoked";
/// Default of `USER_CHANGE_CHANNEL`: the gateway's default prefix's channel.
pub const DEFAULT_USER_CHANGE_CHANNEL: &str = "wxmp:user-changed";
/// Default of `USER_KEY_ROTATION_CHANNEL`: auth-service's default prefix's channel.
pub const DEFAULT_KEY_ROTATION_CHANNEL: &str = "wxmp:key-rotated";

/// Everything `wxmp-user` reads at start.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "wxmp-user",
    about = "wxmp user-service: users, encrypted profile and phone data"
)]
pub struct Config {
    #[command(flatten)]
    pub listen: Listen<ListenAddr>,

    /// The users database: postgres://user:pass@host/db or sqlite://path/to/users.db.
    #[arg(
        long,
        env = "USER_DATABASE_URL",
        value_name = "USER_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Secret,

    /// Most database connections held open (SQLite always uses one).
    #[arg(long, env = "USER_DB_POOL_SIZE", value_name = "USER_DB_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub db_pool_size: u32,

    /// Tasks that coalesce concurrent profile updates into one UPDATE and one commit on
    /// PostgreSQL, each taking whatever is queued when it is free; 0 runs each update alone
    /// (as SQLite always does).
    #[arg(long, env = "USER_WRITE_WORKERS", value_name = "USER_WRITE_WORKERS",
          default_value_t = DEFAULT_WRITE_WORKERS,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub write_workers: u32,

    /// auth-service's gRPC URL (GetSessionKey).
    #[arg(
        long,
        env = "USER_AUTH_SERVICE_URL",
        value_name = "USER_AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,

    /// Time allowed for one call to auth-service (and to connect to it), in milliseconds.
    #[arg(long, env = "USER_RPC_TIMEOUT_MS", value_name = "USER_RPC_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=120_000))]
    pub rpc_timeout_ms: u64,

    /// The Redis auth-service keeps its sessions in: the session cache follows its logout
    /// announcements there (the channel below), and every user whose row changes is announced
    /// there for the gateways' caches of user rows (`USER_CHANGE_CHANNEL`). Without it (and
    /// outside `wxmp up`) the cache is off and every token is asked of auth-service.
    #[arg(
        long,
        env = "USER_REDIS_URL",
        value_name = "USER_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<Secret>,

    /// The channel auth-service announces ended sessions on: `<AUTH_REDIS_PREFIX>session-revoked`.
    #[arg(
        long,
        env = "USER_SESSION_REVOCATION_CHANNEL",
        value_name = "USER_SESSION_REVOCATION_CHANNEL",
        default_value = DEFAULT_SESSION_REVOCATION_CHANNEL
    )]
    pub session_revocation_channel: String,

    /// The channel changed users are announced on (their decimal id), which the gateways'
    /// caches of user rows follow: `<GATEWAY_REDIS_PREFIX>user-changed`.
    #[arg(
        long,
        env = "USER_CHANGE_CHANNEL",
        value_name = "USER_CHANGE_CHANNEL",
        default_value = DEFAULT_USER_CHANGE_CHANNEL
    )]
    pub user_change_channel: String,

    /// The channel auth-service announces logins on (a login may rotate the user's
    /// session_key; the session cache asks again for an answer kept before it):
    /// `<AUTH_REDIS_PREFIX>key-rotated`.
    #[arg(
        long,
        env = "USER_KEY_ROTATION_CHANNEL",
        value_name = "USER_KEY_ROTATION_CHANNEL",
        default_value = DEFAULT_KEY_ROTATION_CHANNEL
    )]
    pub key_rotation_channel: String,

    /// How long an `AuthenticateWithSessionKey` answer (principal and session_key) is reused
    /// for the same token, in milliseconds; never past the session's expiry. A logout is seen
    /// at once while the feed is connected, within this bound when it is cut silently. 0 turns
    /// the cache off.
    #[arg(long, env = "USER_SESSION_CACHE_TTL_MS", value_name = "USER_SESSION_CACHE_TTL_MS",
          default_value_t = DEFAULT_SESSION_CACHE_TTL_MS,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub session_cache_ttl_ms: u64,

    /// Most answers the session cache holds; 0 turns it off.
    #[arg(long, env = "USER_SESSION_CACHE_MAX_ENTRIES", value_name = "USER_SESSION_CACHE_MAX_ENTRIES",
          default_value_t = DEFAULT_SESSION_CACHE_MAX_ENTRIES,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub session_cache_max_entries: u64,

    /// Follow the in-process revocation feed (for `wxmp up`, where auth-service runs in the
    /// same process); without Redis it is the session cache's only feed.
    #[arg(long, hide = true)]
    pub in_process_revocation: bool,

    /// WeChat's API, for getuserphonenumber.
    #[command(flatten)]
    pub wechat: WechatApi,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    #[command(flatten)]
    pub internal: InternalAuthConfig,

    #[command(flatten)]
    pub drain: DrainConfig,
}

impl Config {
    /// The defaults clap would give with only `USER_DATABASE_URL` set, pointed at the given
    /// auth-service: for tests and `wxmp up`. Every field is public to adjust.
    pub fn new(database_url: impl Into<String>, auth_service_url: impl Into<String>) -> Self {
        Self {
            listen: Listen::default_addr(),
            database_url: Secret::new(database_url),
            db_pool_size: 16,
            write_workers: DEFAULT_WRITE_WORKERS,
            auth_service_url: auth_service_url.into(),
            rpc_timeout_ms: 3000,
            redis_url: None,
            session_revocation_channel: DEFAULT_SESSION_REVOCATION_CHANNEL.into(),
            user_change_channel: DEFAULT_USER_CHANGE_CHANNEL.into(),
            key_rotation_channel: DEFAULT_KEY_ROTATION_CHANNEL.into(),
            session_cache_ttl_ms: DEFAULT_SESSION_CACHE_TTL_MS,
            session_cache_max_entries: DEFAULT_SESSION_CACHE_MAX_ENTRIES,
            in_process_revocation: false,
            wechat: WechatApi::default(),
            telemetry: TelemetryConfig {
                log_format: Default::default(),
                metrics_addr: None,
            },
            internal: InternalAuthConfig {
                internal_token: None,
                ..Default::default()
            },
            drain: DrainConfig::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::try_parse_from(["wxmp-user", "--database-url", "sqlite://x.db"]).unwrap();
        assert_eq!(c.listen.addr.port(), 50052);
        assert_eq!(c.db_pool_size, 16);
        assert_eq!(c.write_workers, 1);
        assert_eq!(c.auth_service_url, "http://127.0.0.1:50051");
        assert_eq!(c.rpc_timeout_ms, 3000);
        assert!(
            c.redis_url.is_none(),
            "the session cache needs a feed to be on"
        );
        assert_eq!(c.session_revocation_channel, "wxmp:session-revoked");
        assert_eq!(c.user_change_channel, "wxmp:user-changed");
        assert_eq!(c.key_rotation_channel, "wxmp:key-rotated");
        assert_eq!(c.session_cache_ttl_ms, 5000);
        assert_eq!(c.session_cache_max_entries, 10_000);
        assert!(!c.in_process_revocation);
        assert!(
            !format!("{c:?}").contains("x.db"),
            "the database URL may hold a password"
        );
        let c = Config::try_parse_from([
            "wxmp-user",
            "--database-url",
            "sqlite://x.db",
            "--redis-url",
            "redis://:hunter2@h/0",
        ])
        .unwrap();
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "the Redis URL may hold a password"
        );
        let too_long = Config::try_parse_from([
            "wxmp-user",
            "--database-url",
            "sqlite://x.db",
            "--session-cache-ttl-ms",
            "60001",
        ]);
        assert!(too_long.is_err(), "a TTL over a minute is refused");
    }
}
