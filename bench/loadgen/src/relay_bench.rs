//! `wxmp-relay-bench`: the order-event relay into NATS JetStream, measured beside the outbox's
//! own write rate. `bench/run.sh` (`make bench`) runs it against a `nats-server -js` it starts
//! and a fresh PostgreSQL database; by hand:
//!
//! ```text
//! wxmp-relay-bench --database-url postgres://postgres@127.0.0.1:5432/<fresh db> \
//!   --nats-url nats://127.0.0.1:<port> --events 20000 --out target/bench/relay.md
//! ```
//!
//! Three windows, each over `--events` events written by `--writers` tasks, one event per
//! transaction (as a state change writes it):
//! 1. **outbox write rate**: the relay off; events committed per second;
//! 2. **relay throughput**: the events written with the relay stopped, then the relay started:
//!    events acknowledged by JetStream per second while it drains the backlog;
//! 3. **end to end**: the relay and a durable pull consumer running while the writers write:
//!    for each event, the time from its commit (the append returned) to its arrival at the
//!    consumer, p50/p99/max.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use clap::Parser;
use futures::StreamExt as _;
use pay_service::{
    Clock, NatsConfig,
    events::{
        self, EventKind, NewEvent,
        relay::{self, Relay, RelaySettings, nats::NatsSink},
    },
};
use service_kit::{
    Secret, Shutdown,
    db::{Database, PoolOptions},
};

#[derive(Parser, Debug)]
#[command(
    name = "wxmp-relay-bench",
    about = "Measure the NATS JetStream relay beside the outbox write rate"
)]
struct Cli {
    /// A fresh PostgreSQL (or SQLite) database; pay-service's migrations are run on it.
    #[arg(long, env = "BENCH_RELAY_DATABASE_URL")]
    database_url: String,
    /// A NATS server with JetStream (its stream WXMP_ORDERS is created or used).
    #[arg(long, env = "BENCH_RELAY_NATS_URL")]
    nats_url: String,
    /// Events per window.
    #[arg(long, env = "BENCH_RELAY_EVENTS", default_value_t = 20_000)]
    events: usize,
    /// Concurrent writers.
    #[arg(long, env = "BENCH_RELAY_WRITERS", default_value_t = 8)]
    writers: usize,
    /// Events per relay batch (PAY_EVENTS_NATS_BATCH).
    #[arg(long, env = "BENCH_RELAY_BATCH", default_value_t = 500)]
    batch: i64,
    /// Markdown section written here (appended to bench/results.md by run.sh).
    #[arg(long, env = "BENCH_RELAY_OUT", default_value = "target/bench/relay.md")]
    out: String,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    pay_service::migrate(&cli.database_url).await?;
    let db = Database::connect(
        &cli.database_url,
        PoolOptions {
            max_size: cli.writers + 4,
            ..PoolOptions::default()
        },
    )?;
    let config = NatsConfig {
        nats_url: Some(Secret::new(cli.nats_url.clone())),
        nats_batch: cli.batch,
        ..NatsConfig::default()
    };
    let settings = RelaySettings {
        lease: config.lease(),
        batch: cli.batch,
        poll: Duration::from_millis(100),
        secret: Some(Secret::new("bench-secret")),
    };
    let name = relay::nats::relay_name(&config.nats_stream);
    relay::register(&db, &name, Clock::system().now()).await?;

    // 1. The outbox alone.
    let (written, secs) = write(&db, cli.events, cli.writers, None).await?;
    let write_rate = per_sec(written, secs);
    eprintln!("relay bench: outbox {write_rate:.0} events/s");

    // 2. The relay draining a backlog of --events.
    relay::set_cursor(&db, &name, events::last_id(&db).await?).await?;
    write(&db, cli.events, cli.writers, None).await?;
    let last = events::last_id(&db).await?;
    let stop = Shutdown::new();
    let started = Instant::now();
    let task = tokio::spawn(
        Relay::new(
            db.clone(),
            Clock::system(),
            NatsSink::connect(&config).await?,
            settings.clone(),
        )
        .run(stop.clone()),
    );
    while relay::cursor(&db, &name).await?.unwrap_or(0) < last {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relay_rate = per_sec(cli.events, started.elapsed().as_secs_f64());
    eprintln!("relay bench: relay {relay_rate:.0} events/s");

    // 3. End to end, the relay following the writers.
    let received: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let consumer = tokio::spawn(consume(
        cli.nats_url.clone(),
        last,
        cli.events,
        received.clone(),
    ));
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let (_, e2e_secs) = write(&db, cli.events, cli.writers, Some(committed.clone())).await?;
    let e2e_write_rate = per_sec(cli.events, e2e_secs);
    consumer.await??;
    stop.trigger();
    task.await?;
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    {
        let committed = committed.lock().map_err(|_| "poisoned")?;
        let received = received.lock().map_err(|_| "poisoned")?;
        for (id, at) in committed.iter() {
            let got = received
                .get(id)
                .ok_or("an event never reached the consumer")?;
            let micros = got.saturating_duration_since(*at).as_micros();
            latency.record(u64::try_from(micros).unwrap_or(u64::MAX))?;
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let section = format!(
        "\n## Order events into NATS JetStream\n\n\
         {events} events per window, {writers} writers (one event per transaction), relay batches of {batch}, \
         PostgreSQL outbox, a local `nats-server -js` ({server}); one relay replica.\n\n\
         | measure | value |\n|---|---|\n\
         | outbox write rate (relay off) | {write_rate:.0} events/s |\n\
         | relay throughput (draining a backlog) | {relay_rate:.0} events/s |\n\
         | outbox write rate with the relay and a consumer running | {e2e_write_rate:.0} events/s |\n\
         | commit → consumer p50 | {p50:.1} ms |\n\
         | commit → consumer p99 | {p99:.1} ms |\n\
         | commit → consumer max | {max:.1} ms |\n",
        events = cli.events,
        writers = cli.writers,
        batch = cli.batch,
        server = cli.nats_url,
        p50 = ms(0.5),
        p99 = ms(0.99),
        max = latency.max() as f64 / 1000.0,
    );
    if let Some(dir) = std::path::Path::new(&cli.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.out, &section)?;
    print!("{section}");
    Ok(())
}

fn per_sec(n: usize, secs: f64) -> f64 {
    n as f64 / secs.max(1e-9)
}

/// Writes `count` events with `writers` tasks, one per transaction; records each commit time
/// in `committed` when given. Answers the events written and the seconds taken.
async fn write(
    db: &Database,
    count: usize,
    writers: usize,
    committed: Option<Arc<Mutex<HashMap<i64, Instant>>>>,
) -> Result<(usize, f64), Error> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (db, committed) = (db.clone(), committed.clone());
        let share = count / writers + usize::from(w < count % writers);
        tasks.push(tokio::spawn(async move {
            for i in 0..share {
                let order_no = format!("BENCH{w:02}{:06}", i / 4);
                let kind = EventKind::ALL[i % EventKind::ALL.len()];
                let event = NewEvent {
                    payload: serde_json::json!({ "order_no": order_no, "amount_fen": 1800 })
                        .to_string(),
                    order_no,
                    kind: kind.as_str().to_owned(),
                    created_at: Clock::system().now(),
                };
                let ids = events::append(&db, &[event]).await?;
                let at = Instant::now();
                if let Some(committed) = &committed {
                    let mut committed = committed.lock().map_err(|_| "poisoned")?;
                    for id in ids {
                        committed.insert(id, at);
                    }
                }
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((count, started.elapsed().as_secs_f64()))
}

/// Receives the `want` events after `after_id` with a durable pull consumer (from the start
/// of the stream, so none is missed while it is created), recording when each arrived.
async fn consume(
    url: String,
    after_id: i64,
    want: usize,
    received: Arc<Mutex<HashMap<i64, Instant>>>,
) -> Result<(), Error> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let stream = js.get_stream("WXMP_ORDERS").await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "bench",
            pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            },
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = 0;
    while seen < want {
        if Instant::now() > deadline {
            return Err(format!("the consumer got {seen} of {want} events in 10 min").into());
        }
        let mut batch = consumer
            .batch()
            .max_messages(1000)
            .expires(Duration::from_millis(200))
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message?;
            let at = Instant::now();
            let id: i64 = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .and_then(|v| v.as_str().parse().ok())
                .ok_or("a message without Nats-Msg-Id")?;
            if id > after_id {
                received.lock().map_err(|_| "poisoned")?.insert(id, at);
                seen += 1;
            }
        }
    }
    Ok(())
}
