//! WeChat Pay's clock: times are Beijing time (UTC+8) written yyyyMMddHHmmss ("时间规则":
//! "标准北京时间，时区为东八区；如果商户的系统时间为非标准北京时间。参数值必须根据商户系统所在
//! 时区先换算成标准北京时间", e.g. time_end 20091225091010, 参数规定,
//! https://pay.weixin.qq.com/wiki/doc/api/wxa/wxa_api.php?chapter=4_2). The sandbox's own
//! code, not `crates/wechat`'s.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

/// The layout of time_start / time_expire / time_end.
const WX_TIME_FORMAT: &str = "%Y%m%d%H%M%S";

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

pub fn now() -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&beijing())
}

/// yyyyMMddHHmmss, as in time_end.
pub fn wx_time(t: &DateTime<FixedOffset>) -> String {
    t.with_timezone(&beijing())
        .format(WX_TIME_FORMAT)
        .to_string()
}

/// Reads yyyyMMddHHmmss (exactly 14 digits) as Beijing time.
pub fn parse_wx_time(s: &str) -> Option<DateTime<FixedOffset>> {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDateTime::parse_from_str(s, WX_TIME_FORMAT)
        .ok()?
        .and_local_timezone(beijing())
        .single()
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
        assert_eq!(parse_wx_time("2024020104050x"), None);
        assert_eq!(parse_wx_time("+2024020104050"), None);
        // Whatever offset a time carries, it is written in Beijing time.
        assert_eq!(
            wx_time(
                &Utc.with_ymd_and_hms(2024, 1, 31, 20, 5, 9)
                    .unwrap()
                    .fixed_offset()
            ),
            "20240201040509"
        );
    }
}
