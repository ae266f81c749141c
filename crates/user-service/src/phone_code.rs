//! Phone number by code: the code of a getPhoneNumber button is exchanged at WeChat's
//! `getuserphonenumber` with the app's shared access_token from auth-service
//! (`GetAccessToken`). user-service never fetches a token itself: a second fetcher would
//! break the token every other service holds.

use std::time::Duration;

use service_kit::{
    Secret,
    grpc::{AttachToken, forward},
};
use tonic::{metadata::MetadataMap, service::interceptor::InterceptedService, transport::Channel};
use wechat::WechatClient;
use wxmp_proto::auth::v1::{GetAccessTokenRequest, auth_service_client::AuthServiceClient};

use crate::{Error, store::PhoneChanges};

/// Longest code passed on to WeChat (real ones are 32-64 characters).
pub const MAX_PHONE_CODE: usize = 256;

/// auth-service (for the token) and WeChat (for the number).
#[derive(Clone, Debug)]
pub struct PhoneCodes {
    auth: AuthServiceClient<InterceptedService<Channel, AttachToken>>,
    wechat: WechatClient,
}

impl PhoneCodes {
    /// Nothing is connected until the first call.
    pub fn new(
        auth_url: &str,
        rpc_timeout: Duration,
        internal_token: Option<&Secret>,
        wechat: &service_kit::settings::WechatApi,
    ) -> Result<Self, Error> {
        let channel = service_kit::grpc::channel(auth_url, rpc_timeout, rpc_timeout)
            .map_err(|e| Error::Config(format!("USER_AUTH_SERVICE_URL {auth_url:?}: {e}")))?;
        let wechat = wechat.client().map_err(Error::Config)?;
        Ok(Self {
            auth: AuthServiceClient::with_interceptor(channel, AttachToken::new(internal_token)),
            wechat,
        })
    }

    async fn token(
        &self,
        incoming: &MetadataMap,
        app_id: &str,
        stale_generation: Option<i64>,
    ) -> Result<(String, i64), Error> {
        let request = forward(
            incoming,
            GetAccessTokenRequest {
                app_id: app_id.to_owned(),
                force_refresh: stale_generation.is_some(),
                stale_generation: stale_generation.unwrap_or(0),
            },
        );
        let t = self
            .auth
            .clone()
            .get_access_token(request)
            .await
            .map_err(Error::AccessToken)?
            .into_inner();
        Ok((t.access_token, t.generation))
    }

    /// The phone number behind `code`, for the user's app. A token WeChat rejects (another
    /// holder refreshed it, or it expired) is force-refreshed once and the call retried once.
    pub async fn exchange(
        &self,
        incoming: &MetadataMap,
        app_id: &str,
        code: &str,
    ) -> Result<PhoneChanges, Error> {
        if code.len() > MAX_PHONE_CODE {
            return Err(Error::PhoneCodeInvalid);
        }
        let (token, generation) = self.token(incoming, app_id, None).await?;
        let answer = match self.wechat.phone_number(&token, code).await {
            Err(e) if e.is_token_rejected() => {
                tracing::info!(errcode = ?e.errcode(), "access_token rejected; refreshing once");
                let (token, _) = self.token(incoming, app_id, Some(generation)).await?;
                self.wechat.phone_number(&token, code).await
            }
            other => other,
        };
        let phone = answer.map_err(Error::from_phone_api)?;
        Ok(PhoneChanges {
            phone: phone.pure_phone_number,
            phone_country_code: phone.country_code,
            phone_number: phone.phone_number,
        })
    }
}
