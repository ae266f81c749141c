//! The shared database layer on both back ends: migrations, the `with_conn!` dispatch, and
//! the error classification services rely on.

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use diesel_migrations::embed_migrations;
use service_kit::db::{Database, DbError, Migrations, PoolOptions};
use wxmp_testkit::db as testing;

diesel::table! {
    notes (id) {
        id -> BigInt,
        body -> Text,
    }
}

static MIGRATIONS: Migrations = Migrations {
    postgres: embed_migrations!("tests/migrations/postgres"),
    sqlite: embed_migrations!("tests/migrations/sqlite"),
};

async fn add(db: &Database, body: &str) -> Result<i64, DbError> {
    let id = service_kit::with_conn!(db, |conn| {
        diesel::insert_into(notes::table)
            .values(notes::body.eq(body))
            .returning(notes::id)
            .get_result::<i64>(conn)
            .await
    })?;
    Ok(id)
}

async fn count(db: &Database) -> Result<i64, DbError> {
    Ok(service_kit::with_conn!(db, |conn| {
        notes::table.count().get_result::<i64>(conn).await
    })?)
}

async fn body_of(db: &Database, id: i64) -> Result<String, DbError> {
    Ok(service_kit::with_conn!(db, |conn| {
        notes::table
            .filter(notes::id.eq(id))
            .select(notes::body)
            .first::<String>(conn)
            .await
    })?)
}

async fn exercise(url: &str) {
    let db = Database::connect(url, PoolOptions::default()).unwrap();
    db.migrate(url, &MIGRATIONS).await.unwrap();
    // Running the migrations again is a no-op, as at every restart.
    db.migrate(url, &MIGRATIONS).await.unwrap();
    db.ping().await.unwrap();

    let first = add(&db, "你好 🐼").await.unwrap();
    let second = add(&db, "second").await.unwrap();
    assert!(second > first);
    let dup = add(&db, "second").await.unwrap_err();
    assert!(dup.is_unique_violation(), "{dup:?}");
    assert_eq!(count(&db).await.unwrap(), 2);

    let missing = body_of(&db, -1).await.unwrap_err();
    assert!(missing.is_not_found());
    assert_eq!(body_of(&db, first).await.unwrap(), "你好 🐼");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_round_trip() {
    let url = testing::fresh_postgres_url("wxmp_kit").await.unwrap();
    exercise(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&testing::fresh_sqlite_url(dir.path(), "kit")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_postgres_is_unavailable_not_a_hang() {
    let db = Database::connect(
        "postgres://nobody@127.0.0.1:1/none",
        PoolOptions {
            max_size: 1,
            timeout: std::time::Duration::from_millis(500),
        },
    )
    .unwrap();
    let err = db.ping().await.unwrap_err();
    assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
}

// ---- pool checkouts on PostgreSQL: no check query, lost connections replaced -----------------

#[derive(diesel::QueryableByName)]
struct Activity {
    #[diesel(sql_type = diesel::sql_types::Text)]
    query: String,
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// The server process behind one pooled connection (a query of its own).
async fn backend_pid(db: &Database) -> Result<i32, DbError> {
    let pids: Vec<Pid> = service_kit::with_conn!(db, |conn| {
        diesel::sql_query("SELECT pg_backend_pid() AS pid /* wxmp-kit-pid */")
            .load(conn)
            .await
    })?;
    Ok(pids.into_iter().next().map_or(0, |p| p.pid))
}

async fn admin() -> diesel_async::AsyncPgConnection {
    use diesel_async::AsyncConnection;
    diesel_async::AsyncPgConnection::establish(&testing::admin_url())
        .await
        .expect("admin connection")
}

/// The last statement the server process `pid` ran, as PostgreSQL reports it.
async fn last_query(admin: &mut diesel_async::AsyncPgConnection, pid: i32) -> String {
    let rows: Vec<Activity> =
        diesel::sql_query("SELECT query FROM pg_stat_activity WHERE pid = $1")
            .bind::<diesel::sql_types::Integer, _>(pid)
            .load(admin)
            .await
            .expect("pg_stat_activity");
    rows.into_iter().next().map(|a| a.query).unwrap_or_default()
}

/// diesel-async's default recycling (`Verified`) sends `SELECT 1` on every checkout, a round
/// trip before each request's own query. The pool checks connections locally instead
/// (`RecyclingMethod::Fast`: closed socket or broken transaction): checking a connection out
/// must leave the server's record of its last statement untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_checkout_sends_no_query() {
    let url = testing::fresh_postgres_url("wxmp_kit").await.unwrap();
    let db = Database::connect(
        &url,
        PoolOptions {
            max_size: 1,
            ..PoolOptions::default()
        },
    )
    .unwrap();
    let pid = backend_pid(&db).await.unwrap();
    let mut admin = admin().await;
    assert!(
        last_query(&mut admin, pid).await.contains("wxmp-kit-pid"),
        "pg_stat_activity shows the pool connection's statements"
    );
    let Database::Postgres(pool) = &db else {
        panic!("a postgres:// URL makes a PostgreSQL pool")
    };
    for _ in 0..3 {
        let held = pool.get().await.expect("checkout");
        let seen = last_query(&mut admin, pid).await;
        assert!(seen.contains("wxmp-kit-pid"), "a checkout ran {seen:?}");
        drop(held);
    }
    // Still the one connection: nothing was replaced either.
    assert_eq!(backend_pid(&db).await.unwrap(), pid);
}

/// Without a check query, a connection the server dropped is found out by the pool (its
/// socket closed) or by the query on it, which fails as `Unavailable`; either way it is
/// replaced, and the pool serves again on fresh connections without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn killed_postgres_connections_are_replaced() {
    const SIZE: usize = 4;
    let url = testing::fresh_postgres_url("wxmp_kit").await.unwrap();
    let db = Database::connect(
        &url,
        PoolOptions {
            max_size: SIZE,
            ..PoolOptions::default()
        },
    )
    .unwrap();
    db.migrate(&url, &MIGRATIONS).await.unwrap();
    // Open every connection of the pool: SIZE concurrent checkouts.
    let Database::Postgres(pool) = &db else {
        panic!("a postgres:// URL makes a PostgreSQL pool")
    };
    let mut held = Vec::new();
    for _ in 0..SIZE {
        held.push(pool.get().await.expect("checkout"));
    }
    let mut killed_pids = Vec::new();
    for conn in &mut held {
        let pids: Vec<Pid> = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .load(&mut **conn)
            .await
            .unwrap();
        killed_pids.push(pids[0].pid);
    }
    drop(held);
    assert_eq!(pool.status().size, SIZE);

    for round in 0..2 {
        let mut admin = admin().await;
        let name = url.rsplit('/').next().unwrap().to_owned();
        let rows: Vec<Pid> = diesel::sql_query(
            "SELECT count(pg_terminate_backend(pid))::int AS pid FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .load(&mut admin)
        .await
        .unwrap();
        assert!(rows[0].pid > 0, "round {round}: the pool held connections");

        // Each dead connection may fail up to two queries, as Unavailable, never as a query
        // error: one answered by the server's FATAL "terminating connection", and one more if
        // the pool hands it out again before its socket's close was seen (diesel-async's
        // `is_broken` reads the client's `is_closed`, set by the connection task a moment
        // later). Then every query succeeds.
        let mut failures = 0;
        let mut served = Vec::new();
        for _ in 0..(4 * SIZE) {
            match backend_pid(&db).await {
                Ok(pid) => served.push(pid),
                Err(DbError::Unavailable(_)) => failures += 1,
                Err(other) => panic!("round {round}: a lost connection surfaced as {other:?}"),
            }
        }
        assert!(failures <= 2 * SIZE, "round {round}: {failures} failures");
        assert!(
            served.len() >= 2 * SIZE,
            "round {round}: the pool recovered"
        );
        assert!(
            served.iter().all(|pid| !killed_pids.contains(pid)),
            "round {round}: served by a killed server process: {served:?} vs {killed_pids:?}"
        );
        killed_pids.extend(served);
        // And the data is all there.
        add(&db, &format!("after kill {round}")).await.unwrap();
    }
    assert_eq!(count(&db).await.unwrap(), 2);
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Named prepared statements of the connection `conn` whose text starts with `prefix`.
async fn prepared_like(conn: &mut diesel_async::AsyncPgConnection, prefix: &str) -> i64 {
    let rows: Vec<Count> = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1",
    )
    .bind::<diesel::sql_types::Text, _>(format!("{prefix}%"))
    .load(conn)
    .await
    .unwrap();
    rows[0].n
}

/// diesel marks every UPDATE unsafe to cache, so diesel-async prepares it anew (parse, plan,
/// an extra round trip) on each execution; `Cached` keeps one prepared statement per SQL
/// text on the connection and answers the same rows.
#[tokio::test(flavor = "multi_thread")]
async fn cached_updates_are_prepared_once_per_connection() {
    use service_kit::db::Cached;
    let url = testing::fresh_postgres_url("wxmp_kit").await.unwrap();
    let db = Database::connect(
        &url,
        PoolOptions {
            max_size: 1,
            ..PoolOptions::default()
        },
    )
    .unwrap();
    db.migrate(&url, &MIGRATIONS).await.unwrap();
    let id = add(&db, "before").await.unwrap();
    let Database::Postgres(pool) = &db else {
        panic!("a postgres:// URL makes a PostgreSQL pool")
    };
    let mut conn = pool.get().await.unwrap();
    // Plain: answered, never kept.
    for n in 0..3 {
        let body: String = diesel::update(notes::table.filter(notes::id.eq(id)))
            .set(notes::body.eq(format!("plain {n}")))
            .returning(notes::body)
            .get_result(&mut *conn)
            .await
            .unwrap();
        assert_eq!(body, format!("plain {n}"));
    }
    assert_eq!(prepared_like(&mut conn, "UPDATE").await, 0);
    // Cached: the same answers, one statement kept.
    for n in 0..3 {
        let body: String = Cached(
            diesel::update(notes::table.filter(notes::id.eq(id)))
                .set(notes::body.eq(format!("cached {n}")))
                .returning(notes::body),
        )
        .get_result(&mut *conn)
        .await
        .unwrap();
        assert_eq!(body, format!("cached {n}"));
    }
    assert_eq!(prepared_like(&mut conn, "UPDATE").await, 1);
    // A different text is a different statement, not a wrong reuse.
    let rows =
        Cached(diesel::update(notes::table.filter(notes::id.eq(-1))).set(notes::body.eq("x")))
            .execute(&mut *conn)
            .await
            .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(prepared_like(&mut conn, "UPDATE").await, 2);
    drop(conn);
    assert_eq!(body_of(&db, id).await.unwrap(), "cached 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_statements_run_on_sqlite() {
    use service_kit::db::Cached;
    let dir = tempfile::tempdir().unwrap();
    let url = testing::fresh_sqlite_url(dir.path(), "cached");
    let db = Database::connect(&url, PoolOptions::default()).unwrap();
    db.migrate(&url, &MIGRATIONS).await.unwrap();
    let id = add(&db, "before").await.unwrap();
    async fn set(db: &Database, id: i64, body: &str) -> Result<String, DbError> {
        Ok(service_kit::with_conn!(db, |conn| {
            Cached(
                diesel::update(notes::table.filter(notes::id.eq(id)))
                    .set(notes::body.eq(body))
                    .returning(notes::body),
            )
            .get_result(conn)
            .await
        })?)
    }
    for n in 0..3 {
        let body = format!("cached {n}");
        assert_eq!(set(&db, id, &body).await.unwrap(), body);
    }
    assert_eq!(body_of(&db, id).await.unwrap(), "cached 2");
}
