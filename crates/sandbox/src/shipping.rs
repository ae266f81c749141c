//! WeChat's order shipping service (发货信息管理服务) and the message push that carries its
//! events, as the sandbox plays them.
//!
//! Written from WeChat's documents, not from wxmp's client:
//! * the shipping APIs and their errors:
//!   <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/order-shipping/order-shipping.html>
//!   — `upload_shipping_info` takes `order_key` (`order_number_type` 1: `mchid` +
//!   `out_trade_no`, 2: `transaction_id`), `logistics_type` (1 express, 2 same-city, 3 virtual,
//!   4 self pickup), `delivery_mode` (1 unified, 2 split), `is_all_delivered` (split),
//!   `shipping_list` (1 parcel unified, at most 15 split; express parcels need `tracking_no`
//!   and `express_company`, SF parcels a masked contact; `item_desc` ≤ 120 characters),
//!   `upload_time` (RFC 3339) and `payer.openid`. One re-upload (modification) per order.
//!   Errors: 10060001 支付单不存在, 10060002 支付单已完成发货无法继续发货, 10060003 支付单已使用重新发货机会,
//!   10060004 支付单处于不可发货的状态, 10060005 物流类型有误, 10060006 非快递发货时不允许分拆发货,
//!   10060007 分拆发货模式下必须填写is_all_delivered, 10060008 商品描述字段不能为空,
//!   10060009 商品描述字段长度不能超过120, 10060014 参数错误, 47001 (shipping_list not an array).
//! * 10060001 right after a payment, until WeChat indexed it ("等待1分钟后再试"):
//!   <https://developers.weixin.qq.com/community/develop/doc/000a6c0d56887046ef339726061800>;
//!   here for `SANDBOX_SHIPPING_NOT_FOUND_SECS` after the payment.
//! * 45009 when over the API's quota (merchants' reports, 2024-02): a fault to set.
//! * the message push and its safe mode (AES-256-CBC, key = base64(EncodingAESKey + "="), IV =
//!   its first 16 bytes, PKCS#7 to 32 bytes over random(16) ‖ u32 BE length ‖ msg ‖ appid;
//!   `msg_signature` = sha1 of the sorted token, timestamp, nonce and Encrypt):
//!   <https://developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html>
//!   and WeChat's WXBizMsgCrypt samples. Implemented here on the primitives, independently
//!   of wxmp's `wechat` crate. WeChat waits 5 s for "success" and retries 3 times.
//! * `trade_manage_order_settlement` is pushed when the user confirms receipt
//!   (`confirm_receive_time`, `estimated_settlement_time`) and when the payment settles
//!   (`settlement_time`, `confirm_receive_method`: "结算时推送才有该字段").

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use actix_web::{HttpRequest, HttpResponse, web};
use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha1::{Digest as _, Sha1};

use crate::{
    clock,
    state::Sandbox,
    token::authorize,
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

/// The dev app's push Token (`wxmp up` configures the gateway with it).
pub const DEV_PUSH_TOKEN: &str = "wxmpDevPushToken";
/// The dev app's EncodingAESKey (43 characters).
pub const DEV_PUSH_AES_KEY: &str = "wxmpDevPushAesKey0000000000000000000000000A";

/// `SANDBOX_SHIPPING_*` and `SANDBOX_PUSH_*`.
#[derive(clap::Args, Clone, Debug)]
pub struct ShippingConfig {
    /// upload_shipping_info answers 10060001 for this long after a payment (WeChat has not
    /// indexed it yet).
    #[arg(
        long,
        env = "SANDBOX_SHIPPING_NOT_FOUND_SECS",
        value_name = "SANDBOX_SHIPPING_NOT_FOUND_SECS",
        default_value_t = 3
    )]
    pub shipping_not_found_secs: u64,
    /// Where the dev app's message push goes (e.g. http://127.0.0.1:8080/wechat/push/wx...);
    /// unset: no push.
    #[arg(long, env = "SANDBOX_PUSH_URL", value_name = "SANDBOX_PUSH_URL")]
    pub push_url: Option<String>,
    /// The push Token of the dev app (as typed in the admin).
    #[arg(
        long,
        env = "SANDBOX_PUSH_TOKEN",
        value_name = "SANDBOX_PUSH_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub push_token: String,
    /// The push EncodingAESKey (43 characters; safe mode).
    #[arg(
        long,
        env = "SANDBOX_PUSH_AES_KEY",
        value_name = "SANDBOX_PUSH_AES_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub push_aes_key: String,
    /// `safe` or `plaintext`.
    #[arg(
        long,
        env = "SANDBOX_PUSH_MODE",
        value_name = "SANDBOX_PUSH_MODE",
        default_value = "safe"
    )]
    pub push_mode: String,
    /// `json` or `xml`.
    #[arg(
        long,
        env = "SANDBOX_PUSH_FORMAT",
        value_name = "SANDBOX_PUSH_FORMAT",
        default_value = "json"
    )]
    pub push_format: String,
}

impl Default for ShippingConfig {
    fn default() -> Self {
        Self {
            shipping_not_found_secs: 3,
            push_url: None,
            push_token: String::new(),
            push_aes_key: String::new(),
            push_mode: "safe".into(),
            push_format: "json".into(),
        }
    }
}

impl ShippingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.push_mode.as_str(), "safe" | "plaintext") {
            return Err("SANDBOX_PUSH_MODE must be safe or plaintext".into());
        }
        if !matches!(self.push_format.as_str(), "json" | "xml") {
            return Err("SANDBOX_PUSH_FORMAT must be json or xml".into());
        }
        if self.push_url.is_some() {
            if self.push_token.is_empty() {
                return Err("SANDBOX_PUSH_TOKEN must be set with SANDBOX_PUSH_URL".into());
            }
            if self.push_mode == "safe" && aes_key(&self.push_aes_key).is_none() {
                return Err(
                    "SANDBOX_PUSH_AES_KEY must be 43 characters of base64 in safe mode".into(),
                );
            }
        }
        Ok(())
    }
}

/// A payment WeChat knows, for the shipping service.
#[derive(Clone, Debug)]
pub struct Paid {
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub openid: String,
    pub amount_fen: u64,
    pub paid_at_ms: i64,
    pub paid: Instant,
}

/// WeChat's order_state: 1 待发货, 2 已发货, 3 确认收货, 4 交易完成.
#[derive(Clone, Debug, Serialize)]
pub struct ShipOrder {
    pub transaction_id: String,
    pub out_trade_no: String,
    pub appid: String,
    pub mchid: String,
    pub openid: String,
    pub amount_fen: u64,
    pub paid_at: i64,
    pub order_state: u8,
    /// Accepted uploads (the first and at most one modification), newest last.
    pub uploads: Vec<Value>,
    pub shipped_at: Option<i64>,
    pub received_at: Option<i64>,
    pub settled_at: Option<i64>,
}

/// One push the sandbox sent (or tried to).
#[derive(Clone, Debug, Serialize)]
pub struct PushRecord {
    pub event: String,
    pub transaction_id: String,
    pub mode: String,
    pub format: String,
    pub attempts: u32,
    /// "success", or the last failure.
    pub outcome: String,
    pub at_ms: i64,
}

#[derive(Debug, Default)]
pub struct ShippingState {
    /// transaction_id → payment.
    paid: HashMap<String, Paid>,
    /// transaction_id → shipping.
    pub orders: HashMap<String, ShipOrder>,
    pub pushes: Vec<PushRecord>,
    /// Calls answered, by path (tests count retries).
    pub calls: HashMap<String, u64>,
    pub jump_path: Option<String>,
    /// Answer this errcode to every upload instead (e.g. 45009), while set.
    pub upload_fault: Option<i64>,
    /// Take this many uploads and lose their answers (a 504 from WeChat's gateway, as when
    /// the merchant's connection drops after WeChat committed the upload).
    pub answers_lost: u32,
}

/// The sandbox's shipping world (its own lock, never held with the main state's).
#[derive(Debug)]
pub struct Shipping {
    pub config: ShippingConfig,
    state: Mutex<ShippingState>,
}

impl Shipping {
    pub fn new(config: &ShippingConfig) -> Self {
        Self {
            config: config.clone(),
            state: Mutex::new(ShippingState::default()),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, ShippingState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A payment succeeded (called by the v2 and v3 pay paths).
    pub fn paid(&self, paid: Paid) {
        let mut s = self.state();
        s.orders.insert(
            paid.transaction_id.clone(),
            ShipOrder {
                transaction_id: paid.transaction_id.clone(),
                out_trade_no: paid.out_trade_no.clone(),
                appid: paid.appid.clone(),
                mchid: paid.mchid.clone(),
                openid: paid.openid.clone(),
                amount_fen: paid.amount_fen,
                paid_at: paid.paid_at_ms / 1000,
                order_state: 1,
                uploads: Vec::new(),
                shipped_at: None,
                received_at: None,
                settled_at: None,
            },
        );
        s.paid.insert(paid.transaction_id.clone(), paid);
    }
}

/// WeChat's answer `{"errcode", "errmsg"}`.
fn wx(errcode: i64, errmsg: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(json!({ "errcode": errcode, "errmsg": errmsg }).to_string())
}

fn ok(extra: Value) -> HttpResponse {
    let mut body = json!({ "errcode": 0, "errmsg": "ok" });
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(body.to_string())
}

/// The express companies (a few of WeChat's `get_delivery_list`).
pub const EXPRESS_COMPANIES: &[(&str, &str)] = &[
    ("SF", "顺丰速运"),
    ("ZTO", "中通快递"),
    ("YTO", "圆通速递"),
    ("STO", "申通快递"),
    ("YD", "韵达快递"),
    ("JD", "京东物流"),
    ("EMS", "中国邮政速递物流"),
];

fn count(sandbox: &Sandbox, path: &str) {
    *sandbox
        .shipping
        .state()
        .calls
        .entry(path.to_owned())
        .or_default() += 1;
}

/// The JSON object of a request, or WeChat's 47001 answer.
fn json_body(body: &[u8]) -> Result<Value, Box<HttpResponse>> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| Box::new(wx(47001, "data format error")))
}

/// The payment an `order_key` (or a flat `transaction_id` / `merchant_id` +
/// `merchant_trade_no`) names.
fn find_paid(state: &ShippingState, key: &Value) -> Option<Paid> {
    let s = |name: &str| key.get(name).and_then(Value::as_str).unwrap_or("");
    let by_tx = s("transaction_id");
    if !by_tx.is_empty() {
        return state.paid.get(by_tx).cloned();
    }
    let (mchid, trade_no) = match (s("mchid"), s("merchant_id")) {
        ("", m) => (m, s("merchant_trade_no")),
        (m, _) => (m, s("out_trade_no")),
    };
    state
        .paid
        .values()
        .find(|p| !trade_no.is_empty() && p.mchid == mchid && p.out_trade_no == trade_no)
        .cloned()
}

/// Checks one upload's fields (WeChat's rules); the errcode and message of the first fault.
fn check_upload(body: &Value) -> Result<(), (i64, &'static str)> {
    let logistics = body
        .get("logistics_type")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(1..=4).contains(&logistics) {
        return Err((10_060_005, "物流类型有误"));
    }
    let mode = body
        .get("delivery_mode")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(1..=2).contains(&mode) {
        return Err((10_060_014, "参数错误: delivery_mode"));
    }
    let Some(list) = body.get("shipping_list").and_then(Value::as_array) else {
        return Err((47_001, "data format error: shipping_list must be an array"));
    };
    if list.is_empty() || list.len() > 15 {
        return Err((10_060_014, "参数错误: shipping_list holds 1 to 15 parcels"));
    }
    if mode == 1 && list.len() != 1 {
        return Err((10_060_014, "参数错误: unified delivery takes one parcel"));
    }
    if mode == 2 {
        if logistics != 1 {
            return Err((10_060_006, "非快递发货时不允许分拆发货"));
        }
        if !body.get("is_all_delivered").is_some_and(Value::is_boolean) {
            return Err((10_060_007, "分拆发货模式下必须填写is_all_delivered字段"));
        }
    }
    for parcel in list {
        let s = |name: &str| parcel.get(name).and_then(Value::as_str).unwrap_or("");
        let desc = s("item_desc");
        if desc.is_empty() {
            return Err((10_060_008, "商品描述字段不能为空"));
        }
        if desc.chars().count() > 120 {
            return Err((10_060_009, "商品描述字段长度不能超过120"));
        }
        if logistics == 1 {
            if s("tracking_no").is_empty() || s("express_company").is_empty() {
                return Err((
                    10_060_014,
                    "参数错误: express needs tracking_no and express_company",
                ));
            }
            if !EXPRESS_COMPANIES
                .iter()
                .any(|(id, _)| *id == s("express_company"))
            {
                return Err((10_060_014, "参数错误: unknown express_company"));
            }
            // SF needs a masked phone of the sender or the receiver.
            let contact = parcel.get("contact");
            let has_contact = ["consignor_contact", "receiver_contact"].iter().any(|n| {
                contact
                    .and_then(|c| c.get(*n))
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
            });
            if s("express_company") == "SF" && !has_contact {
                return Err((10_060_014, "参数错误: SF parcels need contact"));
            }
        }
    }
    let upload_time = body
        .get("upload_time")
        .and_then(Value::as_str)
        .unwrap_or("");
    if chrono::DateTime::parse_from_rfc3339(upload_time).is_err() {
        return Err((10_060_014, "参数错误: upload_time must be RFC 3339"));
    }
    Ok(())
}

/// `POST /wxa/sec/order/upload_shipping_info?access_token=`.
pub async fn upload_shipping_info(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    count(&sandbox, "upload_shipping_info");
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return Ok(*r),
    };
    let mut s = sandbox.shipping.state();
    if let Some(code) = s.upload_fault {
        return Ok(wx(code, "fault set in the sandbox"));
    }
    let key = body.get("order_key").cloned().unwrap_or(Value::Null);
    let Some(paid) = find_paid(&s, &key).filter(|p| p.appid == appid) else {
        return Ok(wx(10_060_001, "支付单不存在"));
    };
    let not_found_for = Duration::from_secs(sandbox.shipping.config.shipping_not_found_secs);
    if paid.paid.elapsed() < not_found_for {
        return Ok(wx(10_060_001, "支付单不存在"));
    }
    if let Err((code, msg)) = check_upload(&body) {
        return Ok(wx(code, msg));
    }
    let payer = body
        .pointer("/payer/openid")
        .and_then(Value::as_str)
        .unwrap_or("");
    if payer != paid.openid {
        return Ok(wx(10_060_014, "参数错误: payer.openid is not the payer"));
    }
    let Some(order) = s.orders.get_mut(&paid.transaction_id) else {
        return Ok(wx(10_060_001, "支付单不存在"));
    };
    match (order.order_state, order.uploads.len()) {
        (1, _) => {}
        (2, 1) => {}
        (2, _) => return Ok(wx(10_060_003, "支付单已使用重新发货机会")),
        _ => return Ok(wx(10_060_004, "支付单处于不可发货的状态")),
    }
    order.uploads.push(body);
    order.order_state = 2;
    order.shipped_at = Some(clock::unix_ms() / 1000);
    tracing::info!(transaction_id = %paid.transaction_id, uploads = order.uploads.len(), "sandbox: shipping uploaded");
    if s.answers_lost > 0 {
        s.answers_lost -= 1;
        return Ok(HttpResponse::GatewayTimeout().finish());
    }
    Ok(ok(json!({})))
}

/// `POST /wxa/sec/order/upload_combined_shipping_info`: each sub-order as an upload.
pub async fn upload_combined_shipping_info(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    count(&sandbox, "upload_combined_shipping_info");
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return Ok(*r),
    };
    let Some(subs) = body.get("sub_orders").and_then(Value::as_array) else {
        return Ok(wx(47_001, "data format error: sub_orders must be an array"));
    };
    let mut s = sandbox.shipping.state();
    for sub in subs {
        let mut one = sub.clone();
        one["upload_time"] = body.get("upload_time").cloned().unwrap_or(Value::Null);
        if let Err((code, msg)) = check_upload(&one) {
            return Ok(wx(code, msg));
        }
        let key = sub.get("order_key").cloned().unwrap_or(Value::Null);
        let Some(paid) = find_paid(&s, &key).filter(|p| p.appid == appid) else {
            return Ok(wx(10_060_001, "支付单不存在"));
        };
        if let Some(order) = s.orders.get_mut(&paid.transaction_id) {
            order.uploads.push(one);
            order.order_state = 2;
            order.shipped_at = Some(clock::unix_ms() / 1000);
        }
    }
    Ok(ok(json!({})))
}

fn order_json(o: &ShipOrder) -> Value {
    let last = o.uploads.last();
    json!({
        "transaction_id": o.transaction_id,
        "merchant_id": o.mchid,
        "merchant_trade_no": o.out_trade_no,
        "openid": o.openid,
        "paid_amount": o.amount_fen,
        "pay_time": o.paid_at,
        "order_state": o.order_state,
        "in_complaint": false,
        "shipping": last.map(|u| json!({
            "delivery_mode": u.get("delivery_mode"),
            "logistics_type": u.get("logistics_type"),
            "finish_shipping": true,
            "finish_shipping_count": o.uploads.len().saturating_sub(1),
            "shipping_list": u.get("shipping_list"),
        })),
    })
}

/// `POST /wxa/sec/order/get_order`.
pub async fn get_order(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return Ok(*r),
    };
    let s = sandbox.shipping.state();
    let found = find_paid(&s, &body)
        .filter(|p| p.appid == appid)
        .and_then(|p| s.orders.get(&p.transaction_id));
    Ok(match found {
        Some(o) => ok(json!({ "order": order_json(o) })),
        None => wx(10_060_001, "支付单不存在"),
    })
}

/// `POST /wxa/sec/order/get_order_list`.
pub async fn get_order_list(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return Ok(*r),
    };
    let state_filter = body.get("order_state").and_then(Value::as_u64);
    let openid = body.get("openid").and_then(Value::as_str);
    let s = sandbox.shipping.state();
    let mut list: Vec<&ShipOrder> = s
        .orders
        .values()
        .filter(|o| o.appid == appid)
        .filter(|o| state_filter.is_none_or(|st| u64::from(o.order_state) == st))
        .filter(|o| openid.is_none_or(|id| o.openid == id))
        .collect();
    list.sort_by_key(|o| o.paid_at);
    let list: Vec<Value> = list.into_iter().take(100).map(order_json).collect();
    Ok(ok(
        json!({ "order_list": list, "last_index": "", "has_more": false }),
    ))
}

/// `POST /wxa/sec/order/notify_confirm_receive`: reminds the user (recorded only).
pub async fn notify_confirm_receive(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    count(&sandbox, "notify_confirm_receive");
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return Ok(*r),
    };
    let s = sandbox.shipping.state();
    Ok(match find_paid(&s, &body).filter(|p| p.appid == appid) {
        Some(p)
            if s.orders
                .get(&p.transaction_id)
                .is_some_and(|o| o.order_state == 2) =>
        {
            ok(json!({}))
        }
        Some(_) => wx(10_060_004, "支付单处于不可发货的状态"),
        None => wx(10_060_001, "支付单不存在"),
    })
}

/// `POST /wxa/sec/order/set_msg_jump_path`.
pub async fn set_msg_jump_path(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    authorize(&sandbox, &req)?;
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return Ok(*r),
    };
    let Some(path) = body.get("path").and_then(Value::as_str) else {
        return Ok(wx(47_001, "data format error"));
    };
    sandbox.shipping.state().jump_path = Some(path.to_owned());
    Ok(ok(json!({})))
}

/// `POST /wxa/sec/order/is_trade_managed`: every sandbox app is under trade management.
pub async fn is_trade_managed(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
) -> Result<HttpResponse, WxError> {
    authorize(&sandbox, &req)?;
    Ok(ok(json!({ "is_trade_managed": true })))
}

/// `POST /cgi-bin/express/delivery/open_msg/get_delivery_list`.
pub async fn get_delivery_list(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
) -> Result<HttpResponse, WxError> {
    authorize(&sandbox, &req)?;
    let list: Vec<Value> = EXPRESS_COMPANIES
        .iter()
        .map(|(id, name)| json!({ "delivery_id": id, "delivery_name": name }))
        .collect();
    Ok(ok(json!({ "delivery_list": list, "count": list.len() })))
}

// ---- the push, with the sandbox's own implementation of WeChat's crypto ----

/// The 32-byte key of an EncodingAESKey (43 characters; the unused bits of the last one are
/// ignored, as WeChat's samples do).
fn aes_key(encoding_aes_key: &str) -> Option<[u8; 32]> {
    if encoding_aes_key.len() != 43 {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    engine
        .decode(format!("{encoding_aes_key}="))
        .ok()?
        .try_into()
        .ok()
}

fn sha1_sorted(parts: &[&str]) -> String {
    let mut parts = parts.to_vec();
    parts.sort_unstable();
    let mut h = Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// WeChat's safe-mode `Encrypt` of `msg` for `appid`.
pub fn encrypt_push(key: &[u8; 32], msg: &[u8], appid: &str) -> String {
    let mut frame: Vec<u8> = rand::random::<[u8; 16]>().to_vec();
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(msg);
    frame.extend_from_slice(appid.as_bytes());
    let pad = 32 - frame.len() % 32;
    frame.extend(std::iter::repeat_n(u8::try_from(pad).unwrap_or(32), pad));
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let out = cbc::Encryptor::<aes::Aes256>::new(key.into(), &iv.into())
        .encrypt_padded_vec_mut::<NoPadding>(&frame);
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn to_xml(message: &Value) -> String {
    let mut out = String::from("<xml>");
    if let Some(map) = message.as_object() {
        for (k, v) in map {
            match v {
                Value::String(s) => {
                    out.push_str(&format!(
                        "<{k}><![CDATA[{}]]></{k}>",
                        s.replace("]]>", "]]]]><![CDATA[>")
                    ));
                }
                other => out.push_str(&format!("<{k}>{other}</{k}>")),
            }
        }
    }
    out.push_str("</xml>");
    out
}

/// The URL (with query) and body of one push of `message` as configured.
pub fn build_push(
    config: &ShippingConfig,
    appid: &str,
    message: &Value,
    now: i64,
) -> Option<(String, String, &'static str)> {
    let url = config.push_url.as_deref()?;
    let timestamp = now.to_string();
    let nonce = format!("{}", rand::random::<u32>());
    let xml = config.push_format == "xml";
    let plain = if xml {
        to_xml(message)
    } else {
        message.to_string()
    };
    let content_type = if xml { "text/xml" } else { "application/json" };
    let signature = sha1_sorted(&[&config.push_token, &timestamp, &nonce]);
    let sep = if url.contains('?') { '&' } else { '?' };
    if config.push_mode == "safe" {
        let key = aes_key(&config.push_aes_key)?;
        let encrypt = encrypt_push(&key, plain.as_bytes(), appid);
        let msg_signature = sha1_sorted(&[&config.push_token, &timestamp, &nonce, &encrypt]);
        let to_user = message
            .get("ToUserName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let body = if xml {
            format!(
                "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
            )
        } else {
            json!({ "ToUserName": to_user, "Encrypt": encrypt }).to_string()
        };
        Some((
            format!(
                "{url}{sep}signature={signature}&timestamp={timestamp}&nonce={nonce}&encrypt_type=aes&msg_signature={msg_signature}"
            ),
            body,
            content_type,
        ))
    } else {
        Some((
            format!("{url}{sep}signature={signature}&timestamp={timestamp}&nonce={nonce}"),
            plain,
            content_type,
        ))
    }
}

/// Sends `message` to the configured push URL in the background: up to 4 tries (WeChat
/// retries 3 times), each waiting at most 5 s for "success".
pub fn push(sandbox: &web::Data<Sandbox>, appid: &str, transaction_id: &str, message: Value) {
    push_with(sandbox, appid, transaction_id, message, PushPlan::default());
}

/// How one push is sent, beyond WeChat's normal schedule (virtual payment's push faults).
#[derive(Default)]
pub struct PushPlan {
    /// Wait this long before the first try (a late push).
    pub delay_ms: u64,
    /// Called once when the receiver answered "success".
    pub on_success: Option<Box<dyn FnOnce() + Send>>,
}

/// [`push`] with a [`PushPlan`].
pub fn push_with(
    sandbox: &web::Data<Sandbox>,
    appid: &str,
    transaction_id: &str,
    message: Value,
    mut plan: PushPlan,
) {
    let config = sandbox.shipping.config.clone();
    let event = message
        .get("Event")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let sandbox = sandbox.clone();
    let appid = appid.to_owned();
    let transaction_id = transaction_id.to_owned();
    sandbox.runtime.clone().spawn(async move {
        let mut record = PushRecord {
            event,
            transaction_id,
            mode: config.push_mode.clone(),
            format: config.push_format.clone(),
            attempts: 0,
            outcome: "not configured".into(),
            at_ms: clock::unix_ms(),
        };
        if plan.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
        }
        for attempt in 0..4u32 {
            let Some((url, body, content_type)) = build_push(&config, &appid, &message, clock::unix_ms() / 1000) else {
                break;
            };
            record.attempts = attempt + 1;
            let sent = sandbox
                .http
                .post(&url)
                .header("content-type", content_type)
                .timeout(Duration::from_secs(5))
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let text = r.text().await.unwrap_or_default();
                    if text.trim() == "success" || text.is_empty() {
                        record.outcome = "success".into();
                        if let Some(done) = plan.on_success.take() {
                            done();
                        }
                        break;
                    }
                    record.outcome = format!("answered {:?}", text.chars().take(40).collect::<String>());
                }
                Ok(r) => record.outcome = format!("HTTP {}", r.status().as_u16()),
                Err(e) => record.outcome = format!("error: {e}"),
            }
            let wait = Duration::from_secs_f64(2.0 * sandbox.settings.notify_time_scale);
            tokio::time::sleep(wait).await;
        }
        tracing::info!(event = %record.event, outcome = %record.outcome, attempts = record.attempts, "sandbox: message push");
        keep(&sandbox, record);
    });
}

fn keep(sandbox: &Sandbox, record: PushRecord) {
    let mut s = sandbox.shipping.state();
    if s.pushes.len() >= 10_000 {
        s.pushes.remove(0);
    }
    s.pushes.push(record);
}

/// Records a push WeChat never sent (a `lost` fault): 0 attempts, `outcome` says why.
pub fn record_unsent(sandbox: &Sandbox, event: &str, transaction_id: &str, outcome: &str) {
    let config = &sandbox.shipping.config;
    keep(
        sandbox,
        PushRecord {
            event: event.to_owned(),
            transaction_id: transaction_id.to_owned(),
            mode: config.push_mode.clone(),
            format: config.push_format.clone(),
            attempts: 0,
            outcome: outcome.to_owned(),
            at_ms: clock::unix_ms(),
        },
    );
}

/// What happened when the user confirmed, or WeChat settled.
#[derive(Debug)]
pub enum Step {
    Confirmed,
    Settled,
}

/// The user confirms receipt (`Step::Confirmed`) or WeChat settles (`Step::Settled`) the
/// order `transaction_id`, and pushes `trade_manage_order_settlement`.
pub fn advance(
    sandbox: &web::Data<Sandbox>,
    transaction_id: &str,
    step: Step,
) -> Result<u8, String> {
    let now = clock::unix_ms() / 1000;
    let (appid, message) = {
        let mut s = sandbox.shipping.state();
        let order = s
            .orders
            .get_mut(transaction_id)
            .ok_or_else(|| format!("no payment {transaction_id}"))?;
        match step {
            Step::Confirmed => {
                if order.order_state != 2 {
                    return Err(format!(
                        "order is in state {}, not shipped (2)",
                        order.order_state
                    ));
                }
                order.order_state = 3;
                order.received_at = Some(now);
            }
            Step::Settled => {
                if !matches!(order.order_state, 2 | 3) {
                    return Err(format!(
                        "order is in state {}, not shipped or received",
                        order.order_state
                    ));
                }
                // Not confirmed by the user: WeChat confirms it itself when it settles.
                if order.received_at.is_none() {
                    order.received_at = Some(now);
                }
                order.order_state = 4;
                order.settled_at = Some(now);
            }
        }
        let mut message = json!({
            "ToUserName": "gh_sandbox000000",
            "FromUserName": order.openid,
            "CreateTime": now,
            "MsgType": "event",
            "Event": "trade_manage_order_settlement",
            "transaction_id": order.transaction_id,
            "merchant_id": order.mchid,
            "sub_merchant_id": "",
            "merchant_trade_no": order.out_trade_no,
            "pay_time": order.paid_at,
            "shipped_time": order.shipped_at.unwrap_or(now),
            "estimated_settlement_time": now + 86_400,
            "confirm_receive_time": order.received_at.unwrap_or(now),
        });
        if let Some(settled) = order.settled_at {
            message["settlement_time"] = json!(settled);
            // 1 automatic, 2 by the user (as documented; merchants report it the other way
            // round, see the module docs of wxmp's pay-service).
            message["confirm_receive_method"] = json!(2);
        }
        (order.appid.clone(), message)
    };
    let state = sandbox
        .shipping
        .state()
        .orders
        .get(transaction_id)
        .map_or(0, |o| o.order_state);
    push(sandbox, &appid, transaction_id, message);
    Ok(state)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/wxa/sec/order")
            .wrap(actix_web::middleware::from_fn(crate::faults::wechat_paths))
            .route(
                "/upload_shipping_info",
                web::post().to(upload_shipping_info),
            )
            .route(
                "/upload_combined_shipping_info",
                web::post().to(upload_combined_shipping_info),
            )
            .route("/get_order", web::post().to(get_order))
            .route("/get_order_list", web::post().to(get_order_list))
            .route(
                "/notify_confirm_receive",
                web::post().to(notify_confirm_receive),
            )
            .route("/set_msg_jump_path", web::post().to(set_msg_jump_path))
            .route("/is_trade_managed", web::post().to(is_trade_managed)),
    )
    .service(
        web::scope("/cgi-bin/express/delivery/open_msg")
            .wrap(actix_web::middleware::from_fn(crate::faults::wechat_paths))
            .route("/get_delivery_list", web::post().to(get_delivery_list)),
    );
}

#[derive(Deserialize)]
pub struct TransactionBody {
    pub transaction_id: String,
}

#[derive(Deserialize)]
pub struct FaultBody {
    /// e.g. 45009; null clears.
    #[serde(default)]
    pub errcode: Option<i64>,
    /// The next this many uploads are taken, their answers lost.
    #[serde(default)]
    pub answers_lost: u32,
}

/// Developer endpoints: `POST /sandbox/shipping/confirm {transaction_id}` (the user confirms
/// receipt), `POST /sandbox/shipping/settle {transaction_id}` (WeChat settles),
/// `GET /sandbox/shipping` (orders, pushes, calls), `POST /sandbox/shipping/fault {errcode,
/// answers_lost}` (every upload answers the errcode until cleared with null; the next
/// `answers_lost` uploads are taken and answered 504).
pub fn dev_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/shipping", web::get().to(list))
        .route("/shipping/confirm", web::post().to(dev_confirm))
        .route("/shipping/settle", web::post().to(dev_settle))
        .route("/shipping/fault", web::post().to(dev_fault));
}

async fn list(sandbox: web::Data<Sandbox>) -> HttpResponse {
    let s = sandbox.shipping.state();
    let orders: Vec<&ShipOrder> = s.orders.values().collect();
    HttpResponse::Ok().json(json!({
        "orders": orders,
        "pushes": s.pushes,
        "calls": s.calls,
        "jump_path": s.jump_path,
    }))
}

async fn dev_confirm(
    sandbox: web::Data<Sandbox>,
    body: web::Json<TransactionBody>,
) -> HttpResponse {
    dev_step(&sandbox, &body.transaction_id, Step::Confirmed)
}

async fn dev_settle(sandbox: web::Data<Sandbox>, body: web::Json<TransactionBody>) -> HttpResponse {
    dev_step(&sandbox, &body.transaction_id, Step::Settled)
}

fn dev_step(sandbox: &web::Data<Sandbox>, transaction_id: &str, step: Step) -> HttpResponse {
    match advance(sandbox, transaction_id, step) {
        Ok(state) => HttpResponse::Ok().json(json!({ "order_state": state })),
        Err(e) => HttpResponse::Conflict().json(json!({ "error": e })),
    }
}

async fn dev_fault(sandbox: web::Data<Sandbox>, body: web::Json<FaultBody>) -> HttpResponse {
    let mut s = sandbox.shipping.state();
    s.upload_fault = body.errcode;
    s.answers_lost = body.answers_lost;
    HttpResponse::Ok()
        .json(json!({ "upload_fault": body.errcode, "answers_lost": body.answers_lost }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_follow_wechat_rules() {
        let good = json!({
            "logistics_type": 1, "delivery_mode": 1,
            "shipping_list": [{"tracking_no": "1", "express_company": "ZTO", "item_desc": "mug"}],
            "upload_time": "2022-12-15T13:29:35.120+08:00",
        });
        assert_eq!(check_upload(&good), Ok(()));
        let mut b = good.clone();
        b["shipping_list"] = json!({});
        assert_eq!(check_upload(&b).unwrap_err().0, 47_001);
        let mut b = good.clone();
        b["upload_time"] = json!("2022-12-15 13:29:35");
        assert_eq!(check_upload(&b).unwrap_err().0, 10_060_014);
        let mut b = good.clone();
        b["shipping_list"][0]["express_company"] = json!("SF");
        assert_eq!(check_upload(&b).unwrap_err().0, 10_060_014);
        let mut b = good.clone();
        b["delivery_mode"] = json!(2);
        assert_eq!(check_upload(&b).unwrap_err().0, 10_060_007);
        b["is_all_delivered"] = json!(true);
        b["shipping_list"] = json!(vec![good["shipping_list"][0].clone(); 16]);
        assert_eq!(check_upload(&b).unwrap_err().0, 10_060_014);
        let mut b = good.clone();
        b["logistics_type"] = json!(2);
        b["delivery_mode"] = json!(2);
        b["is_all_delivered"] = json!(true);
        assert_eq!(check_upload(&b).unwrap_err().0, 10_060_006);
    }

    #[test]
    fn the_push_signature_covers_the_ciphertext() {
        let config = ShippingConfig {
            push_url: Some("http://x/p".into()),
            push_token: "tok123".into(),
            push_aes_key: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into(),
            ..ShippingConfig::default()
        };
        let (url, body, _) =
            build_push(&config, "wx1", &json!({"Event": "e"}), 1_700_000_000).unwrap();
        let body: Value = serde_json::from_str(&body).unwrap();
        let encrypt = body["Encrypt"].as_str().unwrap();
        let q: HashMap<String, String> = url
            .split_once('?')
            .unwrap()
            .1
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        assert_eq!(
            q["msg_signature"],
            sha1_sorted(&["tok123", "1700000000", &q["nonce"], encrypt])
        );
        // 16 + 4 + msg + appid, padded to 32: ciphertext length is a multiple of 32.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encrypt)
            .unwrap();
        assert_eq!(raw.len() % 32, 0);
    }
}
