//! One contract for every session store: each case runs on the memory store and on the real
//! Redis (`WXMP_TEST_REDIS_URL`, default redis://127.0.0.1:6379) under a key prefix of its own.

use std::time::Duration;

use auth_service::{
    MemoryStore, RedisOptions, RedisStore, SessionRecord, SessionStore, StoreError,
};
use deadpool_redis::redis;
use wxmp_testkit::redis::url as redis_url;

fn unique_prefix() -> String {
    wxmp_testkit::redis::fresh_prefix("wxmp-test")
}

fn record(user_id: i64) -> SessionRecord {
    SessionRecord {
        user_id,
        app_id: "wx00000000000dev01".into(),
        openid: format!("o-user-{user_id}"),
        unionid: format!("u-person-{user_id}"),
    }
}

/// A hash shaped like the real ones, distinct per call.
fn hash() -> String {
    auth_service::token::hash(&uuid::Uuid::new_v4().to_string())
}

const HOUR: Duration = Duration::from_secs(3600);

// ---- the contract -------------------------------------------------------------------------

async fn put_get_delete(store: impl SessionStore) {
    let h = hash();
    store.put_session(&h, &record(7), HOUR).await.unwrap();
    let (got, remaining) = store
        .get_session(&h)
        .await
        .unwrap()
        .expect("stored session");
    assert_eq!(got, record(7));
    assert!(
        remaining <= HOUR && remaining > HOUR - Duration::from_secs(60),
        "{remaining:?}"
    );

    assert!(
        store.delete_session(&h).await.unwrap(),
        "delete of a live session"
    );
    assert_eq!(store.get_session(&h).await.unwrap(), None);
    assert!(!store.delete_session(&h).await.unwrap(), "second delete");
}

async fn sessions_are_independent(store: impl SessionStore) {
    let (a, b) = (hash(), hash());
    store.put_session(&a, &record(1), HOUR).await.unwrap();
    store.put_session(&b, &record(2), HOUR).await.unwrap();
    store.delete_session(&a).await.unwrap();
    assert_eq!(store.get_session(&a).await.unwrap(), None);
    assert_eq!(
        store.get_session(&b).await.unwrap().map(|(r, _)| r),
        Some(record(2))
    );
}

async fn unknown_token(store: impl SessionStore) {
    assert_eq!(store.get_session(&hash()).await.unwrap(), None);
    assert!(!store.delete_session(&hash()).await.unwrap());
    assert_eq!(store.get_session_key("wxa", "nobody").await.unwrap(), None);
}

async fn sessions_expire(store: impl SessionStore) {
    let h = hash();
    store
        .put_session(&h, &record(3), Duration::from_secs(1))
        .await
        .unwrap();
    store
        .put_session_key(
            "wxa",
            "o-expiring",
            "a2V5a2V5a2V5a2V5a2V5aw==",
            1,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(store.get_session(&h).await.unwrap().is_some());
    // Polled until both are gone: a 1 s TTL may not outlive a few seconds.
    let mut polls = 0;
    while store.get_session(&h).await.unwrap().is_some() {
        polls += 1;
        assert!(polls < 100, "session outlived its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while store
        .get_session_key("wxa", "o-expiring")
        .await
        .unwrap()
        .is_some()
    {
        polls += 1;
        assert!(polls < 100, "session_key outlived its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !store.delete_session(&h).await.unwrap(),
        "an expired session was revoked"
    );
}

async fn session_key_is_replaced_by_the_newest(store: impl SessionStore) {
    store
        .put_session_key("wxa", "o1", "old-key", 1_000, HOUR)
        .await
        .unwrap();
    store
        .put_session_key("wxa", "o1", "new-key", 2_000, HOUR)
        .await
        .unwrap();
    assert_eq!(
        store.get_session_key("wxa", "o1").await.unwrap().as_deref(),
        Some("new-key")
    );
    // Keyed by (app_id, openid): another app or user is untouched.
    store
        .put_session_key("wxb", "o1", "b-key", 1_000, HOUR)
        .await
        .unwrap();
    store
        .put_session_key("wxa", "o2", "o2-key", 1_000, HOUR)
        .await
        .unwrap();
    assert_eq!(
        store.get_session_key("wxa", "o1").await.unwrap().as_deref(),
        Some("new-key")
    );
    assert_eq!(
        store.get_session_key("wxb", "o1").await.unwrap().as_deref(),
        Some("b-key")
    );
    assert_eq!(
        store.get_session_key("wxa", "o2").await.unwrap().as_deref(),
        Some("o2-key")
    );
}

/// Two logins of one user (a double tap) store their keys in either order: the key WeChat
/// answered last stays, whichever write lands last.
async fn an_earlier_answer_never_replaces_a_later_key(store: impl SessionStore) {
    store
        .put_session_key("wxa", "tap", "second-key", 2_000, HOUR)
        .await
        .unwrap();
    store
        .put_session_key("wxa", "tap", "first-key", 1_000, HOUR)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_session_key("wxa", "tap")
            .await
            .unwrap()
            .as_deref(),
        Some("second-key")
    );
    // A later answer still replaces it, and a tie overwrites.
    for (key, at) in [("third-key", 3_000), ("third-again", 3_000)] {
        store
            .put_session_key("wxa", "tap", key, at, HOUR)
            .await
            .unwrap();
        assert_eq!(
            store
                .get_session_key("wxa", "tap")
                .await
                .unwrap()
                .as_deref(),
            Some(key)
        );
    }
}

async fn overwriting_a_session_refreshes_it(store: impl SessionStore) {
    let h = hash();
    store
        .put_session(&h, &record(4), Duration::from_secs(1))
        .await
        .unwrap();
    store.put_session(&h, &record(5), HOUR).await.unwrap();
    // A witness written with the old 1 s TTL after the overwrite: once it has expired, the
    // first TTL of `h` would have too.
    let witness = hash();
    store
        .put_session(&witness, &record(6), Duration::from_secs(1))
        .await
        .unwrap();
    let mut polls = 0;
    while store.get_session(&witness).await.unwrap().is_some() {
        polls += 1;
        assert!(polls < 100, "the witness outlived its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.get_session(&h).await.unwrap().map(|(r, _)| r),
        Some(record(5))
    );
}

async fn ping(store: impl SessionStore) {
    store.ping().await.unwrap();
}

/// Each contract case as a test on both stores.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(auth_service::MemoryStore::new()).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::redis_store(&super::unique_prefix())).await;
                }
            )*
        }
    };
}

contract!(
    put_get_delete,
    sessions_are_independent,
    unknown_token,
    sessions_expire,
    session_key_is_replaced_by_the_newest,
    an_earlier_answer_never_replaces_a_later_key,
    overwriting_a_session_refreshes_it,
    ping,
);

// ---- Redis specifics ----------------------------------------------------------------------

fn redis_store(prefix: &str) -> RedisStore {
    RedisStore::new(&redis_url(), prefix, RedisOptions::default()).expect("redis store")
}

async fn raw_redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("test redis reachable")
}

#[tokio::test]
async fn redis_keys_are_prefixed_hashed_and_expiring() {
    let prefix = unique_prefix();
    let store = redis_store(&prefix);
    let h = hash();
    store.put_session(&h, &record(9), HOUR).await.unwrap();
    store
        .put_session_key("wxa", "o9", "the-key", 1_000, HOUR)
        .await
        .unwrap();

    let mut conn = raw_redis().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}session:{h}"),
            format!("{prefix}skey-at:wxa:o9"),
            format!("{prefix}skey:wxa:o9")
        ]
    );
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 3600, "{key} has TTL {ttl}");
    }
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_entry_we_did_not_write_is_an_error_not_a_session() {
    let prefix = unique_prefix();
    let store = redis_store(&prefix);
    let h = hash();
    let mut conn = raw_redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}session:{h}"))
        .arg("not json")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        store.get_session(&h).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Fails the test instead of hanging when a store call does not give up by itself.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("the store call hung instead of failing")
}

#[tokio::test]
async fn redis_down_is_unavailable() {
    let store = RedisStore::new("redis://127.0.0.1:1", "p:", RedisOptions::default()).unwrap();
    let err = bounded(store.put_session(&hash(), &record(1), HOUR))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(matches!(
        bounded(store.ping()).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn redis_that_never_answers_is_unavailable_not_a_hang() {
    // Accepts TCP connections (the kernel's backlog) but never speaks Redis.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let store = RedisStore::new(&url, "p:", RedisOptions::default()).unwrap();
    let err = bounded(store.get_session(&hash())).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    drop(silent);
}

#[test]
fn memory_store_starts_empty() {
    assert!(MemoryStore::new().is_empty());
}
