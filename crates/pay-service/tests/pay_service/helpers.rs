//! Test harness: a pay-service core on a fresh PostgreSQL database or SQLite file, the real
//! sandbox as WeChat, and a tiny HTTP receiver standing in for the gateway's notify endpoint.

use std::{
    future::Future,
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
    grpc::{DrainConfig, InternalAuthConfig},
    telemetry::{LogFormat, TelemetryConfig},
};
use tonic::{Request, Status};
use wxmp_proto::{
    auth::v1::Principal,
    pay::v1::{self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target},
};
use wxmp_testkit::db::{fresh_sqlite_url, migrated_postgres_url};
pub use wxmp_testkit::http::{Request as TestRequest, Response as TestResponse, TestServer};

pub const PRODUCTS: &str = "vip:990:VIP one month;coins:100:100 coins";

pub use wxmp_testkit::{Backend, on_both_backends, on_both_backends_and_apis};

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
        ..Default::default()
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
    /// The pay notifies as received (v3 with their `Wechatpay-*` headers), for replays.
    pub notices: Arc<Mutex<Vec<Notice>>>,
    pub forward: Arc<AtomicBool>,
}

/// A payment notify as WeChat sends it: the body, and on v3 the `Wechatpay-Timestamp`,
/// `-Nonce`, `-Signature` and `-Serial` headers.
#[derive(Clone, Debug)]
pub struct Notice {
    pub body: Vec<u8>,
    pub headers: Option<[String; 4]>,
}

/// HandlePayNotify's answer on either API: what WeChat would be told.
#[derive(Clone, Debug)]
pub struct Reply {
    pub accepted: bool,
    pub verdict: String,
    /// v2: the reply XML; v3: "" (HTTP 204) or the `{"code":"FAIL",...}` body.
    pub answer: String,
}

impl Reply {
    /// WeChat takes it as received and stops retrying: v2 `return_code` SUCCESS, v3 HTTP 204.
    pub fn wechat_stops(&self) -> bool {
        if self.answer.starts_with("<xml>") {
            self.answer.contains("SUCCESS") && !self.answer.contains("FAIL")
        } else {
            self.accepted && self.answer.is_empty()
        }
    }
}

impl Receiver {
    async fn start(payments: Payments) -> Self {
        let receiver = Self {
            url: String::new(),
            refund_url: String::new(),
            bodies: Arc::default(),
            notices: Arc::default(),
            forward: Arc::new(AtomicBool::new(true)),
        };
        let r = receiver.clone();
        let server = TestServer::start(move |request: TestRequest| {
            let (r, payments) = (r.clone(), payments.clone());
            async move { r.serve_one(request, payments).await }
        })
        .await;
        Self {
            url: server.url("/pay/notify"),
            refund_url: server.url("/pay/refund-notify"),
            ..receiver
        }
    }

    async fn serve_one(&self, request: TestRequest, payments: Payments) -> TestResponse {
        // The request line, lower-cased, as the routes below compare it.
        let head = format!("{} {} ", request.method, request.target).to_ascii_lowercase();
        // A header's value as sent (the v3 signature is case-sensitive base64).
        let header = |name: &str| -> String { request.header(name).unwrap_or_default().to_owned() };
        let body = request.body.clone();
        self.bodies.lock().unwrap().push(body.clone());
        let refund = head.starts_with("post /pay/refund-notify");
        let v3 = head.starts_with("post /pay/notify/v3 ")
            || head.starts_with("post /pay/refund-notify/v3 ");
        if !refund {
            let headers = v3.then(|| {
                [
                    header("wechatpay-timestamp"),
                    header("wechatpay-nonce"),
                    header("wechatpay-signature"),
                    header("wechatpay-serial"),
                ]
            });
            self.notices.lock().unwrap().push(Notice {
                body: body.clone(),
                headers,
            });
        }
        if v3 {
            let forward = self.forward.load(Ordering::SeqCst);
            let (status, reply) = if !forward {
                (503, String::new())
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
                    .map(tonic::Response::into_inner)
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
                    .map(tonic::Response::into_inner)
                    .unwrap_or_default();
                    (r.accepted, r.message)
                };
                if accepted {
                    (204, String::new())
                } else {
                    (
                        400,
                        serde_json::json!({"code": "FAIL", "message": message}).to_string(),
                    )
                }
            };
            return TestResponse::new("application/json", reply).status(status);
        }
        let (status, reply) = if self.forward.load(Ordering::SeqCst) && refund {
            let reply = PayService::handle_refund_notify(
                &payments,
                Request::new(pb::HandleRefundNotifyRequest { raw_body: body }),
            )
            .await
            .map(|r| r.into_inner().reply_xml)
            .unwrap_or_default();
            (200, reply)
        } else if self.forward.load(Ordering::SeqCst) {
            let reply = PayService::handle_pay_notify(
                &payments,
                Request::new(pb::HandlePayNotifyRequest { raw_body: body }),
            )
            .await
            .map(|r| r.into_inner().reply_xml)
            .unwrap_or_default();
            (200, reply)
        } else {
            (503, String::new())
        };
        TestResponse::new("text/xml", reply).status(status)
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
        listen: service_kit::settings::Listen::new("127.0.0.1:0".parse().unwrap()),
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
        reconcile_concurrency: pay_service::config::DEFAULT_RECONCILE_CONCURRENCY,
        mch_id: DEV_MCH_ID.into(),
        pay_key: Secret::new(DEV_PAY_KEY),
        sign_type: "MD5".into(),
        wechat_pay_base: sandbox.base_url.clone(),
        wechat: service_kit::settings::WechatApi::new(wechat::config::DEFAULT_API_BASE),
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
        bills: pay_service::config::BillsConfig {
            appid: Some(sandbox::DEV_APP_ID.into()),
            ..bills_config()
        },
        nats: Default::default(),
        shipping: Default::default(),
        xpay: Default::default(),
    }
}

pub async fn database_url(backend: Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Postgres => (
            migrated_postgres_url("wxmp_pay", &pay_service::MIGRATIONS)
                .await
                .unwrap(),
            None,
        ),
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

    /// A core placing new orders on `api` (v3: the sandbox's dev keys, public-key mode).
    pub async fn on(backend: Backend, api: Api) -> Self {
        Self::with_on(backend, api, |_| {}).await
    }

    /// [`Env::on`] with the config tweaked.
    pub async fn with_on(backend: Backend, api: Api, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_sandbox_on(backend, sandbox::Config::dev(), false, api, tweak).await
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
        .map(tonic::Response::into_inner)
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
        pay_service::orders::store::notification_verdicts(self.pay.database(), order_no)
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

    /// Waits until the receiver has got `n` pay notifies; the `n`th, headers and all.
    pub async fn captured_notice(&self, n: usize) -> Notice {
        let receiver = self.receiver.clone();
        eventually(|| {
            let receiver = receiver.clone();
            async move { receiver.notices.lock().unwrap().len() >= n }
        })
        .await;
        self.receiver.notices.lock().unwrap()[n - 1].clone()
    }

    /// Hands a pay notify to HandlePayNotify (v2) or HandlePayNotifyV3 (with headers).
    pub async fn deliver(&self, notice: &Notice) -> Reply {
        deliver_to(&self.pay, notice).await
    }

    /// A genuine-looking payment notify of the env's API for `order_no` (see
    /// [`paid_notice`]).
    pub fn paid_notice(
        &self,
        order_no: &str,
        total_fee: &str,
        overrides: &[(&str, &str)],
    ) -> Notice {
        paid_notice(self.api, order_no, total_fee, overrides, Forgery::None)
    }

    /// WeChat's view of an order of the env's API (`/sandbox/orders/` or `/sandbox/v3/orders/`).
    pub async fn wechat_order(&self, out_trade_no: &str) -> serde_json::Value {
        let path = match self.api {
            Api::V2 => format!("/sandbox/orders/{out_trade_no}"),
            Api::V3 => format!("/sandbox/v3/orders/{out_trade_no}"),
        };
        self.http
            .get(self.sandbox.url(&path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Where WeChat sends the pay notifies of the env's API (v3: `PAY_NOTIFY_URL` + `/v3`).
    pub fn wechat_notify_url(&self) -> String {
        match self.api {
            Api::V2 => self.receiver.url.clone(),
            Api::V3 => format!("{}/v3", self.receiver.url),
        }
    }

    /// Sets the sandbox's global faults (`/sandbox/faults`).
    pub async fn set_faults(&self, faults: serde_json::Value) {
        let resp = self
            .http
            .post(self.sandbox.url("/sandbox/faults"))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
}

/// Hands a pay notify to `pay`'s HandlePayNotify (v2) or HandlePayNotifyV3 (with headers).
pub async fn deliver_to(pay: &Payments, notice: &Notice) -> Reply {
    match &notice.headers {
        None => {
            let r = PayService::handle_pay_notify(
                pay,
                Request::new(pb::HandlePayNotifyRequest {
                    raw_body: notice.body.clone(),
                }),
            )
            .await
            .unwrap()
            .into_inner();
            Reply {
                accepted: r.accepted,
                verdict: r.verdict,
                answer: r.reply_xml,
            }
        }
        Some([timestamp, nonce, signature, serial]) => {
            let r = PayService::handle_pay_notify_v3(
                pay,
                Request::new(pb::HandlePayNotifyV3Request {
                    raw_body: notice.body.clone(),
                    timestamp: timestamp.clone(),
                    nonce: nonce.clone(),
                    signature: signature.clone(),
                    serial: serial.clone(),
                }),
            )
            .await
            .unwrap()
            .into_inner();
            let answer = if r.accepted {
                String::new()
            } else {
                serde_json::json!({"code": "FAIL", "message": r.message}).to_string()
            };
            Reply {
                accepted: r.accepted,
                verdict: r.verdict,
                answer,
            }
        }
    }
}

/// How a test notify is forged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// As WeChat sends it.
    None,
    /// Signed with a key that is not WeChat's (v2: not the merchant key).
    Signature,
    /// v3: `Wechatpay-Serial` names a key nobody published.
    Serial,
    /// v3: `Wechatpay-Timestamp` 10 minutes old (WeChat's own notifies are fresh).
    Stale,
    /// v3: one character of the resource's ciphertext changed, then signed (the GCM tag fails).
    Ciphertext,
}

/// A payment notify written the way WeChat writes it, by the sandbox's WeChat-side code and
/// keys (never the library pay-service verifies with): v2 the signed XML of
/// [`notify_fields`] (`overrides` by v2 name); v3 the `TRANSACTION.SUCCESS` envelope of the
/// same facts (appid, mch_id → mchid, total_fee → amount.total, transaction_id, time_end →
/// success_time), its resource sealed with the APIv3 key, signed with WeChat Pay's key.
pub fn paid_notice(
    api: Api,
    order_no: &str,
    total_fee: &str,
    overrides: &[(&str, &str)],
    forgery: Forgery,
) -> Notice {
    let fields = notify_fields(order_no, total_fee, overrides);
    match api {
        Api::V2 => {
            let key = match forgery {
                Forgery::None => DEV_PAY_KEY,
                Forgery::Signature => "not-the-merchant-key-000000000000",
                other => panic!("{other:?} is a v3 forgery"),
            };
            Notice {
                body: signed_notify(&fields, key),
                headers: None,
            }
        }
        Api::V3 => {
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| *v)
                    .unwrap_or_default()
            };
            let total: i64 = get("total_fee").parse().unwrap();
            let t = get("time_end");
            let success_time = format!(
                "{}-{}-{}T{}:{}:{}+08:00",
                &t[0..4],
                &t[4..6],
                &t[6..8],
                &t[8..10],
                &t[10..12],
                &t[12..14]
            );
            let transaction = serde_json::json!({
                "appid": get("appid"), "mchid": get("mch_id"), "out_trade_no": order_no,
                "transaction_id": get("transaction_id"), "trade_type": "JSAPI",
                "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
                "success_time": success_time,
                "payer": { "openid": get("openid") },
                "amount": { "total": total, "payer_total": total, "currency": "CNY",
                            "payer_currency": "CNY" },
            });
            v3_notice(&transaction, forgery)
        }
    }
}

/// A v3 `TRANSACTION.SUCCESS` notify of `transaction` (the decrypted resource), by the
/// sandbox's crypto and WeChat Pay's dev key (public-key mode), forged as `forgery` says.
pub fn v3_notice(transaction: &serde_json::Value, forgery: Forgery) -> Notice {
    use sandbox::v3::{crypto, dev};
    let key: [u8; 32] = dev::APIV3_KEY.as_bytes().try_into().unwrap();
    let nonce = crypto::resource_nonce();
    let mut ciphertext = crypto::seal(
        &key,
        &nonce,
        b"transaction",
        transaction.to_string().as_bytes(),
    );
    if forgery == Forgery::Ciphertext {
        let mid = ciphertext.len() / 2;
        let flipped = if &ciphertext[mid..=mid] == "A" {
            "B"
        } else {
            "A"
        };
        ciphertext.replace_range(mid..=mid, flipped);
    }
    let body = serde_json::json!({
        "id": "EV-018352ea-notify-test",
        "create_time": "2026-12-01T12:00:00+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": "transaction",
            "nonce": String::from_utf8_lossy(&nonce),
        }
    })
    .to_string();
    v3_signed(body.into_bytes(), forgery)
}

/// `body` with the four `Wechatpay-*` headers WeChat Pay's dev key (public-key mode) gives it,
/// forged as `forgery` says (`Ciphertext` is the caller's to do).
pub fn v3_signed(body: Vec<u8>, forgery: Forgery) -> Notice {
    use sandbox::v3::{crypto, dev};
    let mut timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if forgery == Forgery::Stale {
        timestamp -= 600;
    }
    let timestamp = timestamp.to_string();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let signer = crypto::Signer::from_pem(match forgery {
        // A valid RSA signature by a key WeChat never published.
        Forgery::Signature => dev::MERCHANT_PRIVATE_KEY,
        _ => dev::WECHATPAY_PRIVATE_KEY,
    })
    .unwrap();
    let signature = signer.sign(&crypto::signed_lines(&[
        timestamp.as_bytes(),
        nonce.as_bytes(),
        &body,
    ]));
    let serial = match forgery {
        Forgery::Serial => "PUB_KEY_ID_0119000001092026120100000000009999".to_owned(),
        _ => dev::PUBLIC_KEY_ID.to_owned(),
    };
    Notice {
        body,
        headers: Some([timestamp, nonce, signature, serial]),
    }
}

/// A genuine notice with its body changed after signing: v2 total_fee 100 → 1, v3 the
/// envelope's summary.
pub fn tampered(notice: &Notice) -> Notice {
    let body = String::from_utf8(notice.body.clone()).unwrap();
    let changed = match notice.headers {
        // (WeChat writes total_fee without CDATA.)
        None => body.replace("<total_fee>100</total_fee>", "<total_fee>1</total_fee>"),
        Some(_) => body.replace("支付成功", "支付失败"),
    };
    assert_ne!(body, changed);
    Notice {
        body: changed.into_bytes(),
        headers: notice.headers.clone(),
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

/// Sends `request` on to `upstream` (a base URL) as it came, and answers what came back: the
/// body of a proxy in front of the sandbox.
pub async fn forward(
    http: &reqwest::Client,
    upstream: &str,
    request: &TestRequest,
) -> TestResponse {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
    let mut onward = http
        .request(method, format!("{upstream}{}", request.target))
        .body(request.body.clone());
    for (name, value) in &request.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            onward = onward.header(name, value);
        }
    }
    let answer = onward.send().await.unwrap();
    let mut response = TestResponse::empty(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            response = response.header(name.as_str(), value.to_str().unwrap_or_default());
        }
    }
    response.body = answer.bytes().await.unwrap().to_vec();
    response
}

/// The refund `out_refund_no` as GetRefund answers it.
pub async fn get_refund(env: &Env, out_refund_no: &str) -> pb::RefundRecord {
    PayService::get_refund(
        &env.pay,
        Request::new(pb::GetRefundRequest {
            out_refund_no: out_refund_no.into(),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .refund
    .unwrap()
}

/// GET of a sandbox developer path (`/sandbox/...`), as JSON.
pub async fn sandbox_get(env: &Env, path: &str) -> serde_json::Value {
    env.http
        .get(env.sandbox.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The bill job's defaults (what clap gives with no variable set).
pub fn bills_config() -> pay_service::config::BillsConfig {
    use pay_service::config::bills::*;
    BillsConfig {
        enabled: false,
        hour: DEFAULT_BILLS_HOUR,
        apis: "auto".into(),
        appid: None,
        retry_secs: DEFAULT_BILLS_RETRY_SECS,
        max_attempts: DEFAULT_BILLS_MAX_ATTEMPTS,
        lease_secs: DEFAULT_BILLS_LEASE_SECS,
    }
}
