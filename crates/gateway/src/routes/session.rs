//! Login and logout.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use wxmp_proto::auth::v1::{LoginRequest, LogoutRequest};

use super::required;
use crate::{envelope::Envelope, openapi::ErrorEnvelope};
use crate::{
    envelope::{ApiError, Code, ok},
    extract::{self, JsonBody},
    request_id::RequestId,
    server::AppState,
};

/// Longest code we bother WeChat with; real ones are 32 characters.
const MAX_CODE_LEN: usize = 128;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginBody {
    /// The code from `wx.login()` (single use, 5 minutes).
    #[schema(required = true)]
    code: Option<String>,
    /// Which configured app the code is for (`appid`/`appId` accepted); default: the first.
    #[serde(default, alias = "appid", alias = "appId")]
    app_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LoginData {
    /// The session token: send it as `Authorization: Bearer <token>` (or a body `token`).
    token: String,
    expires_in: i64,
}

/// `POST /login/ {code, app_id?}` → `data: {token, expires_in}`.
#[utoipa::path(post, path = "/login/", tag = "session",
    summary = "Log in with a wx.login() code (auth.code2Session)",
    description = "Also served as `/login`. Rate limited per client IP (`GATEWAY_LOGIN_RATE_PER_MIN`).",
    request_body(content = LoginBody, content_type = "application/json"),
    responses(
        (status = 200, description = "code 200: logged in", body = Envelope<LoginData>),
        (status = 400, description = "201 missing code, 203 malformed body or unknown app", body = ErrorEnvelope),
        (status = 401, description = "202 invalid or used code", body = ErrorEnvelope),
        (status = 413, description = "204 body too large", body = ErrorEnvelope),
        (status = 429, description = "208 rate limited", body = ErrorEnvelope),
        (status = 502, description = "211 WeChat answered an error", body = ErrorEnvelope),
        (status = 503, description = "212 WeChat unavailable, 213 a service unavailable", body = ErrorEnvelope),
    ))]
pub async fn login(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    // Every attempt counts, good or bad: each one costs a code2Session against WeChat's quota.
    if let (Some(limit), Some(ip)) = (
        &state.login_limit,
        extract::client_ip(&req, &state.trusted_proxies),
    ) && !limit.allow(ip).await
    {
        tracing::warn!(client_ip = %ip, "login rate limit reached");
        return Err(Code::RateLimited.into());
    }
    let code = required(&body.code, "code")?;
    if code.len() > MAX_CODE_LEN {
        return Err(ApiError::from_reason(service_kit::ErrorReason::InvalidCode));
    }
    let app_id = match body.app_id.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(id) => extract::checked_id(id, "app_id", 64)?.to_owned(),
    };
    let upstreams = &state.upstreams;
    let response = upstreams
        .auth()
        .login(upstreams.request(
            &request_id,
            LoginRequest {
                app_id,
                code: code.to_owned(),
            },
        ))
        .await?
        .into_inner();
    Ok(ok(LoginData {
        token: response.token,
        expires_in: response.expires_in,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct TokenBody {
    /// The session token, when not sent as `Authorization: Bearer`.
    token: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LogoutData {
    /// False when the token was already unknown or expired.
    revoked: bool,
}

/// `POST /logout` with the token in the header, or in a JSON body `{token}`.
#[utoipa::path(post, path = "/logout", tag = "session",
    summary = "Revoke the session token (auth.Logout)",
    description = "Also served as `/logout/`. The body is optional when the Bearer header is sent.",
    request_body(content = Option<TokenBody>, content_type = "application/json"),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "code 200", body = Envelope<LogoutData>),
        (status = 400, description = "201 token missing, 203 malformed body", body = ErrorEnvelope),
        (status = 503, description = "213 auth-service unavailable", body = ErrorEnvelope),
    ))]
pub async fn logout(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // The body is optional here (a Bearer header suffices); when present it must be JSON.
    let body: TokenBody = if body.iter().all(u8::is_ascii_whitespace) {
        TokenBody::default()
    } else {
        parse_json(&req, &body)?
    };
    let token = extract::token(&req, body.token.as_deref())?;
    if let Some(cache) = &state.sessions {
        // This replica forgets it now; the others hear auth-service's announcement.
        cache.evict(&service_kit::session_cache::TokenKey::of(&token));
    }
    let upstreams = &state.upstreams;
    let response = upstreams
        .auth()
        .logout(upstreams.request(&request_id, LogoutRequest { token }))
        .await?
        .into_inner();
    Ok(ok(LogoutData {
        revoked: response.revoked,
    }))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, ApiError> {
    if !extract::is_json(req) {
        return Err(ApiError::invalid("content type must be application/json"));
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::invalid("invalid request: a field has the wrong type")
        } else {
            ApiError::invalid("malformed JSON")
        }
    })
}
