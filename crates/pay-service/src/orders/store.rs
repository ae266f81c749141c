//! The SQL of orders and their notifies, written once and run on PostgreSQL or SQLite through
//! [`service_kit::with_conn!`] (the refunds' is in `refunds/store.rs`, the outbox's in
//! `events.rs`). What the rows mean is decided in [`super::rules`]; this module only runs the
//! conditional statements.
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

use std::convert::Infallible;

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl, SelectableHelper, dsl};
use diesel_async::{AsyncConnection, RunQueryDsl};
use service_kit::db::{Cached, Database};

use super::rules::{
    OPEN_STATES, Order, OrderState, PaidOutcome, is_settled, new_lease_owner, paid_after_close,
    settled_outcome,
};
use crate::{
    error::Error,
    events::{self, EventKind, NewEvent},
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

/// CREATED|PAYING → PAID with `transaction_id`: the paid transition, one conditional UPDATE
/// (the caller adds `RETURNING`).
#[dsl::auto_type(no_type_alias)]
fn pay_open<'a>(order_no: &'a str, transaction_id: &'a str, paid_at: i64, now: i64) -> _ {
    let open: [&'static str; 2] = OPEN_STATES;
    let paid: &'static str = PAID;
    let paid_at: Option<i64> = Some(paid_at);
    dsl::update(
        orders::table
            .filter(orders::order_no.eq(order_no))
            .filter(orders::state.eq_any(open)),
    )
    .set((
        orders::state.eq(paid),
        orders::transaction_id.eq(transaction_id),
        orders::paid_at.eq(paid_at),
        orders::updated_at.eq(now),
    ))
}

/// Keeps `transaction_id` on a CLOSED order for its refund: only the first one (a closed order
/// is paid at most once at WeChat).
#[dsl::auto_type(no_type_alias)]
fn record_on_closed<'a>(order_no: &'a str, transaction_id: &'a str, now: i64) -> _ {
    let closed: &'static str = CLOSED;
    let none: &'static str = "";
    dsl::update(
        orders::table
            .filter(orders::order_no.eq(order_no))
            .filter(orders::state.eq(closed))
            .filter(orders::transaction_id.eq(none)),
    )
    .set((
        orders::transaction_id.eq(transaction_id),
        orders::updated_at.eq(now),
    ))
}

const PAID: &str = OrderState::Paid.as_str();
const CLOSED: &str = OrderState::Closed.as_str();

/// CREATED|PAYING → PAID with `transaction_id`, in one conditional UPDATE (see [`pay`]), with
/// no notify to record (an orderquery confirmed the payment).
pub async fn mark_paid(
    db: &Database,
    order_no: &str,
    transaction_id: &str,
    paid_at: i64,
    now: i64,
) -> Result<PaidOutcome, Error> {
    let payment = Payment {
        transaction_id: transaction_id.to_owned(),
        paid_at,
    };
    let judged = pay(db, Some(order_no), false, now, None, |_| {
        Ok::<_, Infallible>(payment)
    })
    .await?;
    Ok(match judged {
        Ok(outcome) => outcome,
        Err(never) => match never {},
    })
}

/// A payment to apply: what [`settle_notify`]'s judge answers for a notify it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub transaction_id: String,
    pub paid_at: i64,
}

/// A notify, on one connection: reads the order `order_no` (when given), lets `judge` decide
/// from it, and when the judge answers a [`Payment`], applies it as [`mark_paid`] does with
/// `record` stored in the same transaction, its verdict what `verdict_of` gives the outcome. An
/// order already PAID (or later) cannot change any more: its outcome is read off the row and
/// `record` is stored by a lone INSERT, with no transaction. A rejection is answered as is and
/// stores nothing (the caller stores it).
pub async fn settle_notify<R>(
    db: &Database,
    order_no: Option<&str>,
    now: i64,
    record: NewNotification,
    verdict_of: fn(&PaidOutcome) -> (&'static str, bool),
    judge: impl FnOnce(Option<&Order>) -> Result<Payment, R>,
) -> Result<Result<PaidOutcome, R>, Error> {
    pay(db, order_no, true, now, Some((record, verdict_of)), judge).await
}

/// The one body of [`mark_paid`] and [`settle_notify`], on one connection: reads the order
/// first when `read_first`, lets `judge` decide, then applies the payment in one transaction:
/// the paid transition ([`pay_open`]); when it touched no row, the current row says why
/// ([`paid_after_close`], [`settled_outcome`]) and a CLOSED order keeps the transaction
/// ([`record_on_closed`]); the notify `record` (if any) is stored with its verdict.
async fn pay<R>(
    db: &Database,
    order_no: Option<&str>,
    read_first: bool,
    now: i64,
    record: Option<(NewNotification, Verdicts)>,
    judge: impl FnOnce(Option<&Order>) -> Result<Payment, R>,
) -> Result<Result<PaidOutcome, R>, Error> {
    let settled = service_kit::with_conn!(db, |conn| {
        let seen: Option<Order> = match order_no {
            Some(order_no) if read_first => orders::table
                .filter(orders::order_no.eq(order_no))
                .select(Order::as_select())
                .first(conn)
                .await
                .optional()?,
            _ => None,
        };
        let payment = match judge(seen.as_ref()) {
            Ok(payment) => payment,
            Err(rejected) => return Ok(Err(rejected)),
        };
        match (seen, record) {
            (Some(current), Some((mut record, verdict_of))) if is_settled(&current) => {
                let outcome = settled_outcome(current, &payment.transaction_id);
                let (verdict, accepted) = verdict_of(&outcome);
                record.verdict = verdict.to_owned();
                record.accepted = accepted;
                Cached(diesel::insert_into(pay_notifications::table).values(&record))
                    .execute(conn)
                    .await?;
                Ok(Ok(outcome))
            }
            (seen, record) => {
                let order_no = seen
                    .as_ref()
                    .map_or(order_no.unwrap_or_default(), |o| o.order_no.as_str());
                let transaction_id = payment.transaction_id.as_str();
                conn.transaction::<_, Error, _>(async |conn| {
                    let applied: Option<Order> = Cached(
                        pay_open(order_no, transaction_id, payment.paid_at, now)
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
                            let current: Order = orders::table
                                .filter(orders::order_no.eq(order_no))
                                .select(Order::as_select())
                                .first(conn)
                                .await?;
                            if current.state() == Some(OrderState::Closed) {
                                let recorded = record_on_closed(order_no, transaction_id, now)
                                    .execute(conn)
                                    .await?
                                    == 1;
                                let outcome =
                                    paid_after_close(current, transaction_id, now, recorded);
                                if recorded {
                                    crate::append_event!(
                                        conn,
                                        NewEvent::of_order(
                                            EventKind::OrderPaidAfterClose,
                                            outcome.order(),
                                            now
                                        )
                                    )?;
                                }
                                outcome
                            } else {
                                settled_outcome(current, transaction_id)
                            }
                        }
                    };
                    if let Some((mut record, verdict_of)) = record {
                        let (verdict, accepted) = verdict_of(&outcome);
                        record.verdict = verdict.to_owned();
                        record.accepted = accepted;
                        Cached(diesel::insert_into(pay_notifications::table).values(&record))
                            .execute(conn)
                            .await?;
                    }
                    Ok(outcome)
                })
                .await
                .map(Ok)
            }
        }
    })?;
    if let Ok(outcome) = &settled {
        wake_for(outcome);
    }
    Ok(settled)
}

/// What a notify's outcome is recorded as: its verdict and whether it was accepted.
type Verdicts = fn(&PaidOutcome) -> (&'static str, bool);

/// Wakes the event subscribers after a payment that appended an event has committed.
fn wake_for(outcome: &PaidOutcome) {
    if matches!(
        outcome,
        PaidOutcome::Applied(_) | PaidOutcome::PaidAfterClose(_)
    ) {
        events::wake();
    }
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

/// Unexpired PAYING virtual-payment orders prepared at or before `prepared_before`: paid
/// perhaps, delivered neither by a push nor by `query_order` yet.
pub async fn count_xpay_paying(
    db: &Database,
    prepared_before: i64,
    now: i64,
) -> Result<i64, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::state.eq(OrderState::Paying.as_str()))
            .filter(orders::sign_type.eq(crate::xpay::XPAY_SIGN_TYPE))
            .filter(orders::prepared_at.le(prepared_before))
            .filter(orders::expires_at.gt(now))
            .count()
            .get_result(conn)
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
    let owner = new_lease_owner();
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
