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

    /// Catalog products that buy coins (代币, mode `short_series_coin`), as
    /// `catalog_id:coins` pairs separated by commas (e.g. `coins_60:60`); the catalog price
    /// must be `coins × PAY_XPAY_COIN_PRICE_FEN`, the ratio set in WeChat's console.
    #[arg(
        long,
        env = "PAY_XPAY_COIN_PRODUCTS",
        value_name = "PAY_XPAY_COIN_PRODUCTS",
        default_value = ""
    )]
    pub xpay_coin_products: String,

    /// The price of one coin in fen (WeChat's console: 1 CNY = 100 / this many coins).
    #[arg(
        long,
        env = "PAY_XPAY_COIN_PRICE_FEN",
        value_name = "PAY_XPAY_COIN_PRICE_FEN",
        default_value_t = 0
    )]
    pub xpay_coin_price_fen: i64,

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

    /// `(catalog_id, coins)` pairs of `PAY_XPAY_COIN_PRODUCTS`.
    pub fn coin_products(&self) -> Result<Vec<(String, u32)>, String> {
        let mut out: Vec<(String, u32)> = Vec::new();
        for entry in self
            .xpay_coin_products
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let Some((id, coins)) = entry.split_once(':') else {
                return Err(format!(
                    "PAY_XPAY_COIN_PRODUCTS: {entry:?} is not catalog_id:coins"
                ));
            };
            let id = id.trim();
            let coins = coins
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|c| (1..=1_000_000).contains(c))
                .ok_or_else(|| {
                    format!("PAY_XPAY_COIN_PRODUCTS: {entry:?}: coins must be 1..=1000000")
                })?;
            if out.iter().any(|(c, _)| c == id) {
                return Err(format!("PAY_XPAY_COIN_PRODUCTS: {id:?} appears twice"));
            }
            out.push((id.to_owned(), coins));
        }
        Ok(out)
    }

    /// Coin products in the catalog at `coins × PAY_XPAY_COIN_PRICE_FEN`, sold one way only.
    fn validate_coins(
        &self,
        catalog: &super::Catalog,
        jsapi_virtual: &[String],
        goods: &[(String, String)],
    ) -> Result<(), String> {
        let coins = self.coin_products()?;
        if coins.is_empty() {
            return Ok(());
        }
        if self.xpay_coin_price_fen <= 0 {
            return Err(
                "PAY_XPAY_COIN_PRICE_FEN must be set (> 0) when PAY_XPAY_COIN_PRODUCTS is".into(),
            );
        }
        for (id, n) in &coins {
            let Some(product) = catalog.get(id) else {
                return Err(format!(
                    "PAY_XPAY_COIN_PRODUCTS: {id:?} is not a product of PAY_PRODUCTS"
                ));
            };
            if goods.iter().any(|(g, _)| g == id) || jsapi_virtual.iter().any(|v| v == id) {
                return Err(format!(
                    "PAY_XPAY_COIN_PRODUCTS: {id:?} is also sold another way; sell it one way"
                ));
            }
            let want = i64::from(*n).checked_mul(self.xpay_coin_price_fen);
            if want != Some(product.price_fen) {
                return Err(format!(
                    "PAY_XPAY_COIN_PRODUCTS: {id:?} costs {} fen in PAY_PRODUCTS but {n} coins cost {} fen at PAY_XPAY_COIN_PRICE_FEN",
                    product.price_fen,
                    want.map_or_else(|| "too many".to_owned(), |w| w.to_string())
                ));
            }
        }
        Ok(())
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
        self.validate_coins(catalog, jsapi_virtual, &products)?;
        if products.is_empty() && self.coin_products()?.is_empty() {
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
            return Err(
                "PAY_XPAY_OFFER_ID must be set when PAY_XPAY_PRODUCTS or PAY_XPAY_COIN_PRODUCTS is"
                    .into(),
            );
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

    #[test]
    fn coin_products_parse_and_must_match_the_catalog_price() {
        let catalog: super::super::Catalog = "vip:990:VIP;coins_60:600:60 coins".parse().unwrap();
        let mut c = XpayConfig {
            xpay_coin_products: " coins_60 : 60 ,".into(),
            xpay_offer_id: "1450000000".into(),
            xpay_app_key: Secret::new("k"),
            ..XpayConfig::default()
        };
        assert_eq!(c.coin_products().unwrap(), vec![("coins_60".into(), 60)]);
        assert!(
            c.validate(&catalog, &[])
                .unwrap_err()
                .contains("PAY_XPAY_COIN_PRICE_FEN")
        );
        c.xpay_coin_price_fen = 10;
        c.validate(&catalog, &[]).unwrap();
        c.xpay_coin_price_fen = 9;
        assert!(c.validate(&catalog, &[]).unwrap_err().contains("600 fen"));
        c.xpay_coin_price_fen = 10;
        c.xpay_products = "coins_60:x".into();
        assert!(c.validate(&catalog, &[]).unwrap_err().contains("one way"));
        c.xpay_products = String::new();
        c.xpay_offer_id = String::new();
        assert!(c.validate(&catalog, &[]).unwrap_err().contains("OFFER_ID"));
        for bad in [
            "coins_60",
            "coins_60:0",
            "coins_60:-1",
            "coins_60:1,coins_60:2",
        ] {
            c.xpay_coin_products = bad.into();
            assert!(c.coin_products().is_err(), "{bad}");
        }
        c.xpay_coin_products = "nope:1".into();
        c.xpay_offer_id = "1".into();
        assert!(c.validate(&catalog, &[]).unwrap_err().contains("nope"));
    }
}
