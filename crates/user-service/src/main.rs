use clap::Parser;
use service_kit::Shutdown;
use user_service::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    service_kit::telemetry::init(&config.telemetry)?;
    let listener = config.listen.bind().await?;
    user_service::serve(config, listener, Shutdown::on_signals()).await?;
    Ok(())
}
