//! Where the user's latest `session_key` comes from: auth-service's `GetSessionKey` (for a
//! caller named by its principal), or `AuthenticateWithSessionKey` (for a caller named by its
//! session token: who it is and the key in one auth-service call).
//!
//! Behind a trait so the service logic can be tested with keys held in memory as well as
//! over the wire.

use std::{future::Future, time::Duration};

use service_kit::{
    Secret,
    grpc::{AttachToken, forward},
    reason::reason_of,
};
use tonic::{metadata::MetadataMap, service::interceptor::InterceptedService, transport::Channel};
use wxmp_proto::auth::v1::{
    AuthenticateRequest, GetSessionKeyRequest, Principal, auth_service_client::AuthServiceClient,
};

use crate::Error;

/// A source of users' newest session keys.
pub trait SessionKeys: Send + Sync + 'static {
    /// The newest session_key of (app_id, openid); `Ok(None)` when the user has no live
    /// session. `incoming` is the metadata of the call being served (for the request id).
    fn session_key(
        &self,
        incoming: &MetadataMap,
        app_id: &str,
        openid: &str,
    ) -> impl Future<Output = Result<Option<Secret>, Error>> + Send;

    /// The principal of a session token and the newest session_key of its (app_id, openid)
    /// (`None` when none is live), in one call. An unknown or expired token is
    /// [`Error::InvalidToken`].
    fn authenticate(
        &self,
        incoming: &MetadataMap,
        token: &str,
    ) -> impl Future<Output = Result<Session, Error>> + Send;
}

/// What `AuthenticateWithSessionKey` answers for a live session token.
#[derive(Clone, Debug)]
pub struct Session {
    pub principal: Principal,
    /// The newest session_key of the principal's (app_id, openid); `None` when none is live.
    pub session_key: Option<Secret>,
    /// How long the session still lives (whole seconds, rounded up by auth-service).
    pub expires_in: Duration,
}

/// auth-service over gRPC, on one lazily connected channel cloned per call.
#[derive(Clone, Debug)]
pub struct AuthSessionKeys {
    client: AuthServiceClient<InterceptedService<Channel, AttachToken>>,
}

impl AuthSessionKeys {
    /// A client of auth-service at `url`; nothing is connected until the first call.
    pub fn new(url: &str, timeout: Duration, token: Option<&Secret>) -> Result<Self, Error> {
        Self::new_tls(url, timeout, token, None)
    }

    /// [`AuthSessionKeys::new`], over mutual TLS when `tls` is given.
    pub fn new_tls(
        url: &str,
        timeout: Duration,
        token: Option<&Secret>,
        tls: Option<&service_kit::grpc::GrpcTls>,
    ) -> Result<Self, Error> {
        let channel = service_kit::grpc::channel_tls(url, timeout, timeout, tls)
            .map_err(|e| Error::Config(format!("USER_AUTH_SERVICE_URL {url:?}: {e}")))?;
        Ok(Self {
            client: AuthServiceClient::with_interceptor(channel, AttachToken::new(token)),
        })
    }
}

impl SessionKeys for AuthSessionKeys {
    async fn session_key(
        &self,
        incoming: &MetadataMap,
        app_id: &str,
        openid: &str,
    ) -> Result<Option<Secret>, Error> {
        let request = forward(
            incoming,
            GetSessionKeyRequest {
                app_id: app_id.to_owned(),
                openid: openid.to_owned(),
            },
        );
        match self.client.clone().get_session_key(request).await {
            Ok(response) => {
                let key = response.into_inner().session_key;
                Ok((!key.is_empty()).then(|| Secret::new(key)))
            }
            // NOT_FOUND: the user has no live session (logged out, or it expired).
            Err(status) if reason_of(&status) == service_kit::ErrorReason::NotFound => Ok(None),
            Err(status) => Err(Error::AuthService(status)),
        }
    }

    async fn authenticate(&self, incoming: &MetadataMap, token: &str) -> Result<Session, Error> {
        let request = forward(
            incoming,
            AuthenticateRequest {
                token: token.to_owned(),
            },
        );
        match self
            .client
            .clone()
            .authenticate_with_session_key(request)
            .await
        {
            Ok(response) => {
                let answer = response.into_inner();
                let principal = answer.principal.ok_or_else(|| {
                    Error::AuthService(tonic::Status::internal("answered without a principal"))
                })?;
                let key = answer.session_key;
                Ok(Session {
                    principal,
                    session_key: (!key.is_empty()).then(|| Secret::new(key)),
                    expires_in: Duration::from_secs(u64::try_from(answer.expires_in).unwrap_or(0)),
                })
            }
            Err(status) if reason_of(&status) == service_kit::ErrorReason::InvalidToken => {
                Err(Error::InvalidToken)
            }
            Err(status) => Err(Error::AuthService(status)),
        }
    }
}
