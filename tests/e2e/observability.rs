//! The operations kit names only metrics that exist: every `wxmp_*` metric in
//! `deploy/observability/alerts.yml` and `grafana-dashboard.json` is in the services'
//! `/metrics` after real traffic (login, profile, phone, a paid order, a notify, a repaired
//! dropped notify, reconciler passes). A process of its own: the recorder is global
//! (a metric handle taken before it was installed would stay a no-op).

use std::{collections::BTreeSet, time::Duration};

use serde_json::json;
use wxmp_tests::{Backend, TestStack, eventually, order_and_prepay};

/// Every `wxmp_…` metric name in `text`, histogram series folded to their metric.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("wxmp_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(name.to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    if !wxmp_testkit::in_own_process(concat!(
        module_path!(),
        "::every_metric_the_dashboard_and_alerts_name_is_exported"
    )) {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability");
    let mut named = BTreeSet::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).expect("deploy/observability file");
        let found = metric_names(&text);
        assert!(found.len() >= 5, "{file} names too few metrics: {found:?}");
        named.extend(found);
    }

    // The NATS relay's metrics (WxmpNatsRelayLagging) are exported only with the relay on: a
    // nats-server of this test's own (without one, outside CI, they are left out).
    let nats = wxmp_testkit::nats::NatsServer::start();
    if nats.is_none() {
        named.retain(|n| !n.starts_with("wxmp_pay_nats_"));
    }
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], wxmp_tests::free_port()).into();
    service_kit::telemetry::init_metrics(Some(addr)).expect("metrics listener");
    let t = TestStack::start_with(Backend::Sqlite, |o| {
        o.pay_args.extend(
            [
                "--reconcile-interval-secs",
                "1",
                "--reconcile-after-secs",
                "0",
            ]
            .map(String::from),
        );
        if let Some(nats) = &nats {
            o.pay_args.extend(["--nats-url".to_owned(), nats.url()]);
        }
        // Virtual payment's metrics (the wxmp-xpay alerts) exist once it is configured.
        o.sell_demo_virtual_product();
    })
    .await;

    // A user logs in, sends a profile and a phone number, pays (the notify is applied).
    let (token, openid) = t.login(None).await;
    let data = t
        .user_data(&openid, json!({ "nickName": "Ops", "gender": 1 }))
        .await;
    let (status, answer) = t
        .post(
            &t.gateway("/userinfo/"),
            json!({ "token": token, "encryptedData": data["encryptedData"], "iv": data["iv"],
                    "rawData": data["rawData"], "signature": data["signature"] }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let phone = t
        .http
        .post(t.sandbox("/sandbox/user-data"))
        .json(&json!({ "openid": openid, "kind": "phone", "phone": "13800138000", "countryCode": "86" }))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let (status, answer) = t
        .post(
            &t.gateway("/phone/"),
            json!({ "token": token, "encryptedData": phone["encryptedData"], "iv": phone["iv"] }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, answer) = t.pay_product(&token, "coffee").await;
    let (order_no, prepay) = order_and_prepay(&answer).expect("pay");
    t.sandbox_pay(&prepay, "success", None).await;
    t.wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(20))
        .await;
    // A dropped notify: the reconciler repairs the payment.
    let (_, answer) = t.pay_product(&token, "tea").await;
    let (order_no, prepay) = order_and_prepay(&answer).expect("pay");
    t.sandbox_pay(&prepay, "success", Some(json!({ "drop_notify": true })))
        .await;
    t.wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(20))
        .await;

    let url = format!("http://{addr}/metrics");
    let scraped = eventually(Duration::from_secs(20), || {
        let url = url.clone();
        let named = named.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let exported = metric_names(&text);
            named.is_subset(&exported).then_some(text)
        }
    })
    .await;
    if scraped.is_none() {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let exported = metric_names(&text);
        let missing: Vec<_> = named.difference(&exported).collect();
        panic!("named in deploy/observability but not exported: {missing:?}\n{text}");
    }
    let text = scraped.unwrap();
    // Latencies are histograms (buckets aggregate across replicas), as the dashboard assumes.
    assert!(
        text.contains("wxmp_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with(r#"wxmp_pay_reconciler_orders_total{outcome="paid"}"#)
                && !l.ends_with(" 0")
        ),
        "the repaired payment is counted: {text}"
    );
}
