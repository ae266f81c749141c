//! Server APIs that take an access_token: `getuserphonenumber` (phone number by code) and
//! `subscribeMessage.send`, with the developer endpoints that play the phone
//! (`/sandbox/phone-code`, `/sandbox/subscribe`) and show what was sent (`/sandbox/messages`).
//!
//! From WeChat's documents:
//! - getuserphonenumber (`POST /wxa/business/getuserphonenumber?access_token=` `{"code"}`):
//!   the code of a getPhoneNumber button is single use and lives 5 minutes; an invalid, used
//!   or expired code answers 40029 "invalid code", -1 is "system busy"; success is
//!   `{"errcode":0,"errmsg":"ok","phone_info":{"phoneNumber","purePhoneNumber","countryCode",
//!   "watermark":{"timestamp","appid"}}}`.
//! - subscribeMessage.send (`POST /cgi-bin/message/subscribe/send?access_token=`
//!   `{touser, template_id, page?, miniprogram_state?, lang?, data: {key: {value}}}`): each
//!   one-off subscription the user accepted (wx.requestSubscribeMessage) allows one message;
//!   without one 43101 "user refuse to accept the msg"; 40003 invalid openid; 47003 argument
//!   invalid. Success `{"errcode":0,"errmsg":"ok","msgid":n}`.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    clock,
    dev_error::{DevError, parse_body},
    ids,
    state::Sandbox,
    token::authorize,
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

/// A getPhoneNumber code lives this long (WeChat: 5 minutes).
const PHONE_CODE_TTL: Duration = Duration::from_secs(300);
/// Most messages kept; the oldest go first.
const MAX_MESSAGES: usize = 50_000;

#[derive(Clone, Debug)]
pub struct PhoneCode {
    appid: String,
    phone_number: String,
    pure_phone_number: String,
    country_code: String,
    issued: Instant,
    used: bool,
    /// Answer this errcode instead (once per call; -1 leaves the code unused).
    errcode: Option<i64>,
}

/// One message `subscribe/send` accepted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentMessage {
    pub msgid: u64,
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    pub page: Option<String>,
    /// keyword → value.
    pub data: BTreeMap<String, String>,
    pub at_ms: i64,
}

#[derive(Debug, Default)]
pub struct OpenApi {
    phone_codes: HashMap<String, PhoneCode>,
    /// (appid, openid, template_id) → accepted one-off subscriptions left.
    subscriptions: HashMap<(String, String, String), u32>,
    messages: Vec<SentMessage>,
    next_msgid: u64,
    /// subscribe/send calls that presented a valid token, by (appid, touser).
    pub send_attempts: HashMap<(String, String), u64>,
}

impl OpenApi {
    /// The messages subscribe/send accepted, oldest first (the console lists them).
    pub fn messages(&self) -> &[SentMessage] {
        &self.messages
    }
}

fn wx_ok(body: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(body.to_string())
}

fn app_of(sandbox: &Sandbox, appid: Option<&str>) -> Result<String, DevError> {
    match appid.filter(|a| !a.is_empty()) {
        None => Ok(sandbox.default_app().appid.clone()),
        Some(a) => sandbox
            .app(a)
            .map(|app| app.appid.clone())
            .ok_or_else(|| DevError::UnknownApp(a.to_owned())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhoneCodeRequest {
    pub appid: Option<String>,
    /// Without the country code; default a random mainland number.
    #[serde(rename = "purePhoneNumber")]
    pub pure_phone_number: Option<String>,
    #[serde(rename = "countryCode")]
    pub country_code: Option<String>,
    /// getuserphonenumber answers this errcode for the code (e.g. -1 busy).
    pub errcode: Option<i64>,
}

/// `POST /sandbox/phone-code {appid?, purePhoneNumber?, countryCode?, errcode?}` →
/// `{"code", "appid", "phoneNumber", "purePhoneNumber", "countryCode"}`: what a getPhoneNumber
/// button hands the mini program.
pub async fn phone_code(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let req: PhoneCodeRequest = parse_body(&body)?;
    let appid = app_of(&sandbox, req.appid.as_deref())?;
    let country_code = req.country_code.unwrap_or_else(|| "86".to_owned());
    let pure = req
        .pure_phone_number
        .unwrap_or_else(|| format!("138{:08}", rand::random::<u32>() % 100_000_000));
    if pure.is_empty() || !pure.bytes().all(|b| b.is_ascii_digit()) || pure.len() > 20 {
        return Err(DevError::BadRequest(
            "purePhoneNumber must be digits".into(),
        ));
    }
    // phoneNumber carries the country code for foreign numbers only (WeChat's own example).
    let phone_number = if country_code == "86" {
        pure.clone()
    } else {
        format!("+{country_code} {pure}")
    };
    let code = ids::login_code();
    sandbox.state().openapi.phone_codes.insert(
        code.clone(),
        PhoneCode {
            appid: appid.clone(),
            phone_number: phone_number.clone(),
            pure_phone_number: pure.clone(),
            country_code: country_code.clone(),
            issued: Instant::now(),
            used: false,
            errcode: req.errcode,
        },
    );
    Ok(HttpResponse::Ok().json(json!({
        "code": code, "appid": appid, "phoneNumber": phone_number,
        "purePhoneNumber": pure, "countryCode": country_code,
    })))
}

#[derive(Deserialize)]
struct CodeBody {
    code: Option<String>,
}

/// `POST /wxa/business/getuserphonenumber?access_token=` `{"code"}`.
pub async fn get_phone_number(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let body: CodeBody = serde_json::from_slice(&body).map_err(|_| WxError::DataFormat)?;
    let code = body
        .code
        .filter(|c| !c.is_empty())
        .ok_or(WxError::InvalidCode)?;
    let mut state = sandbox.state();
    let entry = state
        .openapi
        .phone_codes
        .get_mut(&code)
        .filter(|c| c.appid == appid && !c.used && c.issued.elapsed() < PHONE_CODE_TTL)
        .ok_or(WxError::InvalidCode)?;
    match entry.errcode.take() {
        // Busy: the code was not consumed and works on a retry.
        Some(-1) => return Err(WxError::System),
        Some(40013) => return Err(WxError::InvalidAppid),
        Some(_) => return Err(WxError::InvalidCode),
        None => {}
    }
    entry.used = true;
    Ok(wx_ok(json!({
        "errcode": 0,
        "errmsg": "ok",
        "phone_info": {
            "phoneNumber": entry.phone_number,
            "purePhoneNumber": entry.pure_phone_number,
            "countryCode": entry.country_code,
            "watermark": { "timestamp": clock::unix_secs(), "appid": appid },
        }
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscribeRequest {
    pub appid: Option<String>,
    pub openid: String,
    pub template_id: String,
    /// How many one-off subscriptions the user accepts (default 1).
    pub times: Option<u32>,
}

/// `POST /sandbox/subscribe {appid?, openid, template_id, times?}` → `{"remaining"}`: the user
/// accepts wx.requestSubscribeMessage for the template (each acceptance allows one message).
pub async fn subscribe(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let req: SubscribeRequest = parse_body(&body)?;
    if req.openid.is_empty() || req.template_id.is_empty() {
        return Err(DevError::BadRequest(
            "openid and template_id are required".into(),
        ));
    }
    let appid = app_of(&sandbox, req.appid.as_deref())?;
    let mut state = sandbox.state();
    let left = state
        .openapi
        .subscriptions
        .entry((appid, req.openid, req.template_id))
        .or_default();
    *left = left.saturating_add(req.times.unwrap_or(1));
    let remaining = *left;
    Ok(HttpResponse::Ok().json(json!({ "remaining": remaining })))
}

#[derive(Deserialize)]
struct SendBody {
    touser: Option<String>,
    template_id: Option<String>,
    page: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, ValueField>,
}

#[derive(Deserialize)]
struct ValueField {
    value: String,
}

/// `POST /cgi-bin/message/subscribe/send?access_token=`.
pub async fn send(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let appid = authorize(&sandbox, &req)?;
    let body: SendBody = serde_json::from_slice(&body).map_err(|_| WxError::DataFormat)?;
    let touser = body
        .touser
        .filter(|t| !t.is_empty())
        .ok_or(WxError::ArgumentInvalid)?;
    let template_id = body
        .template_id
        .filter(|t| !t.is_empty())
        .ok_or(WxError::ArgumentInvalid)?;
    let mut state = sandbox.state();
    if !state.users.contains_key(&(appid.clone(), touser.clone())) {
        return Err(WxError::InvalidOpenid);
    }
    *state
        .openapi
        .send_attempts
        .entry((appid.clone(), touser.clone()))
        .or_default() += 1;
    let key = (appid.clone(), touser.clone(), template_id.clone());
    match state.openapi.subscriptions.get_mut(&key) {
        Some(left) if *left > 0 => *left -= 1,
        _ => return Err(WxError::UserRefused),
    }
    let openapi = &mut state.openapi;
    openapi.next_msgid += 1;
    let msgid = openapi.next_msgid;
    if openapi.messages.len() >= MAX_MESSAGES {
        openapi.messages.remove(0);
    }
    openapi.messages.push(SentMessage {
        msgid,
        appid,
        touser,
        template_id,
        page: body.page,
        data: body.data.into_iter().map(|(k, v)| (k, v.value)).collect(),
        at_ms: clock::unix_ms(),
    });
    Ok(wx_ok(
        json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid }),
    ))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    touser: Option<String>,
    template_id: Option<String>,
}

/// `GET /sandbox/messages?touser=&template_id=` → the messages sent, oldest first.
pub async fn messages(
    sandbox: web::Data<Sandbox>,
    query: web::Query<MessagesQuery>,
) -> HttpResponse {
    let state = sandbox.state();
    let list: Vec<&SentMessage> = state
        .openapi
        .messages
        .iter()
        .filter(|m| query.touser.as_ref().is_none_or(|t| *t == m.touser))
        .filter(|m| {
            query
                .template_id
                .as_ref()
                .is_none_or(|t| *t == m.template_id)
        })
        .collect();
    HttpResponse::Ok().json(list)
}
