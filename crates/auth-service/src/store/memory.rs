//! Sessions in process memory: the embedded default (`wxmp up`), one replica, lost on restart.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{SessionRecord, SessionStore, StoreError};

/// Sweep expired entries at least this often (checked on writes)...
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// ...or after this many writes, whichever comes first, so memory stays bounded by the live
/// entries plus what a burst of writes adds between two sweeps.
const SWEEP_EVERY_WRITES: usize = 4096;

struct Entry<T> {
    value: T,
    expires: Instant,
}

impl<T> Entry<T> {
    fn live(&self, now: Instant) -> bool {
        self.expires > now
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Entry<SessionRecord>>,
    /// The key and when WeChat's answer carrying it arrived (unix ms).
    session_keys: HashMap<(String, String), Entry<(String, i64)>>,
    writes_since_sweep: usize,
    last_sweep: Option<Instant>,
}

impl Inner {
    /// Called on every write: drops expired entries when a sweep is due.
    fn after_write(&mut self, now: Instant) {
        self.writes_since_sweep += 1;
        let due = self.writes_since_sweep >= SWEEP_EVERY_WRITES
            || self
                .last_sweep
                .is_none_or(|last| now.duration_since(last) >= SWEEP_INTERVAL);
        if due {
            self.sessions.retain(|_, e| e.live(now));
            self.session_keys.retain(|_, e| e.live(now));
            self.writes_since_sweep = 0;
            self.last_sweep = Some(now);
        }
    }
}

/// A [`SessionStore`] in a mutex-guarded map. The lock is never held across an `.await`.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Entries held, expired or not (for tests of the sweep).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.sessions.len() + inner.session_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expiry(now: Instant, ttl: Duration) -> Instant {
    // A TTL too large to add is as good as forever.
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl SessionStore for MemoryStore {
    async fn put_session(
        &self,
        token_hash: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sessions.insert(
            token_hash.to_owned(),
            Entry {
                value: record.clone(),
                expires: expiry(now, ttl),
            },
        );
        inner.after_write(now);
        Ok(())
    }

    async fn get_session(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRecord, Duration)>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.sessions.get(token_hash) {
            Some(e) if e.live(now) => Ok(Some((e.value.clone(), e.expires - now))),
            Some(_) => {
                inner.sessions.remove(token_hash);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .sessions
            .remove(token_hash)
            .is_some_and(|e| e.live(now)))
    }

    async fn put_session_key(
        &self,
        app_id: &str,
        openid: &str,
        session_key: &str,
        answered_at_ms: i64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let key = (app_id.to_owned(), openid.to_owned());
        let newer_stored = inner
            .session_keys
            .get(&key)
            .is_some_and(|e| e.live(now) && e.value.1 > answered_at_ms);
        if newer_stored {
            return Ok(());
        }
        inner.session_keys.insert(
            key,
            Entry {
                value: (session_key.to_owned(), answered_at_ms),
                expires: expiry(now, ttl),
            },
        );
        inner.after_write(now);
        Ok(())
    }

    async fn get_session_key(
        &self,
        app_id: &str,
        openid: &str,
    ) -> Result<Option<String>, StoreError> {
        let now = Instant::now();
        let key = (app_id.to_owned(), openid.to_owned());
        let mut inner = self.lock();
        match inner.session_keys.get(&key) {
            Some(e) if e.live(now) => Ok(Some(e.value.0.clone())),
            Some(_) => {
                inner.session_keys.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: i64) -> SessionRecord {
        SessionRecord {
            user_id: n,
            app_id: "wxa".into(),
            openid: format!("o{n}"),
            unionid: String::new(),
        }
    }

    #[tokio::test]
    async fn expired_entries_are_swept_on_later_writes() {
        let store = MemoryStore::new();
        // The first write sweeps (nothing yet) and starts the interval.
        store
            .put_session("first", &record(0), Duration::from_secs(60))
            .await
            .unwrap();
        for i in 0..100 {
            store
                .put_session(&format!("h{i}"), &record(i), Duration::from_millis(1))
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 101);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Enough writes to force a sweep regardless of the interval.
        for _ in 0..SWEEP_EVERY_WRITES {
            store
                .put_session("same", &record(1), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(store.len(), 2, "expired sessions were not swept");
    }
}
