//! Per-hop timings of traced requests: a request whose id (`X-Request-Id`, forwarded as
//! `x-request-id` on every gRPC call) starts with [`TRACE_PREFIX`] gets one log line per hop it
//! passes, at INFO under the target `wxmp::hop`: `request_id`, `path` (the gRPC method or the
//! gateway's route) and `elapsed_us` (the server's time for the call, from the request's
//! headers to its response's). `make bench` sends a few such requests per path and tabulates
//! where their time went (bench/results.md, "Per-hop breakdown"). Other requests pay one
//! prefix comparison.

use std::{
    task::{Context, Poll},
    time::Instant,
};

use futures::future::{BoxFuture, Either};

use crate::grpc::REQUEST_ID;

/// Request ids starting with this are timed hop by hop.
pub const TRACE_PREFIX: &str = "trace-";

/// Whether a request with this id is timed hop by hop.
pub fn traced(request_id: &str) -> bool {
    request_id.starts_with(TRACE_PREFIX)
}

/// Logs one hop's time (see the module docs).
pub fn record(request_id: &str, path: &str, started: Instant) {
    tracing::info!(
        target: "wxmp::hop",
        request_id,
        path,
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "hop"
    );
}

/// The gRPC servers' layer that times traced calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct HopLayer;

impl<S> tower_layer::Layer<S> for HopLayer {
    type Service = Hop<S>;

    fn layer(&self, inner: S) -> Hop<S> {
        Hop(inner)
    }
}

/// See [`HopLayer`].
#[derive(Clone, Debug)]
pub struct Hop<S>(S);

impl<S, B> tower_service::Service<http::Request<B>> for Hop<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let trace = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| traced(id))
            .map(|id| (id.to_owned(), request.uri().path().to_owned()));
        let call = self.0.call(request);
        match trace {
            None => Either::Left(call),
            Some((request_id, path)) => Either::Right(Box::pin(async move {
                let started = Instant::now();
                let answer = call.await;
                record(&request_id, &path, started);
                answer
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_requests_are_traced() {
        assert!(traced("trace-me-1"));
        assert!(!traced("0b5e8c1e-8f7a-4c1e-9d3e-2f1a0b9c8d7e"));
        assert!(!traced("Trace-me"));
    }
}
