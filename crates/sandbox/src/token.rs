//! `GET /cgi-bin/token` (getAccessToken) and `POST /cgi-bin/stable_token`
//! (getStableAccessToken). The two are isolated from each other, as WeChat documents.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::{
    faults, ids,
    state::Sandbox,
    wx_error::{JSON_CONTENT_TYPE, WxError},
};

const LIFETIME: Duration = Duration::from_secs(7200);
/// Normal mode hands out a fresh stable token once the old one has less than this left.
const EARLY_RENEWAL: Duration = Duration::from_secs(300);
/// Force-refresh limits: 20 a day, at least 30 seconds apart.
const FORCE_SPACING: Duration = Duration::from_secs(30);
const FORCE_PER_DAY: usize = 20;
const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug)]
struct StableToken {
    token: String,
    expires_at: Instant,
}

#[derive(Debug, Default)]
pub struct Tokens {
    stable: HashMap<String, StableToken>,
    forced: HashMap<String, Vec<Instant>>,
}

impl Tokens {
    /// The stable token of `appid` and its remaining lifetime in seconds.
    fn stable(
        &mut self,
        appid: &str,
        force_refresh: bool,
        now: Instant,
    ) -> Result<(String, u64), WxError> {
        if force_refresh {
            let forced = self.forced.entry(appid.to_owned()).or_default();
            forced.retain(|t| now.duration_since(*t) < DAY);
            if forced.len() >= FORCE_PER_DAY
                || forced
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < FORCE_SPACING)
            {
                return Err(WxError::DailyQuota);
            }
            forced.push(now);
        }
        let current = self
            .stable
            .get(appid)
            .filter(|t| !force_refresh && t.expires_at > now + EARLY_RENEWAL);
        if let Some(t) = current {
            return Ok((t.token.clone(), t.expires_at.duration_since(now).as_secs()));
        }
        let token = ids::access_token();
        self.stable.insert(
            appid.to_owned(),
            StableToken {
                token: token.clone(),
                expires_at: now + LIFETIME,
            },
        );
        Ok((token, LIFETIME.as_secs()))
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
    check_app(
        &sandbox,
        query.get("appid").map(String::as_str),
        query.get("secret").map(String::as_str),
    )?;
    if faults::of_request(&req).quota_exceeded {
        return Err(WxError::MinuteQuota);
    }
    Ok(token_response(&ids::access_token(), LIFETIME.as_secs()))
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
    let (token, expires_in) =
        sandbox
            .state()
            .tokens
            .stable(&appid, body.force_refresh, Instant::now())?;
    Ok(token_response(&token, expires_in))
}

/// What the sandbox console (console.rs) shows and does with the tokens.
impl Tokens {
    /// Each app's stable token (a short prefix only) and its remaining lifetime in seconds.
    pub(crate) fn stable_for_console(&self, now: Instant) -> Vec<(String, String, u64)> {
        let mut rows: Vec<_> = self
            .stable
            .iter()
            .map(|(appid, t)| {
                let prefix: String = t.token.chars().take(8).collect();
                let left = t.expires_at.saturating_duration_since(now).as_secs();
                (appid.clone(), prefix, left)
            })
            .collect();
        rows.sort();
        rows
    }

    /// Expires `appid`'s stable token now: the next call gets a new one. False when none.
    pub(crate) fn expire_stable(&mut self, appid: &str, now: Instant) -> bool {
        match self.stable.get_mut(appid) {
            Some(t) => {
                t.expires_at = now;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_token_is_stable_until_forced() {
        let mut tokens = Tokens::default();
        let t0 = Instant::now();
        let (a, ttl) = tokens.stable("wx1", false, t0).unwrap();
        assert_eq!(ttl, 7200);
        let (b, ttl) = tokens
            .stable("wx1", false, t0 + Duration::from_secs(100))
            .unwrap();
        assert_eq!((a.as_str(), ttl), (b.as_str(), 7100));
        let (c, _) = tokens
            .stable("wx1", true, t0 + Duration::from_secs(100))
            .unwrap();
        assert_ne!(a, c);
        assert_eq!(
            tokens.stable("wx1", true, t0 + Duration::from_secs(110)),
            Err(WxError::DailyQuota)
        );
        // Near expiry, normal mode renews early.
        let (d, ttl) = tokens
            .stable("wx1", false, t0 + Duration::from_secs(100 + 7000))
            .unwrap();
        assert_ne!(c, d);
        assert_eq!(ttl, 7200);
    }
}
