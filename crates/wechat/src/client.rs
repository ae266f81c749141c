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
    /// The mutual-TLS client for `secapi` calls and its base URL, once a merchant
    /// certificate is set.
    secapi: Option<(reqwest::Client, String)>,
}

/// The merchant's API certificate for the `secapi` calls (refunds), and where to send them.
///
/// `Debug` shows neither the key nor the certificate.
#[derive(Clone, Default)]
pub struct MerchantCert {
    /// `apiclient_cert.pem`.
    pub cert_pem: Vec<u8>,
    /// `apiclient_key.pem` (PKCS#8 or PKCS#1).
    pub key_pem: Vec<u8>,
    /// Base URL of the secapi calls; `None` means [`WechatConfig::pay_base`].
    pub secapi_base: Option<String>,
    /// PEM roots to trust *instead of* the system's for the secapi server (the sandbox's dev
    /// CA); `None` trusts the usual roots, as for WeChat itself.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for MerchantCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerchantCert")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("secapi_base", &self.secapi_base)
            .field("ca_pem", &self.ca_pem.as_ref().map(std::vec::Vec::len))
            .finish()
    }
}

/// How long an idle keep-alive connection stays in the pool. Shorter than the keep-alive of
/// the servers we call (actix, which the sandbox runs on, closes idle connections after 5 s):
/// a pooled connection the server is closing at the moment we reuse it fails a request that
/// may already have been written (a `code2Session` must not be retried: its code is spent).
const IDLE_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

impl WechatClient {
    /// Builds the client with `config`'s timeouts.
    pub fn new(config: WechatConfig) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("wxmp-wechat/", env!("CARGO_PKG_VERSION")))
            .build()
            // reqwest's build errors carry no URL and no secret.
            .map_err(|e| ClientBuildError(e.to_string()))?;
        Ok(Self {
            http,
            config,
            secapi: None,
        })
    }

    /// The same client, plus a mutual-TLS client presenting `cert` for the `secapi` calls
    /// ([`WechatClient::refund`]). Fails when the PEMs do not hold a certificate and its key.
    pub fn with_merchant_cert(mut self, cert: &MerchantCert) -> Result<Self, ClientBuildError> {
        let mut pem = cert.cert_pem.clone();
        pem.push(b'\n');
        pem.extend_from_slice(&cert.key_pem);
        // reqwest's errors name no file content and no key.
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| ClientBuildError(format!("merchant certificate: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.request_timeout)
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("wxmp-wechat/", env!("CARGO_PKG_VERSION")))
            .identity(identity);
        if let Some(ca) = &cert.ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| ClientBuildError(format!("CA certificate: {e}")))?;
            if roots.is_empty() {
                return Err(ClientBuildError(
                    "CA certificate: no certificate in the PEM".into(),
                ));
            }
            builder = builder.tls_certs_only(roots);
        }
        let http = builder
            .build()
            .map_err(|e| ClientBuildError(e.to_string()))?;
        let base = cert
            .secapi_base
            .clone()
            .unwrap_or_else(|| self.config.pay_base.clone());
        self.secapi = Some((http, base));
        Ok(self)
    }

    /// True when a merchant certificate is set (refunds can be sent).
    pub fn has_merchant_cert(&self) -> bool {
        self.secapi.is_some()
    }

    pub(crate) fn secapi(&self) -> Option<(&reqwest::Client, &str)> {
        self.secapi.as_ref().map(|(c, b)| (c, b.as_str()))
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &WechatConfig {
        &self.config
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
