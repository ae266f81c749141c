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
mod store;

use std::time::Duration;

use service_kit::{
    Shutdown,
    db::{Database, Migrations, PoolOptions},
};
use tokio::net::TcpListener;
use wxmp_proto::user::v1::user_service_server::UserServiceServer;

pub use config::Config;
pub use decrypt::{MAX_ENCRYPTED_DATA, MAX_IV, MAX_RAW_DATA, MAX_SIGNATURE};
pub use error::{DECRYPT_FAILED_MESSAGE, DecryptCause, Error};
pub use grpc::Service;
pub use phone_code::{MAX_PHONE_CODE, PhoneCodes};
pub use session_keys::{AuthSessionKeys, SessionKeys};
pub use store::{Owner, PhoneChanges, ProfileChanges, User, Users};

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

/// Migrates the database, then serves `UserService` on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
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
    let service = Service::new(Users::new(db), keys).with_phone_codes(phones);
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
