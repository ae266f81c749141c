//! Probes: `/healthz` says the process serves HTTP; `/readyz` whether it should get traffic.

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

/// The upstream the gateway cannot do without: login (and every authenticated route) goes
/// through auth-service.
const REQUIRED: &str = "auth";

/// Readiness: 200 while auth-service answers SERVING, 503 otherwise; `data` names every
/// upstream's state either way. A down user- or pay-service keeps the gateway in rotation
/// (taking every replica out would stop logins too): their routes answer 213 at once.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    summary = "Readiness: 200 while auth-service serves; data names every upstream's state",
    responses(
        (status = 200, description = "code 200, data `{auth, user, pay}`: \"serving\" or why not (a down user or pay keeps the gateway ready)", body = Envelope<BTreeMap<String, String>>),
        (status = 503, description = "code 213: auth-service is not serving", body = Envelope<BTreeMap<String, String>>),
    ))]
pub async fn readyz(state: web::Data<AppState>, request_id: RequestId) -> HttpResponse {
    let checks = state.upstreams.readiness(&request_id).await;
    let ready = checks
        .iter()
        .any(|(name, r)| *name == REQUIRED && r.is_ok());
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
