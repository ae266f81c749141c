//! auth-service: logs mini-program users in and recognises them afterwards.
//!
//! `Login` exchanges a `wx.login()` code with WeChat (`code2Session`), makes sure the user
//! exists (user-service `EnsureUser`), keeps the user's newest session_key and answers an
//! opaque token whose SHA-256 alone is stored. `Authenticate` and `Logout` work on that token;
//! `GetSessionKey` hands user-service the key it decrypts profile data with.
//!
//! - [`config`]: the environment (`AUTH_*`, `WXMP_APPS`, `WXMP_WECHAT_*`).
//! - [`grpc`]: the gRPC handlers (the tonic adapter).
//! - [`store`]: sessions in Redis or in memory, behind [`store::SessionStore`].
//! - [`token`]: token generation, shape check and hashing.
//! - [`error`]: the one error enum and its mapping to gRPC statuses.

use std::{sync::Arc, time::Duration};

use service_kit::{Shutdown, announce::Announcer, grpc::AttachToken, session_cache::LoginKey};
use tokio::net::TcpListener;
use tonic::{server::NamedService, service::Routes};
use wxmp_proto::{
    auth::v1::auth_service_server::AuthServiceServer,
    user::v1::user_service_client::UserServiceClient,
};

pub mod access_token;
pub mod config;
pub mod error;
pub mod grpc;
mod meter;
pub mod store;
pub mod token;

pub use config::{App, Apps, Config};
pub use error::Error;
pub use grpc::Auth;
pub use store::{
    AnyStore, MemoryStore, RedisOptions, RedisStore, SessionRecord, SessionStore, StoreError,
};

/// Connecting to user-service may take this long before a login fails.
const USER_SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One EnsureUser call may take this long (it is one upsert).
const USER_SERVICE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The session store `config` selects: Redis when `AUTH_REDIS_URL` is set, else memory.
/// Nothing is connected yet, so a Redis that comes up later is still used.
pub fn open_store(config: &Config) -> Result<AnyStore, Error> {
    match &config.redis_url {
        Some(url) => Ok(AnyStore::Redis(RedisStore::new(
            url.expose(),
            config.redis_prefix.clone(),
            RedisOptions::default(),
        )?)),
        None => Ok(AnyStore::Memory(MemoryStore::new())),
    }
}

/// The access_token cache `config` selects: Redis (its own connection, same prefix) when
/// `AUTH_REDIS_URL` is set, else memory.
pub fn open_token_cache(config: &Config) -> Result<access_token::AnyTokenCache, Error> {
    Ok(match &config.redis_url {
        Some(url) => {
            access_token::AnyTokenCache::Redis(access_token::RedisTokenCache::new(RedisStore::new(
                url.expose(),
                config.redis_prefix.clone(),
                RedisOptions::default(),
            )?))
        }
        None => access_token::AnyTokenCache::Memory(access_token::MemoryTokenCache::default()),
    })
}

/// The shared access tokens of `config`'s apps on `cache`.
pub fn access_tokens<C: access_token::TokenCache>(
    config: &Config,
    cache: C,
) -> Result<access_token::AccessTokens<C>, Error> {
    Ok(access_token::AccessTokens::new(
        config.apps.clone(),
        wechat_client(config)?,
        cache,
        config.token_options(),
    ))
}

fn wechat_client(config: &Config) -> Result<wechat::WechatClient, Error> {
    config.wechat.client().map_err(Error::Config)
}

/// Builds the service from `config` with `store`: the WeChat client and the user-service
/// channel are made here, once.
pub fn build<S: SessionStore>(config: &Config, store: Arc<S>) -> Result<Auth<S>, Error> {
    config.validate().map_err(Error::Config)?;
    let wechat = wechat_client(config)?;
    let tls = config
        .internal
        .grpc_tls()
        .map_err(|e| Error::Config(e.to_string()))?;
    let channel = service_kit::grpc::channel_tls(
        &config.user_service_url,
        USER_SERVICE_CONNECT_TIMEOUT,
        USER_SERVICE_CALL_TIMEOUT,
        tls.as_ref(),
    )
    .map_err(|e| Error::Config(format!("AUTH_USER_SERVICE_URL: {e}")))?;
    let users = UserServiceClient::with_interceptor(
        channel,
        AttachToken::new(config.internal.internal_token.as_ref()),
    );
    let tokens = access_tokens(config, open_token_cache(config)?)?;
    Ok(Auth::new(
        config.apps.clone(),
        wechat,
        users,
        store,
        config.session_ttl(),
    )
    .with_access_tokens(Arc::new(tokens)))
}

/// Where completed logins are announced: the in-process feed always (`wxmp up`), and
/// `<AUTH_REDIS_PREFIX>key-rotated` on the session Redis when there is one.
fn logins(config: &Config, shutdown: &Shutdown) -> Result<Announcer<LoginKey>, Error> {
    Announcer::new(
        config.redis_url.as_ref().map(service_kit::Secret::expose),
        service_kit::session_cache::rotation_channel(&config.redis_prefix),
        shutdown.clone(),
    )
    .map_err(|e| Error::Config(format!("AUTH_REDIS_URL: {e}")))
}

/// Serves `AuthService` (and gRPC health) on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let store = Arc::new(open_store(&config)?);
    let auth = build(&config, store.clone())?.with_logins(logins(&config, &shutdown)?);
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        store = ?store,
        apps = config.apps.iter().count(),
        default_app = %config.apps.default_app().app_id,
        internal_auth = config.internal.internal_token.is_some(),
        "auth-service listening"
    );
    if let Err(e) = store.ping().await {
        // Not fatal: the pool reconnects, and every call reports the outage meanwhile.
        tracing::warn!(error = %e, "session store not reachable at start");
    }
    let tls = config
        .internal
        .grpc_tls()
        .map_err(|e| Error::Config(e.to_string()))?;
    let server =
        AuthServiceServer::with_interceptor(auth, config.internal.require_token(&listener));
    let name = <AuthServiceServer<Auth<AnyStore>> as NamedService>::NAME;
    // Health follows the session store: NOT_SERVING while Redis is unreachable.
    let ready = move || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    };
    let routes = service_kit::grpc::with_reflection(
        Routes::new(server),
        &[name],
        config.internal.internal_token.clone(),
    );
    service_kit::grpc::serve_draining(
        listener,
        routes,
        &[name],
        shutdown,
        ready,
        tls.as_ref(),
        config.drain,
    )
    .await?;
    Ok(())
}
