//! Issue 19: notify throttling keyed on signatures, readiness per upstream with fail-fast
//! routes, and rate limits shared across replicas through Redis.

use std::time::{Duration, Instant};

use serde_json::json;
use service_kit::Shutdown;

use crate::helpers::{
    GOOD_TOKEN, NOTIFY_REPLY, Options, OwnRedis, Stack, assert_failure, shared_redis, start,
    start_gateway, wait_until,
};

async fn post_notify(s: &Stack, base: &str, body: &str) -> (u16, String) {
    let res = s
        .http
        .post(format!("{base}/pay/notify"))
        .header("content-type", "text/xml")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn login_status(s: &Stack, base: &str) -> u16 {
    let res = s
        .http
        .post(format!("{base}/login/"))
        .json(&json!({"code": "good"}))
        .send()
        .await
        .unwrap();
    res.status().as_u16()
}

#[tokio::test]
async fn only_signature_failures_count_and_a_verified_notify_always_passes() {
    let s = start(Options {
        notify_fail_limit: Some(3),
        ..Default::default()
    })
    .await;
    let base = s.base.clone();
    // 40 notifies pay-service refuses for reasons WeChat's own notifies can have: none counts.
    for i in 0..40 {
        let verdict = ["unknown_order", "amount_mismatch", "malformed"][i % 3];
        let (status, text) = post_notify(&s, &base, &format!("<xml>{verdict}</xml>")).await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(s.calls.of("handle_pay_notify").len(), 40);
    assert!(s.calls.of("handle_pay_notify_throttled").is_empty());
    // Three forgeries use up the budget of this address...
    for _ in 0..3 {
        let (status, text) = post_notify(&s, &base, "<xml>forged</xml>").await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("FAIL"), "{text}");
    }
    // ...so its next notifies go to pay-service marked throttled: a forgery is refused (429)...
    let (status, text) = post_notify(&s, &base, "<xml>forged</xml>").await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("<return_code><![CDATA[FAIL]]>"), "{text}");
    // ...and a notify that verifies, from the same address, is accepted.
    let (status, text) = post_notify(&s, &base, "<xml>genuine</xml>").await;
    assert_eq!((status, text.as_str()), (200, NOTIFY_REPLY));
    let throttled = s.calls.of("handle_pay_notify_throttled");
    assert_eq!(
        throttled.len(),
        2,
        "both went to pay-service, marked throttled"
    );
    assert_eq!(throttled[1].detail, "<xml>genuine</xml>");
    s.stop().await;
}

#[tokio::test]
async fn a_down_pay_service_keeps_login_up_and_pay_fails_fast() {
    let s = start(Options {
        pay_hung: true,
        rpc_timeout_ms: Some(3000),
        upstream_check_ms: Some(100),
        ..Default::default()
    })
    .await;
    // /readyz stays 200 (auth serves) and names pay as down.
    let ready = wait_until(Duration::from_secs(10), || async {
        let (status, body) = s.get_auth("/readyz", None).await;
        status == 200
            && body["data"]["auth"] == "serving"
            && body["data"]["user"] == "serving"
            && body["data"]["pay"].as_str().is_some_and(|p| p != "serving")
    })
    .await;
    let (status, body) = s.get_auth("/readyz", None).await;
    assert!(ready, "{status} {body}");
    // Login works.
    let (status, body) = s.post_json("/login/", json!({"code": "good"})).await;
    assert_eq!((status, body["code"].as_u64()), (200, Some(200)), "{body}");
    // pay's routes answer 213 at once, well inside the 3 s deadline a hung call would take.
    let started = Instant::now();
    let res = s
        .http
        .post(s.url("/pay/"))
        .bearer_auth(GOOD_TOKEN)
        .json(&json!({"order_no": "ORD1"}))
        .send()
        .await
        .unwrap();
    let got = Stack::read(res).await;
    let took = started.elapsed();
    assert_failure(&got, 213, 503);
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    let started = Instant::now();
    assert_failure(
        &s.get_auth("/orders/ORD1", Some(GOOD_TOKEN)).await,
        213,
        503,
    );
    assert!(started.elapsed() < Duration::from_millis(1000));
    let started = Instant::now();
    let (status, text) = post_notify(&s, &s.base, "<xml>genuine</xml>").await;
    assert_eq!(status, 503, "{text}");
    assert!(started.elapsed() < Duration::from_millis(1000));
    s.stop().await;
}

#[tokio::test]
async fn readiness_follows_auth_only() {
    let s = start(Options {
        auth_down: true,
        ..Default::default()
    })
    .await;
    let (status, body) = s.get_auth("/readyz", None).await;
    assert_eq!((status, body["code"].as_u64()), (503, Some(213)), "{body}");
    assert_ne!(body["data"]["auth"], "serving");
    assert_eq!(body["data"]["pay"], "serving");
    s.stop().await;
}

#[tokio::test]
async fn login_and_notify_limits_are_shared_across_replicas() {
    let s = start(Options {
        login_rate_per_min: Some(4),
        notify_fail_limit: Some(2),
        redis: Some(shared_redis()),
        ..Default::default()
    })
    .await;
    let stop_b = Shutdown::new();
    let (b, gateway_b) = start_gateway(s.config.clone(), stop_b.clone());
    let a = s.base.clone();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            s.http.get(format!("{b}/healthz")).send().await.is_ok()
        })
        .await
    );
    // One client, 4 logins a minute in all, whichever replica it reaches.
    for base in [&a, &b, &a, &b] {
        assert_eq!(login_status(&s, base).await, 200);
    }
    assert_eq!(login_status(&s, &a).await, 429);
    assert_eq!(login_status(&s, &b).await, 429);
    assert_eq!(
        s.calls.of("login").len(),
        4,
        "refused attempts never reached auth"
    );
    // Two forgeries, one at each replica, and both replicas throttle the sender.
    assert_eq!(post_notify(&s, &a, "<xml>forged</xml>").await.0, 200);
    assert_eq!(post_notify(&s, &b, "<xml>forged</xml>").await.0, 200);
    assert_eq!(post_notify(&s, &a, "<xml>forged</xml>").await.0, 429);
    assert_eq!(post_notify(&s, &b, "<xml>forged</xml>").await.0, 429);
    assert_eq!(s.calls.of("handle_pay_notify_throttled").len(), 2);
    stop_b.trigger();
    gateway_b.await.unwrap().unwrap();
    s.stop().await;
}

#[tokio::test]
async fn with_redis_down_each_replica_limits_locally_and_says_so() {
    let metrics = crate::helpers::metrics();
    let mut redis = OwnRedis::start().await;
    let s = start(Options {
        login_rate_per_min: Some(3),
        redis: Some((redis.url(), "wxmp-gw-test:".into())),
        ..Default::default()
    })
    .await;
    let stop_b = Shutdown::new();
    let (b, gateway_b) = start_gateway(s.config.clone(), stop_b.clone());
    let a = s.base.clone();
    // Shared while Redis runs: 2 here, 1 there, then both refuse.
    for base in [&a, &a, &b] {
        assert_eq!(login_status(&s, base).await, 200);
    }
    assert_eq!(login_status(&s, &b).await, 429);
    redis.kill();
    // Each replica falls back to its own memory, which counted its own attempts: A saw 2
    // allowed, so one more passes there; B saw 2 (one refused), so one more passes there too.
    let started = Instant::now();
    assert_eq!(login_status(&s, &a).await, 200);
    assert_eq!(login_status(&s, &a).await, 429);
    assert_eq!(login_status(&s, &b).await, 200);
    assert_eq!(login_status(&s, &b).await, 429);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no Redis timeout per request: {:?}",
        started.elapsed()
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains("wxmp_rate_limit_fallback_total{limit=\"login\"}"),
        "{rendered}"
    );
    stop_b.trigger();
    gateway_b.await.unwrap().unwrap();
    s.stop().await;
}

async fn post_refund_notify(s: &Stack, base: &str, body: &str) -> (u16, String) {
    let res = s
        .http
        .post(format!("{base}/pay/refund-notify"))
        .header("content-type", "text/xml")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Issue 23: v2 refund notifies have no signature; one that does not decrypt with the merchant
/// key counts against its sender as a forged pay notify does. Other refusals (an unknown
/// refund) never count; over the budget the sender's notifies reach pay-service marked
/// throttled (a forgery then 429), and a genuine one is still accepted.
#[tokio::test]
async fn undecryptable_refund_notifies_count_in_the_notify_throttle() {
    let s = start(Options {
        notify_fail_limit: Some(3),
        ..Default::default()
    })
    .await;
    let base = s.base.clone();
    for _ in 0..10 {
        let (status, text) = post_refund_notify(&s, &base, "<xml>unknown_refund</xml>").await;
        assert_eq!(status, 200, "{text}");
    }
    for _ in 0..3 {
        let (status, text) = post_refund_notify(&s, &base, "<xml>forged</xml>").await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("FAIL"), "{text}");
    }
    assert_eq!(s.calls.of("handle_refund_notify").len(), 13);
    assert!(s.calls.of("handle_refund_notify_throttled").is_empty());
    let (status, text) = post_refund_notify(&s, &base, "<xml>forged</xml>").await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("<return_code><![CDATA[FAIL]]>"), "{text}");
    let (status, text) = post_refund_notify(&s, &base, "<xml>genuine</xml>").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    let throttled = s.calls.of("handle_refund_notify_throttled");
    assert_eq!(
        throttled.len(),
        2,
        "both went to pay-service, marked throttled"
    );
    assert_eq!(throttled[1].detail, "<xml>genuine</xml>");
    // The pay notify budget is the same one: this sender's pay notifies are throttled too.
    let (status, _) = post_notify(&s, &base, "<xml>forged</xml>").await;
    assert_eq!(status, 429);
    s.stop().await;
}
