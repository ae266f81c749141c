//! The scaled-out stack as real processes on loopback: the sandbox, N replicas of auth-,
//! user- and pay-service, M gateways behind HAProxy, one PostgreSQL (a fresh database per
//! service and test) and one Redis (a fresh key prefix). Services reach each other through
//! comma-separated URL lists (client-side balancing over the healthy replicas).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wxmp_tests::{free_port, process::Service, redis_url};

use crate::haproxy::Haproxy;

pub const TOKEN: &str = "internal-token-of-the-scale-test";
pub const PRODUCT: &str = "coffee";
/// How long a stopping service keeps serving while NOT_SERVING (clients probe every 0.5 s).
pub const DRAIN_DELAY_MS: u64 = 1500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Auth,
    User,
    Pay,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Self::Auth => "wxmp-auth",
            Self::User => "wxmp-user",
            Self::Pay => "wxmp-pay",
        }
    }
}

/// What differs between the tests.
#[derive(Clone, Debug)]
pub struct Options {
    pub gateways: usize,
    pub replicas: usize,
    pub pay_replicas: usize,
    pub reconcile_lease_secs: u64,
    pub wechat_timeout_ms: u64,
    /// Refunds on: the sandbox writes its dev CA and merchant certificate, pay-service uses
    /// them (secapi port) and gets refund notifies through the front door.
    pub refunds: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateways: 3,
            replicas: 2,
            pay_replicas: 2,
            reconcile_lease_secs: 120,
            wechat_timeout_ms: 5000,
            refunds: false,
        }
    }
}

/// One replica: its process and port.
pub struct Replica {
    pub name: String,
    pub port: u16,
    pub service: Service,
}

pub struct Cluster {
    pub http: reqwest::Client,
    pub sandbox_url: String,
    pub pay_database_url: String,
    pub auth: Vec<Replica>,
    pub user: Vec<Replica>,
    pub pay: Vec<Replica>,
    pub gateways: Vec<Replica>,
    pub haproxy: Haproxy,
    _sandbox: Service,
    dir: tempfile::TempDir,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn list(ports: &[u16]) -> String {
    ports.iter().map(|p| url(*p)).collect::<Vec<_>>().join(",")
}

impl Cluster {
    pub async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let user_db = wxmp_testkit::db::fresh_postgres_url("wxmp_scale_user")
            .await
            .expect("PostgreSQL");
        let pay_db = wxmp_testkit::db::fresh_postgres_url("wxmp_scale_pay")
            .await
            .expect("PostgreSQL");
        let ports = |n: usize| (0..n).map(|_| free_port()).collect::<Vec<_>>();
        let (auth_ports, user_ports, pay_ports) = (
            ports(options.replicas),
            ports(options.replicas),
            ports(options.pay_replicas),
        );
        let gateway_ports = ports(options.gateways);
        let (sandbox_port, secapi_port, front_port) = (free_port(), free_port(), free_port());
        let front = url(front_port);
        let drain = DRAIN_DELAY_MS.to_string();
        let common = |mut env: Vec<(&'static str, String)>| {
            env.push(("WXMP_INTERNAL_TOKEN", TOKEN.into()));
            env.push(("WXMP_DRAIN_DELAY_MS", drain.clone()));
            env
        };

        let cert_dir = d.join("sandbox-certs");
        let mut sandbox_env = vec![
            ("SANDBOX_LISTEN_ADDR", addr(sandbox_port)),
            // Not the default 9001: another sandbox (`make run`, a parallel run) may hold it.
            ("SANDBOX_SECAPI_LISTEN_ADDR", addr(secapi_port)),
            ("SANDBOX_NOTIFY_TIME_SCALE", "0.01".into()),
            ("SANDBOX_CODE_RATE_PER_MIN", "1000".into()),
            ("SANDBOX_APP_RATE_PER_MIN", "100000".into()),
        ];
        if options.refunds {
            sandbox_env.push(("SANDBOX_CERT_DIR", cert_dir.display().to_string()));
            sandbox_env.push(("SANDBOX_REFUND_DELAY_MS", "100".into()));
        }
        let sandbox = Service::start("wxmp-sandbox", sandbox_env, d);
        let cert = |file: &str| cert_dir.join(file).display().to_string();
        if options.refunds {
            // Written at the sandbox's start: pay-service reads them at its own.
            let written = wxmp_tests::eventually(Duration::from_secs(30), || async {
                [
                    sandbox::devca::CA_FILE,
                    sandbox::devca::CLIENT_CERT_FILE,
                    sandbox::devca::CLIENT_KEY_FILE,
                ]
                .iter()
                .all(|f| cert_dir.join(f).exists())
                .then_some(())
            })
            .await;
            assert!(written.is_some(), "the sandbox wrote no certificates");
        }
        let replicas =
            |kind: Kind, ports: &[u16], env: &dyn Fn(u16) -> Vec<(&'static str, String)>| {
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, port)| {
                        let name = format!("{}-{i}", kind.binary());
                        Replica {
                            service: Service::start_as(kind.binary(), &name, common(env(*port)), d),
                            name,
                            port: *port,
                        }
                    })
                    .collect::<Vec<_>>()
            };
        let user = replicas(Kind::User, &user_ports, &|port| {
            vec![
                ("USER_LISTEN_ADDR", addr(port)),
                ("USER_DATABASE_URL", user_db.clone()),
                ("USER_AUTH_SERVICE_URL", list(&auth_ports)),
            ]
        });
        let prefix = wxmp_testkit::redis::fresh_prefix("wxmp-scale");
        let auth = replicas(Kind::Auth, &auth_ports, &|port| {
            vec![
                ("AUTH_LISTEN_ADDR", addr(port)),
                ("AUTH_REDIS_URL", redis_url()),
                ("AUTH_REDIS_PREFIX", prefix.clone()),
                ("AUTH_USER_SERVICE_URL", list(&user_ports)),
                (
                    "WXMP_APPS",
                    format!("{}:{}", sandbox::DEV_APP_ID, sandbox::DEV_APP_SECRET),
                ),
                ("WXMP_WECHAT_API_BASE", url(sandbox_port)),
            ]
        });
        let pay = replicas(Kind::Pay, &pay_ports, &|port| {
            vec![
                ("PAY_LISTEN_ADDR", addr(port)),
                ("PAY_DATABASE_URL", pay_db.clone()),
                ("PAY_NOTIFY_URL", format!("{front}/pay/notify")),
                ("PAY_PRODUCTS", format!("{PRODUCT}:1800:Coffee")),
                ("PAY_RECONCILE_INTERVAL_SECS", "1".into()),
                ("PAY_RECONCILE_AFTER_SECS", "1".into()),
                (
                    "PAY_RECONCILE_LEASE_SECS",
                    options.reconcile_lease_secs.to_string(),
                ),
                ("PAY_DB_POOL_SIZE", "8".into()),
                ("WXMP_PAY_MCH_ID", sandbox::DEV_MCH_ID.into()),
                ("WXMP_PAY_KEY", sandbox::DEV_PAY_KEY.into()),
                ("WXMP_WECHAT_PAY_BASE", url(sandbox_port)),
                (
                    "WXMP_WECHAT_TIMEOUT_MS",
                    options.wechat_timeout_ms.to_string(),
                ),
            ]
            .into_iter()
            .chain(
                options
                    .refunds
                    .then(|| {
                        [
                            ("WXMP_PAY_CERT_PATH", cert(sandbox::devca::CLIENT_CERT_FILE)),
                            (
                                "WXMP_PAY_CERT_KEY_PATH",
                                cert(sandbox::devca::CLIENT_KEY_FILE),
                            ),
                            ("WXMP_WECHAT_PAY_CA_PATH", cert(sandbox::devca::CA_FILE)),
                            (
                                "WXMP_WECHAT_PAY_SECAPI_BASE",
                                format!("https://127.0.0.1:{secapi_port}"),
                            ),
                            (
                                "PAY_REFUND_NOTIFY_URL",
                                format!("{front}/pay/refund-notify"),
                            ),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .collect()
        });
        let gateways = gateway_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = format!("gw{i}");
                Replica {
                    service: Service::start_as(
                        "wxmp-gateway",
                        &format!("wxmp-gateway-{i}"),
                        common(vec![
                            ("GATEWAY_LISTEN_ADDR", addr(*port)),
                            ("GATEWAY_AUTH_URL", list(&auth_ports)),
                            ("GATEWAY_USER_URL", list(&user_ports)),
                            ("GATEWAY_PAY_URL", list(&pay_ports)),
                            ("GATEWAY_RPC_TIMEOUT_MS", "5000".into()),
                            ("GATEWAY_WORKERS", "1".into()),
                            ("GATEWAY_TRUSTED_PROXIES", "127.0.0.1".into()),
                            // Every load client is 127.0.0.1: per-IP limits would throttle
                            // the test, not a real crowd.
                            ("GATEWAY_LOGIN_RATE_PER_MIN", "0".into()),
                        ]),
                        d,
                    ),
                    name,
                    port: *port,
                }
            })
            .collect::<Vec<_>>();
        let servers: Vec<(String, u16)> =
            gateways.iter().map(|g| (g.name.clone(), g.port)).collect();
        let haproxy = Haproxy::start(d, front_port, &servers);
        let cluster = Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .pool_max_idle_per_host(64)
                // Below actix's 5 s keep-alive (sandbox, gateways): never reuse a connection
                // the server is closing at that moment.
                .pool_idle_timeout(Duration::from_secs(3))
                .build()
                .expect("client"),
            sandbox_url: url(sandbox_port),
            pay_database_url: pay_db,
            auth,
            user,
            pay,
            gateways,
            haproxy,
            _sandbox: sandbox,
            dir,
        };
        cluster.wait_all_ready().await;
        cluster
    }

    pub fn front(&self, path: &str) -> String {
        format!("{}{path}", self.haproxy.url())
    }

    pub fn sandbox(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox_url)
    }

    fn replicas_mut(&mut self, kind: Kind) -> &mut Vec<Replica> {
        match kind {
            Kind::Auth => &mut self.auth,
            Kind::User => &mut self.user,
            Kind::Pay => &mut self.pay,
        }
    }

    async fn wait_all_ready(&self) {
        for r in self.auth.iter().chain(&self.user).chain(&self.pay) {
            wait_serving(r, Duration::from_secs(60)).await;
        }
        for g in &self.gateways {
            self.haproxy.wait_up(&g.name).await;
            assert!(
                self.gateway_sees_every_upstream(g.port).await,
                "{} never saw every upstream serving",
                g.name
            );
        }
    }

    /// Until the gateway on `port` reports every upstream serving in `/readyz` (it answers
    /// 200 as soon as auth serves; an upstream it found down at start is let through again
    /// once a check sees it serving).
    async fn gateway_sees_every_upstream(&self, port: u16) -> bool {
        let ready = format!("{}/readyz", url(port));
        wxmp_tests::eventually(Duration::from_secs(30), || async {
            let answer = self.http.get(&ready).send().await.ok()?;
            let body: serde_json::Value = answer.json().await.ok()?;
            ["auth", "user", "pay"]
                .iter()
                .all(|name| body["data"][*name] == "serving")
                .then_some(())
        })
        .await
        .is_some()
    }

    /// SIGTERM, wait for a clean exit, start again, wait until it serves.
    pub async fn restart(&mut self, kind: Kind, i: usize) {
        let replica = &mut self.replicas_mut(kind)[i];
        let status = replica.service.terminate().await;
        assert!(status.success(), "{} exit status {status}", replica.name);
        replica.service.spawn();
        wait_serving(replica, Duration::from_secs(30)).await;
    }

    /// The gateway's turn: out of HAProxy (as Kubernetes takes a terminating pod out of the
    /// endpoints, during preStop), SIGTERM, start, back in once its checks pass.
    pub async fn restart_gateway(&mut self, i: usize) {
        let name = self.gateways[i].name.clone();
        self.haproxy.drain(&name).await;
        let replica = &mut self.gateways[i];
        let status = replica.service.terminate().await;
        assert!(status.success(), "{name} exit status {status}");
        replica.service.spawn();
        // Back into the endpoints once its readiness probe passes and it sees every upstream.
        let port = replica.port;
        assert!(
            self.gateway_sees_every_upstream(port).await,
            "{name} never became ready"
        );
        self.haproxy.enable(&name).await;
    }

    pub fn kill(&mut self, kind: Kind, i: usize) {
        self.replicas_mut(kind)[i].service.kill();
    }

    /// Starts a killed replica again and waits until it serves.
    pub async fn respawn(&mut self, kind: Kind, i: usize) {
        let replica = &mut self.replicas_mut(kind)[i];
        replica.service.spawn();
        wait_serving(replica, Duration::from_secs(30)).await;
    }

    /// pay-service's gRPC addresses, one per replica.
    pub fn pay_urls(&self) -> Vec<String> {
        self.pay.iter().map(|r| url(r.port)).collect()
    }

    pub fn kill_gateway(&mut self, i: usize) {
        self.gateways[i].service.kill();
    }

    /// A fresh `wx.login()` code for `openid` (None: a new user).
    pub async fn login_code(&self, openid: Option<&str>) -> Option<(String, String)> {
        let body = match openid {
            Some(o) => serde_json::json!({ "openid": o }),
            None => serde_json::json!({}),
        };
        let answer: serde_json::Value = self
            .http
            .post(self.sandbox("/sandbox/login-code"))
            .json(&body)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some((
            answer["code"].as_str()?.to_owned(),
            answer["openid"].as_str()?.to_owned(),
        ))
    }

    /// The sandbox's per-order WeChat Pay call counters.
    pub async fn calls(&self) -> Vec<serde_json::Value> {
        let answer = self
            .http
            .get(self.sandbox("/sandbox/calls"))
            .send()
            .await
            .expect("sandbox calls");
        assert_eq!(answer.status(), StatusCode::OK);
        answer.json::<Vec<serde_json::Value>>().await.expect("JSON")
    }

    pub async fn post_sandbox(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let answer = self
            .http
            .post(self.sandbox(path))
            .json(&body)
            .send()
            .await
            .expect("sandbox");
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        answer.json().await.unwrap_or(serde_json::Value::Null)
    }

    /// The logs of every process, for a failing test's output.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .collect();
        entries.sort_by_key(std::fs::DirEntry::path);
        for entry in entries {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            // The end of each log says most; keep the output readable.
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {}\n", entry.path().display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Polls the replica's gRPC health until SERVING.
pub async fn wait_serving(replica: &Replica, timeout: Duration) {
    if !is_serving_within(replica.port, timeout).await {
        panic!(
            "{} never reported SERVING; its log:\n{}",
            replica.name,
            replica.service.log()
        );
    }
}

pub async fn is_serving_within(port: u16, timeout: Duration) -> bool {
    let started = Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(url(port))
        .expect("url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    loop {
        let answer = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if answer.is_ok_and(|a| a.get_ref().status() == ServingStatus::Serving) {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
