//! The user's own profile: read it, store the decrypted wx.getUserInfo / getPhoneNumber data.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use service_kit::session_cache::UserKey;
use wxmp_proto::user::v1::{GetUserRequest, UpdatePhoneNumberRequest, UpdateProfileRequest, User};

use super::{authenticate, required};
use crate::{envelope::Envelope, openapi::ErrorEnvelope};
use crate::{
    envelope::{ApiError, Code, ok},
    extract::{self, JsonBody},
    request_id::RequestId,
    server::AppState,
};

/// What the mini program may see of its user. Built field by field from the service's `User`,
/// so nothing new in that message (or a session_key) can leak by accident.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Profile {
    user_id: i64,
    openid: String,
    has_unionid: bool,
    nickname: String,
    avatar_url: String,
    gender: i32,
    language: String,
    city: String,
    province: String,
    country: String,
    phone: String,
    phone_country_code: String,
    phone_number: String,
}

impl From<User> for Profile {
    fn from(u: User) -> Self {
        Self {
            user_id: u.id,
            openid: u.openid,
            has_unionid: !u.unionid.is_empty(),
            nickname: u.nickname,
            avatar_url: u.avatar_url,
            gender: u.gender,
            language: u.language,
            city: u.city,
            province: u.province,
            country: u.country,
            phone: u.phone,
            phone_country_code: u.phone_country_code,
            phone_number: u.phone_number,
        }
    }
}

fn profile(user: Option<User>) -> Result<HttpResponse, ApiError> {
    match user {
        Some(user) => Ok(ok(Profile::from(user))),
        None => {
            tracing::error!("user-service answered without a user");
            Err(Code::Internal.into())
        }
    }
}

/// The profile of an update's answer, after this replica forgets its copy of the row: the
/// next `/me` here reads the new one even before user-service's announcement arrives.
fn updated(state: &AppState, user: Option<User>) -> Result<HttpResponse, ApiError> {
    if let (Some(rows), Some(user)) = (&state.users, &user) {
        rows.evict(&UserKey(user.id));
    }
    profile(user)
}

/// `GET /me` (token in `Authorization: Bearer`).
#[utoipa::path(get, path = "/me", tag = "user",
    summary = "The caller's profile (user.GetUser)",
    description = "Also served as `/me/`.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "code 200", body = Envelope<Profile>),
        (status = 400, description = "201 token missing", body = ErrorEnvelope),
        (status = 401, description = "202 invalid token", body = ErrorEnvelope),
        (status = 404, description = "207 no such user", body = ErrorEnvelope),
        (status = 503, description = "213 a service unavailable", body = ErrorEnvelope),
    ))]
pub async fn me(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&state, &request_id, &req, None).await?;
    // The cache of user rows (`GATEWAY_USER_CACHE_*`): user-service announces each change.
    let key = UserKey(principal.user_id);
    if let Some(user) = state.users.as_deref().and_then(|rows| rows.get(&key)) {
        metrics::counter!("wxmp_user_cache_total", "outcome" => "hit").increment(1);
        return profile(Some(user));
    }
    // On a miss, before asking: an answer that crosses an announced change is not kept.
    let cached = state.users.as_deref().map(|rows| (rows, rows.epoch(&key)));
    let upstreams = &state.upstreams;
    let response = upstreams
        .user()
        .get_user(upstreams.request(
            &request_id,
            GetUserRequest {
                user_id: principal.user_id,
            },
        ))
        .await?
        .into_inner();
    if let (Some((rows, epoch)), Some(user)) = (cached, &response.user) {
        metrics::counter!("wxmp_user_cache_total", "outcome" => "miss").increment(1);
        // Only the row the principal names (a mismatch would be user-service's bug, not
        // something to keep).
        if user.id == principal.user_id {
            rows.insert(key, user.clone(), rows.ttl(), epoch);
        }
    }
    profile(response.user)
}

/// The body of `/userinfo/` and `/phone/`, in the mini program's own field names.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EncryptedBody {
    /// The session token, when not sent as `Authorization: Bearer`.
    token: Option<String>,
    /// From wx.getUserProfile / getPhoneNumber (`encrypted_data` accepted).
    #[schema(required = true)]
    #[serde(rename = "encryptedData", alias = "encrypted_data")]
    encrypted_data: Option<String>,
    #[schema(required = true)]
    iv: Option<String>,
    /// /userinfo/ only: checked as sha1(rawData + session_key) with `signature`.
    #[serde(rename = "rawData", alias = "raw_data")]
    raw_data: Option<String>,
    signature: Option<String>,
}

/// `POST /userinfo/ {token, encryptedData, iv, rawData?, signature?}` → the stored profile.
#[utoipa::path(post, path = "/userinfo/", tag = "user",
    summary = "Store the decrypted wx.getUserProfile data (user.UpdateProfile)",
    description = "Also served as `/userinfo`. Decrypted with the user's newest session_key.",
    request_body(content = EncryptedBody, content_type = "application/json"),
    security(("bearer" = []), ("body_token" = [])),
    responses(
        (status = 200, description = "code 200", body = Envelope<Profile>),
        (status = 400, description = "201 missing field or token, 203 malformed body, 205 decryption failed", body = ErrorEnvelope),
        (status = 401, description = "202 invalid token", body = ErrorEnvelope),
        (status = 413, description = "204 body too large", body = ErrorEnvelope),
        (status = 503, description = "213 a service unavailable", body = ErrorEnvelope),
    ))]
pub async fn userinfo(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    JsonBody(body): JsonBody<EncryptedBody>,
) -> Result<HttpResponse, ApiError> {
    // No Authenticate here: user-service authenticates the token and gets the session_key in
    // one auth-service call (an unknown token is still 202).
    let token = extract::token(&req, body.token.as_deref())?;
    let encrypted_data = required(&body.encrypted_data, "encryptedData")?.to_owned();
    let iv = required(&body.iv, "iv")?.to_owned();
    let upstreams = &state.upstreams;
    let response = upstreams
        .user()
        .update_profile(upstreams.request(
            &request_id,
            UpdateProfileRequest {
                principal: None,
                token,
                encrypted_data,
                iv,
                raw_data: body.raw_data.unwrap_or_default(),
                signature: body.signature.unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    updated(&state, response.user)
}

/// The body of `/phone/`: the getPhoneNumber button's `code` (base library 2.21.2+), or the
/// old `encryptedData` + `iv`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PhoneBody {
    /// The session token, when not sent as `Authorization: Bearer`.
    token: Option<String>,
    /// The getPhoneNumber button's code (exchanged at WeChat's getuserphonenumber).
    code: Option<String>,
    /// The old form: getPhoneNumber's encryptedData (base64), with `iv`.
    #[serde(rename = "encryptedData", alias = "encrypted_data")]
    encrypted_data: Option<String>,
    iv: Option<String>,
}

/// `POST /phone/ {token, code}` or `{token, encryptedData, iv}` → the profile with the phone
/// number.
#[utoipa::path(post, path = "/phone/", tag = "user",
    summary = "Store the user's phone number from a getPhoneNumber code or its encrypted data (user.UpdatePhoneNumber)",
    description = "Also served as `/phone`.",
    request_body(content = PhoneBody, content_type = "application/json"),
    security(("bearer" = []), ("body_token" = [])),
    responses(
        (status = 200, description = "code 200", body = Envelope<Profile>),
        (status = 400, description = "201 missing field or token, 203 malformed body, 205 decryption failed, 221 invalid or used phone code", body = ErrorEnvelope),
        (status = 401, description = "202 invalid token", body = ErrorEnvelope),
        (status = 413, description = "204 body too large", body = ErrorEnvelope),
        (status = 502, description = "211 WeChat answered an error, 223 the app's credentials are misconfigured", body = ErrorEnvelope),
        (status = 503, description = "212 WeChat unavailable, 222 WeChat busy (retry the code), 213 a service unavailable", body = ErrorEnvelope),
    ))]
pub async fn phone(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    JsonBody(body): JsonBody<PhoneBody>,
) -> Result<HttpResponse, ApiError> {
    // As /userinfo/: user-service authenticates the token (one auth-service call).
    let token = extract::token(&req, body.token.as_deref())?;
    let request = match body.code.as_deref().filter(|c| !c.is_empty()) {
        Some(code) => UpdatePhoneNumberRequest {
            token,
            code: code.to_owned(),
            ..Default::default()
        },
        None => UpdatePhoneNumberRequest {
            principal: None,
            encrypted_data: required(&body.encrypted_data, "code or encryptedData")?.to_owned(),
            iv: required(&body.iv, "iv")?.to_owned(),
            code: String::new(),
            token,
        },
    };
    let upstreams = &state.upstreams;
    let response = upstreams
        .user()
        .update_phone_number(upstreams.request(&request_id, request))
        .await?
        .into_inner();
    updated(&state, response.user)
}
