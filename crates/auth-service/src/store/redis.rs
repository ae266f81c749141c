//! Sessions in Redis (production): shared by every replica, survive restarts.
//!
//! Keys: `<prefix>session:<sha256hex>` → the record as JSON, and
//! `<prefix>skey:<app_id>:<openid>` → the newest session_key. Every key is written with
//! `SET .. EX`, so Redis itself forgets expired sessions.

use std::time::Duration;

use deadpool_redis::{
    Manager, Pool, Runtime,
    redis::{self, AsyncConnectionConfig},
};

use super::{SessionRecord, SessionStore, StoreError};

/// How long any Redis step may take. Short, so a Redis outage answers DEPENDENCY_UNAVAILABLE
/// within a second or two instead of holding the caller until its own deadline.
#[derive(Clone, Copy, Debug)]
pub struct RedisOptions {
    /// Most pooled connections (each is multiplexed, so few are needed).
    pub max_size: usize,
    /// Waiting for a free pooled connection.
    pub wait_timeout: Duration,
    /// Opening a new connection (TCP connect + handshake).
    pub connect_timeout: Duration,
    /// One command's answer.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        }
    }
}

/// A [`SessionStore`] on a deadpool of multiplexed Redis connections.
pub struct RedisStore {
    pool: Pool,
    prefix: String,
}

impl RedisStore {
    /// Builds the pool without connecting: the service starts while Redis is still coming up,
    /// and each call reports Redis's state on its own.
    pub fn new(
        url: &str,
        prefix: impl Into<String>,
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        // redis's URL errors do not echo the URL (which may hold a password).
        let manager = Manager::new_with_config(url, connection).map_err(|e| {
            StoreError::Unavailable(format!("invalid AUTH_REDIS_URL: {}", e.category()))
        })?;
        let pool = Pool::builder(manager)
            .max_size(options.max_size)
            .wait_timeout(Some(options.wait_timeout))
            // Creation is connect + (with a password) AUTH: one connect and one response.
            .create_timeout(Some(options.connect_timeout + options.response_timeout))
            .recycle_timeout(Some(options.response_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            pool,
            prefix: prefix.into(),
        })
    }

    fn session_key(&self, token_hash: &str) -> String {
        format!("{}session:{token_hash}", self.prefix)
    }

    fn skey_key(&self, app_id: &str, openid: &str) -> String {
        // Neither an appid nor an openid contains ':', so the key is unambiguous.
        format!("{}skey:{app_id}:{openid}", self.prefix)
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
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

impl SessionStore for RedisStore {
    async fn put_session(
        &self,
        token_hash: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.session_key(token_hash))
            .arg(json)
            .arg("EX")
            .arg(ttl_secs(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn get_session(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRecord, Duration)>, StoreError> {
        let key = self.session_key(token_hash);
        let mut conn = self.conn().await?;
        // MULTI/EXEC: the value and its TTL from the same instant.
        let (json, pttl): (Option<String>, i64) = redis::pipe()
            .atomic()
            .get(&key)
            .pttl(&key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
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
        let mut conn = self.conn().await?;
        let removed: i64 = redis::cmd("DEL")
            .arg(self.session_key(token_hash))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn put_session_key(
        &self,
        app_id: &str,
        openid: &str,
        session_key: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.skey_key(app_id, openid))
            .arg(session_key)
            .arg("EX")
            .arg(ttl_secs(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn get_session_key(
        &self,
        app_id: &str,
        openid: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("GET")
            .arg(self.skey_key(app_id, openid))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(unavailable)
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
