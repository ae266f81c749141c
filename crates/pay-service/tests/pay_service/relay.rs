//! The NATS JetStream relay against a real `nats-server -js` of the test's own (free port, own
//! store; see `wxmp_testkit::nats`), on PostgreSQL. The relay replicas are processes of their
//! own (this test binary re-run as [`relay_replica`]), so one can be SIGKILLed, and each
//! serves its metrics for the test to scrape.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use pay_service::{
    Clock, NatsConfig,
    events::{
        self, EventKind, NewEvent,
        relay::{self, Relay, RelaySettings, nats::NatsSink},
        webhooks,
    },
};
use service_kit::{
    Secret, Shutdown,
    db::{Database, PoolOptions},
};
use wxmp_testkit::{db::migrated_postgres_url, nats::NatsServer};

const SECRET: &str = "whsec-relay-test";
const STREAM: &str = "WXMP_ORDERS";
const LEASE_MS: u64 = 1500;
const TEST_PATH: &str = "relay::relay_replica";

/// A relay replica: what `wxmp-pay` runs with `PAY_EVENTS_NATS_URL` set, alone in a process
/// the parent test started (and kills). Not a test of its own: run only by the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a relay replica process, started by the relay tests"]
async fn relay_replica() {
    let env = |name: &str| std::env::var(name).unwrap();
    let metrics: std::net::SocketAddr = env("WXMP_RELAY_METRICS").parse().unwrap();
    service_kit::telemetry::init_metrics(Some(metrics)).expect("metrics listener");
    let db = Database::connect(&env("WXMP_RELAY_DB"), PoolOptions::default()).unwrap();
    let config = nats_config(&env("WXMP_RELAY_NATS"));
    let sink = NatsSink::connect(&config).await.unwrap();
    let relay = Relay::new(db, Clock::system(), sink, settings());
    relay.register().await.unwrap();
    // Runs until the parent kills this process, or closes its stdin (a graceful stop).
    let stop = Shutdown::new();
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.trigger();
        });
    }
    relay.run(stop).await;
}

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        nats_url: Some(Secret::new(url)),
        nats_lease_ms: LEASE_MS,
        nats_ack_timeout_ms: 700,
        nats_batch: 200,
        ..NatsConfig::default()
    }
}

fn settings() -> RelaySettings {
    RelaySettings {
        lease: Duration::from_millis(LEASE_MS),
        batch: 200,
        poll: Duration::from_millis(100),
        secret: Some(Secret::new(SECRET)),
    }
}

/// A relay replica process; SIGKILLed when dropped.
struct Replica {
    child: Child,
    metrics: String,
}

impl Replica {
    fn start(db_url: &str, nats_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                TEST_PATH,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WXMP_RELAY_DB", db_url)
            .env("WXMP_RELAY_NATS", nats_url)
            .env("WXMP_RELAY_METRICS", format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// A metric's value (None: not scraped, e.g. not set yet or the process is gone).
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it answers Some, or fails after `secs` seconds.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count` events of `orders` orders (interleaved: order k gets every `orders`-th event),
/// appended `per_tx` at a time, with `pause` between transactions.
async fn write_events(db: Database, count: usize, orders: usize, per_tx: usize, pause: Duration) {
    let mut n = 0;
    while n < count {
        let batch: Vec<NewEvent> = (n..(n + per_tx).min(count))
            .map(|i| {
                let order_no = format!("WXR{:06}", i % orders);
                let kind = EventKind::ALL[i % EventKind::ALL.len()];
                NewEvent {
                    payload: serde_json::json!({ "order_no": order_no, "state": "PAID", "n": i })
                        .to_string(),
                    order_no,
                    kind: kind.as_str().to_owned(),
                    created_at: Clock::system().now(),
                }
            })
            .collect();
        n += batch.len();
        events::append(&db, &batch).await.unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// What the durable consumer received, in delivery order.
struct Received {
    id: i64,
    subject: String,
    headers: HashMap<String, String>,
    body: String,
}

/// Reads `want` messages with a durable pull consumer, then checks that nothing more comes.
async fn consume(url: &str, durable: &str, want: usize) -> Vec<Received> {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js.get_stream(STREAM).await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_rounds = 0;
    while got.len() < want || quiet_rounds < 1 {
        assert!(
            Instant::now() < deadline,
            "consumer got {} of {want}",
            got.len()
        );
        let mut batch = consumer
            .batch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let before = got.len();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let headers: HashMap<String, String> = message
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(k, v)| (k.to_string(), v.first().unwrap().to_string()))
                .collect();
            got.push(Received {
                id: headers["Nats-Msg-Id"].parse().unwrap(),
                subject: message.subject.to_string(),
                body: String::from_utf8(message.payload.to_vec()).unwrap(),
                headers,
            });
            message.ack().await.unwrap();
        }
        if got.len() >= want && got.len() == before {
            quiet_rounds += 1;
        }
    }
    got
}

/// Every event exactly once, each order's in id order, with the webhook body and headers.
async fn check_delivery(db: &Database, got: &[Received]) {
    let all = events::after(db, 0, &[], 1_000_000).await.unwrap();
    let by_id: BTreeMap<i64, &events::Event> = all.iter().map(|e| (e.id, e)).collect();
    let ids: Vec<i64> = got.iter().map(|r| r.id).collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was delivered twice");
    assert_eq!(
        unique,
        by_id.keys().copied().collect::<HashSet<_>>(),
        "delivered ids differ from the outbox"
    );
    let mut last_of_order: HashMap<&str, i64> = HashMap::new();
    for r in got {
        let event = by_id[&r.id];
        let last = last_of_order.insert(&event.order_no, r.id);
        assert!(
            last.is_none_or(|l| l < r.id),
            "order {} out of order: {last:?} then {}",
            event.order_no,
            r.id
        );
        assert_eq!(
            r.subject,
            format!("wxmp.orders.{}", event.kind.to_ascii_lowercase())
        );
        assert_eq!(r.body, webhooks::body_of(event));
        assert_eq!(r.headers["X-Wxmp-Event-Id"], r.id.to_string());
        assert_eq!(r.headers["Content-Type"], "application/json");
        let timestamp: i64 = r.headers["X-Wxmp-Timestamp"].parse().unwrap();
        assert_eq!(
            r.headers["X-Wxmp-Signature"],
            format!(
                "sha256={}",
                webhooks::signature(SECRET, timestamp, r.body.as_bytes())
            )
        );
    }
}

async fn stream_messages(url: &str) -> u64 {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream(STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn cursor(db: &Database) -> i64 {
    relay::cursor(db, &format!("nats:{STREAM}"))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// 10,000 events through two replicas on one database; the publishing one SIGKILLed
/// mid-stream: the other takes over, a durable consumer sees every event exactly once, each
/// order's in id order, with the webhook body and headers. Then a relay that died after the
/// server's ack and before its cursor write is played (the cursor set back 100 events): the
/// 100 republished messages are dropped by JetStream's de-duplication, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_two_replicas_and_a_sigkill() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = migrated_postgres_url("wxmp_pay", &pay_service::MIGRATIONS)
        .await
        .unwrap();
    let db = Database::connect(&url, PoolOptions::default()).unwrap();
    let mut replicas = [
        Replica::start(&url, &nats.url()),
        Replica::start(&url, &nats.url()),
    ];
    // Both registered (the cursor row exists) and one publishes.
    let leader = eventually("a replica to take the lease", 30, || async {
        for (i, r) in replicas.iter().enumerate() {
            if r.metric("wxmp_pay_nats_relay_leader").await == Some(1.0) {
                return Some(i);
            }
        }
        None
    })
    .await;

    const EVENTS: usize = 10_000;
    let writer = tokio::spawn(write_events(
        db.clone(),
        EVENTS,
        500,
        100,
        Duration::from_millis(5),
    ));
    // Mid-stream: the leader has published some thousands, then dies without a word.
    eventually("the relay to publish 3000 events", 60, || async {
        (cursor(&db).await >= 3000).then_some(())
    })
    .await;
    replicas[leader].kill();
    let killed_at = Instant::now();
    let survivor = &replicas[1 - leader];
    eventually("the other replica to take over", 30, || async {
        (survivor.metric("wxmp_pay_nats_relay_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_millis(LEASE_MS * 4),
        "takeover took {takeover:?}"
    );
    writer.await.unwrap();
    let last = events::last_id(&db).await.unwrap();
    eventually("the relay to publish everything", 120, || async {
        (cursor(&db).await == last).then_some(())
    })
    .await;

    let got = consume(&nats.url(), "test-consumer", EVENTS).await;
    assert_eq!(got.len(), EVENTS);
    check_delivery(&db, &got).await;
    assert_eq!(stream_messages(&nats.url()).await, EVENTS as u64);
    let duplicates_at_takeover = survivor
        .metric("wxmp_pay_nats_duplicates_total")
        .await
        .unwrap_or(0.0);
    eprintln!(
        "takeover after {takeover:?}; duplicates dropped by JetStream at the takeover: {duplicates_at_takeover}"
    );

    // The relay died after the ack, before its cursor write: 100 events go out again.
    let relay_name = format!("nats:{STREAM}");
    relay::set_cursor(&db, &relay_name, last - 100)
        .await
        .unwrap();
    eventually(
        "the republished events to be dropped as duplicates",
        30,
        || async {
            let dups = survivor.metric("wxmp_pay_nats_duplicates_total").await?;
            (cursor(&db).await == last && dups == duplicates_at_takeover + 100.0).then_some(())
        },
    )
    .await;
    assert_eq!(stream_messages(&nats.url()).await, EVENTS as u64);
    // A second durable consumer from the start sees the same, once each.
    let again = consume(&nats.url(), "second-consumer", EVENTS).await;
    assert_eq!(again.len(), EVENTS);
}

/// NATS stopped under load and started again a while later: nothing is lost, the lag metric
/// rises while it is down and returns to 0 after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_under_load_loses_nothing_and_the_lag_returns_to_zero() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = migrated_postgres_url("wxmp_pay", &pay_service::MIGRATIONS)
        .await
        .unwrap();
    let db = Database::connect(&url, PoolOptions::default()).unwrap();
    let replica = Replica::start(&url, &nats.url());
    eventually("the replica to take the lease", 30, || async {
        (replica.metric("wxmp_pay_nats_relay_leader").await == Some(1.0)).then_some(())
    })
    .await;

    const EVENTS: usize = 3000;
    let writer = tokio::spawn(write_events(
        db.clone(),
        EVENTS,
        100,
        10,
        Duration::from_millis(10),
    ));
    eventually("the relay to publish 500 events", 60, || async {
        (cursor(&db).await >= 500).then_some(())
    })
    .await;
    nats.stop();
    let lag_at_stop = eventually("the lag metric to rise", 30, || async {
        let lag = replica.metric("wxmp_pay_nats_lag_events").await?;
        (lag > 0.0).then_some(lag)
    })
    .await;
    eventually("the lag to keep rising while NATS is down", 30, || async {
        let lag = replica.metric("wxmp_pay_nats_lag_events").await?;
        (lag >= lag_at_stop + 100.0).then_some(())
    })
    .await;
    nats.restart();
    writer.await.unwrap();
    let last = events::last_id(&db).await.unwrap();
    eventually("the relay to catch up", 60, || async {
        (cursor(&db).await == last).then_some(())
    })
    .await;
    eventually("the lag metrics to return to 0", 30, || async {
        let events = replica.metric("wxmp_pay_nats_lag_events").await?;
        let seconds = replica.metric("wxmp_pay_nats_lag_seconds").await?;
        (events == 0.0 && seconds == 0.0).then_some(())
    })
    .await;
    let got = consume(&nats.url(), "after-outage", EVENTS).await;
    assert_eq!(got.len(), EVENTS);
    check_delivery(&db, &got).await;
}

/// The relay's SQL on SQLite (the embedded default), in process: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_on_sqlite_too() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = wxmp_testkit::db::fresh_sqlite_url(dir.path(), "relay");
    pay_service::migrate(&url).await.unwrap();
    let db = Database::connect(&url, PoolOptions::default()).unwrap();
    let config = nats_config(&nats.url());
    let relay = Relay::new(
        db.clone(),
        Clock::system(),
        NatsSink::connect(&config).await.unwrap(),
        settings(),
    );
    relay.register().await.unwrap();
    let stop = Shutdown::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    write_events(db.clone(), 600, 30, 50, Duration::ZERO).await;
    let last = events::last_id(&db).await.unwrap();
    eventually("the relay to publish everything", 60, || async {
        (cursor(&db).await == last).then_some(())
    })
    .await;
    assert_eq!(
        relay::lag(&db, &format!("nats:{STREAM}"), Clock::system().now())
            .await
            .unwrap(),
        relay::Lag::default()
    );
    stop.trigger();
    task.await.unwrap();
    let got = consume(&nats.url(), "sqlite", 600).await;
    assert_eq!(got.len(), 600);
    check_delivery(&db, &got).await;

    // The README's Rust consumer, as written there (a filtered durable consumer read with
    // `messages()`), on this server: the ORDER_PAID events, in order.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("WXMP_ORDERS").await.unwrap();
    let shipping = stream
        .get_or_create_consumer(
            "shipping",
            pull::Config {
                durable_name: Some("shipping".into()),
                filter_subject: "wxmp.orders.order_paid".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut messages = shipping.messages().await.unwrap();
    // As many as were published (the writer cycles through every kind, so it depends on how
    // many kinds there are).
    let published = got
        .iter()
        .filter(|m| m.subject == "wxmp.orders.order_paid")
        .count();
    assert!(published > 0);
    let mut paid = Vec::new();
    while paid.len() < published {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the README consumer receives")
            .unwrap()
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(event["kind"], "ORDER_PAID");
        paid.push(event["id"].as_i64().unwrap());
        message.ack().await.unwrap();
    }
    assert!(paid.is_sorted(), "{paid:?}");
}
