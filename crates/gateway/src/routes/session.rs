//! Login and logout.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use wxmp_proto::auth::v1::{LoginRequest, LogoutRequest};

use super::required;
use crate::{
    envelope::{ApiError, Code, ok},
    extract::{self, JsonBody},
    request_id::RequestId,
    server::AppState,
};

/// Longest code we bother WeChat with; real ones are 32 characters.
const MAX_CODE_LEN: usize = 128;

#[derive(Debug, Deserialize)]
pub struct LoginBody {
    code: Option<String>,
    #[serde(default, alias = "appid", alias = "appId")]
    app_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct LoginData {
    token: String,
    expires_in: i64,
}

/// `POST /login/ {code, app_id?}` → `data: {token, expires_in}`.
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

#[derive(Debug, Default, Deserialize)]
pub struct TokenBody {
    token: Option<String>,
}

#[derive(Debug, Serialize)]
struct LogoutData {
    revoked: bool,
}

/// `POST /logout` with the token in the header, or in a JSON body `{token}`.
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
