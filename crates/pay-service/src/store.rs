//! Every query of pay-service, written once and run on PostgreSQL or SQLite through
//! [`service_kit::with_conn!`].
//!
//! Each state change is ONE conditional UPDATE whose WHERE clause names the states it may
//! leave; the number of rows it touched says whether this call made the change. That is
//! atomic and idempotent on both back ends without explicit locks: on PostgreSQL a second
//! writer waits for the first one's row lock and then re-checks the WHERE clause against the
//! committed row (READ COMMITTED), on SQLite writers are serialised.

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl, SelectableHelper};
use diesel_async::{AsyncConnection, RunQueryDsl};
use service_kit::db::Database;

use crate::{
    error::Error,
    orders::{OPEN_STATES, Order, OrderState},
    schema::{orders, pay_notifications},
};

/// A new order.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = orders)]
pub struct NewOrder {
    pub order_no: String,
    pub user_id: i64,
    pub amount_fen: i64,
    pub description: String,
    pub attach: String,
    pub product_id: String,
    pub state: String,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
}

/// A received notify, as stored.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = pay_notifications)]
pub struct NewNotification {
    pub received_at: i64,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub raw_body: String,
    pub verdict: String,
    pub accepted: bool,
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
        diesel::insert_into(orders::table)
            .values(new)
            .returning(Order::as_returning())
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

/// Binds the payer (app, openid, IP) to an open, unbound order, so that every unifiedorder of
/// the order is the same request. True when this call bound it.
pub async fn bind_payer(
    db: &Database,
    order_no: &str,
    app_id: &str,
    openid: &str,
    client_ip: &str,
    now: i64,
) -> Result<bool, Error> {
    let rows = service_kit::with_conn!(db, |conn| {
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
            orders::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    Ok(rows == 1)
}

/// CREATED|PAYING → PAYING holding `prepay_id`. True when the order was open.
pub async fn set_prepay(
    db: &Database,
    order_no: &str,
    prepay_id: &str,
    prepay_expires_at: i64,
    now: i64,
) -> Result<bool, Error> {
    let rows = service_kit::with_conn!(db, |conn| {
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
        .execute(conn)
        .await
    })?;
    Ok(rows == 1)
}

/// CREATED|PAYING → CLOSED, only if the order is still as the caller saw it (same payer
/// binding and prepay_id), i.e. no unifiedorder has been placed since the caller closed it at
/// WeChat. True when this call closed it.
pub async fn close_if_unchanged(db: &Database, seen: &Order, now: i64) -> Result<bool, Error> {
    let rows = service_kit::with_conn!(db, |conn| {
        diesel::update(
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
        .execute(conn)
        .await
    })?;
    Ok(rows == 1)
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
    service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, Error, _>(async |conn| {
            let rows = diesel::update(
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
            .execute(conn)
            .await?;
            let mut current: Order = orders::table
                .filter(orders::order_no.eq(order_no))
                .select(Order::as_select())
                .first(conn)
                .await?;
            let outcome = if rows == 1 {
                PaidOutcome::Applied(current)
            } else {
                match current.state() {
                    Some(OrderState::Closed) => {
                        // Keep the transaction on the closed order for the refund; only the
                        // first one (a closed order is paid at most once at WeChat).
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
                        }
                        PaidOutcome::PaidAfterClose(current)
                    }
                    // PAID, or later (REFUNDING, REFUNDED) by this very transaction.
                    _ if current.transaction_id == transaction_id => {
                        PaidOutcome::Duplicate(current)
                    }
                    Some(OrderState::Paid) => PaidOutcome::OtherTransaction(current),
                    _ => PaidOutcome::Unexpected(current),
                }
            };
            if let Some(mut record) = notification {
                let (verdict, accepted) = verdict_of(&outcome);
                record.verdict = verdict.to_owned();
                record.accepted = accepted;
                diesel::insert_into(pay_notifications::table)
                    .values(&record)
                    .execute(conn)
                    .await?;
            }
            Ok(outcome)
        })
        .await
    })
}

pub async fn insert_notification(db: &Database, record: &NewNotification) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        diesel::insert_into(pay_notifications::table)
            .values(record)
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

/// Takes the reconcile lease of an open order until `until`. True when this caller got it:
/// of several replicas racing for the same row, exactly one UPDATE matches.
pub async fn claim(db: &Database, order_no: &str, now: i64, until: i64) -> Result<bool, Error> {
    let rows = service_kit::with_conn!(db, |conn| {
        diesel::update(
            orders::table
                .filter(orders::order_no.eq(order_no))
                .filter(orders::state.eq_any(OPEN_STATES))
                .filter(orders::reconcile_lease_until.le(now)),
        )
        .set(orders::reconcile_lease_until.eq(until))
        .execute(conn)
        .await
    })?;
    Ok(rows == 1)
}

/// Gives up the reconcile lease; `next_query_at` (when given) is the earliest next orderquery.
pub async fn release(
    db: &Database,
    order_no: &str,
    next_query_at: Option<i64>,
) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        let target = orders::table.filter(orders::order_no.eq(order_no));
        match next_query_at {
            Some(at) => {
                diesel::update(target)
                    .set((
                        orders::reconcile_lease_until.eq(0),
                        orders::next_query_at.eq(at),
                    ))
                    .execute(conn)
                    .await
            }
            None => {
                diesel::update(target)
                    .set(orders::reconcile_lease_until.eq(0))
                    .execute(conn)
                    .await
            }
        }
    })?;
    Ok(())
}
