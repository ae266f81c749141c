//! What a bill line means against the ledger: pure functions, no SQL.
//!
//! A payment line matches an order paid here (PAID, REFUNDING or REFUNDED) with the same
//! amount and transaction id; a refund line matches a refund of ours that WeChat accepted
//! (PROCESSING, SUCCESS or ABNORMAL; PENDING too: its answer was lost, WeChat has it) with the
//! same amount. Everything else is a [`Mismatch`], keyed so that a day holds each at most
//! once.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;

/// China time (UTC+8, no daylight saving), in which WeChat cuts its bills into days.
pub const CHINA_OFFSET_SECS: i32 = 8 * 3600;

/// Order states that mean "paid here".
pub const PAID_STATES: [&str; 3] = ["PAID", "REFUNDING", "REFUNDED"];
/// Refund states that mean "WeChat took it".
pub const ACCEPTED_REFUND_STATES: [&str; 4] = ["PENDING", "PROCESSING", "SUCCESS", "ABNORMAL"];
/// Refund states that mean "WeChat took it" for the check the other way (a PENDING refund may
/// never have reached WeChat: its absence from the bill is not a difference).
pub const BILLED_REFUND_STATES: [&str; 3] = ["PROCESSING", "SUCCESS", "ABNORMAL"];

/// The unix-seconds bounds `[start, end)` of China-time day `date`.
pub fn day_bounds(date: NaiveDate) -> (i64, i64) {
    let start =
        date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp() - i64::from(CHINA_OFFSET_SECS);
    (start, start + 86_400)
}

/// The China-time date and hour of unix time `now`.
pub fn china_date_hour(now: i64) -> (NaiveDate, u32) {
    let t = chrono::DateTime::from_timestamp(now + i64::from(CHINA_OFFSET_SECS), 0)
        .unwrap_or_default()
        .naive_utc();
    (t.date(), chrono::Timelike::hour(&t))
}

/// The day whose bill is due at `now`: yesterday in China time, once the China-time hour has
/// reached `hour` (WeChat makes bills from 09:00 and advises fetching after 10:00,
/// <https://pay.weixin.qq.com/doc/v2/merchant/4011985040>).
pub fn due_day(now: i64, hour: u32) -> Option<NaiveDate> {
    let (today, h) = china_date_hour(now);
    (h >= hour).then(|| today.pred_opt()).flatten()
}

/// What a bill line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineKind {
    Payment,
    Refund,
    Revoked,
    Other,
}

impl LineKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "PAYMENT",
            Self::Refund => "REFUND",
            Self::Revoked => "REVOKED",
            Self::Other => "OTHER",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "PAYMENT" => Self::Payment,
            "REFUND" => Self::Refund,
            "REVOKED" => Self::Revoked,
            _ => Self::Other,
        }
    }
}

/// One parsed bill line, as stored in `bill_lines`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub line_no: i64,
    pub kind: LineKind,
    pub trade_time: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub out_refund_no: String,
    pub refund_id: String,
    /// Payments: 订单金额 (what the payer was charged); refunds: 申请退款金额.
    pub amount_fen: i64,
    pub fee_millifen: i64,
    pub trade_state: String,
}

impl Line {
    /// From the wechat crate's row.
    pub fn of_row(line_no: i64, row: &wechat::pay::bills::TradeRow) -> Self {
        use wechat::pay::bills::RowKind;
        let kind = match row.kind() {
            Some(RowKind::Payment) => LineKind::Payment,
            Some(RowKind::Refund) => LineKind::Refund,
            Some(RowKind::Revoked) => LineKind::Revoked,
            None => LineKind::Other,
        };
        let amount_fen = match kind {
            LineKind::Refund => row.requested_refund_fen(),
            _ => row.order_fen(),
        };
        Self {
            line_no,
            kind,
            trade_time: row.trade_time.clone(),
            out_trade_no: row.out_trade_no.clone(),
            transaction_id: row.transaction_id.clone(),
            out_refund_no: row.out_refund_no.clone(),
            refund_id: row.refund_id.clone(),
            amount_fen,
            fee_millifen: row.fee_millifen,
            trade_state: row.trade_state.clone(),
        }
    }
}

/// An order as the matching sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerOrder {
    pub order_no: String,
    pub state: String,
    pub amount_fen: i64,
    pub transaction_id: String,
    pub api: String,
}

/// A refund as the matching sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRefund {
    pub out_refund_no: String,
    pub order_no: String,
    pub amount_fen: i64,
    pub state: String,
    pub refund_id: String,
    pub api: String,
    /// Recorded from a bill (a refund made outside wxmp), not made by wxmp.
    pub outside: bool,
}

/// The kinds of difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MismatchKind {
    /// Paid in both, amounts differ.
    PaymentAmount,
    /// Paid in both, transaction ids differ.
    PaymentTransaction,
    /// Paid at WeChat, no such order here.
    PaymentUnknown,
    /// Paid at WeChat, the order here is not paid (open, closed, paid after close).
    PaymentNotPaid,
    /// Paid here, absent from WeChat's bill.
    PaymentMissing,
    /// Refunded in both, amounts differ.
    RefundAmount,
    /// A refund at WeChat of one of our orders that wxmp never made (merchant platform,
    /// another system): recorded against its order.
    RefundOutside,
    /// A refund at WeChat of an order unknown here.
    RefundUnknown,
    /// A refund at WeChat that is FAILED or CLOSED here.
    RefundNotAccepted,
    /// A refund WeChat accepted here, absent from its bill.
    RefundMissing,
}

impl MismatchKind {
    pub const ALL: [Self; 10] = [
        Self::PaymentAmount,
        Self::PaymentTransaction,
        Self::PaymentUnknown,
        Self::PaymentNotPaid,
        Self::PaymentMissing,
        Self::RefundAmount,
        Self::RefundOutside,
        Self::RefundUnknown,
        Self::RefundNotAccepted,
        Self::RefundMissing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PaymentAmount => "PAYMENT_AMOUNT",
            Self::PaymentTransaction => "PAYMENT_TRANSACTION",
            Self::PaymentUnknown => "PAYMENT_UNKNOWN",
            Self::PaymentNotPaid => "PAYMENT_NOT_PAID",
            Self::PaymentMissing => "PAYMENT_MISSING",
            Self::RefundAmount => "REFUND_AMOUNT",
            Self::RefundOutside => "REFUND_OUTSIDE",
            Self::RefundUnknown => "REFUND_UNKNOWN",
            Self::RefundNotAccepted => "REFUND_NOT_ACCEPTED",
            Self::RefundMissing => "REFUND_MISSING",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub kind: MismatchKind,
    /// Unique per day and kind: the out_trade_no, or the refund's number.
    pub key: String,
    pub order_no: String,
    pub out_refund_no: String,
    pub wechat_fen: Option<i64>,
    pub ledger_fen: Option<i64>,
    pub detail: String,
    /// For [`MismatchKind::RefundOutside`]: WeChat's refund id, to record the refund with.
    pub refund_id: String,
}

/// Totals of a day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub wechat_paid_fen: i64,
    pub wechat_refunded_fen: i64,
    pub wechat_fee_millifen: i64,
    pub ledger_paid_fen: i64,
    pub ledger_refunded_fen: i64,
    pub matched: i64,
}

impl Totals {
    /// What the day leaves the merchant, in thousandths of a fen: paid − refunded − fees.
    pub fn wechat_net_millifen(&self) -> i64 {
        (self.wechat_paid_fen - self.wechat_refunded_fen).saturating_mul(1000)
            - self.wechat_fee_millifen
    }
}

/// The outcome of matching one day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub mismatches: Vec<Mismatch>,
    pub totals: Totals,
}

/// What the matching needs from the ledger.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Every order the bill names, and every order of `day_orders`, by order_no.
    pub orders: HashMap<String, LedgerOrder>,
    /// Every refund the bill names (by out_refund_no), and every one of `day_refunds`.
    pub refunds: HashMap<String, LedgerRefund>,
    /// Orders paid here during the day, on this bill's API.
    pub day_orders: Vec<String>,
    /// Refunds made here during the day, on this bill's API.
    pub day_refunds: Vec<String>,
    /// Orders and refunds found in another day's stored bill (a payment just before midnight
    /// at WeChat may reach us just after it): not missing.
    pub billed_elsewhere: HashSet<String>,
}

/// Matches a day's bill `lines` against `ledger`.
pub fn reconcile(lines: &[Line], ledger: &Ledger) -> Outcome {
    let mut out = Outcome::default();
    let mut seen_orders = HashSet::new();
    let mut seen_refunds = HashSet::new();
    let mismatch = |kind: MismatchKind, key: &str| Mismatch {
        kind,
        key: key.to_owned(),
        order_no: String::new(),
        out_refund_no: String::new(),
        wechat_fen: None,
        ledger_fen: None,
        detail: String::new(),
        refund_id: String::new(),
    };
    for line in lines {
        out.totals.wechat_fee_millifen = out
            .totals
            .wechat_fee_millifen
            .saturating_add(line.fee_millifen);
        match line.kind {
            LineKind::Payment => {
                out.totals.wechat_paid_fen =
                    out.totals.wechat_paid_fen.saturating_add(line.amount_fen);
                seen_orders.insert(line.out_trade_no.clone());
                let found = ledger.orders.get(&line.out_trade_no);
                let base = Mismatch {
                    order_no: line.out_trade_no.clone(),
                    wechat_fen: Some(line.amount_fen),
                    ..mismatch(MismatchKind::PaymentUnknown, &line.out_trade_no)
                };
                let Some(order) = found else {
                    out.mismatches.push(Mismatch {
                        detail: format!(
                            "WeChat charged {} fen (transaction {}) for an order wxmp does not have",
                            line.amount_fen, line.transaction_id
                        ),
                        ..base
                    });
                    continue;
                };
                let base = Mismatch {
                    ledger_fen: Some(order.amount_fen),
                    ..base
                };
                if !PAID_STATES.contains(&order.state.as_str()) {
                    out.mismatches.push(Mismatch {
                        kind: MismatchKind::PaymentNotPaid,
                        detail: format!(
                            "WeChat charged {} fen (transaction {}); the order is {} here",
                            line.amount_fen, line.transaction_id, order.state
                        ),
                        ..base
                    });
                } else if order.amount_fen != line.amount_fen {
                    out.mismatches.push(Mismatch {
                        kind: MismatchKind::PaymentAmount,
                        detail: format!(
                            "WeChat charged {} fen, the order is for {} fen",
                            line.amount_fen, order.amount_fen
                        ),
                        ..base
                    });
                } else if order.transaction_id != line.transaction_id {
                    out.mismatches.push(Mismatch {
                        kind: MismatchKind::PaymentTransaction,
                        detail: format!(
                            "WeChat's transaction is {}, the order holds {:?}",
                            line.transaction_id, order.transaction_id
                        ),
                        ..base
                    });
                } else {
                    out.totals.matched += 1;
                }
            }
            LineKind::Refund => {
                out.totals.wechat_refunded_fen = out
                    .totals
                    .wechat_refunded_fen
                    .saturating_add(line.amount_fen);
                let key = if line.out_refund_no.is_empty() {
                    line.refund_id.clone()
                } else {
                    line.out_refund_no.clone()
                };
                seen_refunds.insert(key.clone());
                let base = Mismatch {
                    order_no: line.out_trade_no.clone(),
                    out_refund_no: key.clone(),
                    wechat_fen: Some(line.amount_fen),
                    refund_id: line.refund_id.clone(),
                    ..mismatch(MismatchKind::RefundUnknown, &key)
                };
                match ledger.refunds.get(&key) {
                    // Recorded from this or an earlier run of the bill: still made outside
                    // wxmp, the same difference.
                    Some(refund) if refund.outside => out.mismatches.push(Mismatch {
                        kind: MismatchKind::RefundOutside,
                        order_no: refund.order_no.clone(),
                        ledger_fen: Some(refund.amount_fen),
                        detail: format!(
                            "WeChat refunded {} fen of order {} (refund {}) outside wxmp",
                            line.amount_fen, refund.order_no, line.refund_id
                        ),
                        ..base
                    }),
                    None if ledger.orders.contains_key(&line.out_trade_no) => {
                        out.mismatches.push(Mismatch {
                            kind: MismatchKind::RefundOutside,
                            detail: format!(
                                "WeChat refunded {} fen of order {} (refund {}) outside wxmp",
                                line.amount_fen, line.out_trade_no, line.refund_id
                            ),
                            ..base
                        });
                    }
                    None => out.mismatches.push(Mismatch {
                        detail: format!(
                            "WeChat refunded {} fen of order {}, which wxmp does not have",
                            line.amount_fen, line.out_trade_no
                        ),
                        ..base
                    }),
                    Some(refund) => {
                        let base = Mismatch {
                            ledger_fen: Some(refund.amount_fen),
                            order_no: refund.order_no.clone(),
                            ..base
                        };
                        if !ACCEPTED_REFUND_STATES.contains(&refund.state.as_str()) {
                            out.mismatches.push(Mismatch {
                                kind: MismatchKind::RefundNotAccepted,
                                detail: format!(
                                    "WeChat refunded {} fen; the refund is {} here",
                                    line.amount_fen, refund.state
                                ),
                                ..base
                            });
                        } else if refund.amount_fen != line.amount_fen {
                            out.mismatches.push(Mismatch {
                                kind: MismatchKind::RefundAmount,
                                detail: format!(
                                    "WeChat refunded {} fen, the refund is for {} fen",
                                    line.amount_fen, refund.amount_fen
                                ),
                                ..base
                            });
                        } else {
                            out.totals.matched += 1;
                        }
                    }
                }
            }
            LineKind::Revoked | LineKind::Other => {}
        }
    }
    for order_no in &ledger.day_orders {
        let Some(order) = ledger.orders.get(order_no) else {
            continue;
        };
        out.totals.ledger_paid_fen = out.totals.ledger_paid_fen.saturating_add(order.amount_fen);
        if seen_orders.contains(order_no) || ledger.billed_elsewhere.contains(order_no) {
            continue;
        }
        out.mismatches.push(Mismatch {
            order_no: order_no.clone(),
            ledger_fen: Some(order.amount_fen),
            detail: format!(
                "the order is {} here ({} fen, transaction {:?}); WeChat's bill does not have it",
                order.state, order.amount_fen, order.transaction_id
            ),
            ..mismatch(MismatchKind::PaymentMissing, order_no)
        });
    }
    for out_refund_no in &ledger.day_refunds {
        let Some(refund) = ledger.refunds.get(out_refund_no) else {
            continue;
        };
        if !BILLED_REFUND_STATES.contains(&refund.state.as_str()) {
            continue;
        }
        out.totals.ledger_refunded_fen = out
            .totals
            .ledger_refunded_fen
            .saturating_add(refund.amount_fen);
        if seen_refunds.contains(out_refund_no)
            || (!refund.refund_id.is_empty() && seen_refunds.contains(&refund.refund_id))
            || ledger.billed_elsewhere.contains(out_refund_no)
        {
            continue;
        }
        out.mismatches.push(Mismatch {
            order_no: refund.order_no.clone(),
            out_refund_no: out_refund_no.clone(),
            ledger_fen: Some(refund.amount_fen),
            detail: format!(
                "the refund is {} here ({} fen); WeChat's bill does not have it",
                refund.state, refund.amount_fen
            ),
            ..mismatch(MismatchKind::RefundMissing, out_refund_no)
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pay(no: &str, fen: i64, tx: &str) -> Line {
        Line {
            line_no: 0,
            kind: LineKind::Payment,
            trade_time: String::new(),
            out_trade_no: no.into(),
            transaction_id: tx.into(),
            out_refund_no: String::new(),
            refund_id: String::new(),
            amount_fen: fen,
            fee_millifen: fen * 6,
            trade_state: "SUCCESS".into(),
        }
    }

    fn refund(no: &str, order: &str, fen: i64) -> Line {
        Line {
            kind: LineKind::Refund,
            out_refund_no: no.into(),
            refund_id: format!("wx-{no}"),
            fee_millifen: -fen * 6,
            trade_state: "REFUND".into(),
            ..pay(order, fen, "tx")
        }
    }

    fn order(no: &str, state: &str, fen: i64, tx: &str) -> LedgerOrder {
        LedgerOrder {
            order_no: no.into(),
            state: state.into(),
            amount_fen: fen,
            transaction_id: tx.into(),
            api: "v2".into(),
        }
    }

    fn our_refund(no: &str, order: &str, fen: i64, state: &str) -> LedgerRefund {
        LedgerRefund {
            out_refund_no: no.into(),
            order_no: order.into(),
            amount_fen: fen,
            state: state.into(),
            refund_id: String::new(),
            api: "v2".into(),
            outside: false,
        }
    }

    fn ledger(orders: Vec<LedgerOrder>, refunds: Vec<LedgerRefund>) -> Ledger {
        Ledger {
            day_orders: orders.iter().map(|o| o.order_no.clone()).collect(),
            day_refunds: refunds.iter().map(|r| r.out_refund_no.clone()).collect(),
            orders: orders
                .into_iter()
                .map(|o| (o.order_no.clone(), o))
                .collect(),
            refunds: refunds
                .into_iter()
                .map(|r| (r.out_refund_no.clone(), r))
                .collect(),
            billed_elsewhere: HashSet::new(),
        }
    }

    fn kinds(out: &Outcome) -> Vec<(MismatchKind, String)> {
        let mut k: Vec<_> = out
            .mismatches
            .iter()
            .map(|m| (m.kind, m.key.clone()))
            .collect();
        k.sort();
        k
    }

    #[test]
    fn a_clean_day_matches_everything() {
        let lines = [
            pay("A", 100, "t1"),
            pay("B", 5, "t2"),
            refund("R1", "A", 40),
        ];
        let l = ledger(
            vec![
                order("A", "REFUNDING", 100, "t1"),
                order("B", "PAID", 5, "t2"),
            ],
            vec![our_refund("R1", "A", 40, "SUCCESS")],
        );
        let out = reconcile(&lines, &l);
        assert!(out.mismatches.is_empty(), "{:?}", out.mismatches);
        assert_eq!(out.totals.matched, 3);
        assert_eq!(out.totals.wechat_paid_fen, 105);
        assert_eq!(out.totals.wechat_refunded_fen, 40);
        assert_eq!(out.totals.ledger_paid_fen, 105);
        assert_eq!(out.totals.wechat_fee_millifen, 105 * 6 - 40 * 6);
        assert_eq!(out.totals.wechat_net_millifen(), 65_000 - 390);
    }

    #[test]
    fn every_kind_of_difference_is_named_once() {
        let lines = [
            pay("AMT", 101, "t1"),
            pay("TX", 5, "other"),
            pay("GHOST", 7, "t3"),
            pay("OPEN", 9, "t4"),
            refund("R-AMT", "AMT", 2),
            refund("R-OUT", "TX", 3),
            refund("R-GHOST", "NOPE", 4),
            refund("R-FAILED", "TX", 1),
        ];
        let l = ledger(
            vec![
                order("AMT", "PAID", 100, "t1"),
                order("TX", "PAID", 5, "t2"),
                order("OPEN", "PAYING", 9, ""),
                order("GONE", "PAID", 11, "t9"),
            ],
            vec![
                our_refund("R-AMT", "AMT", 1, "PROCESSING"),
                our_refund("R-FAILED", "TX", 1, "FAILED"),
                our_refund("R-LOST", "AMT", 1, "SUCCESS"),
                our_refund("R-PENDING", "AMT", 1, "PENDING"),
            ],
        );
        let out = reconcile(&lines, &l);
        use MismatchKind::*;
        assert_eq!(
            kinds(&out),
            vec![
                (PaymentAmount, "AMT".into()),
                (PaymentTransaction, "TX".into()),
                (PaymentUnknown, "GHOST".into()),
                (PaymentNotPaid, "OPEN".into()),
                (PaymentMissing, "GONE".into()),
                (RefundAmount, "R-AMT".into()),
                (RefundOutside, "R-OUT".into()),
                (RefundUnknown, "R-GHOST".into()),
                (RefundNotAccepted, "R-FAILED".into()),
                (RefundMissing, "R-LOST".into()),
            ]
        );
        let outside = out
            .mismatches
            .iter()
            .find(|m| m.kind == RefundOutside)
            .unwrap();
        assert_eq!(
            (
                outside.order_no.as_str(),
                outside.refund_id.as_str(),
                outside.wechat_fen
            ),
            ("TX", "wx-R-OUT", Some(3))
        );
    }

    #[test]
    fn billed_on_another_day_is_not_missing() {
        let mut l = ledger(vec![order("LATE", "PAID", 1, "t")], vec![]);
        l.billed_elsewhere.insert("LATE".into());
        assert!(reconcile(&[], &l).mismatches.is_empty());
    }

    #[test]
    fn days_are_china_time() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        let (start, end) = day_bounds(d);
        // 2026-12-05 00:00 +08:00 = 2026-12-04 16:00 UTC.
        let utc = NaiveDate::from_ymd_opt(2026, 12, 4)
            .unwrap()
            .and_hms_opt(16, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp();
        assert_eq!(start, utc);
        assert_eq!(end - start, 86_400);
        assert_eq!(china_date_hour(start), (d, 0));
        assert_eq!(china_date_hour(end - 1).1, 23);
        assert_eq!(due_day(start + 9 * 3600, 10), None);
        assert_eq!(due_day(start + 10 * 3600, 10), d.pred_opt());
    }
}
