//! Webhooks: every outbox event POSTed as signed JSON to each endpoint of `PAY_WEBHOOK_URLS`,
//! retried with exponential backoff and jitter for up to `PAY_WEBHOOK_MAX_AGE_SECS`, then
//! dead-lettered. Delivery state lives in the database, so a restart resumes where it stopped.
//!
//! Each pass has two steps, both safe with several replicas running them at once:
//! - **plan**: per endpoint, `webhook_cursors.after_id` says up to which event deliveries
//!   exist. A replica inserts the deliveries of the next events and moves the cursor with a
//!   conditional UPDATE (`WHERE after_id = <what it read>`) in one transaction: of two
//!   replicas planning at once, one commits and the other rolls back.
//! - **deliver**: a due delivery is claimed by a conditional UPDATE of its lease (`lease_until`
//!   plus a random `lease_token`), so one replica POSTs it at a time; the result is written
//!   only while the token still matches. The lease outlives the request timeout.
//!
//! A request carries `X-Wxmp-Event-Id` (the idempotency id: the same event may arrive again
//! after a lost answer), `X-Wxmp-Timestamp` and `X-Wxmp-Signature: sha256=<hex>`, the
//! HMAC-SHA256 with `PAY_WEBHOOK_SECRET` of `<timestamp>.<body>`.

use std::time::Duration;

use diesel::{
    ExpressionMethods, Insertable, JoinOnDsl, OptionalExtension, QueryDsl, Queryable, Selectable,
    SelectableHelper,
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures::StreamExt as _;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use service_kit::{Secret, Shutdown, db::Database};
use sha2::Sha256;
use wxmp_proto::pay::v1 as pb;

use crate::{
    Clock,
    error::Error,
    events::{self, EventKind},
    schema::{order_events, webhook_cursors, webhook_deliveries},
};

/// Deliveries claimed per pass.
const CLAIM_BATCH: i64 = 50;
/// Deliveries in flight at once per replica.
const CONCURRENCY: usize = 8;
/// Events planned per endpoint and pass.
const PLAN_BATCH: i64 = 200;
/// The longest wait between two attempts.
const MAX_BACKOFF_SECS: i64 = 3600;
/// Most characters of an error kept on a delivery.
const MAX_ERROR_CHARS: usize = 200;

pub const PENDING: &str = "PENDING";
pub const DELIVERED: &str = "DELIVERED";
pub const DEAD: &str = "DEAD";

/// What the webhook worker needs, from the config.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub endpoints: Vec<String>,
    pub secret: Secret,
    pub timeout: Duration,
    /// After this long since the event, a failing delivery is dead-lettered.
    pub max_age_secs: i64,
    /// The first retry's delay; each later one doubles it (with jitter), up to an hour.
    pub backoff: Duration,
    /// How often the worker looks for work when nothing wakes it.
    pub poll: Duration,
}

/// The HMAC-SHA256 of `<timestamp>.<body>` with the shared secret, lower-case hex: what a
/// receiver recomputes and compares (in constant time) with `X-Wxmp-Signature`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The delay before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped, with jitter in
/// [½, 1] of it so that many failed deliveries do not retry in lock step.
pub fn backoff_secs(base: Duration, attempts: i32, jitter: f64) -> i64 {
    let base = i64::try_from(base.as_secs()).unwrap_or(1).max(1);
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let full = base.saturating_mul(1_i64 << exp).min(MAX_BACKOFF_SECS);
    // In [full/2, full], full ≤ MAX_BACKOFF_SECS: the float round trip cannot leave i64.
    #[allow(clippy::cast_possible_truncation)]
    let jittered = (full as f64 * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))).round() as i64;
    jittered.max(1)
}

#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = webhook_deliveries)]
struct NewDelivery<'a> {
    event_id: i64,
    endpoint: &'a str,
    state: &'a str,
    next_attempt_at: i64,
    created_at: i64,
    updated_at: i64,
}

/// A row of `webhook_deliveries`.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
pub struct Delivery {
    pub id: i64,
    pub event_id: i64,
    pub endpoint: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub lease_until: i64,
    pub lease_token: String,
    pub last_error: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Worth retrying (5xx, 408, 429, timeouts, refused connections).
    Retry(String),
    /// Never worth retrying (other 4xx): dead-lettered at once.
    Refused(String),
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub planned: usize,
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
}

/// The webhook worker of one replica.
#[derive(Clone, Debug)]
pub struct Webhooks {
    db: Database,
    clock: Clock,
    settings: WebhookSettings,
    http: reqwest::Client,
}

impl Webhooks {
    pub fn new(db: Database, clock: Clock, settings: WebhookSettings) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("webhook HTTP client: {e}")))?;
        Ok(Self {
            db,
            clock,
            settings,
            http,
        })
    }

    /// Plans and delivers until `shutdown`; woken by new events of this process.
    pub async fn run(self, shutdown: Shutdown) {
        let mut wake_ups = events::wake_ups();
        loop {
            wake_ups.borrow_and_update();
            tokio::select! {
                _ = shutdown.wait() => break,
                result = self.pass() => match result {
                    Ok(report) if report != PassReport::default() => {
                        tracing::debug!(?report, "webhook pass");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhook pass failed"),
                },
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = wake_ups.changed() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
        tracing::debug!("webhook worker stopped");
    }

    /// One pass: plan new events for every endpoint, then attempt every due delivery.
    pub async fn pass(&self) -> Result<PassReport, Error> {
        let mut report = PassReport::default();
        self.register().await?;
        for endpoint in &self.settings.endpoints {
            report.planned += self.plan(endpoint).await?;
        }
        let now = self.clock.now();
        let due: Vec<i64> = service_kit::with_conn!(&self.db, |conn| {
            webhook_deliveries::table
                .filter(webhook_deliveries::state.eq(PENDING))
                .filter(webhook_deliveries::next_attempt_at.le(now))
                .filter(webhook_deliveries::lease_until.le(now))
                .order(webhook_deliveries::id.asc())
                .limit(CLAIM_BATCH)
                .select(webhook_deliveries::id)
                .load(conn)
                .await
        })?;
        let results: Vec<Result<Option<&'static str>, Error>> = futures::stream::iter(due)
            .map(|id| self.attempt(id))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for result in results {
            match result? {
                Some(DELIVERED) => report.delivered += 1,
                Some(DEAD) => report.dead += 1,
                Some(_) => report.retried += 1,
                None => {}
            }
        }
        let dead: i64 = service_kit::with_conn!(&self.db, |conn| {
            webhook_deliveries::table
                .filter(webhook_deliveries::state.eq(DEAD))
                .count()
                .get_result(conn)
                .await
        })?;
        metrics::gauge!("wxmp_pay_webhook_dead_letters").set(dead as f64);
        Ok(report)
    }

    /// Registers every endpoint that has no cursor yet at the newest event: a new endpoint
    /// gets what happens from now on, not the history. Called before the server takes
    /// requests, so no event of this replica falls before the cursor.
    pub async fn register(&self) -> Result<(), Error> {
        let now = self.clock.now();
        let newest = events::last_id(&self.db).await?;
        for endpoint in &self.settings.endpoints {
            service_kit::with_conn!(&self.db, |conn| {
                diesel::insert_into(webhook_cursors::table)
                    .values((
                        webhook_cursors::endpoint.eq(endpoint),
                        webhook_cursors::after_id.eq(newest),
                        webhook_cursors::updated_at.eq(now),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await
            })?;
        }
        Ok(())
    }

    /// Creates the deliveries of the events after `endpoint`'s cursor (see [`Self::register`]).
    async fn plan(&self, endpoint: &str) -> Result<usize, Error> {
        let now = self.clock.now();
        let planned = service_kit::with_conn!(&self.db, |conn| {
            conn.transaction::<_, Error, _>(async |conn| {
                let Some(after): Option<i64> = webhook_cursors::table
                    .filter(webhook_cursors::endpoint.eq(endpoint))
                    .select(webhook_cursors::after_id)
                    .first(conn)
                    .await
                    .optional()?
                else {
                    return Ok(0); // not registered yet
                };
                let ids: Vec<i64> = order_events::table
                    .filter(order_events::id.gt(after))
                    .order(order_events::id.asc())
                    .limit(PLAN_BATCH)
                    .select(order_events::id)
                    .load(conn)
                    .await?;
                let Some(&last) = ids.last() else {
                    return Ok(0);
                };
                for &event_id in &ids {
                    diesel::insert_into(webhook_deliveries::table)
                        .values(NewDelivery {
                            event_id,
                            endpoint,
                            state: PENDING,
                            next_attempt_at: now,
                            created_at: now,
                            updated_at: now,
                        })
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await?;
                }
                let moved = diesel::update(
                    webhook_cursors::table
                        .filter(webhook_cursors::endpoint.eq(endpoint))
                        .filter(webhook_cursors::after_id.eq(after)),
                )
                .set((
                    webhook_cursors::after_id.eq(last),
                    webhook_cursors::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if moved == 0 {
                    // Another replica planned the same events meanwhile: keep its work.
                    return Err(Error::Internal("webhook plan raced".into()));
                }
                Ok(ids.len())
            })
            .await
        });
        match planned {
            Err(Error::Internal(msg)) if msg == "webhook plan raced" => Ok(0),
            other => other,
        }
    }

    /// Claims delivery `id` and attempts it; the state it ended in (None: not claimed).
    async fn attempt(&self, id: i64) -> Result<Option<&'static str>, Error> {
        let now = self.clock.now();
        let lease_secs = i64::try_from(self.settings.timeout.as_secs()).unwrap_or(60) + 30;
        let token: String = format!("{:016x}", rand::rng().random::<u64>());
        let claimed = service_kit::with_conn!(&self.db, |conn| {
            diesel::update(
                webhook_deliveries::table
                    .filter(webhook_deliveries::id.eq(id))
                    .filter(webhook_deliveries::state.eq(PENDING))
                    .filter(webhook_deliveries::lease_until.le(now)),
            )
            .set((
                webhook_deliveries::lease_until.eq(now + lease_secs),
                webhook_deliveries::lease_token.eq(&token),
            ))
            .returning(Delivery::as_returning())
            .get_result(conn)
            .await
            .optional()
        })?;
        let Some(delivery) = claimed else {
            return Ok(None); // another replica has it, or it is done
        };
        let event: Option<events::Event> = service_kit::with_conn!(&self.db, |conn| {
            order_events::table
                .filter(order_events::id.eq(delivery.event_id))
                .select(events::Event::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        let attempt = match &event {
            Some(event) => self.post(&delivery.endpoint, event).await,
            None => Attempt::Refused("event pruned before delivery".into()),
        };
        let now = self.clock.now();
        let attempts = delivery.attempts + 1;
        let (state, next_attempt_at, error) = match attempt {
            Attempt::Delivered => (DELIVERED, delivery.next_attempt_at, String::new()),
            Attempt::Refused(e) => (DEAD, delivery.next_attempt_at, e),
            Attempt::Retry(e) => {
                let age = now - event.as_ref().map_or(delivery.created_at, |e| e.created_at);
                if age >= self.settings.max_age_secs {
                    (DEAD, delivery.next_attempt_at, e)
                } else {
                    let delay = backoff_secs(self.settings.backoff, attempts, rand::rng().random());
                    (PENDING, now + delay, e)
                }
            }
        };
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        service_kit::with_conn!(&self.db, |conn| {
            diesel::update(
                webhook_deliveries::table
                    .filter(webhook_deliveries::id.eq(id))
                    .filter(webhook_deliveries::lease_token.eq(&token)),
            )
            .set((
                webhook_deliveries::state.eq(state),
                webhook_deliveries::attempts.eq(attempts),
                webhook_deliveries::next_attempt_at.eq(next_attempt_at),
                webhook_deliveries::lease_until.eq(0),
                webhook_deliveries::lease_token.eq(""),
                webhook_deliveries::last_error.eq(&error),
                webhook_deliveries::updated_at.eq(now),
            ))
            .execute(conn)
            .await
        })?;
        let result = match state {
            DELIVERED => "delivered",
            DEAD => "dead",
            _ => "retry",
        };
        metrics::counter!("wxmp_pay_webhook_deliveries_total", "result" => result).increment(1);
        if state == DEAD {
            tracing::error!(
                event_id = delivery.event_id, endpoint = %delivery.endpoint, error = %error,
                "webhook delivery dead-lettered"
            );
        }
        Ok(Some(state))
    }

    async fn post(&self, endpoint: &str, event: &events::Event) -> Attempt {
        let body = body_of(event);
        let timestamp = self.clock.now();
        let signature = signature(self.settings.secret.expose(), timestamp, body.as_bytes());
        let sent = self
            .http
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Wxmp-Event-Id", event.id.to_string())
            .header("X-Wxmp-Timestamp", timestamp.to_string())
            .header("X-Wxmp-Signature", format!("sha256={signature}"))
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => Attempt::Delivered,
            Ok(resp) => {
                let status = resp.status();
                let error = format!("HTTP {}", status.as_u16());
                if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Attempt::Refused(error)
                } else {
                    Attempt::Retry(error)
                }
            }
            Err(e) if e.is_timeout() => Attempt::Retry("timeout".into()),
            Err(e) if e.is_connect() => Attempt::Retry("connection failed".into()),
            Err(e) => Attempt::Retry(format!("request failed: {e}")),
        }
    }
}

/// Where `endpoint`'s deliveries are planned up to; None until it is registered.
pub async fn cursor(db: &Database, endpoint: &str) -> Result<Option<i64>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        webhook_cursors::table
            .filter(webhook_cursors::endpoint.eq(endpoint))
            .select(webhook_cursors::after_id)
            .first(conn)
            .await
            .optional()
    })?)
}

/// The JSON body of one event.
pub fn body_of(event: &events::Event) -> String {
    let data: serde_json::Value =
        serde_json::from_str(&event.payload).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": event.id,
        "kind": event.kind,
        "order_no": event.order_no,
        "created_at": event.created_at,
        "data": data,
    })
    .to_string()
}

/// Deliveries in `state`, newest first, with their event's kind and order.
pub async fn list(
    db: &Database,
    state: &str,
    limit: i64,
) -> Result<Vec<pb::WebhookDelivery>, Error> {
    let rows: Vec<(Delivery, String, String)> = service_kit::with_conn!(db, |conn| {
        webhook_deliveries::table
            .inner_join(order_events::table.on(order_events::id.eq(webhook_deliveries::event_id)))
            .filter(webhook_deliveries::state.eq(state))
            .order(webhook_deliveries::id.desc())
            .limit(limit)
            .select((
                Delivery::as_select(),
                order_events::kind,
                order_events::order_no,
            ))
            .load(conn)
            .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(d, kind, order_no)| pb::WebhookDelivery {
            event_id: d.event_id,
            endpoint: d.endpoint,
            state: d.state,
            attempts: d.attempts,
            last_error: d.last_error,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
            kind: EventKind::parse(&kind)
                .map_or(pb::OrderEventKind::Unspecified, EventKind::to_proto)
                as i32,
            order_no,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // printf '1700000000.{"id":1}' | openssl dgst -sha256 -hmac 'whsec-test'
        assert_eq!(
            signature("whsec-test", 1_700_000_000, br#"{"id":1}"#),
            "5c7c76af77af443a710729c69dbfac6394ac5b78aa21a360d1cd2a71077fc9cf"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff_secs(base, 1, 1.0), 2);
        assert_eq!(backoff_secs(base, 2, 1.0), 4);
        assert_eq!(backoff_secs(base, 3, 1.0), 8);
        assert_eq!(backoff_secs(base, 3, 0.0), 4);
        assert_eq!(backoff_secs(base, 40, 1.0), MAX_BACKOFF_SECS);
        assert!(backoff_secs(Duration::ZERO, 1, 0.0) >= 1);
    }
}
