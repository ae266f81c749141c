//! `WatchOrderEvents`: replays the outbox after the consumer's cursor, then follows it live.
//!
//! One task per subscriber reads a batch of events and hands them to a bounded channel; when
//! the consumer is slow the channel fills, the task waits, and nothing else does: memory per
//! subscriber is at most one batch plus the channel, and payments never wait for a consumer.
//! Once caught up, the task sleeps until this process appends an event ([`events::wake`]) or
//! the poll interval passes (events appended by other replicas).

use std::{pin::Pin, time::Duration};

use futures::Stream;
use service_kit::{Shutdown, db::Database};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use wxmp_proto::pay::v1 as pb;

use crate::events::{self, EventKind};

/// Events read per query.
const BATCH: i64 = 100;
/// Events queued for one consumer beyond the batch being sent.
const QUEUE: usize = 32;

/// The stream a `WatchOrderEvents` call answers.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OrderEvent, Status>> + Send>>;

/// Starts following the outbox after `after_id` for one consumer.
pub fn follow(
    db: Database,
    after_id: i64,
    kinds: Vec<EventKind>,
    poll: Duration,
    stop: Shutdown,
) -> EventStream {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        metrics::gauge!("wxmp_pay_event_subscribers").increment(1.0);
        if let Err(status) = pump(&db, after_id, &kinds, poll, &stop, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
        metrics::gauge!("wxmp_pay_event_subscribers").decrement(1.0);
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Sends events to `tx` until the consumer goes away (Ok) or the stream must end (Err).
async fn pump(
    db: &Database,
    mut cursor: i64,
    kinds: &[EventKind],
    poll: Duration,
    stop: &Shutdown,
    tx: &mpsc::Sender<Result<pb::OrderEvent, Status>>,
) -> Result<(), Status> {
    let mut wake_ups = events::wake_ups();
    loop {
        if stop.is_triggered() {
            return Err(Status::unavailable(
                "pay-service is shutting down; reconnect with your last event id",
            ));
        }
        // Marked seen before the query: a wake-up that comes while it runs is not lost.
        wake_ups.borrow_and_update();
        let batch = events::after(db, cursor, kinds, BATCH).await.map_err(|e| {
            tracing::warn!(error = %e, "event stream query failed");
            Status::unavailable("events unavailable; reconnect with your last event id")
        })?;
        if batch.is_empty() {
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = stop.wait() => {}
                _ = wake_ups.changed() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            continue;
        }
        for event in batch {
            cursor = event.id;
            if tx.send(Ok(event.to_proto())).await.is_err() {
                return Ok(()); // the consumer hung up
            }
        }
    }
}
