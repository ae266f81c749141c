//! The shape every WeChat Pay bill shares, v2 and v3, trade and fund flow: a header row, the
//! detail rows with a backquote (`` ` ``) before every value (so that Excel keeps long numbers
//! as text), then a summary header row and one summary row.
//!
//! Sources: the v2 bill documents <https://pay.weixin.qq.com/doc/v2/merchant/4011985040>
//! (下载交易账单: "第一行为表头，后面各行为对应的字段内容，字段内容跟查询订单或退款结果一致，具体
//! 字段说明可查阅相应接口。") and <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_6>;
//! the v3 one <https://pay.weixin.qq.com/docs/partner/apis/partner-h5-payment/download-bill.html>
//! ("交易账单文件内包含：明细数据表头、明细数据内容、汇总数据表头、汇总数据四个部分，每个字段使用
//! 英文逗号 , 间隔，明细数据内容每个字段前会增加1个字符 ` ").
//!
//! The reader is streaming: it holds one line at a time, bounded by [`MAX_LINE_BYTES`]. A day
//! without trades is a header alone, a header and a zero summary, or no bytes at all; all three
//! read as zero rows (an empty bill broke other SDKs' parsers: weixin-java-pay-demo#138).

use std::io::BufRead;

use crate::pay::bills::BillError;

/// Longest line a bill may hold (a detail row is a few hundred bytes).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The first column of the summary headers: trade bills (总交易单数) and fund flow bills
/// (资金流水总笔数).
pub const SUMMARY_HEADERS: [&str; 2] = ["总交易单数", "资金流水总笔数"];

/// One line of a bill, split into its values (backquotes removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The detail header (column names).
    Header(Vec<String>),
    /// A detail row.
    Row(Vec<String>),
    /// The summary header.
    SummaryHeader(Vec<String>),
    /// The summary row.
    Summary(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Rows,
    SummaryNext,
    Done,
}

/// Reads a bill line by line.
#[derive(Debug)]
pub struct TableReader<R> {
    reader: R,
    state: State,
    line_no: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> TableReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            state: State::Start,
            line_no: 0,
            buf: Vec::new(),
        }
    }

    /// The 1-based number of the last line read.
    pub fn line_no(&self) -> usize {
        self.line_no
    }

    fn error(&self, reason: impl Into<String>) -> BillError {
        BillError::Format {
            line: self.line_no,
            reason: reason.into(),
        }
    }

    /// The next non-blank line without its line end, or None at the end.
    fn next_text(&mut self) -> Result<Option<String>, BillError> {
        loop {
            self.buf.clear();
            let mut limited =
                <&mut R as std::io::Read>::take(&mut self.reader, MAX_LINE_BYTES as u64 + 1);
            let n = limited
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| BillError::Format {
                    line: self.line_no + 1,
                    reason: format!("read: {e}"),
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(self.error("line too long"));
            }
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            let text = std::str::from_utf8(&self.buf)
                .map_err(|_| self.error("not UTF-8"))?
                .trim_start_matches('\u{feff}');
            if text.trim().is_empty() {
                continue;
            }
            return Ok(Some(text.to_owned()));
        }
    }

    /// The next line of the bill, or None at its end.
    pub fn next_line(&mut self) -> Result<Option<Line>, BillError> {
        let Some(text) = self.next_text()? else {
            if self.state == State::SummaryNext {
                return Err(self.error("summary header without a summary row"));
            }
            self.state = State::Done;
            return Ok(None);
        };
        let backquoted = text.starts_with('`');
        let fields = split(&text).map_err(|reason| self.error(reason))?;
        match self.state {
            State::Start if backquoted => Err(self.error("a data row before the header")),
            // A bill of nothing but its summary (no detail header at all).
            State::Start
                if fields
                    .first()
                    .is_some_and(|f| SUMMARY_HEADERS.contains(&f.as_str())) =>
            {
                self.state = State::SummaryNext;
                Ok(Some(Line::SummaryHeader(fields)))
            }
            State::Start => {
                self.state = State::Rows;
                Ok(Some(Line::Header(fields)))
            }
            State::Rows if backquoted => Ok(Some(Line::Row(unquote(fields)))),
            State::Rows => {
                self.state = State::SummaryNext;
                Ok(Some(Line::SummaryHeader(fields)))
            }
            State::SummaryNext => {
                self.state = State::Done;
                Ok(Some(Line::Summary(unquote(fields))))
            }
            State::Done => Err(self.error("data after the summary row")),
        }
    }
}

/// Removes the one backquote WeChat puts before each value.
fn unquote(fields: Vec<String>) -> Vec<String> {
    fields
        .into_iter()
        .map(|f| match f.strip_prefix('`') {
            Some(rest) => rest.to_owned(),
            None => f,
        })
        .collect()
}

/// Splits one CSV line on commas; a value in double quotes may hold commas and `""`.
pub fn split(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        // A quoted value may follow the backquote: `"a,b".
        if chars.peek() == Some(&'`') {
            let mut ahead = chars.clone();
            ahead.next();
            if ahead.peek() == Some(&'"') {
                field.push('`');
                chars.next();
            }
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted value"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(_) => return Err("text after a quoted value"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_owned());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            field = field.trim().to_owned();
        }
        fields.push(field);
    }
}

/// Where each named column is in a header.
#[derive(Debug, Clone)]
pub struct Columns {
    names: Vec<String>,
}

impl Columns {
    pub fn new(header: &[String]) -> Self {
        Self {
            names: header.iter().map(|h| h.trim().to_owned()).collect(),
        }
    }

    /// The index of the first of `names` present.
    pub fn find(&self, names: &[&str]) -> Option<usize> {
        names
            .iter()
            .find_map(|n| self.names.iter().position(|h| h == n))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Why a decimal amount did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("not a decimal number")]
    Syntax,
    #[error("more decimal places than the unit allows")]
    Precision,
    #[error("out of range")]
    Range,
}

/// Parses a decimal string such as `"0.01"` or `"-12.5"` exactly, as an integer count of
/// `10^-scale` units: `parse_decimal("0.01", 2)` is 1 (fen). Digits past `scale` must be zeros;
/// no float is ever involved.
pub fn parse_decimal(s: &str, scale: u32) -> Result<i64, AmountError> {
    let s = s.trim();
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (whole, frac) = match digits.split_once('.') {
        Some((w, f)) => (w, f),
        None => (digits, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return Err(AmountError::Syntax);
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AmountError::Syntax);
    }
    if digits.contains('.') && frac.is_empty() {
        return Err(AmountError::Syntax);
    }
    let scale_usize = usize::try_from(scale).map_err(|_| AmountError::Range)?;
    let (kept, dropped) = frac.split_at(frac.len().min(scale_usize));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(AmountError::Precision);
    }
    let mut value: i64 = 0;
    let push = |value: i64, b: u8| -> Result<i64, AmountError> {
        value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or(AmountError::Range)
    };
    for b in whole.bytes() {
        value = push(value, b)?;
    }
    for b in kept.bytes() {
        value = push(value, b)?;
    }
    let missing = u32::try_from(scale_usize - kept.len()).map_err(|_| AmountError::Range)?;
    value = value
        .checked_mul(10_i64.checked_pow(missing).ok_or(AmountError::Range)?)
        .ok_or(AmountError::Range)?;
    Ok(if negative { -value } else { value })
}

/// Writes `units` of `10^-scale` as a decimal string with exactly `scale` places (the inverse
/// of [`parse_decimal`]): `format_decimal(1, 2)` is `"0.01"`.
pub fn format_decimal(units: i64, scale: u32) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    let div = 10_u64.pow(scale);
    if scale == 0 {
        return format!("{sign}{abs}");
    }
    let width = usize::try_from(scale).unwrap_or(0);
    format!("{sign}{}.{:0width$}", abs / div, abs % div)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("0.01", 2), Ok(1));
        assert_eq!(parse_decimal("12", 2), Ok(1200));
        assert_eq!(parse_decimal("12.3", 2), Ok(1230));
        assert_eq!(parse_decimal("-0.10", 2), Ok(-10));
        assert_eq!(parse_decimal("0.01000", 2), Ok(1));
        assert_eq!(parse_decimal("0.00600", 5), Ok(600));
        assert_eq!(parse_decimal("0.001", 2), Err(AmountError::Precision));
        assert_eq!(parse_decimal("1e3", 2), Err(AmountError::Syntax));
        assert_eq!(parse_decimal("", 2), Err(AmountError::Syntax));
        assert_eq!(parse_decimal(".", 2), Err(AmountError::Syntax));
        assert_eq!(parse_decimal("1.", 2), Err(AmountError::Syntax));
        assert_eq!(
            parse_decimal("99999999999999999999", 2),
            Err(AmountError::Range)
        );
        assert_eq!(format_decimal(1, 2), "0.01");
        assert_eq!(format_decimal(-1230, 2), "-12.30");
        assert_eq!(format_decimal(600, 5), "0.00600");
    }

    #[test]
    fn split_handles_quotes() {
        assert_eq!(split("`a,`b").unwrap(), vec!["`a", "`b"]);
        assert_eq!(split("`\"x,y\",`z").unwrap(), vec!["`x,y", "`z"]);
        assert_eq!(split("a,,b").unwrap(), vec!["a", "", "b"]);
        assert!(split("\"open").is_err());
    }

    #[test]
    fn reads_the_four_parts() {
        let text = "h1,h2\r\n`a,`b\n`c,`d\nsum1,sum2\n`2,`0.02\n";
        let mut r = TableReader::new(text.as_bytes());
        assert!(matches!(r.next_line().unwrap(), Some(Line::Header(_))));
        assert_eq!(
            r.next_line().unwrap(),
            Some(Line::Row(vec!["a".into(), "b".into()]))
        );
        assert!(matches!(r.next_line().unwrap(), Some(Line::Row(_))));
        assert!(matches!(
            r.next_line().unwrap(),
            Some(Line::SummaryHeader(_))
        ));
        assert_eq!(
            r.next_line().unwrap(),
            Some(Line::Summary(vec!["2".into(), "0.02".into()]))
        );
        assert_eq!(r.next_line().unwrap(), None);
    }

    #[test]
    fn refuses_broken_shapes() {
        let mut r = TableReader::new("`a\n".as_bytes());
        assert!(r.next_line().is_err());
        let mut r = TableReader::new("h\nsum\n".as_bytes());
        r.next_line().unwrap();
        r.next_line().unwrap();
        assert!(r.next_line().is_err());
        let mut r = TableReader::new("h\nsum\n`1\nmore\n".as_bytes());
        for _ in 0..3 {
            r.next_line().unwrap();
        }
        assert!(r.next_line().is_err());
    }
}
