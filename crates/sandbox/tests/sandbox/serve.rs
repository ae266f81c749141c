//! `serve` as services and `wxmp up` use it: their own listener and Shutdown, any runtime.

use std::{net::TcpListener, time::Duration};

use sandbox::Config;
use service_kit::Shutdown;

async fn serve_and_stop() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(sandbox::serve(Config::dev(), listener, shutdown.clone()));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(
        http.get(&url).send().await.unwrap().text().await.unwrap(),
        "ok"
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops on shutdown")
        .unwrap()
        .unwrap();
    assert!(http.get(&url).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_multi_thread_runtime() {
    serve_and_stop().await;
}

#[tokio::test]
async fn serves_on_a_current_thread_runtime() {
    serve_and_stop().await;
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let config = Config {
        notify_time_scale: -1.0,
        ..Config::dev()
    };
    let err = sandbox::spawn(config).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("SANDBOX_NOTIFY_TIME_SCALE"));
}
