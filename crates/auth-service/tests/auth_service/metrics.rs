//! The Prometheus metrics a login leaves behind, scraped over HTTP as Prometheus would.
//! A process of its own: the recorder is global to the process, and the counts are exact.

use crate::helpers::*;
use service_kit::ErrorReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_wechat_calls_are_counted() {
    if !wxmp_testkit::in_own_process(concat!(
        module_path!(),
        "::logins_and_wechat_calls_are_counted"
    )) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    service_kit::telemetry::init_metrics(Some(addr)).expect("metrics listener");

    let stack = start(Options::on(Store::Memory)).await;
    let code = stack.new_code().await;
    stack.login("", &code.code).await.unwrap();
    assert_eq!(
        reason(stack.login("", &code.code).await),
        ErrorReason::InvalidCode
    );

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |needle: &str| {
        text.lines()
            .any(|l| l.starts_with(needle) && l.ends_with(" 1"))
    };
    assert!(has(r#"wxmp_auth_logins_total{result="ok"}"#), "{text}");
    assert!(
        has(r#"wxmp_auth_logins_total{result="invalid_code"}"#),
        "{text}"
    );
    assert!(
        has(r#"wxmp_wechat_requests_total{api="code2session",result="ok"}"#),
        "{text}"
    );
    assert!(
        has(r#"wxmp_wechat_requests_total{api="code2session",result="code_used"}"#),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .starts_with(r#"wxmp_wechat_request_duration_seconds_count{api="code2session"} 2"#)),
        "{text}"
    );
}
