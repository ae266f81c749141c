//! WeChat Pay's timestamps (`time_start`, `time_expire`, `time_end`): China Standard Time
//! (UTC+8, no daylight saving) written `yyyyMMddHHmmss`.
//!
//! ```
//! use wechat::pay::time;
//! // 2026-11-25T16:30:05Z is 00:30:05 the next day in Beijing.
//! assert_eq!(time::format(1_795_624_205), "20261126003005");
//! assert_eq!(time::parse("20261126003005"), Some(1_795_624_205));
//! assert_eq!(time::parse("2026112600300"), None);
//! ```

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone as _};

const FORMAT: &str = "%Y%m%d%H%M%S";

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// Unix seconds as WeChat's `yyyyMMddHHmmss` in China time.
pub fn format(unix_secs: i64) -> String {
    DateTime::from_timestamp(unix_secs, 0)
        .unwrap_or_default()
        .with_timezone(&china())
        .format(FORMAT)
        .to_string()
}

/// WeChat's `yyyyMMddHHmmss` (China time) as unix seconds; `None` unless it is exactly 14
/// digits naming a real instant.
pub fn parse(s: &str) -> Option<i64> {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(s, FORMAT).ok()?;
    china()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_shapes() {
        let t = 1_706_731_509; // 2024-01-31T20:05:09Z
        assert_eq!(format(t), "20240201040509");
        assert_eq!(parse("20240201040509"), Some(t));
        for bad in [
            "2024020104050",
            "202402010405091",
            "20241301040509",
            "2024-02-01 04:0",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
