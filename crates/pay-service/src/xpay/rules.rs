//! What virtual payment means, pure: its settings and the checks of a delivery push.

use service_kit::Secret;
use wechat::xpay::{GoodsDeliverNotify, XpayEnv};

use crate::{config::XpayConfig, orders::Order};

/// The `sign_type` a virtual order is bound with (JSAPI orders hold `MD5`, `HMAC-SHA256` or
/// `RSA`): JSAPI refuses such an order, the delivery push accepts only such an order.
pub const XPAY_SIGN_TYPE: &str = "XPAY";

/// The validated `PAY_XPAY_*`.
#[derive(Clone, Debug)]
pub struct XpaySettings {
    pub offer_id: String,
    pub app_key: Secret,
    pub env: XpayEnv,
    /// `(catalog_id, xpay_product_id)`.
    pub products: Vec<(String, String)>,
    /// Coin mode (see [`super::coins`]): `(catalog_id, coins)`.
    pub coin_products: Vec<(String, u32)>,
}

impl XpaySettings {
    /// None when no product is sold through virtual payment.
    pub fn from_config(c: &XpayConfig) -> Result<Option<Self>, String> {
        let products = c.products()?;
        let coin_products = c.coin_products()?;
        if products.is_empty() && coin_products.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            offer_id: c.xpay_offer_id.trim().to_owned(),
            app_key: c.app_key().clone(),
            env: if c.xpay_env == 1 {
                XpayEnv::Sandbox
            } else {
                XpayEnv::Live
            },
            products,
            coin_products,
        }))
    }

    /// The xpay product id of a catalog product sold this way.
    pub fn xpay_product(&self, catalog_id: &str) -> Option<&str> {
        self.products
            .iter()
            .find(|(c, _)| c == catalog_id)
            .map(|(_, x)| x.as_str())
    }
}

/// Why a delivery push does not pay its order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryMismatch {
    #[error("the order is not a virtual-payment order")]
    NotVirtual,
    #[error("the push's openid is not the order's payer")]
    Openid,
    #[error("the push's env is not the configured env")]
    Env,
    #[error("the push's product is not the order's")]
    Product,
    #[error("the push's price is not the order's amount")]
    Amount,
}

/// Checks a delivery push against its order: a virtual order, same payer, env, xpay product,
/// and the amount paid (`ActualPrice`, else `OrigPrice`) equal to the order's server-side
/// price. Answers the transaction id to record (WeChat's, else its merchant order no).
pub fn check_delivery(
    order: &Order,
    push: &GoodsDeliverNotify,
    settings: &XpaySettings,
) -> Result<String, DeliveryMismatch> {
    if order.sign_type != XPAY_SIGN_TYPE {
        return Err(DeliveryMismatch::NotVirtual);
    }
    if push.openid.is_empty() || push.openid != order.openid {
        return Err(DeliveryMismatch::Openid);
    }
    if push.env != i64::from(u8::from(settings.env)) {
        return Err(DeliveryMismatch::Env);
    }
    if settings.xpay_product(&order.product_id) != Some(push.goods_info.product_id.as_str()) {
        return Err(DeliveryMismatch::Product);
    }
    let quantity = push.goods_info.quantity.max(1);
    let paid = if push.goods_info.actual_price > 0 {
        push.goods_info.actual_price
    } else {
        push.goods_info.orig_price
    };
    if quantity != 1 || paid != order.amount_fen {
        return Err(DeliveryMismatch::Amount);
    }
    Ok(transaction_of(&push.wechat_pay_info, &push.out_trade_no))
}

/// The transaction a virtual payment's push names: WeChat Pay's, else the merchant order
/// number, else one made from our order number.
pub fn transaction_of(info: &wechat::xpay::WeChatPayInfo, out_trade_no: &str) -> String {
    if !info.transaction_id.is_empty() {
        info.transaction_id.clone()
    } else if !info.mch_order_no.is_empty() {
        info.mch_order_no.clone()
    } else {
        format!("xpay:{out_trade_no}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat::xpay::{GoodsInfo, WeChatPayInfo};

    fn settings() -> XpaySettings {
        XpaySettings {
            offer_id: "1".into(),
            app_key: Secret::new("k"),
            env: XpayEnv::Sandbox,
            products: vec![("vip".into(), "vip_month".into())],
            coin_products: Vec::new(),
        }
    }

    fn order() -> Order {
        Order {
            order_no: "N1".into(),
            openid: "o1".into(),
            amount_fen: 990,
            product_id: "vip".into(),
            sign_type: XPAY_SIGN_TYPE.into(),
            ..Order::default()
        }
    }

    fn push() -> GoodsDeliverNotify {
        GoodsDeliverNotify {
            event: "xpay_goods_deliver_notify".into(),
            openid: "o1".into(),
            out_trade_no: "N1".into(),
            env: 1,
            wechat_pay_info: WeChatPayInfo {
                transaction_id: "42".into(),
                ..WeChatPayInfo::default()
            },
            goods_info: GoodsInfo {
                product_id: "vip_month".into(),
                quantity: 1,
                orig_price: 990,
                actual_price: 990,
                attach: String::new(),
            },
        }
    }

    #[test]
    fn a_matching_push_pays_and_each_field_is_checked() {
        assert_eq!(
            check_delivery(&order(), &push(), &settings()),
            Ok("42".into())
        );
        let s = settings();
        let mut p = push();
        p.openid = "o2".into();
        assert_eq!(
            check_delivery(&order(), &p, &s),
            Err(DeliveryMismatch::Openid)
        );
        let mut p = push();
        p.env = 0;
        assert_eq!(check_delivery(&order(), &p, &s), Err(DeliveryMismatch::Env));
        let mut p = push();
        p.goods_info.product_id = "other".into();
        assert_eq!(
            check_delivery(&order(), &p, &s),
            Err(DeliveryMismatch::Product)
        );
        let mut p = push();
        p.goods_info.actual_price = 1;
        assert_eq!(
            check_delivery(&order(), &p, &s),
            Err(DeliveryMismatch::Amount)
        );
        let mut o = order();
        o.sign_type = "MD5".into();
        assert_eq!(
            check_delivery(&o, &push(), &s),
            Err(DeliveryMismatch::NotVirtual)
        );
        let mut p = push();
        p.wechat_pay_info = WeChatPayInfo::default();
        assert_eq!(check_delivery(&order(), &p, &s), Ok("xpay:N1".into()));
    }
}
