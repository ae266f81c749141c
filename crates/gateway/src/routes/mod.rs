//! The HTTP routes. Handlers only translate: HTTP input → one gRPC call → envelope.

use std::time::Duration;

use actix_web::{HttpRequest, web};
use service_kit::session_cache::TokenKey;
use wxmp_proto::auth::v1::{AuthenticateRequest, Principal};

use crate::{
    envelope::{ApiError, Code},
    extract,
    request_id::RequestId,
    server::AppState,
};

pub mod health;
pub mod notify;
mod notify_body;
pub mod pay;
pub mod push;
pub mod refund_notify;
pub mod session;
pub mod user;

/// Registers every route. The seed's paths keep their trailing slash; the form without it is
/// accepted as well so a client does not depend on it.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(["/login/", "/login"]).route(web::post().to(session::login)))
        .service(web::resource(["/logout", "/logout/"]).route(web::post().to(session::logout)))
        .service(web::resource(["/me", "/me/"]).route(web::get().to(user::me)))
        .service(web::resource(["/userinfo/", "/userinfo"]).route(web::post().to(user::userinfo)))
        .service(web::resource(["/phone/", "/phone"]).route(web::post().to(user::phone)))
        .service(web::resource("/pay/notify").route(web::post().to(notify::pay_notify)))
        .service(
            web::resource("/pay/refund-notify").route(web::post().to(refund_notify::refund_notify)),
        )
        .service(web::resource("/pay/notify/v3").route(web::post().to(notify::pay_notify_v3)))
        .service(
            web::resource("/pay/refund-notify/v3")
                .route(web::post().to(refund_notify::refund_notify_v3)),
        )
        .service(
            web::resource("/wechat/push/{appid}")
                .route(web::get().to(push::check))
                .route(web::post().to(push::receive)),
        )
        .service(web::resource(["/pay/", "/pay"]).route(web::post().to(pay::pay)))
        .service(web::resource("/orders/{order_no}").route(web::get().to(pay::order)))
        .service(web::resource(["/products", "/products/"]).route(web::get().to(pay::products)))
        .service(web::resource("/healthz").route(web::get().to(health::healthz)))
        .service(web::resource("/readyz").route(web::get().to(health::readyz)));
}

/// Resolves the caller's token (header, else body) to its principal via auth-service.
pub(crate) async fn authenticate(
    state: &AppState,
    request_id: &RequestId,
    req: &HttpRequest,
    body_token: Option<&str>,
) -> Result<Principal, ApiError> {
    let token = extract::token(req, body_token)?;
    // The session cache (see `service_kit::session_cache`).
    let cached = state
        .sessions
        .as_deref()
        .map(|cache| (cache, TokenKey::of(&token)));
    if let Some((cache, key)) = &cached
        && let Some(principal) = cache.get(key)
    {
        metrics::counter!("wxmp_session_cache_total", "outcome" => "hit").increment(1);
        return Ok(principal);
    }
    // On a miss, before asking: an answer that crosses a logout is not kept.
    let cached = cached.map(|(cache, key)| (cache, key, cache.epoch(&key)));
    let upstreams = &state.upstreams;
    let response = upstreams
        .auth()
        .authenticate(upstreams.request(request_id, AuthenticateRequest { token }))
        .await?
        .into_inner();
    let principal = response.principal.ok_or_else(|| {
        tracing::error!("auth-service answered Authenticate without a principal");
        ApiError::from(Code::Internal)
    })?;
    if let Some((cache, key, epoch)) = cached {
        metrics::counter!("wxmp_session_cache_total", "outcome" => "miss").increment(1);
        // `expires_in` is rounded up to whole seconds: one less never outlives the session.
        let lifetime = u64::try_from(response.expires_in.saturating_sub(1)).unwrap_or(0);
        cache.insert(key, principal.clone(), Duration::from_secs(lifetime), epoch);
    }
    Ok(principal)
}

/// A required string field: missing or blank is 201.
pub(crate) fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::missing(name))
}
