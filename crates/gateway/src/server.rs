//! Building the actix app and running the HTTP server.

use std::{sync::Arc, time::Duration};

use actix_web::{
    App, HttpServer,
    body::MessageBody,
    dev::{ServiceFactory, ServiceRequest, ServiceResponse},
    middleware::from_fn,
    web,
};
use service_kit::{
    Shutdown,
    session_cache::{self, CacheKey, SessionCache, UserKey},
};
use wxmp_proto::{auth::v1::Principal, user::v1::User};

use crate::{
    Config, Error,
    config::TrustedProxies,
    extract,
    limit::{Limiter, SharedWindows},
    observe, openapi, routes,
    upstream::Upstreams,
};

/// How long a graceful stop waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's cache of user rows, by user id.
pub type UserRows = SessionCache<User, UserKey>;

/// What every handler shares: the upstream clients and the request-independent settings.
#[derive(Clone, Debug)]
pub struct AppState {
    pub upstreams: Upstreams,
    pub trusted_proxies: TrustedProxies,
    pub body_limit: usize,
    /// `/login/` attempts per client IP per minute; `None` when off.
    pub login_limit: Option<Arc<Limiter>>,
    /// `/pay/notify` signature failures per client IP per window; `None` when off.
    pub notify_fail_limit: Option<Arc<Limiter>>,
    /// Recent `Authenticate` answers; `None` when off. Serves only while [`serve`] keeps its
    /// revocation feed connected.
    pub sessions: Option<Arc<SessionCache<Principal>>>,
    /// Recent user rows for `GET /me`; `None` when off. Serves only while [`serve`] keeps
    /// user-service's change feed connected.
    pub users: Option<Arc<UserRows>>,
    /// The message push's apps by appid (`GATEWAY_PUSH_APPS`).
    pub push_apps: Arc<std::collections::HashMap<String, wechat::push::PushApp>>,
    /// `GATEWAY_PUSH_MAX_SKEW_SECS`.
    pub push_max_skew_secs: i64,
}

impl AppState {
    /// Creates the upstream channels (once; lazily connected). Call inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let shared = match &config.redis_url {
            Some(url) => Some(Arc::new(
                SharedWindows::new(url, &config.redis_prefix).map_err(Error::Redis)?,
            )),
            None => None,
        };
        crate::routes::push::register_metrics();
        let push_apps = match &config.push_apps {
            Some(spec) => crate::config::parse_push_apps(spec.expose()).map_err(Error::PushApps)?,
            None => Vec::new(),
        };
        Ok(Self {
            push_apps: Arc::new(
                push_apps
                    .into_iter()
                    .map(|a| (a.appid().to_owned(), a))
                    .collect(),
            ),
            push_max_skew_secs: i64::try_from(config.push_max_skew_secs).unwrap_or(300),
            upstreams: Upstreams::new(config)?,
            trusted_proxies: config.trusted_proxies.clone(),
            body_limit: config.body_limit(),
            login_limit: Limiter::new(
                "login",
                config.login_rate_per_min,
                Duration::from_secs(60),
                shared.clone(),
            )
            .map(Arc::new),
            notify_fail_limit: Limiter::new(
                "notify_sig",
                config.notify_fail_limit,
                config.notify_fail_window(),
                shared,
            )
            .map(Arc::new),
            sessions: cache(
                config,
                config.session_cache_ttl(),
                config.session_cache_max_entries,
            ),
            users: cache(
                config,
                config.user_cache_ttl(),
                config.user_cache_max_entries,
            ),
        })
    }
}

/// A cache `config` asks for: only with a feed to follow (Redis, or the in-process one).
fn cache<V: Clone, K: CacheKey>(
    config: &Config,
    ttl: Duration,
    max_entries: u64,
) -> Option<Arc<SessionCache<V, K>>> {
    if config.redis_url.is_none() && !config.in_process_revocation {
        return None;
    }
    let max = usize::try_from(max_entries).unwrap_or(usize::MAX);
    SessionCache::new(ttl, max).map(Arc::new)
}

/// Follows `cache`'s feed until `shutdown`: the in-process one in `wxmp up`, else `channel`
/// on Redis.
fn follow<V: Clone + Send + Sync + 'static, K: CacheKey>(
    config: &Config,
    cache: Option<Arc<SessionCache<V, K>>>,
    channel: String,
    shutdown: &Shutdown,
) -> Result<Option<AbortOnDrop>, Error> {
    let Some(cache) = cache else {
        return Ok(None);
    };
    let task = session_cache::follow(
        config.in_process_revocation,
        config.redis_url.as_ref().map(service_kit::Secret::expose),
        channel,
        cache,
        shutdown,
    )
    .map_err(Error::Revocation)?;
    Ok(task.map(AbortOnDrop))
}

/// The whole app: routes, body limits, the envelope for every error, request ids, metrics.
/// Usable with `actix_web::test::init_service` as well as by [`serve`].
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = state.body_limit;
    App::new()
        .app_data(web::Data::new(state))
        .app_data(
            web::JsonConfig::default()
                .limit(limit)
                .error_handler(extract::json_error),
        )
        .app_data(web::PayloadConfig::new(limit))
        .configure(routes::configure)
        .configure(openapi::configure)
        .default_service(web::to(not_found))
        .wrap(from_fn(observe::observe))
}

async fn not_found() -> Result<actix_web::HttpResponse, crate::envelope::ApiError> {
    Err(crate::envelope::Code::NotFound.into())
}

/// Serves the gateway on `listener` until `shutdown`, then stops accepting and drains
/// in-flight requests (up to 30 s).
///
/// actix-web 4 (actix-server 2.10) runs fine outside `actix_web::main`: it detects the tokio
/// runtime, starts each worker on its own thread with its own single-threaded runtime, and the
/// returned server future is driven by the caller's runtime. So this works from
/// `#[tokio::main]`, `#[tokio::test]` (either flavour) and next to other servers in
/// `wxmp up`. The health-check channels are created here, on the caller's runtime; each
/// worker makes its own API channels on its own runtime ([`Upstreams::for_this_thread`]).
pub async fn serve(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let state = AppState::new(&config).map_err(std::io::Error::other)?;
    serve_state(config, state, listener, shutdown).await
}

/// [`serve`] with a state made by the caller ([`AppState::new`]), who may keep a clone to look
/// at, say, its session cache.
pub async fn serve_state(
    config: Config,
    state: AppState,
    listener: std::net::TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let _revocations = follow(
        &config,
        state.sessions.clone(),
        config.session_revocation_channel(),
        &shutdown,
    )
    .map_err(std::io::Error::other)?;
    let _user_changes = follow(
        &config,
        state.users.clone(),
        config.user_change_channel(),
        &shutdown,
    )
    .map_err(std::io::Error::other)?;
    tracing::info!(
        session_cache = state.sessions.is_some(),
        ttl_ms = config.session_cache_ttl_ms,
        max_entries = config.session_cache_max_entries,
        user_cache = state.users.is_some(),
        user_ttl_ms = config.user_cache_ttl_ms,
        user_max_entries = config.user_cache_max_entries,
        "caches"
    );
    let _watch = AbortOnDrop(
        state
            .upstreams
            .watch(config.upstream_check_interval(), shutdown.clone()),
    );
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let workers = config.workers();
    let server = HttpServer::new(move || {
        // Called on each worker's thread: give the worker channels driven by its own runtime.
        let mut state = state.clone();
        match state.upstreams.for_this_thread() {
            Ok(upstreams) => state.upstreams = upstreams,
            Err(e) => tracing::warn!(error = %e, "worker uses the shared upstream channels"),
        }
        app(state)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(DRAIN_TIMEOUT.as_secs())
    .listen(listener)?
    .run();
    tracing::info!(%addr, workers, "gateway listening");
    let handle = server.handle();
    let stopper = tokio::spawn(async move {
        shutdown.wait().await;
        tracing::info!("gateway draining");
        handle.stop(true).await;
    });
    let result = server.await;
    stopper.abort();
    tracing::info!("gateway stopped");
    result
}

/// Stops the upstream watcher with the server, even when the server future is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
