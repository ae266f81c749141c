//! The actix-web server: routes, [`serve`] and the test helper [`spawn`].

use std::{io, net::TcpListener};

use actix_web::{App, HttpResponse, HttpServer, middleware::from_fn, web};
use service_kit::Shutdown;
use tokio::task::JoinHandle;

use crate::{
    config::Config, faults, login, notify, order, pay, state::Sandbox, token, user_data, v3, wx,
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
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().body("ok") }),
    )
    .service(
        web::scope("/sandbox")
            .route("/login-code", web::post().to(login::login_code))
            .route("/user-data", web::post().to(user_data::user_data))
            .route("/pay", web::post().to(notify::pay))
            .route("/notifies", web::get().to(notify::list))
            .route("/orders", web::get().to(order::list))
            .route("/orders/{out_trade_no}", web::get().to(order::get))
            .service(
                web::resource("/faults")
                    .route(web::get().to(faults::get))
                    .route(web::post().to(faults::set))
                    .route(web::delete().to(faults::clear)),
            )
            .configure(v3::dev_routes),
    )
    .configure(v3::routes)
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
            .route("/stable_token", web::post().to(token::stable_token)),
    )
    .service(
        web::scope("/pay")
            .wrap(from_fn(faults::wechat_paths))
            .app_data(web::PayloadConfig::new(wx::MAX_XML_BYTES))
            .service(pay_path("/unifiedorder", pay::unifiedorder))
            .service(pay_path("/orderquery", pay::orderquery))
            .service(pay_path("/closeorder", pay::closeorder)),
    );
}

/// Serves the sandbox on `listener` until `shutdown` triggers. Runs on any tokio runtime
/// (actix-web starts its own worker threads); notify deliveries run on the caller's runtime.
pub async fn serve(config: Config, listener: TcpListener, shutdown: Shutdown) -> io::Result<()> {
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
    // Built in its own statement: the builder is not Send and must not live across the await.
    let server = HttpServer::new(move || App::new().app_data(sandbox.clone()).configure(routes))
        .workers(config.workers)
        .shutdown_timeout(5)
        // Our Shutdown replaces actix's own signal handling.
        .shutdown_signal(async move { stop.wait().await })
        .listen(listener)?
        .run();
    server.await?;
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
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve(config, listener, shutdown.clone()));
    Ok(SandboxHandle {
        base_url: format!("http://{addr}"),
        addr,
        shutdown,
        task: Some(task),
    })
}
