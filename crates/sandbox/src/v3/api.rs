//! The `/v3` paths: authenticate the merchant, act like WeChat, answer signed JSON.
//! Error codes and statuses follow WeChat's tables (公共错误码: 400 PARAM_ERROR, 400
//! INVALID_REQUEST, 401 SIGN_ERROR, 500 SYSTEM_ERROR; 业务错误码 such as 400 ORDER_CLOSED,
//! 403 NOT_ENOUGH, 403 OUT_TRADE_NO_USED: <https://pay.weixin.qq.com/doc/v3/merchant/4012556398>,
//! <https://pay.weixin.qq.com/docs/partner/apis/partner-miniprogram-payment/close-order.html>).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::state::Sandbox;
use crate::v3::crypto::{self, parse_authorization, signed_lines};
use crate::v3::keys::{self, Use};
use crate::v3::notify::{self, Job};
use crate::v3::{V3, V3Order, V3Refund};
use crate::{clock, faults, ids};

/// WeChat refuses requests whose timestamp is far from its clock (签名生成: "微信支付会拒绝处理
/// 很久之前发起的请求").
const REQUEST_MAX_SKEW_SECS: i64 = 300;

tokio::task_local! {
    /// The `Wechatpay-Serial` of the request being answered: in migration mode it picks the
    /// key that signs the answer.
    static REQUEST_SERIAL: Option<String>;
}

/// Runs the handler with its request's `Wechatpay-Serial` at hand for [`signed`].
async fn remember_request_serial(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let serial = req
        .headers()
        .get("Wechatpay-Serial")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    REQUEST_SERIAL.scope(serial, next.call(req)).await
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v3")
            .wrap(from_fn(faults::wechat_paths))
            .wrap(from_fn(remember_request_serial))
            .route("/pay/transactions/jsapi", web::post().to(jsapi))
            .route(
                "/pay/transactions/out-trade-no/{out_trade_no}",
                web::get().to(query),
            )
            .route(
                "/pay/transactions/out-trade-no/{out_trade_no}/close",
                web::post().to(close),
            )
            .route("/refund/domestic/refunds", web::post().to(refund))
            .route(
                "/refund/domestic/refunds/{out_refund_no}",
                web::get().to(refund_query),
            )
            .route(
                "/refund/domestic/refunds/{refund_id}/apply-abnormal-refund",
                web::post().to(apply_abnormal_refund),
            )
            .route("/certificates", web::get().to(certificates))
            .route("/bill/tradebill", web::get().to(crate::bills::tradebill))
            .route("/billdownload/file", web::get().to(crate::bills::download)),
    );
}

/// The four `Wechatpay-*` headers for an answer's `body`, with the v3 faults applied; also
/// names them. The key follows the request's `Wechatpay-Serial` (see [`Mode::Migration`]).
pub(crate) fn signature_headers(
    v3: &V3,
    body: &[u8],
) -> (Vec<(&'static str, String)>, Vec<String>) {
    let named_public_key = REQUEST_SERIAL
        .try_with(|serial| serial.as_deref() == Some(keys::dev::PUBLIC_KEY_ID))
        .unwrap_or(false);
    signature_headers_forged(v3, body, false, Use::Answer { named_public_key })
}

/// The headers for a message of `use_`, signed by a stranger's key when `bad_signature` (a
/// per-notify fault).
pub(crate) fn signature_headers_forged(
    v3: &V3,
    body: &[u8],
    bad_signature: bool,
    use_: Use,
) -> (Vec<(&'static str, String)>, Vec<String>) {
    let (faults, rotated) = {
        let s = v3.state();
        (s.faults.clone(), s.rotated)
    };
    let mut applied = Vec::new();
    let mut timestamp = clock::unix_secs();
    if faults.clock_skew_secs != 0 {
        timestamp += faults.clock_skew_secs;
        applied.push("clock_skew".to_owned());
    }
    let timestamp = timestamp.to_string();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let (mut serial, signer) = v3.signers.for_use(v3.mode, rotated, use_);
    {
        let by_public_key = serial == keys::dev::PUBLIC_KEY_ID;
        let key_use = &mut v3.state().key_use;
        if matches!(use_, Use::Answer { .. }) {
            key_use.answers += 1;
            key_use.answers_public_key += u64::from(by_public_key);
        } else {
            key_use.notifies += 1;
            key_use.notifies_public_key += u64::from(by_public_key);
        }
    }
    let message = signed_lines(&[timestamp.as_bytes(), nonce.as_bytes(), body]);
    let signature = if faults.bad_signature || bad_signature {
        applied.push("bad_signature".to_owned());
        v3.signers.stranger().sign(&message)
    } else {
        signer.sign(&message)
    };
    if faults.unknown_serial {
        applied.push("unknown_serial".to_owned());
        serial = "7E57000000000000000000000000000000UNKNOWN";
    }
    (
        vec![
            ("Wechatpay-Timestamp", timestamp),
            ("Wechatpay-Nonce", nonce),
            ("Wechatpay-Signature", signature),
            ("Wechatpay-Serial", serial.to_owned()),
        ],
        applied,
    )
}

pub(crate) fn signed(v3: &V3, status: StatusCode, body: String) -> HttpResponse {
    let (headers, _) = signature_headers(v3, body.as_bytes());
    let mut resp = HttpResponse::build(status);
    for (k, v) in headers {
        resp.insert_header((k, v));
    }
    resp.insert_header(("Request-ID", hex::encode(rand::random::<[u8; 16]>())));
    if body.is_empty() {
        resp.finish()
    } else {
        resp.content_type("application/json; charset=utf-8")
            .body(body)
    }
}

pub(crate) fn error(v3: &V3, status: u16, code: &str, message: &str) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    signed(
        v3,
        status,
        json!({ "code": code, "message": message }).to_string(),
    )
}

/// The merchant's request signature, checked as WeChat does; `Err` is the 4xx to send.
pub(crate) fn authenticate(
    sandbox: &Sandbox,
    req: &HttpRequest,
    body: &[u8],
) -> Result<String, Box<HttpResponse>> {
    let v3 = &sandbox.v3;
    let sign_error = |message: &str| Err(Box::new(error(v3, 401, "SIGN_ERROR", message)));
    let Some(auth) = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_authorization)
    else {
        return sign_error("Authorization 头不合法");
    };
    if sandbox.merchant(&auth.mchid).is_none() {
        return Err(Box::new(error(v3, 400, "MCH_NOT_EXISTS", "商户号不存在")));
    }
    if auth.serial_no != v3.merchant_serial {
        return sign_error("商户证书序列号有误");
    }
    let ts: i64 = auth.timestamp.parse().unwrap_or(0);
    if (ts - clock::unix_secs()).abs() > REQUEST_MAX_SKEW_SECS {
        return sign_error("时间戳与服务器时间相差过大");
    }
    let url = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), |pq| pq.as_str().to_owned());
    let message = signed_lines(&[
        req.method().as_str().as_bytes(),
        url.as_bytes(),
        auth.timestamp.as_bytes(),
        auth.nonce_str.as_bytes(),
        body,
    ]);
    if !crypto::verify(&v3.merchant_public_key, &message, &auth.signature) {
        return sign_error("签名错误");
    }
    if faults::of_request(req).pay_system_error {
        return Err(Box::new(error(v3, 500, "SYSTEM_ERROR", "系统错误")));
    }
    Ok(auth.mchid)
}

fn param_error(v3: &V3, message: &str) -> HttpResponse {
    error(v3, 400, "PARAM_ERROR", message)
}

fn valid_out_no(s: &str) -> bool {
    (6..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn transaction_json(o: &V3Order) -> Value {
    let mut tx = json!({
        "appid": o.appid, "mchid": o.mchid, "out_trade_no": o.out_trade_no,
        "trade_type": "JSAPI", "trade_state": o.trade_state,
        "trade_state_desc": trade_state_desc(&o.trade_state),
        "payer": { "openid": o.openid },
        "amount": { "total": o.total, "currency": "CNY", "payer_currency": "CNY" },
    });
    if let Some(id) = &o.transaction_id {
        tx["transaction_id"] = json!(id);
        tx["bank_type"] = json!("OTHERS");
        tx["amount"]["payer_total"] = json!(o.total);
    }
    if let Some(t) = &o.success_time {
        tx["success_time"] = json!(t);
    }
    if let Some(a) = &o.attach {
        tx["attach"] = json!(a);
    }
    tx
}

pub(crate) fn trade_state_desc(state: &str) -> &'static str {
    match state {
        "SUCCESS" => "支付成功",
        "REFUND" => "转入退款",
        "CLOSED" => "已关闭",
        "USERPAYING" => "用户支付中",
        "PAYERROR" => "支付失败",
        _ => "未支付",
    }
}

/// Transaction JSON of an order (the plaintext of its `TRANSACTION.SUCCESS` notify).
pub(crate) fn transaction_of(o: &V3Order) -> Value {
    transaction_json(o)
}

async fn jsapi(req: HttpRequest, sandbox: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let v3 = &sandbox.v3;
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return param_error(v3, "输入源“/body”映射到值失败");
    };
    let (Some(appid), Some(out_trade_no), Some(description), Some(notify_url)) = (
        str_field(&request, "appid"),
        str_field(&request, "out_trade_no"),
        str_field(&request, "description"),
        str_field(&request, "notify_url"),
    ) else {
        return param_error(v3, "appid, out_trade_no, description, notify_url 为必填");
    };
    if str_field(&request, "mchid") != Some(mchid.as_str()) {
        return param_error(v3, "mchid 与请求签名的商户号不一致");
    }
    if sandbox.app(appid).is_none() {
        return error(v3, 400, "APPID_MCHID_NOT_MATCH", "AppID和mch_id不匹配");
    }
    if !valid_out_no(out_trade_no) || description.len() > 127 {
        return param_error(v3, "out_trade_no 或 description 格式错误");
    }
    if !(notify_url.starts_with("https://") || notify_url.starts_with("http://")) {
        return param_error(v3, "notify_url 格式错误");
    }
    let total = request
        .pointer("/amount/total")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let currency = request
        .pointer("/amount/currency")
        .and_then(Value::as_str)
        .unwrap_or("CNY");
    if total <= 0 || currency != "CNY" {
        return param_error(v3, "amount.total 须为正整数, currency 须为 CNY");
    }
    let Some(openid) = request
        .pointer("/payer/openid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return param_error(v3, "payer.openid 为必填");
    };
    let mut state = v3.state();
    if let Some(existing) = state.orders.get_mut(out_trade_no) {
        existing.jsapi_calls += 1;
        let existing = existing.clone();
        // Never answer while holding the state lock: signing reads it too.
        drop(state);
        return match existing.trade_state.as_str() {
            "SUCCESS" | "REFUND" => error(v3, 403, "ORDERPAID", "该订单已支付"),
            "CLOSED" => error(v3, 400, "ORDER_CLOSED", "订单已关闭"),
            _ if existing.request == request => signed(
                v3,
                StatusCode::OK,
                json!({ "prepay_id": existing.prepay_id }).to_string(),
            ),
            _ => error(v3, 403, "OUT_TRADE_NO_USED", "商户订单号重复"),
        };
    }
    let prepay_id = ids::prepay_id();
    let order = V3Order {
        appid: appid.to_owned(),
        mchid,
        out_trade_no: out_trade_no.to_owned(),
        description: description.to_owned(),
        total,
        openid: openid.to_owned(),
        notify_url: notify_url.to_owned(),
        attach: str_field(&request, "attach").map(str::to_owned),
        time_expire: str_field(&request, "time_expire").map(str::to_owned),
        prepay_id: prepay_id.clone(),
        request: request.clone(),
        trade_state: "NOTPAY".into(),
        transaction_id: None,
        success_time: None,
        created_at_ms: clock::unix_ms(),
        notify_state: "none".into(),
        notify_attempts: 0,
        jsapi_calls: 1,
    };
    state
        .prepay_ids
        .insert(prepay_id.clone(), order.out_trade_no.clone());
    state.orders.insert(order.out_trade_no.clone(), order);
    drop(state);
    signed(
        v3,
        StatusCode::OK,
        json!({ "prepay_id": prepay_id }).to_string(),
    )
}

async fn query(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let v3 = &sandbox.v3;
    let query_mchid =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("mchid").cloned());
    if query_mchid.as_deref() != Some(mchid.as_str()) {
        return param_error(v3, "mchid 为必填且须与签名商户号一致");
    }
    let order = v3.state().orders.get(path.as_str()).cloned();
    match order {
        Some(o) => signed(v3, StatusCode::OK, transaction_json(&o).to_string()),
        None => error(v3, 404, "ORDER_NOT_EXIST", "订单不存在"),
    }
}

async fn close(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let v3 = &sandbox.v3;
    let body_mchid = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| str_field(&v, "mchid").map(str::to_owned));
    if body_mchid.as_deref() != Some(mchid.as_str()) {
        return param_error(v3, "mchid 为必填");
    }
    let mut state = v3.state();
    let Some(order) = state.orders.get_mut(path.as_str()) else {
        drop(state);
        return error(v3, 404, "ORDER_NOT_EXIST", "订单不存在");
    };
    match order.trade_state.as_str() {
        "SUCCESS" | "REFUND" => {
            drop(state);
            error(v3, 403, "ORDERPAID", "订单已支付")
        }
        _ => {
            order.trade_state = "CLOSED".into();
            drop(state);
            signed(v3, StatusCode::NO_CONTENT, String::new())
        }
    }
}

/// A refund as 申请退款 and 查询单笔退款 answer it (`GET /v3/refund/domestic/refunds/
/// {out_refund_no}`, e.g. <https://pay.wechatpay.cn/doc/v3/partner/4012760530>: `status`
/// SUCCESS, CLOSED, PROCESSING, ABNORMAL; `success_time` once SUCCESS; the money usually
/// arrives within minutes, so a refund is PROCESSING first).
fn refund_json(r: &V3Refund) -> Value {
    let mut out = json!({
        "refund_id": r.refund_id, "out_refund_no": r.out_refund_no,
        "transaction_id": r.transaction_id, "out_trade_no": r.out_trade_no,
        "channel": "ORIGINAL", "user_received_account": r.received_account(),
        "create_time": rfc3339_ms(r.created_at_ms),
        "status": r.status,
        "funds_account": "AVAILABLE",
        "amount": { "total": r.total, "refund": r.refund, "payer_total": r.total,
                    "payer_refund": r.refund, "settlement_total": r.total,
                    "settlement_refund": r.refund, "discount_refund": 0, "currency": "CNY" },
    });
    if let Some(t) = &r.success_time {
        out["success_time"] = json!(t);
    }
    out
}

/// The decrypted resource of a refund notify (退款结果通知,
/// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>): `mchid`, the four ids,
/// `refund_status` (not `status`), `success_time` once SUCCESS, `user_received_account`, and
/// `amount` {total, refund, payer_total, payer_refund}.
fn refund_notice(r: &V3Refund) -> Value {
    let mut out = json!({
        "mchid": r.mchid, "out_trade_no": r.out_trade_no, "transaction_id": r.transaction_id,
        "out_refund_no": r.out_refund_no, "refund_id": r.refund_id,
        "refund_status": r.status, "user_received_account": r.received_account(),
        "amount": { "total": r.total, "refund": r.refund, "payer_total": r.total,
                    "payer_refund": r.refund },
    });
    if let Some(t) = &r.success_time {
        out["success_time"] = json!(t);
    }
    out
}

pub(crate) fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8"))
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

async fn refund(req: HttpRequest, sandbox: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let faults = faults::of_request(&req);
    if faults.refund_refused {
        return error(&sandbox.v3, 401, "SIGN_ERROR", "签名错误");
    }
    let mut answer = create_refund(&sandbox, mchid, &body, &faults);
    if faults.refund_answer_lost && answer.status().is_success() {
        // Recorded (and settled later), but the merchant only hears SYSTEM_ERROR.
        answer = error(&sandbox.v3, 500, "SYSTEM_ERROR", "系统超时");
    }
    if faults.refund_reply_delay_ms > 0 {
        // Recorded, then the answer is lost (a crash, a timeout): the merchant must ask again
        // with the same out_refund_no.
        tokio::time::sleep(Duration::from_millis(faults.refund_reply_delay_ms)).await;
    }
    answer
}

/// 申请退款: validates, records (or finds) the refund and schedules its settlement.
fn create_refund(
    sandbox: &web::Data<Sandbox>,
    mchid: String,
    body: &[u8],
    faults: &crate::faults::Faults,
) -> HttpResponse {
    let v3 = &sandbox.v3;
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return param_error(v3, "输入源“/body”映射到值失败");
    };
    let (Some(out_trade_no), Some(out_refund_no)) = (
        str_field(&request, "out_trade_no"),
        str_field(&request, "out_refund_no"),
    ) else {
        return param_error(v3, "out_trade_no 与 out_refund_no 为必填");
    };
    if out_refund_no.len() > 64
        || !out_refund_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
    {
        return param_error(v3, "out_refund_no 格式错误");
    }
    if str_field(&request, "reason").is_some_and(|r| r.chars().count() > 80) {
        return param_error(v3, "reason 长度超过80");
    }
    let notify_url = str_field(&request, "notify_url");
    if notify_url.is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://"))) {
        return param_error(v3, "notify_url 格式错误");
    }
    let amount = |name: &str| {
        request
            .pointer(&format!("/amount/{name}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let (refund_fen, total) = (amount("refund"), amount("total"));
    if refund_fen <= 0 || total <= 0 {
        return param_error(v3, "amount.refund 与 amount.total 须为正整数(分)");
    }
    let mut state = v3.state();
    if let Some(existing) = state.refunds.get_mut(out_refund_no) {
        // The merchant's key: the same request answers the same refund.
        if existing.out_trade_no != out_trade_no
            || existing.refund != refund_fen
            || existing.total != total
        {
            drop(state);
            return error(v3, 400, "INVALID_REQUEST", "退款单号已用于其他退款");
        }
        existing.requests += 1;
        let answer = refund_json(existing);
        drop(state);
        return signed(v3, StatusCode::OK, answer.to_string());
    }
    let Some(order) = state.orders.get(out_trade_no).cloned() else {
        drop(state);
        return error(v3, 404, "RESOURCE_NOT_EXISTS", "订单不存在");
    };
    if order.mchid != mchid {
        drop(state);
        return error(v3, 404, "RESOURCE_NOT_EXISTS", "订单不存在");
    }
    if !matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND") {
        drop(state);
        return error(v3, 400, "INVALID_REQUEST", "订单未支付，不能发起退款");
    }
    if total != order.total {
        drop(state);
        return param_error(v3, "amount.total 须等于订单金额");
    }
    let held: i64 = state
        .refunds
        .values()
        .filter(|r| r.out_trade_no == out_trade_no && r.holds_money())
        .map(|r| r.refund)
        .sum();
    if held + refund_fen > order.total {
        drop(state);
        return error(v3, 400, "INVALID_REQUEST", "申请退款金额超过订单可退金额");
    }
    if faults.refund_not_enough || state.faults.refund_not_enough {
        drop(state);
        return error(v3, 403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起");
    }
    let record = V3Refund {
        refund_id: ids::refund_id(),
        out_refund_no: out_refund_no.to_owned(),
        out_trade_no: out_trade_no.to_owned(),
        transaction_id: order.transaction_id.clone().unwrap_or_default(),
        mchid,
        refund: refund_fen,
        total,
        reason: str_field(&request, "reason").map(str::to_owned),
        created_at_ms: clock::unix_ms(),
        notify_url: notify_url.map(str::to_owned),
        status: "PROCESSING".into(),
        success_time: None,
        requests: 1,
        notify_state: "none".into(),
        notify_attempts: 0,
        received_account: None,
        reroute: None,
        faults: faults.clone(),
    };
    let answer = refund_json(&record);
    state
        .refunds
        .insert(out_refund_no.to_owned(), record.clone());
    if let Some(o) = state.orders.get_mut(out_trade_no) {
        o.trade_state = "REFUND".into();
    }
    drop(state);
    let sandbox = Arc::clone(&sandbox.clone().into_inner());
    let runtime = sandbox.runtime.clone();
    runtime.spawn(async move {
        let shutdown = sandbox.shutdown.clone();
        tokio::select! {
            _ = settle(&sandbox, &record.out_refund_no) => {}
            _ = shutdown.wait() => {}
        }
    });
    signed(v3, StatusCode::OK, answer.to_string())
}

/// After `refund_after_ms` × the time scale: SUCCESS (ABNORMAL with `refund_change`, CLOSED
/// with `refund_close`), then the refund notify to its `notify_url` (none with
/// `drop_notify`, from the creating request or set now). With `refund_hold` the refund stays
/// PROCESSING until the console concludes it.
async fn settle(sandbox: &Arc<Sandbox>, out_refund_no: &str) {
    let v3 = &sandbox.v3;
    let delay = Duration::from_secs_f64(v3.refund_after_ms as f64 * v3.time_scale / 1000.0);
    tokio::time::sleep(delay).await;
    let status = {
        let state = v3.state();
        let Some(r) = state.refunds.get(out_refund_no) else {
            return;
        };
        if r.faults.refund_hold {
            tracing::info!(out_refund_no, "sandbox v3 refund held PROCESSING");
            return;
        }
        if r.faults.refund_change {
            V3RefundEnd::Abnormal
        } else if r.faults.refund_close {
            V3RefundEnd::Closed
        } else {
            V3RefundEnd::Success
        }
    };
    // Already concluded from the console meanwhile: nothing more to do.
    let _ = conclude_refund(sandbox, out_refund_no, status);
}

/// How a v3 refund ends (`status`, as [`refund_json`] cites): SUCCESS, ABNORMAL (the payer's
/// account cannot take it; the money is held by WeChat until re-routed, then SUCCESS) or
/// CLOSED. Each is followed by
/// its REFUND.* notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V3RefundEnd {
    Success,
    Abnormal,
    Closed,
}

impl V3RefundEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Abnormal => "ABNORMAL",
            Self::Closed => "CLOSED",
        }
    }

    fn event(self) -> (&'static str, &'static str) {
        match self {
            Self::Success => ("REFUND.SUCCESS", "退款成功"),
            Self::Abnormal => ("REFUND.ABNORMAL", "退款异常"),
            Self::Closed => ("REFUND.CLOSED", "退款关闭"),
        }
    }
}

/// WeChat finishes a PROCESSING v3 refund as `end` and sends its notify. One change under the
/// lock, so the settle timer and the console cannot both conclude it. `Ok(true)` when a notify
/// was sent (a notify_url, and no drop_notify fault).
pub fn conclude_refund(
    sandbox: &Arc<Sandbox>,
    out_refund_no: &str,
    end: V3RefundEnd,
) -> Result<bool, crate::refund::ConcludeError> {
    let drop_now = sandbox.current_faults().drop_notify;
    let notice = {
        let mut state = sandbox.v3.state();
        let Some(r) = state.refunds.get_mut(out_refund_no) else {
            return Err(crate::refund::ConcludeError::Unknown(
                out_refund_no.to_owned(),
            ));
        };
        // PROCESSING ends any way; ABNORMAL (money held) is later re-routed (SUCCESS) or
        // closed.
        let may = match r.status.as_str() {
            "PROCESSING" => true,
            "ABNORMAL" => end != V3RefundEnd::Abnormal,
            _ => false,
        };
        if !may {
            return Err(crate::refund::ConcludeError::NotProcessing(
                out_refund_no.to_owned(),
                r.status.clone(),
            ));
        }
        r.status = end.as_str().into();
        if end == V3RefundEnd::Success {
            r.success_time = Some(rfc3339_ms(clock::unix_ms()));
            // A re-routed abnormal refund lands where 发起异常退款 sent it.
            if let Some((_, account)) = &r.reroute {
                r.received_account = Some(account.clone());
            }
        }
        match &r.notify_url {
            None => None,
            Some(_) if r.faults.drop_notify || drop_now => {
                r.notify_state = "dropped".into();
                None
            }
            Some(url) => {
                r.notify_state = "pending".into();
                Some((url.clone(), r.clone()))
            }
        }
    };
    tracing::info!(
        out_refund_no,
        status = end.as_str(),
        "sandbox v3 refund settled"
    );
    let Some((url, r)) = notice else {
        return Ok(false);
    };
    let (event_type, summary) = end.event();
    notify::spawn(
        Arc::clone(sandbox),
        Job {
            key: r.out_trade_no.clone(),
            refund: Some(r.out_refund_no.clone()),
            url,
            event_type,
            summary,
            original_type: "refund",
            plaintext: refund_notice(&r),
            delay: Duration::ZERO,
            bad_signature: false,
        },
    );
    Ok(true)
}

async fn refund_query(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let v3 = &sandbox.v3;
    let found = v3
        .state()
        .refunds
        .get(path.as_str())
        .filter(|r| r.mchid == mchid)
        .map(refund_json);
    match found {
        Some(r) => signed(v3, StatusCode::OK, r.to_string()),
        None => error(v3, 404, "RESOURCE_NOT_EXISTS", "退款单不存在"),
    }
}

async fn certificates(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(resp) = authenticate(&sandbox, &req, &body) {
        return *resp;
    }
    let v3 = &sandbox.v3;
    let (rotated, delay_ms) = {
        let mut s = v3.state();
        let key_use = &mut s.key_use;
        key_use.certificate_requests += 1;
        key_use.certificate_requests_in_flight += 1;
        key_use.certificate_requests_max_in_flight = key_use
            .certificate_requests_max_in_flight
            .max(key_use.certificate_requests_in_flight);
        (s.rotated, s.faults.certificates_delay_ms)
    };
    // Counted out however the request ends (a client that gives up drops this handler).
    struct InFlight<'a>(&'a V3);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            let key_use = &mut self.0.state().key_use;
            key_use.certificate_requests_in_flight =
                key_use.certificate_requests_in_flight.saturating_sub(1);
        }
    }
    let _in_flight = InFlight(v3);
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    let data: Vec<Value> = if v3.mode.lists_certificates() {
        keys::listed_certificates(rotated)
            .into_iter()
            .enumerate()
            .map(|(i, (serial, pem))| {
                let nonce = crypto::resource_nonce();
                json!({
                    "serial_no": serial,
                    "effective_time": "2026-01-01T00:00:00+08:00",
                    "expire_time": if i == 0 { "2031-01-01T00:00:00+08:00" } else { "2036-01-01T00:00:00+08:00" },
                    "encrypt_certificate": {
                        "algorithm": "AEAD_AES_256_GCM",
                        "nonce": String::from_utf8_lossy(&nonce),
                        "associated_data": "certificate",
                        "ciphertext": crypto::seal(&v3.apiv3_key, &nonce, b"certificate", pem.as_bytes()),
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    signed(v3, StatusCode::OK, json!({ "data": data }).to_string())
}

/// A bank's name in `user_received_account` ("退回银行卡: {银行名称}{卡类型}{卡尾号}", 退款结果通知
/// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>), by 发起异常退款's `bank_type`.
fn bank_name(bank_type: &str) -> Option<&'static str> {
    Some(match bank_type {
        "CMB_DEBIT" => "招商银行",
        "COMM_DEBIT" => "交通银行",
        "ABC_DEBIT" => "农业银行",
        "CCB_DEBIT" => "建设银行",
        "ICBC_DEBIT" => "工商银行",
        "BOC_DEBIT" => "中国银行",
        "PAB_DEBIT" => "平安银行",
        "SPDB_DEBIT" => "浦发银行",
        "CITIC_DEBIT" => "中信银行",
        "CEB_DEBIT" => "光大银行",
        "CMBC_DEBIT" => "民生银行",
        "CIB_DEBIT" => "兴业银行",
        "GDB_DEBIT" => "广发银行",
        "PSBC_DEBIT" => "邮储银行",
        "NBCB_DEBIT" => "宁波银行",
        _ => return None,
    })
}

/// 发起异常退款 (`POST /v3/refund/domestic/refunds/{refund_id}/apply-abnormal-refund`,
/// <https://pay.weixin.qq.com/docs/merchant/apis/refund/refunds/create-abnormal-refund.html>):
/// for a refund whose status is ABNORMAL, `out_refund_no` and `type` USER_BANK_CARD (with
/// `bank_type` of one of the 15 banks' debit cards, and `bank_account` / `real_name` sealed for
/// the key the request's `Wechatpay-Serial` names) or MERCHANT_BANK_CARD. Answers the refund,
/// processed anew (PROCESSING); after `refund_after_ms` × the time scale it is SUCCESS with
/// `user_received_account` the payer's card ("{银行名称}借记卡{卡尾号}") or, re-routed to the
/// merchant, 商户结算银行账户 ("退还商户: 商户基本账户、商户结算银行账户", 退款结果通知
/// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>), and its REFUND.SUCCESS notify
/// follows.
async fn apply_abnormal_refund(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let v3 = &sandbox.v3;
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return param_error(v3, "输入源“/body”映射到值失败");
    };
    let (Some(out_refund_no), Some(kind)) = (
        str_field(&request, "out_refund_no"),
        str_field(&request, "type"),
    ) else {
        return param_error(v3, "out_refund_no 与 type 为必填");
    };
    let account = match kind {
        "MERCHANT_BANK_CARD" => "商户结算银行账户".to_owned(),
        "USER_BANK_CARD" => {
            let serial = REQUEST_SERIAL
                .try_with(Clone::clone)
                .ok()
                .flatten()
                .unwrap_or_default();
            let open = |name: &str| {
                str_field(&request, name).and_then(|v| crypto::open_sensitive(&serial, v))
            };
            let Some(bank) = str_field(&request, "bank_type").and_then(bank_name) else {
                return param_error(v3, "bank_type 不支持: 仅支持15家银行的借记卡");
            };
            let (Some(card), Some(_name)) = (open("bank_account"), open("real_name")) else {
                return param_error(
                    v3,
                    "bank_account 与 real_name 须用 Wechatpay-Serial 所指的微信支付公钥加密",
                );
            };
            if card.len() < 4 || !card.bytes().all(|b| b.is_ascii_digit()) {
                return param_error(v3, "bank_account 格式错误");
            }
            format!("{bank}借记卡{}", &card[card.len() - 4..])
        }
        _ => return param_error(v3, "type 须为 USER_BANK_CARD 或 MERCHANT_BANK_CARD"),
    };
    let answer = {
        let mut state = v3.state();
        let Some(r) = state
            .refunds
            .values_mut()
            .find(|r| r.refund_id == path.as_str() && r.mchid == mchid)
        else {
            drop(state);
            return error(v3, 404, "RESOURCE_NOT_EXISTS", "退款单不存在");
        };
        if r.out_refund_no != out_refund_no {
            drop(state);
            return param_error(v3, "out_refund_no 与 refund_id 不匹配");
        }
        if r.status != "ABNORMAL" {
            drop(state);
            return error(
                v3,
                400,
                "INVALID_REQUEST",
                "退款单状态不是退款异常，不能发起异常退款",
            );
        }
        r.status = "PROCESSING".into();
        r.reroute = Some((kind.to_owned(), account));
        refund_json(r)
    };
    let sandbox = Arc::clone(&sandbox.clone().into_inner());
    let no = out_refund_no.to_owned();
    let runtime = sandbox.runtime.clone();
    runtime.spawn(async move {
        let shutdown = sandbox.shutdown.clone();
        let delay = Duration::from_secs_f64(
            sandbox.v3.refund_after_ms as f64 * sandbox.v3.time_scale / 1000.0,
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                // Re-routed money settles (the faults of the first request made it abnormal;
                // they do not apply again).
                let _ = conclude_refund(&sandbox, &no, V3RefundEnd::Success);
            }
            _ = shutdown.wait() => {}
        }
    });
    signed(v3, StatusCode::OK, answer.to_string())
}
