//! Attacks: login floods and notify floods are rate limited per client IP; the internal gRPC
//! services refuse calls without the shared service token.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sandbox::{DEV_APP_ID, DEV_MCH_ID};
use serde_json::json;
use tonic::{Code, metadata::MetadataValue};
use wxmp_proto::pay::v1::{ListProductsRequest, pay_service_client::PayServiceClient};
use wxmp_tests::{Backend, TestStack, on_both_backends, order_and_prepay};

async fn login_flood(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.gateway_args.extend(
            [
                "--login-rate-per-min",
                "5",
                // The test plays a proxy on 127.0.0.1 to speak for other clients.
                "--trusted-proxies",
                "127.0.0.1",
            ]
            .map(String::from),
        );
    })
    .await;
    // The first 5 attempts of this client pass, bad ones included (they count too).
    let (status, _) = t
        .post(&t.gateway("/login/"), json!({ "code": "bogus" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut token = String::new();
    for _ in 0..4 {
        token = t.login(None).await.0;
    }
    // The 6th, with a perfectly valid code, is refused without reaching WeChat.
    let (code, openid) = t.login_code(None).await;
    let (status, answer) = t
        .post(&t.gateway("/login/"), json!({ "code": code.clone() }))
        .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!(208)),
        "{answer}"
    );
    assert!(answer["data"].is_null());
    // Other routes are not limited, and another client (behind the proxy) has its own budget.
    assert_eq!(t.me(&token).await.0, StatusCode::OK);
    let response = t
        .http
        .post(t.gateway("/login/"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the code was never used");
    let _ = openid;
    // A client behind the proxy cannot dodge the limit by writing its own X-Forwarded-For:
    // the chain is read from the right, and the proxy appended the client's real address
    // after whatever the client sent. 203.0.113.9 used 1 attempt; 4 more use up its budget.
    for _ in 0..4 {
        let response = t
            .http
            .post(t.gateway("/login/"))
            .header("x-forwarded-for", "203.0.113.9")
            .json(&json!({ "code": "bogus" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let (code, _) = t.login_code(None).await;
    let response = t
        .http
        .post(t.gateway("/login/"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.9")
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}
on_both_backends!(workers = 4; login_flood as login_is_rate_limited_per_client_ip);

async fn notify_flood(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.gateway_args.extend(
            [
                "--notify-fail-limit",
                "3",
                "--notify-fail-window-secs",
                "600",
                "--trusted-proxies",
                "127.0.0.1",
            ]
            .map(String::from),
        );
    })
    .await;
    let (token, _) = t.login(None).await;
    let (_, answer) = t.pay_product(&token, "coffee").await;
    let (order_no, prepay) = order_and_prepay(&answer).unwrap();
    let forged = |i: usize| {
        format!(
            "<xml><return_code>SUCCESS</return_code><result_code>SUCCESS</result_code>\
             <appid>{DEV_APP_ID}</appid><mch_id>{DEV_MCH_ID}</mch_id><nonce_str>n{i}</nonce_str>\
             <out_trade_no>{order_no}</out_trade_no><transaction_id>4200000000{i:018}</transaction_id>\
             <total_fee>1800</total_fee><time_end>20261201120000</time_end>\
             <sign>{i:032}</sign></xml>"
        )
    };
    let attacker = [
        ("content-type", "text/xml"),
        ("x-forwarded-for", "192.0.2.66"),
    ];
    for i in 0..3 {
        let (status, text) = t
            .raw(Method::POST, "/pay/notify", &attacker, forged(i))
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains("FAIL"), "{text}");
    }
    let stored = t.db_verdicts().await.len();
    assert_eq!(stored, 3, "pay-service judged the first three");
    for i in 3..10 {
        let (status, text) = t
            .raw(Method::POST, "/pay/notify", &attacker, forged(i))
            .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
        assert!(text.contains("<return_code><![CDATA[FAIL]]>"), "{text}");
    }
    assert_eq!(
        t.db_verdicts().await.len(),
        stored,
        "nothing was stored for the blocked sender's forgeries"
    );
    // WeChat (another address) is not affected: the real payment is applied.
    t.sandbox_pay(&prepay, "success", None).await;
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(20))
        .await;
    assert_eq!(order["state"], "PAID");
    // Accepted notifies never count: WeChat's duplicates do not lock it out.
    let genuine = t.db_verdicts().await;
    assert!(genuine.iter().any(|(_, v)| v == "applied"));
}
on_both_backends!(workers = 4; notify_flood as failed_notifies_are_rate_limited_per_client_ip);

/// Issue 19 item 1: behind a proxy (or from WeChat's own address) garbage must never lock out
/// WeChat. Forty bad notifies from the sandbox's own address (127.0.0.1, as every request is
/// behind a proxy without GATEWAY_TRUSTED_PROXIES), then the sandbox's genuine notify from
/// the same address: it is applied, not refused.
async fn garbage_then_genuine_notify(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, _) = t.login(None).await;
    let (_, answer) = t.pay_product(&token, "coffee").await;
    let (order_no, prepay) = order_and_prepay(&answer).unwrap();
    let headers = [("content-type", "text/xml")];
    // Bodies WeChat could send too (our parser may disagree with it): never counted.
    for i in 0..10 {
        let (status, text) = t
            .raw(
                Method::POST,
                "/pay/notify",
                &headers,
                format!("garbage {i}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    // Forgeries: the default budget is 20 signature failures a minute; then throttled.
    let forged = |i: usize| {
        format!(
            "<xml><return_code>SUCCESS</return_code><result_code>SUCCESS</result_code>\
             <appid>{DEV_APP_ID}</appid><mch_id>{DEV_MCH_ID}</mch_id><nonce_str>n{i}</nonce_str>\
             <out_trade_no>{order_no}</out_trade_no><transaction_id>4200000000{i:018}</transaction_id>\
             <total_fee>1800</total_fee><time_end>20261201120000</time_end>\
             <sign>{i:032}</sign></xml>"
        )
    };
    for i in 0..30 {
        let (status, text) = t
            .raw(Method::POST, "/pay/notify", &headers, forged(i))
            .await;
        let expected = if i < 20 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status, expected, "forgery {i}: {text}");
        assert!(text.contains("FAIL"), "{text}");
    }
    // WeChat's genuine notify from the same address is applied.
    t.sandbox_pay(&prepay, "success", None).await;
    let applied = wxmp_tests::eventually(Duration::from_secs(20), || async {
        t.db_verdicts()
            .await
            .iter()
            .any(|(no, v)| *no == order_no && v == "applied")
            .then_some(())
    })
    .await;
    assert!(applied.is_some(), "{:?}", t.db_verdicts().await);
    let verdicts = t.db_verdicts().await;
    let bad = verdicts
        .iter()
        .filter(|(_, v)| v == "bad_signature")
        .count();
    assert_eq!(bad, 20, "throttled forgeries are not stored: {verdicts:?}");
}
on_both_backends!(workers = 4; garbage_then_genuine_notify as genuine_notifies_pass_an_address_throttled_for_forgeries);

const INTERNAL_TOKEN: &str = "internal-token-for-the-e2e-test-0123456789";

async fn internal_token(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        for args in [
            &mut o.auth_args,
            &mut o.user_args,
            &mut o.pay_args,
            &mut o.gateway_args,
        ] {
            args.extend(["--internal-token", INTERNAL_TOKEN].map(String::from));
        }
    })
    .await;
    // The whole flow works with the token on every hop (auth→user, user→auth, gateway→all).
    let (token, openid) = t.login(None).await;
    let data = t
        .user_data(&openid, json!({ "nickName": "Token", "gender": 1 }))
        .await;
    let (status, answer) = t
        .post(
            &t.gateway("/userinfo/"),
            json!({ "token": token, "encryptedData": data["encryptedData"], "iv": data["iv"],
                    "rawData": data["rawData"], "signature": data["signature"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["nickname"], "Token");
    let (_, answer) = t.pay_product(&token, "coffee").await;
    let (order_no, prepay) = order_and_prepay(&answer).expect("pay works");
    t.sandbox_pay(&prepay, "success", None).await;
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(20))
        .await;
    assert_eq!(order["state"], "PAID");

    // A direct call to pay-service without the token, or with a wrong one, is refused.
    let mut pay = PayServiceClient::connect(t.stack.pay_url.clone())
        .await
        .expect("connect to pay-service");
    let refused = pay
        .list_products(ListProductsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(!refused.message().contains(INTERNAL_TOKEN));
    for wrong in [
        "internal-token-for-the-e2e-test-012345678",
        "internal-token-for-the-e2e-test-0123456789x",
        "",
    ] {
        let mut request = tonic::Request::new(ListProductsRequest {});
        request.metadata_mut().insert(
            service_kit::grpc::INTERNAL_TOKEN,
            MetadataValue::try_from(wrong).unwrap(),
        );
        let refused = pay.list_products(request).await.expect_err(wrong);
        assert_eq!(refused.code(), Code::Unauthenticated, "{wrong:?}");
    }
    let mut request = tonic::Request::new(ListProductsRequest {});
    request.metadata_mut().insert(
        service_kit::grpc::INTERNAL_TOKEN,
        MetadataValue::try_from(INTERNAL_TOKEN).unwrap(),
    );
    let products = pay.list_products(request).await.expect("with the token");
    assert!(!products.into_inner().products.is_empty());

    // The same for auth-service's most sensitive call.
    let mut auth = wxmp_proto::auth::v1::auth_service_client::AuthServiceClient::connect(
        t.stack.auth_url.clone(),
    )
    .await
    .unwrap();
    let refused = auth
        .get_session_key(wxmp_proto::auth::v1::GetSessionKeyRequest {
            app_id: sandbox::DEV_APP_ID.to_owned(),
            openid,
        })
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
}
on_both_backends!(workers = 4; internal_token as internal_grpc_requires_the_service_token);

/// Lists the services of one gRPC server through reflection (`grpcurl list`), with `token` as
/// the internal token if given.
async fn reflected_services(url: &str, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("gRPC URL")
        .connect()
        .await
        .expect("connect for reflection");
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::iter([ask]));
    if let Some(token) = token {
        request.metadata_mut().insert(
            service_kit::grpc::INTERNAL_TOKEN,
            MetadataValue::try_from(token).unwrap(),
        );
    }
    let mut answers = client.server_reflection_info(request).await?.into_inner();
    let answer = answers
        .message()
        .await?
        .expect("one answer to ListServices");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// `grpcurl -plaintext <addr> list` works against auth, user and pay with no `.proto` files,
/// lists exactly what each serves, and is refused without the internal token.
async fn reflection(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        for args in [
            &mut o.auth_args,
            &mut o.user_args,
            &mut o.pay_args,
            &mut o.gateway_args,
        ] {
            args.extend(["--internal-token", INTERNAL_TOKEN].map(String::from));
        }
    })
    .await;
    for (url, service) in [
        (&t.stack.auth_url, "wxmp.auth.v1.AuthService"),
        (&t.stack.user_url, "wxmp.user.v1.UserService"),
        (&t.stack.pay_url, "wxmp.pay.v1.PayService"),
    ] {
        let listed = reflected_services(url, Some(INTERNAL_TOKEN))
            .await
            .unwrap_or_else(|e| panic!("reflection on {service}: {e}"));
        let mut expected = vec![
            service.to_owned(),
            service_kit::grpc::HEALTH_SERVICE.to_owned(),
            service_kit::grpc::REFLECTION_SERVICE.to_owned(),
        ];
        expected.sort();
        assert_eq!(listed, expected, "{url}");
        let refused = reflected_services(url, None)
            .await
            .expect_err("reflection without the internal token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{service}");
    }
}
mod grpc_reflection_lists_each_service_behind_the_token {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_memory() {
        super::reflection(wxmp_tests::Backend::Sqlite).await;
    }
}
