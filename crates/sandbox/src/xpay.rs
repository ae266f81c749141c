//! WeChat's virtual payment (虚拟支付, xpay), as the sandbox plays it: the phone's
//! `wx.requestVirtualPayment` (`POST /sandbox/xpay/pay`), the `xpay_goods_deliver_notify` push
//! through the message-push channel of [`crate::shipping`], and the server APIs
//! `/xpay/query_order` and `/xpay/notify_provide_goods`.
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
    /// 1 created (the payment sheet is open, unpaid), 2 paid (to deliver), 3 delivered (the
    /// push was answered "success", or notify_provide_goods).
    pub status: i64,
    /// The merchant's attach of signData, echoed in the push.
    pub attach: String,
    /// The sandbox's note: the console failed this payment (the order stays unpaid).
    pub failed: bool,
}

/// The sandbox's virtual-payment state.
#[derive(Debug, Default)]
pub struct Xpay {
    orders: Mutex<HashMap<String, XOrder>>,
    /// Coin mode: balances, spends, presents.
    pub coins: coins::Coins,
    /// Bills handed out by `download_bill`.
    pub bills: bill::Bills,
}

impl Xpay {
    pub fn orders(&self) -> MutexGuard<'_, HashMap<String, XOrder>> {
        self.orders
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
/// delay before the first try). An answered "success" marks the order delivered (3).
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
                    o.status = 3;
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
        // The sandbox's answer for an unknown order (WeChat's code is not documented here).
        return Ok(wx(-1, "order not exist"));
    };
    Ok(HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
        json!({"errcode": 0, "errmsg": "ok", "order": {
            "order_id": id, "status": o.status, "biz_type": 0, "order_fee": o.price,
            "paid_fee": o.price, "openid": o.openid, "wx_order_id": o.wx_order_id,
            "wxpay_order_id": o.wx_order_id,
            "paid_time": o.paid_time, "env_type": o.env,
        }})
        .to_string(),
    ))
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
            o.status = 3;
            Ok(wx(0, "ok"))
        }
        None => Ok(wx(-1, "order not exist")),
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
            .route("/bill/download", web::get().to(bill::download)),
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
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(json!({ "orders": orders }).to_string())
}
