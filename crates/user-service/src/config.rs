//! What `wxmp-user` reads at start, from the environment.

use service_kit::{
    Secret,
    grpc::{DrainConfig, InternalAuthConfig},
    settings::{Listen, ListenVar, WechatApi},
    telemetry::TelemetryConfig,
};

/// `USER_LISTEN_ADDR`, by default port 50052.
pub struct ListenAddr;

impl ListenVar for ListenAddr {
    const ENV: &'static str = "USER_LISTEN_ADDR";
    const DEFAULT: &'static str = "0.0.0.0:50052";
}

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
            auth_service_url: auth_service_url.into(),
            rpc_timeout_ms: 3000,
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
        assert_eq!(c.auth_service_url, "http://127.0.0.1:50051");
        assert_eq!(c.rpc_timeout_ms, 3000);
        assert!(
            !format!("{c:?}").contains("x.db"),
            "the database URL may hold a password"
        );
    }
}
