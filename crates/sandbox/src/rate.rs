//! Per-minute call counters behind errcode 45011.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

const WINDOW: Duration = Duration::from_secs(60);

/// Fixed one-minute windows per key, which is how WeChat words its quotas ("retry next minute").
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: HashMap<String, (Instant, u32)>,
    pruning: crate::prune::Pruning,
}

impl RateLimiter {
    /// Counts one call for `key`; false once more than `per_minute` calls fall in the current
    /// window. `per_minute == 0` means unlimited.
    pub fn allow(&mut self, key: &str, per_minute: u32, now: Instant) -> bool {
        if per_minute == 0 {
            return true;
        }
        self.pruning
            .run(&mut self.windows, 10_000, |_, (start, _)| {
                now.duration_since(*start) < WINDOW
            });
        let window = self.windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1 <= per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window() {
        let mut r = RateLimiter::default();
        let t = Instant::now();
        assert!(r.allow("a", 2, t));
        assert!(r.allow("a", 2, t));
        assert!(!r.allow("a", 2, t));
        assert!(r.allow("b", 2, t));
        assert!(r.allow("a", 2, t + WINDOW));
        assert!(r.allow("a", 0, t));
    }
}
