//! `wxmp-pay`: parses the config, initialises telemetry, binds and serves.

use clap::Parser;
use pay_service::Config;
use service_kit::Shutdown;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    service_kit::telemetry::init(&config.telemetry)?;
    config.validate()?;
    let listener = config.listen.bind().await?;
    pay_service::serve(config, listener, Shutdown::on_signals()).await?;
    Ok(())
}
