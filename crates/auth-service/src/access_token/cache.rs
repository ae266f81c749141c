//! Where the shared access_token lives: Redis (every replica sees one token per app) or
//! memory (the embedded single-process default).
//!
//! Redis keys, all under `AUTH_REDIS_PREFIX`:
//! - `at:<appid>` → the [`CachedToken`] as JSON, `PX` = its remaining WeChat lifetime;
//! - `at:<appid>:lock` → the fencing value of the replica refreshing it, `PX` = the lock TTL;
//! - `at:<appid>:fence` → a counter: every lock takes the next value (the token's generation);
//! - `at:<appid>:forced` → present while a forced refresh may not run again (`PX`).
//!
//! A token is stored only by a script that first checks the lock still holds the writer's
//! fencing value, so a replica that stalled past its lock TTL can never overwrite the token
//! its successor fetched.

use std::{
    collections::HashMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use deadpool_redis::redis;
use serde::{Deserialize, Serialize};

use crate::store::{RedisStore, StoreError};

/// One app's token as every replica sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedToken {
    pub access_token: String,
    /// Unix milliseconds when WeChat expires it.
    pub expires_at_ms: i64,
    /// Unix milliseconds from which the next caller refreshes it (ahead of expiry).
    pub refresh_at_ms: i64,
    /// The fencing value of the refresh that stored it; grows with every refresh.
    pub generation: i64,
}

/// The operations the refresh protocol needs. Every method is one atomic step.
pub trait TokenCache: Send + Sync + 'static {
    fn get(
        &self,
        app_id: &str,
    ) -> impl Future<Output = Result<Option<CachedToken>, StoreError>> + Send;

    /// Takes the refresh lock for `ttl` when nobody holds it: the fencing value (> 0), or
    /// `None` while another holder has it.
    fn lock(
        &self,
        app_id: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// True while someone holds the refresh lock.
    fn locked(&self, app_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores `token` (for `ttl`) and releases the lock, only if the lock still holds
    /// `fence`; false when it does not (the lock expired and maybe passed on).
    fn store(
        &self,
        app_id: &str,
        fence: i64,
        token: &CachedToken,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases the lock if it still holds `fence`.
    fn unlock(
        &self,
        app_id: &str,
        fence: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims the right to force a refresh, at most once per `interval` per app.
    fn claim_force(
        &self,
        app_id: &str,
        interval: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The cache `AUTH_REDIS_URL` selects.
pub enum AnyTokenCache {
    Redis(RedisTokenCache),
    Memory(MemoryTokenCache),
}

macro_rules! dispatch {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            AnyTokenCache::Redis($c) => $call.await,
            AnyTokenCache::Memory($c) => $call.await,
        }
    };
}

impl TokenCache for AnyTokenCache {
    async fn get(&self, app_id: &str) -> Result<Option<CachedToken>, StoreError> {
        dispatch!(self, c => c.get(app_id))
    }
    async fn lock(&self, app_id: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        dispatch!(self, c => c.lock(app_id, ttl))
    }
    async fn locked(&self, app_id: &str) -> Result<bool, StoreError> {
        dispatch!(self, c => c.locked(app_id))
    }
    async fn store(
        &self,
        app_id: &str,
        fence: i64,
        token: &CachedToken,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, c => c.store(app_id, fence, token, ttl))
    }
    async fn unlock(&self, app_id: &str, fence: i64) -> Result<(), StoreError> {
        dispatch!(self, c => c.unlock(app_id, fence))
    }
    async fn claim_force(&self, app_id: &str, interval: Duration) -> Result<bool, StoreError> {
        dispatch!(self, c => c.claim_force(app_id, interval))
    }
}

/// The token cache on Redis, on its own multiplexed connection.
pub struct RedisTokenCache {
    redis: RedisStore,
}

/// Takes the lock and the next fencing value in one step.
const LOCK_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[1])
return fence";

/// Stores the token and releases the lock, only for the lock's holder.
const STORE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return 1";

const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn eval(script: &str, keys: &[&str], args: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(a);
    }
    cmd
}

impl RedisTokenCache {
    pub fn new(redis: RedisStore) -> Self {
        Self { redis }
    }

    fn key(&self, app_id: &str, suffix: &str) -> String {
        format!("{}at:{app_id}{suffix}", self.redis.prefix())
    }
}

impl TokenCache for RedisTokenCache {
    async fn get(&self, app_id: &str) -> Result<Option<CachedToken>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(self.key(app_id, ""));
        let json: Option<String> = self.redis.query(&get).await?;
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|_| StoreError::Corrupt("an access_token entry is unreadable".into()))
        })
        .transpose()
    }

    async fn lock(&self, app_id: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        let cmd = eval(
            LOCK_SCRIPT,
            &[&self.key(app_id, ":lock"), &self.key(app_id, ":fence")],
            &[millis(ttl).to_string()],
        );
        let fence: i64 = self.redis.query(&cmd).await?;
        Ok((fence > 0).then_some(fence))
    }

    async fn locked(&self, app_id: &str) -> Result<bool, StoreError> {
        let mut exists = redis::cmd("EXISTS");
        exists.arg(self.key(app_id, ":lock"));
        let n: i64 = self.redis.query(&exists).await?;
        Ok(n > 0)
    }

    async fn store(
        &self,
        app_id: &str,
        fence: i64,
        token: &CachedToken,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let cmd = eval(
            STORE_SCRIPT,
            &[&self.key(app_id, ":lock"), &self.key(app_id, "")],
            &[fence.to_string(), json, millis(ttl).to_string()],
        );
        let stored: i64 = self.redis.query(&cmd).await?;
        Ok(stored == 1)
    }

    async fn unlock(&self, app_id: &str, fence: i64) -> Result<(), StoreError> {
        let cmd = eval(
            UNLOCK_SCRIPT,
            &[&self.key(app_id, ":lock")],
            &[fence.to_string()],
        );
        self.redis.query::<i64>(&cmd).await.map(drop)
    }

    async fn claim_force(&self, app_id: &str, interval: Duration) -> Result<bool, StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(self.key(app_id, ":forced"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis(interval));
        let answer: Option<String> = self.redis.query(&set).await?;
        Ok(answer.is_some())
    }
}

#[derive(Default)]
struct MemoryApp {
    token: Option<(CachedToken, Instant)>,
    lock: Option<(i64, Instant)>,
    fence: i64,
    forced_until: Option<Instant>,
}

/// The token cache of a single process (`wxmp up` without Redis).
#[derive(Default)]
pub struct MemoryTokenCache {
    apps: Mutex<HashMap<String, MemoryApp>>,
}

impl MemoryTokenCache {
    fn with<T>(&self, app_id: &str, f: impl FnOnce(&mut MemoryApp, Instant) -> T) -> T {
        let mut apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let app = apps.entry(app_id.to_owned()).or_default();
        let now = Instant::now();
        if app.lock.is_some_and(|(_, until)| until <= now) {
            app.lock = None;
        }
        if app.token.as_ref().is_some_and(|(_, until)| *until <= now) {
            app.token = None;
        }
        f(app, now)
    }
}

impl TokenCache for MemoryTokenCache {
    async fn get(&self, app_id: &str) -> Result<Option<CachedToken>, StoreError> {
        Ok(self.with(app_id, |a, _| a.token.as_ref().map(|(t, _)| t.clone())))
    }

    async fn lock(&self, app_id: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        Ok(self.with(app_id, |a, now| {
            if a.lock.is_some() {
                return None;
            }
            a.fence += 1;
            a.lock = Some((a.fence, now + ttl));
            Some(a.fence)
        }))
    }

    async fn locked(&self, app_id: &str) -> Result<bool, StoreError> {
        Ok(self.with(app_id, |a, _| a.lock.is_some()))
    }

    async fn store(
        &self,
        app_id: &str,
        fence: i64,
        token: &CachedToken,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.with(app_id, |a, now| {
            if a.lock.map(|(f, _)| f) != Some(fence) {
                return false;
            }
            a.token = Some((token.clone(), now + ttl));
            a.lock = None;
            true
        }))
    }

    async fn unlock(&self, app_id: &str, fence: i64) -> Result<(), StoreError> {
        self.with(app_id, |a, _| {
            if a.lock.map(|(f, _)| f) == Some(fence) {
                a.lock = None;
            }
        });
        Ok(())
    }

    async fn claim_force(&self, app_id: &str, interval: Duration) -> Result<bool, StoreError> {
        Ok(self.with(app_id, |a, now| {
            if a.forced_until.is_some_and(|until| until > now) {
                return false;
            }
            a.forced_until = Some(now + interval);
            true
        }))
    }
}
