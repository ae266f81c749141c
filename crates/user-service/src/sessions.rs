//! Who a session token is, with its session_key: auth-service's `AuthenticateWithSessionKey`,
//! its answers reused for a few seconds when a session cache is configured.
//!
//! `POST /userinfo/` and `/phone/` reach user-service with the caller's token, and before this
//! cache every one of them cost a gRPC call to auth-service and a Redis read there (the
//! per-hop table in `bench/results.md`). The cache is the gateway's
//! ([`service_kit::session_cache`]): keyed by the token's SHA-256, bounded in entries, each
//! answer kept at most the TTL and never past the session's own expiry, evicted when
//! auth-service announces a logout, dark (asking auth-service every time) while its revocation
//! feed is down. What it keeps here includes the session_key: it stays in this process's
//! memory, inside a `Secret` (never printed), and is dropped with the entry.
//!
//! A cached key can go stale without a logout: a new login of the same user (another
//! `wx.login()`) rotates the session_key at WeChat and in auth-service, and the payloads the
//! mini program then sends are encrypted with the new key. So a payload that fails to open
//! with a cached key is retried once with a fresh answer ([`Sessions::refresh`]).

use std::{sync::Arc, time::Duration};

use service_kit::session_cache::{SessionCache, TokenKey};
use tonic::metadata::MetadataMap;

use crate::{Error, SessionKeys, session_keys::Session};

/// The session cache's entry: what auth-service answered, minus the expiry (the cache keeps
/// the entry's own deadline).
pub type SessionAnswers = SessionCache<Session>;

/// An answer and whether it came from the cache (so may be stale).
#[derive(Debug)]
pub struct Authenticated {
    pub session: Session,
    pub cached: bool,
}

/// auth-service's answers for tokens, through the cache when there is one.
#[derive(Clone, Debug)]
pub struct Sessions<K> {
    keys: K,
    pub(crate) cache: Option<Arc<SessionAnswers>>,
}

impl<K: SessionKeys> Sessions<K> {
    pub fn new(keys: K, cache: Option<Arc<SessionAnswers>>) -> Self {
        Self { keys, cache }
    }

    /// Where session keys come from (for callers named by a principal).
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// The token's session: the cached answer while it lasts, else auth-service's.
    pub async fn authenticate(
        &self,
        incoming: &MetadataMap,
        token: &str,
    ) -> Result<Authenticated, Error> {
        if let Some(cache) = &self.cache
            && let Some(session) = cache.get(&TokenKey::of(token))
        {
            metrics::counter!("wxmp_user_session_cache_total", "outcome" => "hit").increment(1);
            return Ok(Authenticated {
                session,
                cached: true,
            });
        }
        let session = self.fetch(incoming, token).await?;
        Ok(Authenticated {
            session,
            cached: false,
        })
    }

    /// auth-service's answer now, replacing a cached one whose key failed to open a payload
    /// (the user logged in again since).
    pub async fn refresh(&self, incoming: &MetadataMap, token: &str) -> Result<Session, Error> {
        metrics::counter!("wxmp_user_session_cache_total", "outcome" => "stale").increment(1);
        self.fetch(incoming, token).await
    }

    async fn fetch(&self, incoming: &MetadataMap, token: &str) -> Result<Session, Error> {
        let Some(cache) = &self.cache else {
            return self.keys.authenticate(incoming, token).await;
        };
        let key = TokenKey::of(token);
        // Read before asking: an answer that crosses a logout's eviction is not kept.
        let epoch = cache.epoch();
        let answer = self.keys.authenticate(incoming, token).await;
        match &answer {
            // Without a key the request fails anyway; nothing worth keeping.
            Ok(session) if session.session_key.is_some() => {
                metrics::counter!("wxmp_user_session_cache_total", "outcome" => "miss")
                    .increment(1);
                // `expires_in` is rounded up to whole seconds: one less never outlives the
                // session.
                let lifetime = session.expires_in.saturating_sub(Duration::from_secs(1));
                cache.insert(key, session.clone(), lifetime, epoch);
            }
            // A cached answer with a key that has since gone: not to be served again.
            Ok(_) => cache.evict(&key),
            // The session ended (an announcement this replica missed): forget it.
            Err(Error::InvalidToken) => cache.evict(&key),
            Err(_) => {}
        }
        answer
    }
}
