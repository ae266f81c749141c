//! auth-service: logs mini-program users in and recognises them afterwards.
//!
//! `Login` exchanges a `wx.login()` code with WeChat (`code2Session`), makes sure the user
//! exists (user-service `EnsureUser`), keeps the user's newest session_key and answers an
//! opaque token whose SHA-256 alone is stored. `Authenticate` and `Logout` work on that token;
//! `GetSessionKey` hands user-service the key it decrypts profile data with.
//!
//! - [`config`]: the environment (`AUTH_*`, `WXMP_APPS`, `WXMP_WECHAT_*`).
//! - [`service`]: the gRPC handlers.
//! - [`store`]: sessions in Redis or in memory, behind [`store::SessionStore`].
//! - [`token`]: token generation, shape check and hashing.
//! - [`error`]: the one error enum and its mapping to gRPC statuses.

use std::{sync::Arc, time::Duration};

use service_kit::{
    Shutdown,
    grpc::{AttachToken, RequireToken},
};
use tokio::net::TcpListener;
use tonic::{server::NamedService, service::Routes};
use wxmp_proto::{
    auth::v1::auth_service_server::AuthServiceServer,
    user::v1::user_service_client::UserServiceClient,
};

pub mod config;
pub mod error;
mod meter;
pub mod service;
pub mod store;
pub mod token;

pub use config::{App, Apps, Config};
pub use error::Error;
pub use service::Auth;
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

/// Builds the service from `config` with `store`: the WeChat client and the user-service
/// channel are made here, once.
pub fn build<S: SessionStore>(config: &Config, store: Arc<S>) -> Result<Auth<S>, Error> {
    config.validate().map_err(Error::Config)?;
    let timeout = config.wechat_timeout();
    let wechat = wechat::WechatClient::new(wechat::WechatConfig {
        api_base: config.wechat_api_base.clone(),
        connect_timeout: timeout.min(Duration::from_secs(2)),
        request_timeout: timeout,
        ..wechat::WechatConfig::default()
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    let channel = service_kit::grpc::channel(
        &config.user_service_url,
        USER_SERVICE_CONNECT_TIMEOUT,
        USER_SERVICE_CALL_TIMEOUT,
    )
    .map_err(|e| Error::Config(format!("AUTH_USER_SERVICE_URL: {e}")))?;
    let users = UserServiceClient::with_interceptor(
        channel,
        AttachToken::new(config.internal.internal_token.as_ref()),
    );
    Ok(Auth::new(
        config.apps.clone(),
        wechat,
        users,
        store,
        config.session_ttl(),
    ))
}

/// Serves `AuthService` (and gRPC health) on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let store = Arc::new(open_store(&config)?);
    let auth = build(&config, store.clone())?;
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
    let server = AuthServiceServer::with_interceptor(
        auth,
        RequireToken::new(config.internal.internal_token.clone()),
    );
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
    service_kit::grpc::serve_with_readiness(listener, routes, &[name], shutdown, ready).await?;
    Ok(())
}
