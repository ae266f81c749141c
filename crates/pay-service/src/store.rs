//! Every query of pay-service, written once and run on PostgreSQL or SQLite through
//! [`service_kit::with_conn!`].
//!
//! Each state change is ONE conditional UPDATE whose WHERE clause names the states it may
//! leave; the number of rows it touched says whether this call made the change. That is
//! atomic and idempotent on both back ends without explicit locks: on PostgreSQL a second
//! writer waits for the first one's row lock and then re-checks the WHERE clause against the
//! committed row (READ COMMITTED), on SQLite writers are serialised.
//!
//! Every pool checkout costs a round trip of its own (the pool verifies the connection), so
//! a request's queries that belong together run on one checkout, and UPDATEs answer the row
//! with RETURNING instead of a second SELECT.

pub mod refunds;

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl, SelectableHelper};
use diesel_async::{AsyncConnection, RunQueryDsl};
use service_kit::db::{Cached, Database};

use crate::{
    error::Error,
    events::{self, EventKind, NewEvent},
    orders::{OPEN_STATES, Order, OrderState},
    schema::{orders, pay_notifications},
};

/// A new order. The payer (`app_id`, `openid`, `client_ip`) is empty for an unbound order, or
/// already bound when the order is made by the PrepareJsapiPayment that pays it.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = orders)]
pub struct NewOrder {
    pub order_no: String,
    pub user_id: i64,
    pub app_id: String,
    pub openid: String,
    pub client_ip: String,
    pub amount_fen: i64,
    pub description: String,
    pub attach: String,
    pub product_id: String,
    pub state: String,
    /// `v2` or `v3` (`WXMP_PAY_API` when created).
    pub api: String,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    /// What the first unifiedorder is placed with ('' until the payer is bound).
    pub notify_url: String,
    pub sign_type: String,
}

/// A received notify, as stored: `raw_body` is the whole body of a verified notify, only a
/// short prefix of any other (see `notify.rs`); `body_sha256` and `body_len` are always of the
/// whole body as received.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = pay_notifications)]
pub struct NewNotification {
    pub received_at: i64,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub raw_body: String,
    pub verdict: String,
    pub accepted: bool,
    pub body_sha256: String,
    pub body_len: i64,
}

/// What an attempt to mark an order PAID found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaidOutcome {
    /// This call moved the order to PAID.
    Applied(Order),
    /// Already PAID with the same transaction: nothing changed.
    Duplicate(Order),
    /// Already PAID by another transaction: nothing changed; needs a human.
    OtherTransaction(Order),
    /// The order was CLOSED: the transaction is recorded on it for a manual refund.
    PaidAfterClose(Order),
    /// Any other state (REFUNDING, REFUNDED): nothing changed.
    Unexpected(Order),
}

impl PaidOutcome {
    pub fn order(&self) -> &Order {
        match self {
            Self::Applied(o)
            | Self::Duplicate(o)
            | Self::OtherTransaction(o)
            | Self::PaidAfterClose(o)
            | Self::Unexpected(o) => o,
        }
    }
}

pub async fn insert_order(db: &Database, new: &NewOrder) -> Result<Order, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        Cached(
            diesel::insert_into(orders::table)
                .values(new)
                .returning(Order::as_returning()),
        )
        .get_result(conn)
        .await
    })?)
}

pub async fn find_order(db: &Database, order_no: &str) -> Result<Option<Order>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::order_no.eq(order_no))
            .select(Order::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

pub async fn find_by_idempotency_key(
    db: &Database,
    user_id: i64,
    key: &str,
) -> Result<Option<Order>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::user_id.eq(user_id))
            .filter(orders::idempotency_key.eq(key))
            .select(Order::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

/// Binds the payer (app, openid, IP) and the merchant's current notify_url and sign_type to an
/// open, unbound order, so that every unifiedorder of the order is the same request. The bound
/// row when this call bound it; None when the order was bound already, or is no longer open
/// (the caller reads it again to see why).
#[allow(clippy::too_many_arguments)]
pub async fn bind_payer(
    db: &Database,
    order_no: &str,
    app_id: &str,
    openid: &str,
    client_ip: &str,
    notify_url: &str,
    sign_type: &str,
    now: i64,
) -> Result<Option<Order>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        Cached(
            diesel::update(
                orders::table
                    .filter(orders::order_no.eq(order_no))
                    .filter(orders::app_id.eq(""))
                    .filter(orders::state.eq_any(OPEN_STATES)),
            )
            .set((
                orders::app_id.eq(app_id),
                orders::openid.eq(openid),
                orders::client_ip.eq(client_ip),
                orders::notify_url.eq(notify_url),
                orders::sign_type.eq(sign_type),
                orders::updated_at.eq(now),
            ))
            .returning(Order::as_returning()),
        )
        .get_result(conn)
        .await
        .optional()
    })?)
}

/// CREATED|PAYING → PAYING holding `prepay_id`. The updated row when the order was open;
/// None when it was not (paid or closed meanwhile).
pub async fn set_prepay(
    db: &Database,
    order_no: &str,
    prepay_id: &str,
    prepay_expires_at: i64,
    now: i64,
) -> Result<Option<Order>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        Cached(
            diesel::update(
                orders::table
                    .filter(orders::order_no.eq(order_no))
                    .filter(orders::state.eq_any(OPEN_STATES)),
            )
            .set((
                orders::state.eq(OrderState::Paying.as_str()),
                orders::prepay_id.eq(prepay_id),
                orders::prepay_expires_at.eq(prepay_expires_at),
                orders::prepared_at.eq(now),
                orders::updated_at.eq(now),
            ))
            .returning(Order::as_returning()),
        )
        .get_result(conn)
        .await
        .optional()
    })?)
}

/// CREATED|PAYING → CLOSED, only if the order is still as the caller saw it (same payer
/// binding and prepay_id), i.e. no unifiedorder has been placed since the caller closed it at
/// WeChat; with its `ORDER_CLOSED` event in the same transaction. True when this call closed it.
pub async fn close_if_unchanged(db: &Database, seen: &Order, now: i64) -> Result<bool, Error> {
    let closed = service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, Error, _>(async |conn| {
            let closed: Option<Order> = diesel::update(
                orders::table
                    .filter(orders::order_no.eq(&seen.order_no))
                    .filter(orders::state.eq_any(OPEN_STATES))
                    .filter(orders::app_id.eq(&seen.app_id))
                    .filter(orders::prepay_id.eq(&seen.prepay_id)),
            )
            .set((
                orders::state.eq(OrderState::Closed.as_str()),
                orders::closed_at.eq(Some(now)),
                orders::updated_at.eq(now),
            ))
            .returning(Order::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            if let Some(order) = &closed {
                crate::append_event!(conn, NewEvent::of_order(EventKind::OrderClosed, order, now))?;
            }
            Ok(closed.is_some())
        })
        .await
    })?;
    if closed {
        events::wake();
    }
    Ok(closed)
}

/// The outcome of a payment for an order that is PAID or later (REFUNDING, REFUNDED), or in a
/// state nobody expects: nothing can change it any more.
fn settled_outcome(current: Order, transaction_id: &str) -> PaidOutcome {
    match current.state() {
        // PAID, or later (REFUNDING, REFUNDED) by this very transaction.
        _ if current.transaction_id == transaction_id => PaidOutcome::Duplicate(current),
        Some(OrderState::Paid) => PaidOutcome::OtherTransaction(current),
        _ => PaidOutcome::Unexpected(current),
    }
}

/// States an order never leaves for an open one (and never for CLOSED): a payment of such an
/// order changes nothing, so judging it needs no transaction.
fn is_settled(order: &Order) -> bool {
    matches!(
        order.state(),
        Some(OrderState::Paid | OrderState::Refunding | OrderState::Refunded)
    )
}

/// The body of [`mark_paid`] on a checked-out connection `$conn` (expanded once per back end,
/// like [`service_kit::with_conn!`]): one transaction with the conditional UPDATE, the
/// closed-order bookkeeping and the notify record; evaluates to `Result<PaidOutcome, Error>`.
macro_rules! mark_paid_on {
    ($conn:ident, $order_no:expr, $transaction_id:expr, $paid_at:expr, $now:expr,
     $notification:expr, $verdict_of:expr) => {{
        let (order_no, transaction_id, paid_at, now): (&str, &str, i64, i64) =
            ($order_no, $transaction_id, $paid_at, $now);
        let notification: Option<NewNotification> = $notification;
        let verdict_of: fn(&PaidOutcome) -> (&'static str, bool) = $verdict_of;
        $conn
            .transaction::<_, Error, _>(async |conn| {
                let applied: Option<Order> = service_kit::db::Cached(
                    diesel::update(
                        orders::table
                            .filter(orders::order_no.eq(order_no))
                            .filter(orders::state.eq_any(OPEN_STATES)),
                    )
                    .set((
                        orders::state.eq(OrderState::Paid.as_str()),
                        orders::transaction_id.eq(transaction_id),
                        orders::paid_at.eq(Some(paid_at)),
                        orders::updated_at.eq(now),
                    ))
                    .returning(Order::as_returning()),
                )
                .get_result(conn)
                .await
                .optional()?;
                let outcome = match applied {
                    Some(order) => {
                        crate::append_event!(
                            conn,
                            NewEvent::of_order(EventKind::OrderPaid, &order, now)
                        )?;
                        PaidOutcome::Applied(order)
                    }
                    // The UPDATE touched no row: the current row says why.
                    None => {
                        let mut current: Order = orders::table
                            .filter(orders::order_no.eq(order_no))
                            .select(Order::as_select())
                            .first(conn)
                            .await?;
                        if current.state() == Some(OrderState::Closed) {
                            // Keep the transaction on the closed order for the refund; only
                            // the first one (a closed order is paid at most once at WeChat).
                            let recorded = diesel::update(
                                orders::table
                                    .filter(orders::order_no.eq(order_no))
                                    .filter(orders::state.eq(OrderState::Closed.as_str()))
                                    .filter(orders::transaction_id.eq("")),
                            )
                            .set((
                                orders::transaction_id.eq(transaction_id),
                                orders::updated_at.eq(now),
                            ))
                            .execute(conn)
                            .await?;
                            if recorded == 1 {
                                current.transaction_id = transaction_id.to_owned();
                                current.updated_at = now;
                                crate::append_event!(
                                    conn,
                                    NewEvent::of_order(
                                        EventKind::OrderPaidAfterClose,
                                        &current,
                                        now
                                    )
                                )?;
                            }
                            PaidOutcome::PaidAfterClose(current)
                        } else {
                            settled_outcome(current, transaction_id)
                        }
                    }
                };
                if let Some(mut record) = notification {
                    let (verdict, accepted) = verdict_of(&outcome);
                    record.verdict = verdict.to_owned();
                    record.accepted = accepted;
                    service_kit::db::Cached(
                        diesel::insert_into(pay_notifications::table).values(&record),
                    )
                    .execute(conn)
                    .await?;
                }
                Ok(outcome)
            })
            .await
    }};
}

/// CREATED|PAYING → PAID with `transaction_id`, in one conditional UPDATE, and — in the same
/// transaction — the notify that caused it with the verdict `verdict_of` gives the outcome.
/// When the UPDATE touched no row, the current row says why (duplicate, closed, ...).
pub async fn mark_paid(
    db: &Database,
    order_no: &str,
    transaction_id: &str,
    paid_at: i64,
    now: i64,
    notification: Option<NewNotification>,
    verdict_of: fn(&PaidOutcome) -> (&'static str, bool),
) -> Result<PaidOutcome, Error> {
    let outcome = service_kit::with_conn!(db, |conn| {
        mark_paid_on!(
            conn,
            order_no,
            transaction_id,
            paid_at,
            now,
            notification,
            verdict_of
        )
    })?;
    wake_for(&outcome);
    Ok(outcome)
}

/// Wakes the event subscribers after a payment that appended an event has committed.
fn wake_for(outcome: &PaidOutcome) {
    if matches!(
        outcome,
        PaidOutcome::Applied(_) | PaidOutcome::PaidAfterClose(_)
    ) {
        events::wake();
    }
}

/// A payment to apply: what [`settle_notify`]'s judge answers for a notify it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub transaction_id: String,
    pub paid_at: i64,
}

/// A notify, on one connection: reads the order `order_no` (when given), lets `judge` decide
/// from it, and when the judge answers a [`Payment`], applies it as [`mark_paid`] does with
/// `record` stored in the same transaction. An order already PAID (or later) cannot change
/// any more: its outcome is read off the row and `record` is stored by a lone INSERT, with no
/// transaction. A rejection is answered as is and stores nothing (the caller stores it).
pub async fn settle_notify<R>(
    db: &Database,
    order_no: Option<&str>,
    now: i64,
    mut record: NewNotification,
    verdict_of: fn(&PaidOutcome) -> (&'static str, bool),
    judge: impl FnOnce(Option<&Order>) -> Result<Payment, R>,
) -> Result<Result<PaidOutcome, R>, Error> {
    let settled = service_kit::with_conn!(db, |conn| {
        let seen: Option<Order> = match order_no {
            Some(order_no) => orders::table
                .filter(orders::order_no.eq(order_no))
                .select(Order::as_select())
                .first(conn)
                .await
                .optional()?,
            None => None,
        };
        let payment = match judge(seen.as_ref()) {
            Ok(payment) => payment,
            Err(rejected) => return Ok(Err(rejected)),
        };
        match seen {
            Some(current) if is_settled(&current) => {
                let outcome = settled_outcome(current, &payment.transaction_id);
                let (verdict, accepted) = verdict_of(&outcome);
                record.verdict = verdict.to_owned();
                record.accepted = accepted;
                Cached(diesel::insert_into(pay_notifications::table).values(&record))
                    .execute(conn)
                    .await?;
                Ok(Ok(outcome))
            }
            seen => {
                let order_no = seen
                    .as_ref()
                    .map_or(order_no.unwrap_or_default(), |o| o.order_no.as_str());
                mark_paid_on!(
                    conn,
                    order_no,
                    &payment.transaction_id,
                    payment.paid_at,
                    now,
                    Some(record),
                    verdict_of
                )
                .map(Ok)
            }
        }
    })?;
    if let Ok(outcome) = &settled {
        wake_for(outcome);
    }
    Ok(settled)
}

pub async fn insert_notification(db: &Database, record: &NewNotification) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        Cached(diesel::insert_into(pay_notifications::table).values(record))
            .execute(conn)
            .await
    })?;
    Ok(())
}

/// Stored notifies of one order, oldest first: (verdict, accepted).
pub async fn notification_verdicts(
    db: &Database,
    out_trade_no: &str,
) -> Result<Vec<(String, bool)>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        pay_notifications::table
            .filter(pay_notifications::out_trade_no.eq(out_trade_no))
            .order(pay_notifications::id.asc())
            .select((pay_notifications::verdict, pay_notifications::accepted))
            .load(conn)
            .await
    })?)
}

/// Unexpired PAYING orders prepared at or before `prepared_before`, due for a query, whose
/// lease is free.
pub async fn paying_due(
    db: &Database,
    prepared_before: i64,
    now: i64,
    limit: i64,
) -> Result<Vec<String>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::state.eq(OrderState::Paying.as_str()))
            .filter(orders::prepared_at.le(prepared_before))
            .filter(orders::expires_at.gt(now))
            .filter(orders::next_query_at.le(now))
            .filter(orders::reconcile_lease_until.le(now))
            .order(orders::prepared_at.asc())
            .limit(limit)
            .select(orders::order_no)
            .load(conn)
            .await
    })?)
}

/// Open orders past their expiry whose lease is free.
pub async fn expired_open(db: &Database, now: i64, limit: i64) -> Result<Vec<String>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::state.eq_any(OPEN_STATES))
            .filter(orders::expires_at.le(now))
            .filter(orders::reconcile_lease_until.le(now))
            .order(orders::expires_at.asc())
            .limit(limit)
            .select(orders::order_no)
            .load(conn)
            .await
    })?)
}

/// A reconcile claim: the lease's end and the random value that proves whose it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub until: i64,
    pub owner: String,
}

/// Takes the reconcile lease of an open order until `until`, under a fresh random owner value.
/// The lease when this caller got it: of several replicas racing for the same row, exactly one
/// UPDATE matches.
pub async fn claim(
    db: &Database,
    order_no: &str,
    now: i64,
    until: i64,
) -> Result<Option<Lease>, Error> {
    let owner = crate::orders::new_lease_owner();
    let rows = service_kit::with_conn!(db, |conn| {
        diesel::update(
            orders::table
                .filter(orders::order_no.eq(order_no))
                .filter(orders::state.eq_any(OPEN_STATES))
                .filter(orders::reconcile_lease_until.le(now)),
        )
        .set((
            orders::reconcile_lease_until.eq(until),
            orders::reconcile_lease_owner.eq(&owner),
        ))
        .execute(conn)
        .await
    })?;
    Ok((rows == 1).then_some(Lease { until, owner }))
}

/// Gives up `lease` if it is still this caller's (a lease that ran out may have been claimed by
/// another replica since: that one is left alone); `next_query_at` (when given) is the earliest
/// next orderquery. True when the lease was still ours.
pub async fn release(
    db: &Database,
    order_no: &str,
    lease: &Lease,
    next_query_at: Option<i64>,
) -> Result<bool, Error> {
    let rows = service_kit::with_conn!(db, |conn| {
        let target = orders::table
            .filter(orders::order_no.eq(order_no))
            .filter(orders::reconcile_lease_owner.eq(&lease.owner));
        match next_query_at {
            Some(at) => {
                diesel::update(target)
                    .set((
                        orders::reconcile_lease_until.eq(0),
                        orders::reconcile_lease_owner.eq(""),
                        orders::next_query_at.eq(at),
                    ))
                    .execute(conn)
                    .await
            }
            None => {
                diesel::update(target)
                    .set((
                        orders::reconcile_lease_until.eq(0),
                        orders::reconcile_lease_owner.eq(""),
                    ))
                    .execute(conn)
                    .await
            }
        }
    })?;
    Ok(rows == 1)
}

/// The caller's newest open order of `product_id`, placed for the same payer at or after
/// `since` and still payable after `payable_until` (what a double tap on "buy" should pay
/// instead of a new order).
pub async fn recent_product_order(
    db: &Database,
    user_id: i64,
    product_id: &str,
    app_id: &str,
    openid: &str,
    since: i64,
    payable_until: i64,
) -> Result<Option<Order>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::user_id.eq(user_id))
            .filter(orders::product_id.eq(product_id))
            .filter(orders::app_id.eq(app_id))
            .filter(orders::openid.eq(openid))
            .filter(orders::state.eq_any(OPEN_STATES))
            .filter(orders::idempotency_key.is_null())
            .filter(orders::created_at.ge(since))
            .filter(orders::expires_at.gt(payable_until))
            .order((orders::created_at.desc(), orders::id.desc()))
            .select(Order::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

/// Deletes the notifies received before `before`; the number deleted.
pub async fn prune_notifications(db: &Database, before: i64) -> Result<usize, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        diesel::delete(pay_notifications::table.filter(pay_notifications::received_at.lt(before)))
            .execute(conn)
            .await
    })?)
}
