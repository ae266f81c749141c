//! One database handle for PostgreSQL (production) and SQLite (the embedded default).
//!
//! Queries are written once with diesel + diesel-async and run on either back end with
//! [`with_conn!`](crate::with_conn): the macro expands the body once per back end, so the
//! same query text is type-checked for both. Each service embeds one migrations folder per
//! back end (their DDL differs: `BIGSERIAL` vs `INTEGER PRIMARY KEY`).

use std::{path::Path, time::Duration};

use diesel::{Connection, SqliteConnection, connection::SimpleConnection};
use diesel_async::{
    AsyncPgConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool::Pool,
    },
    sync_connection_wrapper::SyncConnectionWrapper,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

/// The async SQLite connection: diesel's sync connection run on tokio's blocking pool.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// A pool of connections to either back end.
#[derive(Clone)]
pub enum Database {
    Postgres(Pool<AsyncPgConnection>),
    Sqlite(Pool<SqliteConn>),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may hold a password.
        f.write_str(match self {
            Self::Postgres(_) => "Database::Postgres",
            Self::Sqlite(_) => "Database::Sqlite",
        })
    }
}

/// What can go wrong with the database, independent of the query.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database url (use postgres://... or sqlite://path)")]
    UnsupportedUrl,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error(transparent)]
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for DbError {
    /// A query that failed because its connection died (the server was restarted, or
    /// terminated the backend) is the database being unavailable, not a bug: callers answer
    /// "try again" instead of "internal error", and the pool drops the broken connection.
    fn from(e: diesel::result::Error) -> Self {
        if connection_lost(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Query(e)
        }
    }
}

/// True for the errors of a connection that is gone: closed by the server (SQLSTATE 57P01
/// `admin_shutdown`, 57P02 `crash_shutdown`, 57P03 `cannot_connect_now` carry these messages),
/// unable to carry a command (the socket is gone: "error communicating with the server"), or
/// broken mid-transaction.
fn connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        Error::BrokenTransactionManager => true,
        Error::DatabaseError(_, info) => {
            let message = info.message();
            message.contains("terminating connection")
                || message.contains("connection closed")
                || message.contains("server closed the connection")
                || message.contains("the database system is shutting down")
                || message.contains("the database system is starting up")
        }
        _ => false,
    }
}

impl DbError {
    /// True when the row asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Query(diesel::result::Error::NotFound))
    }

    /// True when an insert hit a unique constraint.
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            Self::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for DbError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// A service's migrations, one set per back end.
pub struct Migrations {
    pub postgres: EmbeddedMigrations,
    pub sqlite: EmbeddedMigrations,
}

/// Pool settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    /// Most connections held open (SQLite uses at most one writer anyway; see `connect`).
    pub max_size: usize,
    /// How long a request waits for a free connection, and for a new one to open.
    pub timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A single-row statement whose prepared form the connection may keep: diesel marks every
/// UPDATE (and every INSERT with a defaulted column) "unsafe to cache", because the SQL of one
/// Rust type can vary (a changeset's `Option` fields). diesel-async then prepares an unnamed
/// statement for each execution: a Parse/Describe round trip before the Bind/Execute one, and
/// PostgreSQL parses and plans the text every time. Wrapped, the statement is cached under its
/// SQL text (not its Rust type), so each distinct text is prepared once per connection and a
/// varying text simply gets its own entry. Only for statements whose text takes a bounded
/// number of forms: never a multi-row INSERT (its text grows with the row count).
#[derive(Debug, Clone, Copy)]
pub struct Cached<Q>(pub Q);

impl<Q, DB> diesel::query_builder::QueryFragment<DB> for Cached<Q>
where
    DB: diesel::backend::Backend,
    Q: diesel::query_builder::QueryFragment<DB>,
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> diesel::QueryResult<bool> {
        // Safe: the cache key is the SQL text (no static query id below).
        Ok(true)
    }
}

impl<Q> diesel::query_builder::QueryId for Cached<Q> {
    type QueryId = ();
    // No type-based key: the statement cache keys this query by its SQL text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// Which back end a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }
}

/// The file path of a `sqlite://path` or `sqlite:path` URL (`sqlite::memory:` stays as is).
fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url)
}

// WAL lets readers run beside the writer; busy_timeout makes a second writer wait instead of
// failing at once with SQLITE_BUSY.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

impl Database {
    /// Opens a pool. Nothing is connected yet for PostgreSQL (the first query connects), so a
    /// service starts even while its database is still coming up.
    pub fn connect(url: &str, options: PoolOptions) -> Result<Self, DbError> {
        match Backend::of(url)? {
            Backend::Postgres => {
                // Fast recycling: the default check costs a `SELECT 1` round trip per checkout;
                // a connection that broke meanwhile fails its query and is then discarded.
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                config.recycling_method = RecyclingMethod::Fast;
                let manager =
                    AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
                let pool = Pool::builder(manager)
                    .max_size(options.max_size)
                    .wait_timeout(Some(options.timeout))
                    .create_timeout(Some(options.timeout))
                    .recycle_timeout(Some(options.timeout))
                    .runtime(deadpool_runtime())
                    .build()
                    .map_err(|e| DbError::Unavailable(e.to_string()))?;
                Ok(Self::Postgres(pool))
            }
            Backend::Sqlite => {
                let path = sqlite_path(url).to_owned();
                if path != ":memory:"
                    && let Some(dir) = Path::new(&path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        DbError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut config = ManagerConfig::<SqliteConn>::default();
                config.custom_setup = Box::new(|url| {
                    let url = url.to_owned();
                    Box::pin(async move {
                        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                        let mut conn = SqliteConn::establish(&url).await?;
                        conn.batch_execute(SQLITE_PRAGMAS)
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    })
                });
                let manager =
                    AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path, config);
                // One connection: SQLite has a single writer, and one connection means no
                // SQLITE_BUSY between our own transactions. The embedded default is for one
                // machine; production runs PostgreSQL.
                let pool = Pool::builder(manager)
                    .max_size(1)
                    .wait_timeout(Some(options.timeout))
                    .create_timeout(Some(options.timeout))
                    .runtime(deadpool_runtime())
                    .build()
                    .map_err(|e| DbError::Unavailable(e.to_string()))?;
                Ok(Self::Sqlite(pool))
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Runs the pending migrations of this back end. On PostgreSQL an advisory lock makes
    /// replicas that start together take turns instead of racing on the same DDL.
    pub async fn migrate(&self, url: &str, migrations: &'static Migrations) -> Result<(), DbError> {
        let url = url.to_owned();
        let backend = self.backend();
        tokio::task::spawn_blocking(move || match backend {
            Backend::Postgres => {
                let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
                    .map_err(|e| DbError::Unavailable(e.to_string()))?;
                conn.batch_execute("SELECT pg_advisory_lock(7757432)")?;
                let result = conn
                    .run_pending_migrations(Source(&migrations.postgres))
                    .map(|_| ())
                    .map_err(|e| DbError::Migration(e.to_string()));
                conn.batch_execute("SELECT pg_advisory_unlock(7757432)")?;
                result
            }
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(sqlite_path(&url))
                    .map_err(|e| DbError::Unavailable(e.to_string()))?;
                conn.batch_execute(SQLITE_PRAGMAS)?;
                conn.run_pending_migrations(Source(&migrations.sqlite))
                    .map(|_| ())
                    .map_err(|e| DbError::Migration(e.to_string()))
            }
        })
        .await
        .map_err(|e| DbError::Migration(e.to_string()))?
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), DbError> {
        use diesel_async::SimpleAsyncConnection;
        crate::with_conn!(self, |conn| conn.batch_execute("SELECT 1").await)?;
        Ok(())
    }
}

/// Connects to `url`, runs its pending migrations and lets go: what `wxmp migrate` (or a
/// Kubernetes migration Job) does for each service.
pub async fn migrate(url: &str, migrations: &'static Migrations) -> Result<(), DbError> {
    let db = Database::connect(
        url,
        PoolOptions {
            max_size: 1,
            ..PoolOptions::default()
        },
    )?;
    db.migrate(url, migrations).await
}

fn deadpool_runtime() -> deadpool::Runtime {
    // Timeouts in the pool need a runtime to measure them.
    deadpool::Runtime::Tokio1
}

/// Lends a `&'static EmbeddedMigrations` to diesel's harness, which wants a value.
struct Source(&'static EmbeddedMigrations);

impl<DB: diesel::backend::Backend> diesel::migration::MigrationSource<DB> for Source {
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<DB>>>> {
        diesel::migration::MigrationSource::<DB>::migrations(self.0)
    }
}

/// Runs `$body` with `$conn` bound to `&mut` a pooled connection of whichever back end `$db`
/// is. The body is expanded once per back end, so it must compile for both; it should
/// evaluate to a `Result<_, E>` where `E: From<diesel::result::Error>`. Pool errors are
/// returned early as [`DbError`] through `?`, so the enclosing function's error type must be
/// `From<DbError>`.
#[macro_export]
macro_rules! with_conn {
    ($db:expr, |$conn:ident| $body:expr) => {
        match $db {
            $crate::db::Database::Postgres(pool) => {
                let mut pooled = pool.get().await.map_err($crate::db::DbError::from)?;
                let $conn = &mut *pooled;
                $body
            }
            $crate::db::Database::Sqlite(pool) => {
                let mut pooled = pool.get().await.map_err($crate::db::DbError::from)?;
                let $conn = &mut *pooled;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind, Error};

    use super::*;

    #[test]
    fn backends_are_named_by_url() {
        assert_eq!(Backend::of("postgres://x/y").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("postgresql://x/y").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("sqlite://data/a.db").unwrap(), Backend::Sqlite);
        assert!(Backend::of("mysql://x").is_err());
        assert_eq!(sqlite_path("sqlite://data/a.db"), "data/a.db");
        assert_eq!(sqlite_path("sqlite::memory:"), ":memory:");
    }

    fn db_error(kind: DatabaseErrorKind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn a_lost_connection_is_unavailable_not_a_query_error() {
        for lost in [
            db_error(
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
            ),
            db_error(DatabaseErrorKind::ClosedConnection, "connection closed"),
            db_error(
                DatabaseErrorKind::UnableToSendCommand,
                "error communicating with the server",
            ),
            Error::BrokenTransactionManager,
        ] {
            assert!(matches!(DbError::from(lost), DbError::Unavailable(_)));
        }
        for query in [
            Error::NotFound,
            db_error(DatabaseErrorKind::UniqueViolation, "duplicate key value"),
        ] {
            assert!(matches!(DbError::from(query), DbError::Query(_)));
        }
    }
}
