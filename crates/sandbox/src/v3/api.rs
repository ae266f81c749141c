//! The `/v3` paths: authenticate the merchant, act like WeChat, answer signed JSON.
//! Error codes and statuses follow WeChat's tables (公共错误码: 400 PARAM_ERROR, 400
//! INVALID_REQUEST, 401 SIGN_ERROR, 500 SYSTEM_ERROR; 业务错误码 such as 400 ORDER_CLOSED,
//! 403 NOT_ENOUGH, 403 OUT_TRADE_NO_USED: <https://pay.weixin.qq.com/doc/v3/merchant/4012556398>,
//! <https://pay.weixin.qq.com/docs/partner/apis/partner-miniprogram-payment/close-order.html>).

use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::state::Sandbox;
use crate::v3::crypto::{self, parse_authorization, signed_lines};
use crate::v3::keys::{self, Use};
use crate::v3::{V3, V3Order};
use crate::v3::{certificates, refund};
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
            .route("/refund/domestic/refunds", web::post().to(refund::refund))
            .route(
                "/refund/domestic/refunds/{out_refund_no}",
                web::get().to(refund::refund_query),
            )
            .route(
                "/refund/domestic/refunds/{refund_id}/apply-abnormal-refund",
                web::post().to(refund::apply_abnormal_refund),
            )
            .route("/certificates", web::get().to(certificates::certificates))
            .route("/bill/tradebill", web::get().to(crate::bills::tradebill))
            .route("/billdownload/file", web::get().to(crate::bills::download)),
    );
}

/// The `Wechatpay-Serial` of the request being answered, if it sent one.
pub(super) fn request_serial() -> Option<String> {
    REQUEST_SERIAL.try_with(Clone::clone).ok().flatten()
}

pub(crate) fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8"))
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
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

pub(super) fn param_error(v3: &V3, message: &str) -> HttpResponse {
    error(v3, 400, "PARAM_ERROR", message)
}

pub(super) fn valid_out_no(s: &str) -> bool {
    (6..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
}

pub(super) fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
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
