//! The one HTTP client every WeChat call goes through.

use crate::config::WechatConfig;

/// Building the underlying HTTP client failed (e.g. no TLS backend could be initialised).
#[derive(Debug, thiserror::Error)]
#[error("could not build the WeChat HTTP client: {0}")]
pub struct ClientBuildError(String);

/// A WeChat API client: one connection pool, configured timeouts and base URLs.
///
/// Cheap to clone (the pool is shared). The API calls live in [`auth`](crate::auth) and
/// [`pay`](crate::pay).
///
/// ```
/// use wechat::{WechatClient, WechatConfig};
///
/// let client = WechatClient::new(WechatConfig::default()).unwrap();
/// let other = client.clone(); // shares the connection pool
/// assert_eq!(other.config(), client.config());
/// ```
#[derive(Clone, Debug)]
pub struct WechatClient {
    http: reqwest::Client,
    config: WechatConfig,
}

impl WechatClient {
    /// Builds the client with `config`'s timeouts.
    pub fn new(config: WechatConfig) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("wxmp-wechat/", env!("CARGO_PKG_VERSION")))
            .build()
            // reqwest's build errors carry no URL and no secret.
            .map_err(|e| ClientBuildError(e.to_string()))?;
        Ok(Self { http, config })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &WechatConfig {
        &self.config
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
