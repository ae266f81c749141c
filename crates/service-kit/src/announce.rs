//! Announcements of changed keys on Redis pub/sub, sent by a background task so that the
//! request that made the change never waits on Redis.
//!
//! user-service announces every user whose row it changed on `<prefix>user-changed`
//! ([`crate::session_cache::user_channel`]); the gateways' caches of user rows follow that
//! channel and evict. Pub/sub is fire and forget: an announcement made while Redis is down, or
//! one dropped because too many are waiting, is lost, and the followers' entries then expire
//! on their own deadline (their TTL). That is the bound a cache following this feed states.
//! Every announcement is also made on the in-process feed ([`announce_local`]) for the
//! embedded default, where the followers share this process.

use std::{marker::PhantomData, time::Duration};

use redis::AsyncCommands as _;
use tokio::sync::mpsc;

use crate::{
    Shutdown,
    session_cache::{CacheKey, InvalidRedisUrl, announce_local},
};

/// Announcements waiting for the task; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
/// Most announcements sent in one pipeline.
const BATCH: usize = 256;
/// How long the first announcement of a pipeline waits for others: one PUBLISH round trip per
/// changed row would cost each update about as much as the hop the caches save.
const GATHER: Duration = Duration::from_millis(2);

/// Announces changed keys of one kind.
#[derive(Clone, Debug)]
pub struct Announcer<K> {
    redis: Option<mpsc::Sender<String>>,
    kind: PhantomData<fn(K)>,
}

impl<K: CacheKey> Announcer<K> {
    /// Announces on the in-process feed only (no Redis configured).
    pub fn local() -> Self {
        Self {
            redis: None,
            kind: PhantomData,
        }
    }

    /// On `channel` of the Redis at `redis_url` as well when there is one (see [`Self::redis`]),
    /// else in-process only.
    pub fn new(
        redis_url: Option<&str>,
        channel: String,
        shutdown: Shutdown,
    ) -> Result<Self, InvalidRedisUrl> {
        match redis_url {
            Some(url) => Self::redis(url, channel, shutdown),
            None => Ok(Self::local()),
        }
    }

    /// Announces on `channel` of the Redis at `url` as well, from a task that runs until
    /// `shutdown`.
    pub fn redis(url: &str, channel: String, shutdown: Shutdown) -> Result<Self, InvalidRedisUrl> {
        // redis's URL errors do not echo the URL (which may hold a password).
        let client =
            redis::Client::open(url).map_err(|e| InvalidRedisUrl(e.category().to_owned()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(publish(client, channel, rx, shutdown));
        Ok(Self {
            redis: Some(tx),
            kind: PhantomData,
        })
    }

    /// Announces `key` to every follower; never waits.
    pub fn announce(&self, key: K) {
        announce_local(key);
        if let Some(tx) = &self.redis
            && tx.try_send(key.announcement()).is_err()
        {
            count("dropped", 1);
        }
    }
}

fn count(outcome: &'static str, n: usize) {
    metrics::counter!("wxmp_cache_announcements_total", "outcome" => outcome)
        .increment(u64::try_from(n).unwrap_or(u64::MAX));
}

/// The task: takes what is queued within [`GATHER`] of the first (up to [`BATCH`]) and
/// PUBLISHes it in one pipeline over one connection, reconnecting after a failure (0.2 s doubling to 5 s; what
/// was being sent is lost, as pub/sub would lose it anyway).
async fn publish(
    client: redis::Client,
    channel: String,
    mut rx: mpsc::Receiver<String>,
    shutdown: Shutdown,
) {
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = Duration::from_millis(200);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            got = rx.recv_many(&mut batch, BATCH) => if got == 0 { return },
        }
        if batch.len() < BATCH {
            tokio::time::sleep(GATHER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
        }
        let sent = async {
            if connection.is_none() {
                let connect = client.get_multiplexed_async_connection();
                connection = Some(
                    tokio::time::timeout(Duration::from_secs(2), connect)
                        .await
                        .map_err(|_| {
                            redis::RedisError::from(std::io::Error::from(
                                std::io::ErrorKind::TimedOut,
                            ))
                        })??,
                );
            }
            let Some(conn) = connection.as_mut() else {
                return Ok(());
            };
            if let [one] = batch.as_slice() {
                let _receivers: i64 = conn.publish(&channel, one).await?;
            } else {
                let mut pipe = redis::pipe();
                for message in &batch {
                    pipe.publish(&channel, message).ignore();
                }
                pipe.query_async::<()>(conn).await?;
            }
            Ok::<_, redis::RedisError>(())
        }
        .await;
        match sent {
            Ok(()) => {
                count("sent", batch.len());
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                count("failed", batch.len());
                connection = None;
                tracing::warn!(error = %e, lost = batch.len(), channel = %channel, "announcements not sent; the followers' entries expire on their TTL");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        batch.clear();
    }
}
