//! `PAY_XPAY_*`: virtual payment (虚拟支付, see [`crate::xpay`]).
//!
//! The OfferID and the AppKeys come from the mini program's admin console (虚拟支付 → 基本配置);
//! WeChat keeps one AppKey for live (`env` 0) and one for its sandbox (`env` 1):
//! <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/virtual-payment.html>

use service_kit::Secret;

/// Virtual payment settings.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct XpayConfig {
    /// Catalog products sold through virtual payment (道具直购), as
    /// `catalog_id:xpay_product_id` pairs separated by commas; the xpay product id is the one
    /// configured in WeChat's console at the same price as the catalog.
    #[arg(
        long,
        env = "PAY_XPAY_PRODUCTS",
        value_name = "PAY_XPAY_PRODUCTS",
        default_value = ""
    )]
    pub xpay_products: String,

    /// The OfferID (虚拟支付 → 基本配置).
    #[arg(
        long,
        env = "PAY_XPAY_OFFER_ID",
        value_name = "PAY_XPAY_OFFER_ID",
        default_value = ""
    )]
    pub xpay_offer_id: String,

    /// The live AppKey (env 0): signs paySig and the server APIs' pay_sig.
    #[arg(
        long,
        env = "PAY_XPAY_APP_KEY",
        value_name = "PAY_XPAY_APP_KEY",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub xpay_app_key: Secret,

    /// The sandbox AppKey (env 1).
    #[arg(
        long,
        env = "PAY_XPAY_SANDBOX_APP_KEY",
        value_name = "PAY_XPAY_SANDBOX_APP_KEY",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub xpay_sandbox_app_key: Secret,

    /// 0: live, 1: WeChat's virtual-payment sandbox.
    #[arg(long, env = "PAY_XPAY_ENV", value_name = "PAY_XPAY_ENV", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=1))]
    pub xpay_env: u8,
}

impl XpayConfig {
    /// `(catalog_id, xpay_product_id)` pairs.
    pub fn products(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for entry in self
            .xpay_products
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let Some((id, xpay_id)) = entry.split_once(':') else {
                return Err(format!(
                    "PAY_XPAY_PRODUCTS: {entry:?} is not catalog_id:xpay_product_id"
                ));
            };
            let (id, xpay_id) = (id.trim(), xpay_id.trim());
            if !super::catalog::valid_product_id(xpay_id) {
                return Err(format!(
                    "PAY_XPAY_PRODUCTS: xpay product id {xpay_id:?} must be 1..=32 characters of [0-9A-Za-z_-]"
                ));
            }
            if out.iter().any(|(c, _): &(String, String)| c == id) {
                return Err(format!("PAY_XPAY_PRODUCTS: {id:?} appears twice"));
            }
            out.push((id.to_owned(), xpay_id.to_owned()));
        }
        Ok(out)
    }

    /// The AppKey of the configured env.
    pub fn app_key(&self) -> &Secret {
        if self.xpay_env == 1 {
            &self.xpay_sandbox_app_key
        } else {
            &self.xpay_app_key
        }
    }

    /// Products in the catalog, not also JSAPI virtual products, an OfferID and the env's
    /// AppKey when any product is sold this way.
    pub fn validate(
        &self,
        catalog: &super::Catalog,
        jsapi_virtual: &[String],
    ) -> Result<(), String> {
        let products = self.products()?;
        if products.is_empty() {
            return Ok(());
        }
        for (id, _) in &products {
            if catalog.get(id).is_none() {
                return Err(format!(
                    "PAY_XPAY_PRODUCTS: {id:?} is not a product of PAY_PRODUCTS"
                ));
            }
            if jsapi_virtual.iter().any(|v| v == id) {
                return Err(format!(
                    "PAY_XPAY_PRODUCTS: {id:?} is also in PAY_VIRTUAL_PRODUCTS (WeChat Pay); sell it one way"
                ));
            }
        }
        if self.xpay_offer_id.trim().is_empty() {
            return Err("PAY_XPAY_OFFER_ID must be set when PAY_XPAY_PRODUCTS is".into());
        }
        if self.app_key().is_empty() {
            return Err(if self.xpay_env == 1 {
                "PAY_XPAY_SANDBOX_APP_KEY must be set (PAY_XPAY_ENV=1)".into()
            } else {
                "PAY_XPAY_APP_KEY must be set (PAY_XPAY_ENV=0)".into()
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_parse_and_validate() {
        let catalog: super::super::Catalog = "vip:990:VIP;coin:100:Coins".parse().unwrap();
        let mut c = XpayConfig {
            xpay_products: " vip : vip_month ,".into(),
            ..XpayConfig::default()
        };
        assert_eq!(
            c.products().unwrap(),
            vec![("vip".into(), "vip_month".into())]
        );
        assert!(c.validate(&catalog, &[]).unwrap_err().contains("OFFER_ID"));
        c.xpay_offer_id = "1450000000".into();
        c.xpay_env = 1;
        assert!(
            c.validate(&catalog, &[])
                .unwrap_err()
                .contains("SANDBOX_APP_KEY")
        );
        c.xpay_sandbox_app_key = Secret::new("k");
        c.validate(&catalog, &[]).unwrap();
        assert!(c.validate(&catalog, &["vip".into()]).is_err());
        c.xpay_products = "nope:x".into();
        assert!(c.validate(&catalog, &[]).unwrap_err().contains("nope"));
        c.xpay_products = "vip".into();
        assert!(c.products().is_err());
        c.xpay_products = "vip:bad id".into();
        assert!(c.products().is_err());
    }
}
