//! Configuration blocks that several binaries share, written once and flattened into each
//! binary's own `Config` with `#[command(flatten)]`.
//!
//! - [`Listen`]: the gRPC listen address. Each service names its own variable and default port
//!   (`AUTH_LISTEN_ADDR`, 50051, ...) through a [`ListenVar`] type, so one block serves all.
//! - [`WechatApi`]: where WeChat's server API is and how long one call may take, shared by every
//!   service that calls it (`WXMP_WECHAT_API_BASE`, `WXMP_WECHAT_TIMEOUT_MS`).

use std::{fmt, marker::PhantomData, net::SocketAddr, time::Duration};

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

/// A service's listen-address variable and its default.
pub trait ListenVar {
    /// The environment variable (also the value name in `--help`).
    const ENV: &'static str;
    /// The default address, e.g. `0.0.0.0:50051`.
    const DEFAULT: &'static str;
}

/// The listen address of one service, read from `--listen-addr` or `S::ENV`.
pub struct Listen<S> {
    pub addr: SocketAddr,
    service: PhantomData<fn() -> S>,
}

impl<S: ListenVar> Listen<S> {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            service: PhantomData,
        }
    }

    /// `S::DEFAULT`, as clap would give it.
    pub fn default_addr() -> Self {
        Self::new(
            S::DEFAULT
                .parse()
                .expect("a ListenVar's DEFAULT is a socket address"),
        )
    }

    /// Binds the address; the error names the variable, so a taken port is found at once.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, String> {
        tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| format!("cannot listen on {} ({}): {e}", self.addr, S::ENV))
    }
}

// By hand rather than derived: the derive would need `S: Clone`/`Debug` of a marker type.
impl<S> Clone for Listen<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Listen<S> {}

impl<S> fmt::Debug for Listen<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Listen").field(&self.addr).finish()
    }
}

const LISTEN_ID: &str = "listen_addr";

impl<S: ListenVar> FromArgMatches for Listen<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let addr = matches
            .get_one::<SocketAddr>(LISTEN_ID)
            .copied()
            .ok_or_else(|| {
                clap::Error::raw(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!("{} is required\n", S::ENV),
                )
            })?;
        Ok(Self::new(addr))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(addr) = matches.get_one::<SocketAddr>(LISTEN_ID) {
            self.addr = *addr;
        }
        Ok(())
    }
}

impl<S: ListenVar> Args for Listen<S> {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(LISTEN_ID)
                .long("listen-addr")
                .env(S::ENV)
                .value_name(S::ENV)
                .default_value(S::DEFAULT)
                .value_parser(clap::value_parser!(SocketAddr))
                .help("gRPC listen address"),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// Default of `WXMP_WECHAT_TIMEOUT_MS`.
pub const DEFAULT_WECHAT_TIMEOUT_MS: u64 = 5000;

/// WeChat's server API (code2Session, access_token, phone numbers, subscribe messages).
#[derive(Clone, Debug, clap::Args)]
pub struct WechatApi {
    /// Base URL of WeChat's API (or the sandbox).
    #[arg(long = "wechat-api-base", env = "WXMP_WECHAT_API_BASE", value_name = "WXMP_WECHAT_API_BASE",
          default_value = wechat::config::DEFAULT_API_BASE)]
    pub api_base: String,

    /// Time allowed for one WeChat call, in milliseconds.
    #[arg(long = "wechat-timeout-ms", env = "WXMP_WECHAT_TIMEOUT_MS", value_name = "WXMP_WECHAT_TIMEOUT_MS",
          default_value_t = DEFAULT_WECHAT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=120_000))]
    pub timeout_ms: u64,
}

impl Default for WechatApi {
    fn default() -> Self {
        Self::new(wechat::config::DEFAULT_API_BASE)
    }
}

impl WechatApi {
    /// `api_base` with the default timeout.
    pub fn new(api_base: impl Into<String>) -> Self {
        Self {
            api_base: api_base.into(),
            timeout_ms: DEFAULT_WECHAT_TIMEOUT_MS,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks what clap cannot (also for blocks built in code), naming the variable at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("WXMP_WECHAT_TIMEOUT_MS must be at least 1".into());
        }
        if !(self.api_base.starts_with("http://") || self.api_base.starts_with("https://")) {
            return Err("WXMP_WECHAT_API_BASE must start with http:// or https://".into());
        }
        Ok(())
    }

    /// The client settings: the whole call within the timeout, connecting within 2 s of it.
    pub fn client_config(&self) -> wechat::WechatConfig {
        let timeout = self.timeout();
        wechat::WechatConfig {
            api_base: self.api_base.clone(),
            connect_timeout: timeout.min(Duration::from_secs(2)),
            request_timeout: timeout,
            ..wechat::WechatConfig::default()
        }
    }

    /// A WeChat client with [`Self::client_config`].
    pub fn client(&self) -> Result<wechat::WechatClient, String> {
        wechat::WechatClient::new(self.client_config())
            .map_err(|e| format!("WXMP_WECHAT_API_BASE: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    struct TestVar;
    impl ListenVar for TestVar {
        const ENV: &'static str = "WXMP_SETTINGS_TEST_LISTEN_ADDR";
        const DEFAULT: &'static str = "0.0.0.0:50099";
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        listen: Listen<TestVar>,
        #[command(flatten)]
        wechat: WechatApi,
    }

    #[test]
    fn defaults_come_from_the_blocks() {
        let cli = Cli::try_parse_from(["t"]).unwrap();
        assert_eq!(
            cli.listen.addr,
            "0.0.0.0:50099".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(cli.listen.addr, Listen::<TestVar>::default_addr().addr);
        assert_eq!(cli.wechat.api_base, "https://api.weixin.qq.com");
        assert_eq!(cli.wechat.timeout_ms, 5000);
    }

    #[test]
    fn flags_keep_their_names() {
        let cli = Cli::try_parse_from([
            "t",
            "--listen-addr",
            "127.0.0.1:7",
            "--wechat-api-base",
            "http://127.0.0.1:9000",
            "--wechat-timeout-ms",
            "250",
        ])
        .unwrap();
        assert_eq!(
            cli.listen.addr,
            "127.0.0.1:7".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(cli.wechat.api_base, "http://127.0.0.1:9000");
        assert_eq!(cli.wechat.timeout(), Duration::from_millis(250));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Cli::try_parse_from(["t", "--listen-addr", "nowhere"]).unwrap_err();
        assert!(
            err.to_string().contains("WXMP_SETTINGS_TEST_LISTEN_ADDR"),
            "{err}"
        );
        let err = Cli::try_parse_from(["t", "--wechat-timeout-ms", "0"]).unwrap_err();
        assert!(err.to_string().contains("WXMP_WECHAT_TIMEOUT_MS"), "{err}");
        let ftp = WechatApi::new("ftp://x");
        assert_eq!(
            ftp.validate().unwrap_err(),
            "WXMP_WECHAT_API_BASE must start with http:// or https://"
        );
    }

    #[test]
    fn the_client_connects_within_two_seconds_of_the_timeout() {
        let long = WechatApi {
            timeout_ms: 8000,
            ..WechatApi::new("http://x")
        };
        let c = long.client_config();
        assert_eq!(c.api_base, "http://x");
        assert_eq!(c.request_timeout, Duration::from_secs(8));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        let short = WechatApi {
            timeout_ms: 300,
            ..WechatApi::new("http://x")
        };
        assert_eq!(
            short.client_config().connect_timeout,
            Duration::from_millis(300)
        );
    }

    #[tokio::test]
    async fn a_taken_port_names_the_variable() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = Listen::<TestVar>::new(taken.local_addr().unwrap());
        let err = listen.bind().await.unwrap_err();
        assert!(err.contains("WXMP_SETTINGS_TEST_LISTEN_ADDR"), "{err}");
    }
}
