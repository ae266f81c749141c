//! WeChat's virtual payment (虚拟支付, xpay), as the sandbox plays it: the phone's
//! `wx.requestVirtualPayment` (`POST /sandbox/xpay/pay`), the `xpay_goods_deliver_notify` push
//! through the message-push channel of [`crate::shipping`], and the server APIs
//! `/xpay/query_order`, `/xpay/notify_provide_goods` and `/xpay/refund_order` (with its
//! `xpay_refund_notify` push).
//!
//! Written from WeChat's documents, not from the code under test (no dependency on `wechat`):
//! * <https://developers.weixin.qq.com/miniprogram/dev/api/payment/wx.requestVirtualPayment.html>
//! * <https://developers.weixin.qq.com/miniprogram/dev/platform-capabilities/business-capabilities/virtual-payment.html>
//!   (WeChat's python example: `hmac.new(key=appkey.encode('utf-8'), msg=(method + '&' +
//!   sign_data).encode('utf-8'), digestmod=hashlib.sha256).hexdigest()`, also at
//!   <https://www.tencentcloud.com/document/product/1219/74865>)
//!
//! `paySig = hex(HMAC-SHA256(AppKey, "requestVirtualPayment&" + signData))`, refused with
//! -15005; the user-state `signature = hex(HMAC-SHA256(session_key, signData))`, keyed with the
//! session_key this sandbox issued to the user at jscode2session, refused with 268490003.
//! The server APIs: `pay_sig = hex(HMAC-SHA256(AppKey, uri + "&" + body))`, uri without query.
//!
//! Coin mode (代币) is in [`coins`], `download_bill` in [`bill`].

pub mod bill;
pub mod coins;

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use actix_web::{HttpRequest, HttpResponse, web};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    clock,
    dev_error::DevError,
    faults::Faults,
    shipping::PushPlan,
    state::Sandbox,
    token::authorize,
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

/// The dev app's OfferID.
pub const DEV_XPAY_OFFER_ID: &str = "1450000001";
/// The dev app's live AppKey (env 0).
pub const DEV_XPAY_APP_KEY: &str = "wxmp-dev-xpay-live-app-key-000001";
/// The dev app's sandbox AppKey (env 1).
pub const DEV_XPAY_SANDBOX_APP_KEY: &str = "wxmp-dev-xpay-sandbox-app-key-01";
/// -15005: paySig / pay_sig invalid.
pub const ERR_PAY_SIG: i64 = -15_005;
/// 268490003: the user-state signature is invalid.
pub const ERR_SIGNATURE: i64 = 268_490_003;

/// One virtual order as WeChat keeps it.
#[derive(Clone, Debug)]
pub struct XOrder {
    pub appid: String,
    pub openid: String,
    pub env: i64,
    pub product_id: String,
    pub price: i64,
    pub wx_order_id: String,
    pub paid_time: i64,
    /// query_order's status: 1 created (the payment sheet is open, unpaid), 2 paid (to
    /// deliver), 4 delivered (the push was answered "success", or notify_provide_goods), 5
    /// refunded. (3 is WeChat's "being delivered", which the sandbox skips.)
    pub status: i64,
    /// The merchant's attach of signData, echoed in the push.
    pub attach: String,
    /// The sandbox's note: the console failed this payment (the order stays unpaid).
    pub failed: bool,
}

/// One refund order (`refund_order`) as WeChat keeps it, by its `refund_order_id`.
#[derive(Clone, Debug)]
pub struct XRefund {
    pub appid: String,
    /// The payment order refunded (its out_trade_no).
    pub order_id: String,
    pub openid: String,
    pub env: i64,
    pub refund_fee: i64,
    pub wx_refund_id: String,
    pub biz_meta: String,
    pub at: i64,
    /// 5 refunded (the sandbox refunds at once).
    pub status: i64,
}

/// query_order's 4 (已发货): the merchant took the delivery push, or called notify_provide_goods.
pub const STATUS_DELIVERED: i64 = 4;

/// The sandbox's virtual-payment state.
#[derive(Debug, Default)]
pub struct Xpay {
    orders: Mutex<HashMap<String, XOrder>>,
    /// Coin mode: balances, spends, presents.
    pub coins: coins::Coins,
    /// Bills handed out by `download_bill`.
    pub bills: bill::Bills,
    refunds: Mutex<HashMap<String, XRefund>>,
}

impl Xpay {
    pub fn orders(&self) -> MutexGuard<'_, HashMap<String, XOrder>> {
        self.orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refund orders by refund_order_id (locked after [`Self::orders`] when both are held).
    pub fn refunds(&self) -> MutexGuard<'_, HashMap<String, XRefund>> {
        self.refunds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn hmac_hex(key: &str, msg: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The AppKey of `env` (0 live, 1 sandbox).
fn app_key(env: i64) -> Option<&'static str> {
    match env {
        0 => Some(DEV_XPAY_APP_KEY),
        1 => Some(DEV_XPAY_SANDBOX_APP_KEY),
        _ => None,
    }
}

fn wx(errcode: i64, errmsg: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(json!({ "errcode": errcode, "errmsg": errmsg }).to_string())
}

/// What the phone passes to `wx.requestVirtualPayment`, and whose phone it is.
#[derive(Deserialize)]
pub struct PayBody {
    appid: Option<String>,
    openid: String,
    mode: String,
    #[serde(rename = "signData")]
    sign_data: String,
    #[serde(rename = "paySig")]
    pay_sig: String,
    signature: String,
    /// The sandbox's own: the payment sheet stays open (status 1) until the console (or
    /// `/sandbox/xpay/orders/{no}/pay|fail`) pays or fails it.
    #[serde(default)]
    hold: bool,
}

/// `POST /sandbox/xpay/pay`: the user pays on the phone. Checks what
/// `wx.requestVirtualPayment` checks (mode, signData, paySig with the env's AppKey, the
/// user-state signature with the user's current session_key), records the order paid and
/// pushes `xpay_goods_deliver_notify`. Answers `{errcode, out_trade_no, wx_order_id}`.
/// The push faults (`xpay_push_*`) are the `x-sandbox-faults` header's, else the global set.
pub async fn pay(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Json<PayBody>,
) -> HttpResponse {
    let faults = match crate::faults::from_header(&req) {
        Ok(f) => f.unwrap_or_else(|| sandbox.current_faults()),
        Err(e) => return wx(-1, &e.to_string()),
    };
    let body = body.into_inner();
    let appid = body
        .appid
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| sandbox.default_app().appid.clone());
    if body.mode == "short_series_coin" {
        return coins::pay(&sandbox, &appid, &body);
    }
    if body.mode != "short_series_goods" {
        return wx(
            -1,
            "mode: short_series_goods (道具直购) or short_series_coin (代币)",
        );
    }
    let Ok(data) = serde_json::from_str::<Value>(&body.sign_data) else {
        return wx(-1, "signData is not JSON");
    };
    let field = |k: &str| data.get(k).cloned().unwrap_or(Value::Null);
    let env = field("env").as_i64().unwrap_or(-1);
    let Some(key) = app_key(env) else {
        return wx(-1, "signData.env must be 0 or 1");
    };
    if field("offerId").as_str() != Some(DEV_XPAY_OFFER_ID) {
        return wx(-1, "signData.offerId is not the app's OfferID");
    }
    let given = body.pay_sig.to_ascii_lowercase();
    if given != hmac_hex(key, &format!("requestVirtualPayment&{}", body.sign_data)) {
        return wx(ERR_PAY_SIG, "pay sig invalid");
    }
    let session_key = sandbox
        .state()
        .users
        .get(&(appid.clone(), body.openid.clone()))
        .and_then(|u| u.session_key.clone());
    let Some(session_key) = session_key else {
        return wx(ERR_SIGNATURE, "signature invalid: no session for this user");
    };
    if body.signature.to_ascii_lowercase() != hmac_hex(&session_key, &body.sign_data) {
        return wx(ERR_SIGNATURE, "signature invalid");
    }
    let (Some(out_trade_no), Some(product_id), Some(price), Some(1)) = (
        field("outTradeNo").as_str().map(str::to_owned),
        field("productId").as_str().map(str::to_owned),
        field("goodsPrice").as_i64().filter(|p| *p > 0),
        field("buyQuantity").as_i64(),
    ) else {
        return wx(
            -1,
            "signData needs outTradeNo, productId, goodsPrice > 0, buyQuantity 1",
        );
    };
    if field("currencyType").as_str() != Some("CNY") {
        return wx(-1, "signData.currencyType must be CNY");
    }
    let now = clock::unix_ms() / 1000;
    let order = {
        let mut orders = sandbox.xpay.orders();
        if orders.contains_key(&out_trade_no) {
            return wx(-1, "outTradeNo already used");
        }
        let order = XOrder {
            appid: appid.clone(),
            openid: body.openid.clone(),
            env,
            product_id,
            price,
            wx_order_id: format!("xpay{}", rand::random::<u64>()),
            paid_time: if body.hold { 0 } else { now },
            status: if body.hold { 1 } else { 2 },
            attach: field("attach").as_str().unwrap_or_default().to_owned(),
            failed: false,
        };
        orders.insert(out_trade_no.clone(), order.clone());
        order
    };
    if !body.hold {
        send_delivery(&sandbox, &out_trade_no, &order, &faults);
    }
    HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
        json!({"errcode": 0, "errmsg": "ok", "out_trade_no": out_trade_no,
            "wx_order_id": order.wx_order_id, "status": order.status})
        .to_string(),
    )
}

/// Pushes `xpay_goods_deliver_notify` for a paid order, as the push faults say: `lost` (never
/// sent, recorded so), `duplicated` (N copies at once, each retried on its own), `late` (a
/// delay before the first try). An answered "success" marks the order delivered (4).
fn send_delivery(
    sandbox: &web::Data<Sandbox>,
    out_trade_no: &str,
    order: &XOrder,
    faults: &Faults,
) {
    let now = order.paid_time;
    let (appid, env, price) = (order.appid.clone(), order.env, order.price);
    let to_user = sandbox
        .app(&appid)
        .map(|a| format!("gh_{}", a.appid))
        .unwrap_or_default();
    let message = json!({
        "ToUserName": to_user,
        "FromUserName": order.openid,
        "CreateTime": now,
        "MsgType": "event",
        "Event": "xpay_goods_deliver_notify",
        "OpenId": order.openid,
        "OutTradeNo": out_trade_no,
        "Env": env,
        "WeChatPayInfo": {"MchOrderNo": format!("mch{out_trade_no}"), "TransactionId": order.wx_order_id, "PaidTime": now},
        "GoodsInfo": {"ProductId": order.product_id, "Quantity": 1, "OrigPrice": price, "ActualPrice": price, "Attach": order.attach},
    });
    let copies = faults.xpay_push_copies();
    if copies == 0 {
        crate::shipping::record_unsent(
            sandbox,
            EVENT_DELIVER,
            &order.wx_order_id,
            "lost (fault xpay_push_lost): never sent",
        );
        return;
    }
    for _ in 0..copies {
        let (delivered_by, no) = (sandbox.clone(), out_trade_no.to_owned());
        let plan = PushPlan {
            delay_ms: faults.xpay_push_late_ms,
            on_success: Some(Box::new(move || {
                if let Some(o) = delivered_by.xpay.orders().get_mut(&no)
                    && o.status == 2
                {
                    o.status = STATUS_DELIVERED;
                }
            })),
        };
        crate::shipping::push_with(sandbox, &appid, &order.wx_order_id, message.clone(), plan);
    }
}

/// The push's event.
const EVENT_DELIVER: &str = "xpay_goods_deliver_notify";

/// The user pays a held order (status 1 → 2) and WeChat pushes the delivery (with the push
/// faults of `faults`). The order as it is now, or why not.
pub fn pay_pending(
    sandbox: &web::Data<Sandbox>,
    out_trade_no: &str,
    faults: &Faults,
) -> Result<XOrder, String> {
    let order = {
        let mut orders = sandbox.xpay.orders();
        let Some(o) = orders.get_mut(out_trade_no) else {
            return Err(format!("no virtual order {out_trade_no}"));
        };
        if o.status != 1 {
            return Err(format!(
                "virtual order {out_trade_no} is not pending (status {})",
                o.status
            ));
        }
        o.status = 2;
        o.failed = false;
        o.paid_time = clock::unix_ms() / 1000;
        o.clone()
    };
    send_delivery(sandbox, out_trade_no, &order, faults);
    Ok(order)
}

/// The payment of a held order fails (the user's card is refused, or the sheet is closed):
/// nothing is paid, no push; the order stays unpaid at WeChat (status 1).
pub fn fail_pending(sandbox: &Sandbox, out_trade_no: &str) -> Result<XOrder, String> {
    let mut orders = sandbox.xpay.orders();
    let Some(o) = orders.get_mut(out_trade_no) else {
        return Err(format!("no virtual order {out_trade_no}"));
    };
    if o.status != 1 {
        return Err(format!(
            "virtual order {out_trade_no} is not pending (status {})",
            o.status
        ));
    }
    o.failed = true;
    Ok(o.clone())
}

/// Checks `pay_sig` of a server API call over exactly the body received; the env (and so the
/// AppKey) is the body's.
fn check_pay_sig(req: &HttpRequest, uri: &str, body: &[u8]) -> Result<Value, Box<HttpResponse>> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|_| Box::new(wx(ERR_PAY_SIG, "pay_sig missing")))?;
    let text = std::str::from_utf8(body).map_err(|_| Box::new(wx(47001, "data format error")))?;
    let json: Value = serde_json::from_str(text)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| Box::new(wx(47001, "data format error")))?;
    let key = app_key(json.get("env").and_then(Value::as_i64).unwrap_or(0))
        .ok_or_else(|| Box::new(wx(-1, "env must be 0 or 1")))?;
    let given = query.get("pay_sig").map(|s| s.to_ascii_lowercase());
    if given.as_deref() != Some(hmac_hex(key, &format!("{uri}&{text}")).as_str()) {
        return Err(Box::new(wx(ERR_PAY_SIG, "pay sig invalid")));
    }
    Ok(json)
}

/// `POST /xpay/query_order?access_token=&pay_sig=` with `{openid, env, order_id}`.
pub async fn query_order(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let json = match check_pay_sig(&req, "/xpay/query_order", &body) {
        Ok(j) => j,
        Err(r) => return Ok(*r),
    };
    let id = json.get("order_id").and_then(Value::as_str).unwrap_or("");
    let found = sandbox.xpay.orders().get(id).cloned();
    let Some(o) = found.filter(|o| o.appid == appid) else {
        // A refund order (order_type 1), asked about by its refund_order_id: "启动后需要调用
        // query_order接口来查询退款单状态" (refund_order's document).
        let refund = sandbox.xpay.refunds().get(id).cloned();
        if let Some(r) = refund.filter(|r| r.appid == appid) {
            return Ok(HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
                json!({"errcode": 0, "errmsg": "ok", "order": {
                    "order_id": id, "status": r.status, "biz_type": 0, "order_type": 1,
                    "refund_fee": r.refund_fee, "openid": r.openid,
                    "wx_order_id": r.wx_refund_id, "paid_time": r.at, "env_type": r.env,
                    "biz_meta": r.biz_meta,
                }})
                .to_string(),
            ));
        }
        return Ok(wx(ERR_NO_DATA, "数据不存在"));
    };
    let left_fee = o.price - refunded_fen(&sandbox.xpay.refunds(), id);
    Ok(HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
        json!({"errcode": 0, "errmsg": "ok", "order": {
            "order_id": id, "status": o.status, "biz_type": 0, "order_type": 0,
            "order_fee": o.price, "paid_fee": o.price, "left_fee": left_fee,
            "openid": o.openid, "wx_order_id": o.wx_order_id,
            "wxpay_order_id": o.wx_order_id,
            "paid_time": o.paid_time, "env_type": o.env,
        }})
        .to_string(),
    ))
}

/// Fen refunded from payment order `order_id` (refunds are done at once here).
fn refunded_fen(refunds: &HashMap<String, XRefund>, order_id: &str) -> i64 {
    refunds
        .values()
        .filter(|r| r.order_id == order_id && r.status == 5)
        .map(|r| r.refund_fee)
        .sum()
}

/// The xpay server APIs' error codes, as the API pages' 错误码 tables list them: 268490001 a
/// wrong openid, 268490002 a bad field or no such data ("数据不存在" for an unknown order).
pub const ERR_OPENID: i64 = 268_490_001;
pub const ERR_NO_DATA: i64 = 268_490_002;
/// 268490016: left_fee is not what is left ("退款left_fee与实际不符,请通过query_order接口查询确认",
/// <https://developers.weixin.qq.com/community/develop/doc/000eccdd1e02783df515ffbc16b800>).
pub const ERR_LEFT_FEE: i64 = 268_490_016;
/// A field out of its documented range (268490002, "请求参数字段错误").
pub const ERR_FORMAT: i64 = ERR_NO_DATA;

/// `POST /xpay/refund_order?access_token=&pay_sig=` with `{openid, order_id | wx_order_id,
/// refund_order_id, left_fee, refund_fee, biz_meta, refund_reason, req_from, env}`, as the
/// document "启动订单退款任务" describes it
/// (<https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_refund_order.md>):
/// `refund_order_id` 8 to 32 of `[0-9A-Za-z_-]`, `refund_fee` in `(0, left_fee]`, `left_fee`
/// what is left of the order (else 268490016), `biz_meta` at most 1024 bytes, `refund_reason`
/// "0".."5", `req_from` "1".."3". Only a paid or delivered order of the payer refunds; the same
/// refund_order_id again answers the same refund (another request with it: 268490002). The
/// refund is done at once and its result pushed as `xpay_refund_notify` (with the push
/// channel's retries); `query_order` by the refund_order_id answers it.
pub async fn refund_order(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let json = match check_pay_sig(&req, "/xpay/refund_order", &body) {
        Ok(j) => j,
        Err(r) => return Ok(*r),
    };
    let text = |k: &str| json.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let int = |k: &str| json.get(k).and_then(Value::as_i64);
    let (openid, refund_id, biz_meta) = (text("openid"), text("refund_order_id"), text("biz_meta"));
    let env = int("env").unwrap_or(0);
    let (Some(left_fee), Some(refund_fee)) = (int("left_fee"), int("refund_fee")) else {
        return Ok(wx(ERR_FORMAT, "left_fee and refund_fee are required"));
    };
    if !(8..=32).contains(&refund_id.len())
        || !refund_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Ok(wx(
            ERR_FORMAT,
            "refund_order_id must be 8 to 32 of [0-9A-Za-z_-]",
        ));
    }
    if biz_meta.len() > 1024
        || !matches!(
            text("refund_reason").as_str(),
            "0" | "1" | "2" | "3" | "4" | "5"
        )
        || !matches!(text("req_from").as_str(), "1" | "2" | "3")
    {
        return Ok(wx(
            ERR_FORMAT,
            "biz_meta, refund_reason or req_from out of range",
        ));
    }
    let orders = sandbox.xpay.orders();
    let by_wx = text("wx_order_id");
    let order_id = match text("order_id") {
        id if !id.is_empty() => id,
        _ => orders
            .iter()
            .find(|(_, o)| !by_wx.is_empty() && o.wx_order_id == by_wx)
            .map(|(id, _)| id.clone())
            .unwrap_or_default(),
    };
    let Some(order) = orders.get(&order_id).filter(|o| o.appid == appid).cloned() else {
        return Ok(wx(ERR_NO_DATA, "数据不存在"));
    };
    let mut refunds = sandbox.xpay.refunds();
    let answer = |r: &XRefund| {
        HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
            json!({"errcode": 0, "errmsg": "ok", "refund_order_id": refund_id,
                "refund_wx_order_id": r.wx_refund_id, "pay_order_id": r.order_id,
                "pay_wx_order_id": order.wx_order_id})
            .to_string(),
        )
    };
    if let Some(r) = refunds.get(&refund_id) {
        return Ok(
            if r.appid == appid && r.order_id == order_id && r.refund_fee == refund_fee {
                answer(r)
            } else {
                wx(
                    ERR_NO_DATA,
                    "refund_order_id already used for another refund",
                )
            },
        );
    }
    if order.openid != openid {
        return Ok(wx(ERR_OPENID, "openid is not the order's payer"));
    }
    if order.env != env {
        return Ok(wx(ERR_NO_DATA, "env is not the order's"));
    }
    if !matches!(order.status, 2..=5) {
        return Ok(wx(ERR_NO_DATA, "order is not paid"));
    }
    let left = order.price - refunded_fen(&refunds, &order_id);
    if left_fee != left {
        return Ok(wx(
            ERR_LEFT_FEE,
            "退款left_fee与实际不符,请通过query_order接口查询确认",
        ));
    }
    if refund_fee <= 0 || refund_fee > left {
        return Ok(wx(ERR_FORMAT, "refund_fee must be in (0, left_fee]"));
    }
    let now = clock::unix_ms() / 1000;
    let refund = XRefund {
        appid: appid.clone(),
        order_id: order_id.clone(),
        openid: openid.clone(),
        env,
        refund_fee,
        wx_refund_id: format!("xpayrefund{}", rand::random::<u64>()),
        biz_meta,
        at: now,
        status: 5,
    };
    refunds.insert(refund_id.clone(), refund.clone());
    let fully = refund_fee == left;
    drop(refunds);
    drop(orders);
    if fully && let Some(o) = sandbox.xpay.orders().get_mut(&order_id) {
        o.status = 5;
    }
    let to_user = sandbox
        .app(&appid)
        .map(|a| format!("gh_{}", a.appid))
        .unwrap_or_default();
    let message = json!({
        "ToUserName": to_user, "FromUserName": openid, "CreateTime": now,
        "MsgType": "event", "Event": "xpay_refund_notify", "OpenId": openid,
        "WxRefundId": refund.wx_refund_id, "MchRefundId": refund_id,
        "WxOrderId": order.wx_order_id, "MchOrderId": order_id,
        "RefundFee": refund_fee, "RetCode": 0, "RetMsg": "ok",
        "RefundStartTimestamp": now, "RefundSuccTimestamp": now,
        "WxpayRefundTransactionId": format!("5030{}", rand::random::<u32>()), "RetryTimes": 0,
    });
    crate::shipping::push(&sandbox, &appid, &refund.wx_refund_id, message);
    Ok(answer(&refund))
}

/// `POST /xpay/notify_provide_goods?access_token=&pay_sig=` with `{order_id, env}`.
pub async fn notify_provide_goods(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let json = match check_pay_sig(&req, "/xpay/notify_provide_goods", &body) {
        Ok(j) => j,
        Err(r) => return Ok(*r),
    };
    let id = json.get("order_id").and_then(Value::as_str).unwrap_or("");
    let mut orders = sandbox.xpay.orders();
    match orders.get_mut(id).filter(|o| o.appid == appid) {
        Some(o) => {
            o.status = STATUS_DELIVERED;
            Ok(wx(0, "ok"))
        }
        None => Ok(wx(ERR_NO_DATA, "数据不存在")),
    }
}

/// The WeChat paths.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/xpay")
            .route("/query_order", web::post().to(query_order))
            .route(
                "/notify_provide_goods",
                web::post().to(notify_provide_goods),
            )
            .route(
                "/query_user_balance",
                web::post().to(coins::query_user_balance),
            )
            .route("/currency_pay", web::post().to(coins::currency_pay))
            .route(
                "/cancel_currency_pay",
                web::post().to(coins::cancel_currency_pay),
            )
            .route("/present_currency", web::post().to(coins::present_currency))
            .route("/download_bill", web::post().to(bill::download_bill))
            .route("/bill/download", web::get().to(bill::download))
            .route("/refund_order", web::post().to(refund_order)),
    );
}

/// The sandbox's own paths (under `/sandbox`).
pub fn dev_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/xpay/pay", web::post().to(pay))
        .route("/xpay/orders", web::get().to(list))
        .route("/xpay/orders/{no}/pay", web::post().to(dev_pay_pending))
        .route("/xpay/orders/{no}/fail", web::post().to(dev_fail_pending))
        .route("/xpay/coins", web::get().to(coins::show));
}

/// `POST /sandbox/xpay/orders/{no}/pay`: [`pay_pending`] (faults from the header, else the
/// global set).
async fn dev_pay_pending(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    no: web::Path<String>,
) -> Result<HttpResponse, DevError> {
    let faults = crate::faults::from_header(&req)?.unwrap_or_else(|| sandbox.current_faults());
    let order = pay_pending(&sandbox, &no, &faults).map_err(DevError::Conflict)?;
    Ok(HttpResponse::Ok().json(view(&no, &order)))
}

/// `POST /sandbox/xpay/orders/{no}/fail`: [`fail_pending`].
async fn dev_fail_pending(
    sandbox: web::Data<Sandbox>,
    no: web::Path<String>,
) -> Result<HttpResponse, DevError> {
    let order = fail_pending(&sandbox, &no).map_err(DevError::Conflict)?;
    Ok(HttpResponse::Ok().json(view(&no, &order)))
}

fn view(no: &str, o: &XOrder) -> Value {
    json!({"out_trade_no": no, "openid": o.openid, "env": o.env,
        "product_id": o.product_id, "price": o.price, "status": o.status,
        "failed": o.failed, "wx_order_id": o.wx_order_id})
}

async fn list(sandbox: web::Data<Sandbox>) -> HttpResponse {
    let orders: Vec<Value> = sandbox
        .xpay
        .orders()
        .iter()
        .map(|(no, o)| view(no, o))
        .collect();
    let refunds: Vec<Value> = sandbox
        .xpay
        .refunds()
        .iter()
        .map(|(no, r)| {
            json!({"refund_order_id": no, "order_id": r.order_id, "refund_fee": r.refund_fee,
            "status": r.status, "wx_refund_id": r.wx_refund_id})
        })
        .collect();
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(json!({ "orders": orders, "refunds": refunds }).to_string())
}
