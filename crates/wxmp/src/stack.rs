//! Every wxmp service in one process: what `wxmp up` runs, and what the end-to-end tests
//! start on free ports. Each service gets the same `Config` and `serve` its own binary uses;
//! only the listeners and the addresses between them are decided here.

use std::{
    collections::HashMap,
    fmt::Display,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
};

use clap::Parser;
use service_kit::Shutdown;
use tokio::{sync::watch, task::JoinSet};

/// Where WeChat is for this stack.
#[derive(Clone, Debug)]
pub enum WechatTarget {
    /// Start the sandbox in-process and use its dev app and merchant.
    Sandbox(Box<sandbox::Config>),
    /// Real WeChat (or a sandbox elsewhere): apps and merchant come from the environment
    /// (`WXMP_APPS`, `WXMP_PAY_MCH_ID`, `WXMP_PAY_KEY`).
    External { api_base: String, pay_base: String },
}

/// How to assemble the stack. Ports of 0 pick free ones.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub host: IpAddr,
    pub gateway_port: u16,
    pub auth_port: u16,
    pub user_port: u16,
    pub pay_port: u16,
    pub sandbox_port: u16,
    pub user_database_url: String,
    pub pay_database_url: String,
    /// `None` keeps sessions in memory.
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub wechat: WechatTarget,
    /// `PAY_PRODUCTS` format: `id:price_fen:name;...`.
    pub products: String,
    /// Extra command-line arguments per service, e.g. `["--session-ttl-secs", "1"]`.
    pub auth_args: Vec<String>,
    pub user_args: Vec<String>,
    pub pay_args: Vec<String>,
    pub gateway_args: Vec<String>,
    /// Wait for `/readyz` (every upstream and its storage serving) before answering; when
    /// false only `/healthz` is awaited, for stacks started with a dependency down on purpose.
    pub wait_ready: bool,
}

/// The catalog `wxmp up` starts with.
pub const DEMO_PRODUCTS: &str = "coffee:1800:Coffee (sandbox);tea:1200:Tea (sandbox)";
/// The virtual product `wxmp up` sells with the in-process sandbox (virtual payment, 道具直购,
/// issue 26): a catalog id that is also its xpay product id.
pub const DEMO_XPAY_PRODUCT: &str = "vip_month";
/// Its catalog entry (`PAY_PRODUCTS` format), added to [`DEMO_PRODUCTS`] by `wxmp up`.
pub const DEMO_XPAY_CATALOG: &str = "vip_month:3000:VIP month (sandbox virtual payment)";
/// The "order paid" subscribe message `wxmp up` sends when it runs the sandbox.
pub const DEMO_PAID_TEMPLATE_ID: &str = "wxmp-demo-order-paid";
/// Its keywords (`PAY_PAID_TEMPLATE_DATA` format).
pub const DEMO_PAID_TEMPLATE_DATA: &str =
    "character_string1={order_no};amount2={amount};thing3={description};time4={paid_at}";

impl StackOptions {
    /// Sells [`DEMO_XPAY_PRODUCT`] through virtual payment, as `wxmp up` does with the
    /// sandbox: the product in the catalog and pay-service's `PAY_XPAY_*` set to the sandbox's
    /// dev OfferID and its sandbox AppKey (env 1, WeChat's virtual-payment sandbox).
    pub fn sell_demo_virtual_product(&mut self) {
        self.products = format!("{};{DEMO_XPAY_CATALOG}", self.products);
        self.pay_args.extend(
            [
                "--xpay-products",
                &format!("{DEMO_XPAY_PRODUCT}:{DEMO_XPAY_PRODUCT}"),
                "--xpay-offer-id",
                sandbox::xpay::DEV_XPAY_OFFER_ID,
                "--xpay-sandbox-app-key",
                sandbox::xpay::DEV_XPAY_SANDBOX_APP_KEY,
                "--xpay-env",
                "1",
            ]
            .map(str::to_owned),
        );
    }

    /// Everything on 127.0.0.1 free ports, the sandbox in-process, the given databases.
    pub fn ephemeral(user_database_url: String, pay_database_url: String) -> Self {
        let mut sandbox = sandbox::Config::dev();
        // Notify retries in milliseconds instead of minutes; refunds settle at once; the
        // secapi port on a free one.
        sandbox.notify_time_scale = 0.001;
        sandbox.refund_delay_ms = 50;
        sandbox.secapi_listen_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            gateway_port: 0,
            auth_port: 0,
            user_port: 0,
            pay_port: 0,
            sandbox_port: 0,
            user_database_url,
            pay_database_url,
            redis_url: None,
            redis_prefix: None,
            wechat: WechatTarget::Sandbox(Box::new(sandbox)),
            products: DEMO_PRODUCTS.to_owned(),
            auth_args: Vec::new(),
            user_args: Vec::new(),
            pay_args: Vec::new(),
            gateway_args: Vec::new(),
            wait_ready: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("{service} configuration: {message}")]
    Config {
        service: &'static str,
        message: String,
    },
    #[error("{service} stopped: {message}")]
    Service {
        service: &'static str,
        message: String,
    },
}

/// A running stack. Dropping it stops every service.
#[derive(Debug)]
pub struct Stack {
    pub gateway_url: String,
    pub auth_url: String,
    pub user_url: String,
    pub pay_url: String,
    /// The sandbox's base URL when it runs in-process.
    pub sandbox_url: Option<String>,
    shutdown: Shutdown,
    tasks: JoinSet<Result<(), StackError>>,
    /// Per gRPC service ("auth-service", "user-service", "pay-service"): what it should be
    /// doing, and whether it is listening.
    controls: HashMap<&'static str, (watch::Sender<Wanted>, watch::Receiver<bool>)>,
    /// The directories the stack wrote the sandbox's certificates and keys to (removed on drop).
    _own_dirs: Vec<OwnDir>,
}

/// A directory the stack made for the sandbox's dev certificates and keys; removed with the
/// stack. Named after the stack's secapi port, so stacks running side by side in one process
/// (the tests) never write each other's files while a pay-service reads them.
#[derive(Debug)]
struct OwnDir(std::path::PathBuf);

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How [`Stack::stop_service`] stops a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Like SIGTERM: stop accepting, drain in-flight calls, stop background work.
    Graceful,
    /// Like SIGKILL: drop the server at once, cutting in-flight calls mid-way. Background
    /// tasks the service spawned itself (pay-service's reconciler) are not reached and keep
    /// running, as a surviving replica's would.
    Kill,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Up,
    Down(StopMode),
}

/// The first value of `rx` that satisfies `f`; `None` once the sender is gone.
async fn wait_for<T: Copy>(rx: &mut watch::Receiver<T>, f: impl FnMut(&T) -> bool) -> Option<T> {
    rx.wait_for(f).await.ok().map(|v| *v)
}

/// Runs one gRPC service, and runs it again on the same address whenever [`Stack`] asks, until
/// the stack stops or the service fails on its own.
async fn supervise<C, F, Fut, E>(
    service: &'static str,
    first: tokio::net::TcpListener,
    config: C,
    run: F,
    stack: Shutdown,
    mut wanted: watch::Receiver<Wanted>,
    listening: watch::Sender<bool>,
) -> Result<(), StackError>
where
    C: Clone,
    F: Fn(C, tokio::net::TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let failed = |e: E| StackError::Service {
        service,
        message: e.to_string(),
    };
    let addr = first.local_addr().map_err(|source| StackError::Bind {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        source,
    })?;
    let mut listener = Some(first);
    loop {
        let socket = match listener.take() {
            Some(l) => l,
            None => bind_tokio(addr.ip(), addr.port())?,
        };
        let own = Shutdown::new();
        let mut served = Box::pin(run(config.clone(), socket, own.clone()));
        listening.send_replace(true);
        let mode = tokio::select! {
            result = &mut served => return result.map_err(failed),
            _ = stack.wait() => {
                own.trigger();
                return served.await.map_err(failed);
            }
            w = wait_for(&mut wanted, |w| *w != Wanted::Up) => match w {
                Some(Wanted::Down(mode)) => mode,
                _ => StopMode::Graceful,
            },
        };
        if mode == StopMode::Graceful {
            own.trigger();
            if let Err(e) = (&mut served).await {
                tracing::warn!(service, error = %e, "stopped with an error");
            }
        }
        // Dropping the server closes its port (and, when killed, every connection it held).
        drop(served);
        listening.send_replace(false);
        tracing::info!(service, ?mode, "service stopped on request");
        tokio::select! {
            _ = stack.wait() => return Ok(()),
            up = wait_for(&mut wanted, |w| *w == Wanted::Up) => if up.is_none() { return Ok(()) },
        }
        tracing::info!(service, %addr, "service starting again");
    }
}

fn bind_std(host: IpAddr, port: u16) -> Result<std::net::TcpListener, StackError> {
    let addr = SocketAddr::new(host, port);
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| StackError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StackError::Bind { addr, source })?;
    Ok(listener)
}

fn bind_tokio(host: IpAddr, port: u16) -> Result<tokio::net::TcpListener, StackError> {
    let listener = bind_std(host, port)?;
    let addr = SocketAddr::new(host, port);
    tokio::net::TcpListener::from_std(listener).map_err(|source| StackError::Bind { addr, source })
}

fn url_of(listener_addr: io::Result<SocketAddr>) -> String {
    match listener_addr {
        Ok(addr) => format!("http://{addr}"),
        Err(_) => "http://127.0.0.1:0".to_owned(),
    }
}

/// Parses a service's config from `args`, with the environment filling in everything else,
/// exactly as the service's own binary would.
fn parse<C: Parser>(service: &'static str, args: Vec<String>) -> Result<C, StackError> {
    C::try_parse_from(std::iter::once(service.to_owned()).chain(args)).map_err(|e| {
        StackError::Config {
            service,
            message: e.to_string(),
        }
    })
}

fn arg(args: &mut Vec<String>, flag: &str, value: impl Into<String>) {
    args.push(flag.to_owned());
    args.push(value.into());
}

/// Pay v3 against the sandbox: its APIv3 key and merchant serial, the dev merchant key and (in
/// public-key and migration mode) WeChat Pay's public key, written to files as a merchant would
/// have them; in migration mode platform certificates are downloaded too.
/// pay-service loads them whatever `WXMP_PAY_API` says (it picks the API of new orders only);
/// the keys are the sandbox's public dev keys.
fn sandbox_v3_args(
    args: &mut Vec<String>,
    v3: &sandbox::V3Config,
    dir: &Path,
) -> Result<(), StackError> {
    use sandbox::v3::{Mode, dev};
    let write = |name: &str, pem: &str| -> Result<String, StackError> {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join(name), pem))
            .map_err(|e| StackError::Service {
                service: "sandbox",
                message: format!("writing its dev keys to {}: {e}", dir.display()),
            })?;
        Ok(dir.join(name).display().to_string())
    };
    arg(args, "--pay-v3-key", v3.apiv3_key.expose());
    arg(args, "--pay-cert-serial", v3.merchant_serial.clone());
    if v3.merchant_public_key_path.is_none() {
        arg(
            args,
            "--pay-private-key-path",
            write("merchant_key.pem", dev::MERCHANT_PRIVATE_KEY)?,
        );
    }
    if matches!(v3.mode, Mode::PublicKey | Mode::Migration) {
        arg(
            args,
            "--pay-public-key-path",
            write("wechatpay_pub.pem", dev::WECHATPAY_PUBLIC_KEY)?,
        );
        arg(args, "--pay-public-key-id", dev::PUBLIC_KEY_ID);
    }
    if v3.mode == Mode::Migration {
        // Both keys, as the README's runbook has it during WeChat's switch: callbacks come
        // signed with either.
        arg(args, "--pay-platform-certificates", "true");
    }
    Ok(())
}

impl Stack {
    pub async fn start(options: StackOptions) -> Result<Self, StackError> {
        let shutdown = Shutdown::new();
        let mut tasks = JoinSet::new();

        let gateway_listener = bind_std(options.host, options.gateway_port)?;
        let auth_listener = bind_tokio(options.host, options.auth_port)?;
        let user_listener = bind_tokio(options.host, options.user_port)?;
        let pay_listener = bind_tokio(options.host, options.pay_port)?;
        let gateway_url = url_of(gateway_listener.local_addr());
        let auth_url = url_of(auth_listener.local_addr());
        let user_url = url_of(user_listener.local_addr());
        let pay_url = url_of(pay_listener.local_addr());

        let mut auth_args = Vec::new();
        let mut pay_args = Vec::new();
        let mut sandbox_url = None;
        let mut own_dirs = Vec::new();
        // The dev app's message push: the sandbox pushes to the gateway with these.
        let mut push_apps: Option<String> = None;
        let (api_base, pay_base) = match &options.wechat {
            WechatTarget::Sandbox(config) => {
                let listener = bind_std(options.host, options.sandbox_port)?;
                let url = url_of(listener.local_addr());
                let apps = config
                    .apps
                    .0
                    .iter()
                    .map(|a| format!("{}:{}", a.appid, a.secret.expose()))
                    .collect::<Vec<_>>()
                    .join(",");
                arg(&mut auth_args, "--apps", apps);
                arg(&mut pay_args, "--mch-id", config.mch_id.clone());
                arg(&mut pay_args, "--pay-key", config.pay_key.expose());
                // Refunds work offline: the sandbox's dev CA and merchant certificate, in
                // files as pay-service reads them (SANDBOX_CERT_DIR, else a directory of ours).
                let secapi = bind_std(options.host, config.secapi_listen_addr.port())?;
                let secapi_port = secapi.local_addr().map(|a| a.port()).unwrap_or_default();
                let pki = sandbox::DevPki::generate(&config.mch_id, &[options.host.to_string()])
                    .map_err(|e| StackError::Service {
                        service: "sandbox",
                        message: e.to_string(),
                    })?;
                let dir = match &config.cert_dir {
                    Some(dir) => dir.clone(),
                    None => {
                        let dir = std::env::temp_dir().join(format!(
                            "wxmp-sandbox-certs-{}-{secapi_port}",
                            std::process::id()
                        ));
                        own_dirs.push(OwnDir(dir.clone()));
                        dir
                    }
                };
                pki.write_to(&dir).map_err(|e| StackError::Service {
                    service: "sandbox",
                    message: format!("writing {}: {e}", dir.display()),
                })?;
                let cert = |file: &str| dir.join(file).display().to_string();
                arg(
                    &mut pay_args,
                    "--cert-path",
                    cert(sandbox::devca::CLIENT_CERT_FILE),
                );
                arg(
                    &mut pay_args,
                    "--cert-key-path",
                    cert(sandbox::devca::CLIENT_KEY_FILE),
                );
                arg(&mut pay_args, "--ca-path", cert(sandbox::devca::CA_FILE));
                let secapi_host = if options.host.is_unspecified() {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    options.host
                };
                arg(
                    &mut pay_args,
                    "--secapi-base",
                    format!("https://{}", SocketAddr::new(secapi_host, secapi_port)),
                );
                arg(
                    &mut pay_args,
                    "--refund-notify-url",
                    format!("{gateway_url}/pay/refund-notify"),
                );
                let keys = std::env::temp_dir().join(format!(
                    "wxmp-sandbox-keys-{}-{secapi_port}",
                    std::process::id()
                ));
                own_dirs.push(OwnDir(keys.clone()));
                sandbox_v3_args(&mut pay_args, &config.pay_v3, &keys)?;
                let mut config = (**config).clone();
                if config.shipping.push_url.is_none() {
                    let appid = config.default_appid().to_owned();
                    config.shipping.push_url = Some(format!("{gateway_url}/wechat/push/{appid}"));
                    config.shipping.push_token = sandbox::shipping::DEV_PUSH_TOKEN.into();
                    config.shipping.push_aes_key = sandbox::shipping::DEV_PUSH_AES_KEY.into();
                    push_apps = Some(format!(
                        "{appid}|{}|{}|{}",
                        sandbox::shipping::DEV_PUSH_TOKEN,
                        sandbox::shipping::DEV_PUSH_AES_KEY,
                        config.shipping.push_mode
                    ));
                }
                // Shipping uploads retried within seconds (the sandbox answers 10060001 for
                // a few seconds after a payment, as WeChat does).
                arg(&mut pay_args, "--shipping-retry-ms", "1000");
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    sandbox::serve_with(config, listener, secapi, pki, stop)
                        .await
                        .map_err(|e| StackError::Service {
                            service: "sandbox",
                            message: e.to_string(),
                        })
                });
                sandbox_url = Some(url.clone());
                // The bill job asks with the sandbox's app unless told otherwise.
                if std::env::var_os("PAY_BILLS_APPID").is_none() {
                    arg(&mut pay_args, "--bills-appid", sandbox::DEV_APP_ID);
                }
                (url.clone(), url)
            }
            WechatTarget::External { api_base, pay_base } => (api_base.clone(), pay_base.clone()),
        };

        arg(&mut auth_args, "--user-service-url", &*user_url);
        arg(&mut auth_args, "--wechat-api-base", &*api_base);
        if let Some(redis) = &options.redis_url {
            arg(&mut auth_args, "--redis-url", &**redis);
        }
        if let Some(prefix) = &options.redis_prefix {
            arg(&mut auth_args, "--redis-prefix", &**prefix);
        }
        auth_args.extend(options.auth_args.iter().cloned());
        let auth_config: auth_service::Config = parse("wxmp-auth", auth_args)?;

        let mut user_args = Vec::new();
        arg(
            &mut user_args,
            "--database-url",
            &*options.user_database_url,
        );
        arg(&mut user_args, "--auth-service-url", &*auth_url);
        arg(&mut user_args, "--wechat-api-base", &*api_base);
        user_args.extend(options.user_args.iter().cloned());
        let user_config: user_service::Config = parse("wxmp-user", user_args)?;

        arg(&mut pay_args, "--database-url", &*options.pay_database_url);
        arg(&mut pay_args, "--wechat-pay-base", pay_base);
        arg(
            &mut pay_args,
            "--notify-url",
            format!("{gateway_url}/pay/notify"),
        );
        arg(&mut pay_args, "--products", &*options.products);
        arg(&mut pay_args, "--auth-service-url", &*auth_url);
        arg(&mut pay_args, "--wechat-api-base", &*api_base);
        pay_args.extend(options.pay_args.iter().cloned());
        let pay_config: pay_service::Config = parse("wxmp-pay", pay_args)?;

        let mut gateway_args = Vec::new();
        arg(&mut gateway_args, "--auth-url", &*auth_url);
        arg(&mut gateway_args, "--user-url", &*user_url);
        arg(&mut gateway_args, "--pay-url", &*pay_url);
        // auth-service runs in this process: its logouts reach the gateway's session cache
        // through the in-process feed (also when the sessions are in Redis).
        gateway_args.push("--in-process-revocation".into());
        if let Some(apps) = push_apps {
            arg(&mut gateway_args, "--push-apps", apps);
        }
        gateway_args.extend(options.gateway_args.iter().cloned());
        let gateway_config: gateway::Config = parse("wxmp-gateway", gateway_args)?;

        // user-service first: it runs its migrations before serving, and auth calls it.
        let mut controls = HashMap::new();
        let mut control = |name: &'static str| {
            let (wanted_tx, wanted_rx) = watch::channel(Wanted::Up);
            let (listening_tx, listening_rx) = watch::channel(false);
            controls.insert(name, (wanted_tx, listening_rx));
            (wanted_rx, listening_tx)
        };
        let (wanted, listening) = control("user-service");
        tasks.spawn(supervise(
            "user-service",
            user_listener,
            user_config,
            user_service::serve,
            shutdown.clone(),
            wanted,
            listening,
        ));
        let (wanted, listening) = control("pay-service");
        tasks.spawn(supervise(
            "pay-service",
            pay_listener,
            pay_config,
            pay_service::serve,
            shutdown.clone(),
            wanted,
            listening,
        ));
        let (wanted, listening) = control("auth-service");
        tasks.spawn(supervise(
            "auth-service",
            auth_listener,
            auth_config,
            auth_service::serve,
            shutdown.clone(),
            wanted,
            listening,
        ));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            gateway::serve(gateway_config, gateway_listener, stop)
                .await
                .map_err(|e| StackError::Service {
                    service: "gateway",
                    message: e.to_string(),
                })
        });

        let mut stack = Self {
            gateway_url,
            auth_url,
            user_url,
            pay_url,
            sandbox_url,
            shutdown,
            tasks,
            controls,
            _own_dirs: own_dirs,
        };
        stack
            .wait_for(if options.wait_ready {
                "/readyz"
            } else {
                "/healthz"
            })
            .await?;
        Ok(stack)
    }

    /// Waits until the gateway's `path` answers 200; for `/readyz`, also until its `data`
    /// names every upstream serving (it is 200 as soon as auth serves), so callers never race
    /// the migrations nor meet the gateway's fail-fast gate, which a probe of a service still
    /// starting may have closed. A service that fails to start ends the wait with its error.
    async fn wait_for(&mut self, path: &str) -> Result<(), StackError> {
        let http = reqwest::Client::new();
        let url = format!("{}{path}", self.gateway_url);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        // Once /readyz is 200, how long to wait for the other upstreams before answering
        // anyway (a service may be slow to report; its routes then recover on their own).
        let mut first_ready: Option<tokio::time::Instant> = None;
        loop {
            if let Some(done) = self.tasks.try_join_next() {
                flatten(done)?;
                return Err(StackError::Service {
                    service: "stack",
                    message: "a service stopped while the stack was starting".to_owned(),
                });
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let serving = ["auth", "user", "pay"]
                    .iter()
                    .all(|name| body["data"][*name] == "serving");
                let since = *first_ready.get_or_insert_with(tokio::time::Instant::now);
                if path != "/readyz" || serving {
                    return Ok(());
                }
                if since.elapsed() > std::time::Duration::from_secs(10) {
                    tracing::warn!(readiness = %body["data"], "not every upstream serves yet; starting anyway");
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StackError::Service {
                    service: "gateway",
                    message: format!("{path} not 200 after 30 s (see the logs above)"),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops one gRPC service ("auth-service", "user-service" or "pay-service") and answers
    /// once its port is closed; the rest of the stack keeps running. For fault tests.
    pub async fn stop_service(&self, service: &str, mode: StopMode) -> Result<(), StackError> {
        self.control(service, Wanted::Down(mode), false).await
    }

    /// Starts a service stopped by [`Stack::stop_service`] again on the same address, with the
    /// same configuration, and answers once it listens.
    pub async fn start_service(&self, service: &str) -> Result<(), StackError> {
        self.control(service, Wanted::Up, true).await
    }

    async fn control(
        &self,
        service: &str,
        wanted: Wanted,
        listening: bool,
    ) -> Result<(), StackError> {
        let Some((tx, rx)) = self.controls.get(service) else {
            return Err(StackError::Config {
                service: "stack",
                message: format!("no restartable service {service:?}"),
            });
        };
        tx.send_replace(wanted);
        let mut rx = rx.clone();
        let reached = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            rx.wait_for(|l| *l == listening),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StackError::Service {
                service: "stack",
                message: format!("{service} did not reach listening={listening}"),
            }),
        }
    }

    /// The handle that stops every service.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs until shutdown is triggered or a service fails; then stops the rest, draining.
    pub async fn run_until_stopped(mut self) -> Result<(), StackError> {
        let mut first_error = None;
        tokio::select! {
            _ = self.shutdown.wait() => {}
            Some(done) = self.tasks.join_next() => {
                first_error = flatten(done).err();
                self.shutdown.trigger();
            }
        }
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = flatten(done)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every service and waits for them to drain.
    pub async fn stop(self) -> Result<(), StackError> {
        self.shutdown.trigger();
        self.run_until_stopped().await
    }
}

fn flatten(done: Result<Result<(), StackError>, tokio::task::JoinError>) -> Result<(), StackError> {
    done.map_err(|e| StackError::Service {
        service: "task",
        message: e.to_string(),
    })?
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
