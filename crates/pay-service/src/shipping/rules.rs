//! What shipping means, as plain functions: the states, WeChat's rules for an upload, the
//! retry schedule, and what a message push asks for.
//!
//! Sources: the order-shipping document
//! <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/order-shipping/order-shipping.html>
//! (at most 15 parcels, RFC 3339 `upload_time`, one modification, the `trade_manage_*` pushes)
//! and merchants' reports (10060001 for a while after the payment: "等待1分钟后再试",
//! <https://developers.weixin.qq.com/community/develop/doc/000a6c0d56887046ef339726061800>).

use diesel::{Queryable, Selectable};
use serde::{Deserialize, Serialize};
use wechat::shipping::{self as ws, DeliveryMode, LogisticsType};
use wxmp_proto::pay::v1 as pb;

use crate::{error::Error, schema::shipments};

/// Where an order's shipping stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShippingState {
    /// Recorded; WeChat has not taken it yet (the worker retries).
    PendingUpload,
    Shipped,
    Received,
    Settled,
}

impl ShippingState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PendingUpload => "PENDING_UPLOAD",
            Self::Shipped => "SHIPPED",
            Self::Received => "RECEIVED",
            Self::Settled => "SETTLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::PendingUpload,
            Self::Shipped,
            Self::Received,
            Self::Settled,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    fn to_proto(self) -> pb::ShippingState {
        match self {
            Self::PendingUpload => pb::ShippingState::PendingUpload,
            Self::Shipped => pb::ShippingState::Shipped,
            Self::Received => pb::ShippingState::Received,
            Self::Settled => pb::ShippingState::Settled,
        }
    }
}

/// A row of `shipments`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = shipments)]
pub struct Shipment {
    pub order_no: String,
    pub app_id: String,
    pub transaction_id: String,
    #[serde(skip)]
    pub openid: String,
    pub state: String,
    pub logistics_type: i32,
    pub delivery_mode: i32,
    /// JSON: `{"is_all_delivered", "shipping_list"}` in WeChat's shape.
    #[serde(skip)]
    pub request: String,
    pub modifications: i32,
    pub uploads: i32,
    pub attempts: i32,
    pub next_attempt_at: i64,
    #[serde(skip)]
    pub lease_until: i64,
    #[serde(skip)]
    pub lease_token: String,
    pub last_error: String,
    pub requested_at: i64,
    pub shipped_at: Option<i64>,
    pub received_at: Option<i64>,
    pub settled_at: Option<i64>,
    pub updated_at: i64,
}

impl Shipment {
    pub fn state(&self) -> Option<ShippingState> {
        ShippingState::parse(&self.state)
    }

    pub fn to_proto(&self) -> pb::OrderShipping {
        pb::OrderShipping {
            state: self
                .state()
                .map_or(pb::ShippingState::Unspecified, ShippingState::to_proto)
                as i32,
            logistics_type: self.logistics_type,
            delivery_mode: self.delivery_mode,
            shipped_at: self.shipped_at.unwrap_or(0),
            received_at: self.received_at.unwrap_or(0),
            settled_at: self.settled_at.unwrap_or(0),
            upload_attempts: self.attempts,
            last_error: self.last_error.clone(),
            next_attempt_at: self.next_attempt_at,
            uploads: self.uploads,
            requested_at: self.requested_at,
        }
    }

    /// The JSON the outbox events carry under `"shipping"`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// One parcel of a Ship request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShipParcel {
    pub tracking_no: String,
    pub express_company: String,
    pub item_desc: String,
    pub consignor_contact: String,
    pub receiver_contact: String,
}

/// A Ship request, as the shop service sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShipRequest {
    pub order_no: String,
    pub logistics_type: i32,
    pub delivery_mode: i32,
    pub parcels: Vec<ShipParcel>,
    pub is_all_delivered: bool,
}

/// The part of an upload that does not change between attempts (stored as `request`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_all_delivered: Option<bool>,
    pub shipping_list: Vec<ws::Parcel>,
}

/// Checks a Ship request against WeChat's rules and answers what to store.
pub fn check_ship(
    req: &ShipRequest,
) -> Result<(LogisticsType, DeliveryMode, StoredRequest), Error> {
    let logistics = u8::try_from(req.logistics_type)
        .ok()
        .and_then(|v| LogisticsType::try_from(v).ok())
        .ok_or_else(|| {
            Error::InvalidArgument(
                "logistics_type must be 1 (express), 2 (same-city), 3 (virtual) or 4 (self pickup)"
                    .into(),
            )
        })?;
    let mode = u8::try_from(req.delivery_mode)
        .ok()
        .and_then(|v| DeliveryMode::try_from(v).ok())
        .ok_or_else(|| {
            Error::InvalidArgument("delivery_mode must be 1 (unified) or 2 (split)".into())
        })?;
    let parcels: Vec<ws::Parcel> = req
        .parcels
        .iter()
        .map(|p| ws::Parcel {
            tracking_no: p.tracking_no.trim().to_owned(),
            express_company: p.express_company.trim().to_owned(),
            item_desc: p.item_desc.trim().to_owned(),
            contact: (!p.consignor_contact.is_empty() || !p.receiver_contact.is_empty()).then(
                || ws::Contact {
                    consignor_contact: p.consignor_contact.clone(),
                    receiver_contact: p.receiver_contact.clone(),
                },
            ),
        })
        .collect();
    let is_all_delivered = (mode == DeliveryMode::Split).then_some(req.is_all_delivered);
    ws::validate_parcels(logistics, mode, is_all_delivered, &parcels)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok((
        logistics,
        mode,
        StoredRequest {
            is_all_delivered,
            shipping_list: parcels,
        },
    ))
}

/// The stored request of a virtual product's automatic upload.
pub fn virtual_request(description: &str) -> StoredRequest {
    let item_desc: String = description.chars().take(120).collect();
    StoredRequest {
        is_all_delivered: None,
        shipping_list: vec![ws::Parcel {
            item_desc: if item_desc.is_empty() {
                "virtual goods".into()
            } else {
                item_desc
            },
            ..ws::Parcel::default()
        }],
    }
}

/// The WeChat body of one upload attempt of `shipment` at `now` (RFC 3339, China time).
pub fn upload_body(shipment: &Shipment, now: i64) -> Result<ws::ShippingInfo, String> {
    let stored: StoredRequest =
        serde_json::from_str(&shipment.request).map_err(|e| format!("stored request: {e}"))?;
    let logistics_type = u8::try_from(shipment.logistics_type)
        .ok()
        .and_then(|v| LogisticsType::try_from(v).ok())
        .ok_or("stored logistics_type")?;
    let delivery_mode = u8::try_from(shipment.delivery_mode)
        .ok()
        .and_then(|v| DeliveryMode::try_from(v).ok())
        .ok_or("stored delivery_mode")?;
    let china = chrono::FixedOffset::east_opt(8 * 3600).ok_or("offset")?;
    let upload_time = chrono::DateTime::from_timestamp(now, 0)
        .ok_or("time")?
        .with_timezone(&china)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    Ok(ws::ShippingInfo {
        order_key: ws::OrderKey::transaction(&shipment.transaction_id),
        logistics_type,
        delivery_mode,
        is_all_delivered: stored.is_all_delivered,
        shipping_list: stored.shipping_list,
        upload_time,
        payer: ws::Payer {
            openid: shipment.openid.clone(),
        },
    })
}

/// What to do after an upload attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadVerdict {
    /// WeChat took it.
    Shipped,
    /// Try again at `now + delay_secs`, recording `error`.
    Retry { delay_secs: i64, error: String },
}

/// Backoff: `base_ms` doubling per attempt, at most an hour; 45009 waits `quota_secs`.
/// Everything is retried: WeChat's frozen money is at stake, and a stuck upload is visible
/// (metric, alert, `wxmp order`) for a human to look at.
pub fn verdict_of(
    result: &Result<(), String>,
    errcode: Option<i64>,
    attempts: i32,
    base_ms: u64,
    quota_secs: u64,
) -> UploadVerdict {
    match result {
        Ok(()) => UploadVerdict::Shipped,
        Err(error) => {
            let delay_secs = if errcode == Some(ws::ERR_QUOTA) {
                i64::try_from(quota_secs).unwrap_or(3600)
            } else {
                let factor = 1u64 << attempts.clamp(1, 20).saturating_sub(1).unsigned_abs();
                let ms = base_ms.saturating_mul(factor).min(3_600_000);
                i64::try_from(ms.div_ceil(1000)).unwrap_or(3600).max(1)
            };
            UploadVerdict::Retry {
                delay_secs,
                error: error.chars().take(200).collect(),
            }
        }
    }
}

/// An integer field of a push: JSON numbers, or strings (XML).
pub fn int_field(message: &serde_json::Value, name: &str) -> Option<i64> {
    match message.get(name)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v| *v > 0)
}

/// A string field of a push.
pub fn str_field<'a>(message: &'a serde_json::Value, name: &str) -> &'a str {
    message
        .get(name)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

/// What a `trade_manage_order_settlement` push says: WeChat pushes it when the user confirms
/// receipt (`confirm_receive_time`, `estimated_settlement_time`) and again when the payment
/// settles (`settlement_time`, `confirm_receive_method`: only "结算时推送才有该字段").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    Received { at: i64 },
    Settled { received_at: Option<i64>, at: i64 },
}

pub fn settlement_of(message: &serde_json::Value) -> Option<Settlement> {
    let received = int_field(message, "confirm_receive_time");
    match int_field(message, "settlement_time") {
        Some(at) => Some(Settlement::Settled {
            received_at: received,
            at,
        }),
        None => received.map(|at| Settlement::Received { at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ShipRequest {
        ShipRequest {
            order_no: "o".into(),
            logistics_type: 1,
            delivery_mode: 1,
            parcels: vec![ShipParcel {
                tracking_no: "SF1".into(),
                express_company: "SF".into(),
                item_desc: "mug".into(),
                ..ShipParcel::default()
            }],
            is_all_delivered: false,
        }
    }

    #[test]
    fn ship_requests_follow_wechat_rules() {
        assert!(check_ship(&req()).is_ok());
        let mut r = req();
        r.logistics_type = 9;
        assert!(matches!(check_ship(&r), Err(Error::InvalidArgument(_))));
        let mut r = req();
        r.parcels[0].tracking_no.clear();
        assert!(check_ship(&r).is_err());
        let mut r = req();
        r.delivery_mode = 2;
        r.parcels = vec![r.parcels[0].clone(); 16];
        assert!(check_ship(&r).is_err());
        r.parcels.truncate(15);
        let (_, _, stored) = check_ship(&r).unwrap();
        assert_eq!(stored.is_all_delivered, Some(false));
        // Same-city and virtual need no tracking number.
        let mut r = req();
        r.logistics_type = 2;
        r.parcels[0].tracking_no.clear();
        r.parcels[0].express_company.clear();
        assert!(check_ship(&r).is_ok());
    }

    #[test]
    fn upload_time_is_rfc3339_china_time() {
        let s = Shipment {
            transaction_id: "42".into(),
            openid: "o1".into(),
            logistics_type: 3,
            delivery_mode: 1,
            request: serde_json::to_string(&virtual_request("VIP")).unwrap(),
            ..Shipment::default()
        };
        let body = upload_body(&s, 1_700_000_000).unwrap();
        assert_eq!(body.upload_time, "2023-11-15T06:13:20.000+08:00");
        assert!(ws::validate(&body).is_ok());
    }

    #[test]
    fn backoff_doubles_and_quota_waits() {
        let e = Err("10060001".to_owned());
        let d = |a| match verdict_of(&e, Some(10_060_001), a, 1000, 3600) {
            UploadVerdict::Retry { delay_secs, .. } => delay_secs,
            UploadVerdict::Shipped => -1,
        };
        assert_eq!((d(1), d(2), d(3)), (1, 2, 4));
        assert_eq!(d(40), 3600);
        assert_eq!(
            verdict_of(&e, Some(45009), 1, 1000, 7200),
            UploadVerdict::Retry {
                delay_secs: 7200,
                error: "10060001".into()
            }
        );
        assert_eq!(verdict_of(&Ok(()), None, 1, 1, 1), UploadVerdict::Shipped);
    }

    #[test]
    fn settlement_pushes() {
        let received =
            serde_json::json!({"confirm_receive_time": 10, "estimated_settlement_time": 20});
        assert_eq!(
            settlement_of(&received),
            Some(Settlement::Received { at: 10 })
        );
        let settled = serde_json::json!({"confirm_receive_time": "10", "settlement_time": "30"});
        assert_eq!(
            settlement_of(&settled),
            Some(Settlement::Settled {
                received_at: Some(10),
                at: 30
            })
        );
        assert_eq!(settlement_of(&serde_json::json!({})), None);
    }
}
