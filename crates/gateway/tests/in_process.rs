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
