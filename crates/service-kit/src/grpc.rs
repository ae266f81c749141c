//! gRPC serving and calling, the same way in every service.
//!
//! Servers get the standard health service, a tracing span per call carrying the caller's
//! `x-request-id`, graceful shutdown, and (when configured) a shared internal token that
//! every non-health call must present. Clients get lazily connected channels with connect
//! and per-call timeouts, created once and cloned per call.
//!
//! Optional mutual TLS (`WXMP_GRPC_TLS_CERT`, `WXMP_GRPC_TLS_KEY`, `WXMP_GRPC_TLS_CA`): a
//! server then accepts only clients presenting a certificate signed by the CA, and a client
//! presents its own and accepts only servers signed by the same CA (the server's certificate
//! must name the host of the URL, e.g. `auth` or `wxmp-auth`). Plain `http://` URLs are then
//! dialled over TLS, so the URLs need not change.

use std::{path::PathBuf, time::Duration};

use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataMap},
    service::{Interceptor, Routes},
    transport::{
        Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
    },
};
use tonic_health::ServingStatus;

use crate::{Secret, Shutdown};

/// The metadata key (and HTTP header) carrying a request id from the gateway inwards.
pub const REQUEST_ID: &str = "x-request-id";
/// The metadata key carrying the internal service token.
pub const INTERNAL_TOKEN: &str = "x-wxmp-internal-token";
/// Metadata the gateway puts on a pay notify whose sender is over its budget of failed
/// signatures: the service authenticates it before doing anything else, and drops it
/// unrecorded (verdict `rate_limited`) unless it verifies.
pub const NOTIFY_SENDER_THROTTLED: &str = "x-wxmp-notify-sender-throttled";

/// Settings of a gRPC server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct InternalAuthConfig {
    /// Shared token every internal gRPC call must carry (metadata x-wxmp-internal-token).
    /// Unset disables the check: then keep the gRPC ports unreachable from outside.
    #[arg(
        long,
        env = "WXMP_INTERNAL_TOKEN",
        value_name = "WXMP_INTERNAL_TOKEN",
        hide_env_values = true
    )]
    pub internal_token: Option<Secret>,
    #[command(flatten)]
    pub tls: GrpcTlsConfig,
}

/// Mutual TLS on internal gRPC: all three files, or none (plaintext).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GrpcTlsConfig {
    /// PEM certificate (chain) this process presents, as a server and as a client.
    #[arg(long, env = "WXMP_GRPC_TLS_CERT", value_name = "WXMP_GRPC_TLS_CERT",
          requires_all = ["grpc_tls_key", "grpc_tls_ca"])]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of `WXMP_GRPC_TLS_CERT`.
    #[arg(long, env = "WXMP_GRPC_TLS_KEY", value_name = "WXMP_GRPC_TLS_KEY",
          requires_all = ["grpc_tls_cert", "grpc_tls_ca"])]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM CA that signs every service's certificate: peers must present one it signed.
    #[arg(long, env = "WXMP_GRPC_TLS_CA", value_name = "WXMP_GRPC_TLS_CA",
          requires_all = ["grpc_tls_cert", "grpc_tls_key"])]
    pub grpc_tls_ca: Option<PathBuf>,
}

/// A TLS file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {var} ({path}): {source}")]
pub struct TlsError {
    pub var: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The loaded mutual-TLS material: this process's identity and the CA of its peers.
#[derive(Clone, Debug)]
pub struct GrpcTls {
    identity: Identity,
    ca: Certificate,
}

impl GrpcTls {
    /// Reads the three files; `None` when TLS is not configured.
    pub fn load(config: &GrpcTlsConfig) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key), Some(ca)) = (
            &config.grpc_tls_cert,
            &config.grpc_tls_key,
            &config.grpc_tls_ca,
        ) else {
            return Ok(None);
        };
        let read = |var: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError {
                var,
                path: path.clone(),
                source,
            })
        };
        Ok(Some(Self {
            identity: Identity::from_pem(
                read("WXMP_GRPC_TLS_CERT", cert)?,
                read("WXMP_GRPC_TLS_KEY", key)?,
            ),
            ca: Certificate::from_pem(read("WXMP_GRPC_TLS_CA", ca)?),
        }))
    }

    /// Server side: present the identity, require a client certificate signed by the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
    }

    /// Client side: trust only the CA, present the identity.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }
}

impl InternalAuthConfig {
    /// The mutual-TLS material, when `WXMP_GRPC_TLS_*` are set.
    pub fn grpc_tls(&self) -> Result<Option<GrpcTls>, TlsError> {
        GrpcTls::load(&self.tls)
    }

    /// The server-side token check for a service listening on `listener`; warns when the
    /// service accepts any caller on an address other hosts can reach.
    pub fn require_token(&self, listener: &TcpListener) -> RequireToken {
        if let Ok(addr) = listener.local_addr() {
            warn_if_open(self.internal_token.as_ref(), addr);
        }
        RequireToken::new(self.internal_token.clone())
    }
}

/// Logs a warning when no internal token is set and `addr` is not a loopback address: then
/// anyone who reaches the port can call every RPC (issue session keys, mark orders paid).
pub fn warn_if_open(token: Option<&Secret>, addr: std::net::SocketAddr) {
    let open = token.is_none_or(Secret::is_empty);
    if open && !addr.ip().to_canonical().is_loopback() {
        tracing::warn!(
            %addr,
            "WXMP_INTERNAL_TOKEN is unset and the gRPC listener is not on loopback: any host \
             that reaches this port can call every RPC; set WXMP_INTERNAL_TOKEN (the same on \
             every service) or bind to 127.0.0.1"
        );
    }
}

/// How a gRPC server stops: how long it keeps serving after reporting NOT_SERVING.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct DrainConfig {
    /// On SIGTERM, milliseconds to keep serving while health reports NOT_SERVING, so that
    /// balancing clients (which probe every 0.5 s) stop sending new calls before the listener
    /// closes; in-flight calls are then drained. 0 stops at once.
    #[arg(
        long,
        env = "WXMP_DRAIN_DELAY_MS",
        value_name = "WXMP_DRAIN_DELAY_MS",
        default_value_t = DEFAULT_DRAIN_DELAY_MS,
        value_parser = clap::value_parser!(u64).range(0..=60_000)
    )]
    pub drain_delay_ms: u64,
}

/// Default of `WXMP_DRAIN_DELAY_MS`: off, right for one replica (`wxmp up`, compose); the
/// Kubernetes manifests set 2000 (four client probe intervals).
pub const DEFAULT_DRAIN_DELAY_MS: u64 = 0;

impl DrainConfig {
    /// No delay: for `wxmp up` (one process, no balancer in front) and tests.
    pub fn none() -> Self {
        Self {
            drain_delay_ms: DEFAULT_DRAIN_DELAY_MS,
        }
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
}

/// How often [`serve_with_readiness`] asks its probe.
pub const READINESS_INTERVAL: Duration = Duration::from_secs(2);

/// Serves `routes` plus `grpc.health.v1.Health` on `listener` until `shutdown`, then drains
/// in-flight calls. `names` are the fully qualified service names reported as SERVING.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    serve_with_readiness(listener, routes, names, shutdown, || async { true }).await
}

/// [`serve`], with health following `ready`: it is polled every [`READINESS_INTERVAL`] (and
/// before serving), and `""` and every name report SERVING while it answers true, NOT_SERVING
/// while false — say, while the service's database or session store is down. Calls are still
/// served either way; health only tells load balancers and the gateway's `/readyz`.
pub async fn serve_with_readiness<P, F>(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    shutdown: Shutdown,
    ready: P,
) -> Result<(), tonic::transport::Error>
where
    P: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = bool> + Send,
{
    serve_draining(
        listener,
        routes,
        names,
        shutdown,
        ready,
        None,
        DrainConfig::none(),
    )
    .await
}

/// [`serve_with_readiness`], over mutual TLS when `tls` is given (clients must present a
/// certificate signed by its CA), and, on shutdown, reporting NOT_SERVING for every name and
/// serving on for `drain.delay()` before it stops accepting and drains in-flight calls: the
/// window in which balancing clients ([`crate::balance`]) and Kubernetes readiness take the
/// replica out, so a rolling restart fails no call.
pub async fn serve_draining<P, F>(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    shutdown: Shutdown,
    ready: P,
    tls: Option<&GrpcTls>,
    drain: DrainConfig,
) -> Result<(), tonic::transport::Error>
where
    P: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = bool> + Send,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    let names: Vec<String> = std::iter::once(String::new())
        .chain(names.iter().map(|n| (*n).to_owned()))
        .collect();
    let report = {
        let reporter = reporter.clone();
        move |serving: bool| {
            let reporter = reporter.clone();
            let names = names.clone();
            async move {
                let status = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in &names {
                    reporter.set_service_status(name, status).await;
                }
            }
        }
    };
    // A probe that hangs counts as not ready, and never delays serving for long.
    let probe = move || {
        let check = ready();
        async move {
            tokio::time::timeout(READINESS_INTERVAL, check)
                .await
                .unwrap_or(false)
        }
    };
    let mut serving = probe().await;
    report(serving).await;
    let _prober = AbortOnDrop({
        let shutdown = shutdown.clone();
        let report = report.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(READINESS_INTERVAL) => {}
                }
                let now = probe().await;
                if now != serving {
                    tracing::warn!(serving = now, "readiness changed");
                    serving = now;
                    report(now).await;
                }
            }
        })
    });
    let routes = routes.add_service(health);
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            // Report NOT_SERVING first so load balancers stop sending new calls, and keep
            // serving while they notice.
            report(false).await;
            let delay = drain.delay();
            if !delay.is_zero() {
                tracing::info!(delay_ms = drain.drain_delay_ms, "NOT_SERVING; draining");
                tokio::time::sleep(delay).await;
            }
        }
    };
    let mut builder = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.server())?;
    }
    builder
        .layer(crate::hop::HopLayer)
        .trace_fn(|req| {
            let request_id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("grpc", path = %req.uri().path(), request_id = %request_id)
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener), stop)
        .await
}

/// Accepted connections with Nagle's algorithm off: a gRPC answer is several small writes
/// (headers, data, trailers), and Nagle plus delayed ACKs would hold the last one ~40 ms.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Stops the readiness prober with the server, even when the server future is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Server-side interceptor: requires the internal token when one is configured. Compares in
/// constant time so the token cannot be guessed byte by byte.
#[derive(Clone, Debug)]
pub struct RequireToken(Option<Secret>);

impl RequireToken {
    pub fn new(token: Option<Secret>) -> Self {
        Self(token.filter(|t| !t.is_empty()))
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get(INTERNAL_TOKEN)
            .map(tonic::metadata::MetadataValue::as_bytes)
            .unwrap_or_default();
        if bool::from(given.ct_eq(expected.expose().as_bytes())) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("internal token missing or wrong"))
        }
    }
}

/// Client-side interceptor: attaches the internal token (when configured) to every call.
#[derive(Clone, Debug)]
pub struct AttachToken(Option<AsciiMetadataValue>);

impl AttachToken {
    pub fn new(token: Option<&Secret>) -> Self {
        Self(
            token
                .filter(|t| !t.is_empty())
                .and_then(|t| t.expose().parse().ok()),
        )
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(INTERNAL_TOKEN, token.clone());
        }
        Ok(request)
    }
}

/// The fully qualified name of the gRPC reflection service (v1) that [`with_reflection`] adds.
pub const REFLECTION_SERVICE: &str = "grpc.reflection.v1.ServerReflection";

/// Adds gRPC server reflection (`grpc.reflection.v1`) to `routes`, so `grpcurl` and friends
/// work without the `.proto` files. It advertises only `names` (the services this server
/// serves), gRPC health and itself, from the descriptor set compiled into `wxmp-proto`, and
/// sits behind the same internal token as every other call: the schema is not for outsiders.
/// The descriptor set is compiled in (and checked by tests), so a failure here is a bug: it is
/// logged and the service is served without reflection rather than not at all.
pub fn with_reflection(routes: Routes, names: &[&str], token: Option<Secret>) -> Routes {
    let builder = names.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wxmp_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(HEALTH_SERVICE)
            .with_service_name(REFLECTION_SERVICE),
        |builder, name| builder.with_service_name(*name),
    );
    match builder.build_v1() {
        Ok(reflection) => routes.add_service(tonic::service::interceptor::InterceptedService::new(
            reflection,
            RequireToken::new(token),
        )),
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection unavailable: bad descriptor set");
            routes
        }
    }
}

/// HTTP/2 flow-control windows of every gRPC connection, both directions. h2's default is
/// 64 KiB for a stream and for the whole connection: with hundreds of small calls in flight
/// on one connection, the receiver then sends a WINDOW_UPDATE frame (a write, and a wake-up
/// of the connection task on each side) after every ~32 KiB of answers. The windows are
/// credit, not buffers: a reader that keeps up holds no more memory with larger ones.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Client-side settings every channel shares (single or balanced): timeouts, Nagle off (a
/// call is several small frames; Nagle with delayed ACKs would hold the last one ~40 ms), the
/// windows above, keep-alive pings so a dead peer is noticed while idle.
pub(crate) fn tune(
    endpoint: Endpoint,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> Endpoint {
    endpoint
        .connect_timeout(connect_timeout)
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
}

/// The standard health service's name, served by [`serve`] next to every service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// A lazily connecting channel: created once at start-up and cloned per call, so no call pays
/// for a connection and a dependency that starts later is still reached.
///
/// `url` may be a comma-separated list of URLs and/or name hosts with several addresses (a
/// Kubernetes headless Service): calls are then balanced per call over the healthy replicas
/// ([`crate::balance`]). One URL with an IP address is a plain channel to it.
pub fn channel(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    channel_tls(url, connect_timeout, call_timeout, None)
}

/// [`channel`], over mutual TLS when `tls` is given (an `http://` URL is dialled as
/// `https://`). A comma-separated list (or a name with several addresses) is balanced per
/// call over its healthy members ([`crate::balance`]).
pub fn channel_tls(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
    tls: Option<&GrpcTls>,
) -> Result<Channel, tonic::transport::Error> {
    let urls = crate::balance::split_urls(url);
    if urls.is_empty() || crate::balance::is_single_address(url) {
        let one = urls.first().copied().unwrap_or(url);
        return single_channel(one, connect_timeout, call_timeout, tls);
    }
    // Every URL must be valid, with the same error as a single one.
    for one in &urls {
        Endpoint::from_shared((*one).to_owned())?;
    }
    match crate::balance::balanced_channel(
        url,
        connect_timeout,
        call_timeout,
        tls.map(GrpcTls::client),
    ) {
        Ok(channel) => Ok(channel),
        Err(e) => {
            tracing::warn!(error = %e, "cannot balance; using the first URL alone");
            single_channel(urls[0], connect_timeout, call_timeout, tls)
        }
    }
}

fn single_channel(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
    tls: Option<&GrpcTls>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = match (tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => Endpoint::from_shared(format!("https://{rest}"))?,
        _ => Endpoint::from_shared(url.to_owned())?,
    };
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.client())?;
    }
    Ok(tune(endpoint, connect_timeout, call_timeout).connect_lazy())
}

/// The request id of an incoming call, if the caller sent one.
pub fn request_id(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(REQUEST_ID).and_then(|v| v.to_str().ok())
}

/// Wraps `message` in a request that carries the same request id as `incoming`, so one id
/// follows a user's request through every service.
pub fn forward<T>(incoming: &MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(id) = incoming.get(REQUEST_ID) {
        request.metadata_mut().insert(REQUEST_ID, id.clone());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(INTERNAL_TOKEN, token.parse().unwrap());
        r
    }

    #[test]
    fn token_is_required_when_configured() {
        let mut check = RequireToken::new(Some(Secret::new("s3cret")));
        assert!(check.call(with_token("s3cret")).is_ok());
        assert!(check.call(with_token("s3creT")).is_err());
        assert!(check.call(Request::new(())).is_err());
        let mut open = RequireToken::new(None);
        assert!(open.call(Request::new(())).is_ok());
    }

    #[test]
    fn attached_token_passes_the_check() {
        let secret = Secret::new("s3cret");
        let request = AttachToken::new(Some(&secret))
            .call(Request::new(()))
            .unwrap();
        assert!(RequireToken::new(Some(secret)).call(request).is_ok());
    }

    /// Runs `f` with a subscriber that writes into a buffer; answers what was logged.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test]
    async fn an_open_listener_off_loopback_is_warned_about() {
        let warning = "WXMP_INTERNAL_TOKEN is unset";
        let public = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let loopback = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let no_token = InternalAuthConfig {
            internal_token: None,
            ..Default::default()
        };
        let token = InternalAuthConfig {
            internal_token: Some(Secret::new("s3cret-token")),
            ..Default::default()
        };
        let logged = logs_of(|| {
            no_token.require_token(&public);
        });
        assert!(logged.contains("WARN"), "{logged}");
        assert!(logged.contains(warning), "{logged}");
        assert!(logged.contains("0.0.0.0:"), "names the address: {logged}");
        let empty = InternalAuthConfig {
            internal_token: Some(Secret::new("")),
            ..Default::default()
        };
        assert!(
            logs_of(|| {
                empty.require_token(&public);
            })
            .contains(warning)
        );
        for (config, listener) in [
            (&no_token, &loopback),
            (&token, &public),
            (&token, &loopback),
        ] {
            let logged = logs_of(|| {
                config.require_token(listener);
            });
            assert!(!logged.contains(warning), "{logged}");
        }
        let logged = logs_of(|| {
            token.require_token(&public);
        });
        assert!(!logged.contains("s3cret-token"), "{logged}");
    }

    #[test]
    fn forward_keeps_the_request_id() {
        let mut incoming = MetadataMap::new();
        incoming.insert(REQUEST_ID, "abc-123".parse().unwrap());
        let out = forward(&incoming, 7u8);
        assert_eq!(request_id(out.metadata()), Some("abc-123"));
    }
}
