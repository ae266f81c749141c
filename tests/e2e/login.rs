//! Login and sessions end to end: gateway → auth-service → user-service, on both back ends.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use wxmp_tests::{Backend, TestStack, on_both_backends};

async fn seed_client_flow(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (code, openid) = t.login_code(None).await;
    // The seed's client: wx.login → POST /login/ {code} → res.data.data.token
    let (status, res_data) = t.post(&t.gateway("/login/"), json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(res_data["code"], 200);
    assert_eq!(res_data["msg"], "suc");
    let token = res_data["data"]["token"]
        .as_str()
        .expect("res.data.data.token");
    assert!(
        token.len() >= 43,
        "256-bit token, got {} chars",
        token.len()
    );
    assert!(res_data["data"]["expires_in"].as_i64().unwrap() > 0);
    assert!(!res_data.to_string().contains("session_key"));

    let (status, me) = t.me(token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["data"]["openid"], openid.as_str());
}
on_both_backends!(workers = 4; seed_client_flow as seed_client_flow_returns_a_token);

async fn second_login_reuses_the_user(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (first, openid) = t.login(None).await;
    let (second, same_openid) = t.login(Some(&openid)).await;
    assert_eq!(openid, same_openid);
    assert_ne!(first, second, "each login answers a new token");
    let (_, me1) = t.me(&first).await;
    let (_, me2) = t.me(&second).await;
    assert_eq!(me1["data"]["user_id"], me2["data"]["user_id"]);
    assert!(me1["data"]["user_id"].as_i64().unwrap() > 0);
}
on_both_backends!(workers = 4; second_login_reuses_the_user as second_login_of_an_openid_reuses_its_user);

async fn concurrent_first_logins(backend: Backend) {
    let t = TestStack::start(backend).await;
    let openid = format!(
        "oConcurrent{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(t.login_code(Some(&openid)).await.0);
    }
    let url = t.gateway("/login/");
    let logins = codes
        .iter()
        .map(|code| t.post(&url, json!({ "code": code })));
    let answers = futures::future::join_all(logins).await;
    let mut user_ids = Vec::new();
    for (status, answer) in answers {
        assert_eq!(status, StatusCode::OK, "{answer}");
        let token = answer["data"]["token"].as_str().unwrap();
        let (_, me) = t.me(token).await;
        user_ids.push(me["data"]["user_id"].as_i64().unwrap());
    }
    user_ids.dedup();
    assert_eq!(user_ids.len(), 1, "one user for one openid: {user_ids:?}");
}
on_both_backends!(workers = 4; concurrent_first_logins as concurrent_first_logins_make_one_user);

async fn reused_and_invalid_codes(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (code, _) = t.login_code(None).await;
    let (status, _) = t.post(&t.gateway("/login/"), json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = t.post(&t.gateway("/login/"), json!({ "code": code })).await;
    assert_eq!(again["code"], 202, "{again}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, unknown) = t
        .post(&t.gateway("/login/"), json!({ "code": "not-a-code" }))
        .await;
    assert_eq!(unknown["code"], 202, "{unknown}");
    let (status, missing) = t.post(&t.gateway("/login/"), json!({})).await;
    assert_eq!(
        (status, missing["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(201)),
        "{missing}"
    );
}
on_both_backends!(workers = 4; reused_and_invalid_codes as a_reused_or_unknown_code_is_202);

async fn logout(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, _) = t.login(None).await;
    let response = t
        .http
        .post(t.gateway("/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, me) = t.me(&token).await;
    assert_eq!(
        (status, me["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!(202)),
        "{me}"
    );
}
on_both_backends!(workers = 4; logout as logout_invalidates_the_token);

async fn expired_session(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.auth_args
            .extend(["--session-ttl-secs".to_owned(), "1".to_owned()]);
    })
    .await;
    let (token, _) = t.login(None).await;
    // Polled until refused (a session lives 1 s), for at most a few seconds.
    let expired = wxmp_tests::eventually(Duration::from_secs(5), || async {
        let (status, me) = t.me(&token).await;
        (status == StatusCode::UNAUTHORIZED).then_some(me)
    })
    .await
    .expect("the session expires");
    assert_eq!(expired["code"], json!(202), "{expired}");
}
on_both_backends!(workers = 4; expired_session as an_expired_session_is_refused);

async fn wechat_down(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (code, _) = t.login_code(None).await;
    t.faults(json!({ "http_status": 503 })).await;
    let (status, answer) = t.post(&t.gateway("/login/"), json!({ "code": code })).await;
    assert_eq!(answer["code"], 212, "{answer}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
on_both_backends!(workers = 4; wechat_down as wechat_unavailable_is_212);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_is_a_clear_error_within_bounded_time() {
    let t = TestStack::start_with(Backend::Postgres, |o| {
        // Nothing listens on port 1: Redis is "down" for this stack only.
        o.redis_url = Some("redis://127.0.0.1:1".to_owned());
        o.wait_ready = false;
    })
    .await;
    let (code, _) = t.login_code(None).await;
    let started = Instant::now();
    let (status, answer) = t.post(&t.gateway("/login/"), json!({ "code": code })).await;
    assert_eq!(answer["code"], 213, "{answer}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Bounded by the deadlines, not a hang (a generous bound, not a performance assertion).
    assert!(started.elapsed() < Duration::from_secs(15));
}
