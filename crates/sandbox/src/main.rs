//! `wxmp-sandbox`: the offline WeChat simulator as a process.

use std::net::TcpListener;

use clap::Parser;
use sandbox::Config;
use service_kit::Shutdown;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = Config::parse();
    service_kit::telemetry::init_tracing(config.telemetry.log_format);
    if let Err(e) = service_kit::telemetry::init_metrics(config.telemetry.metrics_addr) {
        tracing::warn!("{e}");
    }
    if let Err(e) = config.validate() {
        tracing::error!("invalid configuration: {e}");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(config.listen_addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("SANDBOX_LISTEN_ADDR {}: {e}", config.listen_addr),
        )
    })?;
    sandbox::serve(config, listener, Shutdown::on_signals()).await
}
