//! The outbox's consumers: the event stream's poll, webhooks and retention.

use std::time::Duration;

use service_kit::Secret;

/// The outbox's consumers: the event stream, webhooks and retention.
#[derive(clap::Args, Clone, Debug)]
pub struct EventsConfig {
    /// How often event streams and the webhook worker look for events of other replicas.
    #[arg(
        long,
        env = "PAY_EVENT_POLL_MS",
        value_name = "PAY_EVENT_POLL_MS",
        default_value_t = DEFAULT_EVENT_POLL_MS
    )]
    pub event_poll_ms: u64,

    /// Order events are kept this many days, then pruned.
    #[arg(
        long,
        env = "PAY_EVENT_RETENTION_DAYS",
        value_name = "PAY_EVENT_RETENTION_DAYS",
        default_value_t = DEFAULT_EVENT_RETENTION_DAYS
    )]
    pub event_retention_days: u64,

    /// Endpoints that receive every event as a signed JSON POST, comma-separated (empty: none).
    #[arg(
        long,
        env = "PAY_WEBHOOK_URLS",
        value_name = "PAY_WEBHOOK_URLS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub webhook_urls: Vec<String>,

    /// The HMAC-SHA256 key of X-Wxmp-Signature; required with PAY_WEBHOOK_URLS.
    #[arg(
        long,
        env = "PAY_WEBHOOK_SECRET",
        value_name = "PAY_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,

    /// Time allowed for one webhook request.
    #[arg(
        long,
        env = "PAY_WEBHOOK_TIMEOUT_MS",
        value_name = "PAY_WEBHOOK_TIMEOUT_MS",
        default_value_t = DEFAULT_WEBHOOK_TIMEOUT_MS
    )]
    pub webhook_timeout_ms: u64,

    /// A failing delivery is retried until its event is this old, then dead-lettered.
    #[arg(
        long,
        env = "PAY_WEBHOOK_MAX_AGE_SECS",
        value_name = "PAY_WEBHOOK_MAX_AGE_SECS",
        default_value_t = DEFAULT_WEBHOOK_MAX_AGE_SECS
    )]
    pub webhook_max_age_secs: u64,

    /// The first retry's delay in seconds; each later one doubles (with jitter, at most 1 h).
    #[arg(
        long,
        env = "PAY_WEBHOOK_BACKOFF_SECS",
        value_name = "PAY_WEBHOOK_BACKOFF_SECS",
        default_value_t = DEFAULT_WEBHOOK_BACKOFF_SECS
    )]
    pub webhook_backoff_secs: u64,
}

pub const DEFAULT_EVENT_POLL_MS: u64 = 500;
pub const DEFAULT_EVENT_RETENTION_DAYS: u64 = 30;
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_WEBHOOK_MAX_AGE_SECS: u64 = 86_400;
pub const DEFAULT_WEBHOOK_BACKOFF_SECS: u64 = 5;

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            event_poll_ms: DEFAULT_EVENT_POLL_MS,
            event_retention_days: DEFAULT_EVENT_RETENTION_DAYS,
            webhook_urls: Vec::new(),
            webhook_secret: None,
            webhook_timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
            webhook_max_age_secs: DEFAULT_WEBHOOK_MAX_AGE_SECS,
            webhook_backoff_secs: DEFAULT_WEBHOOK_BACKOFF_SECS,
        }
    }
}

impl EventsConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(10..=60_000).contains(&self.event_poll_ms) {
            return Err("PAY_EVENT_POLL_MS must be between 10 and 60000".into());
        }
        if self.event_retention_days == 0 {
            return Err("PAY_EVENT_RETENTION_DAYS must be > 0".into());
        }
        for url in self.webhook_endpoints() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("PAY_WEBHOOK_URLS: {url:?} is not an http(s) URL"));
            }
        }
        if !self.webhook_endpoints().is_empty()
            && self.webhook_secret.as_ref().is_none_or(Secret::is_empty)
        {
            return Err("PAY_WEBHOOK_SECRET is required when PAY_WEBHOOK_URLS is set".into());
        }
        if self.webhook_timeout_ms == 0 {
            return Err("PAY_WEBHOOK_TIMEOUT_MS must be > 0".into());
        }
        if self.webhook_backoff_secs == 0 {
            return Err("PAY_WEBHOOK_BACKOFF_SECS must be > 0".into());
        }
        Ok(())
    }

    /// The configured endpoints, blanks dropped.
    pub fn webhook_endpoints(&self) -> Vec<String> {
        self.webhook_urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.event_poll_ms)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_days.saturating_mul(86_400))
    }
}
