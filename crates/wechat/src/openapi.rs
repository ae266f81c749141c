//! WeChat server APIs beyond login: `stable_token`, and the calls that carry an
//! `access_token` (phone number by code, subscribe messages).
//!
//! A caller never fetches its own token for these: auth-service owns the one shared token
//! per app (see ARCHITECTURE.md). On [`ApiError::is_token_rejected`] the caller asks it for a
//! forced refresh and retries once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::{AccessToken, ApiError, parse_json};
use crate::client::WechatClient;
use crate::config::join;
use crate::http;

/// `phone_info` of `getuserphonenumber`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PhoneInfo {
    /// With the country code for foreign numbers, e.g. "+1 2025550123"; else as pure.
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    /// Without the country code.
    #[serde(rename = "purePhoneNumber")]
    pub pure_phone_number: String,
    #[serde(rename = "countryCode", deserialize_with = "string_or_number")]
    pub country_code: String,
}

/// WeChat documents countryCode as a string but some answers carry a number.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        N(i64),
    }
    Ok(match V::deserialize(d)? {
        V::S(s) => s,
        V::N(n) => n.to_string(),
    })
}

/// One subscribe message (`subscribeMessage.send`): `data` maps a template keyword (e.g.
/// `amount1`) to its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubscribeMessage {
    pub touser: String,
    pub template_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// `developer`, `trial` or `formal` (WeChat's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miniprogram_state: Option<String>,
    #[serde(serialize_with = "as_values")]
    pub data: BTreeMap<String, String>,
}

/// `{"thing1": "x"}` → `{"thing1": {"value": "x"}}`, WeChat's shape.
fn as_values<S: serde::Serializer>(
    data: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Value<'a> {
        value: &'a str,
    }
    s.collect_map(data.iter().map(|(k, v)| (k, Value { value: v })))
}

#[derive(Deserialize)]
struct Errcode {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    access_token: Option<String>,
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct PhoneAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    phone_info: Option<PhoneInfo>,
}

impl WechatClient {
    /// POSTs `body` as JSON to `path` (with `access_token` in the query when given).
    pub(crate) async fn post_json<B: Serialize>(
        &self,
        path: &str,
        access_token: Option<&str>,
        body: &B,
    ) -> Result<Vec<u8>, ApiError> {
        let mut req = self.http().post(join(&self.config().api_base, path));
        if let Some(token) = access_token {
            req = req.query(&[("access_token", token)]);
        }
        let resp = req
            .json(body)
            .send()
            .await
            .map_err(|e| ApiError::Transport(http::describe(&e)))?;
        Ok(http::read_body(resp).await?)
    }

    /// `POST {api_base}/cgi-bin/stable_token`: the app's stable access token. In normal mode
    /// WeChat answers the same token while it is valid (renewing it in its last 5 minutes);
    /// `force_refresh` invalidates it and is limited to 20 a day, 30 s apart.
    pub async fn stable_token(
        &self,
        appid: &str,
        secret: &str,
        force_refresh: bool,
    ) -> Result<AccessToken, ApiError> {
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": appid,
            "secret": secret,
            "force_refresh": force_refresh,
        });
        let body: TokenAnswer =
            parse_json(&self.post_json("/cgi-bin/stable_token", None, &body).await?)?;
        if body.errcode != 0 {
            return Err(ApiError::from_errcode(body.errcode, body.errmsg));
        }
        let access_token = body
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::BadResponse("missing access_token".into()))?;
        let expires_in = body
            .expires_in
            .filter(|e| *e > 0)
            .ok_or_else(|| ApiError::BadResponse("missing expires_in".into()))?;
        Ok(AccessToken {
            access_token,
            expires_in,
        })
    }

    /// `POST {api_base}/wxa/business/getuserphonenumber?access_token=` with the code of a
    /// getPhoneNumber button. 40029 (invalid or used code) is [`ApiError::InvalidCode`].
    pub async fn phone_number(
        &self,
        access_token: &str,
        code: &str,
    ) -> Result<PhoneInfo, ApiError> {
        if code.is_empty() {
            return Err(ApiError::InvalidCode);
        }
        let body = serde_json::json!({ "code": code });
        let body: PhoneAnswer = parse_json(
            &self
                .post_json(
                    "/wxa/business/getuserphonenumber",
                    Some(access_token),
                    &body,
                )
                .await?,
        )?;
        if body.errcode != 0 {
            return Err(ApiError::from_errcode(body.errcode, body.errmsg));
        }
        body.phone_info
            .ok_or_else(|| ApiError::BadResponse("missing phone_info".into()))
    }

    /// `POST {api_base}/cgi-bin/message/subscribe/send?access_token=`. 43101 (the user did
    /// not subscribe, or used up the one-off subscription) comes back as
    /// [`ApiError::Other`] with that errcode.
    pub async fn send_subscribe_message(
        &self,
        access_token: &str,
        message: &SubscribeMessage,
    ) -> Result<(), ApiError> {
        let body: Errcode = parse_json(
            &self
                .post_json(
                    "/cgi-bin/message/subscribe/send",
                    Some(access_token),
                    message,
                )
                .await?,
        )?;
        if body.errcode != 0 {
            return Err(ApiError::from_errcode(body.errcode, body.errmsg));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_data_is_wrapped_in_values() {
        let m = SubscribeMessage {
            touser: "o1".into(),
            template_id: "T".into(),
            page: None,
            miniprogram_state: None,
            data: [("amount1".to_owned(), "9.90".to_owned())].into(),
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["data"]["amount1"]["value"], "9.90");
        assert!(json.get("page").is_none());
    }

    #[test]
    fn country_code_may_be_a_number() {
        let p: PhoneInfo = serde_json::from_str(
            r#"{"phoneNumber":"13800138000","purePhoneNumber":"13800138000","countryCode":86}"#,
        )
        .unwrap();
        assert_eq!(p.country_code, "86");
    }
}
