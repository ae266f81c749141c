//! wxmp user-service: `wxmp.user.v1.UserService`.
//!
//! Owns the `users` table (PostgreSQL or SQLite). Profile and phone data arrive encrypted
//! with the user's `session_key`; the newest key is fetched from auth-service for every
//! update, because each login may rotate it and an older key fails to decrypt.

mod config;
mod decrypt;
mod error;
mod grpc;
mod phone_code;
mod schema;
mod session_keys;
mod sessions;
mod store;
mod writes;

use std::{sync::Arc, time::Duration};

use service_kit::{
    Shutdown,
    announce::Announcer,
    db::{Database, Migrations, PoolOptions},
    session_cache::{CacheKey, Follower, UserKey},
};
use tokio::net::TcpListener;
use wxmp_proto::user::v1::user_service_server::UserServiceServer;

pub use config::Config;
pub use decrypt::{MAX_ENCRYPTED_DATA, MAX_IV, MAX_RAW_DATA, MAX_SIGNATURE};
pub use error::{DECRYPT_FAILED_MESSAGE, DecryptCause, Error};
pub use grpc::Service;
pub use phone_code::{MAX_PHONE_CODE, PhoneCodes};
pub use session_keys::{AuthSessionKeys, Session, SessionKeys};
pub use sessions::{Rotations, SessionAnswers};
pub use store::{Owner, PhoneChanges, ProfileChanges, User, Users};
pub use writes::{DEFAULT_WRITE_WORKERS, MAX_BATCH, WriteBatches};

/// The service's migrations, one folder per back end, embedded in the binary.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: diesel_migrations::embed_migrations!("migrations/postgres"),
    sqlite: diesel_migrations::embed_migrations!("migrations/sqlite"),
};

/// The fully qualified gRPC service name (reported by the health service).
pub const SERVICE_NAME: &str = "wxmp.user.v1.UserService";

/// Runs the pending migrations of the database at `database_url` (`wxmp migrate`).
pub async fn migrate(database_url: &str) -> Result<(), Error> {
    service_kit::db::migrate(database_url, &MIGRATIONS).await?;
    Ok(())
}

/// The session cache `config` asks for (see `sessions.rs`): only with a revocation feed to
/// follow, and a TTL and a size above 0.
pub fn session_cache(config: &Config) -> Option<Arc<SessionAnswers>> {
    if config.redis_url.is_none() && !config.in_process_revocation {
        return None;
    }
    let max = usize::try_from(config.session_cache_max_entries).unwrap_or(usize::MAX);
    SessionAnswers::new(Duration::from_millis(config.session_cache_ttl_ms), max).map(Arc::new)
}

/// Migrates the database, then serves `UserService` on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let cache = session_cache(&config);
    serve_with_cache(config, cache, listener, shutdown).await
}

/// [`serve`] with a session cache made by the caller ([`session_cache`]), who may keep a clone
/// to look at. Its revocation feed is followed here until `shutdown`.
pub async fn serve_with_cache(
    config: Config,
    cache: Option<Arc<SessionAnswers>>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let url = config.database_url.expose();
    let db = Database::connect(
        url,
        PoolOptions {
            max_size: config.db_pool_size as usize,
            ..PoolOptions::default()
        },
    )?;
    db.migrate(url, &MIGRATIONS).await?;
    tracing::info!(backend = ?db.backend(), "users database migrated");

    let timeout = Duration::from_millis(config.rpc_timeout_ms);
    let tls = config
        .internal
        .grpc_tls()
        .map_err(|e| Error::Config(e.to_string()))?;
    let keys = AuthSessionKeys::new_tls(
        &config.auth_service_url,
        timeout,
        config.internal.internal_token.as_ref(),
        tls.as_ref(),
    )?;
    let phones = PhoneCodes::new(
        &config.auth_service_url,
        timeout,
        config.internal.internal_token.as_ref(),
        &config.wechat,
    )?;
    let probe_db = db.clone();
    let users = Users::with_write_workers(db, config.write_workers);
    let mut service = Service::new(users, keys)
        .with_phone_codes(phones)
        .with_announcer(user_changes(&config, &shutdown)?);
    let (revocations, _rotations) = match cache {
        Some(cache) => {
            let revocations = follow(
                &config,
                cache.clone(),
                config.session_revocation_channel.clone(),
                &shutdown,
            )?;
            let rotations = match Rotations::new(cache.ttl(), cache.max_entries()).map(Arc::new) {
                Some(rotations) => {
                    service = service.with_rotations(rotations.clone());
                    follow(
                        &config,
                        rotations,
                        config.key_rotation_channel.clone(),
                        &shutdown,
                    )?
                }
                None => None,
            };
            service = service.with_session_cache(cache);
            (revocations, rotations)
        }
        None => (None, None),
    };
    tracing::info!(
        session_cache = revocations.is_some(),
        ttl_ms = config.session_cache_ttl_ms,
        max_entries = config.session_cache_max_entries,
        "session cache"
    );
    let server =
        UserServiceServer::with_interceptor(service, config.internal.require_token(&listener));
    let routes = service_kit::grpc::with_reflection(
        tonic::service::Routes::new(server),
        &[SERVICE_NAME],
        config.internal.internal_token.clone(),
    );
    tracing::info!(addr = ?listener.local_addr().ok(), "user-service listening");
    // Health follows the database: NOT_SERVING while it is unreachable.
    let ready = move || {
        let db = probe_db.clone();
        async move { db.ping().await.is_ok() }
    };
    service_kit::grpc::serve_draining(
        listener,
        routes,
        &[SERVICE_NAME],
        shutdown,
        ready,
        tls.as_ref(),
        config.drain,
    )
    .await?;
    Ok(())
}

/// Where changed users are announced: the in-process feed always (the gateway of `wxmp up`
/// follows it), and Redis when configured.
fn user_changes(config: &Config, shutdown: &Shutdown) -> Result<Announcer<UserKey>, Error> {
    Announcer::new(
        config.redis_url.as_ref().map(service_kit::Secret::expose),
        config.user_change_channel.clone(),
        shutdown.clone(),
    )
    .map_err(|e| Error::Config(format!("USER_REDIS_URL: {e}")))
}

/// Tells `follower` what its feed announces until `shutdown`: the in-process feed in `wxmp
/// up`, else `channel` on `USER_REDIS_URL`. The task ends with the returned guard.
fn follow<K: CacheKey, F: Follower<K>>(
    config: &Config,
    follower: Arc<F>,
    channel: String,
    shutdown: &Shutdown,
) -> Result<Option<AbortOnDrop>, Error> {
    let task = service_kit::session_cache::follow(
        config.in_process_revocation,
        config.redis_url.as_ref().map(service_kit::Secret::expose),
        channel,
        follower,
        shutdown,
    )
    .map_err(|e| Error::Config(format!("USER_REDIS_URL: {e}")))?;
    Ok(task.map(AbortOnDrop))
}

/// Stops the feed's task when serving ends, whichever way.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
