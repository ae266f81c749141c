//! Time, in unix seconds, and its China-time (UTC+8) renderings for WeChat.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone as _};

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

fn china() -> FixedOffset {
    // UTC+8 all year (no daylight saving); 8 h is always a valid offset.
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// `unix` rendered in China time with a chrono format, e.g. `%Y%m%d%H%M%S` for time_expire.
pub fn china_time(unix: i64, format: &str) -> String {
    let utc = DateTime::from_timestamp(unix, 0).unwrap_or_default();
    utc.with_timezone(&china()).format(format).to_string()
}

/// WeChat's `yyyyMMddHHmmss` (China time) as unix seconds.
pub fn parse_wechat_time(s: &str) -> Option<i64> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
    china()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_time_is_utc_plus_8() {
        // 2026-11-25T16:30:05Z
        let t = 1_795_624_205;
        assert_eq!(china_time(t, "%Y%m%d%H%M%S"), "20261126003005");
        assert_eq!(parse_wechat_time("20261126003005"), Some(t));
        assert_eq!(parse_wechat_time("2026-11-26"), None);
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
