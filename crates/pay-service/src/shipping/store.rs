//! The SQL of shipping: `shipments` and `message_pushes`, on PostgreSQL or SQLite through
//! [`service_kit::with_conn!`]. Every state change is one conditional UPDATE (its WHERE names
//! the states it may leave, and for the uploader the lease token it holds), with its outbox
//! event in the same transaction.

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl, SelectableHelper};
use diesel_async::{AsyncConnection, RunQueryDsl};
use service_kit::db::Database;

use super::rules::{Settlement, Shipment, ShippingState};
use crate::{
    error::Error,
    events::{self, EventKind, NewEvent},
    orders::Order,
    schema::{message_pushes, orders, shipments},
};

const PENDING: &str = ShippingState::PendingUpload.as_str();
const SHIPPED: &str = ShippingState::Shipped.as_str();
const RECEIVED: &str = ShippingState::Received.as_str();
const SETTLED: &str = ShippingState::Settled.as_str();

/// A new `shipments` row.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = shipments)]
pub struct NewShipment {
    pub order_no: String,
    pub app_id: String,
    pub transaction_id: String,
    pub openid: String,
    pub state: String,
    pub logistics_type: i32,
    pub delivery_mode: i32,
    pub request: String,
    pub next_attempt_at: i64,
    pub requested_at: i64,
    pub shipped_at: Option<i64>,
    pub updated_at: i64,
}

impl NewShipment {
    /// A row waiting for its first upload.
    pub fn pending(
        order: &Order,
        logistics_type: i32,
        delivery_mode: i32,
        request: String,
        now: i64,
    ) -> Self {
        Self {
            order_no: order.order_no.clone(),
            app_id: order.app_id.clone(),
            transaction_id: order.transaction_id.clone(),
            openid: order.openid.clone(),
            state: PENDING.into(),
            logistics_type,
            delivery_mode,
            request,
            next_attempt_at: now,
            requested_at: now,
            shipped_at: None,
            updated_at: now,
        }
    }
}

/// A message push as recorded.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = message_pushes)]
pub struct NewPush {
    pub dedup_key: String,
    pub app_id: String,
    pub event: String,
    pub message: String,
    pub verdict: String,
    pub received_at: i64,
}

/// The event of a shipping change: the order, and the shipment under `"shipping"`.
pub fn shipping_event(kind: EventKind, order: &Order, shipment: &Shipment, now: i64) -> NewEvent {
    let mut event = NewEvent::of_order(kind, order, now);
    if let Ok(mut payload) = serde_json::from_str::<serde_json::Value>(&event.payload) {
        payload["shipping"] = shipment.to_json();
        event.payload = payload.to_string();
    }
    event
}

pub async fn find(db: &Database, order_no: &str) -> Result<Option<Shipment>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        shipments::table
            .filter(shipments::order_no.eq(order_no))
            .select(Shipment::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

/// Inserts the row unless the order has one. True when this call made it.
pub async fn insert(db: &Database, new: &NewShipment) -> Result<bool, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::insert_into(shipments::table)
            .values(new)
            .on_conflict(shipments::order_no)
            .do_nothing()
            .execute(conn)
            .await
    })?;
    Ok(n > 0)
}

/// SHIPPED (never modified) → PENDING_UPLOAD with the new request: WeChat's one modification.
pub async fn modify(
    db: &Database,
    order_no: &str,
    logistics_type: i32,
    delivery_mode: i32,
    request: &str,
    now: i64,
) -> Result<Option<Shipment>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        diesel::update(
            shipments::table
                .filter(shipments::order_no.eq(order_no))
                .filter(shipments::state.eq(SHIPPED))
                .filter(shipments::modifications.eq(0)),
        )
        .set((
            shipments::state.eq(PENDING),
            shipments::modifications.eq(1),
            shipments::logistics_type.eq(logistics_type),
            shipments::delivery_mode.eq(delivery_mode),
            shipments::request.eq(request),
            shipments::attempts.eq(0),
            shipments::requested_at.eq(now),
            shipments::next_attempt_at.eq(now),
            shipments::last_error.eq(""),
            shipments::updated_at.eq(now),
        ))
        .returning(Shipment::as_returning())
        .get_result(conn)
        .await
        .optional()
    })?)
}

/// Order numbers of uploads due at `now` and not leased.
pub async fn due(db: &Database, now: i64, limit: i64) -> Result<Vec<String>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        shipments::table
            .filter(shipments::state.eq(PENDING))
            .filter(shipments::next_attempt_at.le(now))
            .filter(shipments::lease_until.le(now))
            .order(shipments::next_attempt_at.asc())
            .limit(limit)
            .select(shipments::order_no)
            .load(conn)
            .await
    })?)
}

/// Takes the lease of a due upload (one replica wins); counts the attempt.
pub async fn claim(
    db: &Database,
    order_no: &str,
    now: i64,
    lease_secs: i64,
    token: &str,
) -> Result<Option<Shipment>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        diesel::update(
            shipments::table
                .filter(shipments::order_no.eq(order_no))
                .filter(shipments::state.eq(PENDING))
                .filter(shipments::next_attempt_at.le(now))
                .filter(shipments::lease_until.le(now)),
        )
        .set((
            shipments::lease_until.eq(now + lease_secs),
            shipments::lease_token.eq(token),
            shipments::attempts.eq(shipments::attempts + 1),
            shipments::updated_at.eq(now),
        ))
        .returning(Shipment::as_returning())
        .get_result(conn)
        .await
        .optional()
    })?)
}

/// PENDING_UPLOAD (held with `token`) → SHIPPED, with ORDER_SHIPPED. The row when this call
/// made the change.
pub async fn mark_shipped(
    db: &Database,
    order_no: &str,
    token: &str,
    now: i64,
) -> Result<Option<Shipment>, Error> {
    let shipped = service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, Error, _>(async |conn| {
            let shipped: Option<Shipment> = diesel::update(
                shipments::table
                    .filter(shipments::order_no.eq(order_no))
                    .filter(shipments::state.eq(PENDING))
                    .filter(shipments::lease_token.eq(token)),
            )
            .set((
                shipments::state.eq(SHIPPED),
                shipments::uploads.eq(shipments::uploads + 1),
                shipments::shipped_at.eq(Some(now)),
                shipments::lease_until.eq(0),
                shipments::last_error.eq(""),
                shipments::updated_at.eq(now),
            ))
            .returning(Shipment::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            if let Some(s) = &shipped {
                let order: Order = orders::table
                    .filter(orders::order_no.eq(order_no))
                    .select(Order::as_select())
                    .first(conn)
                    .await?;
                crate::append_event!(
                    conn,
                    shipping_event(EventKind::OrderShipped, &order, s, now)
                )?;
            }
            Ok(shipped)
        })
        .await
    })?;
    if shipped.is_some() {
        events::wake();
    }
    Ok(shipped)
}

/// Releases a held upload for a retry at `next_attempt_at`, recording the error.
pub async fn mark_retry(
    db: &Database,
    order_no: &str,
    token: &str,
    next_attempt_at: i64,
    error: &str,
    now: i64,
) -> Result<bool, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::update(
            shipments::table
                .filter(shipments::order_no.eq(order_no))
                .filter(shipments::state.eq(PENDING))
                .filter(shipments::lease_token.eq(token)),
        )
        .set((
            shipments::next_attempt_at.eq(next_attempt_at),
            shipments::lease_until.eq(0),
            shipments::last_error.eq(error),
            shipments::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    Ok(n > 0)
}

/// Uploads pending since before `since`: the stuck ones.
pub async fn stuck(db: &Database, since: i64) -> Result<i64, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        shipments::table
            .filter(shipments::state.eq(PENDING))
            .filter(shipments::requested_at.lt(since))
            .count()
            .get_result(conn)
            .await
    })?)
}

/// Paid orders of `products` since `since` that have no shipment yet (at most `limit`).
pub async fn unshipped_paid(
    db: &Database,
    products: &[String],
    since: i64,
    limit: i64,
) -> Result<Vec<Order>, Error> {
    if products.is_empty() {
        return Ok(Vec::new());
    }
    let paid: Vec<Order> = service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::state.eq_any(["PAID", "REFUNDING"]))
            .filter(orders::product_id.eq_any(products))
            .filter(orders::paid_at.ge(since))
            .filter(orders::transaction_id.ne(""))
            .order(orders::paid_at.asc())
            .limit(limit)
            .select(Order::as_select())
            .load(conn)
            .await
    })?;
    if paid.is_empty() {
        return Ok(paid);
    }
    let numbers: Vec<&str> = paid.iter().map(|o| o.order_no.as_str()).collect();
    let known: Vec<String> = service_kit::with_conn!(db, |conn| {
        shipments::table
            .filter(shipments::order_no.eq_any(&numbers))
            .select(shipments::order_no)
            .load(conn)
            .await
    })?;
    Ok(paid
        .into_iter()
        .filter(|o| !known.contains(&o.order_no))
        .collect())
}

/// Records a push that changes nothing (remind, controlled, unknown order...). False when its
/// dedup key was seen before.
pub async fn record_push(db: &Database, push: &NewPush) -> Result<bool, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::insert_into(message_pushes::table)
            .values(push)
            .on_conflict(message_pushes::dedup_key)
            .do_nothing()
            .execute(conn)
            .await
    })?;
    Ok(n > 0)
}

/// What a settlement push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The push was seen before (same dedup key): nothing changed.
    Duplicate,
    /// The state moved (events appended).
    Moved,
    /// The state was already there or further: recorded, nothing changed.
    AlreadyThere,
}

/// Applies a settlement push to `order`: records the push (its dedup key unique) and moves the
/// shipment to RECEIVED and/or SETTLED, each by a conditional UPDATE, with ORDER_RECEIVED /
/// ORDER_SETTLED, all in one transaction. An order shipped by hand in the admin (no row here)
/// gets its row, SHIPPED.
pub async fn apply_settlement(
    db: &Database,
    push: &NewPush,
    order: &Order,
    settlement: Settlement,
    now: i64,
) -> Result<Applied, Error> {
    let placeholder = NewShipment {
        state: SHIPPED.into(),
        request: "{}".into(),
        next_attempt_at: 0,
        shipped_at: None,
        ..NewShipment::pending(order, 0, 0, String::new(), now)
    };
    let (received_at, settled_at) = match settlement {
        Settlement::Received { at } => (Some(at), None),
        Settlement::Settled { received_at, at } => (received_at, Some(at)),
    };
    let applied = service_kit::with_conn!(db, |conn| {
        conn.transaction::<_, Error, _>(async |conn| {
            let fresh = diesel::insert_into(message_pushes::table)
                .values(push)
                .on_conflict(message_pushes::dedup_key)
                .do_nothing()
                .execute(conn)
                .await?;
            if fresh == 0 {
                return Ok(Applied::Duplicate);
            }
            diesel::insert_into(shipments::table)
                .values(&placeholder)
                .on_conflict(shipments::order_no)
                .do_nothing()
                .execute(conn)
                .await?;
            let mut moved = false;
            // SHIPPED (or a modification in flight after an upload) → RECEIVED.
            if let Some(at) = received_at.or(settled_at) {
                let row: Option<Shipment> = diesel::update(
                    shipments::table
                        .filter(shipments::order_no.eq(&order.order_no))
                        .filter(shipments::state.eq_any([SHIPPED, PENDING]))
                        .filter(shipments::received_at.is_null()),
                )
                .set((
                    shipments::state.eq(RECEIVED),
                    shipments::received_at.eq(Some(at)),
                    shipments::lease_until.eq(0),
                    shipments::updated_at.eq(now),
                ))
                .returning(Shipment::as_returning())
                .get_result(conn)
                .await
                .optional()?;
                if let Some(s) = &row {
                    crate::append_event!(
                        conn,
                        shipping_event(EventKind::OrderReceived, order, s, now)
                    )?;
                    moved = true;
                }
            }
            if let Some(at) = settled_at {
                let row: Option<Shipment> = diesel::update(
                    shipments::table
                        .filter(shipments::order_no.eq(&order.order_no))
                        .filter(shipments::state.ne(SETTLED)),
                )
                .set((
                    shipments::state.eq(SETTLED),
                    shipments::settled_at.eq(Some(at)),
                    shipments::lease_until.eq(0),
                    shipments::updated_at.eq(now),
                ))
                .returning(Shipment::as_returning())
                .get_result(conn)
                .await
                .optional()?;
                if let Some(s) = &row {
                    crate::append_event!(
                        conn,
                        shipping_event(EventKind::OrderSettled, order, s, now)
                    )?;
                    moved = true;
                }
            }
            Ok(if moved {
                Applied::Moved
            } else {
                Applied::AlreadyThere
            })
        })
        .await
    })?;
    if applied == Applied::Moved {
        events::wake();
    }
    Ok(applied)
}
