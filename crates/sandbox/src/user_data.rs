//! `POST /sandbox/user-data`: plays `wx.getUserProfile` / `getPhoneNumber`, producing the
//! `encryptedData`/`iv` (and `rawData`/`signature`) WeChat would hand the mini program.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    clock,
    dev_error::{DevError, parse_body},
    ids,
    state::Sandbox,
    wx,
};

/// The gray avatar WeChat gives users who share no picture.
const DEFAULT_AVATAR: &str = "https://thirdwx.qlogo.cn/mmopen/vi_32/POgEwh4mIHO4nibH0KlMECNjjGxQUq24ZEaGT4poC6icRiccVGKSyXwibcPq4BWmiaIGuG1icwxaQX6grC9VemZoJ8rg/132";

/// A user profile with WeChat's field names. Field order is rawData's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    pub nick_name: String,
    /// 0 unknown, 1 male, 2 female.
    pub gender: u8,
    pub language: String,
    pub city: String,
    pub province: String,
    pub country: String,
    pub avatar_url: String,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            nick_name: "微信用户".into(),
            gender: 0,
            language: "zh_CN".into(),
            city: String::new(),
            province: String::new(),
            country: String::new(),
            avatar_url: DEFAULT_AVATAR.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserDataKind {
    #[default]
    Userinfo,
    Phone,
}

/// Body of `POST /sandbox/user-data`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserDataRequest {
    /// Default: the first configured app.
    pub appid: Option<String>,
    /// Required: a user who logged in (jscode2session) at least once.
    pub openid: String,
    pub profile: Option<Profile>,
    pub kind: UserDataKind,
    /// For `kind: "phone"`: the number without country code (default: a random 139 number).
    pub phone: Option<String>,
    /// For `kind: "phone"`: default "86".
    #[serde(rename = "countryCode")]
    pub country_code: Option<String>,
}

/// Answer of `POST /sandbox/user-data`. `rawData` and `signature` come with userinfo only,
/// as in WeChat (getPhoneNumber gives neither).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserData {
    pub encrypted_data: String,
    pub iv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

fn random_phone() -> String {
    format!("139{:08}", rand::random_range(0..100_000_000u32))
}

/// `POST /sandbox/user-data`.
pub async fn user_data(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let req: UserDataRequest = parse_body(&body)?;
    if req.openid.is_empty() {
        return Err(DevError::BadRequest("openid is required".into()));
    }
    let appid = match req.appid.as_deref() {
        Some(appid) => sandbox
            .app(appid)
            .ok_or_else(|| DevError::UnknownApp(appid.to_owned()))?,
        None => sandbox.default_app(),
    }
    .appid
    .clone();
    let (session_key, unionid) = {
        let state = sandbox.state();
        let user = state
            .users
            .get(&(appid.clone(), req.openid.clone()))
            .ok_or_else(|| DevError::UnknownUser {
                appid: appid.clone(),
                openid: req.openid.clone(),
            })?;
        let key = user
            .session_key
            .clone()
            .ok_or_else(|| DevError::NotLoggedIn {
                appid: appid.clone(),
                openid: req.openid.clone(),
            })?;
        (key, user.unionid.clone())
    };
    let watermark = json!({ "timestamp": clock::unix_secs(), "appid": appid });

    let (plain, raw_data) = match req.kind {
        UserDataKind::Userinfo => {
            let profile = req.profile.unwrap_or_default();
            let raw =
                serde_json::to_string(&profile).map_err(|e| DevError::Internal(e.to_string()))?;
            let plain = json!({
                "openId": req.openid,
                "nickName": profile.nick_name,
                "gender": profile.gender,
                "language": profile.language,
                "city": profile.city,
                "province": profile.province,
                "country": profile.country,
                "avatarUrl": profile.avatar_url,
                "unionId": unionid,
                "watermark": watermark,
            });
            (plain, Some(raw))
        }
        UserDataKind::Phone => {
            let pure = req.phone.unwrap_or_else(random_phone);
            let cc = req.country_code.unwrap_or_else(|| "86".into());
            if pure.is_empty()
                || !pure.bytes().all(|b| b.is_ascii_digit())
                || !cc.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(DevError::BadRequest(
                    "phone and countryCode must be digits".into(),
                ));
            }
            // Numbers outside mainland China carry their country code.
            let full = if cc == "86" {
                pure.clone()
            } else {
                format!("+{cc} {pure}")
            };
            let plain = json!({
                "phoneNumber": full,
                "purePhoneNumber": pure,
                "countryCode": cc,
                "watermark": watermark,
            });
            (plain, None)
        }
    };

    let iv = ids::iv();
    let encrypted_data = wx::encrypt(&session_key, &iv, plain.to_string().as_bytes())
        .map_err(|e| DevError::Internal(format!("encrypt: {e}")))?;
    let signature = raw_data
        .as_deref()
        .map(|raw| wx::raw_data_signature(raw, &session_key));
    Ok(HttpResponse::Ok().json(UserData {
        encrypted_data,
        iv,
        raw_data,
        signature,
    }))
}
