//! Pay v3 while WeChat moves the merchant from platform certificates to the public key (issue
//! 24), against the sandbox's migration mode: callbacks signed with either key at a share,
//! answers with the key the request's `Wechatpay-Serial` names. Payments and refunds at 0 %,
//! 50 % and 100 % with both keys configured, every callback accepted once; an unknown serial
//! refused; one key missing refused and logged as such; a hanging `/v3/certificates` that
//! holds no notify past its bound, downloads one at a time and backs off.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::join_all, stream};
use serde_json::{Value, json};
use tonic::Request;
use wxmp_proto::pay::v1::{
    self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target,
};

use crate::helpers::{
    Api, Backend, Env, Forgery, Notice, deliver_to, eventually, get_refund, on_both_backends,
    paid_notice, principal, sandbox_get,
};

/// Which of WeChat Pay's keys pay-service is configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// The public key and downloaded certificates (`WXMP_PAY_PLATFORM_CERTIFICATES=true`).
    Both,
    PublicKeyOnly,
    CertificatesOnly,
}

/// The sandbox in migration mode, `share` % of callbacks signed with the public key; refunds
/// settling in milliseconds and notify retries on a 1/1000 clock.
fn migrating_sandbox(share: u8) -> sandbox::Config {
    let mut config = sandbox::Config::dev();
    config.refund_delay_ms = 50;
    config.notify_time_scale = 0.001;
    config.pay_v3.refund_after_ms = 50_000;
    config.pay_v3.mode = sandbox::v3::Mode::Migration;
    config.pay_v3.public_key_share = share;
    config
}

async fn migrating_env(
    backend: Backend,
    share: u8,
    held: Held,
    tweak: impl FnOnce(&mut pay_service::Config),
) -> Env {
    Env::with_sandbox_on(backend, migrating_sandbox(share), true, Api::V3, |c| {
        match held {
            Held::Both => c.v3.platform_certificates = Some(true),
            Held::PublicKeyOnly => {}
            Held::CertificatesOnly => {
                c.v3.public_key_path = None;
                c.v3.public_key_id = None;
            }
        }
        tweak(c);
    })
    .await
}

/// The sandbox's count of which key signed what (`GET /sandbox/v3/keys`).
async fn key_use(env: &Env) -> Value {
    sandbox_get(env, "/sandbox/v3/keys").await["key_use"].clone()
}

fn count(key_use: &Value, name: &str) -> u64 {
    key_use[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}: {key_use}"))
}

/// Every v3 notify the sandbox has sent (each attempt), with its answer.
async fn sent_notifies(env: &Env) -> Vec<Value> {
    serde_json::from_value(sandbox_get(env, "/sandbox/v3/notifies").await).unwrap()
}

async fn set_v3_faults(env: &Env, faults: Value) {
    let resp = env
        .http
        .post(env.sandbox.url("/sandbox/v3/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

async fn state(env: &Env, order_no: &str) -> i32 {
    env.get(order_no, 0).await.unwrap().state
}

/// Prepares an order of the vip product for `user_id` and pays it at the sandbox, its notify
/// dropped when `lost`.
async fn prepare_and_pay(env: &Env, user_id: i64, lost: bool) -> String {
    let prepared = env
        .prepare(&principal(user_id), Target::ProductId("vip".into()))
        .await
        .unwrap();
    env.sandbox_pay(&prepared, lost.then(|| json!({ "drop_notify": true })))
        .await;
    prepared.order.unwrap().order_no
}

/// `count` payments paid through the sandbox at `share` %, every tenth notify lost (its order
/// paid by the reconciler's query, a verified answer), then a refund of each: every callback
/// accepted at its first attempt and applied once, and the sandbox's key counts as the share
/// says, every answer signed with the public key the requests named.
async fn pays_and_refunds_at(backend: Backend, share: u8, count_: usize) {
    let env = migrating_env(backend, share, Held::Both, |_| {}).await;
    let lost = |i: usize| i % 10 == 9;
    let orders: Vec<(String, bool)> = stream::iter(0..count_)
        .map(|i| {
            let env = &env;
            async move {
                let no = prepare_and_pay(env, i as i64 + 1, lost(i)).await;
                (no, lost(i))
            }
        })
        .buffered(8)
        .collect()
        .await;
    let lost_count = orders.iter().filter(|(_, lost)| *lost).count();
    let notified = count_ - lost_count;

    // Every payment notify answered; none refused (a refusal would show as a second attempt).
    let accepted_of = |sent: &[Value], event: &str| {
        sent.iter()
            .filter(|n| n["event_type"] == event && n["accepted"] == true)
            .count()
    };
    eventually(|| async {
        accepted_of(&sent_notifies(&env).await, "TRANSACTION.SUCCESS") == notified
    })
    .await;
    for (order_no, lost) in &orders {
        let expected = if *lost {
            pb::OrderState::Paying
        } else {
            pb::OrderState::Paid
        };
        assert_eq!(state(&env, order_no).await, expected as i32, "{order_no}");
        let verdicts = env.verdicts(order_no).await;
        if *lost {
            assert!(verdicts.is_empty(), "{order_no}: {verdicts:?}");
        } else {
            assert_eq!(verdicts, [("applied".to_owned(), true)], "{order_no}");
        }
    }

    // The lost ones: the reconciler asks WeChat (the answer verified with the public key).
    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(
        (report.queried, report.paid, report.errors),
        (lost_count, lost_count, 0)
    );
    for (order_no, _) in &orders {
        assert_eq!(state(&env, order_no).await, pb::OrderState::Paid as i32);
    }

    // A refund of each (answers verified), settled by its REFUND.SUCCESS notify.
    let refunds: Vec<String> = stream::iter(orders.iter().enumerate())
        .map(|(i, (order_no, _))| {
            let env = &env;
            async move {
                let out_refund_no = format!("mig-{share}-{i}");
                PayService::refund(
                    &env.pay,
                    Request::new(pb::RefundRequest {
                        order_no: order_no.clone(),
                        refund_fen: 100,
                        reason: "migration".into(),
                        out_refund_no: out_refund_no.clone(),
                    }),
                )
                .await
                .unwrap();
                out_refund_no
            }
        })
        .buffered(8)
        .collect()
        .await;
    eventually(|| async { accepted_of(&sent_notifies(&env).await, "REFUND.SUCCESS") == count_ })
        .await;
    for (out_refund_no, (order_no, _)) in refunds.iter().zip(&orders) {
        let refund = get_refund(&env, out_refund_no).await;
        assert_eq!(
            refund.state,
            pb::RefundState::RefundSuccess as i32,
            "{out_refund_no}"
        );
        let verdicts =
            pay_service::refunds::store::notification_verdicts(env.pay.database(), out_refund_no)
                .await
                .unwrap();
        assert_eq!(verdicts, [("applied".to_owned(), true)], "{out_refund_no}");
        let order = env.get(order_no, 0).await.unwrap();
        assert_eq!((order.refunded_fen, order.refunding_fen), (100, 0));
    }

    // Each callback sent once and accepted at once: none refused, none retried.
    let sent = sent_notifies(&env).await;
    assert_eq!(sent.len(), notified + count_, "one attempt per callback");
    let refused: Vec<&Value> = sent
        .iter()
        .filter(|n| n["accepted"] != true || n["attempt"] != 1)
        .collect();
    assert!(refused.is_empty(), "refused callbacks: {refused:?}");
    let by_public_key = sent
        .iter()
        .filter(|n| n["serial"] == sandbox::v3::dev::PUBLIC_KEY_ID)
        .count() as u64;

    // Both keys signed callbacks as the share says; every answer with the public key.
    let used = key_use(&env).await;
    let (notifies, public) = (
        count(&used, "notifies"),
        count(&used, "notifies_public_key"),
    );
    assert_eq!(notifies, sent.len() as u64, "{used}");
    assert_eq!(public, by_public_key, "{used}");
    match share {
        0 => assert_eq!(public, 0, "{used}"),
        100 => assert_eq!(public, notifies, "{used}"),
        _ => assert!(0 < public && public < notifies, "both keys sign: {used}"),
    }
    let answers = count(&used, "answers");
    assert!(answers >= 2 * count_ as u64, "{used}");
    assert_eq!(
        count(&used, "answers_public_key"),
        answers,
        "requests name the public key: {used}"
    );
    // Certificates were downloaded too (each core, the receiver's and the caller's, has its own).
    assert!(count(&used, "certificate_requests") >= 1, "{used}");
}

async fn two_hundred_at_half_share(backend: Backend) {
    pays_and_refunds_at(backend, 50, 200).await;
}

async fn twenty_before_the_switch(backend: Backend) {
    pays_and_refunds_at(backend, 0, 20).await;
}

async fn twenty_after_the_switch(backend: Backend) {
    pays_and_refunds_at(backend, 100, 20).await;
}

/// An unknown `Wechatpay-Serial` (v3 fault `unknown_serial`) on callbacks and answers: each
/// refused, nothing changed; once WeChat signs with a known key again, the order is paid.
async fn unknown_serial_is_refused_and_changes_nothing(backend: Backend) {
    let env = migrating_env(backend, 50, Held::Both, |_| {}).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let order_no = prepared.order.as_ref().unwrap().order_no.clone();
    set_v3_faults(&env, json!({ "unknown_serial": true })).await;
    env.sandbox_pay(&prepared, None).await;
    // WeChat retries: three attempts seen, all refused.
    eventually(|| async {
        sent_notifies(&env)
            .await
            .iter()
            .filter(|n| n["out_trade_no"] == order_no.as_str())
            .count()
            >= 3
    })
    .await;
    let sent = sent_notifies(&env).await;
    assert!(sent.iter().all(|n| n["accepted"] == false), "{sent:?}");
    assert_eq!(state(&env, &order_no).await, pb::OrderState::Paying as i32);
    // Never authenticated, so never filed under the order (its number is inside the sealed
    // resource).
    assert_eq!(env.verdicts(&order_no).await, []);
    // The query's answer carries the unknown serial too: refused, the order left as it was.
    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!((report.queried, report.paid, report.errors), (1, 0, 1));
    assert_eq!(state(&env, &order_no).await, pb::OrderState::Paying as i32);
    // WeChat's keys again: the next retry (or the reconciler) pays it, once.
    env.http
        .delete(env.sandbox.url("/sandbox/v3/faults"))
        .send()
        .await
        .unwrap();
    eventually(|| async { state(&env, &order_no).await == pb::OrderState::Paid as i32 }).await;
}

/// The warnings (and errors) logged on this thread while installed, one line of fields each.
/// pay-service verifies a notify on the caller's task, so a notify handed over inline has its
/// log lines here; the global subscriber of the other tests is left alone.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = String::new();
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                line.push_str(&format!("{}={value:?} ", field.name()));
            },
        );
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Hands `notice` to the env's core with the warnings it logs captured.
async fn deliver_logged(env: &Env, notice: &Notice) -> (crate::helpers::Reply, Vec<String>) {
    let warnings = Warnings::default();
    let reply = {
        let _installed = tracing::subscriber::set_default(warnings.clone());
        deliver_to(&env.pay, notice).await
    };
    (reply, warnings.lines())
}

/// The first pay notify the sandbox sent (the receiver keeps it, headers and all).
async fn first_notice(env: &Env) -> Notice {
    eventually(|| async { !env.receiver.notices.lock().unwrap().is_empty() }).await;
    env.receiver.notices.lock().unwrap()[0].clone()
}

/// One key configured, callbacks signed by the other: refused at every attempt, the order
/// unpaid, and the log says which key was missing.
async fn refused_without(backend: Backend, held: Held, share: u8, serial: &str, hint: &str) {
    let env = migrating_env(backend, share, held, |_| {}).await;
    let order_no = prepare_and_pay(&env, 1, false).await;
    let notice = first_notice(&env).await;
    assert_eq!(notice.headers.as_ref().unwrap()[3], serial);
    let (reply, logged) = deliver_logged(&env, &notice).await;
    assert!(!reply.accepted && !reply.wechat_stops(), "{reply:?}");
    assert_eq!(reply.verdict, "bad_signature");
    assert!(
        logged.iter().any(
            |l| l.contains("no WeChat Pay key for this Wechatpay-Serial")
                && l.contains(serial)
                && l.contains(hint)
        ),
        "{logged:#?}"
    );
    // WeChat's own attempt (answered by the receiver's core) was refused too.
    eventually(|| async { !sent_notifies(&env).await.is_empty() }).await;
    let sent = sent_notifies(&env).await;
    assert!(sent.iter().all(|n| n["accepted"] == false), "{sent:#?}");
    assert_eq!(state(&env, &order_no).await, pb::OrderState::Paying as i32);
}

async fn public_key_only_refuses_certificate_callbacks(backend: Backend) {
    refused_without(
        backend,
        Held::PublicKeyOnly,
        0,
        sandbox::v3::dev::PLATFORM_A_SERIAL,
        "certificates are not downloaded",
    )
    .await;
}

async fn certificates_only_refuse_public_key_callbacks(backend: Backend) {
    refused_without(
        backend,
        Held::CertificatesOnly,
        100,
        sandbox::v3::dev::PUBLIC_KEY_ID,
        "none is configured",
    )
    .await;
}

/// `/v3/certificates` hangs (answers after the WeChat timeout) and a fresh certificate-only
/// core holds no key: each notify is answered FAIL within the certificate wait (plus margin),
/// concurrent notifies share one download, and failed downloads back off (1 s, 2 s, …) instead
/// of following the notifies.
async fn hanging_certificate_endpoint(backend: Backend) {
    const WAIT_MS: u64 = 1000;
    const TIMEOUT_MS: u64 = 2000;
    let env = migrating_env(backend, 0, Held::CertificatesOnly, |c| {
        c.wechat.timeout_ms = TIMEOUT_MS;
        c.v3.certificate_wait_ms = WAIT_MS;
    })
    .await;
    // Past our timeout, but over before a retry 1 s after it: the sandbox's in-flight count
    // then only sees downloads that overlap on our side.
    set_v3_faults(&env, json!({ "certificates_delay_ms": TIMEOUT_MS + 500 })).await;
    let pay = env.replica();
    let notice = paid_notice(
        Api::V3,
        "20261206MIGRATION0000001",
        "990",
        &[],
        Forgery::None,
    );
    let bound = Duration::from_millis(WAIT_MS) + Duration::from_secs(2);
    let timed = |pay: pay_service::Payments, notice: Notice| async move {
        let started = Instant::now();
        let reply = deliver_to(&pay, &notice).await;
        (reply, started.elapsed())
    };

    let replies = join_all((0..5).map(|_| timed(pay.clone(), notice.clone()))).await;
    for (reply, elapsed) in &replies {
        assert!(!reply.accepted && !reply.wechat_stops(), "{reply:?}");
        assert!(reply.answer.contains("FAIL"), "{reply:?}");
        assert!(
            *elapsed < bound,
            "answered after {elapsed:?}, bound {bound:?}"
        );
    }
    let used = key_use(&env).await;
    assert_eq!(
        count(&used, "certificate_requests"),
        1,
        "one download: {used}"
    );

    // Notifies keep coming for ~6 s; downloads follow the backoff, not them.
    let span = Instant::now();
    let mut notifies = replies.len();
    while span.elapsed() < Duration::from_secs(6) {
        let (reply, elapsed) = timed(pay.clone(), notice.clone()).await;
        assert!(!reply.accepted, "{reply:?}");
        assert!(
            elapsed < bound,
            "answered after {elapsed:?}, bound {bound:?}"
        );
        notifies += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let used = key_use(&env).await;
    let requests = count(&used, "certificate_requests");
    assert!(
        requests <= 4 && (requests as usize) < notifies,
        "{requests} downloads for {notifies} notifies: {used}"
    );
    assert_eq!(
        count(&used, "certificate_requests_max_in_flight"),
        1,
        "{used}"
    );
}

on_both_backends!(
    two_hundred_at_half_share,
    twenty_before_the_switch,
    twenty_after_the_switch,
    unknown_serial_is_refused_and_changes_nothing,
    public_key_only_refuses_certificate_callbacks,
    certificates_only_refuse_public_key_callbacks,
    hanging_certificate_endpoint,
);
