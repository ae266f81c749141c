//! `GET /sns/jscode2session` (auth.code2Session) and `POST /sandbox/login-code` (plays
//! `wx.login`).

use std::{collections::HashMap, time::Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    dev_error::{DevError, parse_body},
    faults, ids,
    state::{CodeEntry, Sandbox, State, User},
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

/// Body of `POST /sandbox/login-code`. Every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginCodeRequest {
    /// The app (default: the first configured).
    pub appid: Option<String>,
    /// An existing or new user of that app (default: a new user with a generated openid).
    pub openid: Option<String>,
    /// The person: logs the same person into another app (same unionid, that app's openid).
    pub unionid: Option<String>,
}

/// Answer of `POST /sandbox/login-code`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCode {
    pub code: String,
    pub appid: String,
    pub openid: String,
    pub unionid: String,
}

impl State {
    /// Finds or creates the user, keeping one unionid per person across apps.
    fn ensure_user(
        &mut self,
        appid: &str,
        openid: Option<&str>,
        unionid: Option<&str>,
    ) -> Result<(String, String), DevError> {
        let key = |openid: &str| (appid.to_owned(), openid.to_owned());
        if let Some(openid) = openid {
            if openid.is_empty() || openid.len() > 128 || openid.contains(char::is_whitespace) {
                return Err(DevError::BadRequest(format!(
                    "openid {openid:?} is not 1-128 non-blank characters"
                )));
            }
            if let Some(user) = self.users.get(&key(openid)) {
                if let Some(u) = unionid.filter(|u| *u != user.unionid) {
                    return Err(DevError::Conflict(format!(
                        "openid {openid} belongs to unionid {}, not {u}",
                        user.unionid
                    )));
                }
                return Ok((openid.to_owned(), user.unionid.clone()));
            }
        }
        let unionid = match unionid {
            Some("") => {
                return Err(DevError::BadRequest("unionid must not be empty".into()));
            }
            Some(u) => {
                let existing = self.persons.get(u).and_then(|apps| apps.get(appid));
                match (existing, openid) {
                    (Some(existing), None) => return Ok((existing.clone(), u.to_owned())),
                    (Some(existing), Some(o)) if existing != o => {
                        return Err(DevError::Conflict(format!(
                            "unionid {u} already has openid {existing} in {appid}"
                        )));
                    }
                    _ => u.to_owned(),
                }
            }
            None => ids::unionid(),
        };
        let openid = openid.map_or_else(ids::openid, str::to_owned);
        self.users.insert(
            key(&openid),
            User {
                unionid: unionid.clone(),
                session_key: None,
            },
        );
        self.persons
            .entry(unionid.clone())
            .or_default()
            .insert(appid.to_owned(), openid.clone());
        self.openid_apps
            .entry(openid.clone())
            .or_default()
            .push(appid.to_owned());
        Ok((openid, unionid))
    }
}

/// `POST /sandbox/login-code`: what `wx.login` gives the mini program.
pub async fn login_code(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let req: LoginCodeRequest = parse_body(&body)?;
    let appid = match req.appid.as_deref() {
        Some(appid) => sandbox
            .app(appid)
            .ok_or_else(|| DevError::UnknownApp(appid.to_owned()))?,
        None => sandbox.default_app(),
    }
    .appid
    .clone();
    let code = ids::login_code();
    let mut state = sandbox.state();
    let (openid, unionid) =
        state.ensure_user(&appid, req.openid.as_deref(), req.unionid.as_deref())?;
    prune_codes(&mut state, &sandbox);
    state.codes.insert(
        code.clone(),
        CodeEntry {
            appid: appid.clone(),
            openid: openid.clone(),
            issued: Instant::now(),
            used: false,
        },
    );
    drop(state);
    Ok(HttpResponse::Ok().json(LoginCode {
        code,
        appid,
        openid,
        unionid,
    }))
}

/// Forgets codes long past their lifetime (kept a while so a late reuse still says 40163).
fn prune_codes(state: &mut State, sandbox: &Sandbox) {
    let keep = sandbox.settings.code_ttl * 2;
    let State {
        codes,
        codes_pruning,
        ..
    } = state;
    codes_pruning.run(codes, 1000, |_, c| c.issued.elapsed() < keep);
}

/// `GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code`.
pub async fn jscode2session(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, WxError> {
    let get = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let appid = get("appid").ok_or(WxError::AppidMissing)?;
    let secret = get("secret").ok_or(WxError::SecretMissing)?;
    let app = sandbox.app(appid).ok_or(WxError::InvalidAppid)?;
    if app.secret.expose() != secret {
        return Err(WxError::InvalidSecret);
    }
    if get("grant_type") != Some("authorization_code") {
        return Err(WxError::InvalidGrantType);
    }
    let code = get("js_code").ok_or(WxError::CodeMissing)?;
    if faults::of_request(&req).quota_exceeded {
        return Err(WxError::MinuteQuota);
    }

    let settings = &sandbox.settings;
    let now = Instant::now();
    let mut state = sandbox.state();
    if !state.limiter.allow(
        &format!("jscode2session:app:{appid}"),
        settings.app_rate_per_min,
        now,
    ) || !state.limiter.allow(
        &format!("jscode2session:code:{code}"),
        settings.code_rate_per_min,
        now,
    ) {
        return Err(WxError::MinuteQuota);
    }
    let entry = state
        .codes
        .get_mut(code)
        .filter(|c| c.appid == appid && now.duration_since(c.issued) < settings.code_ttl)
        .ok_or(WxError::InvalidCode)?;
    if entry.used {
        return Err(WxError::CodeUsed);
    }
    entry.used = true;
    let openid = entry.openid.clone();
    let user = state
        .users
        .get_mut(&(appid.to_owned(), openid.clone()))
        .ok_or(WxError::System)?;
    // Each login rotates the key: clients must decrypt with the latest one only.
    let session_key = ids::session_key();
    user.session_key = Some(session_key.clone());
    let unionid = user.unionid.clone();
    state
        .session_key_issued
        .insert((appid.to_owned(), openid.clone()), now);
    drop(state);

    tracing::debug!(appid, openid, "jscode2session ok");
    Ok(HttpResponse::Ok().content_type(JSON_CONTENT_TYPE).body(
        json!({ "session_key": session_key, "openid": openid, "unionid": unionid }).to_string(),
    ))
}
