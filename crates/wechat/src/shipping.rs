//! The mini program's order shipping APIs (发货信息管理服务), all under `/wxa/sec/order/` and
//! all taking the shared `access_token`:
//! <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/order-shipping/order-shipping.html>
//!
//! The funds of a payment stay frozen until the merchant uploads the shipping information and
//! the user confirms receipt (or a timeout passes). What merchants report, and wxmp handles:
//! 10060001 ("支付单不存在") for a while right after the payment, 45009 over the daily quota,
//! one re-upload (modification) per order, at most 15 parcels, `upload_time` in RFC 3339.
//!
//! On [`ApiError::is_token_rejected`] the caller asks auth-service for a fresh token and
//! retries once (as for subscribe messages).

use serde::{Deserialize, Serialize};

use crate::auth::{ApiError, parse_json};
use crate::client::WechatClient;

/// 10060001: WeChat does not know the payment (yet): retry later.
pub const ERR_ORDER_NOT_FOUND: i64 = 10_060_001;
/// 45009: the daily quota of the API is used up.
pub const ERR_QUOTA: i64 = 45_009;
/// At most this many parcels in one upload (split delivery).
pub const MAX_PARCELS: usize = 15;

/// `logistics_type`: how the goods reach the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum LogisticsType {
    /// 1: 实体物流配送 (express; needs tracking_no and express_company).
    Express = 1,
    /// 2: 同城配送 (same-city delivery).
    SameCity = 2,
    /// 3: 虚拟商品 (virtual goods, e.g. top-ups).
    Virtual = 3,
    /// 4: 用户自提 (picked up by the user).
    SelfPickup = 4,
}

impl From<LogisticsType> for u8 {
    fn from(t: LogisticsType) -> u8 {
        t as u8
    }
}

impl TryFrom<u8> for LogisticsType {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        Ok(match v {
            1 => Self::Express,
            2 => Self::SameCity,
            3 => Self::Virtual,
            4 => Self::SelfPickup,
            other => return Err(format!("unknown logistics_type {other}")),
        })
    }
}

/// `delivery_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum DeliveryMode {
    /// 1: 统一发货 (one parcel).
    Unified = 1,
    /// 2: 分拆发货 (split delivery, at most [`MAX_PARCELS`] parcels).
    Split = 2,
}

impl From<DeliveryMode> for u8 {
    fn from(m: DeliveryMode) -> u8 {
        m as u8
    }
}

impl TryFrom<u8> for DeliveryMode {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            1 => Ok(Self::Unified),
            2 => Ok(Self::Split),
            other => Err(format!("unknown delivery_mode {other}")),
        }
    }
}

/// `order_key`: which payment (by transaction_id, or by merchant + out_trade_no).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderKey {
    /// 1: by `mchid` + `out_trade_no`; 2: by `transaction_id`.
    pub order_number_type: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transaction_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mchid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub out_trade_no: String,
}

impl OrderKey {
    /// The payment by WeChat's transaction_id.
    pub fn transaction(transaction_id: &str) -> Self {
        Self {
            order_number_type: 2,
            transaction_id: transaction_id.to_owned(),
            ..Self::default()
        }
    }
}

/// A contact, masked (required for SF express: the receiver's or sender's phone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub consignor_contact: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub receiver_contact: String,
}

/// One parcel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parcel {
    /// Express only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracking_no: String,
    /// Express only: a `delivery_id` from [`WechatClient::get_delivery_list`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub express_company: String,
    /// What is in it, at most 120 characters.
    pub item_desc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
}

/// `payer`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    pub openid: String,
}

/// The body of `upload_shipping_info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingInfo {
    pub order_key: OrderKey,
    pub logistics_type: LogisticsType,
    pub delivery_mode: DeliveryMode,
    /// Split delivery only: whether this upload completes the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_all_delivered: Option<bool>,
    pub shipping_list: Vec<Parcel>,
    /// RFC 3339 with offset, e.g. `2022-12-15T13:29:35.120+08:00`.
    pub upload_time: String,
    pub payer: Payer,
}

/// One sub-order of `upload_combined_shipping_info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOrder {
    pub order_key: OrderKey,
    pub logistics_type: LogisticsType,
    pub delivery_mode: DeliveryMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_all_delivered: Option<bool>,
    pub shipping_list: Vec<Parcel>,
}

/// The body of `upload_combined_shipping_info` (合单).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CombinedShippingInfo {
    pub order_key: OrderKey,
    pub sub_orders: Vec<SubOrder>,
    pub upload_time: String,
    pub payer: Payer,
}

/// Why shipping info is invalid before it is sent (WeChat's own checks, done locally so a
/// bad request never spends quota).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShippingInfoError {
    #[error("shipping_list must hold 1 to {MAX_PARCELS} parcels")]
    ParcelCount,
    #[error("unified delivery takes exactly one parcel")]
    UnifiedNeedsOne,
    #[error("split delivery needs is_all_delivered")]
    SplitNeedsAllDelivered,
    #[error("only express deliveries may be split (10060006)")]
    SplitNeedsExpress,
    #[error("express parcels need tracking_no and express_company")]
    ExpressNeedsTracking,
    #[error("item_desc must be 1 to 120 characters")]
    ItemDesc,
    #[error("upload_time must be RFC 3339")]
    UploadTime,
    #[error("payer.openid is required")]
    Payer,
    #[error("order_key needs transaction_id (type 2) or mchid and out_trade_no (type 1)")]
    OrderKey,
}

/// Checks what WeChat checks: parcel count, unified = one parcel, split needs
/// `is_all_delivered`, express needs tracking, item_desc ≤ 120 characters, RFC 3339 time.
pub fn validate(info: &ShippingInfo) -> Result<(), ShippingInfoError> {
    match info.order_key.order_number_type {
        2 if !info.order_key.transaction_id.is_empty() => {}
        1 if !info.order_key.mchid.is_empty() && !info.order_key.out_trade_no.is_empty() => {}
        _ => return Err(ShippingInfoError::OrderKey),
    }
    if info.payer.openid.is_empty() {
        return Err(ShippingInfoError::Payer);
    }
    if chrono::DateTime::parse_from_rfc3339(&info.upload_time).is_err() {
        return Err(ShippingInfoError::UploadTime);
    }
    validate_parcels(
        info.logistics_type,
        info.delivery_mode,
        info.is_all_delivered,
        &info.shipping_list,
    )
}

/// The parcel rules alone (shared with the combined variant's sub-orders).
pub fn validate_parcels(
    logistics_type: LogisticsType,
    delivery_mode: DeliveryMode,
    is_all_delivered: Option<bool>,
    parcels: &[Parcel],
) -> Result<(), ShippingInfoError> {
    if parcels.is_empty() || parcels.len() > MAX_PARCELS {
        return Err(ShippingInfoError::ParcelCount);
    }
    match delivery_mode {
        DeliveryMode::Unified if parcels.len() != 1 => {
            return Err(ShippingInfoError::UnifiedNeedsOne);
        }
        DeliveryMode::Split if logistics_type != LogisticsType::Express => {
            return Err(ShippingInfoError::SplitNeedsExpress);
        }
        DeliveryMode::Split if is_all_delivered.is_none() => {
            return Err(ShippingInfoError::SplitNeedsAllDelivered);
        }
        _ => {}
    }
    for p in parcels {
        let n = p.item_desc.chars().count();
        if n == 0 || n > 120 {
            return Err(ShippingInfoError::ItemDesc);
        }
        if logistics_type == LogisticsType::Express
            && (p.tracking_no.is_empty() || p.express_company.is_empty())
        {
            return Err(ShippingInfoError::ExpressNeedsTracking);
        }
    }
    Ok(())
}

/// `shipping` of an order in `get_order`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct OrderShipping {
    #[serde(default)]
    pub delivery_mode: u8,
    #[serde(default)]
    pub logistics_type: u8,
    #[serde(default)]
    pub finish_shipping: bool,
    #[serde(default)]
    pub goods_desc: String,
    #[serde(default)]
    pub finish_shipping_count: i64,
    #[serde(default)]
    pub shipping_list: Vec<serde_json::Value>,
}

/// `order_state` 2 (已发货): WeChat holds an upload; 3 and 4 (confirmed, settled) come after.
pub const ORDER_STATE_SHIPPED: i64 = 2;

/// An order as `get_order` / `get_order_list` describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ShippingOrder {
    #[serde(default)]
    pub transaction_id: String,
    #[serde(default)]
    pub merchant_id: String,
    #[serde(default)]
    pub sub_merchant_id: String,
    #[serde(default)]
    pub merchant_trade_no: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub paid_amount: i64,
    #[serde(default)]
    pub openid: String,
    #[serde(default)]
    pub trade_create_time: i64,
    #[serde(default)]
    pub pay_time: i64,
    /// 1 待发货, 2 已发货, 3 确认收货, 4 交易完成, 5 已退款.
    #[serde(default)]
    pub order_state: i64,
    #[serde(default)]
    pub in_complaint: bool,
    #[serde(default)]
    pub shipping: Option<OrderShipping>,
}

/// `get_order_list`'s filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OrderListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_time_range: Option<TimeRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_state: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_index: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size: Option<i64>,
}

/// Unix seconds, inclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimeRange {
    pub begin_time: i64,
    pub end_time: i64,
}

/// One page of `get_order_list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OrderList {
    #[serde(default)]
    pub order_list: Vec<ShippingOrder>,
    #[serde(default)]
    pub last_index: String,
    #[serde(default)]
    pub has_more: bool,
}

/// An express company of `get_delivery_list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct DeliveryCompany {
    pub delivery_id: String,
    pub delivery_name: String,
}

#[derive(Deserialize)]
struct Errcode {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

fn check(body: &[u8]) -> Result<(), ApiError> {
    let e: Errcode = parse_json(body)?;
    if e.errcode != 0 {
        return Err(ApiError::from_errcode(e.errcode, e.errmsg));
    }
    Ok(())
}

impl WechatClient {
    /// `POST /wxa/sec/order/upload_shipping_info`. 10060001 ([`ERR_ORDER_NOT_FOUND`]) right
    /// after a payment means "not indexed yet": retry later.
    pub async fn upload_shipping_info(
        &self,
        access_token: &str,
        info: &ShippingInfo,
    ) -> Result<(), ApiError> {
        check(
            &self
                .post_json(
                    "/wxa/sec/order/upload_shipping_info",
                    Some(access_token),
                    info,
                )
                .await?,
        )
    }

    /// `POST /wxa/sec/order/upload_combined_shipping_info`.
    pub async fn upload_combined_shipping_info(
        &self,
        access_token: &str,
        info: &CombinedShippingInfo,
    ) -> Result<(), ApiError> {
        check(
            &self
                .post_json(
                    "/wxa/sec/order/upload_combined_shipping_info",
                    Some(access_token),
                    info,
                )
                .await?,
        )
    }

    /// `POST /wxa/sec/order/get_order` by transaction_id, or by merchant_id +
    /// merchant_trade_no.
    pub async fn get_shipping_order(
        &self,
        access_token: &str,
        transaction_id: Option<&str>,
        merchant: Option<(&str, &str)>,
    ) -> Result<ShippingOrder, ApiError> {
        let mut body = serde_json::Map::new();
        if let Some(t) = transaction_id {
            body.insert("transaction_id".into(), t.into());
        }
        if let Some((mchid, trade_no)) = merchant {
            body.insert("merchant_id".into(), mchid.into());
            body.insert("merchant_trade_no".into(), trade_no.into());
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            errcode: i64,
            #[serde(default)]
            errmsg: String,
            order: Option<ShippingOrder>,
        }
        let a: Answer = parse_json(
            &self
                .post_json("/wxa/sec/order/get_order", Some(access_token), &body)
                .await?,
        )?;
        if a.errcode != 0 {
            return Err(ApiError::from_errcode(a.errcode, a.errmsg));
        }
        a.order
            .ok_or_else(|| ApiError::BadResponse("missing order".into()))
    }

    /// `POST /wxa/sec/order/get_order_list`.
    pub async fn get_shipping_order_list(
        &self,
        access_token: &str,
        query: &OrderListQuery,
    ) -> Result<OrderList, ApiError> {
        let raw = self
            .post_json("/wxa/sec/order/get_order_list", Some(access_token), query)
            .await?;
        check(&raw)?;
        parse_json(&raw)
    }

    /// `POST /wxa/sec/order/notify_confirm_receive`: reminds the user to confirm receipt
    /// (`received_time`: unix seconds the goods arrived).
    pub async fn notify_confirm_receive(
        &self,
        access_token: &str,
        transaction_id: &str,
        received_time: i64,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({
            "transaction_id": transaction_id,
            "received_time": received_time,
        });
        check(
            &self
                .post_json(
                    "/wxa/sec/order/notify_confirm_receive",
                    Some(access_token),
                    &body,
                )
                .await?,
        )
    }

    /// `POST /wxa/sec/order/set_msg_jump_path`: the page the shipping message opens.
    pub async fn set_msg_jump_path(&self, access_token: &str, path: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "path": path });
        check(
            &self
                .post_json(
                    "/wxa/sec/order/set_msg_jump_path",
                    Some(access_token),
                    &body,
                )
                .await?,
        )
    }

    /// `POST /wxa/sec/order/is_trade_managed`: whether the app is under trade management
    /// (its funds frozen until shipping).
    pub async fn is_trade_managed(
        &self,
        access_token: &str,
        appid: &str,
    ) -> Result<bool, ApiError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            errcode: i64,
            #[serde(default)]
            errmsg: String,
            #[serde(default)]
            is_trade_managed: bool,
        }
        let body = serde_json::json!({ "appid": appid });
        let a: Answer = parse_json(
            &self
                .post_json("/wxa/sec/order/is_trade_managed", Some(access_token), &body)
                .await?,
        )?;
        if a.errcode != 0 {
            return Err(ApiError::from_errcode(a.errcode, a.errmsg));
        }
        Ok(a.is_trade_managed)
    }

    /// `POST /cgi-bin/express/delivery/open_msg/get_delivery_list`: the express companies
    /// (`delivery_id` is what `express_company` takes).
    pub async fn get_delivery_list(
        &self,
        access_token: &str,
    ) -> Result<Vec<DeliveryCompany>, ApiError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            errcode: i64,
            #[serde(default)]
            errmsg: String,
            #[serde(default)]
            delivery_list: Vec<DeliveryCompany>,
        }
        let a: Answer = parse_json(
            &self
                .post_json(
                    "/cgi-bin/express/delivery/open_msg/get_delivery_list",
                    Some(access_token),
                    &serde_json::json!({}),
                )
                .await?,
        )?;
        if a.errcode != 0 {
            return Err(ApiError::from_errcode(a.errcode, a.errmsg));
        }
        Ok(a.delivery_list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ShippingInfo {
        ShippingInfo {
            order_key: OrderKey::transaction("4200001"),
            logistics_type: LogisticsType::Express,
            delivery_mode: DeliveryMode::Unified,
            is_all_delivered: None,
            shipping_list: vec![Parcel {
                tracking_no: "SF1".into(),
                express_company: "SF".into(),
                item_desc: "a mug".into(),
                contact: None,
            }],
            upload_time: "2022-12-15T13:29:35.120+08:00".into(),
            payer: Payer {
                openid: "o1".into(),
            },
        }
    }

    #[test]
    fn wechat_shape() {
        let v = serde_json::to_value(info()).unwrap();
        assert_eq!(v["logistics_type"], 1);
        assert_eq!(v["delivery_mode"], 1);
        assert_eq!(v["order_key"]["order_number_type"], 2);
        assert!(v.get("is_all_delivered").is_none());
    }

    #[test]
    fn validation() {
        assert_eq!(validate(&info()), Ok(()));
        let mut i = info();
        i.upload_time = "2022-12-15 13:29:35".into();
        assert_eq!(validate(&i), Err(ShippingInfoError::UploadTime));
        let mut i = info();
        i.shipping_list[0].tracking_no.clear();
        assert_eq!(validate(&i), Err(ShippingInfoError::ExpressNeedsTracking));
        let mut i = info();
        i.delivery_mode = DeliveryMode::Split;
        assert_eq!(validate(&i), Err(ShippingInfoError::SplitNeedsAllDelivered));
        i.is_all_delivered = Some(true);
        i.shipping_list = vec![i.shipping_list[0].clone(); 16];
        assert_eq!(validate(&i), Err(ShippingInfoError::ParcelCount));
        i.shipping_list.truncate(15);
        assert_eq!(validate(&i), Ok(()));
    }
}
