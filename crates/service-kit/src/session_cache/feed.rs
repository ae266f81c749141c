//! The feeds a cache follows: the Redis channels and the in-process broadcast its announcements
//! arrive on, and the [`Follower`] that hears them (a cache evicts).

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{CacheKey, SessionCache};
use crate::Shutdown;

/// The Redis channel auth-service announces ended sessions on: `<prefix>session-revoked`.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}session-revoked")
}

/// What a feed's follower does with what the feed says.
pub trait Follower<K>: Send + Sync + 'static {
    /// `key` changed (or ended).
    fn announced(&self, key: K);
    /// Announcements may have been missed (a follower that lagged, a message not understood).
    fn missed(&self);
    /// The feed is (re)connected; whatever it said while down was missed.
    fn connected(&self);
    /// The feed is down.
    fn lost(&self);
}

/// A cache follows its feed by evicting what is announced (see the module docs).
impl<V: Clone + Send + Sync + 'static, K: CacheKey> Follower<K> for SessionCache<V, K> {
    fn announced(&self, key: K) {
        self.evict(&key);
    }

    fn missed(&self) {
        self.clear();
    }

    fn connected(&self) {
        self.feed_connected();
    }

    fn lost(&self) {
        self.feed_lost();
    }
}

/// The Redis channel user-service announces changed users on: `<prefix>user-changed`.
pub fn user_channel(prefix: &str) -> String {
    format!("{prefix}user-changed")
}

/// The Redis channel auth-service announces logins on: `<prefix>key-rotated`.
pub fn rotation_channel(prefix: &str) -> String {
    format!("{prefix}key-rotated")
}

/// Announces an ended session or a changed user to the caches following the in-process feed
/// (none outside the embedded default: then this costs nothing).
pub fn announce_local<K: CacheKey>(key: K) {
    let _nobody_listening = K::local_bus().send(key);
}

/// Tells `follower` (a follower: it evicts) what [`announce_local`] announces, until `shutdown`.
pub fn follow_local<K: CacheKey, F: Follower<K>>(
    follower: Arc<F>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let mut rx = K::local_bus().subscribe();
    follower.connected();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                got = rx.recv() => match got {
                    Ok(key) => follower.announced(key),
                    Err(broadcast::error::RecvError::Lagged(_)) => follower.missed(),
                    Err(broadcast::error::RecvError::Closed) => {
                        follower.lost();
                        return;
                    }
                },
            }
        }
    })
}

/// Tells `follower` what its feed announces until `shutdown`: the in-process feed when
/// `in_process` (`wxmp up`, every service in one process), else `channel` on the Redis at
/// `redis_url`; `None` without either (no feed: the cache stays off).
pub fn follow<K: CacheKey, F: Follower<K>>(
    in_process: bool,
    redis_url: Option<&str>,
    channel: String,
    follower: Arc<F>,
    shutdown: &Shutdown,
) -> Result<Option<tokio::task::JoinHandle<()>>, InvalidRedisUrl> {
    Ok(match redis_url {
        _ if in_process => Some(follow_local(follower, shutdown.clone())),
        Some(url) => Some(follow_redis(url, channel, follower, shutdown.clone())?),
        None => None,
    })
}

/// Why the revocation feed could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL for the revocation feed: {0}")]
pub struct InvalidRedisUrl(pub(crate) String);

/// Tells `follower` (a cache: it evicts) what is announced on `channel` of the Redis at
/// `url`, until `shutdown`. Reconnects after a failure (0.2 s, doubling to 5 s); a cache is
/// dark while disconnected and cleared on each (re)subscription.
pub fn follow_redis<K: CacheKey, F: Follower<K>>(
    url: &str,
    channel: String,
    follower: Arc<F>,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, InvalidRedisUrl> {
    // redis's URL errors do not echo the URL (which may hold a password).
    let client = redis::Client::open(url).map_err(|e| InvalidRedisUrl(e.category().to_owned()))?;
    metrics::gauge!("wxmp_session_cache_feed_up", "feed" => K::FEED).set(0.0);
    Ok(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let followed = tokio::select! {
                _ = shutdown.wait() => return,
                r = follow_once(&client, &channel, &*follower) => r,
            };
            follower.lost();
            match followed {
                Ok(()) => {
                    tracing::warn!(
                        feed = K::FEED,
                        "feed closed; its cache is off until it is back"
                    );
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::warn!(error = %e, feed = K::FEED, "feed down; its cache is off until it is back");
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }))
}

/// One subscription: subscribes, marks the cache live, evicts until the stream ends.
async fn follow_once<K: CacheKey, F: Follower<K>>(
    client: &redis::Client,
    channel: &str,
    follower: &F,
) -> redis::RedisResult<()> {
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    pubsub.subscribe(channel).await?;
    follower.connected();
    tracing::info!(feed = K::FEED, "feed subscribed; its cache serves");
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        match K::parse(message.get_payload_bytes()) {
            Some(key) => follower.announced(key),
            // Not ours: forget everything rather than guess.
            None => follower.missed(),
        }
    }
    Ok(())
}
