//! Probes: `/healthz` says the process serves HTTP; `/readyz` that its upstreams serve too.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::{
    envelope::{Code, Envelope, Formatted, ok},
    request_id::RequestId,
    server::AppState,
};

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Alive {
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// Liveness: no upstream calls, so a slow dependency never gets the gateway restarted.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "code 200", body = Envelope<Alive>)))]
pub async fn healthz() -> HttpResponse {
    ok(Alive { status: "ok" })
}

/// Readiness: every upstream answers its gRPC health check as SERVING, else 503 naming which.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    summary = "Readiness: auth, user and pay answer gRPC health SERVING",
    responses(
        (status = 200, description = "code 200, data `{auth, user, pay}` = \"serving\"", body = Envelope<BTreeMap<String, String>>),
        (status = 503, description = "code 213, data names what is not serving", body = Envelope<BTreeMap<String, String>>),
    ))]
pub async fn readyz(state: web::Data<AppState>, request_id: RequestId) -> HttpResponse {
    let checks = state.upstreams.readiness(&request_id).await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let data: BTreeMap<&str, String> = checks
        .into_iter()
        .map(|(name, r)| (name, r.map_or_else(|why| why, |()| "serving".to_owned())))
        .collect();
    if ready {
        return ok(data);
    }
    let code = Code::ServiceUnavailable;
    let mut response = HttpResponse::build(code.http_status()).json(Envelope {
        code: code.value(),
        msg: code.default_msg().to_owned(),
        data: Some(data),
    });
    response.extensions_mut().insert(Formatted);
    response
}
