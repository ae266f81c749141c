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
//!
//! auth-service announces each completed login's user on its key-rotated feed: a new login
//! may have rotated the key. [`Rotations`]
//! marks that user for the TTL, and an answer kept before the mark is asked again, so a payload
//! sealed with the previous key stops opening within the feed's delay instead of the TTL.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use service_kit::session_cache::{Follower, LoginKey, SessionCache, TokenKey, UserKey};
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
    pub(crate) rotations: Option<Arc<Rotations>>,
}

impl<K: SessionKeys> Sessions<K> {
    pub fn new(keys: K, cache: Option<Arc<SessionAnswers>>) -> Self {
        Self {
            keys,
            cache,
            rotations: None,
        }
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
            && let Some((session, asked)) = cache.get_asked(&TokenKey::of(token))
        {
            let rotated = self
                .rotations
                .as_ref()
                .is_some_and(|r| r.since(session.principal.user_id, asked));
            if !rotated {
                metrics::counter!("wxmp_user_session_cache_total", "outcome" => "hit").increment(1);
                return Ok(Authenticated {
                    session,
                    cached: true,
                });
            }
            metrics::counter!("wxmp_user_session_cache_total", "outcome" => "rotated").increment(1);
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
        let epoch = cache.epoch(&key);
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

/// Users who logged in again lately (their session_key may have rotated), each marked for the
/// session cache's TTL: longer than any answer asked for before the mark can live.
#[derive(Debug)]
pub struct Rotations {
    marks: SessionCache<Instant, UserKey>,
    /// Answers asked for before this (nanoseconds after `origin`) are suspect: the feed was
    /// (re)connected or may have missed announcements since.
    trusted_from: AtomicU64,
    origin: Instant,
}

impl Rotations {
    /// Marks kept `ttl` (the session cache's), at most `max_entries`; `None` when either is 0.
    pub fn new(ttl: Duration, max_entries: usize) -> Option<Self> {
        let origin = Instant::now();
        Some(Self {
            marks: SessionCache::new(ttl, max_entries)?,
            trusted_from: AtomicU64::new(0),
            origin,
        })
    }

    /// Whether an answer for `user_id` asked for at `asked` may predate its latest login.
    fn since(&self, user_id: i64, asked: Instant) -> bool {
        let trusted_from =
            self.origin + Duration::from_nanos(self.trusted_from.load(Ordering::Acquire));
        asked < trusted_from
            || self
                .marks
                .get(&UserKey(user_id))
                .is_some_and(|at| at >= asked)
    }

    /// Answers asked for before now are to be asked again.
    fn distrust_earlier(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.trusted_from.store(nanos, Ordering::Release);
    }
}

impl Follower<LoginKey> for Rotations {
    fn announced(&self, login: LoginKey) {
        let user = UserKey(login.0);
        let ttl = self.marks.ttl();
        self.marks
            .insert(user, Instant::now(), ttl, self.marks.epoch(&user));
    }

    fn missed(&self) {
        self.distrust_earlier();
        self.marks.clear();
    }

    fn connected(&self) {
        // What was announced while the feed was down is unknown.
        self.distrust_earlier();
        self.marks.feed_connected();
    }

    fn lost(&self) {
        // Without marks the answers keep their TTL bound, as before this feed existed.
        self.marks.feed_lost();
    }
}
