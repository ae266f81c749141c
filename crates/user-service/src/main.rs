use clap::Parser;
use service_kit::Shutdown;
use user_service::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    service_kit::telemetry::init(&config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| format!("USER_LISTEN_ADDR {}: {e}", config.listen_addr))?;
    user_service::serve(config, listener, Shutdown::on_signals()).await?;
    Ok(())
}
