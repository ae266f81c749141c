//! The wxmp gateway: the HTTP JSON API the mini program calls, and WeChat Pay's notify
//! endpoint, in front of auth-, user- and pay-service (gRPC). It holds no data and no business
//! rules: it validates the shape of input, calls one service, and answers in the envelope.
//!
//! # Routes
//!
//! | route | upstream | `data` on success |
//! |---|---|---|
//! | `POST /login/ {code, app_id?}` | auth.Login | `{token, expires_in}` |
//! | `POST /logout` | auth.Logout | `{revoked}` |
//! | `GET /me` | user.GetUser | the profile |
//! | `POST /userinfo/ {token, encryptedData, iv, rawData?, signature?}` | user.UpdateProfile | the profile |
//! | `POST /phone/ {token, encryptedData, iv}` | user.UpdatePhoneNumber | the profile |
//! | `POST /pay/ {token, order_no \| product_id}` | pay.PrepareJsapiPayment | `{appId, timeStamp, nonceStr, package, signType, paySign, order_no}` |
//! | `GET /orders/{order_no}` | pay.GetOrder (caller's orders only) | the order |
//! | `GET /products` | pay.ListProducts | `{products: [{id, name, price_fen}]}` |
//! | `POST /pay/notify` | pay.HandlePayNotify | XML in, XML out (not enveloped, no token) |
//! | `POST /pay/notify/v3` | pay.HandlePayNotifyV3 | Pay v3 JSON notify: 204, or 4xx/5xx `{"code":"FAIL","message"}` (not enveloped, no token) |
//! | `GET /healthz` | none | `{status: "ok"}` |
//! | `GET /readyz` | gRPC health of all three | `{auth, user, pay}` states; 503 only when auth is not serving |
//!
//! Authenticated routes take the token from `Authorization: Bearer <token>` or, for the seed's
//! clients, from a `token` field in the JSON body (the header wins). JSON bodies must be
//! `Content-Type: application/json` (a charset parameter is fine) and at most
//! `GATEWAY_BODY_LIMIT` bytes; unknown fields are ignored. `POST /pay/` never takes an amount:
//! the price comes from the server-side order or catalog.
//!
//! # The envelope
//!
//! Every JSON answer is `{"code": <int>, "msg": <text>, "data": <object|null>}` with a real
//! HTTP status as well; on success `code` is 200, `msg` is `"suc"` (so clients read
//! `res.data.data.token`). Failures have `data: null` and one of these codes (the table lives
//! in [`envelope::Code`]; `ErrorReason` is what the services fail with):
//!
//! | code | HTTP | msg | when (`ErrorReason`) |
//! |---|---|---|---|
//! | 200 | 200 | `suc` | success |
//! | 201 | 400 | `missing parameter` | a required field or the token is missing (`MISSING_PARAMETER`) |
//! | 202 | 401 | `invalid code` / `invalid token` | the login code is invalid or used (`INVALID_CODE`), the token is unknown or expired (`INVALID_TOKEN`) |
//! | 203 | 400 | `invalid request` | malformed JSON, wrong types, wrong content type, bad parameter, unknown route method (405) (`INVALID_ARGUMENT`, `UNKNOWN_APP`) |
//! | 204 | 413 | `body too large` | the body exceeds `GATEWAY_BODY_LIMIT` |
//! | 205 | 400 | `decryption failed` | encryptedData could not be decrypted or checked (`DECRYPT_FAILED`) |
//! | 206 | 403 | `forbidden` | not the caller's resource (`PERMISSION_DENIED`) |
//! | 207 | 404 | `not found` | no such user, order, product or route (`NOT_FOUND`) |
//! | 208 | 429 | `rate limited` | too many requests (`RATE_LIMITED`) |
//! | 209 | 409 | `order state conflict` | the order is paid, closed or expired (`ORDER_STATE`) |
//! | 210 | 409 | `idempotency conflict` | an idempotency key reused with other parameters (`IDEMPOTENCY_CONFLICT`) |
//! | 211 | 502 | `wechat error` | WeChat answered with an error (`WECHAT_ERROR`) |
//! | 212 | 503 | `wechat unavailable` | WeChat did not answer in time (`WECHAT_UNAVAILABLE`) |
//! | 213 | 503 | `service unavailable` | a wxmp service is down or timed out (`DEPENDENCY_UNAVAILABLE`, transport errors, deadlines) |
//! | 500 | 500 | `internal error` | a bug (`INTERNAL`) |
//!
//! # Operations
//!
//! Each request gets an id (a sane incoming `X-Request-Id`, else a uuid v4), echoed in the
//! `X-Request-Id` response header, recorded in the request's tracing span and sent as
//! `x-request-id` metadata on every upstream call. Every upstream call has the deadline
//! `GATEWAY_RPC_TIMEOUT_MS`. Metrics: `wxmp_http_requests_total{route,code}` (code = HTTP
//! status), `wxmp_http_request_duration_seconds{route}`, `wxmp_pay_notify_total{verdict}`.
//!
//! Rate limits (per client IP, IPv6 per /64; in Redis and shared by the replicas with
//! `GATEWAY_REDIS_URL`, else in each replica's memory, see [`limit`]): `/login/` attempts
//! `GATEWAY_LOGIN_RATE_PER_MIN` (default 60; over it envelope 208 / HTTP 429) and signature
//! failures on `/pay/notify` `GATEWAY_NOTIFY_FAIL_LIMIT` per `GATEWAY_NOTIFY_FAIL_WINDOW_SECS`
//! (default 20 per 60 s; over it the sender's notifies are verified first and dropped unless
//! they verify, see [`routes::notify`]). 0 turns either off.
//!
//! The client IP (for the rate limits, and sent to WeChat) is the socket peer, or, when the
//! peer is in `GATEWAY_TRUSTED_PROXIES`, the first `X-Forwarded-For` hop from the right that is
//! not a trusted proxy ([`extract::client_ip`]).
//!
//! Each upstream's health is checked every `GATEWAY_UPSTREAM_CHECK_MS`; while one is down its
//! routes answer 213 at once ([`upstream`]).

pub mod config;
pub mod envelope;
pub mod extract;
pub mod limit;
mod observe;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod upstream;

pub use config::Config;
pub use server::{AppState, UserRows, app, serve, serve_state};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {name} service URL {url:?}: {source}")]
    Upstream {
        name: &'static str,
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Redis(#[from] limit::shared::InvalidUrl),
    #[error(transparent)]
    Tls(#[from] service_kit::grpc::TlsError),
    #[error(transparent)]
    Revocation(service_kit::session_cache::InvalidRedisUrl),
    #[error("{0}")]
    PushApps(String),
}
