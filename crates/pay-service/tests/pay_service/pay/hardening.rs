//! Issue 19: notifies of HMAC-SHA256 merchants, failed-payment notifies, reconcile leases under
//! a slow WeChat, double taps, what is kept of a notify, byte-identical unifiedorder retries,
//! and explicit admin reads. Every case on PostgreSQL and SQLite.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use pay_service::{
    Clock, OrderState, PayTarget, Payer, Payments,
    orders::store::{self, NewOrder},
    schema::{orders, pay_notifications},
};
use sandbox::{DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY};
use service_kit::ErrorReason;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use wxmp_proto::pay::v1::{OrderState as PbState, prepare_jsapi_payment_request::Target};

use crate::helpers::*;

on_both_backends!(
    hmac_notifies_without_sign_type_verify_with_the_orders_algorithm,
    failed_payment_and_return_fail_notifies_are_acknowledged_and_change_nothing,
    reconcilers_with_a_slow_wechat_ask_once_per_order,
    a_late_release_leaves_the_new_lease_alone,
    a_double_tap_pays_one_order,
    only_verified_notifies_are_kept_whole_and_old_ones_are_pruned,
    orders_are_read_for_a_user_or_by_an_explicit_admin,
);

/// The cases whose behaviour exists on both WeChat Pay APIs, on v2 and v3 alike.
mod both_apis {
    use super::*;

    on_both_backends_and_apis!(
        api = crate::helpers::Api;
        a_unifiedorder_retry_is_the_first_ones_request
    );
}

fn state(o: &wxmp_proto::pay::v1::Order) -> PbState {
    PbState::try_from(o.state).unwrap()
}

fn payer(user_id: i64) -> Payer {
    let p = principal(user_id);
    Payer {
        user_id: p.user_id,
        app_id: p.app_id,
        openid: p.openid,
    }
}

/// A PAYING order with a fixed number, as the first prepare would leave it (the notifies below
/// are signed over fixed bytes).
async fn insert_paying_order(env: &Env, order_no: &str, sign_type: &str) {
    let now = env.clock.now();
    let new = NewOrder {
        order_no: order_no.into(),
        user_id: 1,
        app_id: DEV_APP_ID.into(),
        openid: "o000000000000000000000000001".into(),
        client_ip: "203.0.113.7".into(),
        amount_fen: 100,
        description: "100 coins".into(),
        attach: String::new(),
        product_id: "coins".into(),
        state: OrderState::Paying.as_str().into(),
        idempotency_key: None,
        created_at: now,
        updated_at: now,
        expires_at: now + 1800,
        notify_url: env.config.notify_url.clone(),
        sign_type: sign_type.into(),
        api: "v2".into(),
    };
    store::insert_order(env.pay.database(), &new).await.unwrap();
}

/// A genuine HMAC-SHA256 notify as WeChat sends it: no `sign_type`, 64 hex characters of
/// `sign`, plain and CDATA values mixed (the shape merchants posted in
/// <https://github.com/binarywang/WxJava/issues/1585> and
/// <https://github.com/easy-swoole/pay/issues/38>). Signed outside wxmp, over the documented
/// string-to-sign, e.g. for the first order:
///
/// ```sh
/// printf '%s' 'appid=wx00000000000dev01&bank_type=OTHERS&cash_fee=100&fee_type=CNY&is_subscribe=N&mch_id=1900000109&nonce_str=1764576000123&openid=o000000000000000000000000001&out_trade_no=20261201HmacOrder0000000001&result_code=SUCCESS&return_code=SUCCESS&time_end=20261201120000&total_fee=100&trade_type=JSAPI&transaction_id=4200000000202612010000000001&key=devpaykey00000000000000000000key' \
///   | openssl dgst -sha256 -hmac devpaykey00000000000000000000key | tr a-f A-F
/// ```
///
/// (`openssl dgst -md5` over the same string gives the MD5 signatures used below.)
fn wechat_notify(order_no: &str, transaction_id: &str, sign: &str) -> Vec<u8> {
    format!(
        "<xml><appid><![CDATA[wx00000000000dev01]]></appid>\n\
         <bank_type><![CDATA[OTHERS]]></bank_type>\n\
         <cash_fee><![CDATA[100]]></cash_fee>\n\
         <fee_type><![CDATA[CNY]]></fee_type>\n\
         <is_subscribe><![CDATA[N]]></is_subscribe>\n\
         <mch_id><![CDATA[1900000109]]></mch_id>\n\
         <nonce_str><![CDATA[1764576000123]]></nonce_str>\n\
         <openid><![CDATA[o000000000000000000000000001]]></openid>\n\
         <out_trade_no><![CDATA[{order_no}]]></out_trade_no>\n\
         <result_code><![CDATA[SUCCESS]]></result_code>\n\
         <return_code><![CDATA[SUCCESS]]></return_code>\n\
         <sign><![CDATA[{sign}]]></sign>\n\
         <time_end><![CDATA[20261201120000]]></time_end>\n\
         <total_fee>100</total_fee>\n\
         <trade_type><![CDATA[JSAPI]]></trade_type>\n\
         <transaction_id><![CDATA[{transaction_id}]]></transaction_id>\n\
         </xml>"
    )
    .into_bytes()
}

const ORDER_1: &str = "20261201HmacOrder0000000001";
const TX_1: &str = "4200000000202612010000000001";
const HMAC_1: &str = "30BB8226E20D8EFA90A5DD54006B460DE3EED077B01FB832367B7E83F896FF48";
const MD5_1: &str = "2AC69CFE844E6CDB14AF11CDA2E86DD0";
const ORDER_2: &str = "20261201HmacOrder0000000002";
const TX_2: &str = "4200000000202612010000000002";
const HMAC_2: &str = "A95EE02EC710449A117365917B3C48EAAC629B3567FCFB55BB724154242DDD94";
const MD5_2: &str = "3AC95EE768A1B8F5DCC3756778A783C3";

async fn hmac_notifies_without_sign_type_verify_with_the_orders_algorithm(backend: Backend) {
    // An HMAC-SHA256 merchant; order 1 predates the kept sign_type (''), so the configured
    // one applies.
    let env = Env::with(backend, |c| c.sign_type = "HMAC-SHA256".into()).await;
    insert_paying_order(&env, ORDER_1, "").await;
    // An MD5-signed notify without sign_type for an HMAC order is not accepted.
    let md5 = env.notify(&wechat_notify(ORDER_1, TX_1, MD5_1)).await;
    assert_eq!(
        (md5.verdict.as_str(), md5.accepted),
        ("bad_signature", false)
    );
    let reply = env.notify(&wechat_notify(ORDER_1, TX_1, HMAC_1)).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("applied", true),
        "{reply:?}"
    );
    let paid = env.get(ORDER_1, 1).await.unwrap();
    assert_eq!(
        (state(&paid), paid.transaction_id.as_str()),
        (PbState::Paid, TX_1)
    );

    // The merchant switched to MD5 since order 2 was placed with HMAC-SHA256: the order's
    // algorithm decides, both ways.
    let env = Env::new(backend).await;
    assert_eq!(env.config.sign_type, "MD5");
    insert_paying_order(&env, ORDER_2, "HMAC-SHA256").await;
    let md5 = env.notify(&wechat_notify(ORDER_2, TX_2, MD5_2)).await;
    assert_eq!(
        (md5.verdict.as_str(), md5.accepted),
        ("bad_signature", false)
    );
    let reply = env.notify(&wechat_notify(ORDER_2, TX_2, HMAC_2)).await;
    assert_eq!((reply.verdict.as_str(), reply.accepted), ("applied", true));
    assert_eq!(state(&env.get(ORDER_2, 1).await.unwrap()), PbState::Paid);
}

async fn failed_payment_and_return_fail_notifies_are_acknowledged_and_change_nothing(
    backend: Backend,
) {
    let env = Env::new(backend).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    let before = env.get(&no, 1).await.unwrap();

    // A failed payment (result_code FAIL, err_code NOTENOUGH): signed, but with no
    // transaction_id, total_fee, openid or time_end.
    let failed = signed_notify(
        &[
            ("return_code", "SUCCESS"),
            ("return_msg", "OK"),
            ("appid", DEV_APP_ID),
            ("mch_id", DEV_MCH_ID),
            ("nonce_str", "abcdefghijklmnop"),
            ("result_code", "FAIL"),
            ("err_code", "NOTENOUGH"),
            ("err_code_des", "余额不足"),
            ("trade_type", "JSAPI"),
            ("out_trade_no", no.as_str()),
        ],
        DEV_PAY_KEY,
    );
    let reply = env.notify(&failed).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("payment_failed", true),
        "{reply:?}"
    );
    assert!(reply.reply_xml.contains("SUCCESS"), "{}", reply.reply_xml);
    // The same with a wrong signature is refused.
    let forged = String::from_utf8(failed.clone())
        .unwrap()
        .replace("NOTENOUGH", "ORDERCLOSED");
    let reply = env.notify(forged.as_bytes()).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("bad_signature", false)
    );

    // return_code FAIL: unsigned, no payment; acknowledged so it is not retried for nothing.
    let return_fail = format!(
        "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[参数格式校验错误]]></return_msg><out_trade_no>{no}</out_trade_no></xml>"
    );
    let reply = env.notify(return_fail.as_bytes()).await;
    assert_eq!(
        (reply.verdict.as_str(), reply.accepted),
        ("return_fail", true)
    );
    assert!(reply.reply_xml.contains("SUCCESS"), "{}", reply.reply_xml);

    assert_eq!(env.get(&no, 1).await.unwrap(), before);
    // The real payment still applies afterwards.
    env.sandbox_pay(&prepared, None).await;
    eventually(|| async { state(&env.get(&no, 1).await.unwrap()) == PbState::Paid }).await;
}

/// A stand-in for a slow WeChat in front of the sandbox: forwards every Pay call and counts the
/// orderqueries per out_trade_no. The first orderquery "takes" 5 minutes of the services'
/// clock (longer than a reconcile lease); the second is held until the test lets it go.
struct SlowWechat {
    base_url: String,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    holding: Arc<AtomicBool>,
    release: Arc<Notify>,
}

impl SlowWechat {
    async fn start(sandbox_base: String, clock: Clock) -> Self {
        let (queries, calls, holding, release) = (
            Arc::<Mutex<HashMap<String, usize>>>::default(),
            Arc::<AtomicUsize>::default(),
            Arc::<AtomicBool>::default(),
            Arc::new(Notify::new()),
        );
        let (q, c, h, n) = (
            queries.clone(),
            calls.clone(),
            holding.clone(),
            release.clone(),
        );
        let http = reqwest::Client::new();
        let server = TestServer::start(move |r: TestRequest| {
            let (queries, calls, holding, release) = (q.clone(), c.clone(), h.clone(), n.clone());
            let (http, sandbox, clock) = (http.clone(), sandbox_base.clone(), clock.clone());
            async move {
                if r.path() == "/pay/orderquery" {
                    let order_no = wechat::pay::xml::parse(&r.body)
                        .ok()
                        .and_then(|f| f.get("out_trade_no").cloned())
                        .unwrap_or_default();
                    *queries.lock().unwrap().entry(order_no).or_default() += 1;
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 => clock.advance(300),
                        1 => {
                            let released = release.notified();
                            holding.store(true, Ordering::SeqCst);
                            released.await;
                        }
                        _ => {}
                    }
                }
                forward(&http, &sandbox, &r).await
            }
        })
        .await;
        Self {
            base_url: server.base(),
            queries,
            holding,
            release,
        }
    }

    fn queries(&self) -> HashMap<String, usize> {
        self.queries.lock().unwrap().clone()
    }
}

async fn reconcilers_with_a_slow_wechat_ask_once_per_order(backend: Backend) {
    // One query at a time: the stand-in below moves the services' clock by 5 minutes during
    // the first order's query, which must happen before the second order is claimed. (With
    // several queries at once both orders are claimed together, and that jump would expire
    // the second one's lease while its own query is in flight: the case of one call outlasting
    // the lease, counted by wxmp_pay_reconcile_lease_lost_total.)
    let env = Env::with(backend, |c| {
        c.reconcile_after_secs = 60;
        c.reconcile_concurrency = 1;
    })
    .await;
    // Two PAYING orders whose payer never paid: each orderquery answers NOTPAY, so nothing
    // changes and every query is the reconcilers' doing.
    let mut orders = Vec::new();
    for user in 1..=2 {
        let prepared = env
            .prepare(&principal(user), Target::ProductId("coins".into()))
            .await
            .unwrap();
        orders.push(prepared.order.unwrap().order_no);
    }
    env.clock.advance(60); // both are due
    let slow = SlowWechat::start(env.sandbox.base_url.clone(), env.clock.clone()).await;
    let mut config = env.config.clone();
    config.wechat_pay_base = slow.base_url.clone();
    let replica = || Payments::new(&config, env.pay.database().clone(), env.clock.clone()).unwrap();
    let (a, b) = (replica(), replica());

    // A's first orderquery takes 5 minutes; its second is in flight while B runs a whole pass.
    let pass_a = tokio::spawn(async move { a.reconcile_once().await });
    let holding = slow.holding.clone();
    eventually(|| {
        let holding = holding.clone();
        async move { AtomicBool::load(&holding, Ordering::SeqCst) }
    })
    .await;
    let report_b = b.reconcile_once().await.unwrap();
    slow.release.notify_one();
    let report_a = pass_a.await.unwrap().unwrap();

    assert_eq!(report_a.queried, 2, "{report_a:?}");
    // B found one order just answered (not due again) and the other under A's fresh lease.
    assert_eq!(report_b.queried, 0, "{report_b:?}");
    let queries = slow.queries();
    for no in &orders {
        assert_eq!(queries.get(no), Some(&1), "{queries:?}");
        let row = store::find_order(env.pay.database(), no)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state(), Some(OrderState::Paying));
        assert_eq!(
            (
                row.reconcile_lease_until,
                row.reconcile_lease_owner.as_str()
            ),
            (0, ""),
            "released"
        );
        assert!(row.next_query_at > env.clock.now(), "{row:?}");
    }
}

async fn a_late_release_leaves_the_new_lease_alone(backend: Backend) {
    let env = Env::new(backend).await;
    let order = env.create(1, 100, "lease me", "").await.unwrap();
    let (db, no, t) = (env.pay.database(), order.order_no.as_str(), env.clock.now());
    let a = store::claim(db, no, t, t + 120).await.unwrap().unwrap();
    assert_eq!(store::claim(db, no, t + 10, t + 130).await.unwrap(), None);
    // A's lease ran out (a slow WeChat); B takes the order.
    let b = store::claim(db, no, t + 130, t + 250)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a.owner, b.owner);
    // A's late release must not free B's lease.
    assert!(!store::release(db, no, &a, Some(t + 999)).await.unwrap());
    let row = store::find_order(db, no).await.unwrap().unwrap();
    assert_eq!(
        (
            row.reconcile_lease_until,
            &row.reconcile_lease_owner,
            row.next_query_at
        ),
        (t + 250, &b.owner, 0)
    );
    assert_eq!(store::claim(db, no, t + 140, t + 260).await.unwrap(), None);
    assert!(store::release(db, no, &b, None).await.unwrap());
    assert!(
        store::claim(db, no, t + 140, t + 260)
            .await
            .unwrap()
            .is_some()
    );
}

async fn a_double_tap_pays_one_order(backend: Backend) {
    let env = Env::new(backend).await;
    let buyer = principal(1);
    let coins = || Target::ProductId("coins".into());
    // Without a key: two taps in a row are one order and one prepay_id.
    let first = env.prepare(&buyer, coins()).await.unwrap();
    let second = env.prepare(&buyer, coins()).await.unwrap();
    let no = first.order.clone().unwrap().order_no;
    assert_eq!(second.order.clone().unwrap().order_no, no);
    assert_eq!(prepay_id(&second), prepay_id(&first));
    // Another product, or another user, is another order.
    let vip = env
        .prepare(&buyer, Target::ProductId("vip".into()))
        .await
        .unwrap();
    assert_ne!(vip.order.unwrap().order_no, no);
    let other = env.prepare(&principal(2), coins()).await.unwrap();
    assert_ne!(other.order.unwrap().order_no, no);
    // After the window, a tap is a new purchase.
    env.clock
        .advance(pay_service::config::DEFAULT_PRODUCT_REUSE_SECS as i64 + 1);
    let later = env.prepare(&buyer, coins()).await.unwrap();
    assert_ne!(later.order.clone().unwrap().order_no, no);
    // A paid order is never reused.
    env.sandbox_pay(&later, None).await;
    let later_no = later.order.unwrap().order_no;
    eventually(|| async { state(&env.get(&later_no, 1).await.unwrap()) == PbState::Paid }).await;
    let after_paid = env.prepare(&buyer, coins()).await.unwrap();
    assert_ne!(after_paid.order.unwrap().order_no, later_no);

    // With a key: concurrent taps agree on one order; the key for another product conflicts.
    let buyer3 = principal(3);
    let keyed =
        futures::future::join_all((0..4).map(|_| env.prepare_keyed(&buyer3, coins(), "tap-1")))
            .await;
    let numbers: Vec<String> = keyed
        .iter()
        .map(|r| r.as_ref().unwrap().order.clone().unwrap().order_no)
        .collect();
    assert!(numbers.iter().all(|n| *n == numbers[0]), "{numbers:?}");
    let err = env
        .prepare_keyed(&principal(3), Target::ProductId("vip".into()), "tap-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::IdempotencyConflict);
    // A new key is a new order, even inside the window.
    let fresh = env
        .prepare_keyed(&principal(3), coins(), "tap-2")
        .await
        .unwrap();
    assert_ne!(fresh.order.unwrap().order_no, numbers[0]);
    let bad = env
        .prepare_keyed(&principal(3), coins(), &"k".repeat(129))
        .await
        .unwrap_err();
    assert_eq!(reason(&bad), ErrorReason::InvalidArgument);

    // PAY_PRODUCT_REUSE_SECS=0 turns the keyless reuse off.
    let env = Env::with(backend, |c| c.product_reuse_secs = 0).await;
    let a = env.prepare(&buyer, coins()).await.unwrap();
    let b = env.prepare(&buyer, coins()).await.unwrap();
    assert_ne!(a.order.unwrap().order_no, b.order.unwrap().order_no);
}

/// (raw_body, body_sha256, body_len, verdict) of every stored notify, oldest first.
async fn stored_notifies(env: &Env) -> Vec<(String, String, i64, String)> {
    async fn load(
        db: &service_kit::db::Database,
    ) -> Result<Vec<(String, String, i64, String)>, pay_service::Error> {
        Ok(service_kit::with_conn!(db, |conn| {
            pay_notifications::table
                .order(pay_notifications::id.asc())
                .select((
                    pay_notifications::raw_body,
                    pay_notifications::body_sha256,
                    pay_notifications::body_len,
                    pay_notifications::verdict,
                ))
                .load(conn)
                .await
        })?)
    }
    load(env.pay.database()).await.unwrap()
}

async fn only_verified_notifies_are_kept_whole_and_old_ones_are_pruned(backend: Backend) {
    let env = Env::with(backend, |c| c.notify_retention_days = 1).await;
    let prepared = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = prepared.order.unwrap().order_no;
    let padding = "x".repeat(4000);
    // Anyone's garbage: an unsigned notify with a 4 KB field.
    let forged = signed_notify(
        &notify_fields(&no, "100", &[("attach", &padding)]),
        "not the merchant key",
    );
    let genuine = signed_notify(&notify_fields(&no, "100", &[]), DEV_PAY_KEY);
    assert_eq!(env.notify(&forged).await.verdict, "bad_signature");
    assert_eq!(
        env.notify(b"junk that is not xml").await.verdict,
        "malformed"
    );
    assert_eq!(env.notify(&genuine).await.verdict, "applied");

    let rows = stored_notifies(&env).await;
    assert_eq!(rows.len(), 3);
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    assert_eq!(rows[0].0.as_bytes(), &forged[..64]);
    assert_eq!(
        (&rows[0].1, rows[0].2),
        (&sha(&forged), forged.len() as i64)
    );
    assert_eq!(rows[1].0, "junk that is not xml");
    assert_eq!(rows[1].1, sha(b"junk that is not xml"));
    assert_eq!(rows[2].0.as_bytes(), &genuine[..]);
    assert_eq!(
        (&rows[2].1, rows[2].2, rows[2].3.as_str()),
        (&sha(&genuine), genuine.len() as i64, "applied")
    );

    // A day and a bit later, the reconciler deletes them; a notify received now stays.
    env.clock.advance(86_400 + 1);
    assert_eq!(env.notify(b"fresh junk").await.verdict, "malformed");
    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(report.pruned_notifies, 3, "{report:?}");
    let rows = stored_notifies(&env).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "fresh junk");
}

/// Sets columns of an order behind the service's back: what a drifted row looks like.
async fn force_new_unifiedorder(env: &Env, order_no: &str, description: Option<&str>) {
    async fn update(
        db: &service_kit::db::Database,
        order_no: &str,
        description: Option<&str>,
    ) -> Result<usize, pay_service::Error> {
        Ok(service_kit::with_conn!(db, |conn| {
            let target = orders::table.filter(orders::order_no.eq(order_no));
            match description {
                Some(d) => {
                    diesel::update(target)
                        .set((orders::prepay_expires_at.eq(0), orders::description.eq(d)))
                        .execute(conn)
                        .await
                }
                None => {
                    diesel::update(target)
                        .set(orders::prepay_expires_at.eq(0))
                        .execute(conn)
                        .await
                }
            }
        })?)
    }
    assert_eq!(
        update(env.pay.database(), order_no, description)
            .await
            .unwrap(),
        1
    );
}

/// A retry of the order's placement (unifiedorder, v3 JSAPI 下单) after the configuration
/// changed is the first request, byte for byte: WeChat answers the same prepay_id.
async fn a_unifiedorder_retry_is_the_first_ones_request(backend: Backend, api: Api) {
    let env = Env::on(backend, api).await;
    let first = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    let no = first.order.clone().unwrap().order_no;
    let placed = env.wechat_order(&no).await;
    assert_eq!(placed["notify_url"], env.wechat_notify_url().as_str());
    // v2 signs with the merchant's sign type; v3 has none to choose (always RSA).
    let sign_type = match api {
        Api::V2 => serde_json::json!("MD5"),
        Api::V3 => serde_json::Value::Null,
    };
    assert_eq!(placed["sign_type"], sign_type);

    // The configuration changed (another notify URL, HMAC-SHA256) on the replica that retries
    // the unifiedorder (the held prepay_id is no longer usable).
    let mut drifted = env.config.clone();
    drifted.notify_url = "https://elsewhere.example/pay/notify".into();
    drifted.sign_type = "HMAC-SHA256".into();
    let other = Payments::new(&drifted, env.pay.database().clone(), env.clock.clone()).unwrap();
    force_new_unifiedorder(&env, &no, None).await;
    let (order, params) = other
        .prepare_jsapi_payment(&payer(1), PayTarget::Order(no.clone()), "203.0.113.7", "")
        .await
        .unwrap();
    // WeChat saw the identical request and answered the same prepay_id.
    assert_eq!(params.package, format!("prepay_id={}", prepay_id(&first)));
    assert_eq!(order.state(), Some(OrderState::Paying));
    assert_eq!(
        (order.notify_url.as_str(), order.sign_type.as_str()),
        (env.config.notify_url.as_str(), "MD5")
    );
    // The phone's paySign must use the placement's algorithm (v2 MD5, v3 RSA).
    let params = wxmp_proto::pay::v1::JsapiParams {
        app_id: params.app_id,
        time_stamp: params.time_stamp,
        nonce_str: params.nonce_str,
        package: params.package,
        sign_type: params.sign_type,
        pay_sign: params.pay_sign,
    };
    let expected = match api {
        Api::V2 => "MD5",
        Api::V3 => "RSA",
    };
    assert_eq!(params.sign_type, expected);
    assert!(super::pay_sign_verifies(api, &params));
    let placed = env.wechat_order(&no).await;
    assert_eq!(placed["notify_url"], env.wechat_notify_url().as_str());
    assert_eq!(placed["sign_type"], sign_type);

    // WeChat holds the number with other parameters (v2 "201 商户订单号重复", v3 403
    // OUT_TRADE_NO_USED): a clear ORDER_STATE, not a WeChat failure, and nothing changes.
    force_new_unifiedorder(&env, &no, Some("something else")).await;
    let before = env.get(&no, 1).await.unwrap();
    let err = env
        .prepare(&principal(1), Target::OrderNo(no.clone()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState, "{err:?}");
    assert_eq!(env.get(&no, 1).await.unwrap(), before);
}

async fn orders_are_read_for_a_user_or_by_an_explicit_admin(backend: Backend) {
    use tonic::Request;
    use wxmp_proto::pay::v1::{self as pb, pay_service_server::PayService};

    let env = Env::new(backend).await;
    let order = env.create(5, 100, "mine", "").await.unwrap();
    let (pay, no) = (&env.pay, order.order_no.as_str());
    let get = move |user_id: i64, internal_admin: bool| {
        PayService::get_order(
            pay,
            Request::new(pb::GetOrderRequest {
                order_no: no.to_owned(),
                user_id,
                internal_admin,
            }),
        )
    };
    // user_id 0 is not "any user".
    let err = get(0, false).await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::MissingParameter);
    let err = get(-5, false).await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::InvalidArgument);
    let err = get(5, true).await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::InvalidArgument);
    let err = get(6, false).await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::NotFound);
    assert_eq!(
        get(5, false).await.unwrap().into_inner().order.unwrap(),
        order
    );
    assert_eq!(
        get(0, true).await.unwrap().into_inner().order.unwrap(),
        order
    );

    let close = move |user_id: i64, internal_admin: bool| {
        PayService::close_order(
            pay,
            Request::new(pb::CloseOrderRequest {
                order_no: no.to_owned(),
                user_id,
                internal_admin,
            }),
        )
    };
    let err = close(0, false).await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::MissingParameter);
    assert_eq!(
        state(&env.get(&order.order_no, 5).await.unwrap()),
        PbState::Created
    );
    let closed = close(0, true).await.unwrap().into_inner().order.unwrap();
    assert_eq!(state(&closed), PbState::Closed);
}
