//! The NATS JetStream engine of the relay.
//!
//! - Subject: `<PAY_EVENTS_NATS_SUBJECT_PREFIX>.<kind in lower snake case>`, e.g.
//!   `wxmp.orders.order_paid`, `wxmp.orders.refund_succeeded` ([`subject`]).
//! - Headers: `Nats-Msg-Id: <event id>` (JetStream drops a second message with the same id
//!   inside the stream's duplicate window and answers `duplicate: true`), plus the webhook
//!   headers of [`super::message`]. Payload: the webhook body.
//! - Stream: created at start when missing with subjects `<prefix>.>`, limits retention,
//!   file storage, `max_age` (`PAY_EVENTS_NATS_MAX_AGE_SECS`), the duplicate window
//!   (`PAY_EVENTS_NATS_DUPLICATE_WINDOW_SECS`), `PAY_EVENTS_NATS_REPLICAS` copies and discard
//!   old. An existing stream is checked: it must hold the relay's subjects and de-duplicate
//!   for at least the configured window, or the relay refuses to publish (and says why);
//!   other differences are logged and left to the operator.
//!
//! Only JetStream calls a 2.9 server accepts are used (async-nats is built without its
//! `server_2_10`+ features): stream info/create and publish with `Nats-Msg-Id`.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};

use super::{Ack, EventSink, Message, Published, SinkError};
use crate::{config::nats::NatsConfig, error::Error};

/// The relay's publisher into one JetStream stream.
pub struct NatsSink {
    js: jetstream::Context,
    stream: String,
    prefix: String,
    max_age: Duration,
    duplicate_window: Duration,
    replicas: usize,
}

/// The relay's name in `event_relays` for `stream`: `nats:<stream>`.
pub fn relay_name(stream: &str) -> String {
    format!("nats:{stream}")
}

/// `<prefix>.<kind in lower snake case>`.
pub fn subject(prefix: &str, kind: &str) -> String {
    format!("{prefix}.{}", kind.to_ascii_lowercase())
}

impl NatsSink {
    /// Connects (in the background: the relay starts while NATS is down and publishes once it
    /// is reachable) with the configured credentials and TLS.
    pub async fn connect(config: &NatsConfig) -> Result<Self, Error> {
        let url = config
            .nats_url
            .as_ref()
            .map(|u| u.expose().to_owned())
            .unwrap_or_default();
        let servers: Vec<String> = url
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let mut options = async_nats::ConnectOptions::new()
            .name("wxmp-pay event relay")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(config.ack_timeout().max(Duration::from_secs(1)))
            // Back within a second or two of the server: 100 ms more per attempt, at most 2 s.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100)
                    .saturating_mul(u32::try_from(attempts).unwrap_or(u32::MAX))
                    .min(Duration::from_secs(2))
            })
            .require_tls(config.nats_require_tls);
        if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(seed) = &config.nats_nkey_seed {
            options = options.nkey(seed.expose().trim().to_owned());
        }
        if let Some(path) = &config.nats_creds_file {
            options = options.credentials_file(path).await.map_err(|e| {
                Error::Config(format!(
                    "PAY_EVENTS_NATS_CREDS_FILE {}: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(path) = &config.nats_ca_file {
            options = options.add_root_certificates(path.clone());
        }
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| Error::Config(format!("PAY_EVENTS_NATS_URL: {e}")))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout())
            .ack_timeout(config.ack_timeout())
            .build(client);
        Ok(Self {
            js,
            stream: config.nats_stream.clone(),
            prefix: config.nats_subject_prefix.clone(),
            max_age: config.max_age(),
            duplicate_window: config.duplicate_window(),
            replicas: config.nats_replicas,
        })
    }

    /// The stream as the relay creates it.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            description: Some("wxmp order events (pay-service outbox relay)".into()),
            subjects: vec![format!("{}.>", self.prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// What is wrong with an existing stream for the relay (None: usable).
pub fn unusable(found: &stream::Config, wanted: &stream::Config) -> Option<String> {
    let ours = wanted.subjects.first().map_or(">", String::as_str);
    if !found.subjects.iter().any(|s| s == ours || s == ">") {
        return Some(format!(
            "stream {} holds subjects {:?}, not {ours}",
            found.name, found.subjects
        ));
    }
    if found.duplicate_window < wanted.duplicate_window {
        return Some(format!(
            "stream {} de-duplicates for {:?}, less than PAY_EVENTS_NATS_DUPLICATE_WINDOW_SECS ({:?})",
            found.name, found.duplicate_window, wanted.duplicate_window
        ));
    }
    None
}

impl EventSink for NatsSink {
    fn name(&self) -> String {
        relay_name(&self.stream)
    }

    async fn prepare(&self) -> Result<(), SinkError> {
        let wanted = self.stream_config();
        let mut stream = self
            .js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| SinkError::Unavailable(format!("stream {}: {e}", self.stream)))?;
        let info = stream
            .info()
            .await
            .map_err(|e| SinkError::Unavailable(format!("stream {}: {e}", self.stream)))?;
        if let Some(problem) = unusable(&info.config, &wanted) {
            return Err(SinkError::Misconfigured(problem));
        }
        if info.config.max_age != wanted.max_age || info.config.num_replicas != wanted.num_replicas
        {
            tracing::warn!(
                stream = %self.stream,
                max_age = ?info.config.max_age,
                replicas = info.config.num_replicas,
                "the stream's max_age or replicas differ from PAY_EVENTS_NATS_*; left as they are"
            );
        }
        Ok(())
    }

    async fn publish(&self, batch: &[Message]) -> Published {
        let mut published = Published::default();
        // Send the whole batch, then collect the acks: one round trip per batch, not per event.
        let mut pending = Vec::with_capacity(batch.len());
        for message in batch {
            let mut headers = async_nats::HeaderMap::new();
            for (name, value) in &message.headers {
                headers.insert(*name, value.as_str());
            }
            let publish = PublishMessage::build()
                .payload(message.body.clone().into())
                .headers(headers)
                .message_id(message.id.to_string());
            match self
                .js
                .send_publish(subject(&self.prefix, &message.kind), publish)
                .await
            {
                Ok(ack) => pending.push((message.id, ack)),
                Err(e) => {
                    published.error = Some(SinkError::Unavailable(format!("publish: {e}")));
                    break;
                }
            }
        }
        for (id, ack) in pending {
            match ack.await {
                Ok(ack) if ack.stream != self.stream => {
                    published.error = Some(SinkError::Misconfigured(format!(
                        "event {id} was stored in stream {}, not {}: subjects overlap",
                        ack.stream, self.stream
                    )));
                    break;
                }
                Ok(ack) => published.acks.push(Ack {
                    id,
                    duplicate: ack.duplicate,
                }),
                Err(e) => {
                    published.error = Some(SinkError::Unavailable(format!("ack of {id}: {e}")));
                    break;
                }
            }
        }
        published
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    #[test]
    fn subjects_are_the_prefix_and_the_kind_in_lower_snake_case() {
        assert_eq!(
            subject("wxmp.orders", EventKind::OrderPaid.as_str()),
            "wxmp.orders.order_paid"
        );
        assert_eq!(
            subject("shop.events", EventKind::OrderPaidAfterClose.as_str()),
            "shop.events.order_paid_after_close"
        );
    }

    #[test]
    fn a_stream_without_our_subjects_or_with_a_short_window_is_refused() {
        let wanted = stream::Config {
            name: "S".into(),
            subjects: vec!["wxmp.orders.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        assert_eq!(unusable(&wanted, &wanted), None);
        let other = stream::Config {
            subjects: vec!["wxmp.other.>".into()],
            ..wanted.clone()
        };
        assert!(unusable(&other, &wanted).unwrap().contains("wxmp.orders.>"));
        let short = stream::Config {
            duplicate_window: Duration::from_secs(10),
            ..wanted.clone()
        };
        assert!(unusable(&short, &wanted).unwrap().contains("de-duplicates"));
    }
}
