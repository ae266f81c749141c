//! The SQL of refunds, on PostgreSQL or SQLite through [`service_kit::with_conn!`].
//!
//! Two functions change refunds, each one transaction:
//! - [`create`] reserves the amount on the order (one conditional UPDATE: paid, and
//!   `refunding_fen + refunded_fen + amount <= amount_fen`) and inserts the PENDING row; a
//!   reservation refused because a concurrent call with the same out_refund_no took the
//!   amount answers that call's refund ([`Created::Existing`]), never a refusal;
//! - [`transition`] moves a refund between states (one conditional UPDATE on its state) and,
//!   when it leaves flight, moves the order's totals (one conditional UPDATE) and its state.
//!
//! Every refund state change goes through these two; a settlement (SUCCESS, FAILED, CLOSED)
//! or ABNORMAL writes its outbox event (`REFUND_SUCCEEDED` / `REFUND_FAILED` /
//! `REFUND_ABNORMAL`) in the same transaction. ABNORMAL is in flight: it moves no totals.

use diesel::{
    BoolExpressionMethods, ExpressionMethods, Insertable, OptionalExtension, QueryDsl,
    SelectableHelper,
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use service_kit::db::Database;

use crate::{
    error::Error,
    events::{self, NewEvent},
    orders::notify::{MAX_STORED_BODY_BYTES, UNVERIFIED_PREFIX_BYTES},
    orders::{Order, OrderState},
    refunds::{self, IN_FLIGHT, REFUNDABLE_STATES, Refund, RefundState},
    schema::{orders, refund_notifications, refunds as refunds_t},
};

/// A new refund row (always PENDING).
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = refunds_t)]
pub struct NewRefund {
    pub out_refund_no: String,
    pub order_no: String,
    pub amount_fen: i64,
    pub reason: String,
    pub state: String,
    pub api: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub next_check_at: i64,
    /// The refund notify URL sent with it, now and on every resend ('' = none).
    pub notify_url: String,
    /// `wxmp`, or `outside` for a refund made elsewhere and recorded from WeChat.
    pub origin: String,
}

impl NewRefund {
    /// A refund WeChat made outside wxmp (e.g. in the merchant platform), to be recorded
    /// against its order: reserved as PENDING with origin `outside` and no notify URL (nothing
    /// is sent), then settled from what WeChat says of it.
    pub fn outside(
        out_refund_no: &str,
        order_no: &str,
        amount_fen: i64,
        reason: String,
        api: &str,
        now: i64,
        next_check_at: i64,
    ) -> Self {
        Self {
            out_refund_no: out_refund_no.to_owned(),
            order_no: order_no.to_owned(),
            amount_fen,
            reason,
            state: RefundState::Pending.as_str().to_owned(),
            api: api.to_owned(),
            created_at: now,
            updated_at: now,
            next_check_at,
            notify_url: String::new(),
            origin: crate::refunds::rules::ORIGIN_OUTSIDE.to_owned(),
        }
    }
}

/// A received refund notify, as stored: `raw_body` is the whole body (up to 8 KiB) once it
/// decrypted (v2) or authenticated (v3), else a 64-byte prefix; `body_sha256` and `body_len`
/// are always of the whole body.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = refund_notifications)]
pub struct NewRefundNotification {
    pub received_at: i64,
    pub out_refund_no: String,
    pub raw_body: String,
    pub verdict: String,
    pub accepted: bool,
    pub body_sha256: String,
    pub body_len: i64,
}

impl NewRefundNotification {
    /// A notify received at `now`, not (yet) authenticated: its prefix and hash only.
    pub fn unverified(raw_body: &[u8], now: i64) -> Self {
        use sha2::Digest as _;
        Self {
            received_at: now,
            out_refund_no: String::new(),
            raw_body: lossy(&raw_body[..raw_body.len().min(UNVERIFIED_PREFIX_BYTES)]),
            verdict: String::new(),
            accepted: false,
            body_sha256: hex::encode(sha2::Sha256::digest(raw_body)),
            body_len: i64::try_from(raw_body.len()).unwrap_or(i64::MAX),
        }
    }

    /// Keeps the whole body (up to 8 KiB): it decrypted or authenticated, WeChat's own.
    pub fn keep_whole(&mut self, raw_body: &[u8]) {
        self.raw_body = lossy(&raw_body[..raw_body.len().min(MAX_STORED_BODY_BYTES)]);
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What [`create`] did. (Answered once per call, never held in bulk: the variants' sizes do
/// not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// Reserved and written: the new row and the order after the reservation.
    New(Refund, Order),
    /// The out_refund_no exists already (a concurrent first call won): that row.
    Existing(Refund),
    /// The order may not take it (not paid, or not enough left): the order as it is.
    Refused(Order),
    /// No such order.
    NoOrder,
}

/// A state change of a refund, for [`transition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub to: RefundState,
    /// WeChat's refund_id, when known (kept when empty).
    pub refund_id: String,
    /// Why it failed or closed.
    pub failure: String,
    pub now: i64,
    /// The reconciler's next look (ignored once final).
    pub next_check_at: i64,
    /// Where WeChat says the money went (kept when empty).
    pub received_account: String,
}

/// What [`transition`] found (answered once per call, like [`Created`]).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// This call changed the refund (and, when it left flight, the order).
    Applied(Refund, Order),
    /// The refund was not in a `from` state: nothing changed; the row as it is.
    Unchanged(Refund),
    /// No such refund.
    Unknown,
}

/// Reserves `new.amount_fen` on its order and inserts the PENDING refund, in one transaction.
pub async fn create(db: &Database, new: &NewRefund) -> Result<Created, Error> {
    let attempt: Result<Created, Error> = service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, Error, _>(async |conn| {
            let amount = new.amount_fen;
            let reserved: Option<Order> = diesel::update(
                orders::table
                    .filter(orders::order_no.eq(&new.order_no))
                    .filter(
                        orders::state.eq_any(REFUNDABLE_STATES).or(orders::state
                            .eq(OrderState::Closed.as_str())
                            .and(orders::transaction_id.ne(""))),
                    )
                    .filter(
                        (orders::refunding_fen + orders::refunded_fen + amount)
                            .le(orders::amount_fen),
                    ),
            )
            .set((
                orders::refunding_fen.eq(orders::refunding_fen + amount),
                orders::updated_at.eq(new.created_at),
            ))
            .returning(Order::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            let Some(mut order) = reserved else {
                // A concurrent call with this key may have reserved first (its commit is what
                // refused us): answer its refund, not a refusal. Looked up after the UPDATE,
                // which waited for that commit.
                let same_key: Option<Refund> = refunds_t::table
                    .filter(refunds_t::out_refund_no.eq(&new.out_refund_no))
                    .select(Refund::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                if let Some(existing) = same_key {
                    return Ok(Created::Existing(existing));
                }
                let current: Option<Order> = orders::table
                    .filter(orders::order_no.eq(&new.order_no))
                    .select(Order::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                return Ok(current.map_or(Created::NoOrder, Created::Refused));
            };
            let refund: Refund = diesel::insert_into(refunds_t::table)
                .values(new)
                .returning(Refund::as_returning())
                .get_result(conn)
                .await?;
            let state = refunds::order_state_after(&order);
            if order.state() != Some(state) {
                order = diesel::update(orders::table.filter(orders::order_no.eq(&new.order_no)))
                    .set(orders::state.eq(state.as_str()))
                    .returning(Order::as_returning())
                    .get_result(conn)
                    .await?;
            }
            Ok(Created::New(refund, order))
        })
        .await
    });
    match attempt {
        // The same out_refund_no committed first (the whole transaction rolled back).
        Err(Error::Db(e)) if e.is_unique_violation() => match find(db, &new.out_refund_no).await? {
            Some(existing) => Ok(Created::Existing(existing)),
            None => Err(Error::Db(e)),
        },
        other => other,
    }
}

/// Moves refund `out_refund_no` from one of `from` to `change.to`, in one transaction with
/// the order's totals and state when the refund leaves flight.
pub async fn transition(
    db: &Database,
    out_refund_no: &str,
    from: &[RefundState],
    change: &Change,
) -> Result<Transition, Error> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let to = change.to;
    let settled_at = to.is_final().then_some(change.now);
    let transitioned = service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, Error, _>(async |conn| {
            let target = refunds_t::table
                .filter(refunds_t::out_refund_no.eq(out_refund_no))
                .filter(refunds_t::state.eq_any(&from));
            let values = (
                refunds_t::state.eq(to.as_str()),
                refunds_t::failure.eq(&change.failure),
                refunds_t::updated_at.eq(change.now),
                refunds_t::settled_at.eq(settled_at),
                refunds_t::next_check_at.eq(change.next_check_at),
            );
            let applied: Option<Refund> = if change.refund_id.is_empty() {
                diesel::update(target)
                    .set(values)
                    .returning(Refund::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
            } else {
                diesel::update(target)
                    .set((values, refunds_t::refund_id.eq(&change.refund_id)))
                    .returning(Refund::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
            };
            // Where the money went, when this change says (kept otherwise).
            let applied = match applied {
                Some(r) if !change.received_account.is_empty() => Some(
                    diesel::update(refunds_t::table.filter(refunds_t::id.eq(r.id)))
                        .set(refunds_t::received_account.eq(&change.received_account))
                        .returning(Refund::as_returning())
                        .get_result(conn)
                        .await?,
                ),
                other => other,
            };
            let Some(refund) = applied else {
                let current: Option<Refund> = refunds_t::table
                    .filter(refunds_t::out_refund_no.eq(out_refund_no))
                    .select(Refund::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                return Ok(current.map_or(Transition::Unknown, Transition::Unchanged));
            };
            let was_in_flight = from.iter().all(|s| IN_FLIGHT.contains(s));
            let amount = refund.amount_fen;
            let order: Order = if to.is_final() && was_in_flight {
                let refunded = if to == RefundState::Success {
                    amount
                } else {
                    0
                };
                diesel::update(
                    orders::table
                        .filter(orders::order_no.eq(&refund.order_no))
                        .filter(orders::refunding_fen.ge(amount)),
                )
                .set((
                    orders::refunding_fen.eq(orders::refunding_fen - amount),
                    orders::refunded_fen.eq(orders::refunded_fen + refunded),
                    orders::updated_at.eq(change.now),
                ))
                .returning(Order::as_returning())
                .get_result(conn)
                .await
                .optional()?
                // The reservation is missing: refuse to make the totals up (rolls back).
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "order {} does not hold refund {out_refund_no}'s amount",
                        refund.order_no
                    ))
                })?
            } else {
                orders::table
                    .filter(orders::order_no.eq(&refund.order_no))
                    .select(Order::as_select())
                    .first(conn)
                    .await?
            };
            let state = refunds::order_state_after(&order);
            let order = if order.state() != Some(state) && refunds::was_paid(&order) {
                diesel::update(orders::table.filter(orders::order_no.eq(&refund.order_no)))
                    .set(orders::state.eq(state.as_str()))
                    .returning(Order::as_returning())
                    .get_result(conn)
                    .await?
            } else {
                order
            };
            // A settlement is one outbox event, in this transaction.
            if let Some(event) = NewEvent::of_refund(&refund, &order, change.now) {
                crate::append_event!(conn, event)?;
            }
            Ok(Transition::Applied(refund, order))
        })
        .await
    });
    if matches!(&transitioned, Ok(Transition::Applied(..))) && to.has_event() {
        events::wake();
    }
    transitioned
}

pub async fn find(db: &Database, out_refund_no: &str) -> Result<Option<Refund>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        refunds_t::table
            .filter(refunds_t::out_refund_no.eq(out_refund_no))
            .select(Refund::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

/// The refunds of an order, oldest first.
pub async fn list_for_order(db: &Database, order_no: &str) -> Result<Vec<Refund>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        refunds_t::table
            .filter(refunds_t::order_no.eq(order_no))
            .order(refunds_t::id.asc())
            .select(Refund::as_select())
            .load(conn)
            .await
    })?)
}

/// In-flight refunds whose next check is due.
pub async fn due(db: &Database, now: i64, limit: i64) -> Result<Vec<Refund>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        refunds_t::table
            .filter(refunds_t::state.eq_any(IN_FLIGHT))
            .filter(refunds_t::next_check_at.le(now))
            .order(refunds_t::next_check_at.asc())
            .limit(limit)
            .select(Refund::as_select())
            .load(conn)
            .await
    })?)
}

/// Claims an in-flight refund for the reconciler until `until` (pushes its next check): of
/// several replicas racing, exactly one UPDATE matches. Not a state change.
pub async fn claim(
    db: &Database,
    out_refund_no: &str,
    now: i64,
    until: i64,
) -> Result<bool, Error> {
    let rows = service_kit::with_conn!(db, |conn| {
        diesel::update(
            refunds_t::table
                .filter(refunds_t::out_refund_no.eq(out_refund_no))
                .filter(refunds_t::state.eq_any(IN_FLIGHT))
                .filter(refunds_t::next_check_at.le(now)),
        )
        .set(refunds_t::next_check_at.eq(until))
        .execute(conn)
        .await
    })?;
    Ok(rows == 1)
}

/// Sets when the reconciler looks at an in-flight refund next. Not a state change.
pub async fn check_again_at(db: &Database, out_refund_no: &str, at: i64) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        diesel::update(
            refunds_t::table
                .filter(refunds_t::out_refund_no.eq(out_refund_no))
                .filter(refunds_t::state.eq_any(IN_FLIGHT)),
        )
        .set(refunds_t::next_check_at.eq(at))
        .execute(conn)
        .await
    })?;
    Ok(())
}

pub async fn insert_notification(
    db: &Database,
    record: &NewRefundNotification,
) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        diesel::insert_into(refund_notifications::table)
            .values(record)
            .execute(conn)
            .await
    })?;
    Ok(())
}

/// Stored refund notifies of one refund, oldest first: (verdict, accepted).
pub async fn notification_verdicts(
    db: &Database,
    out_refund_no: &str,
) -> Result<Vec<(String, bool)>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        refund_notifications::table
            .filter(refund_notifications::out_refund_no.eq(out_refund_no))
            .order(refund_notifications::id.asc())
            .select((
                refund_notifications::verdict,
                refund_notifications::accepted,
            ))
            .load(conn)
            .await
    })?)
}

/// Stored refund notifies of `out_refund_no` (empty: those that never named one, e.g.
/// undecryptable), oldest first: (raw_body, body_sha256, body_len).
pub async fn notification_bodies(
    db: &Database,
    out_refund_no: &str,
) -> Result<Vec<(String, String, i64)>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        refund_notifications::table
            .filter(refund_notifications::out_refund_no.eq(out_refund_no))
            .order(refund_notifications::id.asc())
            .select((
                refund_notifications::raw_body,
                refund_notifications::body_sha256,
                refund_notifications::body_len,
            ))
            .load(conn)
            .await
    })?)
}

/// Deletes the refund notifies received before `before`; the number deleted.
pub async fn prune_notifications(db: &Database, before: i64) -> Result<usize, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        diesel::delete(
            refund_notifications::table.filter(refund_notifications::received_at.lt(before)),
        )
        .execute(conn)
        .await
    })?)
}
