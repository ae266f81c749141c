//! The actix-web server: routes, [`serve`] and the test helper [`spawn`].

use std::{io, net::TcpListener};

use actix_web::{App, HttpResponse, HttpServer, middleware::from_fn, web};
use service_kit::Shutdown;
use tokio::task::JoinHandle;

use crate::{
    bills, calls, config::Config, console, devca::DevPki, faults, login, notify, openapi, order,
    pay, refund, state::Sandbox, token, user_data, v3, wx,
};

/// A pay path: POST to `handler`, any other method gets WeChat's "请使用post方法".
fn pay_path<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path.to_owned())
        .route(web::post().to(handler))
        .default_service(web::to(pay::require_post))
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(console::routes)
        .route(
            "/healthz",
            web::get().to(|| async { HttpResponse::Ok().body("ok") }),
        )
        .service(
            web::scope("/sandbox")
                .route("/login-code", web::post().to(login::login_code))
                .route("/user-data", web::post().to(user_data::user_data))
                .route("/pay", web::post().to(notify::pay))
                .route("/notifies", web::get().to(notify::list))
                .route("/calls", web::get().to(calls::list))
                .route("/orders", web::get().to(order::list))
                .route("/orders/{out_trade_no}", web::get().to(order::get))
                .route("/access-tokens", web::get().to(token::stats))
                .route(
                    "/access-tokens/invalidate",
                    web::post().to(token::invalidate),
                )
                .route("/phone-code", web::post().to(openapi::phone_code))
                .route("/subscribe", web::post().to(openapi::subscribe))
                .route("/messages", web::get().to(openapi::messages))
                .route("/refunds", web::get().to(refund::list))
                .route("/refunds/outside", web::post().to(refund::outside))
                .route("/refunds/{out_refund_no}", web::get().to(refund::get))
                .route(
                    "/refunds/{out_refund_no}/finish",
                    web::post().to(refund::finish),
                )
                .route("/refund-notifies", web::get().to(refund::notifies))
                .service(
                    web::resource("/faults")
                        .route(web::get().to(faults::get))
                        .route(web::post().to(faults::set))
                        .route(web::delete().to(faults::clear)),
                )
                .configure(v3::dev_routes)
                .route("/bills/faults", web::get().to(bills::get_faults))
                .route("/bills/faults", web::post().to(bills::set_faults))
                .route(
                    "/bills/outside-refund",
                    web::post().to(bills::outside_refund),
                )
                .configure(crate::shipping::dev_routes)
                .configure(crate::xpay::dev_routes),
        )
        .configure(v3::routes)
        .configure(crate::shipping::routes)
        .configure(crate::xpay::routes)
        // The WeChat paths, each scope behind the fault middleware.
        .service(
            web::scope("/sns")
                .wrap(from_fn(faults::wechat_paths))
                .route("/jscode2session", web::get().to(login::jscode2session)),
        )
        .service(
            web::scope("/cgi-bin")
                .wrap(from_fn(faults::wechat_paths))
                .route("/token", web::get().to(token::get_token))
                .route("/stable_token", web::post().to(token::stable_token))
                .route("/getcallbackip", web::get().to(token::callback_ip))
                .route("/message/subscribe/send", web::post().to(openapi::send)),
        )
        .service(
            web::scope("/wxa")
                .wrap(from_fn(faults::wechat_paths))
                .route(
                    "/business/getuserphonenumber",
                    web::post().to(openapi::get_phone_number),
                ),
        )
        .service(
            web::scope("/pay")
                .wrap(from_fn(faults::wechat_paths))
                .wrap(from_fn(calls::track))
                .app_data(web::PayloadConfig::new(wx::MAX_XML_BYTES))
                .service(pay_path("/unifiedorder", pay::unifiedorder))
                .service(pay_path("/orderquery", pay::orderquery))
                .service(pay_path("/closeorder", pay::closeorder))
                .service(pay_path("/refundquery", refund::refundquery))
                .service(pay_path("/downloadbill", bills::downloadbill)),
        )
        // Served here too, so a client without its certificate gets WeChat's answer for that.
        .service(
            web::scope("/secapi/pay")
                .wrap(from_fn(faults::wechat_paths))
                .app_data(web::PayloadConfig::new(wx::MAX_XML_BYTES))
                .service(pay_path("/refund", no_certificate)),
        );
}

/// The mutual-TLS port: only `/secapi/pay/refund` (and `/healthz`).
fn secapi_routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().body("ok") }),
    )
    .service(
        web::scope("/secapi/pay")
            .wrap(from_fn(faults::wechat_paths))
            .app_data(web::PayloadConfig::new(wx::MAX_XML_BYTES))
            .service(pay_path("/refund", refund::refund)),
    );
}

/// `/secapi/pay/refund` on the plain port: WeChat refuses a refund without the merchant
/// certificate ("证书错误" family); the real one lives on the TLS port.
async fn no_certificate() -> HttpResponse {
    pay::xml_response(wx::to_xml(&pay::pairs([
        ("return_code", "FAIL"),
        ("return_msg", "证书错误: 请使用商户API证书通过双向TLS调用"),
    ])))
}

/// Serves the sandbox on `listener` until `shutdown` triggers. Runs on any tokio runtime
/// (actix-web starts its own worker threads); notify deliveries run on the caller's runtime.
/// The secapi (mutual TLS) port is bound at `SANDBOX_SECAPI_LISTEN_ADDR` with a fresh dev PKI,
/// written to `SANDBOX_CERT_DIR` when set.
pub async fn serve(config: Config, listener: TcpListener, shutdown: Shutdown) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let secapi = TcpListener::bind(config.secapi_listen_addr)?;
    let pki = DevPki::generate(&config.mch_id, &config.secapi_hosts)?;
    if let Some(dir) = &config.cert_dir {
        pki.write_to(dir)?;
        tracing::info!(dir = %dir.display(), "sandbox dev CA and merchant certificate written");
    }
    serve_with(config, listener, secapi, pki, shutdown).await
}

/// [`serve`] on listeners and a PKI chosen by the caller (tests, `wxmp up`).
pub async fn serve_with(
    config: Config,
    listener: TcpListener,
    secapi: TcpListener,
    pki: DevPki,
    shutdown: Shutdown,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let sandbox = web::Data::new(Sandbox::new(
        &config,
        tokio::runtime::Handle::current(),
        shutdown.clone(),
    )?);
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        apps = ?sandbox.apps.iter().map(|a| a.appid.as_str()).collect::<Vec<_>>(),
        mch_id = config.mch_id,
        notify_time_scale = config.notify_time_scale,
        "WeChat sandbox listening"
    );
    let stop = shutdown.clone();
    secapi.set_nonblocking(true)?;
    let secapi_addr = secapi.local_addr()?;
    let tls = pki.server_config()?;
    let data = sandbox.clone();
    let calls = web::Data::new(calls::Calls::default());
    // Built in its own statement: the builder is not Send and must not live across the await.
    let server = HttpServer::new(move || {
        App::new()
            .app_data(sandbox.clone())
            .app_data(calls.clone())
            .configure(routes)
    })
    .workers(config.workers)
    .shutdown_timeout(5)
    // Our Shutdown replaces actix's own signal handling.
    .shutdown_signal(async move { stop.wait().await })
    .listen(listener)?
    .run();
    let stop = shutdown.clone();
    let secapi_server =
        HttpServer::new(move || App::new().app_data(data.clone()).configure(secapi_routes))
            .workers(1)
            .shutdown_timeout(5)
            .shutdown_signal(async move { stop.wait().await })
            .listen_rustls_0_23(secapi, tls)?
            .run();
    tracing::info!(addr = %secapi_addr, "WeChat sandbox secapi (mutual TLS) listening");
    futures::future::try_join(server, secapi_server).await?;
    tracing::info!(%addr, "WeChat sandbox stopped");
    Ok(())
}

/// A sandbox serving in the background on 127.0.0.1 (tests, `wxmp demo`). Stops on
/// [`SandboxHandle::shutdown`] or when dropped.
#[derive(Debug)]
pub struct SandboxHandle {
    /// `http://127.0.0.1:PORT`, to use as both the WeChat API and pay base URL.
    pub base_url: String,
    pub addr: std::net::SocketAddr,
    /// `https://127.0.0.1:PORT`, the mutual-TLS base URL of `/secapi/pay/refund`.
    pub secapi_url: String,
    /// The dev CA and the merchant certificate the secapi port accepts.
    pub pki: DevPki,
    shutdown: Shutdown,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl SandboxHandle {
    /// `base_url` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Stops the server and waits until it has.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.shutdown.trigger();
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Binds 127.0.0.1:0 and serves `config` in the background.
pub async fn spawn(config: Config) -> io::Result<SandboxHandle> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    let secapi = TcpListener::bind(("127.0.0.1", 0))?;
    let secapi_addr = secapi.local_addr()?;
    let pki = DevPki::generate(&config.mch_id, &[])?;
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve_with(
        config,
        listener,
        secapi,
        pki.clone(),
        shutdown.clone(),
    ));
    Ok(SandboxHandle {
        base_url: format!("http://{addr}"),
        addr,
        secapi_url: format!("https://{secapi_addr}"),
        pki,
        shutdown,
        task: Some(task),
    })
}
