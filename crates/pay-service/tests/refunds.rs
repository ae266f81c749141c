//! Refunds end to end against the sandbox (mutual TLS, encrypted notifies), on PostgreSQL and
//! SQLite: partial and full refunds, over-refunds, races for the last fen, idempotent retries,
//! forged notifies, lost notifies, CHANGE, NOTENOUGH, SYSTEMERROR and a crash between the
//! WeChat call and storing its answer.

mod common;

use common::{Backend, Env, eventually, principal, reason};
use pay_service::{RefundState, store};
use serde_json::{Value, json};
use service_kit::ErrorReason;
use tonic::{Request, Status};
use wechat::pay::{refund::encrypt_req_info, xml};
use wxmp_proto::pay::v1::{
    self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target,
};

/// The vip product of the test catalog.
const PRICE: i64 = 990;

async fn paid_order(env: &Env, user_id: i64) -> pb::Order {
    let prepared = env
        .prepare(&principal(user_id), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let order_no = prepared.order.as_ref().unwrap().order_no.clone();
    env.sandbox_pay(&prepared, None).await;
    eventually(|| async {
        env.get(&order_no, 0).await.unwrap().state == pb::OrderState::Paid as i32
    })
    .await;
    env.get(&order_no, 0).await.unwrap()
}

async fn refund(
    env: &Env,
    order_no: &str,
    refund_fen: i64,
    out_refund_no: &str,
) -> Result<pb::RefundResponse, Status> {
    PayService::refund(
        &env.pay,
        Request::new(pb::RefundRequest {
            order_no: order_no.into(),
            refund_fen,
            reason: "returned item".into(),
            out_refund_no: out_refund_no.into(),
        }),
    )
    .await
    .map(|r| r.into_inner())
}

async fn get_refund(env: &Env, out_refund_no: &str) -> pb::RefundRecord {
    PayService::get_refund(
        &env.pay,
        Request::new(pb::GetRefundRequest {
            out_refund_no: out_refund_no.into(),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .refund
    .unwrap()
}

async fn wait_refund(env: &Env, out_refund_no: &str, state: pb::RefundState) -> pb::RefundRecord {
    eventually(|| async { get_refund(env, out_refund_no).await.state == state as i32 }).await;
    get_refund(env, out_refund_no).await
}

async fn set_faults(env: &Env, faults: Value) {
    let resp = env
        .http
        .post(env.sandbox.url("/sandbox/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// The refunds WeChat (the sandbox) holds for an order.
async fn at_wechat(env: &Env, order_no: &str) -> Vec<Value> {
    env.http
        .get(
            env.sandbox
                .url(&format!("/sandbox/refunds?out_trade_no={order_no}")),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn refunded(order: &pb::Order) -> (i64, i64) {
    (order.refunded_fen, order.refunding_fen)
}

async fn partial_then_full_refund(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 1).await;
    let first = refund(&env, &order.order_no, 300, "shop-r1").await.unwrap();
    let record = first.refund.unwrap();
    assert_eq!(record.amount_fen, 300);
    assert_ne!(record.state, pb::RefundState::RefundPending as i32);
    // While in flight the order shows REFUNDING.
    let during = first.order.unwrap();
    if record.state == pb::RefundState::RefundProcessing as i32 {
        assert_eq!(during.state, pb::OrderState::Refunding as i32);
        assert_eq!(refunded(&during), (0, 300));
    }
    let settled = wait_refund(&env, "shop-r1", pb::RefundState::RefundSuccess).await;
    assert!(!settled.refund_id.is_empty());
    assert!(settled.settled_at > 0);
    // Partly refunded: PAID with refunded_fen > 0.
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.state, pb::OrderState::Paid as i32);
    assert_eq!(refunded(&after), (300, 0));

    refund(&env, &order.order_no, PRICE - 300, "shop-r2")
        .await
        .unwrap();
    wait_refund(&env, "shop-r2", pb::RefundState::RefundSuccess).await;
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.state, pb::OrderState::Refunded as i32);
    assert_eq!(refunded(&after), (PRICE, 0));
    let listed = PayService::list_refunds(
        &env.pay,
        Request::new(pb::ListRefundsRequest {
            order_no: order.order_no.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .refunds;
    let keys: Vec<&str> = listed.iter().map(|r| r.out_refund_no.as_str()).collect();
    assert_eq!(keys, ["shop-r1", "shop-r2"]);
    // WeChat got each refund once, with our amounts, over mutual TLS.
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 2);
    assert!(wechat.iter().all(|r| r["requests"] == 1));
    assert_eq!(wechat[0]["refund_fee"], 300);
    // Each settlement is one REFUND_SUCCEEDED event in the outbox, carrying the refund.
    let settled_events = refund_events(&env).await;
    let seen: Vec<(&str, &str)> = settled_events
        .iter()
        .map(|(kind, payload)| {
            (
                kind.as_str(),
                payload["refund"]["out_refund_no"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("REFUND_SUCCEEDED", "shop-r1"),
            ("REFUND_SUCCEEDED", "shop-r2")
        ]
    );
    assert_eq!(settled_events[1].1["refunded_fen"], PRICE);
    assert_eq!(settled_events[1].1["state"], "REFUNDED");
    // Each settled by its encrypted notify.
    for key in ["shop-r1", "shop-r2"] {
        let verdicts = store::refunds::notification_verdicts(env.pay.database(), key)
            .await
            .unwrap();
        assert_eq!(
            verdicts.first(),
            Some(&("applied".to_owned(), true)),
            "{key}"
        );
    }
}

async fn over_refund_is_refused_and_never_sent(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 2).await;
    let err = refund(&env, &order.order_no, PRICE + 1, "")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundExceedsPaid);
    refund(&env, &order.order_no, 500, "r-500").await.unwrap();
    let err = refund(&env, &order.order_no, PRICE - 499, "r-491")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundExceedsPaid);
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // Nothing of the refused ones reached WeChat or the table.
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    assert_eq!(
        store::refunds::find(env.pay.database(), "r-491")
            .await
            .unwrap(),
        None
    );
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.refunded_fen + after.refunding_fen, 500);
}

async fn concurrent_refunds_race_for_the_last_fen(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 3).await;
    refund(&env, &order.order_no, PRICE - 1, "most")
        .await
        .unwrap();
    // Eight callers want the last fen at once: exactly one gets it.
    let calls = (0..8).map(|i| {
        let env = &env;
        let order_no = order.order_no.clone();
        async move { refund(env, &order_no, 1, &format!("last-{i}")).await }
    });
    let results = futures::future::join_all(calls).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(lost), ErrorReason::RefundExceedsPaid, "{lost:?}");
    }
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 2);
    let listed = store::refunds::list_for_order(env.pay.database(), &order.order_no)
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|r| r.amount_fen).sum::<i64>(), PRICE);
    eventually(|| async {
        env.get(&order.order_no, 0).await.unwrap().state == pb::OrderState::Refunded as i32
    })
    .await;
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (PRICE, 0)
    );
}

async fn retries_with_the_same_key_answer_the_first_refund(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 4).await;
    // Concurrent first calls with one key: one refund.
    let (a, b) = tokio::join!(
        refund(&env, &order.order_no, 200, "idem-1"),
        refund(&env, &order.order_no, 200, "idem-1")
    );
    let (a, b) = (a.unwrap().refund.unwrap(), b.unwrap().refund.unwrap());
    assert_eq!(a.out_refund_no, b.out_refund_no);
    wait_refund(&env, "idem-1", pb::RefundState::RefundSuccess).await;
    // A later retry answers the settled refund and sends nothing.
    let again = refund(&env, &order.order_no, 200, "idem-1").await.unwrap();
    assert_eq!(
        again.refund.unwrap().state,
        pb::RefundState::RefundSuccess as i32
    );
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 1);
    // The same key with another amount or order is a conflict.
    let err = refund(&env, &order.order_no, 201, "idem-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundConflict);
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (200, 0)
    );
}

async fn unpaid_and_unknown_orders_are_refused(backend: Backend) {
    let env = Env::refunding(backend).await;
    let created = env.create(5, 100, "unpaid", "").await.unwrap();
    let err = refund(&env, &created.order_no, 1, "").await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);
    let err = refund(&env, "20261201NoSuchOrder00000", 1, "")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::NotFound);
    for (fen, key, why) in [(0, "", "zero"), (1, "bad key!", "key")] {
        let err = refund(&env, &created.order_no, fen, key).await.unwrap_err();
        assert_eq!(reason(&err), ErrorReason::InvalidArgument, "{why}");
    }
    assert!(at_wechat(&env, &created.order_no).await.is_empty());
    assert_eq!(
        env.get(&created.order_no, 0).await.unwrap().state,
        pb::OrderState::Created as i32
    );
}

async fn refunds_without_a_certificate_are_disabled(backend: Backend) {
    let env = Env::new(backend).await;
    let order = paid_order(&env, 6).await;
    let err = refund(&env, &order.order_no, 1, "").await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundsDisabled);
    assert!(at_wechat(&env, &order.order_no).await.is_empty());
}

/// A refund notify body as WeChat sends it, req_info encrypted with `key`.
fn refund_notify(key: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut plain = String::from("<root>");
    for (k, v) in fields {
        plain.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    plain.push_str("</root>");
    xml::to_xml([
        ("return_code", "SUCCESS"),
        ("appid", sandbox::DEV_APP_ID),
        ("mch_id", sandbox::DEV_MCH_ID),
        ("nonce_str", "n0nce"),
        ("req_info", &encrypt_req_info(key, plain.as_bytes())),
    ])
    .into_bytes()
}

async fn notify(env: &Env, body: Vec<u8>) -> pb::HandleRefundNotifyResponse {
    PayService::handle_refund_notify(
        &env.pay,
        Request::new(pb::HandleRefundNotifyRequest { raw_body: body }),
    )
    .await
    .unwrap()
    .into_inner()
}

async fn forged_and_mismatched_notifies_change_nothing(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 7).await;
    // WeChat's own refund notifies never come: only ours below.
    set_faults(&env, json!({ "drop_notify": true })).await;
    refund(&env, &order.order_no, 100, "forge-me")
        .await
        .unwrap();
    let processing = get_refund(&env, "forge-me").await;
    assert_eq!(processing.state, pb::RefundState::RefundProcessing as i32);
    let total = PRICE.to_string();
    let genuine = |out_refund_no: &'static str, fee: &'static str, trade: &str| {
        vec![
            ("out_refund_no", out_refund_no.to_owned()),
            ("out_trade_no", trade.to_owned()),
            ("refund_fee", fee.to_owned()),
            ("total_fee", total.clone()),
            ("refund_status", "SUCCESS".to_owned()),
            ("refund_id", "50000000000000000000000000001".to_owned()),
        ]
    };
    let body = |key: &str, v: Vec<(&'static str, String)>| {
        let fields: Vec<(&str, &str)> = v.iter().map(|(k, x)| (*k, x.as_str())).collect();
        refund_notify(key, &fields)
    };
    let cases = [
        (
            body(
                "not the merchant key 000000000000",
                genuine("forge-me", "100", &order.order_no),
            ),
            "undecryptable",
        ),
        (
            body(
                sandbox::DEV_PAY_KEY,
                genuine("nobody", "100", &order.order_no),
            ),
            "unknown_refund",
        ),
        (
            body(
                sandbox::DEV_PAY_KEY,
                genuine("forge-me", "990", &order.order_no),
            ),
            "mismatch",
        ),
        (
            body(
                sandbox::DEV_PAY_KEY,
                genuine("forge-me", "100", "20261201OtherOrder000000"),
            ),
            "mismatch",
        ),
        (
            b"<xml><return_code>SUCCESS</return_code>".to_vec(),
            "malformed",
        ),
        (
            xml::to_xml([
                ("return_code", "SUCCESS"),
                ("mch_id", sandbox::DEV_MCH_ID),
                ("req_info", "bm90IGNpcGhlcnRleHQ="),
            ])
            .into_bytes(),
            "undecryptable",
        ),
    ];
    for (raw, verdict) in cases {
        let reply = notify(&env, raw).await;
        assert!(!reply.accepted, "{verdict}");
        assert_eq!(reply.verdict, verdict);
        assert!(reply.reply_xml.contains("FAIL"));
    }
    assert_eq!(get_refund(&env, "forge-me").await, processing);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (0, 100)
    );
    // The genuine one settles it, once; its replay changes nothing.
    let genuine_body = body(
        sandbox::DEV_PAY_KEY,
        genuine("forge-me", "100", &order.order_no),
    );
    assert_eq!(notify(&env, genuine_body.clone()).await.verdict, "applied");
    let replay = notify(&env, genuine_body).await;
    assert!(replay.accepted);
    assert_eq!(replay.verdict, "duplicate");
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (100, 0)
    );
    let verdicts = store::refunds::notification_verdicts(env.pay.database(), "forge-me")
        .await
        .unwrap();
    assert_eq!(verdicts.last(), Some(&("duplicate".to_owned(), true)));
}

async fn duplicate_wechat_notifies_settle_once(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 8).await;
    refund(&env, &order.order_no, 400, "dup-1").await.unwrap();
    wait_refund(&env, "dup-1", pb::RefundState::RefundSuccess).await;
    // WeChat sends the same notify again (a retry after a lost answer). The sandbox records a
    // notify once its answer is back, which may be just after the refund settled here.
    let url = env
        .sandbox
        .url("/sandbox/refund-notifies?out_refund_no=dup-1");
    let sent = std::sync::Mutex::new(Vec::<Value>::new());
    eventually(|| async {
        let listed: Vec<Value> = env
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = !listed.is_empty();
        *sent.lock().unwrap() = listed;
        found
    })
    .await;
    let sent = sent.into_inner().unwrap();
    let body = sent[0]["request"].as_str().unwrap().as_bytes().to_vec();
    let reply = notify(&env, body).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("duplicate", true)
    );
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (400, 0)
    );
}

async fn lost_notify_is_repaired_by_the_reconciler(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 9).await;
    set_faults(&env, json!({ "drop_notify": true })).await;
    refund(&env, &order.order_no, 250, "lost-1").await.unwrap();
    // WeChat settles it, but its notify never comes.
    eventually(|| async {
        let r: Value = env
            .http
            .get(env.sandbox.url("/sandbox/refunds/lost-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["refund_status"] == "SUCCESS"
    })
    .await;
    assert_eq!(
        get_refund(&env, "lost-1").await.state,
        pb::RefundState::RefundProcessing as i32
    );
    let report = env.replica().reconcile_refunds_once().await.unwrap();
    assert_eq!((report.queried, report.settled, report.errors), (1, 1, 0));
    assert_eq!(
        get_refund(&env, "lost-1").await.state,
        pb::RefundState::RefundSuccess as i32
    );
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (250, 0)
    );
    // Nothing left to do.
    assert_eq!(env.pay.reconcile_refunds_once().await.unwrap().settled, 0);
}

/// The refund events of the outbox, oldest first: (kind, payload).
async fn refund_events(env: &Env) -> Vec<(String, Value)> {
    use pay_service::events::{self, EventKind};
    events::after(
        env.pay.database(),
        0,
        &[EventKind::RefundSucceeded, EventKind::RefundFailed],
        100,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|e| (e.kind, serde_json::from_str(&e.payload).unwrap()))
    .collect()
}

async fn change_is_recorded_as_failed(backend: Backend) {
    let env = Env::refunding(backend).await;
    set_faults(
        &env,
        json!({ "refund_change": true, "path_prefix": "/secapi/" }),
    )
    .await;
    let order = paid_order(&env, 10).await;
    refund(&env, &order.order_no, 300, "change-1")
        .await
        .unwrap();
    let failed = wait_refund(&env, "change-1", pb::RefundState::RefundFailed).await;
    assert_eq!(failed.failure, "CHANGE");
    let events = refund_events(&env).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "REFUND_FAILED");
    assert_eq!(events[0].1["refund"]["failure"], "CHANGE");
    // The money stayed with the merchant: the order is PAID with nothing refunded or held.
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.state, pb::OrderState::Paid as i32);
    assert_eq!(refunded(&after), (0, 0));
}

async fn notenough_fails_the_refund_and_releases_the_amount(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 11).await;
    set_faults(
        &env,
        json!({ "refund_not_enough": true, "path_prefix": "/secapi/" }),
    )
    .await;
    let answer = refund(&env, &order.order_no, PRICE, "poor-1")
        .await
        .unwrap();
    let record = answer.refund.unwrap();
    assert_eq!(record.state, pb::RefundState::RefundFailed as i32);
    assert_eq!(record.failure, "NOTENOUGH");
    assert_eq!(refunded(&answer.order.unwrap()), (0, 0));
    // Topped up: a new refund of the whole amount goes through.
    set_faults(&env, json!({})).await;
    refund(&env, &order.order_no, PRICE, "poor-2")
        .await
        .unwrap();
    wait_refund(&env, "poor-2", pb::RefundState::RefundSuccess).await;
}

async fn systemerror_is_retried_with_the_same_key(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 12).await;
    set_faults(
        &env,
        json!({ "pay_system_error": true, "times": 1, "path_prefix": "/secapi/" }),
    )
    .await;
    let err = refund(&env, &order.order_no, 120, "sys-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    // Recorded and held, not sent to WeChat's books.
    assert_eq!(
        get_refund(&env, "sys-1").await.state,
        pb::RefundState::RefundPending as i32
    );
    let held = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(
        (held.state, refunded(&held)),
        (pb::OrderState::Refunding as i32, (0, 120))
    );
    assert!(at_wechat(&env, &order.order_no).await.is_empty());
    // The caller retries with the same key: sent again, settled once.
    refund(&env, &order.order_no, 120, "sys-1").await.unwrap();
    wait_refund(&env, "sys-1", pb::RefundState::RefundSuccess).await;
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (120, 0)
    );
}

/// pay-service dies after WeChat recorded the refund but before the answer is stored: the
/// request's task is dropped mid-call (what SIGKILL does to it). A replica's reconciler sends
/// the PENDING refund again with the same out_refund_no; WeChat answers the same refund and
/// the payer is refunded once.
async fn killed_between_the_call_and_the_answer(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 13).await;
    set_faults(
        &env,
        json!({ "refund_reply_delay_ms": 30000, "drop_notify": true, "times": 1, "path_prefix": "/secapi/" }),
    )
    .await;
    let pay = env.pay.clone();
    let order_no = order.order_no.clone();
    let call = tokio::spawn(async move {
        pay.refund(pay_service::RefundOrder {
            order_no,
            refund_fen: 330,
            reason: "returned item".into(),
            out_refund_no: "crash-1".into(),
        })
        .await
    });
    // WeChat has it...
    eventually(|| async { at_wechat(&env, &order.order_no).await.len() == 1 }).await;
    // ...and the service dies before the answer arrives.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let row = store::refunds::find(env.pay.database(), "crash-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state(), Some(RefundState::Pending));
    // WeChat settles it meanwhile; no notify reaches us (the fault).
    set_faults(&env, json!({ "drop_notify": true })).await;
    let replica = env.replica();
    let first = replica.reconcile_refunds_once().await.unwrap();
    assert_eq!((first.resent, first.errors), (1, 0));
    let record = get_refund(&env, "crash-1").await;
    assert_ne!(record.state, pb::RefundState::RefundPending as i32);
    // Settled by the next pass (query) if the resend found it still processing.
    eventually(|| async {
        let _ = replica.reconcile_refunds_once().await;
        get_refund(&env, "crash-1").await.state == pb::RefundState::RefundSuccess as i32
    })
    .await;
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 1, "one refund at WeChat");
    assert_eq!(wechat[0]["requests"], 2, "the same refund asked for twice");
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (330, 0)
    );
}

/// A payment whose notify was lost, then refunded in the merchant platform: the reconciler's
/// orderquery answers REFUND; the payment is recorded, then the refund WeChat lists.
async fn orderquery_refund_records_payment_and_refund(backend: Backend) {
    let env = Env::refunding(backend).await;
    let prepared = env
        .prepare(&principal(14), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let order_no = prepared.order.as_ref().unwrap().order_no.clone();
    env.sandbox_pay(&prepared, Some(json!({ "drop_notify": true })))
        .await;
    // The merchant refunds 90 fen by other means (their own client with the certificate).
    let client = wechat::WechatClient::new(wechat::WechatConfig {
        pay_base: env.sandbox.base_url.clone(),
        ..wechat::WechatConfig::default()
    })
    .unwrap()
    .with_merchant_cert(&wechat::MerchantCert {
        cert_pem: env.sandbox.pki.client_cert_pem.clone().into_bytes(),
        key_pem: env.sandbox.pki.client_key_pem.clone().into_bytes(),
        secapi_base: Some(env.sandbox.secapi_url.clone()),
        ca_pem: Some(env.sandbox.pki.ca_pem.clone().into_bytes()),
    })
    .unwrap();
    let pay = wechat::PayConfig::new(
        sandbox::DEV_APP_ID,
        sandbox::DEV_MCH_ID,
        sandbox::DEV_PAY_KEY,
    );
    let outside = client
        .refund(
            &pay,
            &wechat::pay::RefundRequest {
                out_trade_no: order_no.clone(),
                out_refund_no: "platform-1".into(),
                total_fee: PRICE,
                refund_fee: 90,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(outside.refund_fee, 90);
    eventually(|| async {
        let r: Value = env
            .http
            .get(env.sandbox.url("/sandbox/refunds/platform-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["refund_status"] == "SUCCESS"
    })
    .await;
    assert_eq!(
        env.get(&order_no, 0).await.unwrap().state,
        pb::OrderState::Paying as i32
    );
    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(report.paid, 1);
    let order = env.get(&order_no, 0).await.unwrap();
    assert!(!order.transaction_id.is_empty());
    assert_eq!(order.state, pb::OrderState::Paid as i32);
    assert_eq!(refunded(&order), (90, 0));
    let recorded = get_refund(&env, "platform-1").await;
    assert_eq!(recorded.state, pb::RefundState::RefundSuccess as i32);
    assert_eq!(recorded.amount_fen, 90);
}

/// The secapi port demands the merchant certificate from the sandbox's CA: a client with a
/// certificate of another CA gets no TLS session and WeChat records nothing.
async fn the_secapi_port_requires_the_merchant_certificate(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 15).await;
    let stranger = sandbox::DevPki::generate(sandbox::DEV_MCH_ID, &[]).unwrap();
    let client = wechat::WechatClient::new(wechat::WechatConfig::default())
        .unwrap()
        .with_merchant_cert(&wechat::MerchantCert {
            cert_pem: stranger.client_cert_pem.into_bytes(),
            key_pem: stranger.client_key_pem.into_bytes(),
            secapi_base: Some(env.sandbox.secapi_url.clone()),
            ca_pem: Some(env.sandbox.pki.ca_pem.clone().into_bytes()),
        })
        .unwrap();
    let pay = wechat::PayConfig::new(
        sandbox::DEV_APP_ID,
        sandbox::DEV_MCH_ID,
        sandbox::DEV_PAY_KEY,
    );
    let err = client
        .refund(
            &pay,
            &wechat::pay::RefundRequest {
                out_trade_no: order.order_no.clone(),
                out_refund_no: "stranger-1".into(),
                total_fee: PRICE,
                refund_fee: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, wechat::PayError::Transport(_)), "{err:?}");
    assert!(at_wechat(&env, &order.order_no).await.is_empty());
    // A client without any certificate cannot even try.
    let bare = wechat::WechatClient::new(wechat::WechatConfig::default()).unwrap();
    assert!(matches!(
        bare.refund(&pay, &wechat::pay::RefundRequest::default())
            .await,
        Err(wechat::PayError::NoCertificate)
    ));
}

on_both_backends!(
    partial_then_full_refund,
    over_refund_is_refused_and_never_sent,
    concurrent_refunds_race_for_the_last_fen,
    retries_with_the_same_key_answer_the_first_refund,
    unpaid_and_unknown_orders_are_refused,
    refunds_without_a_certificate_are_disabled,
    forged_and_mismatched_notifies_change_nothing,
    duplicate_wechat_notifies_settle_once,
    lost_notify_is_repaired_by_the_reconciler,
    change_is_recorded_as_failed,
    notenough_fails_the_refund_and_releases_the_amount,
    systemerror_is_retried_with_the_same_key,
    killed_between_the_call_and_the_answer,
    orderquery_refund_records_payment_and_refund,
);

/// Not storage-specific: once is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secapi_requires_the_merchant_certificate() {
    the_secapi_port_requires_the_merchant_certificate(Backend::Sqlite).await;
}
