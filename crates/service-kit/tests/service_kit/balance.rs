//! Client-side balancing over replicas, and the drain that lets callers leave a stopping one
//! first: two real gRPC servers on loopback, one channel over both.

use std::time::Duration;

use service_kit::{
    Shutdown,
    grpc::{DrainConfig, serve_draining},
};
use tokio::net::TcpListener;
use tonic::{Code, service::Routes};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A server whose health knows the service `name` (so a check of `name` tells which replica
/// answered: the other says NOT_FOUND).
async fn replica(
    name: &'static str,
    drain_ms: u64,
) -> (String, Shutdown, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        // Health (added by serve_draining) is the only service.
        serve_draining(
            listener,
            Routes::default(),
            &[name],
            stop,
            || async { true },
            None,
            DrainConfig {
                drain_delay_ms: drain_ms,
            },
        )
        .await
        .unwrap();
    });
    (url, shutdown, task)
}

/// Which replica answered one check through `client` (None: the call failed): only `a`
/// knows the service "a", `b` answers NOT_FOUND.
async fn who(client: &mut HealthClient<tonic::transport::Channel>) -> Option<&'static str> {
    let request = HealthCheckRequest {
        service: "a".into(),
    };
    match client.check(request).await {
        Ok(_) => Some("a"),
        Err(s) if s.code() == Code::NotFound => Some("b"),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_replicas_and_leave_a_draining_one_first() {
    let (a, stop_a, task_a) = replica("a", 1500).await;
    let (b, _stop_b, _task_b) = replica("b", 0).await;
    let channel = service_kit::grpc::channel(
        &format!("{a}, {b}"),
        Duration::from_secs(1),
        Duration::from_secs(2),
    )
    .unwrap();
    let mut client = HealthClient::new(channel);

    // Per call, not per connection: both replicas answer.
    let mut seen = std::collections::HashMap::new();
    for _ in 0..40 {
        *seen.entry(who(&mut client).await).or_insert(0) += 1;
    }
    assert!(seen.get(&Some("a")).is_some_and(|n| *n > 3), "{seen:?}");
    assert!(seen.get(&Some("b")).is_some_and(|n| *n > 3), "{seen:?}");
    assert!(!seen.contains_key(&None), "{seen:?}");

    // `a` stops: NOT_SERVING for 1.5 s, then gone. No call fails meanwhile or after, and
    // once the callers noticed (a probe is every 0.5 s), every call goes to `b`.
    stop_a.trigger();
    let started = std::time::Instant::now();
    let mut last_a = None;
    while !task_a.is_finished() || started.elapsed() < Duration::from_secs(2) {
        match who(&mut client).await {
            Some("a") => last_a = Some(started.elapsed()),
            Some(_) => {}
            None => panic!("a call failed while `a` drained"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "`a` never stopped"
        );
    }
    if let Some(at) = last_a {
        assert!(
            at < Duration::from_millis(1500),
            "`a` answered at {at:?}, after its drain"
        );
    }
    for _ in 0..20 {
        assert_eq!(who(&mut client).await, Some("b"));
    }
}

#[tokio::test]
async fn one_address_is_a_plain_channel_and_bad_lists_are_refused() {
    assert!(service_kit::balance::is_single_address(
        "http://127.0.0.1:1"
    ));
    assert!(!service_kit::balance::is_single_address(
        "http://127.0.0.1:1,http://127.0.0.1:2"
    ));
    assert!(!service_kit::balance::is_single_address(
        "http://wxmp-pay-headless:50053"
    ));
    assert_eq!(
        service_kit::balance::split_urls(" http://a:1 ,, http://b:2 "),
        vec!["http://a:1", "http://b:2"]
    );
    let timeout = Duration::from_secs(1);
    assert!(service_kit::grpc::channel("http://a:1,not a url", timeout, timeout).is_err());
    assert!(service_kit::grpc::channel("", timeout, timeout).is_err());
}
