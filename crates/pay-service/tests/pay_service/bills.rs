//! Bills end to end: the sandbox makes the day's bill from its own orders and refunds (its
//! code, from WeChat's documents), pay-service downloads and reconciles it. A day of 2,000
//! orders and refunds with five injected differences finds exactly those five; a re-run
//! writes nothing twice; a run that dies mid-way resumes; a bad v3 hash is refused and the
//! day retried later, with nothing of the bill kept; "no bill yet" is retried.

use std::time::Duration;

use chrono::NaiveDate;
use futures::{StreamExt as _, stream};
use pay_service::bills::store;
use serde_json::{Value, json};
use tonic::Request;
use wxmp_proto::pay::v1::{
    self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target,
};

use crate::helpers::{Api, Backend, Env, principal};

/// Today in China time (the sandbox stamps payments with the real clock).
fn china_now() -> chrono::NaiveDateTime {
    (chrono::Utc::now() + chrono::Duration::hours(8)).naive_utc()
}

/// The China day a test's payments all fall on. A test started in the last minutes before
/// China's midnight (16:00 UTC) would spread its payments over two days' bills, so it waits
/// for the date to turn first.
async fn today() -> NaiveDate {
    // Longer than any of these tests takes to place its payments.
    const MARGIN_SECS: i64 = 600;
    let start = china_now();
    let midnight = start
        .date()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a next day");
    if (midnight - start).num_seconds() > MARGIN_SECS {
        return start.date();
    }
    until("China's date to turn", 660, || async {
        china_now().date() > start.date()
    })
    .await;
    china_now().date()
}

fn ymd(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Waits for `check` with a deadline fit for thousands of payments.
async fn until<F, Fut>(what: &str, secs: u64, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Places and pays `n` orders (the vip product, 990 fen) through the sandbox, 16 at a time;
/// answers their numbers once every one is PAID here, on the ledger of `day`.
async fn pay_orders(env: &Env, day: NaiveDate, n: usize) -> Vec<String> {
    let orders: Vec<String> = stream::iter(0..n)
        .map(|i| async move {
            let prepared = env
                .prepare(
                    &principal(i64::try_from(i).unwrap() + 1),
                    Target::ProductId("vip".into()),
                )
                .await
                .unwrap();
            env.sandbox_pay(&prepared, None).await;
            prepared.order.unwrap().order_no
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let pay = env.pay.clone();
    until("every order PAID", 300, || {
        let pay = pay.clone();
        async move { paid_count(&pay, day).await == n }
    })
    .await;
    orders
}

async fn paid_count(pay: &pay_service::Payments, day: NaiveDate) -> usize {
    let bounds = pay_service::bills::rules::day_bounds(day);
    store::ledger(pay.database(), &ymd(day), "v2", bounds, &[])
        .await
        .unwrap()
        .day_orders
        .len()
}

async fn refund(env: &Env, order_no: &str, fen: i64, out_refund_no: &str) {
    PayService::refund(
        &env.pay,
        Request::new(pb::RefundRequest {
            order_no: order_no.into(),
            refund_fen: fen,
            reason: "returned".into(),
            out_refund_no: out_refund_no.into(),
        }),
    )
    .await
    .unwrap();
}

async fn sandbox_post(env: &Env, path: &str, body: Value) -> Value {
    let resp = env
        .http
        .post(env.sandbox.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

fn kinds(report: &pay_service::bills::BillReport) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = report
        .mismatches
        .iter()
        .map(|m| (m.kind.clone(), m.key.clone()))
        .collect();
    k.sort();
    k
}

async fn mismatch_events(env: &Env) -> usize {
    pay_service::events::after(
        env.pay.database(),
        0,
        &[pay_service::events::EventKind::BillMismatch],
        100_000,
    )
    .await
    .unwrap()
    .len()
}

#[tokio::test]
async fn a_day_of_2000_orders_finds_exactly_the_five_differences_and_resumes_after_a_crash() {
    let env = Env::refunding(Backend::Postgres).await;
    let day = today().await;
    let orders = pay_orders(&env, day, 2000).await;
    // 40 refunds through wxmp (PROCESSING or SUCCESS at WeChat: in the bill either way).
    let mut ours = Vec::new();
    for (i, order_no) in orders.iter().take(40).enumerate() {
        let no = format!("RB{i:04}");
        refund(&env, order_no, 100, &no).await;
        ours.push(no);
    }
    // The five differences.
    let missing = orders[100].clone();
    let off_by_one = orders[200].clone();
    let dropped_refund = ours[7].clone();
    sandbox_post(
        &env,
        "/sandbox/bills/faults",
        json!({
            "drop_orders": [missing],
            "amount_plus_one": [off_by_one],
            "drop_refunds": [dropped_refund],
            "extra_payments": [{ "out_trade_no": "ELSEWHERE0001", "total_fee": 500 }],
        }),
    )
    .await;
    let outside = sandbox_post(
        &env,
        "/sandbox/bills/outside-refund",
        json!({ "out_trade_no": orders[300], "refund_fee": 90 }),
    )
    .await;
    let outside_no = outside["out_refund_no"].as_str().unwrap().to_owned();

    // A run that dies after 1,000 lines (the test hook stands in for a crash).
    let crashing = env.pay.with_bill_settings(|b| {
        b.batch = 200;
        b.fail_after_lines = Some(1000);
    });
    assert!(crashing.reconcile_bills(day).await.is_err());
    let row = store::find_day(env.pay.database(), &ymd(day), "v2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, "LOADING");
    assert_eq!(row.lines_done, 1000);
    let total_lines = 2000 + 40 + 1 + 1 - 1 - 1;
    assert_eq!(row.lines_total, total_lines);
    assert_eq!(
        store::lines(env.pay.database(), &ymd(day), "v2")
            .await
            .unwrap()
            .len(),
        1000
    );
    assert_eq!(
        store::count_mismatches(env.pay.database(), &ymd(day))
            .await
            .unwrap(),
        0
    );

    // Another replica, once the dead run's lease has lapsed, resumes from line 1,000.
    let held = env.replica().reconcile_bills(day).await.unwrap();
    assert_eq!(held.days[0].state, "LOADING", "the lease still holds");
    env.clock.advance(601);
    let report = env.replica().reconcile_bills(day).await.unwrap();
    assert_eq!(report.days.len(), 1);
    let d = &report.days[0];
    assert_eq!(d.state, "DONE", "{d:?}");
    assert_eq!(d.lines_done, total_lines);
    let lines = store::lines(env.pay.database(), &ymd(day), "v2")
        .await
        .unwrap();
    assert_eq!(lines.len(), usize::try_from(total_lines).unwrap());

    let expected = {
        let mut e = vec![
            ("PAYMENT_MISSING".to_owned(), missing.clone()),
            ("PAYMENT_AMOUNT".to_owned(), off_by_one.clone()),
            ("PAYMENT_UNKNOWN".to_owned(), "ELSEWHERE0001".to_owned()),
            ("REFUND_MISSING".to_owned(), dropped_refund.clone()),
            ("REFUND_OUTSIDE".to_owned(), outside_no.clone()),
        ];
        e.sort();
        e
    };
    assert_eq!(
        kinds(&report),
        expected,
        "exactly the five, no false positive"
    );
    let amount = report
        .mismatches
        .iter()
        .find(|m| m.kind == "PAYMENT_AMOUNT")
        .unwrap();
    assert_eq!(
        (amount.wechat_fen, amount.ledger_fen),
        (Some(991), Some(990))
    );
    // Totals: 1,999 of our payments + the one made elsewhere, 39 of our refunds + the outside.
    assert_eq!(d.wechat_paid_fen, 1999 * 990 + 1 + 500);
    assert_eq!(d.wechat_refunded_fen, 39 * 100 + 90);
    assert_eq!(d.ledger_paid_fen, 2000 * 990);
    assert_eq!(d.matched, 1998 + 39);
    assert_eq!(
        d.wechat_fee_millifen,
        (1999 * 990 + 1 + 500) * 6 - (39 * 100 + 90) * 6
    );
    assert_eq!(mismatch_events(&env).await, 5);

    // The outside refund is recorded against its order, with its source.
    let recorded = pay_service::refunds::store::find(env.pay.database(), &outside_no)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.order_no, orders[300]);
    assert_eq!(recorded.amount_fen, 90);
    assert_eq!(recorded.state, "SUCCESS");
    assert!(
        recorded.reason.starts_with("outside wxmp: WeChat bill"),
        "{}",
        recorded.reason
    );
    let order = env.get(&orders[300], 0).await.unwrap();
    assert_eq!(order.refunded_fen, 90);

    // A re-run matches the stored lines again: the same five, nothing written twice.
    let again = env.pay.reconcile_bills(day).await.unwrap();
    assert_eq!(kinds(&again), expected);
    assert_eq!(again.days[0].state, "DONE");
    assert_eq!(mismatch_events(&env).await, 5);
    assert_eq!(
        pay_service::refunds::store::list_for_order(env.pay.database(), &orders[300])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(env.get(&orders[300], 0).await.unwrap().refunded_fen, 90);

    // The RPC answers the same report.
    let rpc = PayService::get_bill_report(
        &env.pay,
        Request::new(pb::GetBillReportRequest {
            bill_date: ymd(day),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(rpc.mismatches.len(), 5);
    assert_eq!(rpc.days[0].lines, total_lines);

    // Finance resolves one difference: it stays in the report with its note, resolved once.
    let amount = rpc
        .mismatches
        .iter()
        .find(|m| m.kind == "PAYMENT_AMOUNT")
        .unwrap()
        .clone();
    assert_eq!((amount.resolved_at, amount.resolution.as_str()), (0, ""));
    let resolve = |kind: &str, key: &str, note: &str| {
        PayService::resolve_bill_mismatch(
            &env.pay,
            Request::new(pb::ResolveBillMismatchRequest {
                bill_date: ymd(day),
                kind: kind.into(),
                key: key.into(),
                note: note.into(),
            }),
        )
    };
    let note = "charged 1 fen more: refunded in the merchant platform";
    let resolved = resolve(&amount.kind, &amount.key, note)
        .await
        .unwrap()
        .into_inner();
    assert!(resolved.resolved_at > 0, "{resolved:?}");
    assert_eq!(resolved.resolution, note);
    assert_eq!(
        (resolved.key.as_str(), resolved.wechat_fen),
        (amount.key.as_str(), Some(991))
    );
    let twice = resolve(&amount.kind, &amount.key, "another note")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(twice, resolved, "a second call changes nothing");
    for (kind, key, note, code) in [
        (
            "PAYMENT_AMOUNT",
            amount.key.as_str(),
            " ",
            tonic::Code::InvalidArgument,
        ),
        (
            "PAYMENT_AMOUNT",
            amount.key.as_str(),
            &"x".repeat(501),
            tonic::Code::InvalidArgument,
        ),
        (
            "NOT_A_KIND",
            amount.key.as_str(),
            "x",
            tonic::Code::InvalidArgument,
        ),
        (
            "PAYMENT_MISSING",
            amount.key.as_str(),
            "x",
            tonic::Code::NotFound,
        ),
    ] {
        let refused = resolve(kind, key, note).await.unwrap_err();
        assert_eq!(refused.code(), code, "{kind} {note:?}: {refused:?}");
    }
    // A re-run of the day never reopens it, and resolved nothing else.
    let rerun = env.pay.reconcile_bills(day).await.unwrap();
    assert_eq!(kinds(&rerun), expected);
    let resolved_now: Vec<_> = rerun
        .mismatches
        .iter()
        .filter(|m| m.resolved_at.is_some())
        .map(|m| (m.kind.as_str(), m.resolution.as_str(), m.resolved_at))
        .collect();
    assert_eq!(
        resolved_now,
        [("PAYMENT_AMOUNT", note, Some(resolved.resolved_at))]
    );
}

#[tokio::test]
async fn a_bad_v3_hash_is_refused_and_the_day_retried_later_never_half_applied() {
    let env = Env::with_on(Backend::Sqlite, Api::V3, |c| c.bills.apis = "v3".into()).await;
    let day = today().await;
    let orders = stream::iter(0..5)
        .map(|i| {
            let env = &env;
            async move {
                let prepared = env
                    .prepare(&principal(i + 1), Target::ProductId("vip".into()))
                    .await
                    .unwrap();
                env.sandbox_pay(&prepared, None).await;
                prepared.order.unwrap().order_no
            }
        })
        .buffer_unordered(5)
        .collect::<Vec<_>>()
        .await;
    for o in &orders {
        let env = &env;
        until("PAID", 30, || async move {
            env.get(o, 0).await.unwrap().state == pb::OrderState::Paid as i32
        })
        .await;
    }
    sandbox_post(&env, "/sandbox/bills/faults", json!({ "bad_hash": true })).await;
    let report = env.pay.reconcile_bills(day).await.unwrap();
    let d = &report.days[0];
    assert_eq!((d.api.as_str(), d.state.as_str()), ("v3", "WAITING"));
    assert!(d.last_error.contains("hash"), "{}", d.last_error);
    assert_eq!(d.attempts, 1);
    assert!(d.raw.is_empty() && d.lines_total == 0);
    assert!(
        store::lines(env.pay.database(), &ymd(day), "v3")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(report.mismatches.is_empty());
    assert_eq!(mismatch_events(&env).await, 0);

    // The daily task leaves it until its retry is due.
    sandbox_post(&env, "/sandbox/bills/faults", json!({})).await;
    let owner = "replica-a";
    assert_eq!(
        env.pay.run_day(day, "v3", owner, false).await.unwrap(),
        pay_service::bills::RunOutcome::Skipped
    );
    env.clock.advance(1801);
    assert_eq!(
        env.pay.run_day(day, "v3", owner, false).await.unwrap(),
        pay_service::bills::RunOutcome::Done { new_mismatches: 0 }
    );
    let report = env.pay.bill_report(day).await.unwrap();
    let d = &report.days[0];
    assert_eq!(d.state, "DONE");
    assert_eq!(d.lines_total, 5);
    assert_eq!(d.matched, 5);
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
}

#[tokio::test]
async fn no_bill_yet_is_retried_and_a_quiet_day_is_an_empty_bill() {
    let env = Env::new(Backend::Sqlite).await;
    let day = today().await;
    // A quiet day: WeChat has no bill, wxmp no payment: done, empty.
    let quiet = day.pred_opt().unwrap();
    let report = env.pay.reconcile_bills(quiet).await.unwrap();
    assert_eq!(report.days[0].state, "DONE");
    assert!(report.days[0].no_bill);
    assert!(report.mismatches.is_empty());

    // A day with a payment whose bill WeChat has not made yet: retried, nothing recorded.
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let order_no = prepared.order.clone().unwrap().order_no;
    env.sandbox_pay(&prepared, None).await;
    until("PAID", 30, || async {
        env.get(&order_no, 0).await.unwrap().state == pb::OrderState::Paid as i32
    })
    .await;
    sandbox_post(
        &env,
        "/sandbox/bills/faults",
        json!({ "no_bill": [ymd(day)] }),
    )
    .await;
    let report = env.pay.reconcile_bills(day).await.unwrap();
    let d = &report.days[0];
    assert_eq!(d.state, "WAITING");
    assert!(d.last_error.contains("no bill"), "{}", d.last_error);
    assert!(report.mismatches.is_empty());
    sandbox_post(&env, "/sandbox/bills/faults", json!({})).await;
    let report = env.pay.reconcile_bills(day).await.unwrap();
    assert_eq!(report.days[0].state, "DONE");
    assert_eq!(report.days[0].matched, 1);
    assert!(report.mismatches.is_empty());
}
