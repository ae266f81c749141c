//! The SQL of bills: `bill_days` (the job's state and lease per day and API), `bill_lines`,
//! `bill_mismatches`, on PostgreSQL or SQLite through [`service_kit::with_conn!`].
//!
//! Every step is conditional on the caller still holding the day's lease (`lease_owner`), and
//! each one leaves the day in a state the next run continues from: a bill is stored whole
//! before any line (WAITING → LOADING), lines go in batches that advance `lines_done` in
//! the same transaction, mismatches are `INSERT … ON CONFLICT DO NOTHING` on (day, kind, key)
//! with their outbox event in the same transaction.

use std::collections::{HashMap, HashSet};

use diesel::{
    BoolExpressionMethods, ExpressionMethods, Insertable, OptionalExtension, QueryDsl, Queryable,
    Selectable, SelectableHelper, TextExpressionMethods,
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use service_kit::db::Database;

use crate::{
    bills::rules::{Ledger, LedgerOrder, LedgerRefund, Line, LineKind, Mismatch, Totals},
    error::Error,
    events::{self, EventKind, NewEvent},
    refunds::{self, RefundState},
    schema::{bill_days, bill_lines, bill_mismatches, orders, refunds as refunds_t},
};

/// How many values an `IN (…)` list carries at most.
const IN_CHUNK: usize = 500;

/// A `bill_days` row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = bill_days)]
pub struct Day {
    pub bill_date: String,
    pub api: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub lease_owner: String,
    pub lease_until: i64,
    pub last_error: String,
    pub raw: String,
    pub raw_sha1: String,
    pub raw_gzip: bool,
    pub no_bill: bool,
    pub lines_total: i64,
    pub lines_done: i64,
    pub wechat_paid_fen: i64,
    pub wechat_refunded_fen: i64,
    pub wechat_fee_millifen: i64,
    pub ledger_paid_fen: i64,
    pub ledger_refunded_fen: i64,
    pub matched: i64,
    pub mismatches: i64,
    pub summary_json: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
}

/// A `bill_mismatches` row.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = bill_mismatches)]
pub struct MismatchRow {
    pub id: i64,
    pub bill_date: String,
    pub api: String,
    pub kind: String,
    pub key: String,
    pub order_no: String,
    pub out_refund_no: String,
    pub wechat_fen: Option<i64>,
    pub ledger_fen: Option<i64>,
    pub detail: String,
    pub created_at: i64,
    /// When someone marked it resolved (ResolveBillMismatch), and what they found.
    pub resolved_at: Option<i64>,
    pub resolution: String,
}

#[derive(Insertable)]
#[diesel(table_name = bill_mismatches)]
struct NewMismatch<'a> {
    bill_date: &'a str,
    api: &'a str,
    kind: &'a str,
    key: &'a str,
    order_no: &'a str,
    out_refund_no: &'a str,
    wechat_fen: Option<i64>,
    ledger_fen: Option<i64>,
    detail: &'a str,
    created_at: i64,
}

#[derive(Insertable, Queryable, Selectable)]
#[diesel(table_name = bill_lines)]
struct LineRow {
    bill_date: String,
    api: String,
    line_no: i64,
    kind: String,
    trade_time: String,
    out_trade_no: String,
    transaction_id: String,
    out_refund_no: String,
    refund_id: String,
    amount_fen: i64,
    fee_millifen: i64,
    trade_state: String,
}

/// Creates the day's row (WAITING) unless it exists.
pub async fn ensure_day(db: &Database, date: &str, api: &str, now: i64) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        diesel::insert_into(bill_days::table)
            .values((
                bill_days::bill_date.eq(date),
                bill_days::api.eq(api),
                bill_days::state.eq("WAITING"),
                bill_days::created_at.eq(now),
                bill_days::updated_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await
    })?;
    Ok(())
}

fn day_of<'a>(
    date: &'a str,
    api: &'a str,
) -> diesel::dsl::And<
    diesel::dsl::Eq<bill_days::bill_date, &'a str>,
    diesel::dsl::Eq<bill_days::api, &'a str>,
> {
    bill_days::bill_date.eq(date).and(bill_days::api.eq(api))
}

/// Takes the day's lease for `owner` until `now + lease_secs`: a day whose lease has lapsed
/// (or is `owner`'s own) and, unless `force`, that is not DONE and whose retry is due (`force`
/// also takes a DONE day: it is matched again).
pub async fn claim(
    db: &Database,
    date: &str,
    api: &str,
    owner: &str,
    now: i64,
    lease_secs: i64,
    force: bool,
) -> Result<Option<Day>, Error> {
    let due = if force { i64::MAX } else { now };
    // No state is "": with `force` every state qualifies.
    let not_state = if force { "" } else { "DONE" };
    Ok(service_kit::with_conn!(db, |conn| {
        diesel::update(
            bill_days::table
                .filter(day_of(date, api))
                .filter(bill_days::state.ne(not_state))
                .filter(
                    bill_days::lease_until
                        .le(now)
                        .or(bill_days::lease_owner.eq(owner)),
                )
                .filter(bill_days::next_attempt_at.le(due)),
        )
        .set((
            bill_days::lease_owner.eq(owner),
            bill_days::lease_until.eq(now.saturating_add(lease_secs)),
            bill_days::updated_at.eq(now),
        ))
        .returning(Day::as_returning())
        .get_result(conn)
        .await
        .optional()
    })?)
}

/// The day's row.
pub async fn find_day(db: &Database, date: &str, api: &str) -> Result<Option<Day>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        bill_days::table
            .filter(day_of(date, api))
            .select(Day::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

/// Every day row of `date`, and that day's mismatches.
pub async fn report(db: &Database, date: &str) -> Result<(Vec<Day>, Vec<MismatchRow>), Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        let days = bill_days::table
            .filter(bill_days::bill_date.eq(date))
            .order(bill_days::api)
            .select(Day::as_select())
            .load(conn)
            .await?;
        let mismatches = bill_mismatches::table
            .filter(bill_mismatches::bill_date.eq(date))
            .order(bill_mismatches::id)
            .select(MismatchRow::as_select())
            .load(conn)
            .await?;
        Ok::<_, diesel::result::Error>((days, mismatches))
    })?)
}

/// Marks the mismatch `(date, kind, key)` resolved with `note`, once: a second call changes
/// nothing and answers the row as the first left it. `None` when there is no such mismatch.
pub async fn resolve_mismatch(
    db: &Database,
    date: &str,
    kind: &str,
    key: &str,
    note: &str,
    now: i64,
) -> Result<Option<MismatchRow>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        let the_one = || {
            bill_mismatches::table
                .filter(bill_mismatches::bill_date.eq(date))
                .filter(bill_mismatches::kind.eq(kind))
                .filter(bill_mismatches::key.eq(key))
        };
        let updated = diesel::update(the_one().filter(bill_mismatches::resolved_at.is_null()))
            .set((
                bill_mismatches::resolved_at.eq(Some(now)),
                bill_mismatches::resolution.eq(note),
            ))
            .returning(MismatchRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        match updated {
            Some(row) => Ok::<_, diesel::result::Error>(Some(row)),
            None => the_one()
                .select(MismatchRow::as_select())
                .first(conn)
                .await
                .optional(),
        }
    })?)
}

/// Gives the lease up and schedules the next attempt at `at` (WAITING stays WAITING: nothing
/// of the bill was kept).
pub async fn retry_later(
    db: &Database,
    date: &str,
    api: &str,
    owner: &str,
    now: i64,
    at: i64,
    error: &str,
) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        diesel::update(
            bill_days::table
                .filter(day_of(date, api))
                .filter(bill_days::lease_owner.eq(owner)),
        )
        .set((
            bill_days::attempts.eq(bill_days::attempts + 1),
            bill_days::next_attempt_at.eq(at),
            bill_days::last_error.eq(error),
            bill_days::lease_until.eq(0),
            bill_days::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    Ok(())
}

/// Keeps the whole bill, checked and parsed, and moves the day WAITING → LOADING. False when
/// the lease was lost (nothing written).
#[allow(clippy::too_many_arguments)]
pub async fn store_bill(
    db: &Database,
    date: &str,
    api: &str,
    owner: &str,
    raw: &str,
    sha1: &str,
    gzip: bool,
    no_bill: bool,
    lines_total: i64,
    summary_json: &str,
    now: i64,
) -> Result<bool, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::update(
            bill_days::table
                .filter(day_of(date, api))
                .filter(bill_days::lease_owner.eq(owner))
                .filter(bill_days::state.eq("WAITING")),
        )
        .set((
            bill_days::state.eq("LOADING"),
            bill_days::raw.eq(raw),
            bill_days::raw_sha1.eq(sha1),
            bill_days::raw_gzip.eq(gzip),
            bill_days::no_bill.eq(no_bill),
            bill_days::lines_total.eq(lines_total),
            bill_days::lines_done.eq(0),
            bill_days::summary_json.eq(summary_json),
            bill_days::attempts.eq(bill_days::attempts + 1),
            bill_days::last_error.eq(""),
            bill_days::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    Ok(n == 1)
}

/// Stores `lines` (parsed lines `done..done + lines.len()`) and advances `lines_done` from
/// `done`, in one transaction. False when the lease was lost or another run got there first
/// (nothing written).
pub async fn store_lines(
    db: &Database,
    date: &str,
    api: &str,
    owner: &str,
    done: i64,
    lines: &[Line],
    now: i64,
) -> Result<bool, Error> {
    let rows: Vec<LineRow> = lines
        .iter()
        .map(|l| LineRow {
            bill_date: date.to_owned(),
            api: api.to_owned(),
            line_no: l.line_no,
            kind: l.kind.as_str().to_owned(),
            trade_time: l.trade_time.clone(),
            out_trade_no: l.out_trade_no.clone(),
            transaction_id: l.transaction_id.clone(),
            out_refund_no: l.out_refund_no.clone(),
            refund_id: l.refund_id.clone(),
            amount_fen: l.amount_fen,
            fee_millifen: l.fee_millifen,
            trade_state: l.trade_state.clone(),
        })
        .collect();
    let next = done + i64::try_from(lines.len()).unwrap_or(i64::MAX);
    let stored = service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, Error, _>(async |conn| {
            let advanced = diesel::update(
                bill_days::table
                    .filter(day_of(date, api))
                    .filter(bill_days::lease_owner.eq(owner))
                    .filter(bill_days::state.eq("LOADING"))
                    .filter(bill_days::lines_done.eq(done)),
            )
            .set((
                bill_days::lines_done.eq(next),
                bill_days::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            if advanced != 1 {
                return Ok(false);
            }
            // One statement per line: SQLite takes no multi-row INSERT from diesel.
            for row in &rows {
                diesel::insert_into(bill_lines::table)
                    .values(row)
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
            }
            Ok(true)
        })
        .await
    })?;
    Ok(stored)
}

/// LOADING → MATCHING once every line is stored.
pub async fn start_matching(
    db: &Database,
    date: &str,
    api: &str,
    owner: &str,
    now: i64,
) -> Result<bool, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::update(
            bill_days::table
                .filter(day_of(date, api))
                .filter(bill_days::lease_owner.eq(owner))
                .filter(bill_days::state.eq("LOADING"))
                .filter(bill_days::lines_done.eq(bill_days::lines_total)),
        )
        .set((
            bill_days::state.eq("MATCHING"),
            bill_days::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    Ok(n == 1)
}

/// The day's stored lines, in order.
pub async fn lines(db: &Database, date: &str, api: &str) -> Result<Vec<Line>, Error> {
    let rows: Vec<LineRow> = service_kit::with_conn!(db, |conn| {
        bill_lines::table
            .filter(bill_lines::bill_date.eq(date))
            .filter(bill_lines::api.eq(api))
            .order(bill_lines::line_no)
            .select(LineRow::as_select())
            .load(conn)
            .await
    })?;
    Ok(rows
        .into_iter()
        .map(|r| Line {
            line_no: r.line_no,
            kind: LineKind::parse(&r.kind),
            trade_time: r.trade_time,
            out_trade_no: r.out_trade_no,
            transaction_id: r.transaction_id,
            out_refund_no: r.out_refund_no,
            refund_id: r.refund_id,
            amount_fen: r.amount_fen,
            fee_millifen: r.fee_millifen,
            trade_state: r.trade_state,
        })
        .collect())
}

/// Refunds recorded from a bill carry this at the start of their reason.
pub const OUTSIDE_REASON_PREFIX: &str = "outside wxmp";

/// What the matching of `date` (China-time `[start, end)`) on `api` needs from the ledger.
pub async fn ledger(
    db: &Database,
    date: &str,
    api: &str,
    (start, end): (i64, i64),
    lines: &[Line],
) -> Result<Ledger, Error> {
    type OrderCols = (String, String, i64, String, String);
    type RefundCols = (String, String, i64, String, String, String, String);
    let to_order = |(order_no, state, amount_fen, transaction_id, api): OrderCols| LedgerOrder {
        order_no,
        state,
        amount_fen,
        transaction_id,
        api,
    };
    let to_refund =
        |(out_refund_no, order_no, amount_fen, state, refund_id, api, reason): RefundCols| {
            LedgerRefund {
                outside: reason.starts_with(OUTSIDE_REASON_PREFIX),
                out_refund_no,
                order_no,
                amount_fen,
                state,
                refund_id,
                api,
            }
        };
    let order_cols = (
        orders::order_no,
        orders::state,
        orders::amount_fen,
        orders::transaction_id,
        orders::api,
    );
    let refund_cols = (
        refunds_t::out_refund_no,
        refunds_t::order_no,
        refunds_t::amount_fen,
        refunds_t::state,
        refunds_t::refund_id,
        refunds_t::api,
        refunds_t::reason,
    );
    let bill_orders: Vec<String> = lines
        .iter()
        .map(|l| l.out_trade_no.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let bill_refunds: Vec<String> = lines
        .iter()
        .filter(|l| l.kind == LineKind::Refund)
        .map(|l| {
            if l.out_refund_no.is_empty() {
                l.refund_id.clone()
            } else {
                l.out_refund_no.clone()
            }
        })
        .collect();
    let mut ledger = Ledger::default();
    service_kit::with_conn!(db, |conn| {
        async {
            for chunk in bill_orders.chunks(IN_CHUNK) {
                let found: Vec<OrderCols> = orders::table
                    .filter(orders::order_no.eq_any(chunk))
                    .select(order_cols)
                    .load(conn)
                    .await?;
                for o in found {
                    let o = to_order(o);
                    ledger.orders.insert(o.order_no.clone(), o);
                }
            }
            for chunk in bill_refunds.chunks(IN_CHUNK) {
                let found: Vec<RefundCols> = refunds_t::table
                    .filter(refunds_t::out_refund_no.eq_any(chunk))
                    .select(refund_cols)
                    .load(conn)
                    .await?;
                for r in found {
                    let r = to_refund(r);
                    ledger.refunds.insert(r.out_refund_no.clone(), r);
                }
            }
            let day_orders: Vec<OrderCols> = orders::table
                .filter(orders::paid_at.ge(start))
                .filter(orders::paid_at.lt(end))
                .filter(orders::state.eq_any(crate::bills::rules::PAID_STATES))
                .filter(orders::api.eq(api))
                .select(order_cols)
                .load(conn)
                .await?;
            for o in day_orders {
                let o = to_order(o);
                ledger.day_orders.push(o.order_no.clone());
                ledger.orders.insert(o.order_no.clone(), o);
            }
            let day_refunds: Vec<RefundCols> = refunds_t::table
                .filter(refunds_t::created_at.ge(start))
                .filter(refunds_t::created_at.lt(end))
                .filter(refunds_t::api.eq(api))
                .filter(refunds_t::reason.not_like(format!("{OUTSIDE_REASON_PREFIX}%")))
                .select(refund_cols)
                .load(conn)
                .await?;
            for r in day_refunds {
                let r = to_refund(r);
                ledger.day_refunds.push(r.out_refund_no.clone());
                ledger.refunds.insert(r.out_refund_no.clone(), r);
            }
            // Billed on another day (a payment just before midnight at WeChat, recorded
            // here just after it): not missing.
            let keys: Vec<String> = ledger
                .day_orders
                .iter()
                .chain(&ledger.day_refunds)
                .cloned()
                .collect();
            for chunk in keys.chunks(IN_CHUNK) {
                let elsewhere: Vec<(String, String)> = bill_lines::table
                    .filter(bill_lines::bill_date.ne(date))
                    .filter(
                        bill_lines::out_trade_no
                            .eq_any(chunk)
                            .or(bill_lines::out_refund_no.eq_any(chunk)),
                    )
                    .select((bill_lines::kind, bill_lines::out_trade_no))
                    .load(conn)
                    .await?;
                let refunds_elsewhere: Vec<String> = bill_lines::table
                    .filter(bill_lines::bill_date.ne(date))
                    .filter(bill_lines::kind.eq(LineKind::Refund.as_str()))
                    .filter(bill_lines::out_refund_no.eq_any(chunk))
                    .select(bill_lines::out_refund_no)
                    .load(conn)
                    .await?;
                for (kind, out_trade_no) in elsewhere {
                    if kind == LineKind::Payment.as_str() {
                        ledger.billed_elsewhere.insert(out_trade_no);
                    }
                }
                ledger.billed_elsewhere.extend(refunds_elsewhere);
            }
            Ok::<_, Error>(())
        }
        .await
    })?;
    Ok(ledger)
}

/// Records `mismatches` of the day, each at most once per (day, kind, key), with its
/// `BILL_MISMATCH` outbox event in the same transaction. Returns the ones new this time.
pub async fn record_mismatches(
    db: &Database,
    date: &str,
    api: &str,
    mismatches: &[Mismatch],
    now: i64,
) -> Result<Vec<Mismatch>, Error> {
    let mut new = Vec::new();
    for batch in mismatches.chunks(100) {
        let inserted = service_kit::with_conn!(db, |conn| {
            conn.transaction::<_, Error, _>(async |conn| {
                let mut inserted = Vec::new();
                for m in batch {
                    let n = diesel::insert_into(bill_mismatches::table)
                        .values(NewMismatch {
                            bill_date: date,
                            api,
                            kind: m.kind.as_str(),
                            key: &m.key,
                            order_no: &m.order_no,
                            out_refund_no: &m.out_refund_no,
                            wechat_fen: m.wechat_fen,
                            ledger_fen: m.ledger_fen,
                            detail: &m.detail,
                            created_at: now,
                        })
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await?;
                    if n == 1 {
                        let payload = serde_json::json!({
                            "bill_date": date,
                            "api": api,
                            "kind": m.kind.as_str(),
                            "key": m.key,
                            "order_no": m.order_no,
                            "out_refund_no": m.out_refund_no,
                            "wechat_fen": m.wechat_fen,
                            "ledger_fen": m.ledger_fen,
                            "detail": m.detail,
                        });
                        crate::append_event!(
                            conn,
                            NewEvent {
                                order_no: m.order_no.clone(),
                                kind: EventKind::BillMismatch.as_str().to_owned(),
                                payload: payload.to_string(),
                                created_at: now,
                            }
                        )?;
                        inserted.push(m.clone());
                    }
                }
                Ok(inserted)
            })
            .await
        })?;
        new.extend(inserted);
    }
    if !new.is_empty() {
        events::wake();
    }
    Ok(new)
}

/// MATCHING (or DONE, matched again) → DONE with the day's totals; gives the lease up.
pub async fn finish(
    db: &Database,
    date: &str,
    api: &str,
    owner: &str,
    totals: &Totals,
    mismatches: i64,
    now: i64,
) -> Result<bool, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::update(
            bill_days::table
                .filter(day_of(date, api))
                .filter(bill_days::lease_owner.eq(owner))
                .filter(bill_days::state.eq_any(["MATCHING", "DONE"])),
        )
        .set((
            bill_days::state.eq("DONE"),
            bill_days::wechat_paid_fen.eq(totals.wechat_paid_fen),
            bill_days::wechat_refunded_fen.eq(totals.wechat_refunded_fen),
            bill_days::wechat_fee_millifen.eq(totals.wechat_fee_millifen),
            bill_days::ledger_paid_fen.eq(totals.ledger_paid_fen),
            bill_days::ledger_refunded_fen.eq(totals.ledger_refunded_fen),
            bill_days::matched.eq(totals.matched),
            bill_days::mismatches.eq(mismatches),
            bill_days::lease_until.eq(0),
            bill_days::completed_at.eq(Some(now)),
            bill_days::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    Ok(n == 1)
}

/// How many mismatches the day holds.
pub async fn count_mismatches(db: &Database, date: &str) -> Result<i64, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        bill_mismatches::table
            .filter(bill_mismatches::bill_date.eq(date))
            .count()
            .get_result(conn)
            .await
    })?)
}

/// Records a refund WeChat's bill shows and wxmp never made, against its order, through the
/// refunds store (its reservation, state and outbox event): created PENDING then settled
/// SUCCESS with WeChat's refund id, the reason naming where it was found. Idempotent: a
/// repeat finds the refund and changes nothing. Answers false when the order cannot hold it
/// (not paid here, or more than is left to refund): then only the mismatch records it.
#[allow(clippy::too_many_arguments)]
pub async fn record_outside_refund(
    db: &Database,
    order_no: &str,
    out_refund_no: &str,
    refund_id: &str,
    amount_fen: i64,
    api: &str,
    source: &str,
    now: i64,
) -> Result<bool, Error> {
    let mut reason = format!("{OUTSIDE_REASON_PREFIX}: {source}");
    while reason.len() > refunds::MAX_REASON_BYTES {
        reason.pop();
    }
    let new = refunds::store::NewRefund::outside(
        out_refund_no,
        order_no,
        amount_fen,
        reason,
        api,
        now,
        now,
    );
    match refunds::store::create(db, &new).await? {
        refunds::store::Created::New(..) | refunds::store::Created::Existing(_) => {}
        refunds::store::Created::Refused(_) | refunds::store::Created::NoOrder => {
            return Ok(false);
        }
    }
    let change = refunds::store::Change {
        to: RefundState::Success,
        refund_id: refund_id.to_owned(),
        failure: String::new(),
        now,
        next_check_at: now,
        received_account: String::new(),
    };
    refunds::store::transition(db, out_refund_no, &[RefundState::Pending], &change).await?;
    Ok(true)
}

/// Counts by kind (for the report and the metric).
pub fn by_kind(mismatches: &[Mismatch]) -> HashMap<&'static str, u64> {
    let mut counts = HashMap::new();
    for m in mismatches {
        *counts.entry(m.kind.as_str()).or_insert(0) += 1;
    }
    counts
}
