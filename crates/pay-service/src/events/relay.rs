//! Relays: the outbox published into a message bus, so that any number of consumer groups
//! read order events at their own pace without pay-service knowing them.
//!
//! The relay is engine-neutral; an engine is one implementation of [`EventSink`] (NATS
//! JetStream in [`nats`]; Kafka or Redis Streams would be one more). What the relay promises,
//! whatever the engine:
//!
//! - **Order**: it reads the outbox by cursor (`id > after_id`, ascending: the order
//!   `WatchOrderEvents` has, see [`crate::events`]) and publishes a batch in that order, one
//!   replica at a time, so the bus holds the events of an order in id order.
//! - **At least once, de-duplicated by the bus**: the cursor (`event_relays.after_id`) moves
//!   only after the engine acknowledged every event up to it. A relay that dies between the
//!   engine's ack and its cursor write republishes those events; each carries its event id as
//!   the engine's idempotency key (JetStream's `Nats-Msg-Id`), so the engine drops the repeat
//!   inside its duplicate window, and counts it ([`Ack::duplicate`]).
//! - **One publisher**: a replica publishes only while it holds the relay's lease
//!   (`holder`, `lease_until_ms`), taken and renewed by conditional UPDATEs before every
//!   batch; the cursor UPDATE also requires the lease, so a replica that lost it cannot move
//!   the cursor. When the publishing replica dies, another takes over once the lease expired
//!   (`PAY_EVENTS_NATS_LEASE_MS`, 5 s by default). Lease times are the replicas' wall clocks:
//!   keep them in sync (NTP) to well under a lease.
//! - **Nothing lost while the bus is down**: events wait in the outbox (retention never prunes
//!   past a running relay's cursor, see [`crate::events::prune`]); publishing resumes at the
//!   cursor. The lag is exported as `wxmp_pay_nats_lag_events` / `_seconds` by every replica
//!   running the relay, holder or not.
//!
//! Each message is the webhook's: the body of [`webhooks::body_of`] and the headers
//! `X-Wxmp-Event-Id`, `X-Wxmp-Timestamp` and (when `PAY_WEBHOOK_SECRET` is set)
//! `X-Wxmp-Signature: sha256=<hex>` from [`webhooks::signature`], so a consumer verifies a bus
//! message exactly as it verifies a webhook.

pub mod nats;

use std::{
    future::Future,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use diesel::{BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl};
use diesel_async::RunQueryDsl;
use rand::Rng as _;
use service_kit::{Secret, Shutdown, db::Database};

use crate::{
    Clock,
    error::Error,
    events::{self, Event, webhooks},
    schema::{event_relays, order_events},
};

/// One event, ready for the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The event id: the engine's idempotency key.
    pub id: i64,
    pub order_no: String,
    /// `ORDER_PAID`, ... (an engine maps it to a subject or topic).
    pub kind: String,
    /// The webhook body ([`webhooks::body_of`]).
    pub body: String,
    /// The webhook headers, in order.
    pub headers: Vec<(&'static str, String)>,
}

/// The engine acknowledged storing one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub id: i64,
    /// The engine had it already (inside its de-duplication window) and dropped this copy.
    pub duplicate: bool,
}

/// What publishing a batch achieved: the acks of a prefix of the batch, in order, and the
/// error that stopped it before the end (None: the whole batch is acknowledged).
#[derive(Debug, Default)]
pub struct Published {
    pub acks: Vec<Ack>,
    pub error: Option<SinkError>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The engine cannot be reached or did not answer in time: retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The engine's destination is not as the relay needs it (e.g. a stream without the
    /// relay's subjects): retried, and logged, until an operator fixes it.
    #[error("misconfigured: {0}")]
    Misconfigured(String),
}

/// A message bus the relay publishes to.
pub trait EventSink: Send + Sync + 'static {
    /// The relay's name in `event_relays` (one cursor and one lease per name), e.g.
    /// `nats:WXMP_ORDERS`.
    fn name(&self) -> String;

    /// Makes the destination ready (creates or checks the stream); called before the first
    /// batch and again after a failure.
    fn prepare(&self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Publishes `batch` in order and waits for the engine's acks (see [`Published`]).
    fn publish(&self, batch: &[Message]) -> impl Future<Output = Published> + Send;
}

/// The relay's settings, from the config.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// The lease: another replica takes over this long after the holder stopped renewing.
    pub lease: Duration,
    /// Events per batch.
    pub batch: i64,
    /// How often a caught-up holder looks for events of other replicas.
    pub poll: Duration,
    /// `PAY_WEBHOOK_SECRET`: signs messages as webhooks are signed (None: unsigned).
    pub secret: Option<Secret>,
}

/// What one step of the relay did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Another replica holds the lease.
    Standby,
    /// Caught up.
    Idle,
    /// This many events acknowledged (new or duplicate) and the cursor moved past them.
    Published(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] Error),
    #[error("event bus {0}")]
    Sink(#[from] SinkError),
}

impl From<diesel::result::Error> for RelayError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e.into())
    }
}

/// The outbox relay of one engine.
pub struct Relay<S> {
    db: Database,
    clock: Clock,
    sink: S,
    name: String,
    /// This replica's lease value: random per process.
    holder: String,
    settings: RelaySettings,
    prepared: bool,
}

/// Unix milliseconds of the wall clock (lease times).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<S: EventSink> Relay<S> {
    pub fn new(db: Database, clock: Clock, sink: S, settings: RelaySettings) -> Self {
        Self {
            name: sink.name(),
            holder: format!("{:016x}", rand::rng().random::<u64>()),
            db,
            clock,
            sink,
            settings,
            prepared: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the relay's cursor at the newest event unless it exists: a new relay publishes
    /// what happens from now on, not the history. Called before the server takes requests (as
    /// webhooks are registered), so no event of this replica falls before the cursor.
    pub async fn register(&self) -> Result<(), Error> {
        register(&self.db, &self.name, self.clock.now()).await
    }

    /// Publishes until `shutdown`, then lets the lease go so another replica takes over at once.
    pub async fn run(mut self, shutdown: Shutdown) {
        // Exported from the start (at 0), so rates and alerts see them before the first event.
        for counter in [
            "wxmp_pay_nats_published_total",
            "wxmp_pay_nats_duplicates_total",
            "wxmp_pay_nats_publish_errors_total",
        ] {
            metrics::counter!(counter).increment(0);
        }
        let mut wake_ups = events::wake_ups();
        let mut failures: u32 = 0;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            wake_ups.borrow_and_update();
            if let Err(e) = self.report_lag().await {
                tracing::warn!(error = %e, relay = %self.name, "relay lag query failed");
            }
            let step = tokio::select! {
                _ = shutdown.wait() => break,
                step = self.step() => step,
            };
            let failed = step.is_err();
            let pause = match step {
                Ok(Step::Published(_)) => {
                    failures = 0;
                    continue;
                }
                Ok(Step::Idle) => {
                    failures = 0;
                    self.settings.poll
                }
                // Look again well inside a lease, so a dead holder is replaced quickly.
                Ok(Step::Standby) => self.settings.poll.min(self.settings.lease / 3),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.prepared = false;
                    metrics::counter!("wxmp_pay_nats_publish_errors_total").increment(1);
                    tracing::warn!(error = %e, relay = %self.name, failures, "relay step failed");
                    // 100 ms doubling up to a third of the lease: back soon after the bus is.
                    let exp = Duration::from_millis(100).saturating_mul(1 << failures.min(6));
                    exp.min(self.settings.lease / 3)
                }
            };
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = wake_ups.changed(), if !failed => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(e) = release(&self.db, &self.name, &self.holder).await {
            tracing::warn!(error = %e, relay = %self.name, "releasing the relay lease failed");
        }
        metrics::gauge!("wxmp_pay_nats_relay_leader").set(0.0);
        tracing::debug!(relay = %self.name, "relay stopped");
    }

    /// One step: take or renew the lease, publish the next batch, move the cursor.
    pub async fn step(&mut self) -> Result<Step, RelayError> {
        let now = now_ms();
        let Some(cursor) = acquire(
            &self.db,
            &self.name,
            &self.holder,
            now,
            now.saturating_add(millis(self.settings.lease)),
        )
        .await?
        else {
            metrics::gauge!("wxmp_pay_nats_relay_leader").set(0.0);
            return Ok(Step::Standby);
        };
        metrics::gauge!("wxmp_pay_nats_relay_leader").set(1.0);
        if !self.prepared {
            self.sink.prepare().await?;
            self.prepared = true;
        }
        let batch = events::after(&self.db, cursor, &[], self.settings.batch).await?;
        if batch.is_empty() {
            return Ok(Step::Idle);
        }
        let messages: Vec<Message> = batch
            .iter()
            .map(|event| message(event, self.clock.now(), self.settings.secret.as_ref()))
            .collect();
        let published = self.sink.publish(&messages).await;
        let duplicates = published.acks.iter().filter(|a| a.duplicate).count();
        let stored = published.acks.len() - duplicates;
        metrics::counter!("wxmp_pay_nats_published_total").increment(stored as u64);
        metrics::counter!("wxmp_pay_nats_duplicates_total").increment(duplicates as u64);
        if let Some(last) = published.acks.last()
            && !advance(&self.db, &self.name, &self.holder, cursor, last.id).await?
        {
            // Our lease ran out while publishing and another replica moved on: it
            // republishes from its cursor, and the bus drops what we already stored.
            tracing::warn!(relay = %self.name, "relay lease lost while publishing");
            return Ok(Step::Standby);
        }
        match published.error {
            Some(e) => Err(e.into()),
            None => Ok(Step::Published(published.acks.len())),
        }
    }

    /// Sets `wxmp_pay_nats_lag_events` and `wxmp_pay_nats_lag_seconds`.
    async fn report_lag(&self) -> Result<Lag, Error> {
        let lag = lag(&self.db, &self.name, self.clock.now()).await?;
        metrics::gauge!("wxmp_pay_nats_lag_events").set(lag.events as f64);
        metrics::gauge!("wxmp_pay_nats_lag_seconds").set(lag.seconds as f64);
        Ok(lag)
    }
}

/// The bus message of `event`, sent at `timestamp` (unix seconds).
pub fn message(event: &Event, timestamp: i64, secret: Option<&Secret>) -> Message {
    let body = webhooks::body_of(event);
    let mut headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("X-Wxmp-Event-Id", event.id.to_string()),
        ("X-Wxmp-Timestamp", timestamp.to_string()),
    ];
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        let signature = webhooks::signature(secret.expose(), timestamp, body.as_bytes());
        headers.push(("X-Wxmp-Signature", format!("sha256={signature}")));
    }
    Message {
        id: event.id,
        order_no: event.order_no.clone(),
        kind: event.kind.clone(),
        body,
        headers,
    }
}

/// How far a relay is behind the outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Events after the cursor.
    pub events: i64,
    /// Age of the oldest of them (0 when there is none).
    pub seconds: i64,
}

/// `relay`'s lag at `now` (unix seconds); zero for an unregistered relay.
pub async fn lag(db: &Database, relay: &str, now: i64) -> Result<Lag, Error> {
    let Some(after) = cursor(db, relay).await? else {
        return Ok(Lag::default());
    };
    let (events, oldest): (i64, Option<i64>) = service_kit::with_conn!(db, |conn| {
        order_events::table
            .filter(order_events::id.gt(after))
            .select((
                diesel::dsl::count_star(),
                diesel::dsl::min(order_events::created_at),
            ))
            .first(conn)
            .await
    })?;
    Ok(Lag {
        events,
        seconds: oldest.map_or(0, |t| now.saturating_sub(t).max(0)),
    })
}

/// Where `relay` has published up to; None until it is registered.
pub async fn cursor(db: &Database, relay: &str) -> Result<Option<i64>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        event_relays::table
            .filter(event_relays::relay.eq(relay))
            .select(event_relays::after_id)
            .first(conn)
            .await
            .optional()
    })?)
}

/// See [`Relay::register`].
pub async fn register(db: &Database, relay: &str, now: i64) -> Result<(), Error> {
    let newest = events::last_id(db).await?;
    service_kit::with_conn!(db, |conn| {
        diesel::insert_into(event_relays::table)
            .values((
                event_relays::relay.eq(relay),
                event_relays::after_id.eq(newest),
                event_relays::updated_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await
    })?;
    Ok(())
}

/// Sets `relay`'s cursor: the operator's rewind (the events after `after_id` are published
/// again; JetStream drops those still inside its duplicate window) or skip.
pub async fn set_cursor(db: &Database, relay: &str, after_id: i64) -> Result<bool, Error> {
    let now = now_ms() / 1000;
    let moved = service_kit::with_conn!(db, |conn| {
        diesel::update(event_relays::table.filter(event_relays::relay.eq(relay)))
            .set((
                event_relays::after_id.eq(after_id),
                event_relays::updated_at.eq(now),
            ))
            .execute(conn)
            .await
    })?;
    Ok(moved == 1)
}

/// Takes or renews `relay`'s lease for `holder` until `until_ms`; its cursor when it holds it.
async fn acquire(
    db: &Database,
    relay: &str,
    holder: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<Option<i64>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        diesel::update(
            event_relays::table
                .filter(event_relays::relay.eq(relay))
                .filter(
                    event_relays::holder
                        .eq(holder)
                        .or(event_relays::lease_until_ms.lt(now_ms)),
                ),
        )
        .set((
            event_relays::holder.eq(holder),
            event_relays::lease_until_ms.eq(until_ms),
        ))
        .returning(event_relays::after_id)
        .get_result(conn)
        .await
        .optional()
    })?)
}

/// Moves the cursor from `from` to `to` while `holder` still holds the lease.
async fn advance(
    db: &Database,
    relay: &str,
    holder: &str,
    from: i64,
    to: i64,
) -> Result<bool, Error> {
    let now = now_ms() / 1000;
    let moved = service_kit::with_conn!(db, |conn| {
        diesel::update(
            event_relays::table
                .filter(event_relays::relay.eq(relay))
                .filter(event_relays::holder.eq(holder))
                .filter(event_relays::after_id.eq(from)),
        )
        .set((
            event_relays::after_id.eq(to),
            event_relays::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    Ok(moved == 1)
}

/// Lets `holder`'s lease go (shutdown).
async fn release(db: &Database, relay: &str, holder: &str) -> Result<(), Error> {
    service_kit::with_conn!(db, |conn| {
        diesel::update(
            event_relays::table
                .filter(event_relays::relay.eq(relay))
                .filter(event_relays::holder.eq(holder)),
        )
        .set(event_relays::lease_until_ms.eq(0))
        .execute(conn)
        .await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_the_webhook_body_and_signature() {
        let event = Event {
            id: 7,
            order_no: "WX1".into(),
            kind: "ORDER_PAID".into(),
            payload: r#"{"order_no":"WX1"}"#.into(),
            created_at: 1_700_000_000,
        };
        let secret = Secret::new("whsec-test");
        let m = message(&event, 1_700_000_005, Some(&secret));
        assert_eq!(m.body, webhooks::body_of(&event));
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("X-Wxmp-Event-Id").as_deref(), Some("7"));
        assert_eq!(header("X-Wxmp-Timestamp").as_deref(), Some("1700000005"));
        assert_eq!(
            header("X-Wxmp-Signature"),
            Some(format!(
                "sha256={}",
                webhooks::signature("whsec-test", 1_700_000_005, m.body.as_bytes())
            ))
        );
        let unsigned = message(&event, 1_700_000_005, None);
        assert!(
            unsigned
                .headers
                .iter()
                .all(|(k, _)| *k != "X-Wxmp-Signature")
        );
        assert_eq!(unsigned.body, m.body);
    }
}
