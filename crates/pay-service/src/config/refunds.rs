//! Refunds: the merchant certificate of v2's mutual-TLS secapi and the refund notify URL.

use std::path::PathBuf;

use super::validate_notify_url;

/// Refunds (issue 12). v2 refunds are on when the merchant certificate is configured; v3
/// refunds need only the v3 settings ([`PayV3Config`]).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RefundConfig {
    /// The merchant's API certificate (apiclient_cert.pem) for secapi/pay/refund. Setting it
    /// (or the key) turns refunds on.
    #[arg(long, env = "WXMP_PAY_CERT_PATH", value_name = "WXMP_PAY_CERT_PATH")]
    pub cert_path: Option<PathBuf>,

    /// The certificate's private key (apiclient_key.pem).
    #[arg(
        long,
        env = "WXMP_PAY_CERT_KEY_PATH",
        value_name = "WXMP_PAY_CERT_KEY_PATH"
    )]
    pub cert_key_path: Option<PathBuf>,

    /// Where WeChat posts refund notifies: the gateway's /pay/refund-notify (v2); v3 refunds
    /// are sent with this + `/v3` (/pay/refund-notify/v3). Required with v2 refunds; optional
    /// on v3 (unset: the merchant platform's setting, and the reconciler's query settles).
    #[arg(
        long,
        env = "PAY_REFUND_NOTIFY_URL",
        value_name = "PAY_REFUND_NOTIFY_URL"
    )]
    pub refund_notify_url: Option<String>,

    /// Base URL of the mutual-TLS secapi calls; default WXMP_WECHAT_PAY_BASE (the sandbox
    /// serves them on its own HTTPS port).
    #[arg(
        long,
        env = "WXMP_WECHAT_PAY_SECAPI_BASE",
        value_name = "WXMP_WECHAT_PAY_SECAPI_BASE"
    )]
    pub secapi_base: Option<String>,

    /// PEM CA to trust instead of the system roots for the secapi server (the sandbox's dev
    /// CA); unset for WeChat.
    #[arg(
        long,
        env = "WXMP_WECHAT_PAY_CA_PATH",
        value_name = "WXMP_WECHAT_PAY_CA_PATH"
    )]
    pub ca_path: Option<PathBuf>,
}

impl RefundConfig {
    /// True when refunds are configured.
    pub fn enabled(&self) -> bool {
        self.cert_path.is_some() || self.cert_key_path.is_some()
    }

    /// Checks what clap cannot, naming the variable at fault (the files are read by
    /// [`RefundConfig::merchant_cert`]).
    pub fn validate(&self) -> Result<(), String> {
        // Also without v2 refunds: v3 refunds carry it (+ `/v3`).
        if let Some(url) = &self.refund_notify_url {
            validate_notify_url(url)
                .map_err(|e| e.replace("PAY_NOTIFY_URL", "PAY_REFUND_NOTIFY_URL"))?;
        }
        if !self.enabled() {
            return Ok(());
        }
        if self.cert_path.is_none() {
            return Err("WXMP_PAY_CERT_PATH must be set when WXMP_PAY_CERT_KEY_PATH is".into());
        }
        if self.cert_key_path.is_none() {
            return Err("WXMP_PAY_CERT_KEY_PATH must be set when WXMP_PAY_CERT_PATH is".into());
        }
        match &self.refund_notify_url {
            None => {
                return Err(
                    "PAY_REFUND_NOTIFY_URL must be set when refunds are on (WXMP_PAY_CERT_PATH)"
                        .into(),
                );
            }
            Some(url) => validate_notify_url(url)
                .map_err(|e| e.replace("PAY_NOTIFY_URL", "PAY_REFUND_NOTIFY_URL"))?,
        }
        if let Some(base) = &self.secapi_base
            && !(base.starts_with("https://") || base.starts_with("http://"))
        {
            return Err("WXMP_WECHAT_PAY_SECAPI_BASE must be an http(s) URL".into());
        }
        Ok(())
    }

    /// Reads the certificate, key and CA files: a missing or unreadable one is an error naming
    /// its variable. `None` when refunds are off.
    pub fn merchant_cert(&self) -> Result<Option<wechat::MerchantCert>, String> {
        if !self.enabled() {
            return Ok(None);
        }
        self.validate()?;
        let read = |var: &str, path: &Option<PathBuf>| -> Result<Vec<u8>, String> {
            let path = path.as_ref().ok_or_else(|| format!("{var} must be set"))?;
            let bytes = std::fs::read(path)
                .map_err(|e| format!("{var}: cannot read {}: {e}", path.display()))?;
            if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(format!("{var}: {} is not a PEM file", path.display()));
            }
            Ok(bytes)
        };
        let cert_pem = read("WXMP_PAY_CERT_PATH", &self.cert_path)?;
        let key_pem = read("WXMP_PAY_CERT_KEY_PATH", &self.cert_key_path)?;
        let ca_pem = match &self.ca_path {
            Some(_) => Some(read("WXMP_WECHAT_PAY_CA_PATH", &self.ca_path)?),
            None => None,
        };
        Ok(Some(wechat::MerchantCert {
            cert_pem,
            key_pem,
            secapi_base: self.secapi_base.clone(),
            ca_pem,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refund_notify_url_is_checked_without_v2_refunds_too() {
        // No certificate (v2 refunds off): v3 refunds still send it, with `/v3` appended.
        let mut refunds = RefundConfig {
            refund_notify_url: Some("https://x/pay/refund-notify?a=1".into()),
            ..RefundConfig::default()
        };
        assert!(
            refunds
                .validate()
                .unwrap_err()
                .contains("PAY_REFUND_NOTIFY_URL")
        );
        refunds.refund_notify_url = Some("https://x/pay/refund-notify".into());
        assert_eq!(refunds.validate(), Ok(()));
        refunds.refund_notify_url = None;
        assert_eq!(refunds.validate(), Ok(()));
    }
}
