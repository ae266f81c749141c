//! The outbox (`order_events`), the `WatchOrderEvents` stream and the webhooks, on PostgreSQL
//! and SQLite.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use hmac::{Hmac, Mac};
use pay_service::{Payments, events, events::webhooks};
use sha2::Sha256;
use tokio::net::TcpListener;
use tonic::Request;
use wxmp_proto::pay::v1::{
    self as pb, OrderEventKind, pay_service_server::PayService,
    prepare_jsapi_payment_request::Target,
};

use crate::helpers::*;

on_both_backends!(
    each_state_change_has_exactly_one_event,
    a_thousand_payments_stream_exactly_once_across_reconnects,
    the_stream_filters_kinds_and_follows_live,
    webhooks_resume_after_a_kill_and_an_outage,
    a_refusing_endpoint_is_dead_lettered,
    pruning_keeps_ids_increasing,
);

const SECRET: &str = "whsec-test-secret";

/// Every event after `after_id` that is already committed (the stream's replay part).
async fn replay(pay: &Payments, after_id: i64, want: usize) -> Vec<pb::OrderEvent> {
    let mut stream = pay.watch_events(after_id, Vec::new());
    let mut got = Vec::new();
    while got.len() < want {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        got.push(next);
    }
    got
}

fn kind(e: &pb::OrderEvent) -> OrderEventKind {
    OrderEventKind::try_from(e.kind).unwrap()
}

async fn prepared_order(env: &Env, user_id: i64) -> (String, pb::PrepareJsapiPaymentResponse) {
    let prepared = env
        .prepare(&principal(user_id), Target::ProductId("coins".into()))
        .await
        .unwrap();
    (prepared.order.clone().unwrap().order_no, prepared)
}

fn paying_notify(order_no: &str, transaction_id: &str) -> Vec<u8> {
    signed_notify(
        &notify_fields(order_no, "100", &[("transaction_id", transaction_id)]),
        sandbox::DEV_PAY_KEY,
    )
}

async fn each_state_change_has_exactly_one_event(backend: Backend) {
    let env = Env::new(backend).await;
    let (paid_no, _) = prepared_order(&env, 1).await;
    let (closed_no, _) = prepared_order(&env, 2).await;

    // A payment notified three times is one event.
    let body = paying_notify(&paid_no, "4200000000202612010000000001");
    for _ in 0..3 {
        assert!(env.notify(&body).await.accepted);
    }
    // A close, then a genuine payment of the closed order: two events.
    env.close(&closed_no, 2).await.unwrap();
    let late = paying_notify(&closed_no, "4200000000202612010000000002");
    assert_eq!(env.notify(&late).await.verdict, "paid_after_close");
    assert_eq!(env.notify(&late).await.verdict, "paid_after_close");
    // Refused notifies and reads change nothing, so they have no event.
    let forged = signed_notify(&notify_fields(&paid_no, "100", &[]), "not-the-key");
    assert!(!env.notify(&forged).await.accepted);
    env.get(&paid_no, 1).await.unwrap();

    let got = replay(&env.pay, 0, 3).await;
    let seen: Vec<(&str, OrderEventKind)> =
        got.iter().map(|e| (e.order_no.as_str(), kind(e))).collect();
    assert_eq!(
        seen,
        vec![
            (paid_no.as_str(), OrderEventKind::OrderPaid),
            (closed_no.as_str(), OrderEventKind::OrderClosed),
            (closed_no.as_str(), OrderEventKind::OrderPaidAfterClose),
        ]
    );
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    let payload: serde_json::Value = serde_json::from_str(&got[0].payload_json).unwrap();
    assert_eq!(payload["state"], "PAID");
    assert_eq!(payload["amount_fen"], 100);
    assert_eq!(payload["transaction_id"], "4200000000202612010000000001");
    assert_eq!(payload["user_id"], 1);
    // Nothing else is in the outbox.
    assert_eq!(
        events::last_id(env.pay.database()).await.unwrap(),
        got[2].id
    );
}

/// 1,000 payments, paid by duplicated concurrent notifies and (one in ten) by the reconciler
/// after a dropped notify, consumed by a reader that reconnects every 150 events.
async fn a_thousand_payments_stream_exactly_once_across_reconnects(backend: Backend) {
    const ORDERS: usize = 1000;
    let env = Arc::new(Env::new(backend).await);

    // The consumer runs while the payments happen.
    let pay = env.pay.clone();
    let consumer = tokio::spawn(async move {
        let mut cursor = 0;
        let mut got: Vec<pb::OrderEvent> = Vec::new();
        let mut reconnects = 0;
        while got.len() < ORDERS {
            let mut stream = pay.watch_events(cursor, vec![events::EventKind::OrderPaid]);
            let mut this_connection = 0;
            while this_connection < 150 && got.len() < ORDERS {
                let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
                    .await
                    .expect("next event in time")
                    .expect("stream open")
                    .expect("event");
                cursor = event.id;
                got.push(event);
                this_connection += 1;
            }
            reconnects += 1;
        }
        (got, reconnects)
    });

    let orders: Vec<(String, pb::PrepareJsapiPaymentResponse)> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let env = env.clone();
            async move { prepared_order(&env, i as i64 + 1).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    futures::stream::iter(orders.iter().enumerate())
        .for_each_concurrent(16, |(i, (no, prepared))| {
            let env = env.clone();
            async move {
                if i % 10 == 0 {
                    let paid = env
                        .sandbox_pay(prepared, Some(serde_json::json!({"drop_notify": true})))
                        .await;
                    assert_eq!(paid["notify_state"], "dropped");
                } else {
                    let body = paying_notify(no, &format!("42000000002026120{i:012}"));
                    let (a, b) = tokio::join!(env.notify(&body), env.notify(&body));
                    assert!(a.accepted && b.accepted);
                }
            }
        })
        .await;
    let repaired: Vec<&String> = orders.iter().step_by(10).map(|(no, _)| no).collect();
    // The reconciler repairs the dropped ones (several passes: it works in batches).
    let mut paid_by_reconciler = 0;
    while paid_by_reconciler < repaired.len() {
        let report = env.pay.reconcile_once().await.unwrap();
        assert_eq!(report.errors, 0, "{report:?}");
        assert!(report.paid > 0, "reconciler stalled: {report:?}");
        paid_by_reconciler += report.paid;
    }

    let (got, reconnects) = tokio::time::timeout(Duration::from_secs(120), consumer)
        .await
        .expect("consumer finished")
        .unwrap();
    assert!(reconnects >= 6, "{reconnects}");
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "ids in order");
    assert!(got.iter().all(|e| kind(e) == OrderEventKind::OrderPaid));
    let streamed: BTreeSet<&str> = got.iter().map(|e| e.order_no.as_str()).collect();
    let expected: BTreeSet<&str> = orders.iter().map(|(no, _)| no.as_str()).collect();
    assert_eq!(streamed.len(), ORDERS, "no duplicates");
    assert_eq!(streamed, expected, "every paid order once");
    // And nothing more arrives: the outbox holds exactly these.
    let all = events::after(env.pay.database(), 0, &[], 5000)
        .await
        .unwrap();
    assert_eq!(all.len(), ORDERS);
}

async fn the_stream_filters_kinds_and_follows_live(backend: Backend) {
    let env = Env::new(backend).await;
    let response = PayService::watch_order_events(
        &env.pay,
        Request::new(pb::WatchOrderEventsRequest {
            after_id: 0,
            kinds: vec![OrderEventKind::OrderClosed as i32],
        }),
    )
    .await
    .unwrap();
    let mut stream = response.into_inner();
    // Subscribed before anything happened: the events arrive live.
    let (paid_no, _) = prepared_order(&env, 1).await;
    let (closed_no, _) = prepared_order(&env, 2).await;
    assert!(
        env.notify(&paying_notify(&paid_no, "4200000000202612010000000009"))
            .await
            .accepted
    );
    env.close(&closed_no, 2).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("live event")
        .unwrap()
        .unwrap();
    assert_eq!(kind(&event), OrderEventKind::OrderClosed);
    assert_eq!(event.order_no, closed_no);

    // Unknown kinds and negative cursors are refused.
    for request in [
        pb::WatchOrderEventsRequest {
            after_id: -1,
            kinds: vec![],
        },
        pb::WatchOrderEventsRequest {
            after_id: 0,
            kinds: vec![99],
        },
    ] {
        let err = PayService::watch_order_events(&env.pay, Request::new(request))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}

/// A webhook receiver: answers with the status it is told, records every request, and tracks
/// how many requests of the same event are in flight at once.
#[derive(Clone, Default)]
struct Endpoint {
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<Mutex<HashMap<i64, usize>>>,
    max_parallel_same_event: Arc<Mutex<usize>>,
}

#[derive(Clone, Debug)]
struct Received {
    event_id: i64,
    timestamp: i64,
    signature: String,
    body: Vec<u8>,
    answered: u16,
}

impl Endpoint {
    async fn start(status: u16) -> (Self, String) {
        let endpoint = Self::default();
        endpoint.status.store(status, Ordering::SeqCst);
        let e = endpoint.clone();
        let server = TestServer::start(move |r: TestRequest| {
            let e = e.clone();
            async move { e.serve_one(r).await }
        })
        .await;
        (endpoint, server.url("/hooks/wxmp"))
    }

    async fn serve_one(&self, r: TestRequest) -> TestResponse {
        let header = |name: &str| r.header(name).unwrap_or_default().to_owned();
        let event_id: i64 = header("x-wxmp-event-id").parse().unwrap_or(-1);
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            let n = in_flight.entry(event_id).or_default();
            *n += 1;
            let mut max = self.max_parallel_same_event.lock().unwrap();
            *max = (*max).max(*n);
        }
        // Slow enough that a second delivery of the same event would overlap.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let status = self.status.load(Ordering::SeqCst);
        self.requests.lock().unwrap().push(Received {
            event_id,
            timestamp: header("x-wxmp-timestamp").parse().unwrap_or(0),
            // Lower-cased like every header value the receiver compared before.
            signature: header("x-wxmp-signature").to_ascii_lowercase(),
            body: r.body,
            answered: status,
        });
        *self.in_flight.lock().unwrap().get_mut(&event_id).unwrap() -= 1;
        TestResponse::empty(status)
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    fn delivered(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.answered == 200)
            .collect()
    }
}

/// The receiver's check, written independently of the service: HMAC-SHA256 over
/// `<timestamp>.<body>` with the shared secret.
fn signature_verifies(r: &Received) -> bool {
    let Some(hex_sig) = r.signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.", r.timestamp).as_bytes());
    mac.update(&r.body);
    mac.verify_slice(&sig).is_ok()
}

fn with_webhooks(url: &str) -> impl FnOnce(&mut pay_service::Config) {
    let url = url.to_owned();
    move |c| {
        c.events.webhook_urls = vec![url];
        c.events.webhook_secret = Some(service_kit::Secret::new(SECRET));
        c.events.webhook_backoff_secs = 1;
        c.events.event_poll_ms = 50;
        c.events.webhook_timeout_ms = 2000;
    }
}

/// Serves the env's database with the config's webhook worker until the handle is aborted
/// (a kill: no graceful anything); returns once the endpoint is registered.
async fn start_replica(env: &Env) -> tokio::task::JoinHandle<()> {
    let pay = env.replica();
    let config = env.config.clone();
    let task = tokio::spawn(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _ =
            pay_service::serve_payments(pay, &config, listener, service_kit::Shutdown::new()).await;
    });
    let db = env.pay.database().clone();
    let url = env.config.events.webhook_urls[0].clone();
    eventually(|| async { webhooks::cursor(&db, &url).await.unwrap().is_some() }).await;
    task
}

async fn webhooks_resume_after_a_kill_and_an_outage(backend: Backend) {
    let (endpoint, url) = Endpoint::start(503).await;
    let env = Env::with(backend, with_webhooks(&url)).await;
    let first = start_replica(&env).await;

    let mut paid = Vec::new();
    for user in 1..=10 {
        let (no, _) = prepared_order(&env, user).await;
        let body = paying_notify(&no, &format!("4200000000202612010000{user:06}"));
        assert!(env.notify(&body).await.accepted);
        paid.push(no);
    }
    // The endpoint is down: every event is attempted and fails.
    eventually(|| async {
        let tried: BTreeSet<i64> = endpoint.requests().iter().map(|r| r.event_id).collect();
        tried.len() == 10
    })
    .await;
    assert!(endpoint.delivered().is_empty());

    // Kill the replica mid-retry, bring the endpoint up, start two replicas.
    first.abort();
    let _ = first.await;
    endpoint.status.store(200, Ordering::SeqCst);
    let replicas = [start_replica(&env).await, start_replica(&env).await];

    eventually(|| async { endpoint.delivered().len() >= 10 }).await;
    // Every event once, signed, never twice at the same time.
    let delivered = endpoint.delivered();
    let ids: BTreeSet<i64> = delivered.iter().map(|r| r.event_id).collect();
    assert_eq!(ids.len(), 10, "{delivered:?}");
    assert_eq!(delivered.len(), 10, "an event was delivered twice");
    assert!(delivered.iter().all(signature_verifies));
    assert_eq!(*endpoint.max_parallel_same_event.lock().unwrap(), 1);
    let bodies: BTreeSet<String> = delivered
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["kind"], "ORDER_PAID");
            assert_eq!(v["data"]["state"], "PAID");
            v["order_no"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(bodies, paid.iter().cloned().collect());
    // A forged signature would not verify with the receiver's check.
    let mut forged = delivered[0].clone();
    forged.body.push(b' ');
    assert!(!signature_verifies(&forged));

    // The replicas record what the endpoint answered: all ten end DELIVERED.
    let db = env.pay.database().clone();
    eventually(|| async {
        webhooks::list(&db, webhooks::DELIVERED, 100)
            .await
            .unwrap()
            .len()
            == 10
    })
    .await;
    let pending = webhooks::list(&db, webhooks::PENDING, 100).await.unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    for r in replicas {
        r.abort();
    }
}

async fn a_refusing_endpoint_is_dead_lettered(backend: Backend) {
    let (endpoint, url) = Endpoint::start(410).await;
    let env = Env::with(backend, with_webhooks(&url)).await;
    let replica = start_replica(&env).await;
    let (no, _) = prepared_order(&env, 1).await;
    assert!(
        env.notify(&paying_notify(&no, "4200000000202612010000000077"))
            .await
            .accepted
    );

    let listed = || async {
        PayService::list_webhook_deliveries(
            &env.pay,
            Request::new(pb::ListWebhookDeliveriesRequest {
                state: "DEAD".into(),
                limit: 10,
            }),
        )
        .await
        .unwrap()
        .into_inner()
        .deliveries
    };
    eventually(|| async { !listed().await.is_empty() }).await;
    let dead = listed().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].order_no, no);
    assert_eq!(dead[0].last_error, "HTTP 410");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].kind, OrderEventKind::OrderPaid as i32);
    // A 4xx is final: one attempt, and the worker keeps running without retrying it.
    let report = webhooks::Webhooks::new(
        env.pay.database().clone(),
        env.clock.clone(),
        webhooks::WebhookSettings {
            endpoints: vec![url.clone()],
            secret: service_kit::Secret::new(SECRET),
            timeout: Duration::from_secs(2),
            max_age_secs: 86_400,
            backoff: Duration::from_secs(1),
            poll: Duration::from_millis(50),
        },
    )
    .unwrap()
    .pass()
    .await
    .unwrap();
    assert_eq!(report.delivered + report.retried + report.dead, 0);
    assert_eq!(endpoint.requests().len(), 1);
    replica.abort();
}

async fn pruning_keeps_ids_increasing(backend: Backend) {
    let env = Env::new(backend).await;
    let (first, _) = prepared_order(&env, 1).await;
    assert!(
        env.notify(&paying_notify(&first, "4200000000202612010000000101"))
            .await
            .accepted
    );
    let before = events::last_id(env.pay.database()).await.unwrap();
    assert!(before > 0);
    // A relay that has not published the event yet holds it, however old.
    let held = events::prune(env.pay.database(), env.clock.now() + 1, Some(before - 1))
        .await
        .unwrap();
    assert_eq!(held, 0);
    assert_eq!(events::last_id(env.pay.database()).await.unwrap(), before);
    // Older than "now + 1" is everything.
    let pruned = events::prune(env.pay.database(), env.clock.now() + 1, Some(before))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(events::last_id(env.pay.database()).await.unwrap(), 0);

    let (second, _) = prepared_order(&env, 2).await;
    assert!(
        env.notify(&paying_notify(&second, "4200000000202612010000000102"))
            .await
            .accepted
    );
    // A cursor kept from before the pruning still sees the new event: ids are never reused.
    let got = replay(&env.pay, before, 1).await;
    assert_eq!(got[0].order_no, second);
    assert!(got[0].id > before);
}
