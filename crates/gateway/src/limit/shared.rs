//! Rate-limit windows in Redis, shared by every gateway replica (`GATEWAY_REDIS_URL`).
//!
//! One fixed window per (limit, client key): a counter that the first event of a window
//! creates with the window as its TTL. Counting and reading are ONE round trip each, an
//! `EVAL` of [`SCRIPT`] (atomic on the server, so concurrent replicas never lose a count or
//! leave a counter without its TTL). Redis keeps the compiled script by its hash, so sending
//! the source each time costs bytes, not work.
//!
//! Any Redis failure (down, slow beyond [`REDIS_TIMEOUT`], a refused command) answers `None`,
//! and the caller falls back to its local, per-replica window. After a failure Redis is left
//! alone for [`RETRY_AFTER`] so an outage does not add a timeout to every request. The state
//! is visible in the metrics: gauge `wxmp_rate_limit_shared` (1 while Redis answers, 0 while
//! limits are local) and counter `wxmp_rate_limit_fallback_total{limit}`.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use service_kit::Secret;

/// The longest a limit check waits for Redis before deciding locally.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How long Redis is skipped after it failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// KEYS[1]: the window's counter. ARGV[1]: the window in ms. ARGV[2]: "1" counts one event,
/// "0" only reads. Answers the number of events in the current window.
const SCRIPT: &str = r"
local n
if ARGV[2] == '1' then
  n = redis.call('INCR', KEYS[1])
  if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
  end
else
  n = tonumber(redis.call('GET', KEYS[1]) or '0')
end
return n
";

/// Why the shared limits could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("invalid GATEWAY_REDIS_URL: {0}")]
pub struct InvalidUrl(String);

/// The connection to the Redis that holds the shared windows.
pub struct SharedWindows {
    client: redis::Client,
    config: AsyncConnectionConfig,
    prefix: String,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// When Redis failed last; `None` while it answers.
    failed_at: Mutex<Option<Instant>>,
    /// Whether the last decision was shared (for the log line on each change).
    shared: AtomicBool,
}

impl std::fmt::Debug for SharedWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWindows")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedWindows {
    /// Checks the URL without connecting: the gateway starts (and limits locally) while Redis
    /// is still coming up.
    pub fn new(url: &Secret, prefix: &str) -> Result<Self, InvalidUrl> {
        // redis's URL errors do not echo the URL (which may hold a password).
        let client =
            redis::Client::open(url.expose()).map_err(|e| InvalidUrl(e.category().to_owned()))?;
        metrics::gauge!("wxmp_rate_limit_shared").set(1.0);
        Ok(Self {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT)),
            prefix: format!("{prefix}ratelimit:"),
            conn: tokio::sync::Mutex::new(None),
            failed_at: Mutex::new(None),
            shared: AtomicBool::new(true),
        })
    }

    /// The number of events of `key` in its current window of `window`, after counting one if
    /// `count`; `None` when Redis cannot tell (the caller decides locally).
    pub async fn events(
        &self,
        limit: &str,
        key: &str,
        window: Duration,
        count: bool,
    ) -> Option<u64> {
        if self.resting() {
            return None;
        }
        let redis_key = format!("{}{limit}:{key}", self.prefix);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let outcome = tokio::time::timeout(REDIS_TIMEOUT * 2, async {
            let mut conn = self.conn().await?;
            redis::cmd("EVAL")
                .arg(SCRIPT)
                .arg(1)
                .arg(&redis_key)
                .arg(window_ms)
                .arg(if count { "1" } else { "0" })
                .query_async::<u64>(&mut conn)
                .await
        })
        .await;
        match outcome {
            Ok(Ok(n)) => {
                self.healthy();
                Some(n)
            }
            Ok(Err(e)) => {
                self.failed(limit, &e.to_string()).await;
                None
            }
            Err(_) => {
                self.failed(limit, "timed out").await;
                None
            }
        }
    }

    async fn conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// True while Redis is being left alone after a failure.
    fn resting(&self) -> bool {
        let failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER)
    }

    fn healthy(&self) {
        *self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        if !self.shared.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: rate limits are shared across replicas");
            metrics::gauge!("wxmp_rate_limit_shared").set(1.0);
        }
    }

    async fn failed(&self, limit: &str, why: &str) {
        // Reconnect on the next try: the connection may be the broken part.
        *self.conn.lock().await = None;
        *self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        if self.shared.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                limit,
                error = why,
                "Redis failed: rate limits fall back to this replica's memory"
            );
            metrics::gauge!("wxmp_rate_limit_shared").set(0.0);
        }
    }
}
