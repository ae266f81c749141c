//! The gateway's OpenAPI 3.1 document, generated from the handlers' own types and
//! `#[utoipa::path]` attributes, served at `GET /openapi.json`, with Swagger UI (its assets
//! compiled into the binary: no CDN) at `GET /docs`.
//!
//! A route added to [`crate::routes::configure`] without a path here fails the test
//! `openapi_covers_every_registered_route` (tests/api.rs), which walks the real actix app.

use std::sync::OnceLock;

use actix_web::{HttpResponse, http::header, web};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        ObjectBuilder, RefOr, Schema, Type,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    envelope::{Code, Formatted},
    routes,
};

/// Where the document is served.
pub const SPEC_PATH: &str = "/openapi.json";
/// Where Swagger UI is served (`/docs` redirects here).
pub const DOCS_PATH: &str = "/docs/";

/// The failure envelope: `{"code": <envelope code>, "msg": <text>, "data": null}`. Its schema
/// is written from the one code table ([`Code::ALL`]), so the document
/// lists exactly the codes the gateway answers.
pub struct ErrorEnvelope;

impl utoipa::PartialSchema for ErrorEnvelope {
    fn schema() -> RefOr<Schema> {
        let table: String = Code::ALL
            .iter()
            .map(|c| {
                format!(
                    "| {} | {} | {} |\n",
                    c.value(),
                    c.http_status().as_u16(),
                    c.default_msg()
                )
            })
            .collect();
        ObjectBuilder::new()
            .description(Some(format!(
                "Every JSON failure. `code` is the envelope code (the HTTP status is set as well):\n\n\
                 | code | HTTP | msg |\n|---|---|---|\n{table}"
            )))
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .enum_values(Some(
                        Code::ALL
                            .iter()
                            .filter(|c| **c != Code::Suc)
                            .map(|c| c.value()),
                    )),
            )
            .required("code")
            .property("msg", ObjectBuilder::new().schema_type(Type::String))
            .required("msg")
            .property("data", ObjectBuilder::new().schema_type(Type::Null))
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for ErrorEnvelope {}

/// The security schemes: the session token as `Authorization: Bearer`, or (the seed's
/// clients) as the `token` field of the JSON body, which OpenAPI can only describe in words.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token from POST /login/ (43 base64url characters), valid \
                         AUTH_SESSION_TTL_SECS. An unknown or expired token is envelope 202: log in again.",
                    ))
                    .build(),
            ),
        );
        // Not a header: the closest OpenAPI has. The body field itself is in each schema.
        components.add_security_scheme(
            "body_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Token-In-Body",
                "The same token as the `token` field of the JSON body (the seed's clients \
                 send it so); no such header is read. The Bearer header wins when both are sent.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wxmp gateway",
        description = "The HTTP JSON API a WeChat Mini Program calls, and WeChat Pay's notify \
            endpoint. Every JSON answer is the envelope `{code, msg, data}` with a real HTTP \
            status; `code` 200 / `msg` \"suc\" is success (see `ErrorEnvelope` for every code). \
            JSON bodies need `Content-Type: application/json`, at most GATEWAY_BODY_LIMIT \
            bytes; unknown fields are ignored. Paths with a trailing slash are also served \
            without it (and `/logout`, `/me`, `/products` with one).",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        routes::session::login,
        routes::session::logout,
        routes::user::me,
        routes::user::userinfo,
        routes::user::phone,
        routes::pay::pay,
        routes::pay::order,
        routes::pay::products,
        routes::notify::pay_notify,
        routes::notify::pay_notify_v3,
        routes::refund_notify::refund_notify,
        routes::refund_notify::refund_notify_v3,
        routes::push::check,
        routes::push::receive,
        routes::health::healthz,
        routes::health::readyz,
        openapi_json,
        docs,
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "session", description = "wx.login() → a token"),
        (name = "user", description = "The caller's profile and phone number"),
        (name = "pay", description = "WeChat Pay JSAPI: pay, poll the order"),
        (name = "wechat", description = "Called by WeChat, not by the mini program"),
        (name = "operations", description = "Probes and this document"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as served, JSON.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document().to_pretty_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "OpenAPI document does not serialise");
            "{}".to_owned()
        })
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    summary = "This OpenAPI 3.1 document",
    responses((status = 200, description = "the document", content_type = "application/json")))]
pub async fn openapi_json() -> HttpResponse {
    let mut response = HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json());
    response.extensions_mut().insert(Formatted);
    response
}

/// `GET /docs`: Swagger UI over this document (its files are served below `/docs/`).
#[utoipa::path(get, path = "/docs", tag = "operations",
    summary = "Swagger UI for this document (HTML, served from the binary)",
    responses((status = 308, description = "to /docs/, the UI's page")))]
pub async fn docs() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, DOCS_PATH))
        .finish()
}

/// Registers `/openapi.json`, `/docs` and Swagger UI's files under `/docs/`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(SPEC_PATH).route(web::get().to(openapi_json)))
        .service(web::resource("/docs").route(web::get().to(docs)))
        .service(
            SwaggerUi::new(format!("{DOCS_PATH}{{_:.*}}"))
                .config(utoipa_swagger_ui::Config::from(SPEC_PATH)),
        );
}

/// The pattern of Swagger UI's own files: served, but not API routes of their own.
pub const DOCS_ASSETS_PATTERN: &str = "/docs/{_:.*}";
