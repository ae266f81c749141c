use clap::Parser;
use gateway::Config;
use service_kit::Shutdown;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(e) = service_kit::telemetry::init(&config.telemetry) {
        eprintln!("wxmp-gateway: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let listener = match std::net::TcpListener::bind(&config.listen_addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "wxmp-gateway: cannot listen on GATEWAY_LISTEN_ADDR={}: {e}",
                config.listen_addr
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match gateway::serve(config, listener, Shutdown::on_signals()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxmp-gateway: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
