//! What a [`super::SessionCache`] is keyed by: a session token's hash, a user's id, a login;
//! how an announcement names each, which shard holds it, and its in-process feed.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    sync::OnceLock,
};

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

/// Shards of the map: concurrent lookups of different tokens rarely share a lock.
pub(super) const SHARDS: usize = 16;

/// What a cache is keyed by, and how its feed names a key.
pub trait CacheKey: Copy + Eq + Hash + Send + Sync + std::fmt::Debug + 'static {
    /// The feed's name in metrics (`wxmp_session_cache_feed_up{feed}`).
    const FEED: &'static str;

    /// The key an announcement names; `None` for a message that is not one (the follower then
    /// clears the cache rather than guess).
    fn parse(payload: &[u8]) -> Option<Self>;

    /// The announcement naming this key (what [`CacheKey::parse`] reads).
    fn announcement(&self) -> String;

    /// Which shard holds the key (below [`SHARDS`]).
    fn shard(&self) -> usize;

    /// The in-process feed of this kind of key (the embedded default).
    fn local_bus() -> &'static broadcast::Sender<Self>;
}

/// The SHA-256 of a session token: what the cache and the revocation feed name a token by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The key of `token` (SHA-256 of its text, as auth-service stores it).
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the lowercase or uppercase hex form (what auth-service publishes).
    pub fn from_hex(hex: &[u8]) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let high = nibble(pair[0])?;
            let low = nibble(pair[1])?;
            *byte = (high << 4) | low;
        }
        Some(Self(out))
    }

    /// Lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        s
    }
}

impl CacheKey for TokenKey {
    const FEED: &'static str = "session-revoked";

    fn parse(payload: &[u8]) -> Option<Self> {
        Self::from_hex(payload)
    }

    fn announcement(&self) -> String {
        self.to_hex()
    }

    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }

    fn local_bus() -> &'static broadcast::Sender<Self> {
        static BUS: OnceLock<broadcast::Sender<TokenKey>> = OnceLock::new();
        // 1024 pending announcements per follower; a follower that lags clears its cache.
        BUS.get_or_init(|| broadcast::channel(1024).0)
    }
}

/// A user's id: what the gateway's cache of user rows is keyed by, and what user-service
/// announces (in decimal) when it changes the user's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserKey(pub i64);

impl UserKey {
    /// Spreads sequential ids over the whole hash (Fibonacci hashing): the map's hasher takes
    /// the key's bytes as its hash.
    fn mixed(&self) -> u64 {
        u64::from_ne_bytes(self.0.to_ne_bytes()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl Hash for UserKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.mixed().to_be_bytes());
    }
}

impl CacheKey for UserKey {
    const FEED: &'static str = "user-changed";

    fn parse(payload: &[u8]) -> Option<Self> {
        // Decimal digits only (no sign, no spaces): what `to_string` of an id gives.
        if payload.is_empty() || payload.len() > 19 || !payload.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(payload).ok()?.parse().ok().map(Self)
    }

    fn announcement(&self) -> String {
        self.0.to_string()
    }

    fn shard(&self) -> usize {
        // The low bits of an odd multiple of sequential ids cycle through every value.
        usize::try_from(self.mixed() % 16).unwrap_or(0) % SHARDS
    }

    fn local_bus() -> &'static broadcast::Sender<Self> {
        static BUS: OnceLock<broadcast::Sender<UserKey>> = OnceLock::new();
        BUS.get_or_init(|| broadcast::channel(1024).0)
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The key is already a uniform hash: its first 8 bytes are the map's hash.
#[derive(Clone, Copy, Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
}

#[derive(Clone, Copy, Default)]
pub(super) struct BuildKeyHasher;

impl BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}
/// A user who just logged in, so whose session_key may have rotated: what auth-service
/// announces on [`rotation_channel`] (the decimal id). A feed of its own, apart from
/// [`UserKey`]'s changed rows, so that a profile update is not taken for a login.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoginKey(pub i64);

impl CacheKey for LoginKey {
    const FEED: &'static str = "key-rotated";

    fn parse(payload: &[u8]) -> Option<Self> {
        UserKey::parse(payload).map(|user| Self(user.0))
    }

    fn announcement(&self) -> String {
        self.0.to_string()
    }

    fn shard(&self) -> usize {
        UserKey(self.0).shard()
    }

    fn local_bus() -> &'static broadcast::Sender<Self> {
        static BUS: OnceLock<broadcast::Sender<LoginKey>> = OnceLock::new();
        BUS.get_or_init(|| broadcast::channel(1024).0)
    }
}
