//! The gateway's cache of user rows for `GET /me` (`GATEWAY_USER_CACHE_*`): a repeated `/me`
//! is answered without user-service; an update through this replica, an announcement on
//! `<prefix>user-changed` and an announcement that is not an id each make the next `/me` ask
//! user-service again.

use std::time::Duration;

use crate::helpers::{GOOD_TOKEN, Options, Stack, shared_redis, start, wait_until};
use serde_json::json;

/// `GET /me` as the good token's user (7); its profile's user id.
async fn me(s: &Stack) -> i64 {
    let (status, body) = s.get_auth("/me", Some(GOOD_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["user_id"].as_i64().unwrap()
}

fn asked(s: &Stack) -> usize {
    s.calls.of("get_user").len()
}

/// Whether the next `/me` reaches user-service.
async fn next_me_asks(s: &Stack) -> bool {
    let before = asked(s);
    assert_eq!(me(s).await, 7);
    asked(s) > before
}

async fn publish(url: &str, channel: &str, message: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receivers, 1, "the gateway follows {channel}");
}

#[tokio::test]
async fn me_is_served_from_the_cache_until_the_user_changes() {
    let (url, prefix) = shared_redis();
    let s = start(Options {
        redis: Some((url.clone(), prefix.clone())),
        ..Default::default()
    })
    .await;
    // The cache serves once its feed is subscribed: then a second /me stays in the gateway.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            next_me_asks(&s).await;
            !next_me_asks(&s).await
        })
        .await,
        "a repeated /me never came from the cache"
    );
    for _ in 0..5 {
        assert!(!next_me_asks(&s).await);
    }

    // An update through this replica: the next /me reads the new row.
    let (status, body) = s
        .post_json(
            "/userinfo/",
            json!({"token": GOOD_TOKEN, "encryptedData": "x", "iv": "y"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(next_me_asks(&s).await, "an update here evicts at once");
    assert!(!next_me_asks(&s).await);

    // user-service's announcement (an update on another replica): evicted.
    let channel = service_kit::session_cache::user_channel(&prefix);
    publish(&url, &channel, "7").await;
    assert!(
        wait_until(Duration::from_secs(2), || async { next_me_asks(&s).await }).await,
        "the announcement evicts"
    );
    assert!(!next_me_asks(&s).await);
    // Another user's change leaves this row alone.
    publish(&url, &channel, "8").await;
    let other = s.get_auth("/me", Some("tok-other")).await;
    assert_eq!(other.1["data"]["user_id"], json!(8));
    assert!(!next_me_asks(&s).await);
    // A message that is not an id: everything is forgotten rather than guessed.
    publish(&url, &channel, "junk").await;
    assert!(
        wait_until(Duration::from_secs(2), || async { next_me_asks(&s).await }).await,
        "an unreadable announcement clears the cache"
    );
    s.stop().await;
}

#[tokio::test]
async fn without_a_feed_every_me_asks_user_service() {
    let s = start(Options::default()).await;
    for _ in 0..3 {
        assert!(next_me_asks(&s).await, "no feed, no cache");
    }
    s.stop().await;
}
