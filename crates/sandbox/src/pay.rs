//! WeChat Pay v2: `POST /pay/unifiedorder`, `/pay/orderquery`, `/pay/closeorder` (XML in/out).
//!
//! Two failure levels, as documented: `return_code=FAIL` + `return_msg` (unsigned) when the
//! request cannot be read or authenticated (bad XML, unknown merchant, wrong signature:
//! "签名失败"); `result_code=FAIL` + `err_code`/`err_code_des` (signed) for business errors.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use actix_web::{HttpRequest, HttpResponse, web};

use crate::{
    clock, faults, ids,
    order::{NotifyState, Order, PREPAY_LIFETIME, TradeState},
    state::{Merchant, Sandbox},
    wx::{self, Pairs, SignType},
};

/// What api.mch.weixin.qq.com answers with.
const XML_CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// Documented err_code values the sandbox produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrCode {
    ParamError,
    LackParams,
    InvalidRequest,
    OrderPaid,
    OrderClosed,
    OrderNotExist,
    SystemError,
    NotEnough,
    RefundNotExist,
    Error,
}

impl ErrCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ParamError => "PARAM_ERROR",
            Self::LackParams => "LACK_PARAMS",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::OrderPaid => "ORDERPAID",
            Self::OrderClosed => "ORDERCLOSED",
            Self::OrderNotExist => "ORDERNOTEXIST",
            Self::SystemError => "SYSTEMERROR",
            Self::NotEnough => "NOTENOUGH",
            Self::RefundNotExist => "REFUNDNOTEXIST",
            Self::Error => "ERROR",
        }
    }
}

/// Why a pay call fails.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// `return_code=FAIL`: not readable or not authenticated; the answer is not signed.
    #[error("{0}")]
    Return(String),
    /// `result_code=FAIL`: a signed answer with err_code / err_code_des.
    #[error("{}: {des}", code.as_str())]
    Business { code: ErrCode, des: String },
}

pub(crate) fn business(code: ErrCode, des: impl Into<String>) -> PayError {
    PayError::Business {
        code,
        des: des.into(),
    }
}

/// A request whose merchant and signature checked out.
pub(crate) struct Authed {
    pub(crate) fields: BTreeMap<String, String>,
    pub(crate) merchant: Merchant,
    pub(crate) appid: String,
    pub(crate) sign_type: SignType,
}

impl Authed {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn require(&self, name: &str) -> Result<&str, PayError> {
        self.get(name)
            .ok_or_else(|| business(ErrCode::LackParams, format!("缺少参数{name}")))
    }
}

/// Reads the XML, finds the merchant, checks the appid binding and the signature.
pub(crate) fn authenticate(sandbox: &Sandbox, body: &[u8]) -> Result<Authed, PayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PayError::Return("post数据为空".into()));
    }
    let pairs = wx::parse_xml(body).map_err(|_| PayError::Return("XML格式错误".into()))?;
    let fields: BTreeMap<String, String> = pairs.iter().cloned().collect();
    let get = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    for name in ["appid", "mch_id", "nonce_str", "sign"] {
        if get(name).is_none() {
            return Err(PayError::Return(format!("缺少参数{name}")));
        }
    }
    if get("nonce_str").is_some_and(|n| n.len() > 32) {
        return Err(PayError::Return("nonce_str参数长度有误".into()));
    }
    let sign_type = match get("sign_type") {
        None => SignType::Md5,
        Some(s) => wx::parse_sign_type(s)
            .ok_or_else(|| PayError::Return("sign_type参数格式错误".into()))?,
    };
    let appid = get("appid").unwrap_or_default().to_owned();
    let mch_id = get("mch_id").unwrap_or_default();
    let merchant = sandbox
        .merchant(mch_id)
        .ok_or_else(|| PayError::Return("商户号mch_id或sub_mch_id不存在".into()))?
        .clone();
    if !merchant.appids.contains(&appid) {
        return Err(PayError::Return("商户号mch_id与appid不匹配".into()));
    }
    let signature = get("sign").unwrap_or_default();
    if !wx::verify(&pairs, merchant.key.expose(), sign_type, signature) {
        return Err(PayError::Return("签名失败".into()));
    }
    Ok(Authed {
        fields,
        merchant,
        appid,
        sign_type,
    })
}

pub(crate) fn xml_response(xml: String) -> HttpResponse {
    HttpResponse::Ok().content_type(XML_CONTENT_TYPE).body(xml)
}

/// `return_code=FAIL` with the reason; never signed.
pub(crate) fn refused(reason: &str) -> HttpResponse {
    tracing::debug!(return_msg = reason, "pay call refused");
    xml_response(wx::to_xml(&pairs([
        ("return_code", "FAIL"),
        ("return_msg", reason),
    ])))
}

/// A signed answer: `result_code=SUCCESS` with `extra`, or `FAIL` with err_code/err_code_des.
fn signed(authed: &Authed, result: Result<Pairs, (ErrCode, String)>) -> HttpResponse {
    let mut out = pairs([
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", &authed.appid),
        ("mch_id", &authed.merchant.mch_id),
        ("nonce_str", &wx::nonce_str()),
    ]);
    match result {
        Ok(extra) => {
            out.push(("result_code".into(), "SUCCESS".into()));
            out.extend(extra);
        }
        Err((code, des)) => {
            tracing::debug!(err_code = code.as_str(), %des, "pay call failed");
            out.extend(pairs([
                ("result_code", "FAIL"),
                ("err_code", code.as_str()),
                ("err_code_des", &des),
            ]));
        }
    }
    let sign = wx::sign(&out, authed.merchant.key.expose(), authed.sign_type);
    // Documented position: right after nonce_str.
    out.insert(5, ("sign".into(), sign));
    xml_response(wx::to_xml(&out))
}

pub fn pairs<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Pairs {
    items
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Authenticates, applies the SYSTEMERROR fault, runs `f`, answers.
pub(crate) fn handle(
    req: &HttpRequest,
    sandbox: &Sandbox,
    body: &[u8],
    f: impl FnOnce(&Sandbox, &Authed) -> Result<Pairs, PayError>,
) -> HttpResponse {
    let authed = match authenticate(sandbox, body) {
        Ok(a) => a,
        Err(e) => return refused(&e.to_string()),
    };
    let result = if faults::of_request(req).pay_system_error {
        Err(business(ErrCode::SystemError, "系统错误"))
    } else {
        f(sandbox, &authed)
    };
    match result {
        Ok(extra) => signed(&authed, Ok(extra)),
        Err(PayError::Return(reason)) => refused(&reason),
        Err(PayError::Business { code, des }) => signed(&authed, Err((code, des))),
    }
}

/// `POST /pay/unifiedorder`.
pub async fn unifiedorder(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    handle(&req, &sandbox, &body, place_order)
}

/// `POST /pay/orderquery`.
pub async fn orderquery(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    handle(&req, &sandbox, &body, query_order)
}

/// `POST /pay/closeorder`.
pub async fn closeorder(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    handle(&req, &sandbox, &body, close_order)
}

/// Any other method on a pay path.
pub async fn require_post() -> HttpResponse {
    xml_response(wx::to_xml(&pairs([
        ("return_code", "FAIL"),
        ("return_msg", "请使用post方法"),
    ])))
}

fn param_error(des: impl Into<String>) -> PayError {
    business(ErrCode::ParamError, des)
}

fn valid_out_trade_no(s: &str) -> bool {
    s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
}

fn valid_notify_url(s: &str) -> bool {
    // WeChat wants a reachable URL without query parameters.
    s.len() <= 256
        && (s.starts_with("http://") || s.starts_with("https://"))
        && !s.contains('?')
        && s.len() > "https://".len()
}

fn place_order(sandbox: &Sandbox, a: &Authed) -> Result<Pairs, PayError> {
    let body = a.require("body")?;
    let out_trade_no = a.require("out_trade_no")?;
    let total_fee = a.require("total_fee")?;
    let ip = a.require("spbill_create_ip")?;
    let notify_url = a.require("notify_url")?;
    let trade_type = a.require("trade_type")?;
    if trade_type != "JSAPI" {
        return Err(param_error(format!(
            "trade_type参数格式错误: 沙箱只支持JSAPI, 收到{trade_type}"
        )));
    }
    let openid = a
        .get("openid")
        .ok_or_else(|| param_error("JSAPI支付必须传openid"))?;
    let total_fee: u64 = total_fee
        .parse()
        .ok()
        .filter(|f| *f > 0 && total_fee.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| param_error("total_fee参数格式错误: 必须为正整数(分)"))?;
    if a.get("fee_type").is_some_and(|f| f != "CNY") {
        return Err(param_error("fee_type参数格式错误: 只支持CNY"));
    }
    if !valid_out_trade_no(out_trade_no) {
        return Err(param_error(
            "out_trade_no参数格式错误: 32个字符内, 只能是数字、大小写字母_-|*",
        ));
    }
    if body.len() > 127 {
        return Err(param_error("body参数长度有误"));
    }
    if a.get("attach").is_some_and(|x| x.len() > 127) {
        return Err(param_error("attach参数长度有误"));
    }
    if ip.len() > 64 || ip.parse::<IpAddr>().is_err() {
        return Err(param_error("spbill_create_ip参数格式错误"));
    }
    if !valid_notify_url(notify_url) {
        return Err(param_error(
            "notify_url参数格式错误: 必须是不带参数的http(s)地址",
        ));
    }
    let time_expire = match a.get("time_expire") {
        None => None,
        Some(t) => Some(
            clock::parse_wx_time(t)
                .ok_or_else(|| param_error("time_expire参数格式错误: yyyyMMddHHmmss"))?,
        ),
    };

    let params: Pairs = a
        .fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "nonce_str" | "sign" | "sign_type"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let key = (a.merchant.mch_id.clone(), out_trade_no.to_owned());
    let mut state = sandbox.state();
    // An openid of another app is refused; an openid the sandbox never saw is accepted, so
    // services can be tested without a login first.
    let foreign = state
        .openid_apps
        .get(openid)
        .is_some_and(|apps| !apps.contains(&a.appid));
    if foreign {
        return Err(param_error("appid和openid不匹配"));
    }
    let now = Instant::now();
    let prepay_id = if let Some(order) = state.orders.get_mut(&key) {
        order.unifiedorder_calls += 1;
        match order.trade_state {
            TradeState::Success => return Err(business(ErrCode::OrderPaid, "该订单已支付")),
            TradeState::Closed => return Err(business(ErrCode::OrderClosed, "该订单已关闭")),
            _ => {}
        }
        if order.params != params {
            return Err(business(ErrCode::InvalidRequest, "201 商户订单号重复"));
        }
        order.sign_type = a.sign_type;
        if now.duration_since(order.prepay_issued) < PREPAY_LIFETIME {
            order.prepay_id.clone()
        } else {
            let old = std::mem::replace(&mut order.prepay_id, ids::prepay_id());
            order.prepay_issued = now;
            let new = order.prepay_id.clone();
            state.prepay_ids.remove(&old);
            state.prepay_ids.insert(new.clone(), key);
            new
        }
    } else {
        // Documented minimum: an order must stay payable for more than 5 minutes.
        if time_expire.is_some_and(|t| t < clock::now() + chrono::Duration::minutes(5)) {
            return Err(param_error("time_expire时间过短，刷卡至少1分钟，其他5分钟"));
        }
        let prepay_id = ids::prepay_id();
        let order = Order {
            appid: a.appid.clone(),
            mch_id: a.merchant.mch_id.clone(),
            out_trade_no: out_trade_no.to_owned(),
            body: body.to_owned(),
            attach: a.get("attach").map(str::to_owned),
            total_fee,
            openid: openid.to_owned(),
            notify_url: notify_url.to_owned(),
            trade_type: trade_type.to_owned(),
            time_expire,
            sign_type: a.sign_type,
            params,
            prepay_id: prepay_id.clone(),
            prepay_issued: now,
            trade_state: TradeState::NotPay,
            transaction_id: None,
            time_end: None,
            created_at_ms: clock::unix_ms(),
            notify_state: NotifyState::None,
            notify_attempts: 0,
            notify_faults: None,
            unifiedorder_calls: 1,
        };
        state.prepay_ids.insert(prepay_id.clone(), key.clone());
        state.orders.insert(key, order);
        prepay_id
    };
    drop(state);
    tracing::debug!(out_trade_no, prepay_id, "unifiedorder ok");
    Ok(pairs([("trade_type", "JSAPI"), ("prepay_id", &prepay_id)]))
}

/// The order `a` names by transaction_id or out_trade_no, within its merchant and app.
pub(crate) fn find_order(sandbox: &Sandbox, a: &Authed) -> Result<Order, PayError> {
    let transaction_id = a.get("transaction_id");
    let out_trade_no = a.get("out_trade_no");
    if transaction_id.is_none() && out_trade_no.is_none() {
        return Err(business(
            ErrCode::LackParams,
            "缺少参数transaction_id或out_trade_no",
        ));
    }
    let state = sandbox.state();
    let order = match transaction_id {
        Some(tid) => state
            .orders
            .values()
            .find(|o| o.mch_id == a.merchant.mch_id && o.transaction_id.as_deref() == Some(tid)),
        None => state.orders.get(&(
            a.merchant.mch_id.clone(),
            out_trade_no.unwrap_or_default().to_owned(),
        )),
    };
    order
        .filter(|o| o.appid == a.appid)
        .cloned()
        .ok_or_else(|| business(ErrCode::OrderNotExist, "order not exist"))
}

fn query_order(sandbox: &Sandbox, a: &Authed) -> Result<Pairs, PayError> {
    let o = find_order(sandbox, a)?;
    let total_fee = o.total_fee.to_string();
    let mut out = Pairs::new();
    if o.trade_state == TradeState::Success {
        out.extend(pairs([
            ("openid", o.openid.as_str()),
            ("is_subscribe", "N"),
            ("trade_type", &o.trade_type),
            ("bank_type", "OTHERS"),
            ("total_fee", &total_fee),
            ("fee_type", "CNY"),
            ("cash_fee", &total_fee),
            (
                "transaction_id",
                o.transaction_id.as_deref().unwrap_or_default(),
            ),
        ]));
    } else {
        out.push(("total_fee".into(), total_fee.clone()));
    }
    out.push(("out_trade_no".into(), o.out_trade_no.clone()));
    if let Some(attach) = &o.attach {
        out.push(("attach".into(), attach.clone()));
    }
    if let (TradeState::Success, Some(time_end)) = (o.trade_state, &o.time_end) {
        out.push(("time_end".into(), time_end.clone()));
    }
    // A paid order with a refund answers REFUND ("转入退款"), as WeChat's orderquery does.
    let (trade_state, desc) = if o.trade_state == TradeState::Success
        && crate::refund::has_refunds(sandbox, &o.mch_id, &o.out_trade_no)
    {
        ("REFUND", "转入退款")
    } else {
        (o.trade_state.as_str(), o.trade_state.desc())
    };
    out.extend(pairs([
        ("trade_state", trade_state),
        ("trade_state_desc", desc),
    ]));
    Ok(out)
}

fn close_order(sandbox: &Sandbox, a: &Authed) -> Result<Pairs, PayError> {
    let out_trade_no = a.require("out_trade_no")?;
    let key = (a.merchant.mch_id.clone(), out_trade_no.to_owned());
    let mut state = sandbox.state();
    let order = state
        .orders
        .get_mut(&key)
        .filter(|o| o.appid == a.appid)
        .ok_or_else(|| business(ErrCode::OrderNotExist, "order not exist"))?;
    match order.trade_state {
        TradeState::Success => Err(business(ErrCode::OrderPaid, "订单已支付，不能发起关单")),
        TradeState::Closed => Err(business(ErrCode::OrderClosed, "订单已关闭，无法重复关闭")),
        _ => {
            order.trade_state = TradeState::Closed;
            Ok(pairs([("result_msg", "OK")]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_rules() {
        assert!(valid_out_trade_no("A-1_b|c*9"));
        assert!(!valid_out_trade_no("a b"));
        assert!(!valid_out_trade_no(&"x".repeat(33)));
        assert!(valid_notify_url("http://127.0.0.1:1/pay/notify"));
        assert!(!valid_notify_url("http://x/notify?a=1"));
        assert!(!valid_notify_url("ftp://x/notify"));
    }
}
