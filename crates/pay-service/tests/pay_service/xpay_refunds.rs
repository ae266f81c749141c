//! Refunds of virtual orders (issue 26): `Refund` of a paid virtual order goes through xpay's
//! `refund_order` at the sandbox (never WeChat Pay's refund), under the refunds' ledger:
//! in parts and in full, an over-refund refused with REFUND_EXCEEDS_PAID and nothing changed,
//! a refund retried and sent to two replicas refunded once, the `xpay_refund_notify` push
//! applied once, a lost push repaired by the reconciler's `query_order`, forged or mismatched
//! pushes changing nothing; an expired virtual order closed after `query_order`, never
//! closeorder.

use pay_service::{
    Error, Payments, RefundOrder,
    events::{self, EventKind},
    orders::Order,
    refunds::RefundState,
};
use sandbox::DEV_APP_ID;
use serde_json::{Value, json};
use wxmp_proto::pay::v1 as pb;

use crate::{
    helpers::{Backend, Env, on_both_backends, principal},
    xpay::{logged_in, prepare_vip},
};

/// The phone pays a new "vip" order (990 fen) at the sandbox; the delivery push is lost (no
/// push URL) and the reconciler's query_order pays it. Answers the order_no.
async fn paid_vip(env: &Env, pay: &Payments) -> String {
    let (order, p) = prepare_vip(env).await;
    let paid: Value = env
        .http
        .post(env.sandbox.url("/sandbox/xpay/pay"))
        .json(
            &json!({"openid": principal(1).openid, "mode": p.mode, "signData": p.sign_data,
            "paySig": p.pay_sig, "signature": p.signature}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["errcode"], 0, "{paid}");
    assert_eq!(pay.reconcile_once().await.unwrap().paid, 1);
    order.order_no
}

fn refund_of(order_no: &str, fen: i64, key: &str) -> RefundOrder {
    RefundOrder {
        order_no: order_no.into(),
        refund_fen: fen,
        reason: "不想要了".into(),
        out_refund_no: key.into(),
    }
}

async fn order(env: &Env, order_no: &str) -> Order {
    pay_service::orders::store::find_order(env.pay.database(), order_no)
        .await
        .unwrap()
        .unwrap()
}

/// The refund orders the sandbox holds.
async fn sandbox_refunds(env: &Env) -> Vec<Value> {
    let r: Value = env
        .http
        .get(env.sandbox.url("/sandbox/xpay/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["refunds"].as_array().unwrap().clone()
}

async fn refund_events(env: &Env, order_no: &str, kind: EventKind) -> usize {
    events::after(env.pay.database(), 0, &[kind], 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.order_no == order_no)
        .count()
}

/// The `xpay_refund_notify` push of a refund as WeChat sends it (JSON mode, decrypted).
fn refund_push(key: &str, order_no: &str, openid: &str, fee: i64, ret_code: i64) -> String {
    json!({
        "ToUserName": "gh_sandbox", "FromUserName": openid, "CreateTime": 1_765_000_000,
        "MsgType": "event", "Event": "xpay_refund_notify", "OpenId": openid,
        "WxRefundId": "xpayrefund01", "MchRefundId": key, "WxOrderId": "xpay01",
        "MchOrderId": order_no, "RefundFee": fee, "RetCode": ret_code, "RetMsg": "ok",
        "RefundStartTimestamp": 1_765_000_000, "RefundSuccTimestamp": 1_765_000_001,
        "WxpayRefundTransactionId": "503001", "RetryTimes": 0
    })
    .to_string()
}

const EVENT: &str = "xpay_refund_notify";

async fn refunded_in_parts_and_in_full_never_beyond_what_was_paid(backend: Backend) {
    let (env, pay) = logged_in(backend).await;
    let no = paid_vip(&env, &pay).await;
    let openid = principal(1).openid;
    // A part: sent to refund_order (not WeChat Pay), accepted → PROCESSING, 300 reserved.
    let (first, o) = pay
        .refund(refund_of(&no, 300, "xr-part-0001"))
        .await
        .unwrap();
    assert_eq!(first.state(), Some(RefundState::Processing), "{first:?}");
    assert_eq!(first.api, "xpay");
    assert_eq!((o.state.as_str(), o.refunding_fen), ("REFUNDING", 300));
    let at_wechat = sandbox_refunds(&env).await;
    assert_eq!(at_wechat.len(), 1);
    assert_eq!(
        (
            &at_wechat[0]["refund_order_id"],
            &at_wechat[0]["refund_fee"]
        ),
        (&json!("xr-part-0001"), &json!(300))
    );
    // More than is left (990 - 300 in flight): refused, nothing changed here or at WeChat.
    let e = pay
        .refund(refund_of(&no, 691, "xr-over-0001"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::RefundExceedsPaid { left_fen: 690 }),
        "{e:?}"
    );
    assert_eq!(order(&env, &no).await.refunding_fen, 300);
    assert_eq!(pay.list_refunds(&no).await.unwrap().len(), 1);
    assert_eq!(sandbox_refunds(&env).await.len(), 1);
    // Its push settles it once: SUCCESS, the order PAID with 300 refunded.
    let push = refund_push("xr-part-0001", &no, &openid, 300, 0);
    let verdict = pay
        .handle_message_push(DEV_APP_ID, EVENT, &push, "p1")
        .await
        .unwrap();
    assert_eq!(verdict, "handled");
    let verdict = pay
        .handle_message_push(DEV_APP_ID, EVENT, &push, "p1-retry")
        .await
        .unwrap();
    assert_eq!(verdict, "duplicate");
    let o = order(&env, &no).await;
    assert_eq!(
        (o.state.as_str(), o.refunding_fen, o.refunded_fen),
        ("PAID", 0, 300)
    );
    // The rest; its push is lost (the sandbox has no push URL): the refund reconciler asks
    // query_order by the refund_order_id and settles it.
    let (rest, _) = pay
        .refund(refund_of(&no, 690, "xr-rest-0001"))
        .await
        .unwrap();
    assert_eq!(rest.state(), Some(RefundState::Processing));
    let report = pay.reconcile_refunds_once().await.unwrap();
    assert_eq!(report.settled, 1, "{report:?}");
    let o = order(&env, &no).await;
    assert_eq!(
        (o.state.as_str(), o.refunding_fen, o.refunded_fen),
        ("REFUNDED", 0, 990)
    );
    assert_eq!(
        refund_events(&env, &no, EventKind::RefundSucceeded).await,
        2
    );
    // Its late push changes nothing; nothing is left to refund.
    let late = refund_push("xr-rest-0001", &no, &openid, 690, 0);
    let verdict = pay
        .handle_message_push(DEV_APP_ID, EVENT, &late, "p2")
        .await
        .unwrap();
    assert_eq!(verdict, "duplicate");
    let e = pay
        .refund(refund_of(&no, 1, "xr-more-0001"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::RefundExceedsPaid { left_fen: 0 }),
        "{e:?}"
    );
    assert_eq!(
        refund_events(&env, &no, EventKind::RefundSucceeded).await,
        2
    );
    assert_eq!(sandbox_refunds(&env).await.len(), 2);
}
on_both_backends!(refunded_in_parts_and_in_full_never_beyond_what_was_paid);

async fn a_refund_retried_on_two_replicas_refunds_once(backend: Backend) {
    let (env, pay) = logged_in(backend).await;
    let no = paid_vip(&env, &pay).await;
    let other = env.replica_with(|c| {
        c.wechat = service_kit::settings::WechatApi::new(&env.sandbox.base_url);
    });
    for _ in 0..3 {
        let (a, b) = tokio::join!(
            pay.refund(refund_of(&no, 990, "xr-full-0001")),
            other.refund(refund_of(&no, 990, "xr-full-0001")),
        );
        let (a, b) = (a.unwrap().0, b.unwrap().0);
        assert_eq!(a.out_refund_no, "xr-full-0001");
        assert_eq!(b.out_refund_no, "xr-full-0001");
    }
    let o = order(&env, &no).await;
    assert_eq!((o.refunding_fen + o.refunded_fen, o.amount_fen), (990, 990));
    assert_eq!(pay.list_refunds(&no).await.unwrap().len(), 1);
    let at_wechat = sandbox_refunds(&env).await;
    assert_eq!(at_wechat.len(), 1, "{at_wechat:?}");
    // The same key for another amount is a conflict, not a second refund.
    let e = pay
        .refund(refund_of(&no, 1, "xr-full-0001"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RefundConflict), "{e:?}");
    // A key refund_order cannot carry (its refund_order_id is 8..=32 of [0-9A-Za-z_-]).
    let e = pay.refund(refund_of(&no, 1, "r@1")).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert_eq!(sandbox_refunds(&env).await.len(), 1);
}
on_both_backends!(a_refund_retried_on_two_replicas_refunds_once);

async fn forged_or_mismatched_refund_pushes_change_nothing(backend: Backend) {
    let (env, pay) = logged_in(backend).await;
    let no = paid_vip(&env, &pay).await;
    let openid = principal(1).openid;
    pay.refund(refund_of(&no, 300, "xr-push-0001"))
        .await
        .unwrap();
    let cases = [
        (
            refund_push("xr-push-0001", &no, &openid, 990, 0),
            "mismatch",
        ),
        (
            refund_push("xr-push-0001", &no, &principal(9).openid, 300, 0),
            "mismatch",
        ),
        (
            refund_push("xr-push-0001", "N-other", &openid, 300, 0),
            "mismatch",
        ),
        (
            refund_push("xr-none-0001", &no, &openid, 300, 0),
            "unknown_refund",
        ),
        ("[1]".to_owned(), "malformed"),
    ];
    for (i, (message, want)) in cases.iter().enumerate() {
        let verdict = pay
            .handle_message_push(DEV_APP_ID, EVENT, message, &format!("f{i}"))
            .await
            .unwrap();
        assert_eq!(verdict, *want, "case {i}");
    }
    let verdict = pay
        .handle_message_push(
            "wxother",
            EVENT,
            &refund_push("xr-push-0001", &no, &openid, 300, 0),
            "f-app",
        )
        .await
        .unwrap();
    assert_eq!(verdict, "unknown_refund");
    let refund = pay.get_refund("xr-push-0001").await.unwrap();
    assert_eq!(refund.state(), Some(RefundState::Processing));
    let o = order(&env, &no).await;
    assert_eq!(
        (o.state.as_str(), o.refunding_fen, o.refunded_fen),
        ("REFUNDING", 300, 0)
    );
    assert_eq!(
        refund_events(&env, &no, EventKind::RefundSucceeded).await,
        0
    );
    // A genuine failure push releases the amount (CLOSED, XPAY_REFUND_FAILED), once.
    let failed = refund_push("xr-push-0001", &no, &openid, 300, 1);
    let verdict = pay
        .handle_message_push(DEV_APP_ID, EVENT, &failed, "f-ok")
        .await
        .unwrap();
    assert_eq!(verdict, "handled");
    let refund = pay.get_refund("xr-push-0001").await.unwrap();
    assert_eq!(
        (refund.state(), refund.failure.as_str()),
        (Some(RefundState::Closed), "XPAY_REFUND_FAILED")
    );
    let o = order(&env, &no).await;
    assert_eq!(
        (o.state.as_str(), o.refunding_fen, o.refunded_fen),
        ("PAID", 0, 0)
    );
    assert_eq!(refund_events(&env, &no, EventKind::RefundFailed).await, 1);
}
on_both_backends!(forged_or_mismatched_refund_pushes_change_nothing);

async fn an_expired_virtual_order_is_closed_after_query_order(backend: Backend) {
    let (env, pay) = logged_in(backend).await;
    // Unpaid: query_order knows no such order (268490002): closed here.
    let (unpaid, _) = prepare_vip(&env).await;
    env.clock
        .advance(i64::try_from(env.config.order_ttl_secs).unwrap() + 1);
    let report = pay.reconcile_once().await.unwrap();
    assert_eq!(report.closed, 1, "{report:?}");
    assert_eq!(
        env.get(&unpaid.order_no, 1).await.unwrap().state,
        pb::OrderState::Closed as i32
    );
    // Paid at the sandbox, its push lost, then expired: its payment is applied, not a close.
    let (order, p) = prepare_vip(&env).await;
    let paid: Value = env
        .http
        .post(env.sandbox.url("/sandbox/xpay/pay"))
        .json(
            &json!({"openid": principal(1).openid, "mode": p.mode, "signData": p.sign_data,
            "paySig": p.pay_sig, "signature": p.signature}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["errcode"], 0, "{paid}");
    env.clock
        .advance(i64::try_from(env.config.order_ttl_secs).unwrap() + 1);
    let report = pay.reconcile_once().await.unwrap();
    assert_eq!((report.paid, report.closed), (1, 0), "{report:?}");
    assert_eq!(
        env.get(&order.order_no, 1).await.unwrap().state,
        pb::OrderState::Paid as i32
    );
}
on_both_backends!(an_expired_virtual_order_is_closed_after_query_order);
