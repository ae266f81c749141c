//! Coin mode (代币) as the sandbox plays it: each user's coins per (appid, env, openid); a
//! coin purchase on the phone (`wx.requestVirtualPayment` with mode `short_series_coin`,
//! through `POST /sandbox/xpay/pay`), which credits the coins and pushes
//! `xpay_coin_pay_notify`; and the server APIs `query_user_balance`, `currency_pay`,
//! `cancel_currency_pay` (user state: `pay_sig` and `signature`) and `present_currency`
//! (`pay_sig` only). Written from WeChat's documents, not from the code under test:
//! * <https://developers.weixin.qq.com/miniprogram/dev/api/payment/wx.requestVirtualPayment.html>
//!   (coin mode's signData: offerId, buyQuantity = coins, env, currencyType, platform,
//!   outTradeNo, attach; no productId / goodsPrice)
//! * <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_currency_pay.html>
//!   and its siblings `api_query_user_balance`, `api_cancel_currency_pay`,
//!   `api_present_currency`: the user-state `signature = hex(HMAC-SHA256(session_key,
//!   post_body))` in the query next to `pay_sig`; the errcodes 268490003 (signature),
//!   268490004 (done before under this order_id), 268490005 (spend already cancelled),
//!   268490006 (not enough coins), 268490009 (no session_key for the user: log in again).
//!
//! The dev app sells coins at [`DEV_XPAY_COIN_PRICE_FEN`] fen each (the ratio WeChat's console
//! sets). A spend uses presented coins first.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{ERR_PAY_SIG, ERR_SIGNATURE, PayBody, XOrder, app_key, check_pay_sig, hmac_hex, wx};
use crate::{
    clock,
    state::Sandbox,
    token::authorize,
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

/// The price of one coin of the dev app, in fen (1 CNY = 10 coins).
pub const DEV_XPAY_COIN_PRICE_FEN: i64 = 10;
/// 268490001: openid error (no such user).
pub const ERR_OPENID: i64 = 268_490_001;
/// 268490002: a request field is wrong.
pub const ERR_PARAM: i64 = 268_490_002;
/// 268490004: done before under this order_id (the earlier call succeeded).
pub const ERR_DUPLICATE: i64 = 268_490_004;
/// 268490005: the spend was already cancelled.
pub const ERR_ALREADY_CANCELLED: i64 = 268_490_005;
/// 268490006: not enough coins.
pub const ERR_INSUFFICIENT: i64 = 268_490_006;
/// 268490009: no session_key for the user.
pub const ERR_SESSION: i64 = 268_490_009;

/// (appid, env, openid).
type AccountKey = (String, i64, String);
/// (appid, env, order_id).
type OrderKey = (String, i64, String);

/// One user's coins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Bought coins left.
    pub paid: i64,
    /// Presented coins left.
    pub present: i64,
    pub sum_save: i64,
    pub sum_present: i64,
    pub sum_cost: i64,
}

impl Account {
    pub fn balance(&self) -> i64 {
        self.paid + self.present
    }
}

/// A spend made by `currency_pay`.
#[derive(Clone, Debug)]
struct Spend {
    openid: String,
    amount: i64,
    used_present: i64,
    /// The cancel that undid it (its order_id), if any.
    cancelled_by: Option<String>,
}

#[derive(Debug, Default)]
pub struct CoinState {
    accounts: HashMap<AccountKey, Account>,
    spends: HashMap<OrderKey, Spend>,
    /// cancel order_id → the spend it undid.
    cancels: HashMap<OrderKey, String>,
    presents: HashMap<OrderKey, String>,
}

impl CoinState {
    /// The coins of a user (zero when never bought).
    pub fn account(&self, appid: &str, env: i64, openid: &str) -> Account {
        self.accounts
            .get(&(appid.to_owned(), env, openid.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn account_mut(&mut self, appid: &str, env: i64, openid: &str) -> &mut Account {
        self.accounts
            .entry((appid.to_owned(), env, openid.to_owned()))
            .or_default()
    }
}

/// The sandbox's coins.
#[derive(Debug, Default)]
pub struct Coins {
    state: Mutex<CoinState>,
}

impl Coins {
    pub fn state(&self) -> MutexGuard<'_, CoinState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn ok(body: Value) -> HttpResponse {
    let mut body = body;
    body["errcode"] = json!(0);
    body["errmsg"] = json!("ok");
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(body.to_string())
}

/// The phone's coin purchase (`mode` `short_series_coin`), called by [`super::pay`]: the same
/// checks as a goods purchase (offerId, paySig with the env's AppKey, the user-state signature
/// with the user's current session_key), then the coins credited and `xpay_coin_pay_notify`
/// pushed. Answers `{errcode, out_trade_no, wx_order_id, balance}`.
pub(super) fn pay(sandbox: &web::Data<Sandbox>, appid: &str, body: &PayBody) -> HttpResponse {
    let Ok(data) = serde_json::from_str::<Value>(&body.sign_data) else {
        return wx(-1, "signData is not JSON");
    };
    let field = |k: &str| data.get(k).cloned().unwrap_or(Value::Null);
    let env = field("env").as_i64().unwrap_or(-1);
    let Some(key) = app_key(env) else {
        return wx(-1, "signData.env must be 0 or 1");
    };
    if field("offerId").as_str() != Some(super::DEV_XPAY_OFFER_ID) {
        return wx(-1, "signData.offerId is not the app's OfferID");
    }
    if body.pay_sig.to_ascii_lowercase()
        != hmac_hex(key, &format!("requestVirtualPayment&{}", body.sign_data))
    {
        return wx(ERR_PAY_SIG, "pay sig invalid");
    }
    let session_key = sandbox
        .state()
        .users
        .get(&(appid.to_owned(), body.openid.clone()))
        .and_then(|u| u.session_key.clone());
    let Some(session_key) = session_key else {
        return wx(ERR_SIGNATURE, "signature invalid: no session for this user");
    };
    if body.signature.to_ascii_lowercase() != hmac_hex(&session_key, &body.sign_data) {
        return wx(ERR_SIGNATURE, "signature invalid");
    }
    let (Some(out_trade_no), Some(coins)) = (
        field("outTradeNo").as_str().map(str::to_owned),
        field("buyQuantity")
            .as_i64()
            .filter(|q| (1..=1_000_000).contains(q)),
    ) else {
        return wx(
            -1,
            "signData needs outTradeNo and buyQuantity (coins) in 1..=1000000",
        );
    };
    if field("currencyType").as_str() != Some("CNY") {
        return wx(-1, "signData.currencyType must be CNY");
    }
    let price = coins * DEV_XPAY_COIN_PRICE_FEN;
    let now = clock::unix_ms() / 1000;
    let order = {
        let mut orders = sandbox.xpay.orders();
        if orders.contains_key(&out_trade_no) {
            return wx(-1, "outTradeNo already used");
        }
        let order = XOrder {
            appid: appid.to_owned(),
            openid: body.openid.clone(),
            env,
            product_id: String::new(),
            price,
            wx_order_id: format!("xpay{}", rand::random::<u64>()),
            paid_time: now,
            status: 2,
            attach: field("attach").as_str().unwrap_or_default().to_owned(),
            failed: false,
        };
        orders.insert(out_trade_no.clone(), order.clone());
        order
    };
    let balance = {
        let mut coins_state = sandbox.xpay.coins.state();
        let account = coins_state.account_mut(appid, env, &body.openid);
        account.paid += coins;
        account.sum_save += coins;
        account.balance()
    };
    let to_user = sandbox
        .app(appid)
        .map(|a| format!("gh_{}", a.appid))
        .unwrap_or_default();
    let message = json!({
        "ToUserName": to_user,
        "FromUserName": order.openid,
        "CreateTime": now,
        "MsgType": "event",
        "Event": "xpay_coin_pay_notify",
        "OpenId": order.openid,
        "OutTradeNo": out_trade_no,
        "Env": env,
        "WeChatPayInfo": {"MchOrderNo": format!("mch{out_trade_no}"), "TransactionId": order.wx_order_id, "PaidTime": now},
        "CoinInfo": {"Quantity": coins, "OrigPrice": price, "ActualPrice": price, "Attach": field("attach")},
    });
    crate::shipping::push(sandbox, appid, &order.wx_order_id, message);
    ok(json!({"out_trade_no": out_trade_no, "wx_order_id": order.wx_order_id, "balance": balance}))
}

/// A user-state call checked: `pay_sig` over the body with the env's AppKey, then
/// `signature` over the same body with the user's current session_key. Answers the body,
/// its env and openid.
fn check_user_state(
    sandbox: &Sandbox,
    appid: &str,
    req: &HttpRequest,
    uri: &str,
    body: &[u8],
) -> Result<(Value, i64, String), Box<HttpResponse>> {
    let json = check_pay_sig(req, uri, body)?;
    let env = json.get("env").and_then(Value::as_i64).unwrap_or(0);
    let openid = json
        .get("openid")
        .and_then(Value::as_str)
        .filter(|o| !o.is_empty())
        .ok_or_else(|| Box::new(wx(ERR_OPENID, "openid missing")))?
        .to_owned();
    let session_key = {
        let state = sandbox.state();
        let Some(user) = state.users.get(&(appid.to_owned(), openid.clone())) else {
            return Err(Box::new(wx(ERR_OPENID, "openid error")));
        };
        user.session_key.clone()
    };
    let Some(session_key) = session_key else {
        return Err(Box::new(wx(
            ERR_SESSION,
            "session_key not exist or expired, login again",
        )));
    };
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|_| Box::new(wx(ERR_SIGNATURE, "signature missing")))?;
    // The body as received: `check_pay_sig` refused anything that is not UTF-8 JSON.
    let text = String::from_utf8_lossy(body);
    let given = query.get("signature").map(|s| s.to_ascii_lowercase());
    if given.as_deref() != Some(hmac_hex(&session_key, &text).as_str()) {
        return Err(Box::new(wx(ERR_SIGNATURE, "signature invalid")));
    }
    Ok((json, env, openid))
}

fn str_field<'a>(json: &'a Value, k: &str) -> &'a str {
    json.get(k).and_then(Value::as_str).unwrap_or("")
}

/// A positive coin amount, or None.
fn amount(json: &Value) -> Option<i64> {
    json.get("amount")
        .and_then(Value::as_i64)
        .filter(|a| (1..=100_000_000).contains(a))
}

/// `POST /xpay/query_user_balance?access_token=&pay_sig=&signature=` with
/// `{openid, env, user_ip}`.
pub async fn query_user_balance(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let (_, env, openid) =
        match check_user_state(&sandbox, &appid, &req, "/xpay/query_user_balance", &body) {
            Ok(v) => v,
            Err(r) => return Ok(*r),
        };
    let a = sandbox.xpay.coins.state().account(&appid, env, &openid);
    Ok(ok(json!({
        "balance": a.balance(), "present_balance": a.present, "sum_save": a.sum_save,
        "sum_present": a.sum_present, "sum_balance": a.sum_save + a.sum_present,
        "sum_cost": a.sum_cost, "first_save_flag": a.sum_save == 0,
    })))
}

/// `POST /xpay/currency_pay?access_token=&pay_sig=&signature=` with
/// `{openid, env, user_ip, amount, order_id, payitem, remark}`: spends coins once per
/// order_id (a repeat answers 268490004 and spends nothing).
pub async fn currency_pay(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let (json, env, openid) =
        match check_user_state(&sandbox, &appid, &req, "/xpay/currency_pay", &body) {
            Ok(v) => v,
            Err(r) => return Ok(*r),
        };
    let order_id = str_field(&json, "order_id").to_owned();
    let Some(amount) = amount(&json) else {
        return Ok(wx(ERR_PARAM, "amount must be a positive number of coins"));
    };
    if order_id.is_empty() {
        return Ok(wx(ERR_PARAM, "order_id missing"));
    }
    let mut state = sandbox.xpay.coins.state();
    let key = (appid.clone(), env, order_id.clone());
    if state.spends.contains_key(&key) {
        return Ok(wx(ERR_DUPLICATE, "duplicate operation"));
    }
    let account = state.account_mut(&appid, env, &openid);
    if account.balance() < amount {
        return Ok(wx(ERR_INSUFFICIENT, "balance not enough"));
    }
    let used_present = account.present.min(amount);
    account.present -= used_present;
    account.paid -= amount - used_present;
    account.sum_cost += amount;
    let balance = account.balance();
    state.spends.insert(
        key,
        Spend {
            openid,
            amount,
            used_present,
            cancelled_by: None,
        },
    );
    Ok(ok(
        json!({"order_id": order_id, "balance": balance, "used_present_amount": used_present}),
    ))
}

/// `POST /xpay/cancel_currency_pay?access_token=&pay_sig=&signature=` with
/// `{openid, env, user_ip, pay_order_id, order_id, amount}`: gives back up to the coins of
/// the spend, once (a repeat of the same cancel answers 268490004, another cancel of the same
/// spend 268490005).
pub async fn cancel_currency_pay(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let (json, env, openid) =
        match check_user_state(&sandbox, &appid, &req, "/xpay/cancel_currency_pay", &body) {
            Ok(v) => v,
            Err(r) => return Ok(*r),
        };
    let pay_order_id = str_field(&json, "pay_order_id").to_owned();
    let order_id = str_field(&json, "order_id").to_owned();
    let Some(amount) = amount(&json) else {
        return Ok(wx(ERR_PARAM, "amount must be a positive number of coins"));
    };
    if order_id.is_empty() || pay_order_id.is_empty() {
        return Ok(wx(ERR_PARAM, "order_id and pay_order_id are required"));
    }
    let mut state = sandbox.xpay.coins.state();
    let cancel_key = (appid.clone(), env, order_id.clone());
    if state.cancels.contains_key(&cancel_key) {
        return Ok(wx(ERR_DUPLICATE, "duplicate operation"));
    }
    let spend_key = (appid.clone(), env, pay_order_id.clone());
    let Some(spend) = state
        .spends
        .get(&spend_key)
        .filter(|s| s.openid == openid)
        .cloned()
    else {
        return Ok(wx(ERR_PARAM, "pay_order_id: no such spend for this user"));
    };
    if spend.cancelled_by.is_some() {
        return Ok(wx(ERR_ALREADY_CANCELLED, "order already cancelled"));
    }
    if amount > spend.amount {
        return Ok(wx(ERR_INSUFFICIENT, "amount is more than the spend"));
    }
    // Presented coins come back as presented ones, up to what the spend used of them.
    let back_present = spend.used_present.min(amount);
    let account = state.account_mut(&appid, env, &openid);
    account.present += back_present;
    account.paid += amount - back_present;
    account.sum_cost -= amount;
    if let Some(s) = state.spends.get_mut(&spend_key) {
        s.cancelled_by = Some(order_id.clone());
    }
    state.cancels.insert(cancel_key, pay_order_id);
    Ok(ok(json!({ "order_id": order_id })))
}

/// `POST /xpay/present_currency?access_token=&pay_sig=` with `{openid, env, order_id, amount}`.
pub async fn present_currency(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let json = match check_pay_sig(&req, "/xpay/present_currency", &body) {
        Ok(j) => j,
        Err(r) => return Ok(*r),
    };
    let env = json.get("env").and_then(Value::as_i64).unwrap_or(0);
    let openid = str_field(&json, "openid").to_owned();
    let order_id = str_field(&json, "order_id").to_owned();
    let Some(amount) = amount(&json) else {
        return Ok(wx(ERR_PARAM, "amount must be a positive number of coins"));
    };
    if order_id.is_empty() {
        return Ok(wx(ERR_PARAM, "order_id missing"));
    }
    if !sandbox
        .state()
        .users
        .contains_key(&(appid.clone(), openid.clone()))
    {
        return Ok(wx(ERR_OPENID, "openid error"));
    }
    let mut state = sandbox.xpay.coins.state();
    let key = (appid.clone(), env, order_id.clone());
    if state.presents.contains_key(&key) {
        return Ok(wx(ERR_DUPLICATE, "duplicate operation"));
    }
    let account = state.account_mut(&appid, env, &openid);
    account.present += amount;
    account.sum_present += amount;
    let (balance, present) = (account.balance(), account.sum_present);
    state.presents.insert(key, openid);
    Ok(ok(
        json!({"order_id": order_id, "balance": balance, "present_balance": present}),
    ))
}

/// `GET /sandbox/xpay/coins?appid=&env=&openid=`: a user's coins (the console and tests).
pub async fn show(
    sandbox: web::Data<Sandbox>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let appid = q
        .get("appid")
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| sandbox.default_app().appid.clone());
    let env = q.get("env").and_then(|e| e.parse().ok()).unwrap_or(0);
    let openid = q.get("openid").cloned().unwrap_or_default();
    let a = sandbox.xpay.coins.state().account(&appid, env, &openid);
    HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
        json!({"appid": appid, "env": env, "openid": openid, "balance": a.balance(),
            "present_balance": a.present, "sum_save": a.sum_save, "sum_cost": a.sum_cost})
        .to_string(),
    )
}
