//! PayService against the real sandbox, every case on PostgreSQL and SQLite, and every case
//! whose behaviour exists on both WeChat Pay APIs on v2 and v3 with the same assertions (v2:
//! XML notifies signed with the merchant key; v3: JSON notifies signed by WeChat Pay's key,
//! their resource sealed with the APIv3 key).

mod hardening;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::helpers::*;
use pay_service::OrderState;
use sandbox::{DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY};
use service_kit::ErrorReason;
use tonic::{Code, Request};
use wxmp_proto::pay::v1::{
    self as pb, OrderState as PbState, pay_service_server::PayService,
    prepare_jsapi_payment_request::Target,
};

on_both_backends_and_apis!(
    api = crate::helpers::Api;
    product_payment_is_applied_by_the_notify,
    the_same_notify_applies_once,
    forged_and_mismatched_notifies_change_nothing,
    dropped_notify_is_repaired_by_the_reconciler,
    expired_orders_are_closed_by_the_reconciler,
    second_prepare_reuses_the_prepay_id,
    another_user_cannot_pay_or_read_the_order,
    create_order_is_idempotent_and_validated,
    close_order_rules,
    payment_of_a_closed_order_is_kept_for_refund,
    concurrent_reconcilers_apply_a_payment_once,
    wechat_failures_are_mapped,
    another_transaction_for_a_paid_order_changes_nothing,
    expired_order_paid_at_wechat_is_applied_by_the_closing_reconciler,
    a_late_notify_after_the_reconciler_repaired_the_order_is_a_duplicate,
    a_closed_order_paid_by_a_second_transaction_keeps_the_first,
    concurrent_prepares_count_unifiedorder_calls_at_wechat,
);

/// Item 0 of issue 19: WeChat signs an HMAC-SHA256 merchant's notify with HMAC-SHA256 and
/// sends no `sign_type` (the sandbox does as WeChat); the library must verify with the
/// merchant's sign type. v2 only: v3 has one signature scheme (SHA256withRSA) and no sign type
/// to choose.
mod hmac_notify {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_hmac_sha256_merchant_pays_end_to_end() {
        hmac_sha256_merchant_pays_end_to_end(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_hmac_sha256_merchant_pays_end_to_end() {
        hmac_sha256_merchant_pays_end_to_end(Backend::Sqlite).await;
    }
}

fn state(o: &pb::Order) -> PbState {
    PbState::try_from(o.state).unwrap()
}

/// The second signature (`wx.requestPayment`'s paySign) verifies with the merchant's key: v2
/// MD5 with the pay key; v3 SHA256withRSA over `appId\ntimeStamp\nnonceStr\npackage\n` (小程序
/// 调起支付), checked with the merchant's public key by the sandbox's own code.
fn pay_sign_verifies(api: Api, params: &pb::JsapiParams) -> bool {
    match api {
        Api::V2 => wechat::pay::verify(
            [
                ("appId", params.app_id.as_str()),
                ("timeStamp", params.time_stamp.as_str()),
                ("nonceStr", params.nonce_str.as_str()),
                ("package", params.package.as_str()),
                ("signType", params.sign_type.as_str()),
            ],
            DEV_PAY_KEY,
            wechat::SignType::Md5,
            &params.pay_sign,
        ),
        Api::V3 => sandbox::v3::crypto::verify(
            sandbox::v3::dev::MERCHANT_PUBLIC_KEY,
            &sandbox::v3::crypto::signed_lines(&[
                params.app_id.as_bytes(),
                params.time_stamp.as_bytes(),
                params.nonce_str.as_bytes(),
                params.package.as_bytes(),
            ]),
            &params.pay_sign,
        ),
    }
}

/// What WeChat calls the order's amount in its view (v2 `total_fee`, v3 `amount.total`, kept
/// as `total`) and its count of order-placing calls (v2 unifiedorder, v3 JSAPI 下单).
fn wechat_words(api: Api) -> (&'static str, &'static str) {
    match api {
        Api::V2 => ("total_fee", "unifiedorder_calls"),
        Api::V3 => ("total", "jsapi_calls"),
    }
}

async fn product_payment_is_applied_by_the_notify(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let products = PayService::list_products(&env.pay, Request::new(pb::ListProductsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .products;
    assert_eq!(products.len(), 2);
    assert_eq!(
        (products[0].id.as_str(), products[0].price_fen),
        ("vip", 990)
    );

    let buyer = principal(1);
    let prepared = env
        .prepare(&buyer, Target::ProductId("vip".into()))
        .await
        .unwrap();
    let order = prepared.order.clone().unwrap();
    // The amount is the catalog's: the request carries none.
    assert_eq!(order.amount_fen, 990);
    assert_eq!(order.description, "VIP one month");
    assert_eq!(order.product_id, "vip");
    assert_eq!(order.user_id, 1);
    assert_eq!(order.app_id, DEV_APP_ID);
    assert_eq!(state(&order), PbState::Paying);
    assert!(
        order.order_no.len() <= 32 && order.order_no.bytes().all(|b| b.is_ascii_alphanumeric())
    );
    assert!(order.expires_at > order.created_at);

    // The second signature verifies with the merchant key.
    let params = prepared.params.clone().unwrap();
    assert_eq!(params.app_id, DEV_APP_ID);
    let expected_sign_type = match api {
        Api::V2 => "MD5",
        Api::V3 => "RSA",
    };
    assert_eq!(params.sign_type, expected_sign_type);
    assert!(pay_sign_verifies(api, &params));
    let mut forged = params.clone();
    forged.nonce_str.push('x');
    assert!(!pay_sign_verifies(api, &forged));

    // WeChat saw the server's amount, our notify_url, the buyer's openid.
    let (total, _) = wechat_words(api);
    let at_wechat = env.wechat_order(&order.order_no).await;
    assert_eq!(at_wechat[total], 990);
    assert_eq!(at_wechat["openid"], buyer.openid.as_str());
    assert_eq!(at_wechat["notify_url"], env.wechat_notify_url().as_str());

    let paid = env.sandbox_pay(&prepared, None).await;
    let transaction_id = paid["transaction_id"].as_str().unwrap().to_owned();
    let no = order.order_no.clone();
    eventually(|| async { state(&env.get(&no, 1).await.unwrap()) == PbState::Paid }).await;
    let order = env.get(&no, 1).await.unwrap();
    assert_eq!(order.transaction_id, transaction_id);
    assert!(order.paid_at > 0);
    assert_eq!(env.verdicts(&no).await, vec![("applied".to_owned(), true)]);
    // WeChat got SUCCESS and stops.
    eventually(|| async { env.wechat_order(&no).await["notify_state"] == "accepted" }).await;

    // A paid order cannot be prepared again.
    let err = env
        .prepare(&buyer, Target::OrderNo(no.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);
}

async fn the_same_notify_applies_once(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    env.receiver.forward.store(false, Ordering::SeqCst);
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    env.sandbox_pay(&prepared, None).await;
    let body = env.captured_notice(1).await;
    assert_eq!(body.headers.is_some(), api == Api::V3);

    let first = env.deliver(&body).await;
    assert!(first.accepted);
    assert_eq!(first.verdict, "applied");
    assert!(first.wechat_stops(), "{first:?}");
    let paid = env.get(&no, 0).await.unwrap();
    assert_eq!(state(&paid), PbState::Paid);

    // Five times in a row...
    for _ in 0..5 {
        let again = env.deliver(&body).await;
        assert!(again.accepted);
        assert!(again.wechat_stops());
        assert_eq!(again.verdict, "duplicate");
    }
    // ... and five at once.
    let replies = futures::future::join_all((0..5).map(|_| env.deliver(&body))).await;
    assert!(
        replies
            .iter()
            .all(|r| r.accepted && r.verdict == "duplicate")
    );
    let after = env.get(&no, 0).await.unwrap();
    assert_eq!(after.paid_at, paid.paid_at);
    assert_eq!(after.transaction_id, paid.transaction_id);

    let verdicts = env.verdicts(&no).await;
    assert_eq!(verdicts.len(), 11);
    assert_eq!(verdicts.iter().filter(|(v, _)| v == "applied").count(), 1);
}

/// Five concurrent first deliveries: exactly one applies.
async fn concurrent_first_notifies(env: &Env) {
    env.receiver.forward.store(false, Ordering::SeqCst);
    let prepared = env
        .prepare(&principal(2), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    let n = env.receiver.notices.lock().unwrap().len();
    env.sandbox_pay(&prepared, None).await;
    let body = env.captured_notice(n + 1).await;
    let replies = futures::future::join_all((0..5).map(|_| env.deliver(&body))).await;
    assert!(replies.iter().all(|r| r.accepted));
    assert_eq!(replies.iter().filter(|r| r.verdict == "applied").count(), 1);
    assert_eq!(
        replies.iter().filter(|r| r.verdict == "duplicate").count(),
        4
    );
    assert_eq!(state(&env.get(&no, 0).await.unwrap()), PbState::Paid);
}

/// Notifies that must change nothing, as `(notice, verdict, filed under the order)`: v2
/// carries out_trade_no in the clear, so even an unverified notify is filed under it; v3's is
/// inside the sealed resource, so only a verified, decrypted notify of our merchant is.
fn forged_notices(api: Api, no: &str) -> Vec<(Notice, &'static str, bool)> {
    let forged = |total: &str, overrides: &[(&str, &str)], forgery| {
        paid_notice(api, no, total, overrides, forgery)
    };
    let genuine = |total: &str, overrides: &[(&str, &str)]| forged(total, overrides, Forgery::None);
    let v2 = api == Api::V2;
    let mut cases = vec![
        (forged("100", &[], Forgery::Signature), "bad_signature", v2),
        (genuine("1", &[]), "amount_mismatch", true),
        (
            genuine("100", &[("mch_id", "1900000999")]),
            "mch_id_mismatch",
            v2,
        ),
        (
            genuine("100", &[("appid", "wx0000000000other1")]),
            "appid_mismatch",
            true,
        ),
        (
            paid_notice(api, "20261125UnknownOrder0001", "100", &[], Forgery::None),
            "unknown_order",
            false,
        ),
        // The body changed after WeChat signed it.
        (tampered(&genuine("100", &[])), "bad_signature", v2),
    ];
    match api {
        Api::V2 => cases.extend([
            (
                Notice {
                    body: b"<xml><return_code>SUCCESS".to_vec(),
                    headers: None,
                },
                "malformed",
                false,
            ),
            (
                Notice {
                    body: b"not xml at all".to_vec(),
                    headers: None,
                },
                "malformed",
                false,
            ),
        ]),
        Api::V3 => cases.extend([
            // Not WeChat's key id: nothing to verify the signature with.
            (forged("100", &[], Forgery::Serial), "bad_signature", false),
            // A replay from 10 minutes ago (WeChat's notifies are fresh; ±5 min is allowed).
            (forged("100", &[], Forgery::Stale), "bad_signature", false),
            // Signed, but the resource does not open with the APIv3 key (GCM tag).
            (forged("100", &[], Forgery::Ciphertext), "malformed", false),
            // Signed by WeChat, but not a notify.
            (
                v3_signed(b"not json at all".to_vec(), Forgery::None),
                "malformed",
                false,
            ),
            // No headers at all.
            (
                Notice {
                    body: genuine("100", &[]).body,
                    headers: Some(Default::default()),
                },
                "bad_signature",
                false,
            ),
        ]),
    }
    cases
}

async fn forged_and_mismatched_notifies_change_nothing(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    concurrent_first_notifies(&env).await;

    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let order = prepared.order.unwrap();
    let no = order.order_no.as_str();
    let cases = forged_notices(api, no);
    for (notice, expected, _) in &cases {
        let reply = env.deliver(notice).await;
        assert_eq!(reply.verdict, *expected);
        assert!(!reply.accepted, "{expected}");
        assert!(!reply.wechat_stops(), "{expected}: {reply:?}");
        let now = env.get(no, 0).await.unwrap();
        assert_eq!(state(&now), PbState::Paying, "{expected}");
        assert!(
            now.transaction_id.is_empty() && now.paid_at == 0,
            "{expected}"
        );
    }
    // Every one is on record (the unknown order under its own number).
    let recorded = env.verdicts(no).await;
    assert_eq!(
        recorded.iter().filter(|(_, accepted)| !accepted).count(),
        cases.iter().filter(|(_, _, filed)| *filed).count()
    );

    // The sandbox's own faults, through the receiver: a bad signature and a wrong amount (this
    // payment's faults), and on v3 WeChat's envelope gone wrong (its v3 faults): an unknown
    // serial, a skewed clock, a ciphertext that does not open.
    use serde_json::json;
    let mut sent = vec![
        (
            json!({"notify_bad_signature": true}),
            None,
            "bad_signature",
            api == Api::V2,
        ),
        (
            json!({"notify_wrong_total_fee": true}),
            None,
            "amount_mismatch",
            true,
        ),
    ];
    if api == Api::V3 {
        sent.extend([
            (
                json!({}),
                Some(json!({"unknown_serial": true})),
                "bad_signature",
                false,
            ),
            (
                json!({}),
                Some(json!({"clock_skew_secs": -600})),
                "bad_signature",
                false,
            ),
            (
                json!({}),
                Some(json!({"tamper_ciphertext": true})),
                "malformed",
                false,
            ),
        ]);
    }
    env.receiver.forward.store(true, Ordering::SeqCst);
    for (i, (faults, v3_faults, expected, filed)) in sent.into_iter().enumerate() {
        let prepared = env
            .prepare(&principal(10 + i as i64), Target::ProductId("vip".into()))
            .await
            .unwrap();
        let paid_no = prepared.order.clone().unwrap().order_no;
        let v3_faults_url = env.sandbox.url("/sandbox/v3/faults");
        if let Some(f) = &v3_faults {
            let resp = env.http.post(&v3_faults_url).json(f).send().await.unwrap();
            assert!(resp.status().is_success());
        }
        // An unauthenticated notify is filed with no order number.
        let filed_as = if filed { paid_no.as_str() } else { "" };
        let before = env.verdicts(filed_as).await.len();
        env.sandbox_pay(&prepared, Some(faults)).await;
        eventually(|| async { env.verdicts(filed_as).await.len() > before }).await;
        assert_eq!(
            env.verdicts(filed_as).await[before],
            (expected.to_owned(), false),
            "{v3_faults:?}"
        );
        assert_eq!(state(&env.get(&paid_no, 0).await.unwrap()), PbState::Paying);
        if v3_faults.is_some() {
            env.http.delete(&v3_faults_url).send().await.unwrap();
        }
    }

    // A genuine notify still applies afterwards.
    let reply = env.deliver(&env.paid_notice(no, "100", &[])).await;
    assert_eq!((reply.verdict.as_str(), reply.accepted), ("applied", true));
}

async fn dropped_notify_is_repaired_by_the_reconciler(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    let paid = env
        .sandbox_pay(&prepared, Some(serde_json::json!({"drop_notify": true})))
        .await;
    assert_eq!(paid["notify_state"], "dropped");
    assert_eq!(state(&env.get(&no, 0).await.unwrap()), PbState::Paying);

    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(report.paid, 1, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    let order = env.get(&no, 0).await.unwrap();
    assert_eq!(state(&order), PbState::Paid);
    assert_eq!(
        order.transaction_id,
        paid["transaction_id"].as_str().unwrap()
    );

    // Nothing left to do; a later notify is a duplicate.
    let again = env.pay.reconcile_once().await.unwrap();
    assert_eq!(again.paid, 0);
}

async fn expired_orders_are_closed_by_the_reconciler(backend: Backend, api: Api) {
    let env = Env::with_on(backend, api, |c| c.reconcile_after_secs = 600).await;
    let created = env.create(1, 500, "never prepared", "").await.unwrap();
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let paying = prepared.order.clone().unwrap();
    // Not yet due for anything.
    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!((report.queried, report.closed), (0, 0), "{report:?}");

    // Less than WeChat's 5 minutes left: too late to place the unifiedorder, but the prepay_id
    // already placed is still handed out.
    env.clock.advance(env.config.order_ttl_secs as i64 - 200);
    let err = env
        .prepare(&principal(1), Target::OrderNo(created.order_no.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);
    let again = env
        .prepare(&principal(1), Target::OrderNo(paying.order_no.clone()))
        .await
        .unwrap();
    assert_eq!(prepay_id(&again), prepay_id(&prepared));

    env.clock.advance(201);
    // Expired but not yet closed: refused for payment all the same.
    let err = env
        .prepare(&principal(1), Target::OrderNo(created.order_no.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);

    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(report.closed, 2, "{report:?}");
    for no in [&created.order_no, &paying.order_no] {
        assert_eq!(state(&env.get(no, 0).await.unwrap()), PbState::Closed);
    }
    // Closed at WeChat too: the prepay_id can no longer be paid.
    assert_eq!(
        env.wechat_order(&paying.order_no).await["trade_state"],
        "CLOSED"
    );
    let resp = env
        .http
        .post(env.sandbox.url("/sandbox/pay"))
        .json(&request_payment(&prepared))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    assert_eq!(env.pay.reconcile_once().await.unwrap().closed, 0);
}

async fn second_prepare_reuses_the_prepay_id(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let buyer = principal(1);
    let order = env.create(1, 1234, "a shop order", "").await.unwrap();
    assert_eq!(state(&order), PbState::Created);
    assert_eq!(order.app_id, "");
    let target = || Target::OrderNo(order.order_no.clone());

    // Concurrent first prepares place the identical unifiedorder and agree on one prepay_id.
    let results = futures::future::join_all((0..4).map(|_| env.prepare(&buyer, target()))).await;
    let ids: Vec<String> = results
        .iter()
        .map(|r| prepay_id(r.as_ref().unwrap()))
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    // A later prepare (from another IP even) reuses it.
    let again = PayService::prepare_jsapi_payment(
        &env.pay,
        Request::new(pb::PrepareJsapiPaymentRequest {
            principal: Some(buyer.clone()),
            target: Some(target()),
            client_ip: "2001:db8::1".into(),
            idempotency_key: String::new(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(prepay_id(&again), ids[0]);
    assert_eq!(
        env.wechat_order(&order.order_no).await["prepay_id"],
        ids[0].as_str()
    );
    assert_eq!(again.order.unwrap().amount_fen, 1234);

    // A bad client IP is refused; an empty one falls back to 127.0.0.1.
    let bad_ip = PayService::prepare_jsapi_payment(
        &env.pay,
        Request::new(pb::PrepareJsapiPaymentRequest {
            principal: Some(buyer.clone()),
            target: Some(Target::ProductId("vip".into())),
            client_ip: "not-an-ip".into(),
            idempotency_key: String::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&bad_ip), ErrorReason::InvalidArgument);
    let local = PayService::prepare_jsapi_payment(
        &env.pay,
        Request::new(pb::PrepareJsapiPaymentRequest {
            principal: Some(buyer.clone()),
            target: Some(Target::ProductId("vip".into())),
            client_ip: String::new(),
            idempotency_key: String::new(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let no = local.order.unwrap().order_no;
    // The sandbox keeps the request's fields; the IP it got is visible through its order view
    // only indirectly, so check the order was placed.
    assert_eq!(env.wechat_order(&no).await["out_trade_no"], no.as_str());

    // An unknown product is NOT_FOUND; a missing target MISSING_PARAMETER.
    let err = env
        .prepare(&buyer, Target::ProductId("gold".into()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::NotFound);
    let err = PayService::prepare_jsapi_payment(
        &env.pay,
        Request::new(pb::PrepareJsapiPaymentRequest {
            principal: Some(buyer),
            target: None,
            client_ip: String::new(),
            idempotency_key: String::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::MissingParameter);
}

async fn another_user_cannot_pay_or_read_the_order(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;

    let err = env
        .prepare(&principal(2), Target::OrderNo(no.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), ErrorReason::NotFound);
    assert_eq!(
        reason(&env.get(&no, 2).await.unwrap_err()),
        ErrorReason::NotFound
    );
    assert_eq!(
        reason(&env.close(&no, 2).await.unwrap_err()),
        ErrorReason::NotFound
    );
    // Same answer as for an order that does not exist.
    assert_eq!(
        reason(&env.get("20261125DoesNotExist0000", 2).await.unwrap_err()),
        ErrorReason::NotFound
    );
    // The owner and internal callers (user_id 0) see it; it is untouched.
    assert_eq!(state(&env.get(&no, 1).await.unwrap()), PbState::Paying);
    assert_eq!(state(&env.get(&no, 0).await.unwrap()), PbState::Paying);
    // Malformed numbers are refused before any lookup.
    assert_eq!(
        reason(&env.get("../etc", 1).await.unwrap_err()),
        ErrorReason::InvalidArgument
    );
    assert_eq!(
        reason(&env.get("", 1).await.unwrap_err()),
        ErrorReason::MissingParameter
    );

    // The same user through another mini program cannot take over a bound order.
    let mut other_app = principal(1);
    other_app.app_id = "wx0000000000other1".into();
    let err = env
        .prepare(&other_app, Target::OrderNo(no))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);
}

async fn create_order_is_idempotent_and_validated(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let a = env.create(7, 2500, "ticket", "key-1").await.unwrap();
    let b = env.create(7, 2500, "ticket", "key-1").await.unwrap();
    assert_eq!(a.order_no, b.order_no);
    assert_eq!(a.amount_fen, 2500);
    assert_eq!(state(&a), PbState::Created);

    let err = env.create(7, 2600, "ticket", "key-1").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason(&err), ErrorReason::IdempotencyConflict);
    let err = env
        .create(7, 2500, "other ticket", "key-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::IdempotencyConflict);

    // The key is per user; no key means a new order each time.
    let other_user = env.create(8, 2500, "ticket", "key-1").await.unwrap();
    assert_ne!(other_user.order_no, a.order_no);
    let n1 = env.create(7, 2500, "ticket", "").await.unwrap();
    let n2 = env.create(7, 2500, "ticket", "").await.unwrap();
    assert_ne!(n1.order_no, n2.order_no);

    // Concurrent first calls with one key: one order.
    let results =
        futures::future::join_all((0..6).map(|_| env.create(9, 100, "race", "key-race"))).await;
    let nos: Vec<String> = results.into_iter().map(|r| r.unwrap().order_no).collect();
    assert!(nos.iter().all(|n| *n == nos[0]), "{nos:?}");

    for (amount, description, expected) in [
        (0, "x", ErrorReason::InvalidArgument),
        (-1, "x", ErrorReason::InvalidArgument),
        (100_000_001, "x", ErrorReason::InvalidArgument),
        (1, "", ErrorReason::MissingParameter),
        (1, &"d".repeat(129)[..], ErrorReason::InvalidArgument),
        (1, "bad\u{0}name", ErrorReason::InvalidArgument),
    ] {
        let err = env.create(7, amount, description, "").await.unwrap_err();
        assert_eq!(reason(&err), expected, "{amount} {description:?}");
    }
    let longest = env.create(7, 1, &"d".repeat(128), "").await.unwrap();
    assert_eq!(
        (longest.user_id, longest.amount_fen, longest.description),
        (7, 1, "d".repeat(128))
    );
    let err = PayService::create_order(
        &env.pay,
        Request::new(pb::CreateOrderRequest {
            user_id: 7,
            amount_fen: 1,
            description: "x".into(),
            attach: "a".repeat(128),
            idempotency_key: String::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::InvalidArgument);
    assert_eq!(
        reason(&env.create(0, 1, "x", "").await.unwrap_err()),
        ErrorReason::MissingParameter
    );
}

async fn close_order_rules(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    // An unprepared order closes locally.
    let created = env.create(1, 100, "to close", "").await.unwrap();
    let closed = env.close(&created.order_no, 1).await.unwrap();
    assert_eq!(state(&closed), PbState::Closed);
    // Idempotent.
    assert_eq!(
        state(&env.close(&created.order_no, 1).await.unwrap()),
        PbState::Closed
    );
    // Closed orders cannot be prepared.
    let err = env
        .prepare(&principal(1), Target::OrderNo(created.order_no.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);

    // A PAYING order is closed at WeChat too.
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    assert_eq!(state(&env.close(&no, 1).await.unwrap()), PbState::Closed);
    assert_eq!(env.wechat_order(&no).await["trade_state"], "CLOSED");

    // A PAID order cannot be closed.
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let paid_no = prepared.order.clone().unwrap().order_no;
    env.sandbox_pay(&prepared, None).await;
    eventually(|| async { state(&env.get(&paid_no, 1).await.unwrap()) == PbState::Paid }).await;
    let err = env.close(&paid_no, 1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), ErrorReason::OrderState);

    // Paid at WeChat, notify not yet here: WeChat answers ORDERPAID, the payment is applied
    // and the close refused.
    env.receiver.forward.store(false, Ordering::SeqCst);
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let racing_no = prepared.order.clone().unwrap().order_no;
    let paid = env.sandbox_pay(&prepared, None).await;
    let err = env.close(&racing_no, 1).await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);
    let order = env.get(&racing_no, 1).await.unwrap();
    assert_eq!(state(&order), PbState::Paid);
    assert_eq!(
        order.transaction_id,
        paid["transaction_id"].as_str().unwrap()
    );
}

async fn payment_of_a_closed_order_is_kept_for_refund(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    env.receiver.forward.store(false, Ordering::SeqCst);
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    let paid = env.sandbox_pay(&prepared, None).await;
    let body = env.captured_notice(1).await;
    // The order was closed here while the user paid (as a close racing the payment would).
    let row = pay_service::orders::store::find_order(env.pay.database(), &no)
        .await
        .unwrap()
        .unwrap();
    assert!(
        pay_service::orders::store::close_if_unchanged(env.pay.database(), &row, env.clock.now())
            .await
            .unwrap()
    );

    for _ in 0..2 {
        let reply = env.deliver(&body).await;
        assert!(reply.wechat_stops(), "WeChat must stop retrying");
        assert_eq!(reply.verdict, "paid_after_close");
    }
    let order = env.get(&no, 1).await.unwrap();
    assert_eq!(state(&order), PbState::Closed);
    assert_eq!(
        order.transaction_id,
        paid["transaction_id"].as_str().unwrap()
    );
    assert_eq!(order.paid_at, 0);
    let verdicts = env.verdicts(&no).await;
    assert_eq!(verdicts, vec![("paid_after_close".to_owned(), true); 2]);
    let row = pay_service::orders::store::find_order(env.pay.database(), &no)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state(), Some(OrderState::Closed));
}

async fn concurrent_reconcilers_apply_a_payment_once(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let mut orders = Vec::new();
    for user in 1..=3 {
        let prepared = env
            .prepare(&principal(user), Target::ProductId("coins".into()))
            .await
            .unwrap();
        env.sandbox_pay(&prepared, Some(serde_json::json!({"drop_notify": true})))
            .await;
        orders.push(prepared.order.unwrap().order_no);
    }
    let replicas = [env.pay.clone(), env.replica(), env.replica()];
    let reports =
        futures::future::join_all(replicas.iter().map(pay_service::Payments::reconcile_once)).await;
    let reports: Vec<_> = reports.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        reports.iter().map(|r| r.paid).sum::<usize>(),
        3,
        "{reports:?}"
    );
    assert_eq!(
        reports.iter().map(|r| r.errors).sum::<usize>(),
        0,
        "{reports:?}"
    );
    for no in &orders {
        let order = env.get(no, 0).await.unwrap();
        assert_eq!(state(&order), PbState::Paid);
        assert_eq!(
            order.transaction_id,
            env.wechat_order(no).await["transaction_id"]
                .as_str()
                .unwrap()
        );
    }
    // A late notify after the repair is a duplicate.
    let reports =
        futures::future::join_all(replicas.iter().map(pay_service::Payments::reconcile_once)).await;
    assert!(reports.into_iter().all(|r| r.unwrap().paid == 0));
}

async fn wechat_failures_are_mapped(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let set_faults = |faults: serde_json::Value| {
        let (http, url) = (env.http.clone(), env.sandbox.url("/sandbox/faults"));
        async move {
            let resp = http.post(url).json(&faults).send().await.unwrap();
            assert!(resp.status().is_success());
        }
    };
    set_faults(serde_json::json!({"pay_system_error": true, "times": 1})).await;
    let err = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);

    set_faults(serde_json::json!({"http_status": 503, "times": 1})).await;
    let order = env.create(1, 100, "retry me", "").await.unwrap();
    let err = env
        .prepare(&principal(1), Target::OrderNo(order.order_no.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    assert_eq!(
        state(&env.get(&order.order_no, 1).await.unwrap()),
        PbState::Created
    );
    // Once WeChat is back, the same order is prepared.
    let ok = env
        .prepare(&principal(1), Target::OrderNo(order.order_no.clone()))
        .await
        .unwrap();
    assert_eq!(state(&ok.order.unwrap()), PbState::Paying);

    // A merchant WeChat does not know (v2 MCHID_NOT_EXIST, v3 400 MCH_NOT_EXISTS):
    // WECHAT_ERROR, and the order is not placed.
    let env2 = Env::with_on(backend, api, |c| c.mch_id = "1900000999".into()).await;
    let err = env2
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatError);
    assert_eq!(DEV_MCH_ID, "1900000109");

    // A request WeChat cannot authenticate (v2 a wrong pay key: 签名错误; v3 a wrong
    // certificate serial: 401 SIGN_ERROR) is the merchant's configuration, not WeChat being
    // down: WECHAT_ERROR, nothing placed.
    let env3 = Env::with_on(backend, api, |c| match api {
        Api::V2 => c.pay_key = service_kit::Secret::new("not-the-merchant-key-000000000000"),
        Api::V3 => c.v3.cert_serial = Some("0123456789ABCDEF0123456789ABCDEF01234567".into()),
    })
    .await;
    let order = env3.create(1, 100, "unsigned", "").await.unwrap();
    let err = env3
        .prepare(&principal(1), Target::OrderNo(order.order_no.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatError, "{err:?}");
    assert_eq!(
        state(&env3.get(&order.order_no, 1).await.unwrap()),
        PbState::Created
    );
}

async fn hmac_sha256_merchant_pays_end_to_end(backend: Backend) {
    let env = Env::with(backend, |c| c.sign_type = "HMAC-SHA256".into()).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let params = prepared.params.clone().unwrap();
    assert_eq!(params.sign_type, "HMAC-SHA256");
    let signed = [
        ("appId", params.app_id.as_str()),
        ("timeStamp", params.time_stamp.as_str()),
        ("nonceStr", params.nonce_str.as_str()),
        ("package", params.package.as_str()),
        ("signType", params.sign_type.as_str()),
    ];
    assert!(wechat::pay::verify(
        signed,
        DEV_PAY_KEY,
        wechat::SignType::HmacSha256,
        &params.pay_sign
    ));
    let no = prepared.order.clone().unwrap().order_no;
    assert_eq!(env.sandbox_order(&no).await["sign_type"], "HMAC-SHA256");
    env.sandbox_pay(&prepared, None).await;
    // As WeChat sends it: a 64-hex-digit sign and no sign_type.
    let body = String::from_utf8(env.captured_notify(1).await).unwrap();
    assert!(!body.contains("sign_type"), "{body}");
    eventually(|| async { state(&env.get(&no, 1).await.unwrap()) == PbState::Paid }).await;
    assert_eq!(env.verdicts(&no).await, vec![("applied".to_owned(), true)]);
}

/// A genuine notify of another transaction for an order already PAID: answered SUCCESS (WeChat
/// must stop), recorded as `conflicting_transaction`, and the order keeps its payment.
async fn another_transaction_for_a_paid_order_changes_nothing(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = prepared.order.unwrap().order_no;
    let first = env.paid_notice(&no, "100", &[]);
    let reply = env.deliver(&first).await;
    assert_eq!((reply.verdict.as_str(), reply.accepted), ("applied", true));
    let paid = env.get(&no, 0).await.unwrap();
    assert_eq!(state(&paid), PbState::Paid);
    assert_eq!(paid.transaction_id, "4200000000202611250000000001");

    let other = env.paid_notice(
        &no,
        "100",
        &[
            ("transaction_id", "4200000000202611259999999999"),
            ("time_end", "20261125130000"),
        ],
    );
    let reply = env.deliver(&other).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("conflicting_transaction", true)
    );
    assert!(reply.wechat_stops(), "{reply:?}");
    // The first transaction is still a duplicate, not a conflict.
    let reply = env.deliver(&first).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("duplicate", true)
    );

    let after = env.get(&no, 0).await.unwrap();
    assert_eq!(after, paid);
    assert_eq!(
        env.verdicts(&no).await,
        vec![
            ("applied".to_owned(), true),
            ("conflicting_transaction".to_owned(), true),
            ("duplicate".to_owned(), true),
        ]
    );
}

/// An expired order paid at WeChat whose notify has not arrived: the reconciler's closeorder
/// meets ORDERPAID and applies the payment instead of closing; the late notify is then a
/// duplicate. And the same with the notify arriving while the reconciler closes: paid once.
async fn expired_order_paid_at_wechat_is_applied_by_the_closing_reconciler(
    backend: Backend,
    api: Api,
) {
    let env = Env::with_on(backend, api, |c| c.reconcile_after_secs = 600).await;
    // The receiver records the notifies but answers 503, so WeChat holds on to them.
    env.receiver.forward.store(false, Ordering::SeqCst);
    let ttl = env.config.order_ttl_secs as i64;

    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    let paid = env.sandbox_pay(&prepared, None).await;
    let held = env.captured_notice(1).await;
    env.clock.advance(ttl + 1);
    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(
        (report.paid, report.closed, report.errors),
        (1, 0, 0),
        "{report:?}"
    );
    let order = env.get(&no, 1).await.unwrap();
    assert_eq!(state(&order), PbState::Paid);
    assert_eq!(
        order.transaction_id,
        paid["transaction_id"].as_str().unwrap()
    );
    assert_eq!(env.wechat_order(&no).await["trade_state"], "SUCCESS");
    let reply = env.deliver(&held).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("duplicate", true)
    );
    assert_eq!(env.get(&no, 1).await.unwrap(), order);

    // The held notify and the closing reconciler at the same moment.
    let prepared = env
        .prepare(&principal(2), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let raced = prepared.order.clone().unwrap().order_no;
    let paid = env.sandbox_pay(&prepared, None).await;
    let held = env.captured_notice(2).await;
    env.clock.advance(ttl + 1);
    let (report, reply) = tokio::join!(env.pay.reconcile_once(), env.deliver(&held));
    let report = report.unwrap();
    assert!(reply.accepted, "{reply:?}");
    assert!(
        matches!(reply.verdict.as_str(), "applied" | "duplicate"),
        "{reply:?}"
    );
    assert_eq!((report.closed, report.errors), (0, 0), "{report:?}");
    assert_eq!(
        report.paid + usize::from(reply.verdict == "applied"),
        1,
        "applied exactly once: {report:?} {reply:?}"
    );
    let order = env.get(&raced, 2).await.unwrap();
    assert_eq!(state(&order), PbState::Paid);
    assert_eq!(
        order.transaction_id,
        paid["transaction_id"].as_str().unwrap()
    );
    assert_eq!(env.wechat_order(&raced).await["trade_state"], "SUCCESS");
}

/// The notify was lost for a while; the reconciler's orderquery repaired the order; then
/// WeChat's retry arrives: answered SUCCESS as a duplicate, nothing changes.
async fn a_late_notify_after_the_reconciler_repaired_the_order_is_a_duplicate(
    backend: Backend,
    api: Api,
) {
    let env = Env::on(backend, api).await;
    env.receiver.forward.store(false, Ordering::SeqCst);
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    let paid = env.sandbox_pay(&prepared, None).await;
    let late = env.captured_notice(1).await;

    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!((report.queried, report.paid), (1, 1), "{report:?}");
    let repaired = env.get(&no, 1).await.unwrap();
    assert_eq!(state(&repaired), PbState::Paid);
    assert_eq!(
        repaired.transaction_id,
        paid["transaction_id"].as_str().unwrap()
    );

    for _ in 0..2 {
        let reply = env.deliver(&late).await;
        assert_eq!(
            (reply.verdict.as_str(), reply.accepted),
            ("duplicate", true)
        );
        assert!(reply.wechat_stops(), "{reply:?}");
    }
    assert_eq!(env.get(&no, 1).await.unwrap(), repaired);
    assert_eq!(
        env.verdicts(&no).await,
        vec![("duplicate".to_owned(), true); 2]
    );
}

/// A CLOSED order is paid at WeChat twice (two transactions, e.g. two phones racing the
/// close): both notifies are answered SUCCESS and kept for a manual refund; the order stays
/// CLOSED with the first transaction.
async fn a_closed_order_paid_by_a_second_transaction_keeps_the_first(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = prepared.order.unwrap().order_no;
    assert_eq!(state(&env.close(&no, 1).await.unwrap()), PbState::Closed);

    let first = env.paid_notice(
        &no,
        "100",
        &[("transaction_id", "4200000000202611250000000101")],
    );
    let second = env.paid_notice(
        &no,
        "100",
        &[
            ("transaction_id", "4200000000202611250000000102"),
            ("time_end", "20261125120500"),
        ],
    );
    for body in [&first, &second, &first] {
        let reply = env.deliver(body).await;
        assert_eq!(
            (reply.verdict.as_str(), reply.accepted),
            ("paid_after_close", true)
        );
    }
    let order = env.get(&no, 1).await.unwrap();
    assert_eq!(state(&order), PbState::Closed);
    assert_eq!(order.transaction_id, "4200000000202611250000000101");
    assert_eq!(order.paid_at, 0);
    assert_eq!(
        env.verdicts(&no).await,
        vec![("paid_after_close".to_owned(), true); 3]
    );
}

/// WeChat in front of the sandbox, holding every request to `path` until `callers` of them
/// arrived (or 10 s passed), then forwarding each; answers the proxy and how many arrived.
/// `upstream` is the sandbox's base URL, filled in once the env made its sandbox.
async fn held_wechat(
    path: &'static str,
    callers: u64,
    upstream: Arc<Mutex<String>>,
) -> (TestServer, Arc<AtomicU64>) {
    let arrived = Arc::new(AtomicU64::new(0));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let http = reqwest::Client::new();
    let count = arrived.clone();
    let server = TestServer::start(move |r: TestRequest| {
        let (arrived, all_in, http) = (count.clone(), all_in.clone(), http.clone());
        let upstream = upstream.lock().unwrap().clone();
        async move {
            if r.path() == path {
                let released = all_in.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if arrived.fetch_add(1, Ordering::SeqCst) + 1 >= callers {
                    all_in.notify_waiters();
                } else {
                    let _ = tokio::time::timeout(Duration::from_secs(10), released).await;
                }
            }
            forward(&http, &upstream, &r).await
        }
    })
    .await;
    (server, arrived)
}

/// Concurrent PrepareJsapiPayment calls of one order are not serialised: each caller that
/// finds no prepay_id stored places the identical unifiedorder (on v3 the identical JSAPI
/// order), which WeChat answers with the same prepay_id. With WeChat holding its answers
/// until all callers asked, that is exactly one call per caller, every one answered the
/// same prepay_id; once it is stored, no caller asks WeChat again (the sandbox's
/// `unifiedorder_calls`, on v3 `jsapi_calls`).
async fn concurrent_prepares_count_unifiedorder_calls_at_wechat(backend: Backend, api: Api) {
    const CALLERS: u64 = 6;
    let placing = match api {
        Api::V2 => "/pay/unifiedorder",
        Api::V3 => "/v3/pay/transactions/jsapi",
    };
    let upstream = Arc::new(Mutex::new(String::new()));
    let (wechat, arrived) = held_wechat(placing, CALLERS, upstream.clone()).await;
    let env = Env::with_on(backend, api, |c| {
        *upstream.lock().unwrap() = c.wechat_pay_base.clone();
        c.wechat_pay_base = wechat.base();
    })
    .await;
    let buyer = principal(1);
    let order = env.create(1, 700, "counted", "").await.unwrap();
    let target = || Target::OrderNo(order.order_no.clone());
    let (_, placing_calls) = wechat_words(api);
    let calls = || async {
        env.wechat_order(&order.order_no).await[placing_calls]
            .as_u64()
            .unwrap()
    };

    let first =
        futures::future::join_all((0..CALLERS).map(|_| env.prepare(&buyer, target()))).await;
    let ids: Vec<String> = first
        .iter()
        .map(|r| prepay_id(r.as_ref().unwrap()))
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        CALLERS,
        "one call per caller"
    );
    let placed = calls().await;
    assert_eq!(placed, CALLERS, "{placed} unifiedorder calls");

    let again =
        futures::future::join_all((0..CALLERS).map(|_| env.prepare(&buyer, target()))).await;
    assert!(
        again
            .iter()
            .all(|r| prepay_id(r.as_ref().unwrap()) == ids[0])
    );
    assert_eq!(calls().await, placed, "the stored prepay_id is reused");
    assert_eq!(
        env.wechat_order(&order.order_no).await["prepay_id"],
        ids[0].as_str()
    );
}
