//! `wxmp.user.v1.UserService` on top of the store, the session-key source and the decryption
//! checks.

use std::sync::Arc;

use service_kit::{Secret, announce::Announcer, session_cache::UserKey};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use wxmp_proto::{auth::v1::Principal, user::v1 as pb};

use crate::{
    Error,
    decrypt::{Sealed, Signed, open_phone, open_profile},
    error::DecryptCause,
    phone_code::PhoneCodes,
    session_keys::SessionKeys,
    sessions::{Rotations, SessionAnswers, Sessions},
    store::{Owner, Users},
};

/// Longest accepted appid / openid / unionid (WeChat's are 18 and 28 characters).
const MAX_ID: usize = 128;
/// Longest session token passed on to auth-service (real ones are 43 characters).
const MAX_TOKEN: usize = 128;

/// The gRPC service. `K` is where session keys come from: auth-service in production.
#[derive(Clone, Debug)]
pub struct Service<K> {
    users: Users,
    sessions: Sessions<K>,
    phones: Option<PhoneCodes>,
    /// Every user whose row changed is announced: the gateways cache rows for `GET /me`.
    changes: Announcer<UserKey>,
}

/// Who calls, and what is known of their session_key so far.
struct Caller {
    principal: Principal,
    key: Known,
}

enum Known {
    /// A principal given by the caller: the key is asked for by (app_id, openid).
    Ask,
    /// auth-service's answer for the token, just now.
    Fresh(Option<Secret>),
    /// The session cache's answer for the token: may predate a newer login's key.
    Cached(Option<Secret>),
}

impl<K: SessionKeys> Service<K> {
    pub fn new(users: Users, keys: K) -> Self {
        Self {
            users,
            sessions: Sessions::new(keys, None),
            phones: None,
            changes: Announcer::local(),
        }
    }

    /// Announces changed users through `changes` (by default on the in-process feed only).
    pub fn with_announcer(mut self, changes: Announcer<UserKey>) -> Self {
        self.changes = changes;
        self
    }

    /// Reuses auth-service's answers for tokens through `cache` (see [`crate::sessions`]);
    /// whoever made it keeps its revocation feed followed.
    pub fn with_session_cache(mut self, cache: Arc<SessionAnswers>) -> Self {
        self.sessions.cache = Some(cache);
        self
    }

    /// Asks auth-service again for a cached answer kept before its user's latest login, as
    /// `rotations` (which whoever made it keeps following) marks them.
    pub fn with_rotations(mut self, rotations: Arc<Rotations>) -> Self {
        self.sessions.rotations = Some(rotations);
        self
    }

    /// Enables UpdatePhoneNumber with a `code` (without, such calls answer INTERNAL).
    pub fn with_phone_codes(mut self, phones: PhoneCodes) -> Self {
        self.phones = Some(phones);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::user_service_server::UserServiceServer<Self> {
        pb::user_service_server::UserServiceServer::new(self)
    }

    /// Who calls: the session token's owner (auth-service's `AuthenticateWithSessionKey`, or
    /// the session cache's copy of its answer), or the principal a caller authenticated
    /// itself (the key is asked for separately, only once the input passed its checks).
    async fn caller(
        &self,
        metadata: &MetadataMap,
        token: &str,
        principal: Option<&Principal>,
    ) -> Result<Caller, Error> {
        if token.is_empty() {
            return Ok(Caller {
                principal: check_principal(principal)?.clone(),
                key: Known::Ask,
            });
        }
        // Real tokens are 43 characters; a longer one is never sent on.
        if token.len() > MAX_TOKEN {
            return Err(Error::InvalidToken);
        }
        let answer = self.sessions.authenticate(metadata, token).await?;
        let session = answer.session;
        // auth-service answers complete principals; anything else is its failure.
        check_principal(Some(&session.principal)).map_err(|_| {
            Error::AuthService(Status::internal("answered an incomplete principal"))
        })?;
        Ok(Caller {
            principal: session.principal,
            key: if answer.cached {
                Known::Cached(session.session_key)
            } else {
                Known::Fresh(session.session_key)
            },
        })
    }

    /// Opens a payload with the caller's newest key: `open` runs with the key and the
    /// principal. A payload that fails to open with a cached key is opened once more with
    /// auth-service's answer now (a login since the answer was cached rotates the key).
    async fn open<T>(
        &self,
        metadata: &MetadataMap,
        token: &str,
        caller: Caller,
        open: impl Fn(&Secret, &Principal) -> Result<T, DecryptCause>,
    ) -> Result<(Principal, T), Error> {
        let Caller { principal, key } = caller;
        let (key, cached) = match key {
            Known::Ask => (
                self.sessions
                    .keys()
                    .session_key(metadata, &principal.app_id, &principal.openid)
                    .await?,
                false,
            ),
            Known::Fresh(key) => (key, false),
            Known::Cached(key) => (key, true),
        };
        let opened = key
            .ok_or(DecryptCause::NoSessionKey)
            .and_then(|key| open(&key, &principal));
        match opened {
            Ok(value) => Ok((principal, value)),
            Err(_) if cached => {
                let session = self.sessions.refresh(metadata, token).await?;
                check_principal(Some(&session.principal)).map_err(|_| {
                    Error::AuthService(Status::internal("answered an incomplete principal"))
                })?;
                let key = session.session_key.ok_or(DecryptCause::NoSessionKey)?;
                let value = open(&key, &session.principal)?;
                Ok((session.principal, value))
            }
            Err(cause) => Err(cause.into()),
        }
    }

    async fn store_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<pb::User, Error> {
        let (metadata, _, body) = request.into_parts();
        let caller = self
            .caller(&metadata, &body.token, body.principal.as_ref())
            .await?;
        let sealed = Sealed::new(&body.encrypted_data, &body.iv)?;
        let signed = Signed::new(&body.raw_data, &body.signature)?;
        let (principal, changes) = self
            .open(&metadata, &body.token, caller, |key, p| {
                open_profile(key, sealed, signed, &p.app_id, &p.openid)
            })
            .await?;
        let user = self
            .users
            .update_profile(owner(&principal), &changes)
            .await?
            .ok_or(Error::NotFound)?;
        self.changes.announce(UserKey(user.id));
        tracing::info!(user_id = user.id, "profile stored");
        Ok(user.into())
    }

    async fn store_phone(
        &self,
        request: Request<pb::UpdatePhoneNumberRequest>,
    ) -> Result<pb::User, Error> {
        let (metadata, _, body) = request.into_parts();
        let caller = self
            .caller(&metadata, &body.token, body.principal.as_ref())
            .await?;
        let (principal, changes) = if body.code.is_empty() {
            let sealed = Sealed::new(&body.encrypted_data, &body.iv)?;
            self.open(&metadata, &body.token, caller, |key, p| {
                open_phone(key, sealed, &p.app_id)
            })
            .await?
        } else {
            let changes = self
                .phones
                .as_ref()
                .ok_or(Error::PhoneCodesOff)?
                .exchange(&metadata, &caller.principal.app_id, &body.code)
                .await?;
            (caller.principal, changes)
        };
        let user = self
            .users
            .update_phone(owner(&principal), &changes)
            .await?
            .ok_or(Error::NotFound)?;
        self.changes.announce(UserKey(user.id));
        tracing::info!(user_id = user.id, "phone number stored");
        Ok(user.into())
    }
}

/// The authenticated caller, complete: every update is keyed on all three fields.
fn check_principal(principal: Option<&Principal>) -> Result<&Principal, Error> {
    match principal {
        Some(p) if p.user_id > 0 && !p.app_id.is_empty() && !p.openid.is_empty() => Ok(p),
        _ => Err(Error::MissingParameter("principal")),
    }
}

fn owner(p: &Principal) -> Owner<'_> {
    Owner {
        user_id: p.user_id,
        app_id: &p.app_id,
        openid: &p.openid,
    }
}

fn check_id(name: &'static str, value: &str, required: bool) -> Result<(), Error> {
    if required && value.is_empty() {
        return Err(Error::MissingParameter(name));
    }
    if value.len() > MAX_ID {
        return Err(Error::InvalidArgument(format!(
            "{name} is longer than {MAX_ID} bytes"
        )));
    }
    Ok(())
}

/// Counts an update's outcome under `metric{result}`.
fn count<T>(metric: &'static str, result: &Result<T, Error>) {
    let label = match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.reason().as_str_name().to_ascii_lowercase(),
    };
    metrics::counter!(metric, "result" => label).increment(1);
}

#[tonic::async_trait]
impl<K: SessionKeys> pb::user_service_server::UserService for Service<K> {
    async fn ensure_user(
        &self,
        request: Request<pb::EnsureUserRequest>,
    ) -> Result<Response<pb::EnsureUserResponse>, Status> {
        let body = request.into_inner();
        check_id("app_id", &body.app_id, true)?;
        check_id("openid", &body.openid, true)?;
        check_id("unionid", &body.unionid, false)?;
        let (user, created) = self
            .users
            .ensure(&body.app_id, &body.openid, &body.unionid)
            .await
            .map_err(Error::from)?;
        if created {
            metrics::counter!("wxmp_users_created_total").increment(1);
            tracing::info!(user_id = user.id, "user created");
        } else if !body.unionid.is_empty() {
            // An existing row may just have learned its unionid.
            self.changes.announce(UserKey(user.id));
        }
        Ok(Response::new(pb::EnsureUserResponse {
            user: Some(user.into()),
            created,
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let user_id = request.into_inner().user_id;
        if user_id == 0 {
            return Err(Error::MissingParameter("user_id").into());
        }
        let user = self
            .users
            .get(user_id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound)?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user.into()),
        }))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let result = self.store_profile(request).await;
        count("wxmp_user_profile_updates_total", &result);
        Ok(Response::new(pb::UpdateProfileResponse {
            user: Some(result?),
        }))
    }

    #[tracing::instrument(skip_all, fields(by_code = !request.get_ref().code.is_empty()))]
    async fn update_phone_number(
        &self,
        request: Request<pb::UpdatePhoneNumberRequest>,
    ) -> Result<Response<pb::UpdatePhoneNumberResponse>, Status> {
        let result = self.store_phone(request).await;
        count("wxmp_user_phone_updates_total", &result);
        Ok(Response::new(pb::UpdatePhoneNumberResponse {
            user: Some(result?),
        }))
    }
}
