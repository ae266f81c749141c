//! The `wxmp.auth.v1.AuthService` handlers.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use service_kit::{
    announce::Announcer,
    grpc::{AttachToken, forward},
    session_cache::LoginKey,
};
use tonic::{
    Request, Response, Status, metadata::MetadataMap, service::interceptor::InterceptedService,
    transport::Channel,
};
use wechat::WechatClient;
use wxmp_proto::{
    auth::v1::{
        AuthenticateRequest, AuthenticateResponse, AuthenticateWithSessionKeyResponse,
        GetAccessTokenRequest, GetAccessTokenResponse, GetSessionKeyRequest, GetSessionKeyResponse,
        LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, Principal, auth_service_server,
    },
    user::v1::{EnsureUserRequest, user_service_client::UserServiceClient},
};

use crate::{
    access_token::{AccessTokens, AnyTokenCache, Want},
    config::Apps,
    error::Error,
    meter,
    store::{SessionRecord, SessionStore},
    token,
};

/// user-service's client as auth-service uses it: one lazy channel, the internal token attached.
pub type UserClient = UserServiceClient<InterceptedService<Channel, AttachToken>>;

/// Longest login code passed on to WeChat; real ones are 32 characters.
const MAX_CODE_LEN: usize = 256;
/// Longest app id or openid accepted from a caller; real ones are 18 and 28 characters.
const MAX_ID_LEN: usize = 128;

/// The service. Cheap to clone per connection: the store and clients are shared.
pub struct Auth<S> {
    apps: Apps,
    wechat: WechatClient,
    users: UserClient,
    store: Arc<S>,
    session_ttl: Duration,
    access_tokens: Option<Arc<AccessTokens<AnyTokenCache>>>,
    /// Each completed login's user is announced: its session_key may have rotated, which
    /// user-service's session cache must hear of.
    logins: Announcer<LoginKey>,
}

impl<S: SessionStore> Auth<S> {
    pub fn new(
        apps: Apps,
        wechat: WechatClient,
        users: UserClient,
        store: Arc<S>,
        session_ttl: Duration,
    ) -> Self {
        Self {
            apps,
            wechat,
            users,
            store,
            session_ttl,
            access_tokens: None,
            logins: Announcer::local(),
        }
    }

    /// Announces logins through `logins` (by default on the in-process feed only).
    pub fn with_logins(mut self, logins: Announcer<LoginKey>) -> Self {
        self.logins = logins;
        self
    }

    /// Serves GetAccessToken from `tokens` (without them it answers INTERNAL).
    pub fn with_access_tokens(mut self, tokens: Arc<AccessTokens<AnyTokenCache>>) -> Self {
        self.access_tokens = Some(tokens);
        self
    }

    async fn get_access_token(
        &self,
        req: GetAccessTokenRequest,
    ) -> Result<GetAccessTokenResponse, Error> {
        if req.app_id.len() > MAX_ID_LEN {
            return Err(Error::UnknownApp(shorten(&req.app_id)));
        }
        let tokens = self
            .access_tokens
            .as_ref()
            .ok_or_else(|| Error::Internal("access tokens are not configured".into()))?;
        let token = tokens
            .get(
                &req.app_id,
                Want {
                    force_refresh: req.force_refresh,
                    stale_generation: req.stale_generation,
                },
            )
            .await?;
        Ok(GetAccessTokenResponse {
            access_token: token.access_token,
            expires_in: secs(token.expires_in),
            generation: token.generation,
            app_id: token.app_id,
        })
    }

    async fn login(
        &self,
        metadata: &MetadataMap,
        req: LoginRequest,
    ) -> Result<LoginResponse, Error> {
        if req.code.is_empty() {
            return Err(Error::MissingParameter("code"));
        }
        if req.code.len() > MAX_CODE_LEN {
            return Err(Error::InvalidCode);
        }
        let app = self
            .apps
            .resolve(&req.app_id)
            .ok_or_else(|| Error::UnknownApp(shorten(&req.app_id)))?;

        let started = Instant::now();
        let session = self
            .wechat
            .code2session(&app.app_id, app.secret.expose(), &req.code)
            .await;
        meter::code2session(session.as_ref().map(drop), started.elapsed());
        let session = session?;
        let answered_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));

        // WeChat has just rotated the key, so from now on only this one decrypts what the phone
        // sends, whether or not the login completes: it is stored in any case, while
        // user-service is asked for the user at the same time (the two are independent; doing
        // them one after the other only added a Redis round trip to every login).
        let unionid = session.unionid.unwrap_or_default();
        let store_key = self.store.put_session_key(
            &app.app_id,
            &session.openid,
            &session.session_key,
            answered_at_ms,
            self.session_ttl,
        );
        let mut users = self.users.clone();
        let ensure = users.ensure_user(forward(
            metadata,
            EnsureUserRequest {
                app_id: app.app_id.clone(),
                openid: session.openid.clone(),
                unionid: unionid.clone(),
            },
        ));
        let (stored, ensured) = tokio::join!(store_key, ensure);
        stored?;
        let ensured = ensured.map_err(Error::UserService)?.into_inner();
        let user = ensured
            .user
            .ok_or_else(|| Error::Internal("EnsureUser answered without a user".into()))?;
        // After the key is stored: whoever hears this and asks again gets the new key.
        self.logins.announce(LoginKey(user.id));

        let token =
            token::generate().map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let record = SessionRecord {
            user_id: user.id,
            app_id: app.app_id.clone(),
            openid: session.openid,
            // WeChat's answer wins; user-service may know it from an earlier login.
            unionid: if unionid.is_empty() {
                user.unionid
            } else {
                unionid
            },
        };
        self.store
            .put_session(&token::hash(&token), &record, self.session_ttl)
            .await?;
        tracing::info!(user_id = record.user_id, app_id = %record.app_id, new_user = ensured.created, "login");
        Ok(LoginResponse {
            token,
            expires_in: secs(self.session_ttl),
            principal: Some(principal(record)),
            new_user: ensured.created,
        })
    }

    /// The live session of `token` and its remaining lifetime; InvalidToken when there is none.
    async fn live_session(&self, token: &str) -> Result<(SessionRecord, Duration), Error> {
        if !token::is_well_formed(token) {
            return Err(Error::InvalidToken);
        }
        self.store
            .get_session(&token::hash(token))
            .await?
            .ok_or(Error::InvalidToken)
    }

    async fn authenticate(&self, req: AuthenticateRequest) -> Result<AuthenticateResponse, Error> {
        let (record, remaining) = self.live_session(&req.token).await?;
        Ok(AuthenticateResponse {
            principal: Some(principal(record)),
            expires_in: secs(remaining),
        })
    }

    /// Authenticate and GetSessionKey in one call (for user-service): the token's principal
    /// and the newest session_key of its (app_id, openid), empty when none is live.
    async fn authenticate_with_session_key(
        &self,
        req: AuthenticateRequest,
    ) -> Result<AuthenticateWithSessionKeyResponse, Error> {
        let (record, remaining) = self.live_session(&req.token).await?;
        let session_key = self
            .store
            .get_session_key(&record.app_id, &record.openid)
            .await?
            .unwrap_or_default();
        Ok(AuthenticateWithSessionKeyResponse {
            principal: Some(principal(record)),
            expires_in: secs(remaining),
            session_key,
        })
    }

    async fn logout(&self, req: LogoutRequest) -> Result<LogoutResponse, Error> {
        // A token we could never have issued is simply not revoked.
        if !token::is_well_formed(&req.token) {
            return Ok(LogoutResponse { revoked: false });
        }
        let revoked = self.store.delete_session(&token::hash(&req.token)).await?;
        if revoked {
            // The Redis store announced it to every replica; this reaches the caches of the
            // embedded default (one process), and costs nothing elsewhere.
            service_kit::session_cache::announce_local(service_kit::session_cache::TokenKey::of(
                &req.token,
            ));
        }
        Ok(LogoutResponse { revoked })
    }

    async fn get_session_key(
        &self,
        req: GetSessionKeyRequest,
    ) -> Result<GetSessionKeyResponse, Error> {
        if req.app_id.is_empty() {
            return Err(Error::MissingParameter("app_id"));
        }
        if req.openid.is_empty() {
            return Err(Error::MissingParameter("openid"));
        }
        if req.app_id.len() > MAX_ID_LEN || req.openid.len() > MAX_ID_LEN {
            return Err(Error::NotFound);
        }
        let session_key = self
            .store
            .get_session_key(&req.app_id, &req.openid)
            .await?
            .ok_or(Error::NotFound)?;
        Ok(GetSessionKeyResponse { session_key })
    }
}

fn principal(r: SessionRecord) -> Principal {
    Principal {
        user_id: r.user_id,
        app_id: r.app_id,
        openid: r.openid,
        unionid: r.unionid,
    }
}

/// Whole seconds, rounded up: a live token never reports 0.
fn secs(d: Duration) -> i64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// A caller-given id cut short enough to quote in an error message.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

#[tonic::async_trait]
impl<S: SessionStore> auth_service_server::AuthService for Auth<S> {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let result = Auth::login(self, &metadata, req).await;
        meter::login(result.as_ref().map(drop).map_err(Error::reason));
        Ok(Response::new(result?))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Ok(Response::new(
            Auth::authenticate(self, request.into_inner()).await?,
        ))
    }

    async fn authenticate_with_session_key(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateWithSessionKeyResponse>, Status> {
        Ok(Response::new(
            Auth::authenticate_with_session_key(self, request.into_inner()).await?,
        ))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        Ok(Response::new(
            Auth::logout(self, request.into_inner()).await?,
        ))
    }

    async fn get_session_key(
        &self,
        request: Request<GetSessionKeyRequest>,
    ) -> Result<Response<GetSessionKeyResponse>, Status> {
        Ok(Response::new(
            Auth::get_session_key(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(app_id = %request.get_ref().app_id, force = request.get_ref().force_refresh))]
    async fn get_access_token(
        &self,
        request: Request<GetAccessTokenRequest>,
    ) -> Result<Response<GetAccessTokenResponse>, Status> {
        Ok(Response::new(
            Auth::get_access_token(self, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(7)), 7);
        assert_eq!(secs(Duration::ZERO), 0);
    }
}
