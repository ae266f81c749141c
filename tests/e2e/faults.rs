//! Faults: Redis stopped and restarted, PostgreSQL connections killed, pay-service killed and
//! restarted under load, WeChat (the sandbox) slow, failing or dropping notifies. Every request
//! answers the documented envelope in bounded time, the services recover by themselves, and no
//! payment is lost or applied twice.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxmp::stack::StopMode;
use wxmp_tests::{Backend, OwnRedis, TestStack, eventually, on_both_backends, order_and_prepay};

/// The gateway's deadline in these tests; "fails fast" means well within HANG_GUARD.
const RPC_TIMEOUT_MS: &str = "1500";
/// Not a performance assertion: a request that takes this long has hung past its deadline.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn fast_deadline(o: &mut wxmp::stack::StackOptions) {
    o.gateway_args
        .extend(["--rpc-timeout-ms", RPC_TIMEOUT_MS].map(String::from));
}

/// POSTs and answers (status, envelope, how long it took).
async fn timed_post(t: &TestStack, path: &str, body: Value) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let (status, answer) = t.post(&t.gateway(path), body).await;
    (status, answer, started.elapsed())
}

async fn timed_get(t: &TestStack, path: &str, token: &str) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let (status, answer) = t.get(&t.gateway(path), token).await;
    (status, answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_fails_fast_and_recovers_when_it_returns() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let t = TestStack::start_with(Backend::Postgres, |o| {
        o.redis_url = Some(url);
        fast_deadline(o);
    })
    .await;
    let (token, openid) = t.login(None).await;
    assert_eq!(t.me(&token).await.0, StatusCode::OK);

    redis.kill();
    let (code, _) = t.login_code(Some(&openid)).await;
    let (status, answer, took) = timed_post(&t, "/login/", json!({ "code": code })).await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(213)),
        "{answer}"
    );
    assert!(took < HANG_GUARD, "login hung for {took:?}");
    // The gateway's session cache may answer who the token is for up to its TTL
    // (GATEWAY_SESSION_CACHE_TTL_MS, 5 s); then /me needs auth-service and fails fast.
    let (status, answer) = eventually(Duration::from_secs(8), || async {
        let (status, answer, took) = timed_get(&t, "/me", &token).await;
        assert!(took < HANG_GUARD, "/me hung for {took:?}");
        (status != StatusCode::OK).then_some((status, answer))
    })
    .await
    .expect("/me fails once the cached answer expired");
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(213)),
        "{answer}"
    );
    // Readiness says so within a probe interval (auth-service's health follows its store);
    // liveness does not.
    let unready = eventually(Duration::from_secs(10), || async {
        let r = t.http.get(t.gateway("/readyz")).send().await.ok()?;
        let status = r.status();
        let body: Value = r.json().await.ok()?;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await
    .expect("/readyz turns 503 while Redis is down");
    assert_ne!(unready["data"]["auth"], "serving", "{unready}");
    assert_eq!(unready["data"]["user"], "serving", "{unready}");
    let alive = t.http.get(t.gateway("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK);

    redis.restart().await;
    // Recovers by itself: the pool reconnects, nobody restarts auth-service.
    let token = eventually(Duration::from_secs(30), || async {
        let (code, _) = t.login_code(Some(&openid)).await;
        let (status, answer) = t.post(&t.gateway("/login/"), json!({ "code": code })).await;
        (status == StatusCode::OK).then(|| answer["data"]["token"].as_str().map(str::to_owned))?
    })
    .await
    .expect("login works again once Redis is back");
    assert_eq!(t.me(&token).await.0, StatusCode::OK);
    let ready = eventually(Duration::from_secs(30), || async {
        let r = t.http.get(t.gateway("/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "/readyz recovers");
}

/// Terminates every server process serving the stack's databases, from an admin connection.
async fn terminate_backends(t: &TestStack) -> usize {
    use diesel::sql_types::{Integer, Text};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Killed {
        #[diesel(sql_type = Integer)]
        killed: i32,
    }
    let admin = wxmp_testkit::db::admin_url();
    let mut conn = AsyncPgConnection::establish(&admin)
        .await
        .expect("admin connection");
    let mut total = 0;
    for url in [&t.user_database_url, &t.pay_database_url] {
        let name = url
            .rsplit('/')
            .next()
            .and_then(|n| n.split('?').next())
            .unwrap_or_default()
            .to_owned();
        let killed: Vec<Killed> = diesel::sql_query(
            "SELECT count(pg_terminate_backend(pid))::int AS killed FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind::<Text, _>(name)
        .load(&mut conn)
        .await
        .expect("pg_terminate_backend");
        total += killed.iter().map(|k| k.killed as usize).sum::<usize>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_killed_fail_cleanly_and_recover() {
    let t = TestStack::start_with(Backend::Postgres, fast_deadline).await;
    let (token, _) = t.login(None).await;
    let (status, answer) = t.pay_product(&token, "coffee").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (order_no, _) = order_and_prepay(&answer).unwrap();
    let order_path = format!("/orders/{order_no}");

    for round in 0..3 {
        let killed = terminate_backends(&t).await;
        assert!(killed > 0, "round {round}: the services held connections");
        // Right after the kill: an answer, never a 500 and never a hang.
        for path in ["/me", order_path.as_str()] {
            let (status, answer, took) = timed_get(&t, path, &token).await;
            assert!(took < HANG_GUARD, "{path} hung for {took:?}");
            assert!(
                status == StatusCode::OK
                    || (status == StatusCode::SERVICE_UNAVAILABLE && answer["code"] == 213),
                "round {round} {path}: {status} {answer}"
            );
        }
        // And recovered by itself.
        for path in ["/me", order_path.as_str()] {
            let ok = eventually(Duration::from_secs(20), || async {
                (t.get(&t.gateway(path), &token).await.0 == StatusCode::OK).then_some(())
            })
            .await;
            assert!(ok.is_some(), "round {round}: {path} recovers");
        }
    }
    let (status, answer) = t.pay_product(&token, "tea").await;
    assert_eq!(status, StatusCode::OK, "writes work again: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_or_failing_wechat_answers_fast_with_the_documented_codes() {
    let t = TestStack::start_with(Backend::Sqlite, |o| {
        fast_deadline(o);
        o.auth_args
            .extend(["--wechat-timeout-ms", "500"].map(String::from));
        o.pay_args
            .extend(["--wechat-timeout-ms", "500"].map(String::from));
    })
    .await;
    let (token, openid) = t.login(None).await;

    // Slow login: auth gives up on WeChat after its own timeout → 212.
    t.faults(json!({ "latency_ms": 3000, "path_prefix": "/sns/" }))
        .await;
    let (code, _) = t.login_code(Some(&openid)).await;
    let (status, answer, took) = timed_post(&t, "/login/", json!({ "code": code })).await;
    assert_eq!(
        (status.as_u16(), answer["code"].clone()),
        (503, json!(212)),
        "{answer}"
    );
    assert!(took < HANG_GUARD, "{took:?}");

    // WeChat Pay slow, answering 503, or SYSTEMERROR: /pay/ says 212 and no order is lost.
    let mut order_no = None;
    for faults in [
        json!({ "latency_ms": 3000, "path_prefix": "/pay/" }),
        json!({ "http_status": 503, "path_prefix": "/pay/" }),
        json!({ "pay_system_error": true, "path_prefix": "/pay/" }),
    ] {
        t.faults(faults.clone()).await;
        let body = match &order_no {
            None => json!({ "token": token, "product_id": "coffee" }),
            Some(no) => json!({ "token": token, "order_no": no }),
        };
        let (status, answer, took) = timed_post(&t, "/pay/", body).await;
        assert!(took < HANG_GUARD, "{faults}: {took:?}");
        assert!(
            matches!(
                (status.as_u16(), answer["code"].as_u64()),
                (503, Some(212 | 213)) | (502, Some(211))
            ),
            "{faults}: {status} {answer}"
        );
        if order_no.is_none() {
            // The order exists even though WeChat failed: the client retries with its number.
            let orders = t.db_orders().await;
            assert_eq!(orders.len(), 1, "{orders:?}");
            order_no = orders.keys().next().cloned();
        }
    }
    t.faults(json!({})).await;
    let order_no = order_no.unwrap();
    let (status, answer) = t
        .post(
            &t.gateway("/pay/"),
            json!({ "token": token, "order_no": order_no }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the same order pays once WeChat is back: {answer}"
    );
    let (_, prepay) = order_and_prepay(&answer).unwrap();
    t.sandbox_pay(&prepay, "success", None).await;
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(20))
        .await;
    assert_eq!(order["state"], "PAID");

    // Quota exhausted at WeChat: a clear 208, not a 500.
    t.faults(json!({ "quota_exceeded": true })).await;
    let (code, _) = t.login_code(Some(&openid)).await;
    let (status, answer) = t.post(&t.gateway("/login/"), json!({ "code": code })).await;
    assert_eq!(
        (status.as_u16(), answer["code"].clone()),
        (429, json!(208)),
        "{answer}"
    );
}

/// One payment attempt of the load run: which user, and how the phone and WeChat behave.
struct Plan {
    outcome: &'static str,
    faults: Option<Value>,
}

fn plans(n: usize) -> Vec<Plan> {
    (0..n)
        .map(|i| match i % 6 {
            0 => Plan {
                outcome: "success",
                faults: None,
            },
            1 => Plan {
                outcome: "success",
                faults: Some(json!({ "duplicate_notify": 4 })),
            },
            2 => Plan {
                outcome: "success",
                faults: Some(json!({ "drop_notify": true })),
            },
            3 => Plan {
                outcome: "success",
                faults: Some(json!({ "notify_wrong_total_fee": true })),
            },
            4 => Plan {
                outcome: "fail",
                faults: None,
            },
            _ => Plan {
                outcome: "cancel",
                faults: None,
            },
        })
        .collect()
}

/// POST /pay/ until it succeeds (pay-service may be down): 213 is the only failure allowed,
/// and it comes fast.
async fn pay_with_retries(t: &TestStack, token: &str) -> (String, Value, usize) {
    let started = Instant::now();
    let mut refused = 0;
    loop {
        // An order created before a failure is left unpaid (and expires): harmless.
        let body = json!({ "token": token, "product_id": "coffee" });
        let (status, answer, took) = timed_post(t, "/pay/", body).await;
        assert!(took < HANG_GUARD, "/pay/ hung for {took:?}");
        if status == StatusCode::OK {
            let (order_no, prepay) = order_and_prepay(&answer).expect("pay params");
            return (order_no, prepay, refused);
        }
        refused += 1;
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE && answer["code"] == 213,
            "{status} {answer}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "never paid");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kill_pay_service_under_load(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        fast_deadline(o);
        // The reconciler repairs dropped and refused notifies within the test.
        o.pay_args.extend(
            [
                "--reconcile-interval-secs",
                "1",
                "--reconcile-after-secs",
                "1",
            ]
            .map(String::from),
        );
        // Deliberately wrong notifies from 127.0.0.1 must not lock the genuine ones out here.
        o.gateway_args
            .extend(["--notify-fail-limit", "0"].map(String::from));
    })
    .await;
    const N: usize = 18;
    let mut tokens = Vec::new();
    for _ in 0..N {
        tokens.push(t.login(None).await.0);
    }
    let plans = plans(N);

    let t = &t;
    let load = async {
        // Spread over the chaos window, so payments land before, during and after kills.
        let payments = tokens
            .iter()
            .zip(&plans)
            .enumerate()
            .map(|(i, (token, plan))| async move {
                tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
                let (order_no, prepay, refused) = pay_with_retries(t, token).await;
                t.sandbox_pay(&prepay, plan.outcome, plan.faults.clone())
                    .await;
                (order_no, refused)
            });
        futures::future::join_all(payments).await
    };
    let chaos = async {
        for mode in [StopMode::Kill, StopMode::Graceful, StopMode::Kill] {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.stack
                .stop_service("pay-service", mode)
                .await
                .expect("pay-service stops");
            tokio::time::sleep(Duration::from_millis(700)).await;
            t.stack
                .start_service("pay-service")
                .await
                .expect("pay-service starts again");
        }
    };
    let (paid, ()) = tokio::join!(load, chaos);
    let refused: usize = paid.iter().map(|(_, r)| r).sum();
    assert!(
        refused > 0,
        "some payments met pay-service down (213) and retried"
    );
    let order_nos: Vec<String> = paid.into_iter().map(|(no, _)| no).collect();
    assert_eq!(order_nos.len(), N);
    // One more kill after every payment, while notifies and retries are in flight.
    t.stack
        .stop_service("pay-service", StopMode::Kill)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.stack.start_service("pay-service").await.unwrap();

    check_money(t, &order_nos).await;
}
on_both_backends!(workers = 4; kill_pay_service_under_load as pay_service_killed_under_load_loses_and_doubles_nothing);

/// Every order the sandbox considers paid is PAID exactly once in the database (with the
/// sandbox's transaction id, at most one `applied` notify), and no other order is PAID.
async fn check_money(t: &TestStack, order_nos: &[String]) {
    let paid_at_wechat: HashMap<String, String> = t
        .sandbox_orders("SUCCESS")
        .await
        .into_iter()
        .filter_map(|o| {
            Some((
                o["out_trade_no"].as_str()?.to_owned(),
                o["transaction_id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(!paid_at_wechat.is_empty());
    let settled = eventually(Duration::from_secs(60), || async {
        let orders = t.db_orders().await;
        paid_at_wechat
            .keys()
            .all(|no| orders.get(no).is_some_and(|(state, _)| state == "PAID"))
            .then_some(orders)
    })
    .await;
    let Some(orders) = settled else {
        panic!(
            "some paid orders never became PAID: wechat {paid_at_wechat:?} db {:?}",
            t.db_orders().await
        )
    };
    let verdicts = t.db_verdicts().await;
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for (no, verdict) in &verdicts {
        if verdict == "applied" {
            *applied.entry(no.as_str()).or_default() += 1;
        }
    }
    for no in order_nos {
        let (state, transaction_id) = orders.get(no).expect("the order exists");
        let applied = applied.get(no.as_str()).copied().unwrap_or(0);
        match paid_at_wechat.get(no) {
            Some(paid_by) => {
                assert_eq!(state, "PAID", "{no}");
                assert_eq!(transaction_id, paid_by, "{no}");
                assert!(applied <= 1, "{no} applied {applied} times");
            }
            None => {
                assert_ne!(state, "PAID", "{no} is PAID but WeChat took no money");
                assert_eq!(applied, 0, "{no}");
            }
        }
    }
    // No PAID order anywhere the sandbox did not take money for.
    for (no, (state, _)) in &orders {
        if state == "PAID" {
            assert!(
                paid_at_wechat.contains_key(no),
                "{no} PAID without a payment"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_faults_never_pay_wrongly_and_the_reconciler_repairs() {
    let t = TestStack::start_with(Backend::Sqlite, |o| {
        o.pay_args.extend(
            [
                "--reconcile-interval-secs",
                "1",
                "--reconcile-after-secs",
                "1",
            ]
            .map(String::from),
        );
        o.gateway_args
            .extend(["--notify-fail-limit", "0"].map(String::from));
    })
    .await;
    let mut order_nos = Vec::new();
    let cases = [
        json!({ "notify_bad_signature": true }),
        json!({ "notify_wrong_total_fee": true }),
        json!({ "drop_notify": true }),
        json!({ "duplicate_notify": 8 }),
    ];
    for faults in &cases {
        let (token, _) = t.login(None).await;
        let (_, answer) = t.pay_product(&token, "tea").await;
        let (order_no, prepay) = order_and_prepay(&answer).unwrap();
        t.sandbox_pay(&prepay, "success", Some(faults.clone()))
            .await;
        order_nos.push(order_no);
    }
    check_money(&t, &order_nos).await;
    let verdicts = t.db_verdicts().await;
    let of = |no: &str| -> Vec<&str> {
        verdicts
            .iter()
            .filter(|(n, _)| n == no)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert!(
        of(&order_nos[0])
            .iter()
            .all(|v| *v == "bad_signature" || *v == "duplicate"),
        "{:?}",
        of(&order_nos[0])
    );
    assert!(
        of(&order_nos[1])
            .iter()
            .all(|v| *v == "amount_mismatch" || *v == "duplicate"),
        "{:?}",
        of(&order_nos[1])
    );
    assert!(of(&order_nos[2]).is_empty());
}

/// A service that cannot start (pay-service, its database directory impossible to create)
/// fails `Stack::start` with its own error: a stack whose routes would answer 213 never
/// looks started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_that_cannot_start_fails_the_stack_with_its_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = wxmp::stack::StackOptions::ephemeral(
        wxmp_testkit::db::fresh_sqlite_url(dir.path(), "users"),
        "sqlite:///proc/wxmp-no-such-dir/pay.db".to_owned(),
    );
    let Err(error) = wxmp::stack::Stack::start(options).await else {
        panic!("a stack without its pay-service started");
    };
    let error = error.to_string();
    assert!(
        error.contains("pay-service") && error.contains("/proc/wxmp-no-such-dir"),
        "{error}"
    );
}

/// Stacks side by side in one process keep their own key and certificate files: one stopping
/// (and removing its files) leaves the other's pay-service able to start again and be paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn side_by_side_stacks_keep_their_own_key_files() {
    let (gone, kept) = tokio::join!(
        TestStack::start(Backend::Sqlite),
        TestStack::start(Backend::Sqlite)
    );
    drop(gone);
    kept.stack
        .stop_service("pay-service", StopMode::Graceful)
        .await
        .expect("pay-service stops");
    kept.stack
        .start_service("pay-service")
        .await
        .expect("pay-service starts again");
    let (token, _) = kept.login(None).await;
    let last = std::sync::Mutex::new(Value::Null);
    let paid = eventually(Duration::from_secs(15), || async {
        let (_, answer) = kept.pay_product(&token, "coffee").await;
        let order = order_and_prepay(&answer).map(|_| ());
        *last.lock().unwrap() = answer;
        order
    })
    .await;
    assert!(
        paid.is_some(),
        "last /pay/ answer: {}",
        last.lock().unwrap()
    );
}
