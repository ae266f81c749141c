//! A short-lived, bounded cache of `Authenticate` answers, and the revocation feed that evicts
//! from it.
//!
//! The gateway asks auth-service who a token is on every authenticated request: one gRPC hop
//! that costs more than the Redis read behind it. [`SessionCache`] keeps each answer for a few
//! seconds (`ttl`, and never past the session's own remaining lifetime), keyed by the SHA-256 of
//! the token ([`TokenKey`]; the token itself is never stored), with a hard bound on the number
//! of entries.
//!
//! Revocation: auth-service announces every session it ends (logout) on the Redis channel
//! [`channel`] (`<prefix>session-revoked`, the message is the token's hex SHA-256, the same
//! value auth-service keys the session by) and, for the embedded default where every service
//! shares one process, on an in-process broadcast ([`announce_local`]). Each cache follows one
//! of them ([`follow_redis`], [`follow_local`]) and evicts. The cache serves only while its
//! feed is known to be connected: it starts dark, is cleared each time the subscription is
//! (re)confirmed (whatever was announced meanwhile is forgotten with it), and goes dark again
//! when the connection is seen to drop. A connection that is cut without being seen to drop
//! (a silent network partition) leaves each entry bounded by its own deadline: at most `ttl`.
//!
//! An answer fetched while an eviction happened is not stored ([`SessionCache::epoch`]), so a
//! logout racing a request's lookup cannot leave the revoked answer behind.
//!
//! The same cache keeps the gateway's user rows for `GET /me`, keyed by user id ([`UserKey`])
//! and evicted by user-service's announcements of changed users on [`user_channel`]
//! (`<prefix>user-changed`, the message is the decimal id); [`CacheKey`] is what a key type
//! brings: its parse from an announcement, its shard and its in-process feed.

mod feed;
mod keys;

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use feed::{
    Follower, InvalidRedisUrl, announce_local, channel, follow, follow_local, follow_redis,
    rotation_channel, user_channel,
};
use keys::{BuildKeyHasher, SHARDS};
pub use keys::{CacheKey, LoginKey, TokenKey, UserKey};

struct Entry<V> {
    value: V,
    /// When the answer was asked for (its [`Ticket`]'s time).
    asked: Instant,
    deadline: Instant,
}

/// Taken before asking the source of truth about a key, passed to [`SessionCache::insert`]:
/// an answer whose asking crossed an eviction is not kept, and an entry remembers when it was
/// asked for.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    epoch: u64,
    at: Instant,
}

type Shard<K, V> = Mutex<HashMap<K, Entry<V>, BuildKeyHasher>>;

/// Answers by key (a token's by default), each until its deadline, at most `max_entries` of
/// them.
pub struct SessionCache<V, K = TokenKey> {
    shards: Vec<Shard<K, V>>,
    per_shard: usize,
    ttl: Duration,
    /// Per shard, bumped by every eviction in it and by every clear: an answer fetched across
    /// one is not stored. Per shard so that a busy stream of evictions (user rows changing)
    /// does not refuse every other key's insert.
    epochs: [AtomicU64; SHARDS],
    /// Whether the revocation feed is known connected; the cache serves only while it is.
    live: AtomicBool,
}

impl<V, K> std::fmt::Debug for SessionCache<V, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &(self.per_shard * SHARDS))
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<V: Clone, K: CacheKey> SessionCache<V, K> {
    /// A cache keeping answers `ttl` at most, `max_entries` at most (rounded up to a multiple
    /// of the shard count, at least one per shard). `None` when `ttl` or `max_entries` is 0.
    /// Nothing is allocated ahead: the maps grow with use.
    pub fn new(ttl: Duration, max_entries: usize) -> Option<Self> {
        if ttl.is_zero() || max_entries == 0 {
            return None;
        }
        Some(Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: max_entries.div_ceil(SHARDS),
            ttl,
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            live: AtomicBool::new(false),
        })
    }

    /// The longest an answer is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The bound on the number of entries.
    pub fn max_entries(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, HashMap<K, Entry<V>, BuildKeyHasher>> {
        // A panic while holding the lock leaves a plain map: still consistent.
        self.shards[key.shard()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer kept for `key`, if it is still before its deadline and the feed is live.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_asked(key).map(|(value, _)| value)
    }

    /// [`Self::get`] with the time the answer was asked for: anything that changed after it
    /// may be missing from the answer.
    pub fn get_asked(&self, key: &K) -> Option<(V, Instant)> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let mut shard = self.shard(key);
        let entry = shard.get(key)?;
        if entry.deadline > Instant::now() {
            return Some((entry.value.clone(), entry.asked));
        }
        shard.remove(key);
        None
    }

    /// Take before asking the source of truth about `key`; pass it to [`Self::insert`].
    pub fn epoch(&self, key: &K) -> Ticket {
        Ticket {
            epoch: self.epochs[key.shard()].load(Ordering::Acquire),
            at: Instant::now(),
        }
    }

    /// Keeps `value` for `key` until `ttl` or `lifetime` (the session's remaining life),
    /// whichever is sooner; not at all when an eviction of its shard happened since `ticket`
    /// was taken or the feed is not live. A full shard first drops its expired entries, then the entry closest
    /// to its deadline.
    pub fn insert(&self, key: K, value: V, lifetime: Duration, ticket: Ticket) {
        let keep = self.ttl.min(lifetime);
        if keep.is_zero() || !self.live.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(&key);
        // Checked under the shard lock: an eviction of this key takes the same lock, after
        // bumping the epoch, so either it sees our entry or we see its bump.
        if self.epochs[key.shard()].load(Ordering::Acquire) != ticket.epoch {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.deadline > now);
            if shard.len() >= self.per_shard
                && let Some(oldest) = shard
                    .iter()
                    .min_by_key(|(_, e)| e.deadline)
                    .map(|(k, _)| *k)
            {
                shard.remove(&oldest);
            }
        }
        shard.insert(
            key,
            Entry {
                value,
                asked: ticket.at,
                deadline: now + keep,
            },
        );
    }

    /// Forgets `key` (a revoked session, a changed user).
    pub fn evict(&self, key: &K) {
        self.epochs[key.shard()].fetch_add(1, Ordering::AcqRel);
        self.shard(key).remove(key);
    }

    /// Forgets everything (a feed that may have missed announcements).
    pub fn clear(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        for shard in &self.shards {
            let mut map = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.clear();
            map.shrink_to_fit();
        }
    }

    /// Entries held now (expired ones included until they are met again).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the cache serves (its revocation feed is known connected).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The feed is (re)connected: forget what it may have missed, then serve.
    pub fn feed_connected(&self) {
        self.clear();
        self.live.store(true, Ordering::Release);
        metrics::gauge!("wxmp_session_cache_feed_up", "feed" => K::FEED).set(1.0);
    }

    /// The feed is down: stop serving and storing until it is back.
    pub fn feed_lost(&self) {
        self.live.store(false, Ordering::Release);
        self.clear();
        metrics::gauge!("wxmp_session_cache_feed_up", "feed" => K::FEED).set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(n: u32) -> TokenKey {
        TokenKey::of(&format!("token-{n}"))
    }

    fn live(ttl: Duration, max: usize) -> SessionCache<u32> {
        let cache = SessionCache::new(ttl, max).unwrap();
        cache.feed_connected();
        cache
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let k = TokenKey::of("abc");
        assert_eq!(
            k.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenKey::from_hex(k.to_hex().as_bytes()), Some(k));
        assert_eq!(
            TokenKey::from_hex(k.to_hex().to_uppercase().as_bytes()),
            Some(k)
        );
        assert_eq!(TokenKey::from_hex(b"zz"), None);
        assert_eq!(TokenKey::from_hex(&[b'g'; 64]), None);
    }

    #[test]
    fn zero_ttl_or_size_disables() {
        assert!(SessionCache::<u32>::new(Duration::ZERO, 10).is_none());
        assert!(SessionCache::<u32>::new(Duration::from_secs(1), 0).is_none());
    }

    #[test]
    fn dark_until_the_feed_is_connected() {
        let cache = SessionCache::new(Duration::from_secs(5), 100).unwrap();
        cache.insert(key(1), 1, Duration::from_secs(60), cache.epoch(&key(1)));
        assert_eq!(cache.get(&key(1)), None);
        cache.feed_connected();
        cache.insert(key(1), 1, Duration::from_secs(60), cache.epoch(&key(1)));
        assert_eq!(cache.get(&key(1)), Some(1));
        cache.feed_lost();
        assert_eq!(cache.get(&key(1)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn never_holds_more_than_its_bound() {
        let cache = live(Duration::from_secs(60), 100);
        for n in 0..10_000 {
            cache.insert(key(n), n, Duration::from_secs(60), cache.epoch(&key(n)));
            assert!(cache.len() <= cache.max_entries());
        }
        assert_eq!(cache.max_entries(), 112);
        assert!(cache.len() > 50, "the cache still holds entries");
        // The newest entry survives its own insertion.
        assert_eq!(cache.get(&key(9_999)), Some(9_999));
    }

    #[test]
    fn an_entry_never_outlives_the_session_or_the_ttl() {
        let cache = live(Duration::from_secs(60), 100);
        cache.insert(key(1), 1, Duration::ZERO, cache.epoch(&key(1)));
        assert_eq!(cache.get(&key(1)), None);
        cache.insert(key(2), 2, Duration::from_millis(1), cache.epoch(&key(2)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get(&key(2)).is_some() {
            assert!(Instant::now() < deadline, "entry outlived its session");
            std::thread::yield_now();
        }
        let short = live(Duration::from_millis(1), 100);
        short.insert(key(3), 3, Duration::from_secs(60), short.epoch(&key(3)));
        while short.get(&key(3)).is_some() {
            assert!(Instant::now() < deadline, "entry outlived the ttl");
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_answer_fetched_across_an_eviction_is_not_kept() {
        let cache = live(Duration::from_secs(60), 100);
        let epoch = cache.epoch(&key(1));
        cache.evict(&key(1));
        cache.insert(key(1), 1, Duration::from_secs(60), epoch);
        assert_eq!(cache.get(&key(1)), None);
        cache.insert(key(1), 1, Duration::from_secs(60), cache.epoch(&key(1)));
        assert_eq!(cache.get(&key(1)), Some(1));
        cache.evict(&key(1));
        assert_eq!(cache.get(&key(1)), None);
    }

    #[test]
    fn concurrent_users_each_get_their_own_answer() {
        let cache = Arc::new(live(Duration::from_secs(60), 64));
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let cache = cache.clone();
                s.spawn(move || {
                    for round in 0..2_000u32 {
                        let n = (t * 1_000_000) + (round % 200);
                        if let Some(v) = cache.get(&key(n)) {
                            assert_eq!(v, n, "served another user's answer");
                        }
                        cache.insert(key(n), n, Duration::from_secs(60), cache.epoch(&key(n)));
                        if round % 97 == 0 {
                            cache.evict(&key(n));
                        }
                    }
                });
            }
        });
        assert!(cache.len() <= cache.max_entries());
    }

    #[test]
    fn user_keys_parse_only_decimal_ids() {
        assert_eq!(UserKey::parse(b"42"), Some(UserKey(42)));
        assert_eq!(
            UserKey::parse(UserKey(7).announcement().as_bytes()),
            Some(UserKey(7))
        );
        assert_eq!(
            UserKey::parse(i64::MAX.to_string().as_bytes()),
            Some(UserKey(i64::MAX))
        );
        for junk in [
            &b""[..],
            b"-1",
            b" 1",
            b"1 ",
            b"0x10",
            b"99999999999999999999",
            b"abc",
        ] {
            assert_eq!(UserKey::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn sequential_user_ids_spread_over_every_shard() {
        let mut counts = [0usize; SHARDS];
        for id in 1..=1_600 {
            counts[UserKey(id).shard()] += 1;
        }
        assert!(counts.iter().all(|&n| n == 100), "{counts:?}");
    }

    #[test]
    fn an_eviction_refuses_only_its_own_shards_inserts() {
        let cache: SessionCache<u32, UserKey> =
            SessionCache::new(Duration::from_secs(60), 100).unwrap();
        cache.feed_connected();
        let a = UserKey(1);
        let b = (2..100)
            .map(UserKey)
            .find(|k| k.shard() != a.shard())
            .unwrap();
        let (epoch_a, epoch_b) = (cache.epoch(&a), cache.epoch(&b));
        cache.evict(&a);
        cache.insert(b, 2, Duration::from_secs(60), epoch_b);
        cache.insert(a, 1, Duration::from_secs(60), epoch_a);
        assert_eq!(
            cache.get(&b),
            Some(2),
            "another shard's eviction is no race"
        );
        assert_eq!(cache.get(&a), None, "fetched across its own eviction");
        cache.clear();
        let epoch_b = cache.epoch(&b);
        cache.insert(b, 3, Duration::from_secs(60), epoch_b);
        assert_eq!(cache.get(&b), Some(3));
    }
}
