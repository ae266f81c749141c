//! Fresh databases, one per test, so tests never share rows.
//!
//! PostgreSQL databases are named `<prefix>_<12 hex>` (`tests/drop-stale-databases.sh` sweeps
//! exactly these names; a test never drops its own, since `DROP DATABASE` forces a checkpoint
//! that stalls a running suite). A migrated one is a clone of a template (`CREATE DATABASE x
//! TEMPLATE t`, as crates.io's test-db does): each process migrates one template per migration
//! set, named like the others (`<prefix>_tpl_<12 hex>`, so the sweep drops it too), and every
//! test copies it instead of running the migrations again. A template per process, never
//! shared between processes, cannot be stale after a migration changed and needs no lock
//! between test binaries; inside the process the first test builds it and the others wait.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use service_kit::db::{DbError, Migrations};
use tokio::sync::OnceCell;

/// Where tests find PostgreSQL: `WXMP_TEST_PG_URL`, default the local server with trust
/// auth. Must point at a database the user may `CREATE DATABASE` from.
pub fn admin_url() -> String {
    std::env::var("WXMP_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the admin URL's server.
fn url_of(name: &str) -> String {
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// `<prefix>_<12 hex>`: the shape the stale-database sweep recognises.
fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

async fn create_database(name: &str, template: Option<&str>) -> Result<(), DbError> {
    let mut conn = AsyncPgConnection::establish(&admin_url())
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    let sql = match template {
        Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
        None => format!("CREATE DATABASE \"{name}\""),
    };
    conn.batch_execute(&sql).await?;
    Ok(())
}

/// Creates a uniquely named, empty database and answers its URL: for tests of migrating
/// itself (several replicas on one empty database, `wxmp migrate`).
pub async fn fresh_postgres_url(prefix: &str) -> Result<String, DbError> {
    let name = unique_name(prefix);
    create_database(&name, None).await?;
    Ok(url_of(&name))
}

/// Creates a uniquely named database with `migrations` applied, cloned from this process's
/// template for them, and answers its URL.
pub async fn migrated_postgres_url(
    prefix: &str,
    migrations: &'static Migrations,
) -> Result<String, DbError> {
    let name = unique_name(prefix);
    let cloned = create_database(&name, Some(&template(prefix, migrations).await?)).await;
    if cloned.is_err() {
        // The template went away (`tests/drop-stale-databases.sh` sweeps unused ones): build
        // another and clone that.
        forget_template(migrations);
        create_database(&name, Some(&template(prefix, migrations).await?)).await?;
    }
    Ok(url_of(&name))
}

/// The templates this process built, one per migration set (keyed by its address).
type Templates = Mutex<Vec<(usize, Arc<OnceCell<String>>)>>;
static TEMPLATES: Templates = Mutex::new(Vec::new());

fn forget_template(migrations: &'static Migrations) {
    let key = std::ptr::from_ref(migrations) as usize;
    TEMPLATES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|(k, _)| *k != key);
}

/// This process's migrated template for `migrations`; the first caller builds it, concurrent
/// callers wait for it (a failed build is tried again by the next caller).
async fn template(prefix: &str, migrations: &'static Migrations) -> Result<String, DbError> {
    let key = std::ptr::from_ref(migrations) as usize;
    let cell = {
        let mut templates = TEMPLATES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match templates.iter().find(|(k, _)| *k == key) {
            Some((_, cell)) => cell.clone(),
            None => {
                let cell = Arc::new(OnceCell::new());
                templates.push((key, cell.clone()));
                cell
            }
        }
    };
    cell.get_or_try_init(|| async {
        let name = unique_name(&format!("{prefix}_tpl"));
        create_database(&name, None).await?;
        // The migration's connection is closed when this returns; CREATE DATABASE waits
        // (up to 5 s) for a closing session to leave the template.
        service_kit::db::migrate(&url_of(&name), migrations).await?;
        Ok::<_, DbError>(name)
    })
    .await
    .cloned()
}

/// A fresh SQLite file URL inside `dir`.
pub fn fresh_sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(format!("{name}.db")).display())
}
