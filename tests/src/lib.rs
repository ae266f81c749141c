//! Harness for the end-to-end tests: the whole stack (gateway, auth, user, pay, sandbox) on
//! free ports in this process, on PostgreSQL + Redis or SQLite + memory, with a fresh
//! database and Redis key prefix per test, and small helpers that act like a mini program.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxmp::stack::{Stack, StackOptions};

/// Which storage the stack runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Production: PostgreSQL (a fresh database per service) and Redis (a fresh key prefix).
    Postgres,
    /// The embedded default: SQLite files in a temp dir and in-memory sessions.
    Sqlite,
}

/// Runs an async test body once per back end, as two `#[tokio::test]`s.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres_redis() {
                super::$body($crate::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite_memory() {
                super::$body($crate::Backend::Sqlite).await
            }
        }
    };
}

pub fn redis_url() -> String {
    std::env::var("WXMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

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
        let dir = tempfile::tempdir().expect("temp dir");
        let (user_db, pay_db, redis) = match backend {
            Backend::Postgres => (
                service_kit::db::testing::fresh_postgres_url("wxmp_e2e_user")
                    .await
                    .expect("PostgreSQL for tests (see README: Tests)"),
                service_kit::db::testing::fresh_postgres_url("wxmp_e2e_pay")
                    .await
                    .expect("PostgreSQL for tests (see README: Tests)"),
                Some(redis_url()),
            ),
            Backend::Sqlite => (
                service_kit::db::testing::fresh_sqlite_url(dir.path(), "users"),
                service_kit::db::testing::fresh_sqlite_url(dir.path(), "pay"),
                None,
            ),
        };
        let mut options = StackOptions::ephemeral(user_db.clone(), pay_db.clone());
        options.redis_url = redis;
        options.redis_prefix = Some(format!("wxmp-e2e:{}:", uuid::Uuid::new_v4().simple()));
        adjust(&mut options);
        let stack = Stack::start(options).await.expect("stack starts");
        Self {
            stack,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
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
