//! Bills (issue 27): the daily download of WeChat's statements and their reconciliation.

/// Default China-time hour after which yesterday's bill is fetched (WeChat makes bills from
/// 09:00 and advises fetching after 10:00).
pub const DEFAULT_BILLS_HOUR: u32 = 10;
/// Default wait before asking again for a bill that was not there, not ready or refused.
pub const DEFAULT_BILLS_RETRY_SECS: u64 = 1800;
/// Default attempts of a day answered "no bill" while the ledger has payments that day, after
/// which the day is reconciled as empty (every payment of it then reported missing).
pub const DEFAULT_BILLS_MAX_ATTEMPTS: u32 = 12;
/// Default lease of a day's job (a replica that dies mid-run frees the day after it).
pub const DEFAULT_BILLS_LEASE_SECS: u64 = 600;

/// The bill job's settings.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BillsConfig {
    /// Run the daily bill job (download yesterday's bills and reconcile them). `wxmp bills`
    /// and the ReconcileBills RPC work without it.
    #[arg(long = "bills-enabled", env = "PAY_BILLS_ENABLED", value_name = "PAY_BILLS_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub enabled: bool,

    /// China-time hour (0-23) from which yesterday's bills are fetched.
    #[arg(long = "bills-hour", env = "PAY_BILLS_HOUR", value_name = "PAY_BILLS_HOUR", default_value_t = DEFAULT_BILLS_HOUR)]
    pub hour: u32,

    /// Which APIs' bills to download: `auto` (v2 when the v2 key is set, v3 when v3 is
    /// configured), or a list such as `v2`, `v3`, `v2,v3`.
    #[arg(
        long = "bills-apis",
        env = "PAY_BILLS_APIS",
        value_name = "PAY_BILLS_APIS",
        default_value = "auto"
    )]
    pub apis: String,

    /// The appid sent with v2's downloadbill (any app bound to the merchant; the bill is the
    /// merchant's whole day whichever appid asks).
    #[arg(
        long = "bills-appid",
        env = "PAY_BILLS_APPID",
        value_name = "PAY_BILLS_APPID"
    )]
    pub appid: Option<String>,

    /// Seconds before asking again for a bill that was not there yet, or failed (bad hash,
    /// WeChat unreachable).
    #[arg(long = "bills-retry-secs", env = "PAY_BILLS_RETRY_SECS", value_name = "PAY_BILLS_RETRY_SECS", default_value_t = DEFAULT_BILLS_RETRY_SECS)]
    pub retry_secs: u64,

    /// Attempts at a day WeChat says has no bill while wxmp has payments that day; then the
    /// day is reconciled as empty.
    #[arg(long = "bills-max-attempts", env = "PAY_BILLS_MAX_ATTEMPTS", value_name = "PAY_BILLS_MAX_ATTEMPTS", default_value_t = DEFAULT_BILLS_MAX_ATTEMPTS)]
    pub max_attempts: u32,

    /// Seconds a replica holds a day's job.
    #[arg(long = "bills-lease-secs", env = "PAY_BILLS_LEASE_SECS", value_name = "PAY_BILLS_LEASE_SECS", default_value_t = DEFAULT_BILLS_LEASE_SECS)]
    pub lease_secs: u64,
}

impl BillsConfig {
    /// Checks what clap cannot, naming the variable at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.hour > 23 {
            return Err("PAY_BILLS_HOUR must be between 0 and 23".into());
        }
        if self.retry_secs == 0 || self.retry_secs > 86_400 {
            return Err("PAY_BILLS_RETRY_SECS must be between 1 and 86400".into());
        }
        if self.lease_secs < 10 || self.lease_secs > 86_400 {
            return Err("PAY_BILLS_LEASE_SECS must be between 10 and 86400".into());
        }
        if self.max_attempts == 0 {
            return Err("PAY_BILLS_MAX_ATTEMPTS must be > 0".into());
        }
        self.api_list(true, true)?;
        Ok(())
    }

    /// The APIs whose bills are downloaded, given which ones are configured.
    pub fn api_list(&self, v2: bool, v3: bool) -> Result<Vec<&'static str>, String> {
        let apis = self.apis.trim();
        if apis.is_empty() || apis.eq_ignore_ascii_case("auto") {
            let mut out = Vec::new();
            if v2 {
                out.push("v2");
            }
            if v3 {
                out.push("v3");
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        for api in apis.split(',').map(str::trim) {
            let api = match api {
                "v2" => "v2",
                "v3" => "v3",
                other => {
                    return Err(format!(
                        "PAY_BILLS_APIS: {other:?} is not v2 or v3 (or auto)"
                    ));
                }
            };
            if !out.contains(&api) {
                out.push(api);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(apis: &str) -> BillsConfig {
        BillsConfig {
            apis: apis.into(),
            hour: DEFAULT_BILLS_HOUR,
            retry_secs: DEFAULT_BILLS_RETRY_SECS,
            max_attempts: DEFAULT_BILLS_MAX_ATTEMPTS,
            lease_secs: DEFAULT_BILLS_LEASE_SECS,
            ..BillsConfig::default()
        }
    }

    #[test]
    fn apis_are_auto_or_a_list() {
        assert_eq!(config("auto").api_list(true, false).unwrap(), vec!["v2"]);
        assert_eq!(config("").api_list(true, true).unwrap(), vec!["v2", "v3"]);
        assert_eq!(config("v3, v3").api_list(true, true).unwrap(), vec!["v3"]);
        assert!(
            config("v4")
                .validate()
                .unwrap_err()
                .contains("PAY_BILLS_APIS")
        );
        let mut late = config("auto");
        late.hour = 24;
        assert!(late.validate().unwrap_err().contains("PAY_BILLS_HOUR"));
        assert!(config("v2").validate().is_ok());
    }
}
