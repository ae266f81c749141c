//! Refunds that can never pay twice, under faults (issue 23): two pay-service replicas on one
//! PostgreSQL, 1,000 refunds of 100 paid orders from 8 clients, partial and often concurrent on
//! one order, with and without out_refund_no, retried (keyed ones with their key, sometimes
//! two at once; keyless ones with the key their answer carried), while one replica or the
//! other is SIGKILLed every 1.5 s and restarted, and the sandbox in turn loses answers after
//! recording the refund (`refund_answer_lost`), answers too late for the client
//! (`refund_reply_delay_ms`), makes refunds abnormal (`refund_change`: the money held by
//! WeChat) and drops refund notifies (`drop_notify`). When everything has settled:
//!
//! - for every order, what WeChat (the sandbox) refunded is wxmp's `refunded_fen`, and what
//!   WeChat holds (abnormal) is what wxmp still reserves (`refunding_fen`); no order is refunded
//!   beyond its amount at WeChat;
//! - every refund WeChat holds is one of wxmp's, with its amount and state (nobody's refund was
//!   made twice, none was made that no row knows of);
//! - every settled or abnormal refund has exactly one event;
//! - no retry of a key was answered REFUND_EXCEEDS_PAID or REFUND_CONFLICT for its own refund.
//!
//! The whole test (cluster start, 100 paid orders, 1,000 refunds, settling) takes about 20 s
//! on a 2-core machine, well inside a 90 s budget: the count is the issue's.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tonic::{Code, Request, transport::Channel};
use wxmp_proto::pay::v1::{self as pb, pay_service_client::PayServiceClient};

use crate::cluster::{Cluster, Kind, Options, PRODUCT, TOKEN};

/// Paid orders refunded (1800 fen each).
const ORDERS: usize = 100;
/// Refunds asked for (retries come on top).
const REFUNDS: usize = 1000;
/// Clients calling at once.
const CLIENTS: usize = 8;
/// The clients' deadline: `refund_reply_delay_ms` faults answer later than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A small deterministic generator (xorshift64*): the run is reproducible per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients were told, for the checks at the end.
#[derive(Default)]
struct Told {
    /// Keys whose call (first or retry) was answered REFUND_EXCEEDS_PAID.
    exceeded: HashSet<String>,
    /// Answers no client may get (REFUND_CONFLICT for its own parameters, INTERNAL...).
    unexpected: Vec<String>,
    /// Keyed refunds answered by two concurrent calls: both must name the same refund.
    concurrent_mismatch: Vec<String>,
    calls: usize,
}

fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(service_kit::reason::METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A failure that leaves the outcome unknown: call again with the same key.
fn unknown(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    ) && reason(status) != "REFUND_EXCEEDS_PAID"
}

async fn call(
    client: &mut PayServiceClient<Channel>,
    order_no: &str,
    fen: i64,
    key: &str,
) -> Result<pb::RefundRecord, tonic::Status> {
    let mut request = Request::new(pb::RefundRequest {
        order_no: order_no.into(),
        refund_fen: fen,
        reason: "chaos".into(),
        out_refund_no: key.into(),
    });
    request.set_timeout(CALL_TIMEOUT);
    request.metadata_mut().insert(
        service_kit::grpc::INTERNAL_TOKEN,
        TOKEN.parse().expect("ASCII"),
    );
    client
        .refund(request)
        .await
        .map(|r| r.into_inner().refund.expect("a refund"))
}

/// One refund as a client makes it: keyed (retried with its key until an answer that is
/// not unknown and not PENDING, sometimes two calls at once) or keyless (then retried with
/// the key the answer carries).
async fn one_refund(
    clients: &mut [PayServiceClient<Channel>],
    rng: &mut Rng,
    orders: &[String],
    j: usize,
    told: &std::sync::Mutex<Told>,
) {
    let order_no = &orders[usize::try_from(rng.below(ORDERS as u64)).unwrap()];
    let fen = 1 + i64::try_from(rng.below(400)).unwrap();
    let keyed = rng.below(10) < 7;
    let mut key = if keyed {
        format!("chaos-{j}")
    } else {
        String::new()
    };
    let mut pick = usize::try_from(rng.below(2)).unwrap();
    let mut calls = 0;
    for attempt in 0..40 {
        calls += 1;
        let answer = if keyed && attempt == 0 && rng.below(10) < 3 {
            // Two calls with the same key at once (a client's retry racing its first call).
            let (a, b) = clients.split_at_mut(1);
            let (x, y) = tokio::join!(
                call(&mut a[0], order_no, fen, &key),
                call(&mut b[0], order_no, fen, &key)
            );
            calls += 1;
            if let (Ok(x), Ok(y)) = (&x, &y)
                && x.out_refund_no != y.out_refund_no
            {
                told.lock().unwrap().concurrent_mismatch.push(key.clone());
            }
            match (x, y) {
                (Ok(r), _) | (_, Ok(r)) => Ok(r),
                (Err(e), _) => Err(e),
            }
        } else {
            call(&mut clients[pick], order_no, fen, &key).await
        };
        match answer {
            Ok(refund) => {
                key.clone_from(&refund.out_refund_no);
                if refund.state != pb::RefundState::RefundPending as i32 {
                    break;
                }
            }
            Err(status) if reason(&status) == "REFUND_EXCEEDS_PAID" => {
                if !key.is_empty() {
                    told.lock().unwrap().exceeded.insert(key.clone());
                }
                break;
            }
            // Unknown outcome (a killed replica, a slow WeChat, WECHAT_UNAVAILABLE): the
            // same request again, on the other replica. A keyless call that got no answer
            // at all has no key to retry with: its refund, if recorded, is the reconciler's.
            Err(status) if unknown(&status) || reason(&status) == "WECHAT_UNAVAILABLE" => {
                if key.is_empty() {
                    break;
                }
                pick = 1 - pick;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                told.lock()
                    .unwrap()
                    .unexpected
                    .push(format!("{key}: {status:?}"));
                break;
            }
        }
    }
    told.lock().unwrap().calls += calls;
}

/// A paid order through the front door, as a phone makes one.
async fn paid_order(cluster: &Cluster) -> String {
    let (code, _) = cluster.login_code(None).await.expect("login code");
    let login: Value = cluster
        .http
        .post(cluster.front("/login/"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("JSON");
    let token = login["data"]["token"].as_str().expect("token").to_owned();
    let paid: Value = cluster
        .http
        .post(cluster.front("/pay/"))
        .json(&json!({ "token": token, "product_id": PRODUCT, "idempotency_key": uuid::Uuid::new_v4().to_string() }))
        .send()
        .await
        .expect("pay")
        .json()
        .await
        .expect("JSON");
    let order_no = paid["data"]["order_no"]
        .as_str()
        .expect("order_no")
        .to_owned();
    let prepay = wxmp_tests::request_payment(&paid).expect("requestPayment");
    let charged = cluster.post_sandbox("/sandbox/pay", prepay).await;
    assert_eq!(charged["trade_state"], "SUCCESS", "{charged}");
    order_no
}

/// The faults the sandbox cycles through while the clients run (refund calls only).
fn fault(n: u64) -> Value {
    match n % 6 {
        0 => json!({ "refund_answer_lost": true, "times": 2, "path_prefix": "/secapi/" }),
        1 => json!({ "refund_change": true, "times": 1, "path_prefix": "/secapi/" }),
        2 => json!({ "drop_notify": true }),
        3 => json!({ "refund_reply_delay_ms": 4000, "times": 1, "path_prefix": "/secapi/" }),
        _ => json!({}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_under_sigkill_lost_answers_and_lost_notifies_never_pay_twice() {
    if !crate::haproxy::installed() {
        return;
    }
    let _turn = crate::TURN.lock().await;
    let started = Instant::now();
    let mut cluster = Cluster::start(Options {
        gateways: 1,
        replicas: 1,
        pay_replicas: 2,
        // A killed replica's claims are taken up soon.
        reconcile_lease_secs: 3,
        refunds: true,
        ..Options::default()
    })
    .await;
    let seeded: Vec<String> = futures::stream::iter(0..ORDERS)
        .map(|_| paid_order(&cluster))
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    let paid = wxmp_tests::eventually(Duration::from_secs(60), || async {
        let orders = wxmp_tests::db_orders_at(&cluster.pay_database_url).await;
        seeded
            .iter()
            .all(|o| orders.get(o).is_some_and(|(state, _)| state == "PAID"))
            .then_some(())
    })
    .await;
    assert!(paid.is_some(), "some seeded order never became PAID");
    let seeded_at = started.elapsed();

    // The clients, the faults and the kills.
    let orders = Arc::new(seeded);
    let told = Arc::new(std::sync::Mutex::new(Told::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let urls = cluster.pay_urls();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let endpoints: Vec<PayServiceClient<Channel>> = urls
            .iter()
            .map(|u| {
                PayServiceClient::new(
                    Channel::from_shared(u.clone())
                        .unwrap()
                        .connect_timeout(Duration::from_millis(500))
                        .connect_lazy(),
                )
            })
            .collect();
        let (orders, told, next) = (orders.clone(), told.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            let mut endpoints = endpoints;
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= REFUNDS {
                    break;
                }
                one_refund(&mut endpoints, &mut rng, &orders, j, &told).await;
            }
        }));
    }
    let faults = {
        let (http, url, done) = (
            cluster.http.clone(),
            cluster.sandbox("/sandbox/faults"),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let _ = http.post(&url).json(&fault(n)).send().await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let _ = http.delete(&url).send().await;
        })
    };
    let mut kills = 0;
    while !clients.iter().all(tokio::task::JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let victim = kills % 2;
        cluster.kill(Kind::Pay, victim);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.respawn(Kind::Pay, victim).await;
        kills += 1;
    }
    for c in clients {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    faults.await.unwrap();
    let refunded_at = started.elapsed();

    // Everything settles: the reconcilers resend PENDING refunds and query PROCESSING ones
    // whose notify was dropped; WeChat finishes what it holds.
    let db = service_kit::db::Database::connect(
        &cluster.pay_database_url,
        service_kit::db::PoolOptions {
            max_size: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let settled = wxmp_tests::eventually(Duration::from_secs(60), || async {
        let at_wechat = sandbox_refunds(&cluster).await;
        if at_wechat
            .values()
            .any(|r| r["refund_status"] == "PROCESSING")
        {
            return None;
        }
        let mut rows = Vec::new();
        for order_no in orders.iter() {
            rows.extend(
                pay_service::refunds::store::list_for_order(&db, order_no)
                    .await
                    .ok()?,
            );
        }
        rows.iter()
            .all(|r| !matches!(r.state.as_str(), "PENDING" | "PROCESSING"))
            .then_some((at_wechat, rows))
    })
    .await;
    let Some((at_wechat, rows)) = settled else {
        panic!("refunds never settled");
    };
    let by_key: HashMap<&str, &pay_service::Refund> =
        rows.iter().map(|r| (r.out_refund_no.as_str(), r)).collect();

    // Every refund WeChat holds is one of ours, with its amount, in the matching state.
    for (key, r) in &at_wechat {
        let ours = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("WeChat holds {key}, which no row knows: {r}"));
        assert_eq!(Some(ours.amount_fen), r["refund_fee"].as_i64(), "{key}");
        let expected = match r["refund_status"].as_str() {
            Some("SUCCESS") => "SUCCESS",
            Some("CHANGE") => "ABNORMAL",
            Some("REFUNDCLOSE") => "CLOSED",
            other => panic!("{key} is {other:?} at WeChat"),
        };
        assert_eq!(ours.state, expected, "{key}");
    }
    // Rows WeChat does not hold were refused before it recorded them.
    for r in &rows {
        if !at_wechat.contains_key(&r.out_refund_no) {
            assert_eq!(r.state, "FAILED", "{r:?}");
        }
    }

    // Per order: WeChat's refunded = refunded_fen, WeChat's held = refunding_fen; never beyond
    // the amount.
    let mut abnormal = 0;
    for order_no in orders.iter() {
        let order = pay_service::orders::store::find_order(&db, order_no)
            .await
            .unwrap()
            .unwrap();
        let sum = |status: &str| -> i64 {
            at_wechat
                .values()
                .filter(|r| r["out_trade_no"] == order_no.as_str() && r["refund_status"] == status)
                .map(|r| r["refund_fee"].as_i64().unwrap())
                .sum()
        };
        let (success, held) = (sum("SUCCESS"), sum("CHANGE"));
        assert!(
            success + held <= order.amount_fen,
            "{order_no} over-refunded at WeChat"
        );
        assert_eq!(
            (order.refunded_fen, order.refunding_fen),
            (success, held),
            "{order_no}: wxmp's (refunded, reserved) against WeChat's (refunded, held)"
        );
        abnormal += usize::from(held > 0);
    }

    // Every settlement (and every ABNORMAL) is one event.
    let kinds = [
        pay_service::events::EventKind::RefundSucceeded,
        pay_service::events::EventKind::RefundFailed,
        pay_service::events::EventKind::RefundAbnormal,
    ];
    let mut events: HashMap<(String, String), usize> = HashMap::new();
    let mut after = 0;
    loop {
        let page = pay_service::events::after(&db, after, &kinds, 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        for e in &page {
            let payload: Value = serde_json::from_str(&e.payload).unwrap();
            let key = payload["refund"]["out_refund_no"]
                .as_str()
                .unwrap()
                .to_owned();
            *events.entry((key, e.kind.clone())).or_default() += 1;
        }
    }
    for r in &rows {
        let kind = match r.state.as_str() {
            "SUCCESS" => "REFUND_SUCCEEDED",
            "FAILED" | "CLOSED" => "REFUND_FAILED",
            "ABNORMAL" => "REFUND_ABNORMAL",
            other => panic!("{} still {other}", r.out_refund_no),
        };
        assert_eq!(
            events.get(&(r.out_refund_no.clone(), kind.to_owned())),
            Some(&1),
            "{r:?}"
        );
    }
    let expected_events = rows.len();
    assert_eq!(
        events.values().sum::<usize>(),
        expected_events,
        "an event twice or for nothing"
    );

    // What the clients were told.
    let told = told.lock().unwrap();
    assert!(told.unexpected.is_empty(), "{:?}", told.unexpected);
    assert!(
        told.concurrent_mismatch.is_empty(),
        "{:?}",
        told.concurrent_mismatch
    );
    for key in &told.exceeded {
        assert!(
            !by_key.contains_key(key.as_str()),
            "{key} exists, yet a call with its key was answered REFUND_EXCEEDS_PAID"
        );
    }
    let succeeded = rows.iter().filter(|r| r.state == "SUCCESS").count();
    eprintln!(
        "refund chaos: {REFUNDS} refunds ({} calls) on {ORDERS} orders, {kills} SIGKILLs; {} rows \
         ({succeeded} SUCCESS, {abnormal} orders with abnormal money held), {} at WeChat; \
         seeded in {seeded_at:?}, refunds done at {refunded_at:?}, settled at {:?}",
        told.calls,
        rows.len(),
        at_wechat.len(),
        started.elapsed()
    );
    assert!(
        succeeded > ORDERS,
        "too few refunds succeeded to prove anything"
    );
    assert!(kills >= 3, "too few SIGKILLs to prove anything");
}

/// The sandbox's v2 refunds by out_refund_no.
async fn sandbox_refunds(cluster: &Cluster) -> HashMap<String, Value> {
    let listed: Vec<Value> = cluster
        .http
        .get(cluster.sandbox("/sandbox/refunds"))
        .send()
        .await
        .expect("sandbox refunds")
        .json()
        .await
        .expect("JSON");
    listed
        .into_iter()
        .map(|r| (r["out_refund_no"].as_str().unwrap().to_owned(), r))
        .collect()
}
