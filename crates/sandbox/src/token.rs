//! `GET /cgi-bin/token` (getAccessToken) and `POST /cgi-bin/stable_token`
//! (getStableAccessToken), the validity of the tokens they hand out, and the developer
//! counters tests read (`GET /sandbox/access-tokens`).
//!
//! WeChat's semantics, from its documents and merchants' reports:
//! - getAccessToken: "重复获取将导致上次获取的 access_token 失效" — every call makes a new
//!   token; the previous one keeps working for a grace period ("公众平台后台会保证在5分钟内，
//!   新老 access_token 都可用", the central-control-server note of the getAccessToken doc), then
//!   answers 40001. Daily quota (2000 for most accounts, errcode 45009 "reach max api daily
//!   quota limit": developers.weixin.qq.com/community/minihome/doc/0006449d84015893ae7d4926d56c00).
//! - getStableAccessToken (minigame auth.getStableAccessToken doc, "access_token 的存储与更新"):
//!   isolated from getAccessToken; normal mode answers the same token while it is valid and
//!   "平台会提前 5 分钟更新 access_token": a call in the last 5 minutes gets a new one, the old
//!   one staying valid until its own expiry, so "expires_in >= 300" at any time. force_refresh
//!   invalidates the previous token at once; "该模式限制每天 20 次 … 调用时间隔至少为 30s，
//!   否则不会刷新" (a second force within 30 s answers the current token unchanged); past 20 a
//!   day 45009 (developers.weixin.qq.com/community/personal/oCJUswyK7-0uEDixJMq1EgOsP3q4/question).
//! - A replaced token answers 40001 "invalid credential, access_token is invalid or not latest"
//!   (JeffreySu/WeiXinMPSDK#3029), an expired one 42001, a missing one 41001
//!   (Eric-Guo/wechat#57 lists 40001/42001/40014 as the codes that call for a new token).
//!
//! The lifetime (`SANDBOX_TOKEN_EXPIRES_IN_SECS`, WeChat: 7200) and the grace / early-renewal
//! window (`SANDBOX_TOKEN_GRACE_MS`, WeChat: 5 minutes) are configurable so tests can live
//! through several expiries in seconds.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    dev_error::DevError,
    faults, ids,
    state::Sandbox,
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

/// Force-refresh limits of stable_token: 20 a day, at least 30 seconds apart.
const FORCE_SPACING: Duration = Duration::from_secs(30);
const FORCE_PER_DAY: usize = 20;
/// getStableAccessToken's documented daily limit (500 000 a day).
const STABLE_PER_DAY: usize = 500_000;
const DAY: Duration = Duration::from_secs(86_400);

/// Token lifetime rules (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct TokenRules {
    pub lifetime: Duration,
    /// How long a replaced legacy token keeps working, and how early a stable token renews.
    pub grace: Duration,
    /// getAccessToken calls allowed per app per day (45009 beyond).
    pub daily_quota: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Api {
    Legacy,
    Stable,
}

#[derive(Debug)]
struct Issued {
    appid: String,
    expires_at: Instant,
    /// Set when a newer token replaced this one: it answers 40001 from then on.
    invalid_from: Option<Instant>,
}

/// Fetch counters of one app, for tests (`GET /sandbox/access-tokens`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenStats {
    /// Successful `/cgi-bin/token` calls.
    pub legacy_fetches: u64,
    /// Successful `/cgi-bin/stable_token` calls (normal and forced).
    pub stable_fetches: u64,
    /// Of those, with force_refresh that did refresh.
    pub stable_forced: u64,
    /// Distinct tokens made (both APIs).
    pub tokens_issued: u64,
    /// Calls refused (quota, bad credentials).
    pub refused: u64,
    /// API calls that presented a token which was rejected (40001/42001/41001).
    pub rejected_uses: u64,
}

#[derive(Debug, Default)]
pub struct Tokens {
    issued: HashMap<String, Issued>,
    current: HashMap<(Api, String), String>,
    legacy_calls: HashMap<String, Vec<Instant>>,
    stable_calls: HashMap<String, Vec<Instant>>,
    forced: HashMap<String, Vec<Instant>>,
    stats: HashMap<String, TokenStats>,
}

fn within_day(calls: &mut Vec<Instant>, now: Instant) -> usize {
    calls.retain(|t| now.duration_since(*t) < DAY);
    calls.len()
}

impl Tokens {
    fn stats(&mut self, appid: &str) -> &mut TokenStats {
        self.stats.entry(appid.to_owned()).or_default()
    }

    fn issue(&mut self, api: Api, appid: &str, rules: &TokenRules, now: Instant) -> String {
        // Forget what is long dead, so the map stays small.
        self.issued
            .retain(|_, t| t.expires_at + rules.grace + DAY / 24 > now);
        let token = ids::access_token();
        self.issued.insert(
            token.clone(),
            Issued {
                appid: appid.to_owned(),
                expires_at: now + rules.lifetime,
                invalid_from: None,
            },
        );
        self.current.insert((api, appid.to_owned()), token.clone());
        self.stats(appid).tokens_issued += 1;
        token
    }

    fn current_of(&self, api: Api, appid: &str) -> Option<(&String, &Issued)> {
        let token = self.current.get(&(api, appid.to_owned()))?;
        Some((token, self.issued.get(token)?))
    }

    /// A new legacy token; the previous one works for `grace` more.
    fn legacy(
        &mut self,
        appid: &str,
        rules: &TokenRules,
        now: Instant,
    ) -> Result<(String, u64), WxError> {
        let calls = self.legacy_calls.entry(appid.to_owned()).or_default();
        if within_day(calls, now) >= rules.daily_quota {
            self.stats(appid).refused += 1;
            return Err(WxError::DailyQuota);
        }
        calls.push(now);
        if let Some(previous) = self.current.get(&(Api::Legacy, appid.to_owned())).cloned()
            && let Some(old) = self.issued.get_mut(&previous)
        {
            let until = now + rules.grace;
            old.invalid_from = Some(old.invalid_from.map_or(until, |t| t.min(until)));
        }
        let token = self.issue(Api::Legacy, appid, rules, now);
        self.stats(appid).legacy_fetches += 1;
        Ok((token, rules.lifetime.as_secs()))
    }

    /// The stable token of `appid` and its remaining lifetime in seconds.
    fn stable(
        &mut self,
        appid: &str,
        force_refresh: bool,
        rules: &TokenRules,
        now: Instant,
    ) -> Result<(String, u64), WxError> {
        let calls = self.stable_calls.entry(appid.to_owned()).or_default();
        if within_day(calls, now) >= STABLE_PER_DAY {
            self.stats(appid).refused += 1;
            return Err(WxError::DailyQuota);
        }
        calls.push(now);
        let live = self
            .current_of(Api::Stable, appid)
            .filter(|(_, t)| t.invalid_from.is_none() && t.expires_at > now)
            .map(|(token, t)| (token.clone(), t.expires_at));
        let mut refresh = live
            .as_ref()
            .is_none_or(|(_, expires_at)| *expires_at <= now + rules.grace);
        if force_refresh {
            let forced = self.forced.entry(appid.to_owned()).or_default();
            if within_day(forced, now) >= FORCE_PER_DAY {
                self.stats(appid).refused += 1;
                return Err(WxError::DailyQuota);
            }
            // Closer than 30 s to the previous force: "否则不会刷新", the current token stands.
            let spaced = forced
                .last()
                .is_none_or(|t| now.duration_since(*t) >= FORCE_SPACING);
            if spaced {
                forced.push(now);
                self.stats(appid).stable_forced += 1;
                if let Some((old, _)) = &live
                    && let Some(old) = self.issued.get_mut(old)
                {
                    old.invalid_from = Some(now);
                }
                refresh = true;
            }
        }
        self.stats(appid).stable_fetches += 1;
        match live {
            Some((token, expires_at)) if !refresh => {
                Ok((token, expires_at.duration_since(now).as_secs().max(1)))
            }
            // The old token (if any) stays valid until its own expiry.
            _ => Ok((
                self.issue(Api::Stable, appid, rules, now),
                rules.lifetime.as_secs(),
            )),
        }
    }

    /// The app a token belongs to, or WeChat's error for it at `now`.
    pub fn check(&mut self, token: Option<&str>, now: Instant) -> Result<String, WxError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(WxError::TokenMissing)?;
        let verdict = match self.issued.get(token) {
            None => Err((WxError::InvalidCredential, None)),
            Some(t) if t.invalid_from.is_some_and(|from| now >= from) => {
                Err((WxError::InvalidCredential, Some(t.appid.clone())))
            }
            Some(t) if now >= t.expires_at => Err((WxError::TokenExpired, Some(t.appid.clone()))),
            Some(t) => Ok(t.appid.clone()),
        };
        verdict.map_err(|(e, appid)| {
            if let Some(appid) = appid {
                self.stats(&appid).rejected_uses += 1;
            }
            e
        })
    }

    /// Makes every current token of `appid` answer 40001 (a leak, or another party's
    /// forced refresh).
    fn invalidate(&mut self, appid: &str, now: Instant) -> usize {
        let mut n = 0;
        for api in [Api::Legacy, Api::Stable] {
            if let Some(token) = self.current.remove(&(api, appid.to_owned()))
                && let Some(t) = self.issued.get_mut(&token)
            {
                t.invalid_from = Some(now);
                n += 1;
            }
        }
        n
    }
}

fn check_app(
    sandbox: &Sandbox,
    appid: Option<&str>,
    secret: Option<&str>,
) -> Result<String, WxError> {
    let appid = appid
        .filter(|a| !a.is_empty())
        .ok_or(WxError::AppidMissing)?;
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(WxError::SecretMissing)?;
    let app = sandbox.app(appid).ok_or(WxError::InvalidAppid)?;
    if app.secret.expose() != secret {
        return Err(WxError::InvalidSecret);
    }
    Ok(app.appid.clone())
}

fn token_response(token: &str, expires_in: u64) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(json!({ "access_token": token, "expires_in": expires_in }).to_string())
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid&secret`: a new token each call.
pub async fn get_token(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, WxError> {
    if query.get("grant_type").map(String::as_str) != Some("client_credential") {
        return Err(WxError::InvalidGrantType);
    }
    let appid = check_app(
        &sandbox,
        query.get("appid").map(String::as_str),
        query.get("secret").map(String::as_str),
    )?;
    if faults::of_request(&req).quota_exceeded {
        return Err(WxError::MinuteQuota);
    }
    let rules = sandbox.settings.tokens;
    let (token, expires_in) = sandbox
        .state()
        .tokens
        .legacy(&appid, &rules, Instant::now())?;
    Ok(token_response(&token, expires_in))
}

#[derive(Deserialize)]
struct StableTokenRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: bool,
}

/// `POST /cgi-bin/stable_token` with `{grant_type, appid, secret, force_refresh}`.
pub async fn stable_token(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, WxError> {
    let body: StableTokenRequest =
        serde_json::from_slice(&body).map_err(|_| WxError::DataFormat)?;
    if body.grant_type.as_deref() != Some("client_credential") {
        return Err(WxError::InvalidGrantType);
    }
    let appid = check_app(&sandbox, body.appid.as_deref(), body.secret.as_deref())?;
    if faults::of_request(&req).quota_exceeded {
        return Err(WxError::MinuteQuota);
    }
    let rules = sandbox.settings.tokens;
    let (token, expires_in) =
        sandbox
            .state()
            .tokens
            .stable(&appid, body.force_refresh, &rules, Instant::now())?;
    Ok(token_response(&token, expires_in))
}

/// The `access_token` query parameter of a server API call, checked: the app it belongs to.
pub fn authorize(sandbox: &Sandbox, req: &HttpRequest) -> Result<String, WxError> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|_| WxError::TokenMissing)?;
    sandbox.state().tokens.check(
        query.get("access_token").map(String::as_str),
        Instant::now(),
    )
}

/// `GET /cgi-bin/getcallbackip?access_token=`: WeChat's cheapest call that checks a token.
pub async fn callback_ip(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
) -> Result<HttpResponse, WxError> {
    authorize(&sandbox, &req)?;
    Ok(HttpResponse::Ok()
        .content_type(JSON_CONTENT_TYPE)
        .body(json!({ "ip_list": ["127.0.0.1"] }).to_string()))
}

#[derive(Deserialize)]
pub struct AppQuery {
    appid: Option<String>,
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

/// `GET /sandbox/access-tokens?appid=` → the app's [`TokenStats`].
pub async fn stats(
    sandbox: web::Data<Sandbox>,
    query: web::Query<AppQuery>,
) -> Result<HttpResponse, DevError> {
    let appid = app_of(&sandbox, query.appid.as_deref())?;
    let stats = sandbox.state().tokens.stats(&appid).clone();
    Ok(HttpResponse::Ok().json(stats))
}

/// `POST /sandbox/access-tokens/invalidate?appid=` → `{"invalidated": n}`: the app's current
/// tokens answer 40001 from now on, as after someone else's forced refresh.
pub async fn invalidate(
    sandbox: web::Data<Sandbox>,
    query: web::Query<AppQuery>,
) -> Result<HttpResponse, DevError> {
    let appid = app_of(&sandbox, query.appid.as_deref())?;
    let n = sandbox.state().tokens.invalidate(&appid, Instant::now());
    Ok(HttpResponse::Ok().json(json!({ "invalidated": n })))
}

/// What the sandbox console (console.rs) shows and does with the tokens.
impl Tokens {
    /// Each app's current tokens (the issuing API and a short prefix only) and their
    /// remaining lifetime in seconds.
    pub(crate) fn stable_for_console(&self, now: Instant) -> Vec<(String, String, u64)> {
        let mut rows: Vec<_> = self
            .current
            .iter()
            .filter_map(|((api, appid), token)| {
                let issued = self.issued.get(token)?;
                let api = match api {
                    Api::Legacy => "token",
                    Api::Stable => "stable_token",
                };
                let prefix: String = token.chars().take(8).collect();
                let left = issued.expires_at.saturating_duration_since(now).as_secs();
                Some((appid.clone(), format!("{api}: {prefix}"), left))
            })
            .collect();
        rows.sort();
        rows
    }

    /// Expires `appid`'s current tokens now (42001 from now on; the next fetch gets a new
    /// one). False when it has none.
    pub(crate) fn expire_stable(&mut self, appid: &str, now: Instant) -> bool {
        let tokens: Vec<String> = self
            .current
            .iter()
            .filter(|((_, a), _)| a == appid)
            .map(|(_, token)| token.clone())
            .collect();
        for token in &tokens {
            if let Some(issued) = self.issued.get_mut(token) {
                issued.expires_at = now;
            }
        }
        !tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: TokenRules = TokenRules {
        lifetime: Duration::from_secs(7200),
        grace: Duration::from_secs(300),
        daily_quota: 3,
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn stable_token_is_stable_until_its_last_minutes_or_forced() {
        let mut tokens = Tokens::default();
        let t0 = Instant::now();
        let (a, ttl) = tokens.stable("wx1", false, &RULES, t0).unwrap();
        assert_eq!(ttl, 7200);
        let (b, ttl) = tokens.stable("wx1", false, &RULES, t0 + secs(100)).unwrap();
        assert_eq!((a.as_str(), ttl), (b.as_str(), 7100));
        // Forced: a new token, the old one is dead at once.
        let (c, _) = tokens.stable("wx1", true, &RULES, t0 + secs(100)).unwrap();
        assert_ne!(a, c);
        assert_eq!(
            tokens.check(Some(&a), t0 + secs(100)),
            Err(WxError::InvalidCredential)
        );
        // A second force within 30 s does not refresh.
        let (c2, _) = tokens.stable("wx1", true, &RULES, t0 + secs(110)).unwrap();
        assert_eq!(c, c2);
        assert_eq!(tokens.stats("wx1").stable_forced, 1);
        // In the last 5 minutes normal mode renews; the old one lives to its expiry.
        let (d, ttl) = tokens
            .stable("wx1", false, &RULES, t0 + secs(100 + 6950))
            .unwrap();
        assert_ne!(c, d);
        assert_eq!(ttl, 7200);
        assert_eq!(
            tokens.check(Some(&c), t0 + secs(100 + 7000)).as_deref(),
            Ok("wx1")
        );
        assert_eq!(
            tokens.check(Some(&c), t0 + secs(100 + 7200)),
            Err(WxError::TokenExpired)
        );
    }

    #[test]
    fn legacy_tokens_replace_each_other_after_a_grace_period() {
        let mut tokens = Tokens::default();
        let t0 = Instant::now();
        let (a, _) = tokens.legacy("wx1", &RULES, t0).unwrap();
        let (b, _) = tokens.legacy("wx1", &RULES, t0 + secs(10)).unwrap();
        assert_ne!(a, b);
        assert_eq!(tokens.check(Some(&a), t0 + secs(309)).as_deref(), Ok("wx1"));
        assert_eq!(
            tokens.check(Some(&a), t0 + secs(310)),
            Err(WxError::InvalidCredential)
        );
        assert_eq!(tokens.check(Some(&b), t0 + secs(310)).as_deref(), Ok("wx1"));
        // The daily quota (3 here).
        tokens.legacy("wx1", &RULES, t0 + secs(20)).unwrap();
        assert_eq!(
            tokens.legacy("wx1", &RULES, t0 + secs(30)),
            Err(WxError::DailyQuota)
        );
        assert!(tokens.legacy("wx1", &RULES, t0 + DAY + secs(1)).is_ok());
        assert_eq!(
            tokens.check(Some("nope"), t0),
            Err(WxError::InvalidCredential)
        );
        assert_eq!(tokens.check(None, t0), Err(WxError::TokenMissing));
        let stats = tokens.stats("wx1").clone();
        assert_eq!((stats.legacy_fetches, stats.refused), (4, 1));
    }

    #[test]
    fn invalidate_kills_the_current_tokens() {
        let mut tokens = Tokens::default();
        let t0 = Instant::now();
        let (a, _) = tokens.stable("wx1", false, &RULES, t0).unwrap();
        assert_eq!(tokens.invalidate("wx1", t0 + secs(1)), 1);
        assert_eq!(
            tokens.check(Some(&a), t0 + secs(1)),
            Err(WxError::InvalidCredential)
        );
        let (b, _) = tokens.stable("wx1", false, &RULES, t0 + secs(2)).unwrap();
        assert_ne!(a, b);
    }
}
