//! `wxmp-auth`: parses the configuration, initialises telemetry, binds and serves.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = auth_service::Config::parse();
    if let Err(e) = service_kit::telemetry::init(&config.telemetry) {
        eprintln!("wxmp-auth: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = config.validate() {
        tracing::error!("invalid configuration: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let listener = match config.listen.bind().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match auth_service::serve(config, listener, service_kit::Shutdown::on_signals()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("wxmp-auth stopped: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
