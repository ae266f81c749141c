//! `wxmp-pay`: parses the config, initialises telemetry, binds and serves.

use clap::Parser;
use pay_service::Config;
use service_kit::Shutdown;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    service_kit::telemetry::init(&config.telemetry)?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
    pay_service::serve(config, listener, Shutdown::on_signals()).await?;
    Ok(())
}
