//! Per-client rate limits: a fixed window of events per client address.
//!
//! Used for `/login/` attempts (each one costs a `code2Session` call against WeChat's quota)
//! and for `/pay/notify` signature failures (someone sending forged notifies). Without
//! `GATEWAY_REDIS_URL` the windows are in memory, per gateway replica (with N replicas a
//! client gets N times the budget at most); with it they live in Redis, shared by every
//! replica ([`shared`]), and each replica falls back to its own memory while Redis fails.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub mod shared;

pub use shared::SharedWindows;

/// Most client keys tracked at once; beyond it, expired windows are dropped first and then
/// new clients pass unlimited (fail open) rather than the map growing without bound.
const MAX_KEYS: usize = 100_000;

/// IPv6 clients are limited per /64, the usual allocation to one subscriber, so a single
/// host cannot dodge the limit by cycling through its own addresses.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A named limit: shared in Redis when configured, else (and whenever Redis fails) in this
/// replica's memory. The local windows count every event even while Redis decides, so a
/// fallback starts from recent history rather than from zero.
#[derive(Debug)]
pub struct Limiter {
    /// The limit's name in Redis keys, logs and metrics (`login`, `notify_sig`).
    name: &'static str,
    limit: u32,
    window: Duration,
    local: RateLimiter,
    shared: Option<Arc<SharedWindows>>,
}

impl Limiter {
    /// `None` when `limit` is 0 (the limit is off).
    pub fn new(
        name: &'static str,
        limit: u32,
        window: Duration,
        shared: Option<Arc<SharedWindows>>,
    ) -> Option<Self> {
        Some(Self {
            name,
            limit,
            window,
            local: RateLimiter::new(limit, window)?,
            shared,
        })
    }

    /// Counts one event of `ip`; answers false when that event is over the limit.
    pub async fn allow(&self, ip: IpAddr) -> bool {
        let local = self.local.allow(ip);
        match self.shared_events(ip, true).await {
            Some(n) => n <= u64::from(self.limit),
            None => local,
        }
    }

    /// Whether `ip` has used up its budget in the current window (counts nothing).
    pub async fn exhausted(&self, ip: IpAddr) -> bool {
        match self.shared_events(ip, false).await {
            Some(n) => n >= u64::from(self.limit),
            None => self.local.exhausted(ip),
        }
    }

    /// Counts one event of `ip`, whatever the budget says.
    pub async fn record(&self, ip: IpAddr) {
        self.local.record(ip);
        self.shared_events(ip, true).await;
    }

    async fn shared_events(&self, ip: IpAddr, count: bool) -> Option<u64> {
        let shared = self.shared.as_ref()?;
        let n = shared
            .events(self.name, &key_of(ip).to_string(), self.window, count)
            .await;
        if n.is_none() {
            metrics::counter!("wxmp_rate_limit_fallback_total", "limit" => self.name).increment(1);
        }
        n
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    count: u32,
}

/// At most `limit` events per client per `window`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl RateLimiter {
    /// `None` when `limit` is 0 (the limit is off).
    pub fn new(limit: u32, window: Duration) -> Option<Self> {
        (limit > 0).then(|| Self {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one event of `ip`; answers false when that event is over the limit.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.update(ip, true)
    }

    /// Whether `ip` has used up its budget in the current window (counts nothing).
    pub fn exhausted(&self, ip: IpAddr) -> bool {
        !self.update(ip, false)
    }

    /// Counts one event of `ip`, whatever the budget says.
    pub fn record(&self, ip: IpAddr) {
        self.update(ip, true);
    }

    /// Answers whether `ip` is (still) within the limit, after counting one event if `count`.
    fn update(&self, ip: IpAddr, count: bool) -> bool {
        let now = Instant::now();
        let key = key_of(ip);
        // A poisoned lock only means another request panicked mid-update; the counts are
        // still usable.
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !windows.contains_key(&key) {
            if !count {
                return true;
            }
            if windows.len() >= MAX_KEYS {
                let window = self.window;
                windows.retain(|_, w| now.duration_since(w.started) < window);
                if windows.len() >= MAX_KEYS {
                    tracing::warn!("rate limiter full: new clients pass unlimited");
                    return true;
                }
            }
        }
        let entry = windows.entry(key).or_insert(Window {
            started: now,
            count: 0,
        });
        if now.duration_since(entry.started) >= self.window {
            *entry = Window {
                started: now,
                count: 0,
            };
        }
        if count {
            entry.count = entry.count.saturating_add(1);
            entry.count <= self.limit
        } else {
            entry.count < self.limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allows_the_limit_then_refuses_per_client() {
        let l = RateLimiter::new(3, Duration::from_secs(60)).unwrap();
        assert!((0..3).all(|_| l.allow(ip("10.0.0.1"))));
        assert!(!l.allow(ip("10.0.0.1")));
        assert!(
            !l.allow(ip("::ffff:10.0.0.1")),
            "v4-mapped is the same client"
        );
        assert!(l.allow(ip("10.0.0.2")), "another client has its own budget");
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let l = RateLimiter::new(1, Duration::from_secs(60)).unwrap();
        assert!(l.allow(ip("2001:db8:1:2::1")));
        assert!(!l.allow(ip("2001:db8:1:2:ffff::9")));
        assert!(l.allow(ip("2001:db8:1:3::1")));
    }

    #[test]
    fn exhausted_counts_nothing_and_record_counts() {
        let l = RateLimiter::new(2, Duration::from_secs(60)).unwrap();
        let a = ip("192.0.2.1");
        assert!(!l.exhausted(a));
        assert!(!l.exhausted(a));
        l.record(a);
        assert!(!l.exhausted(a));
        l.record(a);
        assert!(l.exhausted(a));
    }

    #[test]
    fn the_window_resets() {
        let l = RateLimiter::new(1, Duration::ZERO).unwrap();
        assert!(l.allow(ip("192.0.2.1")));
        assert!(l.allow(ip("192.0.2.1")), "a zero window always restarts");
    }

    #[test]
    fn zero_means_off() {
        assert!(RateLimiter::new(0, Duration::from_secs(1)).is_none());
    }
}
