//! The user's own profile: read it, store the decrypted wx.getUserInfo / getPhoneNumber data.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use wxmp_proto::user::v1::{GetUserRequest, UpdatePhoneNumberRequest, UpdateProfileRequest, User};

use super::{authenticate, required};
use crate::{
    envelope::{ApiError, Code, ok},
    extract::JsonBody,
    request_id::RequestId,
    server::AppState,
};

/// What the mini program may see of its user. Built field by field from the service's `User`,
/// so nothing new in that message (or a session_key) can leak by accident.
#[derive(Debug, Serialize)]
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

/// `GET /me` (token in `Authorization: Bearer`).
pub async fn me(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&state, &request_id, &req, None).await?;
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
    profile(response.user)
}

/// The body of `/userinfo/` and `/phone/`, in the mini program's own field names.
#[derive(Debug, Deserialize)]
pub struct EncryptedBody {
    token: Option<String>,
    #[serde(rename = "encryptedData", alias = "encrypted_data")]
    encrypted_data: Option<String>,
    iv: Option<String>,
    #[serde(rename = "rawData", alias = "raw_data")]
    raw_data: Option<String>,
    signature: Option<String>,
}

/// `POST /userinfo/ {token, encryptedData, iv, rawData?, signature?}` → the stored profile.
pub async fn userinfo(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    JsonBody(body): JsonBody<EncryptedBody>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&state, &request_id, &req, body.token.as_deref()).await?;
    let encrypted_data = required(&body.encrypted_data, "encryptedData")?.to_owned();
    let iv = required(&body.iv, "iv")?.to_owned();
    let upstreams = &state.upstreams;
    let response = upstreams
        .user()
        .update_profile(upstreams.request(
            &request_id,
            UpdateProfileRequest {
                principal: Some(principal),
                encrypted_data,
                iv,
                raw_data: body.raw_data.unwrap_or_default(),
                signature: body.signature.unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    profile(response.user)
}

/// The body of `/phone/`: the getPhoneNumber button's `code` (base library 2.21.2+), or the
/// old `encryptedData` + `iv`.
#[derive(Debug, Deserialize)]
pub struct PhoneBody {
    token: Option<String>,
    code: Option<String>,
    #[serde(rename = "encryptedData", alias = "encrypted_data")]
    encrypted_data: Option<String>,
    iv: Option<String>,
}

/// `POST /phone/ {token, code}` or `{token, encryptedData, iv}` → the profile with the phone
/// number.
pub async fn phone(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    JsonBody(body): JsonBody<PhoneBody>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&state, &request_id, &req, body.token.as_deref()).await?;
    let request = match body.code.as_deref().filter(|c| !c.is_empty()) {
        Some(code) => UpdatePhoneNumberRequest {
            principal: Some(principal),
            code: code.to_owned(),
            ..Default::default()
        },
        None => UpdatePhoneNumberRequest {
            principal: Some(principal),
            encrypted_data: required(&body.encrypted_data, "code or encryptedData")?.to_owned(),
            iv: required(&body.iv, "iv")?.to_owned(),
            code: String::new(),
        },
    };
    let upstreams = &state.upstreams;
    let response = upstreams
        .user()
        .update_phone_number(upstreams.request(&request_id, request))
        .await?
        .into_inner();
    profile(response.user)
}
