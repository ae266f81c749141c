//! Time, in unix seconds; WeChat's China-time renderings are `wechat::pay::time`.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

/// The service's clock: the system clock plus an offset that only tests move (to expire orders
/// without waiting). Cheap to clone; clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// Unix seconds.
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock (and its clones) forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::Relaxed);
    }
}

/// `unix` as a China-time calendar day `yyyyMMdd` (the order number's prefix).
pub fn china_date(unix: i64) -> String {
    let mut day = wechat::pay::time::format(unix);
    day.truncate(8);
    day
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_time_is_utc_plus_8() {
        // 2026-11-25T16:30:05Z
        let t = 1_795_624_205;
        assert_eq!(china_date(t), "20261126");
    }

    #[test]
    fn clones_share_the_offset() {
        let a = Clock::system();
        let b = a.clone();
        let before = b.now();
        a.advance(3600);
        assert!(b.now() >= before + 3600);
    }
}
