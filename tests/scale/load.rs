//! A bounded load of mini-program users through HAProxy: each iteration logs in (a fresh
//! `wx.login()` code), updates the profile (`/userinfo/`), places an order (`/pay/`), pays it
//! at the sandbox (which notifies through HAProxy) and reads it back (`GET /orders/…`).
//! Nothing is retried: every answer that is not the envelope's 200 counts as a failure.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::cluster::PRODUCT;

/// One request the load made through the front door.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub op: &'static str,
    /// Since the load started.
    pub started: Duration,
    pub finished: Duration,
    pub status: u16,
    /// The envelope's code (0 when the answer had none).
    pub code: i64,
    pub detail: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status == 200 && self.code == 200
    }
}

/// What the load did, for the ledger checks.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// Orders `/pay/` answered with.
    pub placed: Vec<String>,
    /// Orders the sandbox charged (the phone paid).
    pub charged: Vec<String>,
    pub iterations: usize,
}

impl Report {
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.ok()).collect()
    }

    pub fn count(&self, op: &str) -> usize {
        self.outcomes.iter().filter(|o| o.op == op).count()
    }

    /// Successful requests in progress at some moment of `[from, to]`.
    pub fn ok_overlapping(&self, from: Duration, to: Duration) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.ok() && o.started <= to && o.finished >= from)
            .count()
    }

    /// Successful requests that started and finished inside `[from, to]`.
    pub fn ok_within(&self, from: Duration, to: Duration) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.ok() && o.started >= from && o.finished <= to)
            .count()
    }
}

pub struct Load {
    pub epoch: Instant,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    last_ok: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Report>>,
}

#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    front: String,
    sandbox: String,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    /// When the latest successful front-door answer arrived (µs since the epoch).
    last_ok: Arc<AtomicU64>,
    max_iterations: usize,
    period: Duration,
}

impl Load {
    /// `workers` users in parallel, `per_sec` iterations a second in all, at most
    /// `max_iterations` iterations.
    pub fn start(
        http: reqwest::Client,
        front: String,
        sandbox: String,
        workers: usize,
        per_sec: f64,
        max_iterations: usize,
    ) -> Self {
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let last_ok = Arc::new(AtomicU64::new(0));
        let ctx = Ctx {
            http,
            front,
            sandbox,
            epoch,
            stop: stop.clone(),
            done: done.clone(),
            last_ok: last_ok.clone(),
            max_iterations,
            period: Duration::from_secs_f64(workers as f64 / per_sec),
        };
        let workers = (0..workers)
            .map(|_| tokio::spawn(worker(ctx.clone())))
            .collect();
        Self {
            epoch,
            stop,
            done,
            last_ok,
            workers,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Iterations finished so far.
    pub fn iterations(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `n` iterations have finished (at most `timeout`).
    pub async fn wait_iterations(&self, n: usize, timeout: Duration) {
        let started = Instant::now();
        while self.iterations() < n {
            assert!(
                started.elapsed() < timeout,
                "the load made {} of {n} iterations in {timeout:?}",
                self.iterations()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a front-door request succeeds that finished at `from` or later (at most
    /// `timeout`): from then on `ok_overlapping(from, now)` holds. Iterations alone do not
    /// show it, since an iteration starts with sandbox calls the report does not hold.
    pub async fn wait_ok_since(&self, from: Duration, timeout: Duration) {
        let started = Instant::now();
        while self.last_ok.load(Ordering::Relaxed) < micros(from) {
            assert!(
                started.elapsed() < timeout,
                "no request succeeded in the {timeout:?} after {from:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the workers after their current iteration; answers everything they did.
    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = Report::default();
        for worker in self.workers {
            let r = worker.await.expect("load worker");
            report.outcomes.extend(r.outcomes);
            report.placed.extend(r.placed);
            report.charged.extend(r.charged);
            report.iterations += r.iterations;
        }
        report.outcomes.sort_by_key(|o| o.started);
        report
    }
}

async fn worker(ctx: Ctx) -> Report {
    let mut report = Report::default();
    let mut openid: Option<String> = None;
    let mut ticker = tokio::time::interval(ctx.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        if ctx.done.fetch_add(1, Ordering::Relaxed) >= ctx.max_iterations {
            break;
        }
        n += 1;
        iteration(&ctx, &mut report, &mut openid, n).await;
        report.iterations += 1;
    }
    report
}

async fn iteration(ctx: &Ctx, report: &mut Report, openid: &mut Option<String>, n: u64) {
    // The phone: a wx.login() code (the sandbox is WeChat; it is not under test here).
    let code = sandbox_post(
        ctx,
        "/sandbox/login-code",
        match openid {
            Some(o) => json!({ "openid": o }),
            None => json!({}),
        },
    )
    .await;
    let (Some(code), Some(id)) = (code["code"].as_str(), code["openid"].as_str()) else {
        panic!("the sandbox gave no login code: {code}");
    };
    *openid = Some(id.to_owned());
    let login = call(ctx, report, "login", "/login/", json!({ "code": code })).await;
    let Some(token) = login["data"]["token"].as_str().map(str::to_owned) else {
        return;
    };

    let data = sandbox_post(
        ctx,
        "/sandbox/user-data",
        json!({ "openid": id, "profile": { "nickName": format!("user {n}"), "city": "Shenzhen" } }),
    )
    .await;
    let mut body = data.clone();
    body["token"] = json!(token);
    call(ctx, report, "userinfo", "/userinfo/", body).await;

    let paid = call(
        ctx,
        report,
        "pay",
        "/pay/",
        // One idempotency key per purchase, as a client sends it.
        json!({ "token": token, "product_id": PRODUCT, "idempotency_key": uuid::Uuid::new_v4().to_string() }),
    )
    .await;
    // The phone pays with the wx.requestPayment parameters (the sandbox checks paySign).
    let (Some(order_no), Some(prepay)) = (
        paid["data"]["order_no"].as_str(),
        wxmp_tests::request_payment(&paid),
    ) else {
        return;
    };
    report.placed.push(order_no.to_owned());
    let charged = sandbox_post(ctx, "/sandbox/pay", prepay).await;
    assert_eq!(charged["trade_state"], "SUCCESS", "sandbox pay: {charged}");
    report.charged.push(order_no.to_owned());

    let started = ctx.epoch.elapsed();
    let answer = ctx
        .http
        .get(format!("{}/orders/{order_no}", ctx.front))
        .bearer_auth(&token)
        .send()
        .await;
    record(ctx, report, "order", started, answer).await;
}

/// POSTs JSON through the front door and records the outcome; answers the envelope.
async fn call(ctx: &Ctx, report: &mut Report, op: &'static str, path: &str, body: Value) -> Value {
    let started = ctx.epoch.elapsed();
    let answer = ctx
        .http
        .post(format!("{}{path}", ctx.front))
        .json(&body)
        .send()
        .await;
    record(ctx, report, op, started, answer).await
}

async fn record(
    ctx: &Ctx,
    report: &mut Report,
    op: &'static str,
    started: Duration,
    answer: reqwest::Result<reqwest::Response>,
) -> Value {
    let (status, envelope, detail) = match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let envelope: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            (status, envelope, text.chars().take(200).collect())
        }
        Err(e) => (0, Value::Null, error_chain(&e)),
    };
    let outcome = Outcome {
        op,
        started,
        finished: ctx.epoch.elapsed(),
        status,
        code: envelope["code"].as_i64().unwrap_or(0),
        detail,
    };
    if outcome.ok() {
        ctx.last_ok
            .fetch_max(micros(outcome.finished), Ordering::Relaxed);
    }
    report.outcomes.push(outcome);
    envelope
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn sandbox_post(ctx: &Ctx, path: &str, body: Value) -> Value {
    let response = ctx
        .http
        .post(format!("{}{path}", ctx.sandbox))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("sandbox {path}: {}", error_chain(&e)));
    response.json().await.unwrap_or(Value::Null)
}

/// `e` and its sources: reqwest's own message ("error sending request") hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
