//! Coin mode (代币): buying coins through `wx.requestVirtualPayment` (mode
//! `short_series_coin`), the `xpay_coin_pay_notify` push, and the server APIs that read and
//! move a user's coins.
//!
//! Documents:
//! * `signData` of coin mode (no `productId` / `goodsPrice`: `buyQuantity` is the number of
//!   coins, WeChat prices them at the ratio set in the console):
//!   <https://developers.weixin.qq.com/miniprogram/dev/api/payment/wx.requestVirtualPayment.html>
//! * <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_query_user_balance.html>
//! * <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_currency_pay.html>
//! * <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_cancel_currency_pay.html>
//! * <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_present_currency.html>
//!
//! `query_user_balance`, `currency_pay` and `cancel_currency_pay` are user-state APIs: besides
//! `pay_sig` they carry `signature = hex(HMAC-SHA256(session_key, post_body))` in the query
//! (WxJava signs exactly these three with both, `WxMaXPayServiceImpl`); `present_currency`
//! carries `pay_sig` only. 268490004 (重复操作) means "an earlier call with this order_id
//! already succeeded": the calls here answer it as success with `duplicate` set, so a retry
//! is safe and visible.

use serde::{Deserialize, Serialize};

use super::{Errcode, MODE_COIN, VirtualPaymentParams, WeChatPayInfo, XpayEnv};
use crate::auth::{ApiError, parse_json};
use crate::client::WechatClient;

/// The push event of a paid coin purchase.
pub const EVENT_COIN_PAY: &str = "xpay_coin_pay_notify";
/// 268490004: the operation was done before (same order_id); the earlier call succeeded.
pub const ERR_DUPLICATE: i64 = 268_490_004;
/// 268490005: the spend was already undone by `cancel_currency_pay`.
pub const ERR_ALREADY_CANCELLED: i64 = 268_490_005;
/// 268490006: not enough coins for the spend (or the undo).
pub const ERR_INSUFFICIENT_BALANCE: i64 = 268_490_006;
/// 268490009: the user's session_key is unknown or expired; the user must log in again.
pub const ERR_SESSION_EXPIRED: i64 = 268_490_009;

/// The `signData` of coin mode, in WeChat's documented key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoinSignData {
    pub offer_id: String,
    /// The number of coins bought.
    pub buy_quantity: u32,
    pub env: XpayEnv,
    /// Always "CNY".
    pub currency_type: String,
    pub platform: String,
    pub out_trade_no: String,
    pub attach: String,
}

/// Builds the `requestVirtualPayment` parameters of a coin purchase.
pub fn coin_request_params(
    sign_data: &CoinSignData,
    app_key: &str,
    session_key: &str,
) -> Result<VirtualPaymentParams, serde_json::Error> {
    super::signed_params(sign_data, MODE_COIN, app_key, session_key)
}

/// `xpay_coin_pay_notify`'s `CoinInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoinInfo {
    /// Coins bought.
    #[serde(rename = "Quantity", default)]
    pub quantity: i64,
    /// Fen.
    #[serde(rename = "OrigPrice", default)]
    pub orig_price: i64,
    /// Fen, what the user paid.
    #[serde(rename = "ActualPrice", default)]
    pub actual_price: i64,
    #[serde(rename = "Attach", default)]
    pub attach: String,
}

/// The `xpay_coin_pay_notify` push (JSON mode), after the message-push layer verified it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoinPayNotify {
    #[serde(rename = "Event", default)]
    pub event: String,
    #[serde(rename = "OpenId", default)]
    pub openid: String,
    #[serde(rename = "OutTradeNo", default)]
    pub out_trade_no: String,
    #[serde(rename = "Env", default)]
    pub env: i64,
    #[serde(rename = "WeChatPayInfo", default)]
    pub wechat_pay_info: WeChatPayInfo,
    #[serde(rename = "CoinInfo", default)]
    pub coin_info: CoinInfo,
}

/// `query_user_balance`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct UserBalance {
    /// All coins, bought and presented.
    #[serde(default)]
    pub balance: i64,
    #[serde(default)]
    pub present_balance: i64,
    #[serde(default)]
    pub sum_save: i64,
    #[serde(default)]
    pub sum_present: i64,
    #[serde(default)]
    pub sum_balance: i64,
    #[serde(default)]
    pub sum_cost: i64,
    #[serde(default)]
    pub first_save_flag: bool,
}

/// A `currency_pay` request: spend `amount` coins under `order_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CurrencyPay {
    pub openid: String,
    pub env: XpayEnv,
    pub user_ip: String,
    pub amount: i64,
    pub order_id: String,
    /// `[{"productid": .., "unit_price": .., "quantity": ..}]`, kept in the account's ledger.
    pub payitem: String,
    pub remark: String,
}

/// `currency_pay`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct CurrencyPayAnswer {
    #[serde(default)]
    pub order_id: String,
    /// The balance after the spend (absent on a duplicate).
    #[serde(default)]
    pub balance: i64,
    #[serde(default)]
    pub used_present_amount: i64,
    /// The answer was 268490004: an earlier call with this order_id spent the coins.
    #[serde(skip)]
    pub duplicate: bool,
}

/// A `cancel_currency_pay` request: give back `amount` coins of the spend `pay_order_id`,
/// under the refund number `order_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CancelCurrencyPay {
    pub openid: String,
    pub env: XpayEnv,
    pub user_ip: String,
    pub pay_order_id: String,
    pub order_id: String,
    pub amount: i64,
}

/// `cancel_currency_pay`'s (and `present_currency`'s) answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct CoinOrderAnswer {
    #[serde(default)]
    pub order_id: String,
    #[serde(default)]
    pub balance: i64,
    #[serde(default)]
    pub present_balance: i64,
    /// The answer was 268490004 (done before under this order_id).
    #[serde(skip)]
    pub duplicate: bool,
}

/// A `present_currency` request: give `amount` coins for free under `order_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresentCurrency {
    pub openid: String,
    pub env: XpayEnv,
    pub order_id: String,
    pub amount: i64,
}

/// Parses an answer whose errcode 268490004 means "done before".
fn idempotent<T: serde::de::DeserializeOwned + Default>(
    raw: &[u8],
    mark: impl FnOnce(&mut T),
) -> Result<T, ApiError> {
    let answer: Errcode = parse_json(raw)?;
    match answer.errcode {
        0 => parse_json(raw),
        ERR_DUPLICATE => {
            let mut t = T::default();
            mark(&mut t);
            Ok(t)
        }
        code => Err(ApiError::from_errcode(code, answer.errmsg)),
    }
}

impl WechatClient {
    /// POSTs exactly `body` with `pay_sig` and the user-state `signature` (keyed with the
    /// user's session_key) over it.
    async fn xpay_post_user(
        &self,
        uri: &str,
        access_token: &str,
        app_key: &str,
        session_key: &str,
        body: &str,
    ) -> Result<Vec<u8>, ApiError> {
        self.xpay_send(uri, access_token, app_key, Some(session_key), body)
            .await
    }

    /// `POST /xpay/query_user_balance` (user state).
    pub async fn xpay_query_user_balance(
        &self,
        access_token: &str,
        app_key: &str,
        session_key: &str,
        openid: &str,
        env: XpayEnv,
        user_ip: &str,
    ) -> Result<UserBalance, ApiError> {
        let body =
            serde_json::json!({ "openid": openid, "env": env, "user_ip": user_ip }).to_string();
        let raw = self
            .xpay_post_user(
                "/xpay/query_user_balance",
                access_token,
                app_key,
                session_key,
                &body,
            )
            .await?;
        let answer: Errcode = parse_json(&raw)?;
        if answer.errcode != 0 {
            return Err(ApiError::from_errcode(answer.errcode, answer.errmsg));
        }
        parse_json(&raw)
    }

    /// `POST /xpay/currency_pay` (user state): spends coins; idempotent on `order_id`
    /// (a repeat answers `duplicate`).
    pub async fn xpay_currency_pay(
        &self,
        access_token: &str,
        app_key: &str,
        session_key: &str,
        pay: &CurrencyPay,
    ) -> Result<CurrencyPayAnswer, ApiError> {
        let body = serde_json::to_string(pay)
            .map_err(|e| ApiError::BadResponse(format!("currency_pay body: {e}")))?;
        let raw = self
            .xpay_post_user(
                "/xpay/currency_pay",
                access_token,
                app_key,
                session_key,
                &body,
            )
            .await?;
        idempotent(&raw, |a: &mut CurrencyPayAnswer| {
            a.duplicate = true;
            a.order_id.clone_from(&pay.order_id);
        })
    }

    /// `POST /xpay/cancel_currency_pay` (user state): gives back the coins of a spend.
    pub async fn xpay_cancel_currency_pay(
        &self,
        access_token: &str,
        app_key: &str,
        session_key: &str,
        cancel: &CancelCurrencyPay,
    ) -> Result<CoinOrderAnswer, ApiError> {
        let body = serde_json::to_string(cancel)
            .map_err(|e| ApiError::BadResponse(format!("cancel_currency_pay body: {e}")))?;
        let raw = self
            .xpay_post_user(
                "/xpay/cancel_currency_pay",
                access_token,
                app_key,
                session_key,
                &body,
            )
            .await?;
        idempotent(&raw, |a: &mut CoinOrderAnswer| {
            a.duplicate = true;
            a.order_id.clone_from(&cancel.order_id);
        })
    }

    /// `POST /xpay/present_currency` (pay_sig only): gives coins; WeChat has no lookup of
    /// a present by number, so it is retried until 0 or 268490004 (`duplicate`).
    pub async fn xpay_present_currency(
        &self,
        access_token: &str,
        app_key: &str,
        present: &PresentCurrency,
    ) -> Result<CoinOrderAnswer, ApiError> {
        let body = serde_json::to_string(present)
            .map_err(|e| ApiError::BadResponse(format!("present_currency body: {e}")))?;
        let raw = self
            .xpay_post("/xpay/present_currency", access_token, app_key, &body)
            .await?;
        idempotent(&raw, |a: &mut CoinOrderAnswer| {
            a.duplicate = true;
            a.order_id.clone_from(&present.order_id);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coin_sign_data_has_no_product_and_uses_coin_mode() {
        let p = coin_request_params(
            &CoinSignData {
                offer_id: "1".into(),
                buy_quantity: 60,
                env: XpayEnv::Sandbox,
                currency_type: "CNY".into(),
                platform: "android".into(),
                out_trade_no: "o".into(),
                attach: String::new(),
            },
            "k",
            "s",
        )
        .unwrap();
        assert_eq!(
            p.sign_data,
            r#"{"offerId":"1","buyQuantity":60,"env":1,"currencyType":"CNY","platform":"android","outTradeNo":"o","attach":""}"#
        );
        assert_eq!(p.mode, "short_series_coin");
        assert!(super::super::verify_pay_sig_for_request(
            "k",
            &p.sign_data,
            &p.pay_sig
        ));
    }

    #[test]
    fn duplicate_answers_are_success_and_other_errcodes_errors() {
        let a: CurrencyPayAnswer = idempotent(
            br#"{"errcode":268490004,"errmsg":"dup"}"#,
            |a: &mut CurrencyPayAnswer| a.duplicate = true,
        )
        .unwrap();
        assert!(a.duplicate);
        let a: CurrencyPayAnswer = idempotent(
            br#"{"errcode":0,"order_id":"c1","balance":40}"#,
            |_: &mut CurrencyPayAnswer| {},
        )
        .unwrap();
        assert_eq!((a.balance, a.duplicate), (40, false));
        let e = idempotent(
            br#"{"errcode":268490006,"errmsg":"not enough"}"#,
            |_: &mut CurrencyPayAnswer| {},
        )
        .unwrap_err();
        assert_eq!(e.errcode(), Some(ERR_INSUFFICIENT_BALANCE));
    }
}
