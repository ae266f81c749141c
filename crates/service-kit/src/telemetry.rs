//! Logs and metrics setup, the same in every binary.

use std::{net::SocketAddr, str::FromStr, sync::OnceLock};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written: `pretty` for a terminal, `json` for containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pretty" | "text" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use pretty or json")),
        }
    }
}

/// Settings every binary shares (flattened into each binary's config).
#[derive(Clone, Debug, clap::Args)]
pub struct TelemetryConfig {
    /// Log format: pretty or json. The level comes from RUST_LOG (default info).
    #[arg(
        long,
        env = "WXMP_LOG_FORMAT",
        value_name = "WXMP_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// Where to serve Prometheus metrics (`/metrics`); unset disables the listener.
    #[arg(long, env = "WXMP_METRICS_ADDR", value_name = "WXMP_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Installs the global tracing subscriber. Safe to call more than once (later calls do
/// nothing), which matters when several services share one process or one test binary.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
    };
}

static METRICS: OnceLock<Result<(), String>> = OnceLock::new();

/// Bucket bounds (seconds) of every `*_seconds` histogram: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder and its HTTP listener once per process.
pub fn init_metrics(addr: Option<SocketAddr>) -> Result<(), String> {
    let Some(addr) = addr else { return Ok(()) };
    METRICS
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                // Histograms, not summaries: buckets aggregate across replicas
                // (histogram_quantile in deploy/observability's dashboard and alerts).
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
                    LATENCY_BUCKETS,
                )
                .map_err(|e| format!("metrics buckets: {e}"))?
                .install()
                .map_err(|e| format!("metrics listener on {addr}: {e}"))
        })
        .clone()
}

/// Both of the above, from the shared config.
pub fn init(config: &TelemetryConfig) -> Result<(), String> {
    init_tracing(config.log_format);
    init_metrics(config.metrics_addr)
}
