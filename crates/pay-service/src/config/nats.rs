//! `PAY_EVENTS_NATS_*`: the relay of order events into NATS JetStream
//! ([`crate::events::relay`]). Off unless `PAY_EVENTS_NATS_URL` is set.

use std::{path::PathBuf, time::Duration};

use service_kit::Secret;

/// Default of `PAY_EVENTS_NATS_STREAM`.
pub const DEFAULT_NATS_STREAM: &str = "WXMP_ORDERS";
/// Default of `PAY_EVENTS_NATS_SUBJECT_PREFIX`: subjects are `<prefix>.<kind>`.
pub const DEFAULT_NATS_SUBJECT_PREFIX: &str = "wxmp.orders";
/// Default of `PAY_EVENTS_NATS_MAX_AGE_SECS` (7 days).
pub const DEFAULT_NATS_MAX_AGE_SECS: u64 = 7 * 86_400;
/// Default of `PAY_EVENTS_NATS_DUPLICATE_WINDOW_SECS` (JetStream's own default, 2 min).
pub const DEFAULT_NATS_DUPLICATE_WINDOW_SECS: u64 = 120;
/// Default of `PAY_EVENTS_NATS_REPLICAS`.
pub const DEFAULT_NATS_REPLICAS: usize = 1;
/// Default of `PAY_EVENTS_NATS_LEASE_MS`.
pub const DEFAULT_NATS_LEASE_MS: u64 = 5_000;
/// Default of `PAY_EVENTS_NATS_ACK_TIMEOUT_MS`.
pub const DEFAULT_NATS_ACK_TIMEOUT_MS: u64 = 2_000;
/// Default of `PAY_EVENTS_NATS_BATCH`.
pub const DEFAULT_NATS_BATCH: i64 = 500;

/// The NATS JetStream relay. Off by default.
#[derive(clap::Args, Clone, Debug)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated (`nats://host:4222`, `tls://host:4222`); unset = no
    /// relay. May hold `user:password@` (never logged).
    #[arg(
        long,
        env = "PAY_EVENTS_NATS_URL",
        value_name = "PAY_EVENTS_NATS_URL",
        hide_env_values = true
    )]
    pub nats_url: Option<Secret>,

    /// The JetStream stream the relay publishes to (created at start when missing).
    #[arg(long, env = "PAY_EVENTS_NATS_STREAM", value_name = "PAY_EVENTS_NATS_STREAM", default_value = DEFAULT_NATS_STREAM)]
    pub nats_stream: String,

    /// Subjects are `<prefix>.<kind>` (kind in lower snake case, e.g. `wxmp.orders.order_paid`);
    /// the stream holds `<prefix>.>`.
    #[arg(long, env = "PAY_EVENTS_NATS_SUBJECT_PREFIX", value_name = "PAY_EVENTS_NATS_SUBJECT_PREFIX", default_value = DEFAULT_NATS_SUBJECT_PREFIX)]
    pub nats_subject_prefix: String,

    /// The stream keeps a message this many seconds (JetStream `max_age`).
    #[arg(long, env = "PAY_EVENTS_NATS_MAX_AGE_SECS", value_name = "PAY_EVENTS_NATS_MAX_AGE_SECS", default_value_t = DEFAULT_NATS_MAX_AGE_SECS,
          value_parser = clap::value_parser!(u64).range(60..=3_153_600_000))]
    pub nats_max_age_secs: u64,

    /// JetStream drops a message whose `Nats-Msg-Id` it stored within this many seconds.
    #[arg(long, env = "PAY_EVENTS_NATS_DUPLICATE_WINDOW_SECS", value_name = "PAY_EVENTS_NATS_DUPLICATE_WINDOW_SECS", default_value_t = DEFAULT_NATS_DUPLICATE_WINDOW_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub nats_duplicate_window_secs: u64,

    /// Copies of the stream in a JetStream cluster (1, 3 or 5; 3 in production).
    #[arg(long, env = "PAY_EVENTS_NATS_REPLICAS", value_name = "PAY_EVENTS_NATS_REPLICAS", default_value_t = DEFAULT_NATS_REPLICAS)]
    pub nats_replicas: usize,

    /// NATS user (with PAY_EVENTS_NATS_PASSWORD).
    #[arg(
        long,
        env = "PAY_EVENTS_NATS_USER",
        value_name = "PAY_EVENTS_NATS_USER"
    )]
    pub nats_user: Option<String>,

    /// NATS password of PAY_EVENTS_NATS_USER.
    #[arg(
        long,
        env = "PAY_EVENTS_NATS_PASSWORD",
        value_name = "PAY_EVENTS_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<Secret>,

    /// An nkey seed (`SU...`) to authenticate with.
    #[arg(
        long,
        env = "PAY_EVENTS_NATS_NKEY_SEED",
        value_name = "PAY_EVENTS_NATS_NKEY_SEED",
        hide_env_values = true
    )]
    pub nats_nkey_seed: Option<Secret>,

    /// A `.creds` file (JWT + nkey seed) to authenticate with.
    #[arg(
        long,
        env = "PAY_EVENTS_NATS_CREDS_FILE",
        value_name = "PAY_EVENTS_NATS_CREDS_FILE"
    )]
    pub nats_creds_file: Option<PathBuf>,

    /// PEM file of the CA(s) that signed the NATS server's certificate.
    #[arg(
        long,
        env = "PAY_EVENTS_NATS_CA_FILE",
        value_name = "PAY_EVENTS_NATS_CA_FILE"
    )]
    pub nats_ca_file: Option<PathBuf>,

    /// Refuse a connection that is not TLS.
    #[arg(long, env = "PAY_EVENTS_NATS_REQUIRE_TLS", value_name = "PAY_EVENTS_NATS_REQUIRE_TLS", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub nats_require_tls: bool,

    /// How long a replica's claim to publish lasts without renewal: another replica takes over
    /// this long after the publishing one died.
    #[arg(long, env = "PAY_EVENTS_NATS_LEASE_MS", value_name = "PAY_EVENTS_NATS_LEASE_MS", default_value_t = DEFAULT_NATS_LEASE_MS,
          value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub nats_lease_ms: u64,

    /// How long the relay waits for JetStream's ack of a message (at most half the lease).
    #[arg(long, env = "PAY_EVENTS_NATS_ACK_TIMEOUT_MS", value_name = "PAY_EVENTS_NATS_ACK_TIMEOUT_MS", default_value_t = DEFAULT_NATS_ACK_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub nats_ack_timeout_ms: u64,

    /// Events published per batch (acks awaited together).
    #[arg(long, env = "PAY_EVENTS_NATS_BATCH", value_name = "PAY_EVENTS_NATS_BATCH", default_value_t = DEFAULT_NATS_BATCH,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub nats_batch: i64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            nats_stream: DEFAULT_NATS_STREAM.into(),
            nats_subject_prefix: DEFAULT_NATS_SUBJECT_PREFIX.into(),
            nats_max_age_secs: DEFAULT_NATS_MAX_AGE_SECS,
            nats_duplicate_window_secs: DEFAULT_NATS_DUPLICATE_WINDOW_SECS,
            nats_replicas: DEFAULT_NATS_REPLICAS,
            nats_user: None,
            nats_password: None,
            nats_nkey_seed: None,
            nats_creds_file: None,
            nats_ca_file: None,
            nats_require_tls: false,
            nats_lease_ms: DEFAULT_NATS_LEASE_MS,
            nats_ack_timeout_ms: DEFAULT_NATS_ACK_TIMEOUT_MS,
            nats_batch: DEFAULT_NATS_BATCH,
        }
    }
}

impl NatsConfig {
    /// On when `PAY_EVENTS_NATS_URL` is set and not blank.
    pub fn enabled(&self) -> bool {
        self.nats_url
            .as_ref()
            .is_some_and(|u| !u.expose().trim().is_empty())
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        let stream = &self.nats_stream;
        if stream.is_empty()
            || stream.len() > 255
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "PAY_EVENTS_NATS_STREAM must be 1-255 of A-Z a-z 0-9 _ -, not {stream:?}"
            ));
        }
        let prefix = &self.nats_subject_prefix;
        if prefix.is_empty()
            || prefix.split('.').any(|token| {
                token.is_empty()
                    || !token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
        {
            return Err(format!(
                "PAY_EVENTS_NATS_SUBJECT_PREFIX must be dot-separated tokens of A-Z a-z 0-9 _ - (no wildcards), not {prefix:?}"
            ));
        }
        if ![1, 3, 5].contains(&self.nats_replicas) {
            return Err("PAY_EVENTS_NATS_REPLICAS must be 1, 3 or 5".into());
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return Err("PAY_EVENTS_NATS_USER and PAY_EVENTS_NATS_PASSWORD go together".into());
        }
        let methods = [
            self.nats_user.is_some(),
            self.nats_nkey_seed.is_some(),
            self.nats_creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err("PAY_EVENTS_NATS_USER/PASSWORD, PAY_EVENTS_NATS_NKEY_SEED and PAY_EVENTS_NATS_CREDS_FILE: set one at most".into());
        }
        if let Some(seed) = &self.nats_nkey_seed
            && !seed.expose().trim().starts_with("SU")
        {
            return Err("PAY_EVENTS_NATS_NKEY_SEED must be a user nkey seed (SU...)".into());
        }
        for (var, path) in [
            ("PAY_EVENTS_NATS_CREDS_FILE", &self.nats_creds_file),
            ("PAY_EVENTS_NATS_CA_FILE", &self.nats_ca_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(format!("{var}: {} is not a readable file", path.display()));
            }
        }
        // A replica must be able to publish a batch well inside its lease.
        if self.nats_ack_timeout_ms.saturating_mul(2) > self.nats_lease_ms {
            return Err(
                "PAY_EVENTS_NATS_ACK_TIMEOUT_MS must be at most half of PAY_EVENTS_NATS_LEASE_MS"
                    .into(),
            );
        }
        // A relay that dies after publishing and before saving its cursor republishes at most
        // one lease later: the window must cover that for JetStream to drop the repeat.
        if self.nats_duplicate_window_secs.saturating_mul(1000)
            < self.nats_lease_ms.saturating_mul(4)
        {
            return Err(
                "PAY_EVENTS_NATS_DUPLICATE_WINDOW_SECS must cover 4 x PAY_EVENTS_NATS_LEASE_MS"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.nats_lease_ms)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.nats_ack_timeout_ms)
    }

    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.nats_max_age_secs)
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.nats_duplicate_window_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> NatsConfig {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            nats: NatsConfig,
        }
        Cli::try_parse_from(["x", "--nats-url", "nats://127.0.0.1:4222"])
            .unwrap()
            .nats
    }

    #[test]
    fn off_by_default_and_defaults_are_valid() {
        assert!(!NatsConfig::default().enabled());
        assert_eq!(NatsConfig::default().validate(), Ok(()));
        let c = on();
        assert!(c.enabled());
        assert_eq!(c.nats_stream, DEFAULT_NATS_STREAM);
        assert_eq!(c.nats_subject_prefix, DEFAULT_NATS_SUBJECT_PREFIX);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn bad_settings_name_their_variable() {
        type Spoil = fn(&mut NatsConfig);
        let cases: [(&str, Spoil); 8] = [
            ("PAY_EVENTS_NATS_ACK_TIMEOUT_MS", |c| {
                c.nats_ack_timeout_ms = 4000;
            }),
            ("PAY_EVENTS_NATS_STREAM", |c| c.nats_stream = "a.b".into()),
            ("PAY_EVENTS_NATS_SUBJECT_PREFIX", |c| {
                c.nats_subject_prefix = "wxmp.*".into();
            }),
            ("PAY_EVENTS_NATS_SUBJECT_PREFIX", |c| {
                c.nats_subject_prefix = "wxmp..orders".into();
            }),
            ("PAY_EVENTS_NATS_REPLICAS", |c| c.nats_replicas = 2),
            ("PAY_EVENTS_NATS_PASSWORD", |c| {
                c.nats_user = Some("u".into());
            }),
            ("PAY_EVENTS_NATS_NKEY_SEED", |c| {
                c.nats_nkey_seed = Some(Secret::new("not-a-seed"));
            }),
            ("PAY_EVENTS_NATS_DUPLICATE_WINDOW_SECS", |c| {
                c.nats_duplicate_window_secs = 1;
                c.nats_lease_ms = 10_000;
            }),
        ];
        for (var, spoil) in cases {
            let mut c = on();
            spoil(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.contains(var), "{var}: {err}");
        }
    }
}
