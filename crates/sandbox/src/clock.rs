//! WeChat Pay's clock: times are Beijing time (UTC+8) written yyyyMMddHHmmss.

use chrono::{DateTime, FixedOffset, Utc};

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

pub fn now() -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&beijing())
}

/// yyyyMMddHHmmss, as in time_end.
pub fn wx_time(t: &DateTime<FixedOffset>) -> String {
    wechat::pay::time::format(t.timestamp())
}

/// Reads yyyyMMddHHmmss as Beijing time.
pub fn parse_wx_time(s: &str) -> Option<DateTime<FixedOffset>> {
    let unix = wechat::pay::time::parse(s)?;
    Some(DateTime::from_timestamp(unix, 0)?.with_timezone(&beijing()))
}

pub fn unix_secs() -> i64 {
    Utc::now().timestamp()
}

pub fn unix_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn formats_beijing_time() {
        let t = Utc
            .with_ymd_and_hms(2024, 1, 31, 20, 5, 9)
            .unwrap()
            .with_timezone(&beijing());
        assert_eq!(wx_time(&t), "20240201040509");
        assert_eq!(parse_wx_time("20240201040509"), Some(t));
        assert_eq!(parse_wx_time("2024020104050"), None);
        assert_eq!(parse_wx_time("20241301040509"), None);
    }
}
