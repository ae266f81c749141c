//! `PAY_SHIPPING_*` and `PAY_VIRTUAL_PRODUCTS`: shipping uploads (see [`crate::shipping`]).

/// Default of `PAY_SHIPPING_RETRY_MS`.
pub const DEFAULT_SHIPPING_RETRY_MS: u64 = 30_000;
/// Default of `PAY_SHIPPING_QUOTA_BACKOFF_SECS`.
pub const DEFAULT_SHIPPING_QUOTA_BACKOFF_SECS: u64 = 3600;
/// Default of `PAY_SHIPPING_LEASE_SECS`.
pub const DEFAULT_SHIPPING_LEASE_SECS: u64 = 60;
/// Default of `PAY_SHIPPING_STUCK_SECS`.
pub const DEFAULT_SHIPPING_STUCK_SECS: u64 = 3600;

/// How shipping information reaches WeChat.
#[derive(clap::Args, Clone, Debug)]
pub struct ShippingConfig {
    /// Catalog product ids (comma-separated) that are virtual goods: a paid order of one is
    /// shipped (logistics_type 3) to WeChat by itself.
    #[arg(
        long,
        env = "PAY_VIRTUAL_PRODUCTS",
        value_name = "PAY_VIRTUAL_PRODUCTS",
        default_value = ""
    )]
    pub virtual_products: String,

    /// First retry delay of an upload WeChat did not take (10060001, -1, a transport error), in
    /// milliseconds, doubling per attempt up to an hour.
    #[arg(long, env = "PAY_SHIPPING_RETRY_MS", value_name = "PAY_SHIPPING_RETRY_MS", default_value_t = DEFAULT_SHIPPING_RETRY_MS,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub shipping_retry_ms: u64,

    /// Delay after WeChat answered 45009 (the API's daily quota is used up), in seconds.
    #[arg(long, env = "PAY_SHIPPING_QUOTA_BACKOFF_SECS", value_name = "PAY_SHIPPING_QUOTA_BACKOFF_SECS", default_value_t = DEFAULT_SHIPPING_QUOTA_BACKOFF_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub shipping_quota_backoff_secs: u64,

    /// How long a replica owns an upload it claimed (a replica that dies mid-upload releases
    /// it after this).
    #[arg(long, env = "PAY_SHIPPING_LEASE_SECS", value_name = "PAY_SHIPPING_LEASE_SECS", default_value_t = DEFAULT_SHIPPING_LEASE_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shipping_lease_secs: u64,

    /// An upload pending longer than this counts as stuck (metric
    /// `wxmp_pay_shipping_stuck_uploads`, its alert, `wxmp order`).
    #[arg(long, env = "PAY_SHIPPING_STUCK_SECS", value_name = "PAY_SHIPPING_STUCK_SECS", default_value_t = DEFAULT_SHIPPING_STUCK_SECS,
          value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    pub shipping_stuck_secs: u64,
}

impl Default for ShippingConfig {
    fn default() -> Self {
        Self {
            virtual_products: String::new(),
            shipping_retry_ms: DEFAULT_SHIPPING_RETRY_MS,
            shipping_quota_backoff_secs: DEFAULT_SHIPPING_QUOTA_BACKOFF_SECS,
            shipping_lease_secs: DEFAULT_SHIPPING_LEASE_SECS,
            shipping_stuck_secs: DEFAULT_SHIPPING_STUCK_SECS,
        }
    }
}

impl ShippingConfig {
    /// The virtual product ids.
    pub fn virtual_product_ids(&self) -> Vec<String> {
        self.virtual_products
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Every virtual product must be in the catalog.
    pub fn validate(&self, catalog: &super::Catalog) -> Result<(), String> {
        for id in self.virtual_product_ids() {
            if catalog.get(&id).is_none() {
                return Err(format!(
                    "PAY_VIRTUAL_PRODUCTS: {id:?} is not a product of PAY_PRODUCTS"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_products_must_be_in_the_catalog() {
        let catalog: super::super::Catalog = "vip:100:VIP".parse().unwrap();
        let mut c = ShippingConfig {
            virtual_products: " vip ,".into(),
            ..ShippingConfig::default()
        };
        assert_eq!(c.virtual_product_ids(), vec!["vip".to_owned()]);
        assert!(c.validate(&catalog).is_ok());
        c.virtual_products = "vip,nope".into();
        assert!(
            c.validate(&catalog)
                .unwrap_err()
                .starts_with("PAY_VIRTUAL_PRODUCTS")
        );
    }
}
