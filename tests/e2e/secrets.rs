//! Secrets never leak: a full flow (logins, profile, phone, payment, notify, logout and a few
//! failures) runs with every log line captured at TRACE for wxmp's crates and DEBUG for the
//! libraries under them; neither the logs nor any answer may contain the AppSecret, the pay
//! key, the Pay v3 merchant private key, the APIv3 key, the webhook secret, the internal
//! service token, a session token or a session_key. The subscriber is global: each case runs
//! in a process of its own.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};
use wxmp_proto::auth::v1::{GetSessionKeyRequest, auth_service_client::AuthServiceClient};
use wxmp_testkit::http::{Response, TestServer};
use wxmp_tests::{Backend, TestStack, on_both_backends, order_and_prepay};

/// Every log line of this test binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// Installs the capturing subscriber once for the whole process.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        // The sandbox plays WeChat: what it logs is not ours to keep secret.
        let filter = EnvFilter::new(
            "debug,gateway=trace,auth_service=trace,user_service=trace,pay_service=trace,\
             service_kit=trace,wechat=trace,wxmp=trace,sandbox=off",
        );
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(captured.clone())
            .with_ansi(false)
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
            .expect("the only subscriber of this binary");
        captured
    })
}

const INTERNAL_TOKEN: &str = "internal-token-secret-4f1c9e2b7a";
const WEBHOOK_SECRET: &str = "whsec-secret-of-the-secrets-test-93d1";

async fn full_flow_leaks_nothing(backend: Backend) {
    let name = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    if !wxmp_testkit::in_own_process(&format!(
        "{}::a_full_flow_leaks_no_secret_into_logs_or_answers::{name}",
        module_path!()
    )) {
        return;
    }
    let logs = logs();
    // A webhook endpoint, so the webhook secret signs deliveries during the flow.
    let webhooks = TestServer::start(|_| async { Response::empty(200) }).await;
    let t = TestStack::start_with(backend, |o| {
        for args in [
            &mut o.auth_args,
            &mut o.user_args,
            &mut o.pay_args,
            &mut o.gateway_args,
        ] {
            args.extend(["--internal-token", INTERNAL_TOKEN].map(String::from));
        }
        o.pay_args.extend(
            [
                "--webhook-urls",
                &webhooks.url("/hooks/wxmp"),
                "--webhook-secret",
                WEBHOOK_SECRET,
                "--event-poll-ms",
                "50",
            ]
            .map(String::from),
        );
    })
    .await;
    let mut answers: Vec<String> = Vec::new();
    let mut tokens = Vec::new();
    let mut session_keys = Vec::new();
    let mut auth = AuthServiceClient::connect(t.stack.auth_url.clone())
        .await
        .expect("auth-service");
    let session_key = |openid: String| {
        let mut request = tonic::Request::new(GetSessionKeyRequest {
            app_id: sandbox::DEV_APP_ID.to_owned(),
            openid,
        });
        request.metadata_mut().insert(
            service_kit::grpc::INTERNAL_TOKEN,
            INTERNAL_TOKEN.parse().unwrap(),
        );
        request
    };

    // Two logins of the same user: each rotates the session_key.
    let (token, openid) = t.login(None).await;
    tokens.push(token);
    session_keys.push(
        auth.get_session_key(session_key(openid.clone()))
            .await
            .expect("session key")
            .into_inner()
            .session_key,
    );
    let (token, _) = t.login(Some(&openid)).await;
    tokens.push(token.clone());
    session_keys.push(
        auth.get_session_key(session_key(openid.clone()))
            .await
            .unwrap()
            .into_inner()
            .session_key,
    );
    assert!(session_keys.iter().all(|k| k.len() >= 16), "real keys");

    fn note(answers: &mut Vec<String>, (status, body): (StatusCode, Value)) {
        assert!(status.as_u16() < 500, "{status} {body}");
        answers.push(body.to_string());
    }
    macro_rules! record {
        ($e:expr $(,)?) => {
            note(&mut answers, $e)
        };
    }
    let profile = t
        .user_data(&openid, json!({ "nickName": "Secretive", "gender": 2 }))
        .await;
    record!(
        t.post(
            &t.gateway("/userinfo/"),
            json!({ "token": token, "encryptedData": profile["encryptedData"], "iv": profile["iv"],
                    "rawData": profile["rawData"], "signature": profile["signature"] }),
        )
        .await,
    );
    // A forged rawData signature and a wrong iv: the errors must not echo the key either.
    record!(
        t.post(
            &t.gateway("/userinfo/"),
            json!({ "token": token, "encryptedData": profile["encryptedData"], "iv": profile["iv"],
                    "rawData": profile["rawData"], "signature": "0".repeat(40) }),
        )
        .await,
    );
    record!(
        t.post(
            &t.gateway("/userinfo/"),
            json!({ "token": token, "encryptedData": profile["encryptedData"],
                    "iv": "AAAAAAAAAAAAAAAAAAAAAA==" }),
        )
        .await,
    );
    let phone = t
        .post(
            &t.sandbox("/sandbox/user-data"),
            json!({ "openid": openid, "kind": "phone", "phone": "13800138000", "countryCode": "86" }),
        )
        .await
        .1;
    record!(
        t.post(
            &t.gateway("/phone/"),
            json!({ "token": token, "encryptedData": phone["encryptedData"], "iv": phone["iv"] }),
        )
        .await,
    );
    record!(t.me(&token).await);
    record!(t.get(&t.gateway("/me"), "not-a-token").await);
    record!(
        t.post(&t.gateway("/login/"), json!({ "code": "used-or-bogus" }))
            .await,
    );

    let (status, answer) = t.pay_product(&token, "coffee").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (order_no, prepay) = order_and_prepay(&answer).unwrap();
    answers.push(answer.to_string());
    t.sandbox_pay(&prepay, "success", Some(json!({ "duplicate_notify": 2 })))
        .await;
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(20))
        .await;
    assert_eq!(order["state"], "PAID");
    let (status, reply) = t
        .raw(
            reqwest::Method::POST,
            "/pay/notify",
            &[("content-type", "text/xml")],
            format!("<xml><out_trade_no>{order_no}</out_trade_no><sign>00</sign></xml>"),
        )
        .await;
    assert!(status.as_u16() < 500);
    answers.push(reply);
    record!(
        t.get(&t.gateway(&format!("/orders/{order_no}")), &token)
            .await,
    );
    record!(
        t.post(&t.gateway("/logout"), json!({ "token": tokens[0] }))
            .await,
    );
    // The session_key may have rotated once more on the way; take the latest too.
    if let Ok(latest) = auth.get_session_key(session_key(openid.clone())).await {
        session_keys.push(latest.into_inner().session_key);
    }

    // Scan once both copies of WeChat's notify were answered: their log lines are written by
    // then (the sandbox records a notify only after the answer came back).
    let answered = wxmp_tests::eventually(Duration::from_secs(20), || async {
        (t.sandbox_notifies(&order_no).await.len() >= 2).then_some(())
    })
    .await;
    assert!(answered.is_some(), "both notify copies answered");
    // And the order's events were delivered to the webhook endpoint, signed.
    let delivered = wxmp_tests::eventually(Duration::from_secs(20), || async {
        let requests = webhooks.requests();
        requests
            .iter()
            .any(|r| r.text().contains(&order_no) && r.text().contains("ORDER_PAID"))
            .then_some(requests)
    })
    .await
    .expect("the paid order's webhook delivered");
    assert!(
        delivered.iter().all(|r| r
            .header("x-wxmp-signature")
            .is_some_and(|s| s.starts_with("sha256="))),
        "signed deliveries"
    );
    answers.extend(
        delivered
            .iter()
            .map(|r| format!("{:?} {}", r.headers, r.text())),
    );
    let text = logs.text();
    assert!(
        text.contains("pay notify") && text.contains(&order_no),
        "the capture works: {} bytes",
        text.len()
    );
    let mut secrets: Vec<(&str, String)> = vec![
        ("AppSecret", sandbox::DEV_APP_SECRET.to_owned()),
        ("pay key", sandbox::DEV_PAY_KEY.to_owned()),
        ("internal token", INTERNAL_TOKEN.to_owned()),
        ("APIv3 key", sandbox::v3::dev::APIV3_KEY.to_owned()),
        ("webhook secret", WEBHOOK_SECRET.to_owned()),
    ];
    // A PEM key leaks as any of its base64 lines.
    secrets.extend(
        sandbox::v3::dev::MERCHANT_PRIVATE_KEY
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 32)
            .map(|l| ("v3 merchant private key", l.to_owned())),
    );
    secrets.extend(tokens.iter().map(|t| ("token", t.clone())));
    secrets.extend(session_keys.iter().map(|k| ("session_key", k.clone())));
    for (what, secret) in &secrets {
        // JSON logs escape some characters ('/' is not escaped, '+' and '=' are kept).
        for form in [
            secret.clone(),
            json!(secret).to_string().trim_matches('"').to_owned(),
        ] {
            if let Some(at) = text.find(&form) {
                let start = text[..at].rfind('\n').map_or(0, |n| n + 1);
                let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
                panic!("{what} in the logs: {}", &text[start..end]);
            }
        }
        for (i, answer) in answers.iter().enumerate() {
            assert!(
                !answer.contains(secret.as_str()),
                "{what} in answer {i}: {answer}"
            );
        }
    }
}
on_both_backends!(workers = 4; full_flow_leaks_nothing as a_full_flow_leaks_no_secret_into_logs_or_answers);
