//! The outbox: every state change of an order inserts its `order_events` row in the same
//! transaction as the change, so there is no event without its change and no change without its
//! event. Its readers live beside it: the gRPC stream ([`watch`]), the webhooks
//! ([`webhooks`]) and the message-bus relays ([`relay`]: NATS JetStream) read only this table,
//! never the live `orders` rows.
//!
//! Consumers keep a cursor ("every event after id N"), which is only sound if ids appear in
//! commit order. A sequence hands ids out at INSERT time, so on PostgreSQL two transactions
//! could commit out of id order and a reader could move its cursor past an id that commits a
//! moment later. The INSERT therefore runs under a transaction-scoped advisory lock
//! ([`OutboxConn::lock_outbox`]): the id is drawn after the lock is taken and the lock is held
//! until commit, so ids commit in order. The lock is the last thing a state change takes (after
//! its row locks), and nothing waits for a row while holding it, so it cannot deadlock; it
//! serialises only the INSERT-to-COMMIT tail of each change. SQLite has one writer anyway.

pub mod relay;
pub mod watch;
pub mod webhooks;

use std::{future::Future, sync::LazyLock, time::Duration};

use diesel::{ExpressionMethods, Insertable, QueryDsl, Queryable, Selectable, SelectableHelper};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use service_kit::{Shutdown, db::Database};
use tokio::sync::watch as signal;
use wxmp_proto::pay::v1 as pb;

use crate::{
    error::Error,
    orders::Order,
    refunds::{Refund, RefundState},
    schema::{order_events, webhook_deliveries},
};

/// The advisory lock that orders outbox INSERTs on PostgreSQL (its key is a constant no other
/// lock of this database uses; migrations use 7757432).
const OUTBOX_LOCK: &str = "SELECT pg_advisory_xact_lock(7757433)";

/// What happened to an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// CREATED|PAYING → PAID.
    OrderPaid,
    /// CREATED|PAYING → CLOSED, unpaid.
    OrderClosed,
    /// A genuine payment of a CLOSED order: the money must be returned.
    OrderPaidAfterClose,
    /// A refund settled at WeChat.
    RefundSucceeded,
    /// A refund failed or closed at WeChat (the money stays with the merchant).
    RefundFailed,
    /// A refund went abnormal at WeChat (v2 CHANGE, v3 ABNORMAL): the money is held by WeChat
    /// until the merchant re-routes it; the refund stays in flight.
    RefundAbnormal,
    /// WeChat's daily bill and the ledger differ (bills/).
    BillMismatch,
    /// WeChat took the order's shipping information.
    OrderShipped,
    /// The user confirmed receipt.
    OrderReceived,
    /// WeChat settled the payment.
    OrderSettled,
}

impl EventKind {
    pub const ALL: [Self; 10] = [
        Self::OrderPaid,
        Self::OrderClosed,
        Self::OrderPaidAfterClose,
        Self::RefundSucceeded,
        Self::RefundFailed,
        Self::RefundAbnormal,
        Self::BillMismatch,
        Self::OrderShipped,
        Self::OrderReceived,
        Self::OrderSettled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OrderPaid => "ORDER_PAID",
            Self::OrderClosed => "ORDER_CLOSED",
            Self::OrderPaidAfterClose => "ORDER_PAID_AFTER_CLOSE",
            Self::RefundSucceeded => "REFUND_SUCCEEDED",
            Self::RefundFailed => "REFUND_FAILED",
            Self::RefundAbnormal => "REFUND_ABNORMAL",
            Self::BillMismatch => "BILL_MISMATCH",
            Self::OrderShipped => "ORDER_SHIPPED",
            Self::OrderReceived => "ORDER_RECEIVED",
            Self::OrderSettled => "ORDER_SETTLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn to_proto(self) -> pb::OrderEventKind {
        match self {
            Self::OrderPaid => pb::OrderEventKind::OrderPaid,
            Self::OrderClosed => pb::OrderEventKind::OrderClosed,
            Self::OrderPaidAfterClose => pb::OrderEventKind::OrderPaidAfterClose,
            Self::RefundSucceeded => pb::OrderEventKind::RefundSucceeded,
            Self::RefundFailed => pb::OrderEventKind::RefundFailed,
            Self::RefundAbnormal => pb::OrderEventKind::RefundAbnormal,
            Self::BillMismatch => pb::OrderEventKind::BillMismatch,
            Self::OrderShipped => pb::OrderEventKind::OrderShipped,
            Self::OrderReceived => pb::OrderEventKind::OrderReceived,
            Self::OrderSettled => pb::OrderEventKind::OrderSettled,
        }
    }

    pub fn from_proto(kind: pb::OrderEventKind) -> Option<Self> {
        Some(match kind {
            pb::OrderEventKind::Unspecified => return None,
            pb::OrderEventKind::OrderPaid => Self::OrderPaid,
            pb::OrderEventKind::OrderClosed => Self::OrderClosed,
            pb::OrderEventKind::OrderPaidAfterClose => Self::OrderPaidAfterClose,
            pb::OrderEventKind::RefundSucceeded => Self::RefundSucceeded,
            pb::OrderEventKind::RefundFailed => Self::RefundFailed,
            pb::OrderEventKind::RefundAbnormal => Self::RefundAbnormal,
            pb::OrderEventKind::BillMismatch => Self::BillMismatch,
            pb::OrderEventKind::OrderShipped => Self::OrderShipped,
            pb::OrderEventKind::OrderReceived => Self::OrderReceived,
            pb::OrderEventKind::OrderSettled => Self::OrderSettled,
        })
    }
}

/// An event about to be appended.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = order_events)]
pub struct NewEvent {
    pub order_no: String,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
}

impl NewEvent {
    /// `kind` happened to `order`; the payload is the order as the change left it.
    pub fn of_order(kind: EventKind, order: &Order, now: i64) -> Self {
        let payload = order_json(order);
        Self {
            order_no: order.order_no.clone(),
            kind: kind.as_str().to_owned(),
            payload: payload.to_string(),
            created_at: now,
        }
    }

    /// A refund settled or went abnormal: the payload is the order (with its refund totals) as the settlement
    /// left it, and the refund under `"refund"`.
    pub fn of_refund(refund: &Refund, order: &Order, now: i64) -> Option<Self> {
        let kind = match refund.state()? {
            RefundState::Success => EventKind::RefundSucceeded,
            RefundState::Failed | RefundState::Closed => EventKind::RefundFailed,
            RefundState::Abnormal => EventKind::RefundAbnormal,
            RefundState::Pending | RefundState::Processing => return None,
        };
        let mut payload = order_json(order);
        payload["refund"] = serde_json::json!({
            "out_refund_no": refund.out_refund_no,
            "refund_id": refund.refund_id,
            "amount_fen": refund.amount_fen,
            "reason": refund.reason,
            "state": refund.state,
            "failure": refund.failure,
            "settled_at": refund.settled_at,
        });
        Some(Self {
            order_no: order.order_no.clone(),
            kind: kind.as_str().to_owned(),
            payload: payload.to_string(),
            created_at: now,
        })
    }
}

/// The order as an event payload.
fn order_json(order: &Order) -> serde_json::Value {
    serde_json::json!({
            "order_no": order.order_no,
            "user_id": order.user_id,
            "app_id": order.app_id,
            "amount_fen": order.amount_fen,
            "description": order.description,
            "attach": order.attach,
            "product_id": order.product_id,
            "state": order.state,
            "transaction_id": order.transaction_id,
            "created_at": order.created_at,
            "paid_at": order.paid_at,
            "closed_at": order.closed_at,
            "refunded_fen": order.refunded_fen,
            "refunding_fen": order.refunding_fen,
    })
}

/// A row of `order_events`.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = order_events)]
pub struct Event {
    pub id: i64,
    pub order_no: String,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
}

impl Event {
    pub fn to_proto(&self) -> pb::OrderEvent {
        pb::OrderEvent {
            id: self.id,
            order_no: self.order_no.clone(),
            kind: EventKind::parse(&self.kind)
                .map_or(pb::OrderEventKind::Unspecified, EventKind::to_proto)
                as i32,
            payload_json: self.payload.clone(),
            created_at: self.created_at,
        }
    }
}

/// The back-end specific step of appending an event (see the module docs).
pub trait OutboxConn {
    /// Takes the lock that keeps outbox ids in commit order, until the transaction ends.
    fn lock_outbox(&mut self) -> impl Future<Output = diesel::QueryResult<()>> + Send;
}

impl OutboxConn for AsyncPgConnection {
    fn lock_outbox(&mut self) -> impl Future<Output = diesel::QueryResult<()>> + Send {
        self.batch_execute(OUTBOX_LOCK)
    }
}

impl OutboxConn for service_kit::db::SqliteConn {
    fn lock_outbox(&mut self) -> impl Future<Output = diesel::QueryResult<()>> + Send {
        // One writer at a time already: ids follow commit order.
        std::future::ready(Ok(()))
    }
}

/// Appends `$event` on `$conn` inside the caller's transaction (both back ends). Evaluates to
/// `Result<(), diesel::result::Error>`.
#[macro_export]
macro_rules! append_event {
    ($conn:ident, $event:expr) => {{
        use $crate::events::OutboxConn as _;
        let event: $crate::events::NewEvent = $event;
        async {
            $conn.lock_outbox().await?;
            diesel_async::RunQueryDsl::execute(
                service_kit::db::Cached(
                    diesel::insert_into($crate::schema::order_events::table).values(&event),
                ),
                $conn,
            )
            .await
            .map(|_| ())
        }
        .await
    }};
}

/// Appends `events` in one transaction of their own, in order, and answers their ids: for
/// tools, tests and the relay bench. A state change appends inside its own transaction with
/// [`append_event!`] instead.
pub async fn append(db: &Database, events: &[NewEvent]) -> Result<Vec<i64>, Error> {
    use diesel_async::AsyncConnection as _;
    let ids = service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            conn.lock_outbox().await?;
            let mut ids = Vec::with_capacity(events.len());
            for event in events {
                ids.push(
                    diesel::insert_into(order_events::table)
                        .values(event)
                        .returning(order_events::id)
                        .get_result::<i64>(conn)
                        .await?,
                );
            }
            Ok(ids)
        })
        .await
    })?;
    wake();
    Ok(ids)
}

/// Wakes every live subscriber of this process (the stream and the webhook worker) after a
/// transaction that may have appended events has committed. Other replicas' events are found
/// by the subscribers' short poll.
static WAKE: LazyLock<signal::Sender<u64>> = LazyLock::new(|| signal::channel(0).0);

pub fn wake() {
    WAKE.send_modify(|generation| *generation = generation.wrapping_add(1));
}

/// A receiver that changes whenever [`wake`] is called.
pub fn wake_ups() -> signal::Receiver<u64> {
    WAKE.subscribe()
}

/// Up to `limit` events after `after_id`, oldest first, optionally of the given kinds only.
pub async fn after(
    db: &Database,
    after_id: i64,
    kinds: &[EventKind],
    limit: i64,
) -> Result<Vec<Event>, Error> {
    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    Ok(service_kit::with_conn!(db, |conn| {
        let mut query = order_events::table
            .filter(order_events::id.gt(after_id))
            .order(order_events::id.asc())
            .limit(limit)
            .select(Event::as_select())
            .into_boxed();
        if !kinds.is_empty() {
            query = query.filter(order_events::kind.eq_any(&kinds));
        }
        query.load(conn).await
    })?)
}

/// The newest event id (0 when there is none).
pub async fn last_id(db: &Database) -> Result<i64, Error> {
    let id: Option<i64> = service_kit::with_conn!(db, |conn| {
        order_events::table
            .select(diesel::dsl::max(order_events::id))
            .first(conn)
            .await
    })?;
    Ok(id.unwrap_or(0))
}

/// Deletes events created before `before`, with their deliveries, except those after
/// `keep_after` (the cursor of a running relay: events it has not published yet stay, however
/// old). Returns the events deleted.
pub async fn prune(db: &Database, before: i64, keep_after: Option<i64>) -> Result<usize, Error> {
    let up_to = keep_after.unwrap_or(i64::MAX);
    Ok(service_kit::with_conn!(db, |conn| {
        diesel::delete(
            webhook_deliveries::table.filter(
                webhook_deliveries::event_id.eq_any(
                    order_events::table
                        .filter(order_events::created_at.lt(before))
                        .filter(order_events::id.le(up_to))
                        .select(order_events::id),
                ),
            ),
        )
        .execute(conn)
        .await?;
        diesel::delete(
            order_events::table
                .filter(order_events::created_at.lt(before))
                .filter(order_events::id.le(up_to)),
        )
        .execute(conn)
        .await
    })?)
}

/// Prunes events older than `retention` every hour (and once at start) until `shutdown`,
/// never past the cursors of the `relays` this replica runs (see [`prune`]).
pub async fn run_retention(
    db: Database,
    clock: crate::Clock,
    retention: Duration,
    relays: Vec<String>,
    shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = ticker.tick() => {}
        }
        let before = clock.now() - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let keep_after = match relay_floor(&db, &relays).await {
            Ok(floor) => floor,
            Err(e) => {
                tracing::warn!(error = %e, "reading the relay cursors failed; not pruning");
                continue;
            }
        };
        match prune(&db, before, keep_after).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "old order events pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning order events failed"),
        }
    }
}

/// The lowest cursor of `relays` (None: no relay runs); a relay not registered yet holds
/// everything (Some(0)).
async fn relay_floor(db: &Database, relays: &[String]) -> Result<Option<i64>, Error> {
    let mut floor = None;
    for name in relays {
        let cursor = relay::cursor(db, name).await?.unwrap_or(0);
        floor = Some(floor.map_or(cursor, |f: i64| f.min(cursor)));
    }
    Ok(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(EventKind::from_proto(kind.to_proto()), Some(kind));
        }
        assert_eq!(EventKind::parse("order_paid"), None);
    }
}
