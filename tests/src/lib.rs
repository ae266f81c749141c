//! Harness for the end-to-end tests: the whole stack (gateway, auth, user, pay, sandbox) on
//! free ports in this process, on PostgreSQL + Redis or SQLite + memory, with a fresh
//! database and Redis key prefix per test, and small helpers that act like a mini program.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxmp::stack::{Stack, StackOptions};
use wxmp_testkit::db::{fresh_sqlite_url, migrated_postgres_url};

pub mod process;

/// Which storage the stack runs on: PostgreSQL (a fresh database per service) and Redis (a
/// fresh key prefix), or SQLite files in a temp dir and in-memory sessions. The matrix runs
/// each case on both (`on_both_backends!(workers = 4; case as name)`).
pub use wxmp_testkit::{Backend, on_both_backends};

/// Sends the stack's logs (warnings and errors; `WXMP_TEST_LOG` for more, in `RUST_LOG` syntax)
/// to the test's captured output: a failing test prints what the services said, a passing one
/// prints nothing. Threads the test spawns (its runtime, the gateway's workers) inherit the
/// capture. A binary that installs its own subscriber first keeps it.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("WXMP_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

pub use wxmp_testkit::redis::url as redis_url;

/// A running stack plus an HTTP client; stops when dropped.
pub struct TestStack {
    pub stack: Stack,
    pub http: reqwest::Client,
    pub backend: Backend,
    pub user_database_url: String,
    pub pay_database_url: String,
    _dir: tempfile::TempDir,
}

impl TestStack {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts the stack after `adjust` had its say on the options.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut StackOptions)) -> Self {
        capture_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let (user_db, pay_db, redis) = match backend {
            Backend::Postgres => (
                migrated_postgres_url("wxmp_e2e_user", &user_service::MIGRATIONS)
                    .await
                    .expect("PostgreSQL for tests (see README: Tests)"),
                migrated_postgres_url("wxmp_e2e_pay", &pay_service::MIGRATIONS)
                    .await
                    .expect("PostgreSQL for tests (see README: Tests)"),
                Some(redis_url()),
            ),
            Backend::Sqlite => (
                fresh_sqlite_url(dir.path(), "users"),
                fresh_sqlite_url(dir.path(), "pay"),
                None,
            ),
        };
        let mut options = StackOptions::ephemeral(user_db.clone(), pay_db.clone());
        options.redis_url = redis;
        options.redis_prefix = Some(wxmp_testkit::redis::fresh_prefix("wxmp-e2e"));
        adjust(&mut options);
        let stack = Stack::start(options).await.expect("stack starts");
        Self {
            stack,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                // Below actix's 5 s keep-alive: never reuse a connection the gateway is closing.
                .pool_idle_timeout(Duration::from_secs(3))
                .build()
                .expect("client"),
            backend,
            user_database_url: user_db,
            pay_database_url: pay_db,
            _dir: dir,
        }
    }

    pub fn gateway(&self, path: &str) -> String {
        format!("{}{path}", self.stack.gateway_url)
    }

    pub fn sandbox(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.stack
                .sandbox_url
                .as_deref()
                .expect("in-process sandbox")
        )
    }

    /// POSTs JSON and answers (HTTP status, JSON body).
    pub async fn post(&self, url: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("JSON answer"))
    }

    /// GETs with a bearer token and answers (HTTP status, JSON body).
    pub async fn get(&self, url: &str, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("JSON answer"))
    }

    /// The sandbox issues a wx.login() code; `openid` None makes a new user.
    pub async fn login_code(&self, openid: Option<&str>) -> (String, String) {
        let body = match openid {
            Some(openid) => json!({ "openid": openid }),
            None => json!({}),
        };
        let (status, answer) = self.post(&self.sandbox("/sandbox/login-code"), body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        (
            answer["code"].as_str().expect("code").to_owned(),
            answer["openid"].as_str().expect("openid").to_owned(),
        )
    }

    /// POST /login/ with a fresh code for `openid`; answers the token.
    pub async fn login(&self, openid: Option<&str>) -> (String, String) {
        let (code, openid) = self.login_code(openid).await;
        let (status, answer) = self
            .post(&self.gateway("/login/"), json!({ "code": code }))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["code"], 200, "{answer}");
        (
            answer["data"]["token"].as_str().expect("token").to_owned(),
            openid,
        )
    }

    /// The sandbox encrypts `profile` for `openid` with the user's current session_key.
    pub async fn user_data(&self, openid: &str, profile: Value) -> Value {
        let (status, answer) = self
            .post(
                &self.sandbox("/sandbox/user-data"),
                json!({ "openid": openid, "profile": profile }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// GET /me's envelope.
    pub async fn me(&self, token: &str) -> (StatusCode, Value) {
        self.get(&self.gateway("/me"), token).await
    }

    /// Sets sandbox faults (the JSON of `sandbox::faults::Faults`).
    pub async fn faults(&self, faults: Value) {
        let (status, answer) = self.post(&self.sandbox("/sandbox/faults"), faults).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    /// Polls GET /orders/{order_no} until `state` or the timeout; answers the last order.
    pub async fn wait_for_order_state(
        &self,
        token: &str,
        order_no: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        let started = Instant::now();
        loop {
            let (status, answer) = self
                .get(&self.gateway(&format!("/orders/{order_no}")), token)
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            if answer["data"]["state"] == state || started.elapsed() > timeout {
                return answer["data"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---- Helpers of the fault, bad-input and security suites ----------------------------------

/// The six parameters the mini program passes to `wx.requestPayment` (appId, timeStamp,
/// nonceStr, package, signType, paySign), taken from `POST /pay/`'s `data` (or its envelope).
pub fn request_payment(pay_answer: &Value) -> Option<Value> {
    let data = if pay_answer["data"].is_object() {
        &pay_answer["data"]
    } else {
        pay_answer
    };
    let mut params = serde_json::Map::new();
    for name in [
        "appId",
        "timeStamp",
        "nonceStr",
        "package",
        "signType",
        "paySign",
    ] {
        params.insert(name.to_owned(), json!(data[name].as_str()?));
    }
    Some(Value::Object(params))
}

/// The out_trade_no of `POST /pay/`'s answer and the `wx.requestPayment` parameters the phone
/// pays with ([`request_payment`]).
pub fn order_and_prepay(pay_answer: &Value) -> Option<(String, Value)> {
    let order_no = pay_answer["data"]["order_no"].as_str()?.to_owned();
    Some((order_no, request_payment(pay_answer)?))
}

/// The prepay_id inside the `package` of `wx.requestPayment` parameters.
pub fn prepay_id(request_payment: &Value) -> Option<&str> {
    request_payment["package"]
        .as_str()?
        .strip_prefix("prepay_id=")
}

impl TestStack {
    /// POST /pay/ for `product_id` with `token`; answers (HTTP status, envelope).
    pub async fn pay_product(&self, token: &str, product_id: &str) -> (StatusCode, Value) {
        self.post(
            &self.gateway("/pay/"),
            json!({ "token": token, "product_id": product_id }),
        )
        .await
    }

    /// The phone pays at the sandbox with `request_payment` (the `wx.requestPayment`
    /// parameters of a `POST /pay/` answer, see [`order_and_prepay`]): `outcome`
    /// success|fail|cancel|paying, with this order's notify faults when given.
    pub async fn sandbox_pay(&self, request_payment: &Value, outcome: &str, faults: Option<Value>) {
        let (status, answer) = self
            .sandbox_pay_answer(request_payment, outcome, faults)
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    /// `POST /sandbox/pay` as [`Self::sandbox_pay`], answering the sandbox's status and body
    /// (400 `request_payment_fail` when the phone would refuse the parameters).
    pub async fn sandbox_pay_answer(
        &self,
        request_payment: &Value,
        outcome: &str,
        faults: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut body = request_payment.clone();
        body["outcome"] = json!(outcome);
        if let Some(faults) = faults {
            body["faults"] = faults;
        }
        self.post(&self.sandbox("/sandbox/pay"), body).await
    }

    /// Sends raw bytes to a gateway path; answers (HTTP status, body text). Never panics on
    /// the answer's shape, so callers can assert on anything.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        let mut request = self.http.request(method, self.gateway(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// The orders in the pay database: order_no → (state, transaction_id).
    pub async fn db_orders(&self) -> std::collections::HashMap<String, (String, String)> {
        db_orders_at(&self.pay_database_url).await
    }

    /// Every (out_trade_no, verdict) in pay_notifications, oldest first.
    pub async fn db_verdicts(&self) -> Vec<(String, String)> {
        db_verdicts_at(&self.pay_database_url).await
    }

    /// The sandbox's (WeChat's) view of one order: trade_state, notify_state,
    /// unifiedorder_calls...
    pub async fn sandbox_order(&self, out_trade_no: &str) -> Value {
        let response = self
            .http
            .get(self.sandbox(&format!("/sandbox/orders/{out_trade_no}")))
            .send()
            .await
            .expect("sandbox order");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON")
    }

    /// Every notify request the sandbox sent for `out_trade_no`, oldest first (with the XML
    /// sent, the merchant's answer and whether it was accepted).
    pub async fn sandbox_notifies(&self, out_trade_no: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.sandbox("/sandbox/notifies"))
            .query(&[("out_trade_no", out_trade_no)])
            .send()
            .await
            .expect("sandbox notifies");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON")
    }

    /// The sandbox's view of every order it holds in `trade_state`.
    pub async fn sandbox_orders(&self, trade_state: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.sandbox("/sandbox/orders"))
            .query(&[("trade_state", trade_state)])
            .send()
            .await
            .expect("sandbox orders");
        assert_eq!(response.status(), StatusCode::OK);
        let listed: Value = response.json().await.expect("JSON");
        match listed {
            Value::Array(orders) => orders,
            other => other["orders"].as_array().cloned().unwrap_or_default(),
        }
    }
}

/// The orders in the pay database at `url`: order_no → (state, transaction_id).
pub async fn db_orders_at(url: &str) -> std::collections::HashMap<String, (String, String)> {
    async fn query(url: &str) -> Result<Vec<(String, String, String)>, service_kit::db::DbError> {
        use diesel::QueryDsl;
        use diesel_async::RunQueryDsl;
        let db = pay_db(url)?;
        Ok(service_kit::with_conn!(&db, |conn| {
            pay_tables::orders::table
                .select((
                    pay_tables::orders::order_no,
                    pay_tables::orders::state,
                    pay_tables::orders::transaction_id,
                ))
                .load::<(String, String, String)>(conn)
                .await
        })?)
    }
    let rows = query(url).await.expect("read orders");
    rows.into_iter().map(|(no, s, t)| (no, (s, t))).collect()
}

/// Every (out_trade_no, verdict) in pay_notifications of the pay database at `url`.
pub async fn db_verdicts_at(url: &str) -> Vec<(String, String)> {
    async fn query(url: &str) -> Result<Vec<(String, String)>, service_kit::db::DbError> {
        use diesel::QueryDsl;
        use diesel_async::RunQueryDsl;
        let db = pay_db(url)?;
        Ok(service_kit::with_conn!(&db, |conn| {
            pay_tables::pay_notifications::table
                .order(pay_tables::pay_notifications::id)
                .select((
                    pay_tables::pay_notifications::out_trade_no,
                    pay_tables::pay_notifications::verdict,
                ))
                .load::<(String, String)>(conn)
                .await
        })?)
    }
    query(url).await.expect("read pay_notifications")
}

fn pay_db(url: &str) -> Result<service_kit::db::Database, service_kit::db::DbError> {
    service_kit::db::Database::connect(
        url,
        service_kit::db::PoolOptions {
            max_size: 1,
            ..Default::default()
        },
    )
}

/// The pay-service tables the suites read (columns they need only).
pub mod pay_tables {
    diesel::table! {
        orders (id) {
            id -> BigInt,
            order_no -> Text,
            state -> Text,
            transaction_id -> Text,
        }
    }
    diesel::table! {
        pay_notifications (id) {
            id -> BigInt,
            out_trade_no -> Text,
            verdict -> Text,
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private `redis-server` (no persistence) that a test may stop and start at will; the shared
/// Redis on 6379 is never touched. Killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the server (nothing is saved) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` until it answers `Some`, every 200 ms, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = f().await {
            return Some(value);
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops what it names (a server a test started beside the stack) when dropped.
pub struct StopOnDrop(pub service_kit::Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

/// A gateway of a test's own beside the stack's (another replica), served until dropped;
/// `state` is a clone of its state, to look at its caches.
pub struct OwnGateway {
    pub url: String,
    pub state: gateway::AppState,
    _stop: StopOnDrop,
}

impl OwnGateway {
    /// Serves `config` with 2 workers on a free port.
    pub fn start(mut config: gateway::Config) -> Self {
        config.workers = Some(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let state = gateway::AppState::new(&config).expect("gateway state");
        let shutdown = service_kit::Shutdown::new();
        tokio::spawn(gateway::serve_state(
            config,
            state.clone(),
            listener,
            shutdown.clone(),
        ));
        Self {
            url,
            state,
            _stop: StopOnDrop(shutdown),
        }
    }
}
