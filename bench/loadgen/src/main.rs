//! `wxmp-loadgen`: loads every user-facing path of a running wxmp stack through its gateway,
//! one path at a time, and writes the results table into bench/results.md.
//!
//! `bench/run.sh` (`make bench`) starts the stack and runs this; it can also be pointed at any
//! running stack with a sandbox (`wxmp up`): `wxmp-loadgen --gateway http://127.0.0.1:8080
//! --sandbox http://127.0.0.1:9000`. The sandbox's per-code and per-app rate limits must be off
//! (`SANDBOX_CODE_RATE_PER_MIN=0 SANDBOX_APP_RATE_PER_MIN=0`), or logins fail with 45011.
//!
//! Paths, in this order (each with fresh connections and its own time window), at each
//! concurrency of `--connections`: `GET /healthz` (the ceiling), `GET /me`, `POST /userinfo/`,
//! `POST /pay/` (a new order each), `POST /pay/notify` first delivery (each order of the /pay/
//! window once), the same notifies again (the duplicate path), `POST /login/` (a fresh code
//! each, for returning users); then the floors at that concurrency (`floors.rs`: pgbench,
//! redis-benchmark, the sandbox's jscode2session alone). Last, the scale curve: `/me` and
//! `/userinfo/` at each concurrency of `--scale`, plotted to an SVG.

mod floors;
mod hops;
mod load;
mod plot;
mod prep;
mod procs;
mod report;

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use floors::{Floor, Storage};
use load::{Check, Outcome, Prepared};
use prep::{Merchant, PaidOrder, Setup};
use procs::{CpuSnapshot, CpuSplit, Proc, Sampler};
use report::{ProcMemory, Row, Run};

const PRODUCT: &str = "coffee";

#[derive(Parser, Debug)]
#[command(
    name = "wxmp-loadgen",
    about = "Load every wxmp path and write bench/results.md"
)]
struct Cli {
    /// The gateway's base URL.
    #[arg(long, env = "BENCH_GATEWAY", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The sandbox's base URL (plays the phone during setup).
    #[arg(long, env = "BENCH_SANDBOX", default_value = "http://127.0.0.1:9000")]
    sandbox: String,
    /// Open connections per path: a comma-separated list, every path and floor at each.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value = "32,128")]
    connections: String,
    /// The scale curve's concurrencies for `/me` and `/userinfo/` (empty: no curve).
    #[arg(long, env = "BENCH_SCALE", default_value = "8,16,32,128,512")]
    scale: String,
    /// Where the scale curve's SVG is written (linked from `--out` by its file name).
    #[arg(long, env = "BENCH_PLOT", default_value = "bench/scale.svg")]
    plot: String,
    /// Seconds per path.
    #[arg(long, env = "BENCH_DURATION_SECS", default_value_t = 10)]
    duration_secs: u64,
    /// Worker threads of the generator (the services share the machine with it).
    #[arg(long, env = "BENCH_LOADGEN_THREADS", default_value_t = 1)]
    threads: usize,
    /// Users logged in during setup (tokens for /me, /userinfo/, /pay/).
    #[arg(long, env = "BENCH_USERS", default_value_t = 200)]
    users: usize,
    /// Login codes made before the /login/ window; default 3000 per second of window.
    #[arg(long, env = "BENCH_LOGIN_CODES")]
    login_codes: Option<usize>,
    /// Comma-separated subset of: healthz, me, userinfo, pay, notify, notify-dup, login.
    #[arg(
        long,
        env = "BENCH_PATHS",
        default_value = "healthz,me,userinfo,pay,notify,notify-dup,login"
    )]
    paths: String,
    /// Requests per path in the per-hop breakdown (`/me`, `/userinfo/`, `/pay/`, `/login/`,
    /// one at a time, traced); 0 skips it.
    #[arg(long, env = "BENCH_HOPS", default_value_t = 40)]
    hops: usize,
    /// Orders of the catch-up stage: paid at the sandbox with their notifies dropped, left
    /// for the reconciler (bench/run.sh then restarts pay-service and times the repair); 0
    /// skips it. Their product is `--catch-up-product`.
    #[arg(long, env = "BENCH_CATCHUP_ORDERS", default_value_t = 0)]
    catch_up: usize,
    #[arg(long, env = "BENCH_CATCHUP_PRODUCT", default_value = "catchup")]
    catch_up_product: String,
    /// Where the services write their logs (the breakdown reads their `wxmp::hop` lines).
    #[arg(long, env = "BENCH_LOGS", default_value = "target/bench/logs")]
    logs: String,
    /// Service processes to watch: `name=pid,...`.
    #[arg(long, env = "BENCH_PROCS", default_value = "")]
    procs: String,
    /// The merchant the stack runs with (signs the notifies).
    #[arg(long, env = "WXMP_PAY_MCH_ID", default_value = "1900000109")]
    mch_id: String,
    #[arg(
        long,
        env = "WXMP_PAY_KEY",
        default_value = "devpaykey00000000000000000000key",
        hide_default_value = true
    )]
    pay_key: String,
    /// Markdown file whose generated section is replaced.
    #[arg(long, env = "BENCH_OUT", default_value = "bench/results.md")]
    out: String,
    /// Also write the raw numbers as JSON here.
    #[arg(long, env = "BENCH_JSON")]
    json: Option<String>,
    /// Shown in the report.
    #[arg(long, env = "BENCH_COMMIT", default_value = "unknown")]
    commit: String,
    #[arg(long, env = "BENCH_PROFILE", default_value = "bench-release")]
    profile: String,
    #[arg(
        long,
        env = "BENCH_STORAGE",
        default_value = "PostgreSQL (a fresh database per service) + Redis (a fresh key prefix)"
    )]
    storage: String,
    /// The floors' PostgreSQL (pgbench, psql); no floors without `--user-db` and `--pay-db`.
    #[arg(long, env = "BENCH_PG_HOST", default_value = "127.0.0.1")]
    pg_host: String,
    #[arg(long, env = "BENCH_PG_PORT", default_value_t = 5432)]
    pg_port: u16,
    #[arg(long, env = "BENCH_PG_USER", default_value = "postgres")]
    pg_user: String,
    /// user-service's database (the /me and /userinfo/ floors run on its `users`).
    #[arg(long, env = "BENCH_USER_DB")]
    user_db: Option<String>,
    /// pay-service's database (the /pay/ and notify floors run on its `orders`).
    #[arg(long, env = "BENCH_PAY_DB")]
    pay_db: Option<String>,
    /// The Redis of the Redis floors (redis-benchmark).
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Prefix of the keys the Redis floors write (the run's own).
    #[arg(long, env = "BENCH_REDIS_PREFIX", default_value = "wxmp-bench:floor:")]
    redis_prefix: String,
    /// The app the sandbox's jscode2session floor logs in to, `appid:secret` (the first of
    /// the stack's `WXMP_APPS`).
    #[arg(
        long,
        env = "WXMP_APPS",
        default_value = "wx00000000000dev01:devsecret000000000000000000000ff",
        hide_default_value = true
    )]
    apps: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxmp-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn socket_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// is supported"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// A comma-separated list of connection counts.
fn levels(list: &str) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{l:?} is not a connection count"))
        })
        .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// A path's identity in the report: its label, what one request does, the floors of its
/// steps and its target ratio to the slowest of them.
struct PathSpec {
    path: &'static str,
    what: &'static str,
    floors: &'static [&'static str],
    /// The ratio to the floor this path should reach at a concurrency.
    target: Option<fn(usize) -> f64>,
}

/// Issue 29's targets for `/me` and `/userinfo/`: ≥ 0.4 of the floor below 32 connections,
/// ≥ 0.5 from 32.
fn read_path_target(connections: usize) -> f64 {
    if connections < 32 { 0.4 } else { 0.5 }
}

/// `/pay/`: ≥ 0.5 from 32 connections (issue 29), ≥ 0.35 below (round 2's).
fn pay_target(connections: usize) -> f64 {
    if connections < 32 { 0.35 } else { 0.5 }
}

const HEALTHZ: PathSpec = PathSpec {
    path: "GET /healthz",
    what: "no upstream call",
    floors: &[],
    target: None,
};
const ME: PathSpec = PathSpec {
    path: "GET /me",
    what: "principal (gateway's session cache, else auth.Authenticate: Redis) + row (gateway's user cache, else user.GetUser: PostgreSQL)",
    floors: &["redis-get", "pg-select"],
    target: Some(read_path_target),
};
const USERINFO: PathSpec = PathSpec {
    path: "POST /userinfo/",
    what: "user.UpdateProfile(token) → session (user-service's cache, else auth.AuthenticateWithSessionKey: Redis), AES-CBC, UPDATE … RETURNING (coalesced with concurrent ones)",
    floors: &["redis-get", "pg-update"],
    target: Some(read_path_target),
};
const PAY: PathSpec = PathSpec {
    path: "POST /pay/",
    what: "Authenticate + pay.PrepareJsapiPayment (INSERT order, unifiedorder at the sandbox, UPDATE, sign)",
    floors: &["redis-get", "pg-order"],
    target: Some(pay_target),
};
const NOTIFY: PathSpec = PathSpec {
    path: "POST /pay/notify",
    what: "first delivery: verify MD5, order PAYING → PAID, store the notify",
    floors: &["pg-notify"],
    target: Some(|_| 0.7),
};
const NOTIFY_DUP: PathSpec = PathSpec {
    path: "POST /pay/notify (dup)",
    what: "duplicate: verify, order already PAID by it, store the notify",
    floors: &["pg-notify-dup"],
    target: None,
};
const LOGIN: PathSpec = PathSpec {
    path: "POST /login/",
    what: "auth.Login: code2Session at the sandbox, Redis SET ×2, user.EnsureUser (returning user)",
    floors: &["jscode2session", "redis-set", "pg-select"],
    target: Some(|_| 0.5),
};

struct Bench {
    gateway: SocketAddr,
    duration: Duration,
    procs: Vec<Proc>,
}

impl Bench {
    /// Loads `addr` with `source` at `connections` and answers the row.
    async fn measure_at(
        &self,
        addr: SocketAddr,
        spec: &PathSpec,
        connections: usize,
        source: load::Source,
        check: Check,
        on_success: Option<load::OnSuccess>,
    ) -> Result<(Row, Outcome), String> {
        eprintln!(
            "bench: {} at {connections} connections ({}) ...",
            spec.path, spec.what
        );
        let sampler = Sampler::start(&self.procs);
        let cpu_before = CpuSnapshot::take(&self.procs);
        let outcome: Outcome =
            load::run(addr, connections, self.duration, source, check, on_success)
                .await
                .map_err(|e| format!("{}: {e}", spec.path))?;
        let cpu = CpuSplit::between(
            &cpu_before,
            &CpuSnapshot::take(&self.procs),
            &self.procs,
            outcome.requests,
        );
        let peak_rss = sampler.finish().await;
        let h = &outcome.latency_us;
        let row = Row {
            path: spec.path.to_owned(),
            what: spec.what.to_owned(),
            connections,
            requests: outcome.requests,
            rate: outcome.rate(),
            p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: h.max() as f64 / 1000.0,
            errors: outcome.errors,
            elapsed_s: outcome.elapsed.as_secs_f64(),
            exhausted: outcome.exhausted,
            peak_rss,
            floors: spec.floors.to_vec(),
            target: spec.target.map(|t| t(connections)),
            cpu,
        };
        eprintln!(
            "bench:   {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors of {}{}",
            row.rate,
            row.p50_ms,
            row.p99_ms,
            row.max_ms,
            row.errors,
            row.requests,
            if row.exhausted {
                " (supply used up)"
            } else {
                ""
            }
        );
        for sample in &outcome.samples {
            eprintln!("bench:   error: {sample}");
        }
        Ok((row, outcome))
    }

    /// Runs a floor and fills in where the CPU went (requests: its rate × the wall time).
    async fn with_cpu(
        &self,
        floor: impl std::future::Future<Output = Result<Floor, String>>,
    ) -> Result<Floor, String> {
        let before = CpuSnapshot::take(&self.procs);
        let started = std::time::Instant::now();
        let mut floor = floor.await?;
        // A rate times seconds: non-negative, far below u64::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let requests = (floor.rate * started.elapsed().as_secs_f64()) as u64;
        floor.cpu = CpuSplit::between(
            &before,
            &CpuSnapshot::take(&self.procs),
            &self.procs,
            requests,
        );
        Ok(floor)
    }

    async fn measure(
        &self,
        spec: &PathSpec,
        connections: usize,
        source: load::Source,
        check: Check,
        on_success: Option<load::OnSuccess>,
    ) -> Result<Row, String> {
        self.measure_at(self.gateway, spec, connections, source, check, on_success)
            .await
            .map(|(row, _)| row)
    }
}

fn json_post(path: &str, body: impl Into<Bytes>) -> Prepared {
    Prepared::post(path, "application/json", body)
}

/// Every wanted path at one concurrency, in the module docs' order.
async fn paths_at(
    cli: &Cli,
    bench: &Bench,
    setup: &Setup,
    users: &Arc<Vec<prep::User>>,
    connections: usize,
) -> Result<Vec<Row>, String> {
    let wanted: Vec<&str> = cli.paths.split(',').map(str::trim).collect();
    let wants = |p: &str| wanted.contains(&p);
    let mut rows = Vec::new();
    if wants("healthz") {
        let source = load::cycle(vec![Prepared::get("/healthz")]);
        rows.push(
            bench
                .measure(&HEALTHZ, connections, source, Check::Envelope, None)
                .await?,
        );
    }
    if wants("me") {
        rows.push(
            bench
                .measure(&ME, connections, me_source(users), Check::Envelope, None)
                .await?,
        );
    }
    if wants("userinfo") {
        let source = userinfo_source(setup, users).await?;
        rows.push(
            bench
                .measure(&USERINFO, connections, source, Check::Envelope, None)
                .await?,
        );
    }

    let orders: Arc<Mutex<Vec<PaidOrder>>> = Arc::new(Mutex::new(Vec::new()));
    if wants("pay") || wants("notify") || wants("notify-dup") {
        let requests = users
            .iter()
            .map(|u| {
                let body = serde_json::json!({ "token": u.token, "product_id": PRODUCT });
                json_post("/pay/", body.to_string())
            })
            .collect();
        let (users, orders) = (users.clone(), orders.clone());
        let record: load::OnSuccess = Arc::new(move |tag, body| {
            #[derive(serde::Deserialize)]
            struct Answer {
                data: Data,
            }
            #[derive(serde::Deserialize)]
            struct Data {
                order_no: String,
            }
            if let (Ok(answer), Some(user)) =
                (serde_json::from_slice::<Answer>(body), users.get(tag))
                && let Ok(mut orders) = orders.lock()
            {
                orders.push(PaidOrder {
                    order_no: answer.data.order_no,
                    openid: user.openid.clone(),
                });
            }
        });
        rows.push(
            bench
                .measure(
                    &PAY,
                    connections,
                    load::cycle(requests),
                    Check::Envelope,
                    Some(record),
                )
                .await?,
        );
    }

    if wants("notify") || wants("notify-dup") {
        let merchant = Merchant {
            appid: setup.pay_appid(&users[0], PRODUCT).await?,
            mch_id: cli.mch_id.clone(),
            key: cli.pay_key.clone(),
        };
        let price = setup.price(PRODUCT).await?;
        let orders = orders.lock().map(|o| o.clone()).unwrap_or_default();
        eprintln!("bench: setup: signing {} notifies ...", orders.len());
        let notifies: Vec<Prepared> = orders
            .iter()
            .enumerate()
            .map(|(n, o)| {
                Prepared::post(
                    "/pay/notify",
                    "text/xml",
                    prep::notify_xml(&merchant, o, price, n),
                )
            })
            .collect();
        // The duplicate path replays only notifies whose order the first pass has paid.
        let mut delivered = notifies.len();
        if wants("notify") {
            let (source, used) = load::once_each(notifies.clone());
            rows.push(
                bench
                    .measure(&NOTIFY, connections, source, Check::NotifyAccepted, None)
                    .await?,
            );
            delivered = used
                .load(std::sync::atomic::Ordering::Relaxed)
                .min(notifies.len());
        }
        if wants("notify-dup") {
            let replays = notifies.into_iter().take(delivered).collect();
            rows.push(
                bench
                    .measure(
                        &NOTIFY_DUP,
                        connections,
                        load::cycle(replays),
                        Check::NotifyAccepted,
                        None,
                    )
                    .await?,
            );
        }
    }

    if wants("login") {
        let count = login_codes(cli);
        eprintln!("bench: setup: {count} login codes from the sandbox ...");
        let openids: Vec<String> = users.iter().map(|u| u.openid.clone()).collect();
        let codes = setup.codes(&openids, count).await?;
        let requests = codes
            .into_iter()
            .map(|c| json_post("/login/", serde_json::json!({ "code": c }).to_string()))
            .collect();
        let (source, _) = load::once_each(requests);
        rows.push(
            bench
                .measure(&LOGIN, connections, source, Check::Envelope, None)
                .await?,
        );
    }
    Ok(rows)
}

fn login_codes(cli: &Cli) -> usize {
    cli.login_codes
        .unwrap_or(3000 * usize::try_from(cli.duration_secs).unwrap_or(10))
}

fn me_source(users: &[prep::User]) -> load::Source {
    let requests = users
        .iter()
        .map(|u| Prepared::get("/me").header("authorization", format!("Bearer {}", u.token)))
        .collect();
    load::cycle(requests)
}

/// Fresh bodies every time: a login window in between rotated every user's session_key.
async fn userinfo_source(setup: &Setup, users: &[prep::User]) -> Result<load::Source, String> {
    eprintln!("bench: setup: one login per user, then a profile encrypted per user ...");
    setup.relogin(users).await?;
    let bodies = setup.userinfo_bodies(users).await?;
    Ok(load::cycle(
        bodies
            .into_iter()
            .map(|b| json_post("/userinfo/", b))
            .collect(),
    ))
}

/// The floors at one concurrency (see `floors.rs`).
async fn floors_at(
    cli: &Cli,
    bench: &Bench,
    setup: &Setup,
    storage: &Storage,
    sandbox: SocketAddr,
    connections: usize,
) -> Result<Vec<Floor>, String> {
    let mut floors = Vec::new();
    for script in [
        &floors::PG_SELECT,
        &floors::PG_UPDATE,
        &floors::PG_ORDER,
        &floors::PG_NOTIFY,
        &floors::PG_NOTIFY_DUP,
    ] {
        eprintln!(
            "bench: floor {} at {connections} connections ...",
            script.key
        );
        let floor = bench
            .with_cpu(storage.pgbench(script, connections, bench.duration))
            .await?;
        eprintln!(
            "bench:   {:.0}/s, avg {:.2} ms, {} failed",
            floor.rate,
            floor.avg_ms.unwrap_or(0.0),
            floor.errors
        );
        floors.push(floor);
    }
    let key = format!("{}k", storage.redis_prefix);
    for (name, what, command) in [
        (
            "redis-set",
            "Redis: SET with EX of a session-sized value",
            vec![
                "SET",
                key.as_str(),
                r#"{"user_id":1,"app_id":"wx00000000000dev01","openid":"o6_bmjrPTlm6_2sgVt7hMZOPfL2M","unionid":""}"#,
                "EX",
                "600",
            ],
        ),
        (
            "redis-get",
            "Redis: GET of a session-sized value",
            vec!["GET", key.as_str()],
        ),
    ] {
        eprintln!("bench: floor {name} at {connections} connections ...");
        // SET runs first, so GET reads a value of a session's size.
        let floor = bench
            .with_cpu(storage.redis(name, what, &command, connections, bench.duration, 20_000))
            .await?;
        eprintln!("bench:   {:.0}/s", floor.rate);
        floors.push(floor);
    }
    // WeChat's login step alone: the sandbox's jscode2session with a fresh code each, for new
    // openids (a returning bench user's key would rotate under the paths' feet).
    let (app_id, secret) = cli
        .apps
        .split(',')
        .next()
        .and_then(|a| a.split_once(':'))
        .ok_or_else(|| "WXMP_APPS: expected appid:secret".to_owned())?;
    let count = login_codes(cli);
    eprintln!("bench: setup: {count} login codes for new users ...");
    let codes = setup.new_codes(count).await?;
    let requests = codes
        .into_iter()
        .map(|code| {
            Prepared::get(&format!(
                "/sns/jscode2session?appid={app_id}&secret={secret}&js_code={code}&grant_type=authorization_code"
            ))
        })
        .collect();
    let (source, _) = load::once_each(requests);
    let spec = PathSpec {
        path: "sandbox GET /sns/jscode2session",
        what: "the sandbox alone",
        floors: &[],
        target: None,
    };
    let (row, _) = bench
        .measure_at(
            sandbox,
            &spec,
            connections,
            source,
            Check::SessionAnswered,
            None,
        )
        .await?;
    floors.push(Floor {
        key: "jscode2session",
        what: "the sandbox's jscode2session alone (WeChat's login step), a fresh code each"
            .to_owned(),
        connections,
        clients: connections,
        rate: row.rate,
        avg_ms: None,
        p99_ms: Some(row.p99_ms),
        errors: row.errors,
        cpu: row.cpu.clone(),
        note: if row.exhausted {
            format!(
                "wxmp-loadgen; {} codes used up after {:.1} s",
                row.requests, row.elapsed_s
            )
        } else {
            "wxmp-loadgen".to_owned()
        },
    });
    Ok(floors)
}

async fn run(cli: Cli) -> Result<(), String> {
    let load_before = loadavg();
    let connection_levels = levels(&cli.connections)?;
    let scale_levels = levels(&cli.scale)?;
    let procs = procs::parse_procs(&cli.procs)?;
    // Idle: after start-up and readiness, before any load (setup included).
    let idle: Vec<u64> = procs
        .iter()
        .map(|p| procs::status_kb(p.pid, "VmRSS").unwrap_or(0))
        .collect();
    let bench = Bench {
        gateway: socket_addr(&cli.gateway)?,
        duration: Duration::from_secs(cli.duration_secs.max(1)),
        procs: procs.clone(),
    };
    let sandbox = socket_addr(&cli.sandbox)?;
    let storage = match (&cli.user_db, &cli.pay_db) {
        (Some(user_db), Some(pay_db)) => Some(Storage {
            pg_host: cli.pg_host.clone(),
            pg_port: cli.pg_port,
            pg_user: cli.pg_user.clone(),
            user_db: user_db.clone(),
            pay_db: pay_db.clone(),
            redis_url: cli.redis_url.clone(),
            redis_prefix: cli.redis_prefix.clone(),
            scratch: std::path::PathBuf::from("target/bench"),
        }),
        _ => None,
    };
    let setup = Setup::new(&cli.gateway, &cli.sandbox)?;

    eprintln!("bench: setup: logging in {} users ...", cli.users);
    let users = Arc::new(setup.users(cli.users.max(1)).await?);

    let mut rows = Vec::new();
    let mut floors = Vec::new();
    for &connections in &connection_levels {
        rows.extend(paths_at(&cli, &bench, &setup, &users, connections).await?);
        if let Some(storage) = &storage {
            floors.extend(floors_at(&cli, &bench, &setup, storage, sandbox, connections).await?);
        }
    }

    let mut scale = Vec::new();
    let mut plot = None;
    if !scale_levels.is_empty() {
        for &connections in &scale_levels {
            scale.push(
                bench
                    .measure(&ME, connections, me_source(&users), Check::Envelope, None)
                    .await?,
            );
        }
        let source = userinfo_source(&setup, &users).await?;
        for &connections in &scale_levels {
            scale.push(
                bench
                    .measure(
                        &USERINFO,
                        connections,
                        source.clone(),
                        Check::Envelope,
                        None,
                    )
                    .await?,
            );
        }
        let series: Vec<plot::Series> = [ME.path, USERINFO.path]
            .iter()
            .map(|path| plot::Series {
                name: (*path).to_owned(),
                points: scale
                    .iter()
                    .filter(|r| r.path == *path)
                    .map(|r| (r.connections, r.rate, r.p99_ms))
                    .collect(),
            })
            .collect();
        let svg = plot::svg(
            &format!(
                "wxmp: throughput and p99 by concurrency ({}, {} s per point)",
                cli.commit, cli.duration_secs
            ),
            &scale_levels,
            &series,
        )?;
        std::fs::write(&cli.plot, svg).map_err(|e| format!("{}: {e}", cli.plot))?;
        plot = Some(relative_link(&cli.out, &cli.plot));
    }

    let hop_section = if cli.hops > 0 {
        let paths = hop_paths(&cli, &setup, &users).await?;
        let names: Vec<String> = procs.iter().map(|p| p.name.clone()).collect();
        let mut results = hops::run(
            bench.gateway,
            paths,
            std::path::Path::new(&cli.logs),
            &names,
        )
        .await?;
        Some(hops::markdown(&mut results))
    } else {
        None
    };

    if cli.catch_up > 0 {
        eprintln!(
            "bench: catch-up backlog: {} orders paid at the sandbox, notifies dropped ...",
            cli.catch_up
        );
        let orders = setup
            .lost_notifies(&users, &cli.catch_up_product, cli.catch_up)
            .await?;
        eprintln!("bench:   {} orders wait for the reconciler", orders.len());
    }

    let procs_memory = procs
        .iter()
        .zip(idle)
        .map(|(p, idle_rss)| ProcMemory {
            name: p.name.clone(),
            idle_rss,
            peak_rss: procs::status_kb(p.pid, "VmHWM").unwrap_or(0),
        })
        .collect();
    let run = Run {
        date: chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string(),
        commit: cli.commit.clone(),
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu: cpu_model(),
        load_before,
        load_after: loadavg(),
        profile: cli.profile.clone(),
        levels: connection_levels,
        duration_s: bench.duration.as_secs(),
        loadgen_threads: cli.threads.max(1),
        storage: cli.storage.clone(),
        rows,
        floors,
        scale,
        plot,
        procs: procs_memory,
    };
    let mut section = run.markdown();
    if let Some(hops) = hop_section {
        section = section.replace(report::END, &format!("\n{hops}\n{}", report::END));
    }
    println!("{section}");
    let existing = std::fs::read_to_string(&cli.out).unwrap_or_default();
    std::fs::write(&cli.out, report::splice(&existing, &section))
        .map_err(|e| format!("{}: {e}", cli.out))?;
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{path}: {e}"))?;
    }
    eprintln!("bench: wrote {}", cli.out);
    Ok(())
}

/// The per-hop breakdown's requests: `/me` and `/userinfo/` cycling over a few users (so the
/// session cache answers most of them, as under load), a new order per `/pay/`, a fresh code
/// per `/login/` (last: it rotates the users' session keys).
async fn hop_paths(
    cli: &Cli,
    setup: &Setup,
    users: &[prep::User],
) -> Result<Vec<hops::HopPath>, String> {
    let n = cli.hops;
    let few: Vec<prep::User> = users.iter().take(4).cloned().collect();
    let cycle = |items: Vec<Prepared>| -> Vec<Prepared> {
        (0..n)
            .filter_map(|i| items.get(i % items.len().max(1)).cloned())
            .collect()
    };
    let me = cycle(
        few.iter()
            .map(|u| Prepared::get("/me").header("authorization", format!("Bearer {}", u.token)))
            .collect(),
    );
    setup.relogin(&few).await?;
    let userinfo = cycle(
        setup
            .userinfo_bodies(&few)
            .await?
            .into_iter()
            .map(|b| json_post("/userinfo/", b))
            .collect(),
    );
    let pay = cycle(
        users
            .iter()
            .map(|u| {
                let body = serde_json::json!({ "token": u.token, "product_id": PRODUCT });
                json_post("/pay/", body.to_string())
            })
            .collect(),
    );
    let openids: Vec<String> = few.iter().map(|u| u.openid.clone()).collect();
    let login = setup
        .codes(&openids, n)
        .await?
        .into_iter()
        .map(|c| json_post("/login/", serde_json::json!({ "code": c }).to_string()))
        .collect();
    Ok(vec![
        hops::HopPath {
            label: ME.path,
            key: "me",
            requests: me,
        },
        hops::HopPath {
            label: USERINFO.path,
            key: "userinfo",
            requests: userinfo,
        },
        hops::HopPath {
            label: PAY.path,
            key: "pay",
            requests: pay,
        },
        hops::HopPath {
            label: LOGIN.path,
            key: "login",
            requests: login,
        },
    ])
}

/// `plot` as a link from the markdown file `out`: its file name when both share a folder.
fn relative_link(out: &str, plot: &str) -> String {
    let dir = |p: &str| {
        std::path::Path::new(p)
            .parent()
            .map(std::path::Path::to_path_buf)
    };
    match (dir(out), std::path::Path::new(plot).file_name()) {
        (Some(a), Some(name)) if dir(plot).as_ref() == Some(&a) => {
            name.to_string_lossy().into_owned()
        }
        _ => plot.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_lists_parse() {
        assert_eq!(levels("32, 128").unwrap(), vec![32, 128]);
        assert_eq!(levels("").unwrap(), Vec::<usize>::new());
        assert!(levels("32,x").is_err());
        assert!(levels("0").is_err());
    }

    #[test]
    fn the_plot_is_linked_beside_the_results() {
        assert_eq!(
            relative_link("bench/results.md", "bench/scale.svg"),
            "scale.svg"
        );
        assert_eq!(relative_link("out.md", "/tmp/s.svg"), "/tmp/s.svg");
    }
}
