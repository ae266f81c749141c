//! Sessions in Redis (production): shared by every replica, survive restarts.
//!
//! Keys: `<prefix>session:<sha256hex>` → the record as JSON, and
//! `<prefix>skey:<app_id>:<openid>` → the newest session_key. Every key is written with
//! `SET .. EX`, so Redis itself forgets expired sessions.
//!
//! All calls share ONE multiplexed connection (cloned per call; commands of concurrent calls
//! are pipelined on it). A pool would add nothing but cost: deadpool-redis checks every
//! connection it hands out with an `UNWATCH` + `PING` round trip, which doubled the Redis
//! round trips of every call. A connection that fails at the transport level is dropped and
//! the next call opens a new one.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncConnectionConfig, aio::MultiplexedConnection};
use tokio::sync::Mutex;

use super::{SessionRecord, SessionStore, StoreError};

/// How long any Redis step may take. Short, so a Redis outage answers DEPENDENCY_UNAVAILABLE
/// within a second or two instead of holding the caller until its own deadline.
#[derive(Clone, Copy, Debug)]
pub struct RedisOptions {
    /// Waiting while another call (re)connects.
    pub wait_timeout: Duration,
    /// Opening a new connection (TCP connect + handshake).
    pub connect_timeout: Duration,
    /// One command's answer.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            wait_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        }
    }
}

/// A [`SessionStore`] on one shared, multiplexed Redis connection.
pub struct RedisStore {
    /// Boxed: only used to (re)connect, and large next to the memory store.
    connector: Box<(redis::Client, AsyncConnectionConfig)>,
    options: RedisOptions,
    /// `None` until the first call, and again after the connection failed.
    conn: Mutex<Option<MultiplexedConnection>>,
    prefix: String,
}

impl RedisStore {
    /// Checks the URL without connecting: the service starts while Redis is still coming up,
    /// and each call reports Redis's state on its own.
    pub fn new(
        url: &str,
        prefix: impl Into<String>,
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        // redis's URL errors do not echo the URL (which may hold a password).
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::Unavailable(format!("invalid AUTH_REDIS_URL: {}", e.category()))
        })?;
        Ok(Self {
            connector: Box::new((client, config)),
            options,
            conn: Mutex::new(None),
            prefix: prefix.into(),
        })
    }

    /// The prefix of every key this store writes.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn session_key(&self, token_hash: &str) -> String {
        format!("{}session:{token_hash}", self.prefix)
    }

    fn skey_key(&self, app_id: &str, openid: &str) -> String {
        // Neither an appid nor an openid contains ':', so the key is unambiguous.
        format!("{}skey:{app_id}:{openid}", self.prefix)
    }

    /// When WeChat's answer carrying the stored session_key arrived (unix ms).
    fn skey_at_key(&self, app_id: &str, openid: &str) -> String {
        format!("{}skey-at:{app_id}:{openid}", self.prefix)
    }

    /// The shared connection, opened on first use or after a failure.
    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = tokio::time::timeout(self.options.wait_timeout, self.conn.lock())
            .await
            .map_err(|_| StoreError::Unavailable("timed out waiting for a connection".into()))?;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        // Creation is connect + (with a password) AUTH: one connect and one response.
        let setup = self.options.connect_timeout + self.options.response_timeout;
        let conn = tokio::time::timeout(
            setup,
            self.connector
                .0
                .get_multiplexed_async_connection_with_config(&self.connector.1),
        )
        .await
        .map_err(|_| StoreError::Unavailable("timed out connecting".into()))?
        .map_err(unavailable)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Maps a command's error; a broken connection is forgotten so the next call reconnects.
    async fn failed(&self, e: redis::RedisError) -> StoreError {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            *self.conn.lock().await = None;
        }
        unavailable(e)
    }

    /// One command on the shared connection (also used by the access_token cache).
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(e).await),
        }
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// `SET` wants whole seconds; round up so a sub-second TTL still lives a moment.
fn ttl_secs(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// KEYS: the session_key, its answer time; ARGV: key, answer time (unix ms), TTL (s). Writes
/// both unless a later answer's key is stored; answers 1 when written.
const PUT_NEWEST_SESSION_KEY: &str = r"
local stored = redis.call('GET', KEYS[2])
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
";

/// KEYS: the session; ARGV: the revocation channel, the token hash. Deletes the session and,
/// when one existed, publishes its hash on the channel; answers how many keys were deleted.
const DELETE_AND_ANNOUNCE: &str = r"
local n = redis.call('DEL', KEYS[1])
if n > 0 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return n
";

impl SessionStore for RedisStore {
    async fn put_session(
        &self,
        token_hash: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut set = redis::cmd("SET");
        set.arg(self.session_key(token_hash))
            .arg(json)
            .arg("EX")
            .arg(ttl_secs(ttl));
        self.query::<()>(&set).await
    }

    async fn get_session(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRecord, Duration)>, StoreError> {
        let key = self.session_key(token_hash);
        let mut conn = self.conn().await?;
        // MULTI/EXEC: the value and its TTL from the same instant.
        let answer: Result<(Option<String>, i64), _> = redis::pipe()
            .atomic()
            .get(&key)
            .pttl(&key)
            .query_async(&mut conn)
            .await;
        let (json, pttl) = match answer {
            Ok(a) => a,
            Err(e) => return Err(self.failed(e).await),
        };
        let Some(json) = json else { return Ok(None) };
        // PTTL: -2 missing (raced with expiry), -1 no TTL (not ours: we always set one).
        if pttl == -2 {
            return Ok(None);
        }
        let remaining = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
        let record = serde_json::from_str(&json)
            .map_err(|_| StoreError::Corrupt("a session is not a session record".into()))?;
        Ok(Some((record, remaining)))
    }

    async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        // One script: the session is gone before any replica hears of it, and a session
        // that existed is always announced (gateways and user-services evict their cached
        // answer, see `service_kit::session_cache`).
        let mut eval = redis::cmd("EVAL");
        eval.arg(DELETE_AND_ANNOUNCE)
            .arg(1)
            .arg(self.session_key(token_hash))
            .arg(service_kit::session_cache::channel(&self.prefix))
            .arg(token_hash);
        let removed: i64 = self.query(&eval).await?;
        Ok(removed > 0)
    }

    async fn put_session_key(
        &self,
        app_id: &str,
        openid: &str,
        session_key: &str,
        answered_at_ms: i64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        // One script, so no other login's SET lands between the comparison and ours. The key
        // itself stays a plain string (a reader needs one GET; replicas of an older version
        // read and write it unchanged); its answer time lives beside it.
        let mut eval = redis::cmd("EVAL");
        eval.arg(PUT_NEWEST_SESSION_KEY)
            .arg(2)
            .arg(self.skey_key(app_id, openid))
            .arg(self.skey_at_key(app_id, openid))
            .arg(session_key)
            .arg(answered_at_ms)
            .arg(ttl_secs(ttl));
        self.query::<i64>(&eval).await.map(drop)
    }

    async fn get_session_key(
        &self,
        app_id: &str,
        openid: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(self.skey_key(app_id, openid));
        self.query(&get).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_secs(5)), 5);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }

    #[test]
    fn a_bad_url_does_not_echo_the_password() {
        let err = RedisStore::new("http://user:hunter2@x", "p:", RedisOptions::default())
            .err()
            .expect("not a redis url");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
