//! gRPC serving and calling, the same way in every service.
//!
//! Servers get the standard health service, a tracing span per call carrying the caller's
//! `x-request-id`, graceful shutdown, and (when configured) a shared internal token that
//! every non-health call must present. Clients get lazily connected channels with connect
//! and per-call timeouts, created once and cloned per call.

use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataMap},
    service::{Interceptor, Routes},
    transport::{Channel, Endpoint, Server},
};
use tonic_health::ServingStatus;

use crate::{Secret, Shutdown};

/// The metadata key (and HTTP header) carrying a request id from the gateway inwards.
pub const REQUEST_ID: &str = "x-request-id";
/// The metadata key carrying the internal service token.
pub const INTERNAL_TOKEN: &str = "x-wxmp-internal-token";

/// Settings of a gRPC server.
#[derive(Clone, Debug, clap::Args)]
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
            // Report NOT_SERVING first so load balancers stop sending new calls.
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
        }
    };
    Server::builder()
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
            .map(|v| v.as_bytes())
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

/// The standard health service's name, served by [`serve`] next to every service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// A lazily connecting channel: created once at start-up and cloned per call, so no call pays
/// for a connection and a dependency that starts later is still reached.
pub fn channel(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
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

    #[test]
    fn forward_keeps_the_request_id() {
        let mut incoming = MetadataMap::new();
        incoming.insert(REQUEST_ID, "abc-123".parse().unwrap());
        let out = forward(&incoming, 7u8);
        assert_eq!(request_id(out.metadata()), Some("abc-123"));
    }
}
