//! `wxmp-loadgen`: loads every user-facing path of a running wxmp stack through its gateway,
//! one path at a time, and writes the results table into bench/results.md.
//!
//! `bench/run.sh` (`make bench`) starts the stack and runs this; it can also be pointed at any
//! running stack with a sandbox (`wxmp up`): `wxmp-loadgen --gateway http://127.0.0.1:8080
//! --sandbox http://127.0.0.1:9000`. The sandbox's per-code and per-app rate limits must be off
//! (`SANDBOX_CODE_RATE_PER_MIN=0 SANDBOX_APP_RATE_PER_MIN=0`), or logins fail with 45011.
//!
//! Paths, in this order (each with fresh connections and its own time window):
//! `GET /healthz` (the ceiling), `GET /me`, `POST /userinfo/`, `POST /pay/` (a new order
//! each), `POST /pay/notify` first delivery (each order of the /pay/ window once), the same
//! notifies again (the duplicate path), `POST /login/` (a fresh code each, for returning users).

mod load;
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
use load::{Check, Outcome, Prepared};
use prep::{Merchant, PaidOrder, Setup};
use procs::{Proc, Sampler};
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
    /// Open connections per path.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 32)]
    connections: usize,
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

struct Bench {
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    procs: Vec<Proc>,
    rows: Vec<Row>,
}

impl Bench {
    async fn measure(
        &mut self,
        path: &str,
        what: &str,
        source: load::Source,
        check: Check,
        on_success: Option<load::OnSuccess>,
    ) -> Result<(), String> {
        eprintln!("bench: {path} ({what}) ...");
        let sampler = Sampler::start(&self.procs);
        let outcome: Outcome = load::run(
            self.addr,
            self.connections,
            self.duration,
            source,
            check,
            on_success,
        )
        .await
        .map_err(|e| format!("{path}: {e}"))?;
        let peak_rss = sampler.finish().await;
        let h = &outcome.latency_us;
        let row = Row {
            path: path.to_owned(),
            what: what.to_owned(),
            requests: outcome.requests,
            rate: outcome.rate(),
            p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: h.max() as f64 / 1000.0,
            errors: outcome.errors,
            elapsed_s: outcome.elapsed.as_secs_f64(),
            exhausted: outcome.exhausted,
            peak_rss,
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
        self.rows.push(row);
        Ok(())
    }
}

fn json_post(path: &str, body: impl Into<Bytes>) -> Prepared {
    Prepared::post(path, "application/json", body)
}

async fn run(cli: Cli) -> Result<(), String> {
    let wanted: Vec<&str> = cli.paths.split(',').map(str::trim).collect();
    let wants = |p: &str| wanted.contains(&p);
    let procs = procs::parse_procs(&cli.procs)?;
    // Idle: after start-up and readiness, before any load (setup included).
    let idle: Vec<u64> = procs
        .iter()
        .map(|p| procs::status_kb(p.pid, "VmRSS").unwrap_or(0))
        .collect();
    let mut bench = Bench {
        addr: socket_addr(&cli.gateway)?,
        connections: cli.connections.max(1),
        duration: Duration::from_secs(cli.duration_secs.max(1)),
        procs: procs.clone(),
        rows: Vec::new(),
    };
    let setup = Setup::new(&cli.gateway, &cli.sandbox)?;

    eprintln!("bench: setup: logging in {} users ...", cli.users);
    let users = Arc::new(setup.users(cli.users.max(1)).await?);

    if wants("healthz") {
        let source = load::cycle(vec![Prepared::get("/healthz")]);
        bench
            .measure(
                "GET /healthz",
                "no upstream call",
                source,
                Check::Envelope,
                None,
            )
            .await?;
    }
    if wants("me") {
        let requests = users
            .iter()
            .map(|u| Prepared::get("/me").header("authorization", format!("Bearer {}", u.token)))
            .collect();
        bench
            .measure(
                "GET /me",
                "auth.Authenticate (Redis) + user.GetUser (PostgreSQL)",
                load::cycle(requests),
                Check::Envelope,
                None,
            )
            .await?;
    }
    if wants("userinfo") {
        eprintln!("bench: setup: encrypting a profile per user ...");
        let bodies = setup.userinfo_bodies(&users).await?;
        let requests = bodies
            .into_iter()
            .map(|b| json_post("/userinfo/", b))
            .collect();
        bench
            .measure(
                "POST /userinfo/",
                "Authenticate + user.UpdateProfile (auth.GetSessionKey, AES-CBC, UPDATE)",
                load::cycle(requests),
                Check::Envelope,
                None,
            )
            .await?;
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
        bench
            .measure(
                "POST /pay/",
                "Authenticate + pay.PrepareJsapiPayment (INSERT order, unifiedorder at the sandbox, sign)",
                load::cycle(requests),
                Check::Envelope,
                Some(record),
            )
            .await?;
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
            bench
                .measure(
                    "POST /pay/notify",
                    "first delivery: verify MD5, order PAYING → PAID, store the notify",
                    source,
                    Check::NotifyAccepted,
                    None,
                )
                .await?;
            delivered = used
                .load(std::sync::atomic::Ordering::Relaxed)
                .min(notifies.len());
        }
        if wants("notify-dup") {
            let replays = notifies.into_iter().take(delivered).collect();
            bench
                .measure(
                    "POST /pay/notify (dup)",
                    "duplicate: verify, order already PAID by it, store the notify",
                    load::cycle(replays),
                    Check::NotifyAccepted,
                    None,
                )
                .await?;
        }
    }

    if wants("login") {
        let count = cli
            .login_codes
            .unwrap_or(3000 * usize::try_from(cli.duration_secs).unwrap_or(10));
        eprintln!("bench: setup: {count} login codes from the sandbox ...");
        let openids: Vec<String> = users.iter().map(|u| u.openid.clone()).collect();
        let codes = setup.codes(&openids, count).await?;
        let requests = codes
            .into_iter()
            .map(|c| json_post("/login/", serde_json::json!({ "code": c }).to_string()))
            .collect();
        let (source, _) = load::once_each(requests);
        bench
            .measure(
                "POST /login/",
                "auth.Login: code2Session at the sandbox, Redis SET ×2, user.EnsureUser (returning user)",
                source,
                Check::Envelope,
                None,
            )
            .await?;
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
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: cpu_model(),
        profile: cli.profile.clone(),
        connections: bench.connections,
        duration_s: bench.duration.as_secs(),
        loadgen_threads: cli.threads.max(1),
        storage: cli.storage.clone(),
        rows: bench.rows,
        procs: procs_memory,
    };
    let section = run.markdown();
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
