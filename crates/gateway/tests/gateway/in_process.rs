//! The app without a server, through `actix_web::test`, as other crates' tests can use it.

use actix_web::{http::StatusCode, test};
use gateway::{AppState, Config};

#[actix_web::test]
async fn the_app_works_under_init_service() {
    // Nothing listens on port 9: only routes that make no upstream call succeed.
    let config = Config::new(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
    );
    let app = test::init_service(gateway::app(AppState::new(&config).unwrap())).await;

    let res = test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    let body: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(
        body,
        serde_json::json!({"code": 200, "msg": "suc", "data": {"status": "ok"}})
    );

    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/login/")
            .insert_header(("content-type", "application/json"))
            .set_payload("{}")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(body["code"], 201);

    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/login/")
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"code":"abc"}"#)
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(body["code"], 213);
}

/// Every resource pattern the real app registered, read from actix's own routing table (the
/// `ResourceMap` every request carries). actix has no public walker, so its `Debug` output is
/// read: each resource prints `patterns: Single("…")` or `patterns: List(["…", …])`. A scope
/// would nest patterns under a prefix (`is_prefix: true`, like the root); the gateway has
/// none, and this fails loudly if one appears rather than miss its routes.
fn registered_patterns(rmap: &actix_web::dev::ResourceMap) -> Vec<String> {
    let dump = format!("{rmap:?}");
    // The root is a prefix node of its own; any other is a scope.
    assert_eq!(
        dump.matches("is_prefix: true").count(),
        1,
        "a scope was registered: teach registered_patterns to join prefixes"
    );
    let mut patterns = Vec::new();
    let mut rest = dump.as_str();
    while let Some(at) = rest.find("patterns: ") {
        rest = &rest[at + "patterns: ".len()..];
        let end = if rest.starts_with("Single(") {
            rest.find(')').expect("end of Single")
        } else if rest.starts_with("List(") {
            rest.find("])").expect("end of List")
        } else {
            panic!(
                "unexpected Patterns format: {}",
                &rest[..rest.len().min(60)]
            );
        };
        let mut item = &rest[..end];
        while let Some(open) = item.find('"') {
            let close = item[open + 1..].find('"').expect("closing quote") + open + 1;
            patterns.push(item[open + 1..close].to_owned());
            item = &item[close + 1..];
        }
        rest = &rest[end..];
    }
    patterns.retain(|p| !p.is_empty());
    patterns.sort();
    patterns.dedup();
    patterns
}

/// `/orders/{order_no}` → `/orders/probe`.
fn sample_path(pattern: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in pattern.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push_str("probe");
                }
                depth += 1;
            }
            '}' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

#[actix_web::test]
async fn openapi_covers_every_registered_route() {
    use std::collections::BTreeSet;
    // Nothing listens on port 9: handlers that call upstream fail fast with 503.
    let config = Config::new(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
    );
    let app = test::init_service(gateway::app(AppState::new(&config).unwrap())).await;
    let res = test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    let patterns = registered_patterns(res.request().resource_map());
    assert!(
        patterns.len() >= 10 && patterns.iter().any(|p| p == "/orders/{order_no}"),
        "the routing table was not read: {patterns:?}"
    );

    // Which methods each pattern answers: anything but 405 from its own resource.
    let mut registered = BTreeSet::new();
    for pattern in &patterns {
        if pattern == gateway::openapi::DOCS_ASSETS_PATTERN {
            continue; // Swagger UI's own files, documented as GET /docs
        }
        for method in METHODS {
            let req = test::TestRequest::default()
                .method(method.parse().unwrap())
                .uri(&sample_path(pattern))
                .to_request();
            let res = test::call_service(&app, req).await;
            let matched = res.request().match_pattern();
            if res.status() != StatusCode::METHOD_NOT_ALLOWED
                && matched.as_deref() == Some(pattern.as_str())
            {
                registered.insert((pattern.clone(), method.to_lowercase()));
            }
        }
    }
    assert!(registered.contains(&("/pay/notify".to_owned(), "post".to_owned())));

    let doc = gateway::openapi::document();
    let mut documented = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("get", item.get.is_some()),
            ("post", item.post.is_some()),
            ("put", item.put.is_some()),
            ("delete", item.delete.is_some()),
            ("patch", item.patch.is_some()),
        ];
        for (method, present) in ops {
            if present {
                documented.insert((path.clone(), method.to_owned()));
            }
        }
    }
    // A trailing-slash alias (`/login` for `/login/`) is the same route.
    let canonical = |(p, m): &(String, String)| {
        let alt = match p.strip_suffix('/') {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => format!("{p}/"),
        };
        if documented.contains(&(p.clone(), m.clone())) {
            Some((p.clone(), m.clone()))
        } else if documented.contains(&(alt.clone(), m.clone())) {
            Some((alt, m.clone()))
        } else {
            None
        }
    };
    let missing: Vec<_> = registered
        .iter()
        .filter(|r| canonical(r).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "routes registered with actix but missing from the OpenAPI document \
         (add #[utoipa::path] and list it in gateway::openapi::ApiDoc): {missing:?}"
    );
    let covered: BTreeSet<_> = registered.iter().filter_map(canonical).collect();
    let phantom: Vec<_> = documented.difference(&covered).collect();
    assert!(phantom.is_empty(), "documented but not served: {phantom:?}");
}

#[actix_web::test]
async fn openapi_document_and_docs_are_served_offline() {
    let config = Config::new(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
    );
    let app = test::init_service(gateway::app(AppState::new(&config).unwrap())).await;
    let res = test::call_service(
        &app,
        test::TestRequest::get().uri("/openapi.json").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let spec: serde_json::Value = test::read_body_json(res).await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(spec["paths"]["/pay/"]["post"]["security"].is_array());
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let codes = &spec["components"]["schemas"]["ErrorEnvelope"]["properties"]["code"]["enum"];
    for code in [
        201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 500,
    ] {
        assert!(
            codes.as_array().unwrap().contains(&code.into()),
            "{code} in {codes}"
        );
    }

    let res = test::call_service(&app, test::TestRequest::get().uri("/docs").to_request()).await;
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers().get("location").unwrap(), "/docs/");
    let res = test::call_service(&app, test::TestRequest::get().uri("/docs/").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    // Every script and stylesheet comes from the binary, not a CDN.
    assert!(!page.contains("https://"), "{page}");
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-initializer.js"] {
        let res = test::call_service(&app, test::TestRequest::get().uri(asset).to_request()).await;
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
        let body = test::read_body(res).await;
        assert!(body.len() > 100, "{asset}");
        if asset.ends_with("initializer.js") {
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("/openapi.json"), "{text}");
        }
    }
}

/// The document passes an independent validator (`openapi-spec-validator`, PyPI).
#[actix_web::test]
async fn openapi_document_passes_openapi_spec_validator() {
    if !wxmp_testkit::tool_or_skip("openapi-spec-validator", "validates the OpenAPI document") {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wxmp-openapi.json");
    std::fs::write(
        &path,
        gateway::openapi::document().to_pretty_json().unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new("openapi-spec-validator")
        .arg(&path)
        .output()
        .expect("run openapi-spec-validator");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("openapi-spec-validator: {said}");
    assert!(out.status.success(), "{said}");
    assert!(said.contains("OK"), "{said}");
}
