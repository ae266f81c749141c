//! Virtual payment (虚拟支付, xpay): the parameters of `wx.requestVirtualPayment` and the
//! xpay server APIs a shop selling virtual goods (道具直购) needs.
//!
//! Documents:
//! * the client call and `signData`:
//!   <https://developers.weixin.qq.com/miniprogram/dev/api/payment/wx.requestVirtualPayment.html>
//! * the two signatures (`paySig` with the virtual-payment AppKey, the user-state `signature`
//!   with the user's `session_key`) and the server APIs' `pay_sig`:
//!   <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/virtual-payment.html>
//!   (the same algorithm as Tencent Cloud's copy of it, with WeChat's python `gen_pay_sig`:
//!   <https://www.tencentcloud.com/document/product/1219/74865>)
//!
//! ```text
//! paySig    = hex(HMAC-SHA256(AppKey, "requestVirtualPayment" + "&" + signData))
//! signature = hex(HMAC-SHA256(session_key, signData))          (user state)
//! pay_sig   = hex(HMAC-SHA256(AppKey, uri + "&" + post_body))  (server APIs, uri without query)
//! signature = hex(HMAC-SHA256(session_key, post_body))         (user-state server APIs)
//! ```
//!
//! The signed strings must be the bytes the client or WeChat receives: `signData` is built
//! here once and handed on verbatim, and the server calls send exactly the body they signed.
//! Wrong signatures come back as -15005 (`paySig`) and 268490003 (`signature`).
//!
//! Coin mode (代币: buying coins, reading and spending them) is in [`coins`], the bill
//! download in [`bill`].

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::{ApiError, parse_json};
use crate::client::WechatClient;
use crate::config::join;
use crate::http;

pub mod bill;
pub mod coins;

/// -15005: the pay signature (`paySig` / `pay_sig`) is invalid.
pub const ERR_PAY_SIG: i64 = -15_005;
/// 268490003: the user-state `signature` is invalid (wrong or stale session_key).
pub const ERR_SIGNATURE: i64 = 268_490_003;
/// `mode` of 道具直购 (goods bought directly).
pub const MODE_GOODS: &str = "short_series_goods";
/// `mode` of 代币 (coins).
pub const MODE_COIN: &str = "short_series_coin";
/// The method name signed into `paySig`.
pub const REQUEST_METHOD: &str = "requestVirtualPayment";
/// The push event of a paid 道具直购 order.
pub const EVENT_GOODS_DELIVER: &str = "xpay_goods_deliver_notify";
/// The push event of a refund's result (success or failure).
pub const EVENT_REFUND: &str = "xpay_refund_notify";
/// 268490016: `refund_order`'s `left_fee` is not what WeChat has left on the order ("退款
/// left_fee与实际不符,请通过query_order接口查询确认",
/// <https://developers.weixin.qq.com/community/develop/doc/000eccdd1e02783df515ffbc16b800>).
pub const ERR_LEFT_FEE: i64 = 268_490_016;
/// `query_order`'s `order_type` of a refund order (0 is a payment order).
pub const ORDER_TYPE_REFUND: i64 = 1;
/// `query_order`'s `status` of an order refunded / of a refund done (5, 订单已经退款).
pub const STATUS_REFUNDED: i64 = 5;
/// `query_order`'s `status` of a refund that failed (7, 订单退款失败).
pub const STATUS_REFUND_FAILED: i64 = 7;
/// `refund_order`'s `refund_order_id`: 8 to 32 of `[0-9A-Za-z_-]` (narrower than WeChat Pay's
/// out_refund_no).
pub fn valid_refund_order_id(id: &str) -> bool {
    (8..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `env`: 0 live, 1 sandbox (沙箱, its own AppKey).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum XpayEnv {
    Live = 0,
    Sandbox = 1,
}

impl From<XpayEnv> for u8 {
    fn from(e: XpayEnv) -> u8 {
        e as u8
    }
}

impl TryFrom<u8> for XpayEnv {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Self::Live),
            1 => Ok(Self::Sandbox),
            other => Err(format!("unknown xpay env {other}")),
        }
    }
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn hex_eq(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = given.to_ascii_lowercase();
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// `paySig` of `wx.requestVirtualPayment`.
pub fn pay_sig_for_request(app_key: &str, sign_data: &str) -> String {
    hmac_hex(
        app_key.as_bytes(),
        &[REQUEST_METHOD.as_bytes(), b"&", sign_data.as_bytes()],
    )
}

/// `pay_sig` of a server API: `uri` is the path (e.g. `/xpay/query_order`), no query.
pub fn pay_sig_for_api(app_key: &str, uri: &str, post_body: &str) -> String {
    hmac_hex(
        app_key.as_bytes(),
        &[uri.as_bytes(), b"&", post_body.as_bytes()],
    )
}

/// The user-state `signature` (of `signData`, or of a user-state API's body); the key is the
/// `session_key` string as WeChat hands it out.
pub fn user_signature(session_key: &str, data: &str) -> String {
    hmac_hex(session_key.as_bytes(), &[data.as_bytes()])
}

/// Constant-time check of a `paySig` (what WeChat does; the sandbox has its own copy).
pub fn verify_pay_sig_for_request(app_key: &str, sign_data: &str, given: &str) -> bool {
    hex_eq(&pay_sig_for_request(app_key, sign_data), given)
}

/// Constant-time check of a user-state `signature`.
pub fn verify_user_signature(session_key: &str, data: &str, given: &str) -> bool {
    hex_eq(&user_signature(session_key, data), given)
}

/// The `signData` of 道具直购, in WeChat's documented key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignData {
    pub offer_id: String,
    pub buy_quantity: u32,
    pub env: XpayEnv,
    /// Always "CNY".
    pub currency_type: String,
    /// "android" (iOS goes through its own channel).
    pub platform: String,
    pub product_id: String,
    /// Unit price in fen; must equal the price configured for `product_id` on WeChat.
    pub goods_price: i64,
    pub out_trade_no: String,
    pub attach: String,
}

/// What the mini program passes to `wx.requestVirtualPayment`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualPaymentParams {
    /// Passed verbatim (never re-serialised by the client).
    pub sign_data: String,
    pub pay_sig: String,
    pub signature: String,
    pub mode: String,
}

impl std::fmt::Debug for VirtualPaymentParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualPaymentParams")
            .field("sign_data", &self.sign_data)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Builds the `requestVirtualPayment` parameters of a 道具直购 order.
pub fn request_params(
    sign_data: &SignData,
    app_key: &str,
    session_key: &str,
) -> Result<VirtualPaymentParams, serde_json::Error> {
    signed_params(sign_data, MODE_GOODS, app_key, session_key)
}

/// `requestVirtualPayment`'s parameters for `mode`: `sign_data` as the JSON text that both
/// signatures cover, the AppKey's `pay_sig` and the session_key's `signature`.
pub(crate) fn signed_params<T: Serialize>(
    sign_data: &T,
    mode: &str,
    app_key: &str,
    session_key: &str,
) -> Result<VirtualPaymentParams, serde_json::Error> {
    let sign_data = serde_json::to_string(sign_data)?;
    Ok(VirtualPaymentParams {
        pay_sig: pay_sig_for_request(app_key, &sign_data),
        signature: user_signature(session_key, &sign_data),
        mode: mode.to_owned(),
        sign_data,
    })
}

/// `xpay_goods_deliver_notify`'s `WeChatPayInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeChatPayInfo {
    #[serde(rename = "MchOrderNo", default)]
    pub mch_order_no: String,
    #[serde(rename = "TransactionId", default)]
    pub transaction_id: String,
    #[serde(rename = "PaidTime", default)]
    pub paid_time: i64,
}

/// `xpay_goods_deliver_notify`'s `GoodsInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodsInfo {
    #[serde(rename = "ProductId", default)]
    pub product_id: String,
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

/// The `xpay_goods_deliver_notify` push (JSON mode), after the message-push layer verified
/// and decrypted it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodsDeliverNotify {
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
    #[serde(rename = "GoodsInfo", default)]
    pub goods_info: GoodsInfo,
}

/// The `xpay_refund_notify` push (JSON mode), after the message-push layer verified and
/// decrypted it: the result of a `refund_order` (field names as WeChat's push document and
/// silenceper's `AsyncXPayRefundNotifyRequest` spell them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotify {
    #[serde(rename = "Event", default)]
    pub event: String,
    #[serde(rename = "OpenId", alias = "openid", default)]
    pub openid: String,
    /// Our `refund_order_id`.
    #[serde(rename = "MchRefundId", default)]
    pub mch_refund_id: String,
    #[serde(rename = "WxRefundId", default)]
    pub wx_refund_id: String,
    /// The order refunded: our out_trade_no.
    #[serde(rename = "MchOrderId", default)]
    pub mch_order_id: String,
    #[serde(rename = "WxOrderId", default)]
    pub wx_order_id: String,
    /// Fen.
    #[serde(rename = "RefundFee", default)]
    pub refund_fee: i64,
    /// 0: refunded; anything else: the refund failed.
    #[serde(rename = "RetCode", default = "unset_ret_code")]
    pub ret_code: i64,
    #[serde(rename = "RetMsg", default)]
    pub ret_msg: String,
    #[serde(rename = "RefundSuccTimestamp", default)]
    pub refund_succ_timestamp: i64,
    #[serde(rename = "WxpayRefundTransactionId", default)]
    pub wxpay_refund_transaction_id: String,
}

/// A push without `RetCode` is no success.
const fn unset_ret_code() -> i64 {
    -1
}

/// One order as `query_order` answers it (the fields wxmp reads): a payment order, or a
/// refund order when asked by a `refund_order_id` (`order_type` 1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XpayOrder {
    #[serde(default)]
    pub order_id: String,
    /// WeChat's order status: 0 initialised, 1 created, 2 paid (goods to deliver), 3 being
    /// delivered, 4 delivered, 5 refunded, 6 closed, 7 refund failed (the `query_order`
    /// document; silenceper's `OrderItem`). wxmp's sandbox plays 3 as delivered.
    #[serde(default)]
    pub status: i64,
    /// 0 a payment order, 1 a refund order.
    #[serde(default)]
    pub order_type: i64,
    /// A refund order's amount (fen).
    #[serde(default)]
    pub refund_fee: i64,
    /// A payment order's fen left after its refunds (absent on some answers).
    #[serde(default)]
    pub left_fee: Option<i64>,
    #[serde(default)]
    pub biz_meta: String,
    #[serde(default)]
    pub biz_type: i64,
    #[serde(default)]
    pub order_fee: i64,
    #[serde(default)]
    pub paid_fee: i64,
    #[serde(default)]
    pub openid: String,
    #[serde(default)]
    pub wx_order_id: String,
    /// The WeChat Pay transaction behind the order (the push's `WeChatPayInfo.TransactionId`).
    #[serde(default)]
    pub wxpay_order_id: String,
    #[serde(default)]
    pub paid_time: i64,
    #[serde(default)]
    pub env_type: i64,
}

#[derive(Deserialize)]
struct QueryAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    order: Option<XpayOrder>,
}

#[derive(Deserialize)]
struct Errcode {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// A `refund_order` request (the fields of the document).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefundOrder {
    pub openid: String,
    pub order_id: String,
    pub refund_order_id: String,
    pub left_fee: i64,
    pub refund_fee: i64,
    pub biz_meta: String,
    pub refund_reason: String,
    pub req_from: String,
    pub env: XpayEnv,
}

/// `refund_order`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RefundAnswer {
    #[serde(default)]
    pub refund_order_id: String,
    #[serde(default)]
    pub refund_wx_order_id: String,
    #[serde(default)]
    pub pay_order_id: String,
    #[serde(default)]
    pub pay_wx_order_id: String,
}

impl WechatClient {
    /// POSTs exactly `body` to `{api_base}{uri}?access_token=..&pay_sig=..` (the bytes signed
    /// are the bytes sent).
    async fn xpay_post(
        &self,
        uri: &str,
        access_token: &str,
        app_key: &str,
        body: &str,
    ) -> Result<Vec<u8>, ApiError> {
        self.xpay_send(uri, access_token, app_key, None, body).await
    }

    /// The one xpay sender: `pay_sig` over `body`, and for a user-state API the `signature`
    /// over the same bytes keyed with the user's session_key.
    pub(crate) async fn xpay_send(
        &self,
        uri: &str,
        access_token: &str,
        app_key: &str,
        session_key: Option<&str>,
        body: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let pay_sig = pay_sig_for_api(app_key, uri, body);
        let signature = session_key.map(|k| user_signature(k, body));
        let mut query = vec![
            ("access_token", access_token),
            ("pay_sig", pay_sig.as_str()),
        ];
        if let Some(signature) = &signature {
            query.push(("signature", signature.as_str()));
        }
        let resp = self
            .http()
            .post(join(&self.config().api_base, uri))
            .query(&query)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| ApiError::Transport(http::describe(&e)))?;
        Ok(http::read_body(resp).await?)
    }

    /// `POST /xpay/query_order`: the order by `out_trade_no` (`order_id`), the fallback when
    /// the delivery push is late or lost.
    pub async fn xpay_query_order(
        &self,
        access_token: &str,
        app_key: &str,
        openid: &str,
        env: XpayEnv,
        out_trade_no: &str,
    ) -> Result<XpayOrder, ApiError> {
        let body = serde_json::json!({ "openid": openid, "env": env, "order_id": out_trade_no })
            .to_string();
        let answer: QueryAnswer = parse_json(
            &self
                .xpay_post("/xpay/query_order", access_token, app_key, &body)
                .await?,
        )?;
        if answer.errcode != 0 {
            return Err(ApiError::from_errcode(answer.errcode, answer.errmsg));
        }
        answer
            .order
            .ok_or_else(|| ApiError::BadResponse("missing order".into()))
    }

    /// `POST /xpay/notify_provide_goods`: tells WeChat the goods were delivered (needed when
    /// the delivery push was not acknowledged in time).
    pub async fn xpay_notify_provide_goods(
        &self,
        access_token: &str,
        app_key: &str,
        env: XpayEnv,
        out_trade_no: &str,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({ "order_id": out_trade_no, "env": env }).to_string();
        let answer: Errcode = parse_json(
            &self
                .xpay_post("/xpay/notify_provide_goods", access_token, app_key, &body)
                .await?,
        )?;
        if answer.errcode != 0 {
            return Err(ApiError::from_errcode(answer.errcode, answer.errmsg));
        }
        Ok(())
    }

    /// `POST /xpay/refund_order`.
    pub async fn xpay_refund_order(
        &self,
        access_token: &str,
        app_key: &str,
        refund: &RefundOrder,
    ) -> Result<RefundAnswer, ApiError> {
        let body = serde_json::to_string(refund)
            .map_err(|e| ApiError::BadResponse(format!("refund body: {e}")))?;
        let raw = self
            .xpay_post("/xpay/refund_order", access_token, app_key, &body)
            .await?;
        let answer: Errcode = parse_json(&raw)?;
        if answer.errcode != 0 {
            return Err(ApiError::from_errcode(answer.errcode, answer.errmsg));
        }
        parse_json(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_data_keeps_wechats_key_order_and_debug_hides_signatures() {
        let p = request_params(
            &SignData {
                offer_id: "1".into(),
                buy_quantity: 1,
                env: XpayEnv::Sandbox,
                currency_type: "CNY".into(),
                platform: "android".into(),
                product_id: "p".into(),
                goods_price: 1,
                out_trade_no: "o".into(),
                attach: String::new(),
            },
            "k",
            "s",
        )
        .unwrap();
        assert!(
            p.sign_data
                .starts_with(r#"{"offerId":"1","buyQuantity":1,"env":1,"#)
        );
        assert!(!format!("{p:?}").contains(&p.pay_sig));
        assert!(verify_pay_sig_for_request("k", &p.sign_data, &p.pay_sig));
        assert!(!verify_pay_sig_for_request("k2", &p.sign_data, &p.pay_sig));
        assert!(verify_user_signature(
            "s",
            &p.sign_data,
            &p.signature.to_uppercase()
        ));
        assert!(!verify_user_signature("s", &p.sign_data, "00"));
    }
}
