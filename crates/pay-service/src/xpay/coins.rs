//! Coin mode (代币): catalog products that buy coins (`PAY_XPAY_COIN_PRODUCTS`) through
//! `wx.requestVirtualPayment` with mode `short_series_coin`, and the `xpay_coin_pay_notify`
//! push that pays such an order:
//! <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/virtual-payment.html>
//!
//! A coin order is an ordinary virtual order (bound `XPAY`): its price is the catalog's, which
//! the configuration checked against `coins × PAY_XPAY_COIN_PRICE_FEN` (WeChat prices the
//! coins itself from `buyQuantity`, so the two must agree). The push is checked against the
//! order (payer, env, number of coins, amount paid) and then runs the orders' one PAID
//! transition, so retries and copies on other replicas change nothing more; a lost push is
//! repaired by `query_order` as for goods (a coin purchase is a cash order there).

use wechat::xpay::{
    SignData, VirtualPaymentParams,
    coins::{CoinPayNotify, CoinSignData, coin_request_params},
    request_params,
};

use super::rules::{DeliveryMismatch, XPAY_SIGN_TYPE, XpaySettings};
use crate::{
    error::Error,
    orders::Order,
    payments::Payments,
    shipping::push::{Handled, Push, record},
};

/// How a catalog product is sold through virtual payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sold {
    /// 道具直购, as this xpay product id.
    Goods(String),
    /// 代币: this many coins.
    Coins(u32),
}

impl XpaySettings {
    /// The coins a coin product buys.
    pub fn coins_of(&self, catalog_id: &str) -> Option<u32> {
        self.coin_products
            .iter()
            .find(|(c, _)| c == catalog_id)
            .map(|(_, n)| *n)
    }

    /// How `catalog_id` is sold, if through virtual payment.
    pub fn sold(&self, catalog_id: &str) -> Option<Sold> {
        self.xpay_product(catalog_id)
            .map(|p| Sold::Goods(p.to_owned()))
            .or_else(|| self.coins_of(catalog_id).map(Sold::Coins))
    }

    /// The `requestVirtualPayment` parameters of `order` (the catalog price; for coins the
    /// number of coins, which WeChat prices at the console's ratio).
    pub(crate) fn request_params(
        &self,
        sold: &Sold,
        order: &Order,
        session_key: &str,
    ) -> Result<VirtualPaymentParams, Error> {
        let params = match sold {
            Sold::Goods(xpay_product) => request_params(
                &SignData {
                    offer_id: self.offer_id.clone(),
                    buy_quantity: 1,
                    env: self.env,
                    currency_type: "CNY".into(),
                    platform: "android".into(),
                    product_id: xpay_product.clone(),
                    goods_price: order.amount_fen,
                    out_trade_no: order.order_no.clone(),
                    attach: String::new(),
                },
                self.app_key.expose(),
                session_key,
            ),
            Sold::Coins(coins) => coin_request_params(
                &CoinSignData {
                    offer_id: self.offer_id.clone(),
                    buy_quantity: *coins,
                    env: self.env,
                    currency_type: "CNY".into(),
                    platform: "android".into(),
                    out_trade_no: order.order_no.clone(),
                    attach: String::new(),
                },
                self.app_key.expose(),
                session_key,
            ),
        };
        params.map_err(|e| Error::Internal(format!("signData: {e}")))
    }
}

/// Checks a coin push against its order: a virtual coin order of the same payer and env,
/// the number of coins its product buys, and the amount paid (`ActualPrice`, else
/// `OrigPrice`) equal to the order's server-side price. Answers the transaction id to record.
pub fn check_coin_pay(
    order: &Order,
    push: &CoinPayNotify,
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
    let Some(coins) = settings.coins_of(&order.product_id) else {
        return Err(DeliveryMismatch::Product);
    };
    if push.coin_info.quantity != i64::from(coins) {
        return Err(DeliveryMismatch::Product);
    }
    let paid = if push.coin_info.actual_price > 0 {
        push.coin_info.actual_price
    } else {
        push.coin_info.orig_price
    };
    if paid != order.amount_fen {
        return Err(DeliveryMismatch::Amount);
    }
    Ok(super::rules::transaction_of(
        &push.wechat_pay_info,
        &push.out_trade_no,
    ))
}

pub(crate) fn on_coin_pay<'a>(p: &'a Payments, push: &'a Push) -> Handled<'a> {
    Box::pin(coin_pay(p, push))
}

async fn coin_pay(payments: &Payments, push: &Push) -> Result<&'static str, Error> {
    let Some(xpay) = payments.xpay() else {
        return record(payments, push, "not_configured").await;
    };
    let Ok(notify) = serde_json::from_value::<CoinPayNotify>(push.message.clone()) else {
        return record(payments, push, "malformed").await;
    };
    let Some(order) = super::push::order_of(payments, push, &notify.out_trade_no).await? else {
        return record(payments, push, "unknown_order").await;
    };
    let transaction_id = match check_coin_pay(&order, &notify, &xpay.settings) {
        Ok(t) => t,
        Err(why) => {
            tracing::error!(order_no = %order.order_no, %why, "coin push does not match its order; not applied");
            return record(payments, push, "mismatch").await;
        }
    };
    super::push::pay(
        payments,
        push,
        &order,
        &transaction_id,
        notify.wechat_pay_info.paid_time,
        "xpay_coin_push",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::Secret;
    use wechat::xpay::{WeChatPayInfo, XpayEnv, coins::CoinInfo};

    fn settings() -> XpaySettings {
        XpaySettings {
            offer_id: "1".into(),
            app_key: Secret::new("k"),
            env: XpayEnv::Sandbox,
            products: vec![("vip".into(), "vip_month".into())],
            coin_products: vec![("coins_60".into(), 60)],
        }
    }

    fn order() -> Order {
        Order {
            order_no: "N1".into(),
            openid: "o1".into(),
            amount_fen: 600,
            product_id: "coins_60".into(),
            sign_type: XPAY_SIGN_TYPE.into(),
            ..Order::default()
        }
    }

    fn push() -> CoinPayNotify {
        CoinPayNotify {
            event: "xpay_coin_pay_notify".into(),
            openid: "o1".into(),
            out_trade_no: "N1".into(),
            env: 1,
            wechat_pay_info: WeChatPayInfo {
                transaction_id: "42".into(),
                ..WeChatPayInfo::default()
            },
            coin_info: CoinInfo {
                quantity: 60,
                orig_price: 600,
                actual_price: 600,
                attach: String::new(),
            },
        }
    }

    #[test]
    fn products_are_sold_one_way_each() {
        let s = settings();
        assert_eq!(s.sold("vip"), Some(Sold::Goods("vip_month".into())));
        assert_eq!(s.sold("coins_60"), Some(Sold::Coins(60)));
        assert_eq!(s.sold("other"), None);
        let p = s.request_params(&Sold::Coins(60), &order(), "sk").unwrap();
        assert_eq!(p.mode, "short_series_coin");
        assert!(
            p.sign_data.contains(r#""buyQuantity":60"#),
            "{}",
            p.sign_data
        );
        assert!(!p.sign_data.contains("goodsPrice"));
    }

    #[test]
    fn a_matching_coin_push_pays_and_each_field_is_checked() {
        let s = settings();
        assert_eq!(check_coin_pay(&order(), &push(), &s), Ok("42".into()));
        let mut p = push();
        p.openid = "o2".into();
        assert_eq!(
            check_coin_pay(&order(), &p, &s),
            Err(DeliveryMismatch::Openid)
        );
        let mut p = push();
        p.env = 0;
        assert_eq!(check_coin_pay(&order(), &p, &s), Err(DeliveryMismatch::Env));
        let mut p = push();
        p.coin_info.quantity = 600;
        assert_eq!(
            check_coin_pay(&order(), &p, &s),
            Err(DeliveryMismatch::Product)
        );
        let mut p = push();
        p.coin_info.actual_price = 60;
        assert_eq!(
            check_coin_pay(&order(), &p, &s),
            Err(DeliveryMismatch::Amount)
        );
        let mut o = order();
        o.product_id = "vip".into();
        assert_eq!(
            check_coin_pay(&o, &push(), &s),
            Err(DeliveryMismatch::Product)
        );
        o.sign_type = "MD5".into();
        assert_eq!(
            check_coin_pay(&o, &push(), &s),
            Err(DeliveryMismatch::NotVirtual)
        );
    }
}
