//! Where sessions and session keys live: Redis in production, memory in the embedded default.
//!
//! Both back ends implement [`SessionStore`] and pass one contract test suite
//! (`tests/store_contract.rs`). Every entry has a TTL, so nothing outlives its use.

use std::{future::Future, time::Duration};

use serde::{Deserialize, Serialize};

pub mod memory;
pub mod redis;

pub use memory::MemoryStore;
pub use redis::{RedisOptions, RedisStore};

/// What a session token stands for. Stored as JSON under the token's SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: i64,
    pub app_id: String,
    pub openid: String,
    /// Empty when WeChat sent none.
    #[serde(default)]
    pub unionid: String,
}

/// Why the store could not answer. Neither variant carries a token or a key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The back end cannot be reached or did not answer in time.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The back end answered something we did not write (a foreign key under our prefix).
    #[error("session store holds an unreadable entry: {0}")]
    Corrupt(String),
}

/// Sessions (by token hash) and the newest session_key per (app_id, openid).
///
/// Methods return `Send` futures so the gRPC handlers that call them stay `Send`.
pub trait SessionStore: Send + Sync + 'static {
    /// Stores (or overwrites) a session for `ttl`.
    fn put_session(
        &self,
        token_hash: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The live session and its remaining lifetime; `None` when unknown or expired.
    fn get_session(
        &self,
        token_hash: &str,
    ) -> impl Future<Output = Result<Option<(SessionRecord, Duration)>, StoreError>> + Send;

    /// Removes a session; answers whether a live one existed.
    fn delete_session(
        &self,
        token_hash: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores the user's session_key for `ttl`, unless a key answered later is already
    /// stored: only the newest code2Session's key decrypts what the phone sends next, and two
    /// logins of one user (a double tap) may store theirs in either order. `answered_at_ms`
    /// is when WeChat's answer arrived (unix ms); the later one wins, a tie overwrites.
    fn put_session_key(
        &self,
        app_id: &str,
        openid: &str,
        session_key: &str,
        answered_at_ms: i64,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The newest session_key of the user, if one is live.
    fn get_session_key(
        &self,
        app_id: &str,
        openid: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// A cheap round trip, for readiness checks.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The store a running service uses, chosen by configuration (`AUTH_REDIS_URL`).
pub enum AnyStore {
    Redis(RedisStore),
    Memory(MemoryStore),
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Redis(_) => "AnyStore::Redis",
            Self::Memory(_) => "AnyStore::Memory",
        })
    }
}

/// Forwards a call to whichever store is configured.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Redis($s) => $call.await,
            AnyStore::Memory($s) => $call.await,
        }
    };
}

impl SessionStore for AnyStore {
    async fn put_session(
        &self,
        token_hash: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_session(token_hash, record, ttl))
    }

    async fn get_session(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRecord, Duration)>, StoreError> {
        dispatch!(self, s => s.get_session(token_hash))
    }

    async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_session(token_hash))
    }

    async fn put_session_key(
        &self,
        app_id: &str,
        openid: &str,
        session_key: &str,
        answered_at_ms: i64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_session_key(app_id, openid, session_key, answered_at_ms, ttl))
    }

    async fn get_session_key(
        &self,
        app_id: &str,
        openid: &str,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.get_session_key(app_id, openid))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }
}
