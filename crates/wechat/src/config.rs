//! Where WeChat lives and how long to wait for it.

use std::time::Duration;

/// Base URLs and timeouts for [`WechatClient`](crate::WechatClient).
///
/// Holds no secrets: app secrets and pay keys are passed per call, so one client serves several apps.
///
/// ```
/// use std::time::Duration;
/// use wechat::WechatConfig;
///
/// let config = WechatConfig::default();
/// assert_eq!(config.api_base, "https://api.weixin.qq.com");
/// assert_eq!(config.pay_base, "https://api.mch.weixin.qq.com");
/// assert_eq!(config.request_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WechatConfig {
    /// Base URL of the mini program API (`/sns/jscode2session`, `/cgi-bin/token`), no trailing slash needed.
    pub api_base: String,
    /// Base URL of WeChat Pay v2 (`/pay/unifiedorder`, ...).
    pub pay_base: String,
    /// Time allowed to establish a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, from connecting to the last byte of the response.
    pub request_timeout: Duration,
}

/// WeChat's production API base URL.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";
/// WeChat Pay's production API base URL.
pub const DEFAULT_PAY_BASE: &str = "https://api.mch.weixin.qq.com";

impl Default for WechatConfig {
    fn default() -> Self {
        Self {
            api_base: DEFAULT_API_BASE.to_owned(),
            pay_base: DEFAULT_PAY_BASE.to_owned(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Joins a base URL and an absolute path without doubling or dropping the slash.
pub(crate) fn join(base: &str, path: &str) -> String {
    let mut url = String::with_capacity(base.len() + path.len());
    url.push_str(base.trim_end_matches('/'));
    url.push_str(path);
    url
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn join_handles_trailing_slash() {
        assert_eq!(join("http://a/", "/x"), "http://a/x");
        assert_eq!(join("http://a", "/x"), "http://a/x");
        assert_eq!(join("http://a/prefix/", "/x"), "http://a/prefix/x");
    }
}
