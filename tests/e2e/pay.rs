//! WeChat Pay end to end: /pay/ → unifiedorder at the sandbox → the user pays → the signed
//! notify reaches /pay/notify → the order is PAID exactly once, whatever WeChat repeats or drops.

use std::time::Duration;

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use sandbox::wx::{self, SignType};
use serde_json::{Value, json};
use service_kit::db::{Database, DbError, PoolOptions};
use wxmp_tests::{
    Backend, TestStack, eventually, on_both_backends, order_and_prepay, request_payment,
};

diesel::table! {
    pay_notifications (id) {
        id -> BigInt,
        out_trade_no -> Text,
        raw_body -> Text,
        verdict -> Text,
    }
}

/// (verdict, raw_body) of every notify pay-service received for `order_no`, oldest first.
async fn notifications(t: &TestStack, order_no: &str) -> Vec<(String, String)> {
    async fn query(url: &str, order_no: &str) -> Result<Vec<(String, String)>, DbError> {
        let db = Database::connect(url, PoolOptions::default())?;
        let order_no = order_no.to_owned();
        Ok(service_kit::with_conn!(&db, |conn| {
            pay_notifications::table
                .filter(pay_notifications::out_trade_no.eq(&order_no))
                .order(pay_notifications::id)
                .select((pay_notifications::verdict, pay_notifications::raw_body))
                .load::<(String, String)>(conn)
                .await
        })?)
    }
    query(&t.pay_database_url, order_no)
        .await
        .expect("read pay_notifications")
}

async fn pay_for(t: &TestStack, token: &str, target: Value) -> (StatusCode, Value) {
    let mut body = target;
    body["token"] = json!(token);
    t.post(&t.gateway("/pay/"), body).await
}

/// The phone pays with the `wx.requestPayment` parameters of `/pay/`'s answer (`params` is
/// its `data`); the sandbox checks their paySign as WeChat does.
async fn sandbox_pays(t: &TestStack, params: &Value) {
    let phone = request_payment(params).expect("wx.requestPayment parameters");
    t.sandbox_pay(&phone, "success", None).await;
}

const PAID_WITHIN: Duration = Duration::from_secs(20);

/// The embedded stack with new orders placed on Pay v3 (`--pay-api v3`, the sandbox's dev keys)
/// or on v2.
async fn start_on(backend: Backend, v3: bool) -> TestStack {
    TestStack::start_with(backend, |o| {
        if v3 {
            o.pay_args.extend(["--pay-api", "v3"].map(String::from));
        }
    })
    .await
}

/// The order as WeChat (the sandbox) holds it, on the API that placed it.
async fn at_wechat(t: &TestStack, v3: bool, order_no: &str) -> Value {
    if !v3 {
        return t.sandbox_order(order_no).await;
    }
    t.http
        .get(t.sandbox(&format!("/sandbox/v3/orders/{order_no}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn buy_a_product(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, _) = t.login(None).await;
    // The client's amount is never used: the product's price is.
    let (status, answer) = pay_for(
        &t,
        &token,
        json!({ "product_id": "coffee", "total_fee": 1, "amount_fen": 1 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["code"], 200);
    let params = &answer["data"];
    for key in [
        "timeStamp",
        "nonceStr",
        "package",
        "signType",
        "paySign",
        "order_no",
    ] {
        assert!(
            params[key].as_str().is_some_and(|v| !v.is_empty()),
            "{key} in {params}"
        );
    }
    // The second signature verifies with the merchant key, as WeChat's client checks it
    // (with the sandbox's WeChat-side code; /sandbox/pay below checks it again).
    assert_eq!(params["appId"], sandbox::DEV_APP_ID);
    let fields: wx::Pairs = ["appId", "timeStamp", "nonceStr", "package", "signType"]
        .map(|k| (k.to_owned(), params[k].as_str().unwrap().to_owned()))
        .into();
    let sign_type: SignType = params["signType"].as_str().unwrap().parse().unwrap();
    assert!(wx::verify(
        &fields,
        sandbox::DEV_PAY_KEY,
        sign_type,
        params["paySign"].as_str().unwrap()
    ));

    let order_no = params["order_no"].as_str().unwrap();
    let order = t
        .wait_for_order_state(&token, order_no, "PAYING", Duration::ZERO)
        .await;
    assert_eq!(order["amount_fen"], 1800, "{order}");

    sandbox_pays(&t, params).await;
    let order = t
        .wait_for_order_state(&token, order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(order["state"], "PAID", "{order}");
    assert!(
        order["transaction_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{order}"
    );
    let verdicts: Vec<String> = notifications(&t, order_no)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(verdicts, ["applied"]);
}
on_both_backends!(workers = 4; buy_a_product as a_product_is_paid_and_the_notify_applied);

async fn duplicate_notifies(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, _) = t.login(None).await;
    t.faults(json!({ "duplicate_notify": 5 })).await;
    let (_, answer) = pay_for(&t, &token, json!({ "product_id": "tea" })).await;
    let params = answer["data"].clone();
    let order_no = params["order_no"].as_str().unwrap().to_owned();
    sandbox_pays(&t, &params).await;
    let paid = t
        .wait_for_order_state(&token, &order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(paid["state"], "PAID");

    // Wait until all five concurrent copies are in, then replay one five times more at once.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = notifications(&t, &order_no).await;
        if seen.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = seen.into_iter().next().expect("a stored notify").1;
    let replays = (0..5).map(|_| {
        t.http
            .post(t.gateway("/pay/notify"))
            .header("content-type", "text/xml")
            .body(raw.clone())
            .send()
    });
    for reply in futures::future::join_all(replays).await {
        let reply = reply.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        assert!(
            reply
                .text()
                .await
                .unwrap()
                .contains("<return_code><![CDATA[SUCCESS]]>")
        );
    }

    let verdicts: Vec<String> = notifications(&t, &order_no)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(
        verdicts.iter().filter(|v| *v == "applied").count(),
        1,
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts.iter().filter(|v| *v == "duplicate").count(),
        verdicts.len() - 1,
        "{verdicts:?}"
    );
    assert!(verdicts.len() >= 10, "{verdicts:?}");
    let again = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::ZERO)
        .await;
    assert_eq!(again["paid_at"], paid["paid_at"]);
    assert_eq!(again["transaction_id"], paid["transaction_id"]);
}
on_both_backends!(workers = 4; duplicate_notifies as duplicate_notifies_make_one_transition);

/// A notify for `order_no` as WeChat would send it, with `tweak` applied before signing.
fn notify_xml(
    order_no: &str,
    total_fee: &str,
    key: &str,
    tweak: impl FnOnce(&mut Vec<(&'static str, String)>),
) -> String {
    let mut fields: Vec<(&'static str, String)> = vec![
        ("appid", sandbox::DEV_APP_ID.to_owned()),
        ("mch_id", sandbox::DEV_MCH_ID.to_owned()),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS".to_owned()),
        ("result_code", "SUCCESS".to_owned()),
        ("return_code", "SUCCESS".to_owned()),
        ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".to_owned()),
        ("trade_type", "JSAPI".to_owned()),
        ("bank_type", "CMC".to_owned()),
        ("total_fee", total_fee.to_owned()),
        ("cash_fee", total_fee.to_owned()),
        ("fee_type", "CNY".to_owned()),
        ("transaction_id", "4200000000000000000000000001".to_owned()),
        ("out_trade_no", order_no.to_owned()),
        ("time_end", "20261125120000".to_owned()),
    ];
    tweak(&mut fields);
    // Signed and written by the sandbox's WeChat-side code, not by the library under test.
    let mut all: wx::Pairs = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let signature = wx::sign(&all, key, SignType::Md5);
    all.push(("sign".to_owned(), signature));
    wx::to_xml(&all)
}

async fn forged_notifies(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, _) = t.login(None).await;
    let (_, answer) = pay_for(&t, &token, json!({ "product_id": "coffee" })).await;
    let order_no = answer["data"]["order_no"].as_str().unwrap().to_owned();
    let key = sandbox::DEV_PAY_KEY;
    let forged = [
        (
            "forged signature",
            notify_xml(
                &order_no,
                "1800",
                "not-the-merchant-key-000000000000",
                |_| {},
            ),
        ),
        ("wrong amount", notify_xml(&order_no, "1", key, |_| {})),
        (
            "wrong mch_id",
            notify_xml(&order_no, "1800", key, |f| {
                f.iter_mut()
                    .filter(|(k, _)| *k == "mch_id")
                    .for_each(|(_, v)| *v = "1234567890".into());
            }),
        ),
        (
            "unknown order",
            notify_xml("NOSUCHORDER000000000000000001", "1800", key, |_| {}),
        ),
        ("not xml", "{\"return_code\":\"SUCCESS\"}".to_owned()),
        (
            "doctype",
            format!(
                "<!DOCTYPE x [<!ENTITY e \"e\">]>{}",
                notify_xml(&order_no, "1800", key, |_| {})
            ),
        ),
    ];
    for (what, body) in forged {
        let reply = t
            .http
            .post(t.gateway("/pay/notify"))
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .unwrap();
        let text = reply.text().await.unwrap();
        assert!(
            text.contains("<return_code><![CDATA[FAIL]]>"),
            "{what}: {text}"
        );
    }
    let order = t
        .wait_for_order_state(&token, &order_no, "PAYING", Duration::ZERO)
        .await;
    assert_eq!(order["state"], "PAYING", "nothing changed: {order}");
    // A genuine notify still applies afterwards.
    let genuine = notify_xml(&order_no, "1800", key, |_| {});
    let reply = t
        .http
        .post(t.gateway("/pay/notify"))
        .body(genuine)
        .send()
        .await
        .unwrap();
    assert!(reply.text().await.unwrap().contains("SUCCESS"));
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::ZERO)
        .await;
    assert_eq!(order["state"], "PAID");
}
on_both_backends!(workers = 4; forged_notifies as forged_notifies_fail_and_change_nothing);

/// WeChat's notify never comes (drop_notify): the reconciler asks WeChat (v2 orderquery, v3
/// 查询订单, by the order's API) and applies the payment; no notify is on record.
async fn dropped_notify(backend: Backend, v3: bool) {
    let t = TestStack::start_with(backend, |o| {
        o.pay_args.extend(
            [
                "--reconcile-interval-secs",
                "1",
                "--reconcile-after-secs",
                "0",
            ]
            .map(String::from),
        );
        if v3 {
            o.pay_args.extend(["--pay-api", "v3"].map(String::from));
        }
    })
    .await;
    let (token, _) = t.login(None).await;
    t.faults(json!({ "drop_notify": true })).await;
    let (_, answer) = pay_for(&t, &token, json!({ "product_id": "coffee" })).await;
    let params = answer["data"].clone();
    assert_eq!(
        params["signType"],
        if v3 { "RSA" } else { "MD5" },
        "{params}"
    );
    let order_no = params["order_no"].as_str().unwrap().to_owned();
    sandbox_pays(&t, &params).await;
    let at_wechat = at_wechat(&t, v3, &order_no).await;
    assert_eq!(at_wechat["notify_state"], "dropped", "{at_wechat}");
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(
        order["state"], "PAID",
        "the reconciler applied the missed payment: {order}"
    );
    assert!(
        notifications(&t, &order_no).await.is_empty(),
        "no notify ever came"
    );
}

async fn dropped_notify_v2(backend: Backend) {
    dropped_notify(backend, false).await;
}
on_both_backends!(workers = 4; dropped_notify_v2 as a_dropped_notify_is_repaired_by_the_reconciler);

async fn dropped_notify_v3(backend: Backend) {
    dropped_notify(backend, true).await;
}
on_both_backends!(workers = 4; dropped_notify_v3 as a_dropped_v3_notify_is_repaired_by_the_reconciler);

async fn prepay_reuse_and_ownership(backend: Backend, v3: bool) {
    let t = start_on(backend, v3).await;
    let (alice, _) = t.login(None).await;
    let (bob, _) = t.login(None).await;
    let (_, first) = pay_for(&t, &alice, json!({ "product_id": "coffee" })).await;
    let order_no = first["data"]["order_no"].as_str().unwrap().to_owned();
    let (status, second) = pay_for(&t, &alice, json!({ "order_no": order_no })).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second["data"]["package"], first["data"]["package"],
        "the prepay_id is reused"
    );

    let (status, stolen) = pay_for(&t, &bob, json!({ "order_no": order_no })).await;
    assert!(
        matches!(stolen["code"].as_i64(), Some(206 | 207)),
        "{stolen}"
    );
    assert!(status.is_client_error());
    let (status, peek) = t
        .get(&t.gateway(&format!("/orders/{order_no}")), &bob)
        .await;
    assert_eq!(
        (status, peek["code"].clone()),
        (StatusCode::NOT_FOUND, json!(207)),
        "{peek}"
    );
    let (status, traversal) = t
        .get(&t.gateway("/orders/..%2F..%2Fetc%2Fpasswd"), &alice)
        .await;
    assert!(status.is_client_error(), "{traversal}");
}
async fn prepay_reuse_and_ownership_v2(backend: Backend) {
    prepay_reuse_and_ownership(backend, false).await;
}
on_both_backends!(workers = 4; prepay_reuse_and_ownership_v2 as a_second_pay_reuses_the_prepay_id_and_only_the_owner_pays);
async fn prepay_reuse_and_ownership_v3(backend: Backend) {
    prepay_reuse_and_ownership(backend, true).await;
}
on_both_backends!(workers = 4; prepay_reuse_and_ownership_v3 as on_v3_a_second_pay_reuses_the_prepay_id_and_only_the_owner_pays);

/// `/sandbox/pay` plays the phone's `wx.requestPayment`: a paySign WeChat would not accept
/// ends in the fail callback and nothing is paid; the genuine parameters pay.
async fn wrong_pay_sign(backend: Backend, v3: bool) {
    let t = start_on(backend, v3).await;
    let (token, _) = t.login(None).await;
    let (_, answer) = t.pay_product(&token, "coffee").await;
    let (order_no, phone) =
        order_and_prepay(&answer).unwrap_or_else(|| panic!("wx.requestPayment params in {answer}"));
    let mut forged = phone.clone();
    let pay_sign = phone["paySign"].as_str().unwrap();
    let flipped = if pay_sign.starts_with('A') { "B" } else { "A" };
    forged["paySign"] = json!(format!("{flipped}{}", &pay_sign[1..]));
    let mut replayed = phone.clone();
    replayed["timeStamp"] = json!("1500000000");
    for (what, body) in [("forged paySign", forged), ("other timeStamp", replayed)] {
        let (status, refused) = t.sandbox_pay_answer(&body, "success", None).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("request_payment_fail")),
            "{what}: {refused}"
        );
    }
    // Nothing was paid, at WeChat or here.
    let at_wechat = at_wechat(&t, v3, &order_no).await;
    assert_eq!(
        (
            at_wechat["trade_state"].as_str(),
            at_wechat["notify_state"].as_str()
        ),
        (Some("NOTPAY"), Some("none")),
        "{at_wechat}"
    );
    let order = t
        .wait_for_order_state(&token, &order_no, "PAYING", Duration::ZERO)
        .await;
    assert_eq!(order["state"], "PAYING", "{order}");

    t.sandbox_pay(&phone, "success", None).await;
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(order["state"], "PAID", "{order}");
}
async fn wrong_pay_sign_v2(backend: Backend) {
    wrong_pay_sign(backend, false).await;
}
on_both_backends!(workers = 4; wrong_pay_sign_v2 as a_wrong_pay_sign_is_refused_by_the_phone);
async fn wrong_pay_sign_v3(backend: Backend) {
    wrong_pay_sign(backend, true).await;
}
on_both_backends!(workers = 4; wrong_pay_sign_v3 as on_v3_a_wrong_pay_sign_is_refused_by_the_phone);

/// WeChat's notify was refused for a while (bad signatures), the reconciler repaired the
/// order from orderquery, then WeChat's next retry is genuine: answered SUCCESS as a
/// duplicate, and the order keeps the reconciler's payment.
async fn late_notify_after_repair(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.pay_args.extend(
            [
                "--reconcile-interval-secs",
                "1",
                "--reconcile-after-secs",
                "0",
            ]
            .map(String::from),
        );
        // The deliberately bad notifies from 127.0.0.1 must not lock the genuine one out.
        o.gateway_args
            .extend(["--notify-fail-limit", "0"].map(String::from));
    })
    .await;
    let (token, _) = t.login(None).await;
    // Global faults are read at each attempt: every notify fails until they are cleared.
    t.faults(json!({ "notify_bad_signature": true })).await;
    let (_, answer) = t.pay_product(&token, "tea").await;
    let (order_no, phone) = order_and_prepay(&answer).unwrap();
    t.sandbox_pay(&phone, "success", None).await;
    let repaired = t
        .wait_for_order_state(&token, &order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(repaired["state"], "PAID", "{repaired}");
    let before: Vec<String> = notifications(&t, &order_no)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert!(
        !before.iter().any(|v| v == "applied"),
        "the reconciler, not a notify, paid it: {before:?}"
    );

    t.faults(json!({})).await;
    let accepted = eventually(PAID_WITHIN, || async {
        let order = t.sandbox_order(&order_no).await;
        (order["notify_state"] == "accepted").then_some(order)
    })
    .await;
    assert!(accepted.is_some(), "WeChat's retry was answered SUCCESS");
    let verdicts: Vec<String> = notifications(&t, &order_no)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(
        verdicts.last().map(String::as_str),
        Some("duplicate"),
        "{verdicts:?}"
    );
    assert!(!verdicts.iter().any(|v| v == "applied"), "{verdicts:?}");
    let after = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::ZERO)
        .await;
    assert_eq!(after, repaired);
}
on_both_backends!(workers = 4; late_notify_after_repair as a_late_notify_after_the_reconciler_repaired_the_order_is_a_duplicate);

/// Item 0 of issue 19: with `WXMP_PAY_SIGN_TYPE=HMAC-SHA256` WeChat signs the payment notify
/// with HMAC-SHA256 and sends NO `sign_type` (WxJava issue 1585, easy-swoole/pay issue 38;
/// the sandbox does the same). WeChat's first notify must be answered SUCCESS with the
/// verdict `applied` — not repaired by the reconciler, kept away here. Failed while the
/// library fell back to MD5 for a notify without `sign_type`.
async fn hmac_merchant_notify(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.pay_args.extend(
            [
                // = WXMP_PAY_SIGN_TYPE=HMAC-SHA256
                "--sign-type",
                "HMAC-SHA256",
                "--reconcile-after-secs",
                "3600",
            ]
            .map(String::from),
        );
    })
    .await;
    let (token, _) = t.login(None).await;
    let (_, answer) = t.pay_product(&token, "coffee").await;
    assert_eq!(answer["data"]["signType"], "HMAC-SHA256", "{answer}");
    let (order_no, phone) = order_and_prepay(&answer).unwrap();
    // The sandbox checks the HMAC-SHA256 paySign as the phone does.
    t.sandbox_pay(&phone, "success", None).await;

    let accepted = eventually(PAID_WITHIN, || async {
        let order = t.sandbox_order(&order_no).await;
        (order["notify_state"] == "accepted").then_some(order)
    })
    .await;
    let notifies = t.sandbox_notifies(&order_no).await;
    assert!(accepted.is_some(), "no notify accepted: {notifies:#?}");
    let first = &notifies[0];
    let xml = first["request"].as_str().unwrap();
    assert!(!xml.contains("sign_type"), "{xml}");
    assert!(xml.contains("<total_fee>1800</total_fee>"), "{xml}");
    assert_eq!(first["accepted"], true, "the first attempt: {first}");
    let verdicts: Vec<String> = notifications(&t, &order_no)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(verdicts, ["applied"]);
    let order = t
        .wait_for_order_state(&token, &order_no, "PAID", Duration::ZERO)
        .await;
    assert_eq!(order["state"], "PAID", "{order}");
}

mod an_hmac_sha256_merchant_notify_is_applied {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_redis() {
        super::hmac_merchant_notify(wxmp_tests::Backend::Postgres).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_memory() {
        super::hmac_merchant_notify(wxmp_tests::Backend::Sqlite).await;
    }
}
