//! The middleware every request passes: request id, tracing span, metrics, and the envelope
//! for error responses that actix produced itself.

use std::time::Instant;

use actix_web::{
    Error, HttpMessage,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
};
use tracing::Instrument;

use crate::{envelope, request_id::RequestId};

/// Route label for requests that matched no route, so scanners cannot blow up the metric's
/// cardinality with made-up paths.
const UNMATCHED: &str = "unmatched";

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let request_id = RequestId::from_incoming(
        req.headers()
            .get(crate::request_id::HEADER)
            .map(actix_web::http::header::HeaderValue::as_bytes),
    );
    req.extensions_mut().insert(request_id.clone());
    let span = tracing::info_span!(
        "http",
        request_id = %request_id.as_str(),
        method = %req.method(),
        route = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    // Handlers turn their errors into responses; an Err here could only come from a
    // middleware, and actix answers it itself.
    let mut res = envelope::fallback(next.call(req).instrument(span.clone()).await?);
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| UNMATCHED.to_owned());
    let status = res.status().as_u16();
    span.record("route", route.as_str());
    span.record("status", status);
    span.in_scope(|| {
        tracing::info!(
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request"
        );
    });
    if service_kit::hop::traced(request_id.as_str()) {
        service_kit::hop::record(request_id.as_str(), &route, started);
    }
    metrics::counter!("wxmp_http_requests_total", "route" => route.clone(), "code" => status.to_string())
        .increment(1);
    metrics::histogram!("wxmp_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(request_id.as_str()) {
        res.headers_mut()
            .insert(HeaderName::from_static(crate::request_id::HEADER), value);
    }
    Ok(res)
}
