//! Test harness: a pay-service core on a fresh PostgreSQL database or SQLite file, the real
//! sandbox as WeChat, and a tiny HTTP receiver standing in for the gateway's notify endpoint.

#![allow(dead_code)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use pay_service::{Catalog, Clock, Config, Payments};
use sandbox::{DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY, SandboxHandle};
use service_kit::{
    Secret,
    db::testing::{fresh_postgres_url, fresh_sqlite_url},
    grpc::{DrainConfig, InternalAuthConfig},
    telemetry::{LogFormat, TelemetryConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::{Request, Status};
use wxmp_proto::{
    auth::v1::Principal,
    pay::v1::{self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target},
};

pub const PRODUCTS: &str = "vip:990:VIP one month;coins:100:100 coins";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs each named `async fn(Backend)` of the enclosing file on both back ends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// The WeChat Pay API a test runs on, with what differs between them in WeChat's own words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    V2,
    V3,
}

impl Api {
    /// As stored in `orders.api` / `refunds.api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::V2 => "v2",
            Api::V3 => "v3",
        }
    }

    /// The WeChat path prefix of the refund calls (for `path_prefix` faults).
    pub fn refund_path(self) -> &'static str {
        match self {
            Api::V2 => "/secapi/",
            Api::V3 => "/v3/refund/",
        }
    }

    /// WeChat's word for a refund that failed after acceptance (the money stayed with the
    /// merchant): v2 refund_status CHANGE, v3 status ABNORMAL.
    pub fn abnormal(self) -> &'static str {
        match self {
            Api::V2 => "CHANGE",
            Api::V3 => "ABNORMAL",
        }
    }

    /// WeChat's word for a refund closed without refunding.
    pub fn closed(self) -> &'static str {
        match self {
            Api::V2 => "REFUNDCLOSE",
            Api::V3 => "CLOSED",
        }
    }

    /// WeChat's code for "the merchant's balance cannot cover the refund".
    pub fn not_enough(self) -> &'static str {
        match self {
            Api::V2 => "NOTENOUGH",
            Api::V3 => "NOT_ENOUGH",
        }
    }
}

/// Runs each named `async fn(Backend, Api)` of the enclosing file on both back ends and both
/// WeChat Pay APIs: the same assertions four times.
#[macro_export]
macro_rules! on_both_backends_and_apis {
    ($($name:ident),* $(,)?) => {
        mod postgres_v2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres, $crate::common::Api::V2).await
                }
            )*
        }
        mod sqlite_v2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite, $crate::common::Api::V2).await
                }
            )*
        }
        mod postgres_v3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres, $crate::common::Api::V3).await
                }
            )*
        }
        mod sqlite_v3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite, $crate::common::Api::V3).await
                }
            )*
        }
    };
}

/// Pay v3 with the sandbox's dev keys (public-key mode), written to `dir` as a merchant has
/// them; `api` is what new orders are placed with.
pub fn v3_config(dir: &std::path::Path, api: Api) -> pay_service::config::PayV3Config {
    use sandbox::v3::dev;
    let key = dir.join("v3_merchant_key.pem");
    let public = dir.join("v3_wechatpay_pub.pem");
    std::fs::write(&key, dev::MERCHANT_PRIVATE_KEY).unwrap();
    std::fs::write(&public, dev::WECHATPAY_PUBLIC_KEY).unwrap();
    pay_service::config::PayV3Config {
        api: match api {
            Api::V2 => pay_service::config::PayApi::V2,
            Api::V3 => pay_service::config::PayApi::V3,
        },
        v3_key: Some(Secret::new(dev::APIV3_KEY)),
        private_key_path: Some(key),
        cert_serial: Some(dev::MERCHANT_SERIAL.into()),
        public_key_path: Some(public),
        public_key_id: Some(dev::PUBLIC_KEY_ID.into()),
    }
}

/// A stand-in for the gateway's `POST /pay/notify`: records every body, and (when forwarding)
/// passes it to HandlePayNotify and answers with its XML; otherwise answers HTTP 503, so the
/// sandbox keeps the notify for a later retry.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    /// The same server's refund notify path (`/pay/refund-notify`).
    pub refund_url: String,
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    pub forward: Arc<AtomicBool>,
}

impl Receiver {
    async fn start(payments: Payments) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let receiver = Self {
            url: format!("http://{addr}/pay/notify"),
            refund_url: format!("http://{addr}/pay/refund-notify"),
            bodies: Arc::default(),
            forward: Arc::new(AtomicBool::new(true)),
        };
        let r = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, payments) = (r.clone(), payments.clone());
                tokio::spawn(async move {
                    let _ = r.serve_one(stream, payments).await;
                });
            }
        });
        receiver
    }

    async fn serve_one(
        &self,
        mut stream: tokio::net::TcpStream,
        payments: Payments,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let original_head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let head = original_head.to_ascii_lowercase();
        // A header's value as sent (the v3 signature is case-sensitive base64).
        let header = |name: &str| -> String {
            original_head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[header_end..].to_vec();
        self.bodies.lock().unwrap().push(body.clone());
        let refund = head.starts_with("post /pay/refund-notify");
        let v3 = head.starts_with("post /pay/notify/v3 ")
            || head.starts_with("post /pay/refund-notify/v3 ");
        if v3 {
            let forward = self.forward.load(Ordering::SeqCst);
            let (status, reply) = if !forward {
                ("503 Service Unavailable", String::new())
            } else {
                let (timestamp, nonce, signature, serial) = (
                    header("wechatpay-timestamp"),
                    header("wechatpay-nonce"),
                    header("wechatpay-signature"),
                    header("wechatpay-serial"),
                );
                let (accepted, message) = if refund {
                    let r = PayService::handle_refund_notify_v3(
                        &payments,
                        Request::new(pb::HandleRefundNotifyV3Request {
                            raw_body: body,
                            timestamp,
                            nonce,
                            signature,
                            serial,
                        }),
                    )
                    .await
                    .map(|r| r.into_inner())
                    .unwrap_or_default();
                    (r.accepted, r.message)
                } else {
                    let r = PayService::handle_pay_notify_v3(
                        &payments,
                        Request::new(pb::HandlePayNotifyV3Request {
                            raw_body: body,
                            timestamp,
                            nonce,
                            signature,
                            serial,
                        }),
                    )
                    .await
                    .map(|r| r.into_inner())
                    .unwrap_or_default();
                    (r.accepted, r.message)
                };
                if accepted {
                    ("204 No Content", String::new())
                } else {
                    (
                        "400 Bad Request",
                        serde_json::json!({"code": "FAIL", "message": message}).to_string(),
                    )
                }
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
            stream.write_all(response.as_bytes()).await?;
            return stream.shutdown().await;
        }
        let (status, reply) = if self.forward.load(Ordering::SeqCst) && refund {
            let reply = PayService::handle_refund_notify(
                &payments,
                Request::new(pb::HandleRefundNotifyRequest { raw_body: body }),
            )
            .await
            .map(|r| r.into_inner().reply_xml)
            .unwrap_or_default();
            ("200 OK", reply)
        } else if self.forward.load(Ordering::SeqCst) {
            let reply = PayService::handle_pay_notify(
                &payments,
                Request::new(pb::HandlePayNotifyRequest { raw_body: body }),
            )
            .await
            .map(|r| r.into_inner().reply_xml)
            .unwrap_or_default();
            ("200 OK", reply)
        } else {
            ("503 Service Unavailable", String::new())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }

    pub fn captured(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }
}

pub struct Env {
    pub pay: Payments,
    /// The API new orders are placed with.
    pub api: Api,
    pub config: Config,
    pub sandbox: SandboxHandle,
    pub receiver: Receiver,
    pub clock: Clock,
    pub http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
    _certs: tempfile::TempDir,
}

/// Refund settings pointing at the sandbox's secapi port, with its dev certificate files in
/// `dir` (see `sandbox::DevPki::write_to`).
pub fn refund_config(dir: &std::path::Path, sandbox: &SandboxHandle) -> pay_service::RefundConfig {
    pay_service::RefundConfig {
        cert_path: Some(dir.join(sandbox::devca::CLIENT_CERT_FILE)),
        cert_key_path: Some(dir.join(sandbox::devca::CLIENT_KEY_FILE)),
        refund_notify_url: Some("http://127.0.0.1:9/pay/refund-notify".into()),
        secapi_base: Some(sandbox.secapi_url.clone()),
        ca_path: Some(dir.join(sandbox::devca::CA_FILE)),
    }
}

pub fn config(database_url: String, sandbox: &SandboxHandle) -> Config {
    Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: Secret::new(database_url),
        db_pool_size: 4,
        notify_url: "http://127.0.0.1:9/pay/notify".into(),
        products: PRODUCTS.parse::<Catalog>().unwrap(),
        order_ttl_secs: 1800,
        reconcile_interval_secs: 30,
        reconcile_after_secs: 0,
        product_reuse_secs: pay_service::config::DEFAULT_PRODUCT_REUSE_SECS,
        notify_retention_days: pay_service::config::DEFAULT_NOTIFY_RETENTION_DAYS,
        reconcile_lease_secs: pay_service::config::DEFAULT_RECONCILE_LEASE_SECS,
        mch_id: DEV_MCH_ID.into(),
        pay_key: Secret::new(DEV_PAY_KEY),
        sign_type: "MD5".into(),
        wechat_pay_base: sandbox.base_url.clone(),
        wechat_timeout_ms: 5000,
        events: pay_service::EventsConfig::default(),
        paid_message: Default::default(),
        telemetry: TelemetryConfig {
            log_format: LogFormat::Pretty,
            metrics_addr: None,
        },
        internal: InternalAuthConfig {
            internal_token: None,
            ..Default::default()
        },
        drain: DrainConfig::none(),
        refunds: pay_service::RefundConfig::default(),
        v3: Default::default(),
    }
}

pub async fn database_url(backend: Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Postgres => (fresh_postgres_url("wxmp_pay").await.unwrap(), None),
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (fresh_sqlite_url(dir.path(), "pay"), Some(dir))
        }
    }
}

impl Env {
    pub async fn new(backend: Backend) -> Self {
        Self::with(backend, |_| {}).await
    }

    pub async fn with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_sandbox(backend, sandbox::Config::dev(), false, tweak).await
    }

    /// A core with refunds on: the sandbox's dev merchant certificate in files, its secapi
    /// port, refunds settling after 50 ms and notify retries in milliseconds.
    pub async fn refunding(backend: Backend) -> Self {
        Self::refunding_on(backend, Api::V2).await
    }

    /// [`Env::refunding`] with new orders placed on `api` (v3: the sandbox's dev keys in
    /// public-key mode; v2's certificate stays configured either way).
    pub async fn refunding_on(backend: Backend, api: Api) -> Self {
        let mut sandbox = sandbox::Config::dev();
        sandbox.refund_delay_ms = 50;
        sandbox.notify_time_scale = 0.001;
        // v3 refunds settle after refund_after_ms × the time scale.
        sandbox.pay_v3.refund_after_ms = 50_000;
        Self::with_sandbox_on(backend, sandbox, true, api, |_| {}).await
    }

    pub async fn with_sandbox(
        backend: Backend,
        sandbox_config: sandbox::Config,
        refunds: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::with_sandbox_on(backend, sandbox_config, refunds, Api::V2, tweak).await
    }

    pub async fn with_sandbox_on(
        backend: Backend,
        sandbox_config: sandbox::Config,
        refunds: bool,
        api: Api,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        service_kit::telemetry::init_tracing(LogFormat::Pretty);
        let sandbox = sandbox::spawn(sandbox_config).await.unwrap();
        let (url, dir) = database_url(backend).await;
        let mut config = config(url, &sandbox);
        let certs = tempfile::tempdir().unwrap();
        if refunds {
            sandbox.pki.write_to(certs.path()).unwrap();
            config.refunds = refund_config(certs.path(), &sandbox);
        }
        if api == Api::V3 {
            config.v3 = v3_config(certs.path(), api);
        }
        tweak(&mut config);
        let clock = Clock::system();
        // The receiver hands notifies to a core that only needs the database; the core under
        // test then gets the receiver's URL as its notify_url.
        let notified = pay_service::connect(&config, clock.clone()).await.unwrap();
        let receiver = Receiver::start(notified.clone()).await;
        config.notify_url = receiver.url.clone();
        if config.refunds.enabled() {
            config.refunds.refund_notify_url = Some(receiver.refund_url.clone());
        }
        let pay = Payments::new(&config, notified.database().clone(), clock.clone()).unwrap();
        Self {
            pay,
            api,
            config,
            sandbox,
            receiver,
            clock,
            http: reqwest::Client::new(),
            _dir: dir,
            _certs: certs,
        }
    }

    /// Another core on the same database, configured as `tweak` says (e.g. a restart with
    /// another `WXMP_PAY_API`).
    pub fn replica_with(&self, tweak: impl FnOnce(&mut Config)) -> Payments {
        let mut config = self.config.clone();
        tweak(&mut config);
        Payments::new(&config, self.pay.database().clone(), self.clock.clone()).unwrap()
    }

    /// Where the v3 dev keys and the v2 certificate files are.
    pub fn keys_dir(&self) -> &std::path::Path {
        self._certs.path()
    }

    /// Another core on the same database (another replica).
    pub fn replica(&self) -> Payments {
        Payments::new(
            &self.config,
            self.pay.database().clone(),
            self.clock.clone(),
        )
        .unwrap()
    }

    pub async fn prepare(
        &self,
        principal: &Principal,
        target: Target,
    ) -> Result<pb::PrepareJsapiPaymentResponse, Status> {
        self.prepare_keyed(principal, target, "").await
    }

    /// PrepareJsapiPayment with an idempotency key ("" for none).
    pub async fn prepare_keyed(
        &self,
        principal: &Principal,
        target: Target,
        idempotency_key: &str,
    ) -> Result<pb::PrepareJsapiPaymentResponse, Status> {
        PayService::prepare_jsapi_payment(
            &self.pay,
            Request::new(pb::PrepareJsapiPaymentRequest {
                principal: Some(principal.clone()),
                target: Some(target),
                client_ip: "203.0.113.7".into(),
                idempotency_key: idempotency_key.into(),
            }),
        )
        .await
        .map(|r| r.into_inner())
    }

    /// GetOrder as `user_id`; 0 is an internal admin read (`internal_admin`).
    pub async fn get(&self, order_no: &str, user_id: i64) -> Result<pb::Order, Status> {
        PayService::get_order(
            &self.pay,
            Request::new(pb::GetOrderRequest {
                order_no: order_no.into(),
                user_id,
                internal_admin: user_id == 0,
            }),
        )
        .await
        .map(|r| r.into_inner().order.unwrap())
    }

    /// CloseOrder as `user_id`; 0 is an internal admin close (`internal_admin`).
    pub async fn close(&self, order_no: &str, user_id: i64) -> Result<pb::Order, Status> {
        PayService::close_order(
            &self.pay,
            Request::new(pb::CloseOrderRequest {
                order_no: order_no.into(),
                user_id,
                internal_admin: user_id == 0,
            }),
        )
        .await
        .map(|r| r.into_inner().order.unwrap())
    }

    pub async fn create(
        &self,
        user_id: i64,
        amount_fen: i64,
        description: &str,
        key: &str,
    ) -> Result<pb::Order, Status> {
        PayService::create_order(
            &self.pay,
            Request::new(pb::CreateOrderRequest {
                user_id,
                amount_fen,
                description: description.into(),
                attach: String::new(),
                idempotency_key: key.into(),
            }),
        )
        .await
        .map(|r| r.into_inner().order.unwrap())
    }

    pub async fn notify(&self, body: &[u8]) -> pb::HandlePayNotifyResponse {
        PayService::handle_pay_notify(
            &self.pay,
            Request::new(pb::HandlePayNotifyRequest {
                raw_body: body.to_vec(),
            }),
        )
        .await
        .unwrap()
        .into_inner()
    }

    /// `POST /sandbox/pay`: the user pays with the `wx.requestPayment` parameters `prepared`
    /// carries (the sandbox checks their paySign), with per-order notify faults, if any.
    pub async fn sandbox_pay(
        &self,
        prepared: &pb::PrepareJsapiPaymentResponse,
        faults: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut body = request_payment(prepared);
        if let Some(f) = faults {
            body["faults"] = f;
        }
        let resp = self
            .http
            .post(self.sandbox.url("/sandbox/pay"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "sandbox pay: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn sandbox_order(&self, out_trade_no: &str) -> serde_json::Value {
        self.http
            .get(self.sandbox.url(&format!("/sandbox/orders/{out_trade_no}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn verdicts(&self, order_no: &str) -> Vec<(String, bool)> {
        pay_service::store::notification_verdicts(self.pay.database(), order_no)
            .await
            .unwrap()
    }

    /// Waits (generously) until the receiver has captured `n` notify bodies.
    pub async fn captured_notify(&self, n: usize) -> Vec<u8> {
        let receiver = self.receiver.clone();
        eventually(|| {
            let receiver = receiver.clone();
            async move { receiver.captured().len() >= n }
        })
        .await;
        self.receiver.captured()[n - 1].clone()
    }
}

pub fn principal(user_id: i64) -> Principal {
    Principal {
        user_id,
        app_id: DEV_APP_ID.into(),
        openid: format!("o{user_id:027}"),
        unionid: String::new(),
    }
}

/// The prepay_id inside `package` ("prepay_id=...").
/// The `POST /sandbox/pay` body of the phone: `wx.requestPayment`'s parameters as
/// PrepareJsapiPayment answered them.
pub fn request_payment(resp: &pb::PrepareJsapiPaymentResponse) -> serde_json::Value {
    let p = resp.params.as_ref().expect("JSAPI params");
    serde_json::json!({
        "appId": p.app_id,
        "timeStamp": p.time_stamp,
        "nonceStr": p.nonce_str,
        "package": p.package,
        "signType": p.sign_type,
        "paySign": p.pay_sign,
    })
}

pub fn prepay_id(resp: &pb::PrepareJsapiPaymentResponse) -> String {
    resp.params
        .as_ref()
        .unwrap()
        .package
        .strip_prefix("prepay_id=")
        .unwrap()
        .to_owned()
}

/// Polls `check` until true; panics after a generous timeout (only to avoid hanging).
pub async fn eventually<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn reason(status: &Status) -> service_kit::ErrorReason {
    service_kit::reason::reason_of(status)
}

/// A notify signed with `key` (MD5), fields as given.
/// A notify signed (MD5) and written by the sandbox's WeChat-side code, not by the library
/// pay-service verifies it with.
pub fn signed_notify(fields: &[(&str, &str)], key: &str) -> Vec<u8> {
    let mut all: sandbox::wx::Pairs = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let signature = sandbox::wx::sign(&all, key, sandbox::wx::SignType::Md5);
    all.push(("sign".to_owned(), signature));
    sandbox::wx::to_xml(&all).into_bytes()
}

/// A genuine-looking notify for `order_no`, with fields overridable.
pub fn notify_fields<'a>(
    order_no: &'a str,
    total_fee: &'a str,
    overrides: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", DEV_APP_ID),
        ("mch_id", DEV_MCH_ID),
        ("nonce_str", "abcdefghijklmnop"),
        ("result_code", "SUCCESS"),
        ("openid", "o000000000000000000000000001"),
        ("trade_type", "JSAPI"),
        ("bank_type", "OTHERS"),
        ("total_fee", total_fee),
        ("fee_type", "CNY"),
        ("cash_fee", total_fee),
        ("transaction_id", "4200000000202611250000000001"),
        ("out_trade_no", order_no),
        ("time_end", "20261125120000"),
    ];
    for (k, v) in overrides {
        if let Some(f) = fields.iter_mut().find(|(name, _)| name == k) {
            f.1 = v;
        } else {
            fields.push((k, v));
        }
    }
    fields
}
