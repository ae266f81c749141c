//! The binary's path: `serve` on a real listener, gRPC with the internal token, the reconciler
//! running in the background, graceful shutdown. On PostgreSQL and SQLite.

use std::time::Duration;

use crate::helpers::*;
use service_kit::{
    Secret, Shutdown,
    grpc::{AttachToken, InternalAuthConfig},
};
use tonic::{Code, transport::Channel};
use wxmp_proto::pay::v1::{
    self as pb, OrderState, pay_service_client::PayServiceClient,
    prepare_jsapi_payment_request::Target,
};

on_both_backends!(
    serve_runs_the_api_and_the_reconciler,
    config_errors_name_the_variable
);

async fn serve_runs_the_api_and_the_reconciler(backend: Backend) {
    service_kit::telemetry::init_tracing(service_kit::telemetry::LogFormat::Pretty);
    let sandbox = sandbox::spawn(sandbox::Config::dev()).await.unwrap();
    let (url, _dir) = database_url(backend).await;
    // `wxmp migrate` first: serve must cope with an up-to-date schema.
    pay_service::migrate(&url).await.unwrap();
    let mut config = config(url, &sandbox);
    config.reconcile_interval_secs = 1;
    config.reconcile_after_secs = 0;
    config.internal = InternalAuthConfig {
        internal_token: Some(Secret::new("internal-s3cret")),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(pay_service::serve(config, listener, shutdown.clone()));

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut anonymous = PayServiceClient::new(channel.clone());
    let mut client = PayServiceClient::with_interceptor(
        channel,
        AttachToken::new(Some(&Secret::new("internal-s3cret"))),
    );

    // Retry until the server has migrated and is listening.
    let mut products = None;
    for _ in 0..200 {
        match client.list_products(pb::ListProductsRequest {}).await {
            Ok(r) => {
                products = Some(r.into_inner().products);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(products.expect("server answers").len(), 2);
    let err = anonymous
        .list_products(pb::ListProductsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A payment whose notify is lost is found by the background reconciler.
    let prepared = client
        .prepare_jsapi_payment(pb::PrepareJsapiPaymentRequest {
            principal: Some(principal(5)),
            target: Some(Target::ProductId("vip".into())),
            client_ip: "198.51.100.4".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let no = prepared.order.clone().unwrap().order_no;
    let mut phone = crate::helpers::request_payment(&prepared);
    phone["faults"] = serde_json::json!({"drop_notify": true});
    let resp = reqwest::Client::new()
        .post(sandbox.url("/sandbox/pay"))
        .json(&phone)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let get = |client: PayServiceClient<_>| {
        let no = no.clone();
        async move {
            let mut client = client;
            client
                .get_order(pb::GetOrderRequest {
                    order_no: no,
                    user_id: 5,
                    internal_admin: false,
                })
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap()
        }
    };
    eventually(|| {
        let c = client.clone();
        let get = &get;
        async move { get(c).await.state == OrderState::Paid as i32 }
    })
    .await;

    // Errors carry their reason across the wire.
    let err = client
        .get_order(pb::GetOrderRequest {
            order_no: no.clone(),
            user_id: 6,
            internal_admin: false,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), service_kit::ErrorReason::NotFound);

    shutdown.trigger();
    let stopped = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve stops on shutdown")
        .unwrap();
    stopped.expect("serve returns Ok after a graceful stop");
}

type Breaker = Box<dyn Fn(&mut pay_service::Config)>;

async fn config_errors_name_the_variable(backend: Backend) {
    let sandbox = sandbox::spawn(sandbox::Config::dev()).await.unwrap();
    let (url, _dir) = database_url(backend).await;
    let good = config(url, &sandbox);
    good.validate().expect("the good config validates");
    let cases: Vec<(Breaker, &str)> = vec![
        (
            Box::new(|c| c.notify_url = "ftp://x".into()),
            "PAY_NOTIFY_URL",
        ),
        (
            Box::new(|c| c.sign_type = "SHA1".into()),
            "WXMP_PAY_SIGN_TYPE",
        ),
        (Box::new(|c| c.mch_id = " ".into()), "WXMP_PAY_MCH_ID"),
        (Box::new(|c| c.pay_key = Secret::new("")), "WXMP_PAY_KEY"),
        (Box::new(|c| c.order_ttl_secs = 10), "PAY_ORDER_TTL_SECS"),
        (
            Box::new(|c| c.reconcile_interval_secs = 0),
            "PAY_RECONCILE_INTERVAL_SECS",
        ),
        (
            Box::new(|c| c.database_url = Secret::new("")),
            "PAY_DATABASE_URL",
        ),
    ];
    for (breaks, variable) in cases {
        let mut config = good.clone();
        breaks(&mut config);
        let err = config.validate().unwrap_err();
        assert!(err.contains(variable), "{variable}: {err}");
        // serve refuses it before touching anything.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = pay_service::serve(config, listener, Shutdown::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(variable), "{variable}: {err}");
    }
    // Secrets never show.
    let printed = format!("{good:?}");
    assert!(!printed.contains(sandbox::DEV_PAY_KEY));
    assert!(!printed.contains(good.database_url.expose()));
}

/// Refunds on (a certificate configured) but the certificate, its key or the refund notify URL
/// missing or unreadable: the start fails naming the variable; with everything in place the
/// same config serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_stops_the_start() {
    let sandbox = sandbox::spawn(sandbox::Config::dev()).await.unwrap();
    let (url, _dir) = database_url(Backend::Sqlite).await;
    let certs = tempfile::tempdir().unwrap();
    sandbox.pki.write_to(certs.path()).unwrap();
    std::fs::write(certs.path().join("junk.pem"), "not a certificate").unwrap();
    let mut good = config(url, &sandbox);
    good.refunds = refund_config(certs.path(), &sandbox);
    let missing = certs.path().join("absent.pem");
    let junk = certs.path().join("junk.pem");
    let cases: Vec<(Breaker, &str)> = vec![
        (
            Box::new({
                let missing = missing.clone();
                move |c| c.refunds.cert_path = Some(missing.clone())
            }),
            "WXMP_PAY_CERT_PATH",
        ),
        (
            Box::new(move |c| c.refunds.cert_key_path = Some(missing.clone())),
            "WXMP_PAY_CERT_KEY_PATH",
        ),
        (
            Box::new(move |c| c.refunds.cert_path = Some(junk.clone())),
            "WXMP_PAY_CERT_PATH",
        ),
        (
            Box::new(|c| c.refunds.cert_key_path = None),
            "WXMP_PAY_CERT_KEY_PATH",
        ),
        (
            Box::new(|c| c.refunds.refund_notify_url = None),
            "PAY_REFUND_NOTIFY_URL",
        ),
        (
            Box::new(|c| c.refunds.refund_notify_url = Some("https://x/r?a=1".into())),
            "PAY_REFUND_NOTIFY_URL",
        ),
    ];
    for (breaks, variable) in cases {
        let mut config = good.clone();
        breaks(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = pay_service::serve(config, listener, Shutdown::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(variable), "{variable}: {err}");
    }
    // The key's content never shows in the config's Debug or the errors above.
    assert!(!format!("{good:?}").contains("PRIVATE KEY"));
    // The intact config starts and serves.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(pay_service::serve(good, listener, shutdown.clone()));
    tokio::task::yield_now().await;
    shutdown.trigger();
    let stopped = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve stops on shutdown")
        .unwrap();
    stopped.expect("serve returns Ok after a graceful stop");
}
