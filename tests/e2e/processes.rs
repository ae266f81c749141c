//! The production shape: every service as its own OS process (the real `wxmp-*` binaries) on
//! free ports, on PostgreSQL and Redis. The seed's client flow works across processes, a
//! pay-service killed with SIGKILL under load and started again loses and doubles nothing,
//! and SIGTERM drains and exits cleanly.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxmp_tests::{eventually, free_port, process::Service, redis_url};

struct Processes {
    http: reqwest::Client,
    gateway: String,
    sandbox: String,
    pay: Service,
    others: Vec<Service>,
    dir: tempfile::TempDir,
}

impl Processes {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let user_db = wxmp_testkit::db::fresh_postgres_url("wxmp_proc_user")
            .await
            .expect("PostgreSQL");
        let pay_db = wxmp_testkit::db::fresh_postgres_url("wxmp_proc_pay")
            .await
            .expect("PostgreSQL");
        let [gateway, auth, user, pay, sandbox, secapi] = [(); 6].map(|_| free_port());
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let apps = format!("{}:{}", sandbox::DEV_APP_ID, sandbox::DEV_APP_SECRET);
        let token = "internal-token-for-the-process-test";
        let d = dir.path();
        let mut others = vec![Service::start(
            "wxmp-sandbox",
            vec![
                ("SANDBOX_LISTEN_ADDR", addr(sandbox)),
                // Not the default 9001: another sandbox (`make run`, a parallel run) may hold it.
                ("SANDBOX_SECAPI_LISTEN_ADDR", addr(secapi)),
                ("SANDBOX_NOTIFY_TIME_SCALE", "0.01".into()),
            ],
            d,
        )];
        others.push(Service::start(
            "wxmp-user",
            vec![
                ("USER_LISTEN_ADDR", addr(user)),
                ("USER_DATABASE_URL", user_db),
                ("USER_AUTH_SERVICE_URL", url(auth)),
                ("WXMP_INTERNAL_TOKEN", token.into()),
            ],
            d,
        ));
        others.push(Service::start(
            "wxmp-auth",
            vec![
                ("AUTH_LISTEN_ADDR", addr(auth)),
                ("AUTH_REDIS_URL", redis_url()),
                (
                    "AUTH_REDIS_PREFIX",
                    wxmp_testkit::redis::fresh_prefix("wxmp-proc"),
                ),
                ("AUTH_USER_SERVICE_URL", url(user)),
                ("WXMP_APPS", apps),
                ("WXMP_WECHAT_API_BASE", url(sandbox)),
                ("WXMP_INTERNAL_TOKEN", token.into()),
            ],
            d,
        ));
        let pay_service = Service::start(
            "wxmp-pay",
            vec![
                ("PAY_LISTEN_ADDR", addr(pay)),
                ("PAY_DATABASE_URL", pay_db),
                ("PAY_NOTIFY_URL", format!("{}/pay/notify", url(gateway))),
                ("PAY_PRODUCTS", "coffee:1800:Coffee".into()),
                ("PAY_RECONCILE_INTERVAL_SECS", "1".into()),
                ("PAY_RECONCILE_AFTER_SECS", "1".into()),
                ("WXMP_PAY_MCH_ID", sandbox::DEV_MCH_ID.into()),
                ("WXMP_PAY_KEY", sandbox::DEV_PAY_KEY.into()),
                ("WXMP_WECHAT_PAY_BASE", url(sandbox)),
                ("WXMP_INTERNAL_TOKEN", token.into()),
            ],
            d,
        );
        others.push(Service::start(
            "wxmp-gateway",
            vec![
                ("GATEWAY_LISTEN_ADDR", addr(gateway)),
                ("GATEWAY_AUTH_URL", url(auth)),
                ("GATEWAY_USER_URL", url(user)),
                ("GATEWAY_PAY_URL", url(pay)),
                ("GATEWAY_RPC_TIMEOUT_MS", "3000".into()),
                ("GATEWAY_WORKERS", "2".into()),
                ("WXMP_INTERNAL_TOKEN", token.into()),
            ],
            d,
        ));
        let processes = Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            gateway: url(gateway),
            sandbox: url(sandbox),
            pay: pay_service,
            others,
            dir,
        };
        processes.wait_ready().await;
        processes
    }

    async fn wait_ready(&self) {
        let ready = eventually(Duration::from_secs(60), || async {
            let response = self
                .http
                .get(format!("{}/readyz", self.gateway))
                .send()
                .await
                .ok()?;
            // /readyz is 200 while auth serves; wait for every upstream (a restarted
            // pay-service is "serving" again, and the gateway lets its calls through).
            let ok = response.status().is_success();
            let body: serde_json::Value = response.json().await.ok()?;
            let all = ["auth", "user", "pay"]
                .iter()
                .all(|name| body["data"][*name] == "serving");
            (ok && all).then_some(())
        })
        .await;
        if ready.is_none() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                eprintln!(
                    "--- {}\n{}",
                    entry.path().display(),
                    std::fs::read_to_string(entry.path()).unwrap_or_default()
                );
            }
            panic!("the stack did not become ready");
        }
    }

    async fn post(&self, url: String, body: Value) -> (StatusCode, Value) {
        match self.http.post(url).json(&body).send().await {
            Ok(response) => {
                let status = response.status();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null),
        }
    }

    async fn login(&self) -> String {
        let (_, code) = self
            .post(format!("{}/sandbox/login-code", self.sandbox), json!({}))
            .await;
        let (status, login) = self
            .post(
                format!("{}/login/", self.gateway),
                json!({ "code": code["code"] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{login}");
        login["data"]["token"].as_str().expect("token").to_owned()
    }

    /// The sandbox's notify history.
    async fn notifies(&self) -> Vec<Value> {
        self.http
            .get(format!("{}/sandbox/notifies", self.sandbox))
            .send()
            .await
            .expect("notify history")
            .json()
            .await
            .expect("JSON")
    }

    /// The pay database's view: order_no → (state, transaction_id), and applied verdicts.
    async fn orders(&self, token: &str, order_no: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/orders/{order_no}", self.gateway))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /orders");
        response.json::<Value>().await.expect("JSON")["data"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_pay_exactly_once_through_a_pay_service_kill() {
    let mut p = Processes::start().await;

    // The seed's flow across processes, with the internal token on every hop.
    let token = p.login().await;
    let (status, first) = p
        .post(
            format!("{}/pay/", p.gateway),
            json!({ "token": token, "product_id": "coffee" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");

    // Place orders, pay them in the sandbox, and SIGKILL pay-service halfway through.
    let mut placed = vec![first["data"].clone()];
    for i in 0..8 {
        if i == 4 {
            p.pay.kill();
            // Payments made while pay-service is down: their notifies fail and are retried.
            for params in &placed {
                let (status, paid) = p
                    .post(
                        format!("{}/sandbox/pay", p.sandbox),
                        wxmp_tests::request_payment(params).expect("wx.requestPayment params"),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{paid}");
            }
            // The sandbox sends its notifies from a task of its own: pay-service stays dead
            // until one of them has met it (on a loaded machine they could otherwise all
            // leave after the restart, and the kill would test nothing).
            eventually(Duration::from_secs(30), || async {
                p.notifies()
                    .await
                    .iter()
                    .any(|n| n["accepted"] == false)
                    .then_some(())
            })
            .await
            .expect("a notify met the dead pay-service");
            p.pay.spawn();
            p.wait_ready().await;
        }
        // Each is a purchase of its own: a new idempotency key (else the open order of the
        // same product would be answered again, as for a double tap).
        let (status, answer) = p
            .post(
                format!("{}/pay/", p.gateway),
                json!({ "token": token, "product_id": "coffee", "idempotency_key": format!("purchase-{i}") }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        placed.push(answer["data"].clone());
    }
    for params in &placed[5..] {
        let (status, paid) = p
            .post(
                format!("{}/sandbox/pay", p.sandbox),
                wxmp_tests::request_payment(params).expect("wx.requestPayment params"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{paid}");
    }

    // Every order the sandbox charged ends PAID with the sandbox's transaction id; the rest
    // (orders 1..4 placed before the kill were paid during it) are all charged here.
    for params in &placed {
        let order_no = params["order_no"].as_str().unwrap();
        let sandbox_view: Value = p
            .http
            .get(format!("{}/sandbox/orders/{order_no}", p.sandbox))
            .send()
            .await
            .expect("sandbox order")
            .json()
            .await
            .expect("JSON");
        let paid = eventually(Duration::from_secs(60), || async {
            let order = p.orders(&token, order_no).await;
            (order["state"] == "PAID").then_some(order)
        })
        .await
        .unwrap_or_else(|| panic!("{order_no} never became PAID; sandbox says {sandbox_view}"));
        assert_eq!(
            paid["transaction_id"], sandbox_view["transaction_id"],
            "{sandbox_view}"
        );
    }

    // The kill mattered: notifies sent while pay-service was down were refused, then retried.
    let notifies = p.notifies().await;
    assert!(
        notifies.iter().any(|n| n["accepted"] == false),
        "some notify met the dead pay-service: {notifies:?}"
    );

    // SIGTERM drains and exits 0, for each kind of process.
    assert!(p.pay.terminate().await.success(), "pay-service exit status");
    let gateway = p.others.last_mut().expect("gateway");
    assert!(gateway.terminate().await.success(), "gateway exit status");
}
