//! The shared database layer on both back ends: migrations, the `with_conn!` dispatch, and
//! the error classification services rely on.

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use diesel_migrations::embed_migrations;
use service_kit::db::{Database, DbError, Migrations, PoolOptions, testing};

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
