//! WeChat Pay v3 end to end (`WXMP_PAY_API=v3`): the same journey as `pay.rs` — /pay/ → JSAPI
//! order at the sandbox → the user pays → the signed, encrypted notify reaches
//! /pay/notify/v3 → PAID exactly once — plus v3's own attacks and accidents: forged
//! signature, unknown serial, stale timestamp, tampered ciphertext, a platform certificate
//! rotated mid-run, an answer whose signature fails (WeChat unavailable, nothing changes), and
//! a refund settled by its v3 refund notify through the gateway. (The dropped notify repaired
//! by the reconciler runs on both APIs in `pay.rs`.)

use std::time::Duration;

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use service_kit::db::{Database, DbError, PoolOptions};
use wechat::pay::v3::{PublicKey, sign::lines};
use wxmp::stack::{StackOptions, WechatTarget};
use wxmp_tests::{Backend, TestStack, on_both_backends};

diesel::table! {
    pay_notifications (id) {
        id -> BigInt,
        out_trade_no -> Text,
        verdict -> Text,
    }
}

diesel::table! {
    orders (id) {
        id -> BigInt,
        order_no -> Text,
        state -> Text,
        api -> Text,
    }
}

const PAID_WITHIN: Duration = Duration::from_secs(20);

fn v3(o: &mut StackOptions, mode: sandbox::v3::Mode) {
    o.pay_args.extend(["--pay-api", "v3"].map(String::from));
    if let WechatTarget::Sandbox(config) = &mut o.wechat {
        config.pay_v3.mode = mode;
    }
}

async fn start(backend: Backend, mode: sandbox::v3::Mode) -> TestStack {
    TestStack::start_with(backend, |o| v3(o, mode)).await
}

/// Every verdict pay-service recorded for `order_no`, oldest first.
async fn verdicts(t: &TestStack, order_no: &str) -> Vec<String> {
    async fn query(url: &str, order_no: &str) -> Result<Vec<String>, DbError> {
        let db = Database::connect(url, PoolOptions::default())?;
        let order_no = order_no.to_owned();
        Ok(service_kit::with_conn!(&db, |conn| {
            pay_notifications::table
                .filter(pay_notifications::out_trade_no.eq(&order_no))
                .order(pay_notifications::id)
                .select(pay_notifications::verdict)
                .load::<String>(conn)
                .await
        })?)
    }
    query(&t.pay_database_url, order_no)
        .await
        .expect("read pay_notifications")
}

async fn api_of(t: &TestStack, order_no: &str) -> String {
    async fn query(url: &str, order_no: &str) -> Result<String, DbError> {
        let db = Database::connect(url, PoolOptions::default())?;
        let order_no = order_no.to_owned();
        Ok(service_kit::with_conn!(&db, |conn| {
            orders::table
                .filter(orders::order_no.eq(&order_no))
                .select(orders::api)
                .first::<String>(conn)
                .await
        })?)
    }
    query(&t.pay_database_url, order_no)
        .await
        .expect("read orders.api")
}

async fn pay_for(t: &TestStack, token: &str) -> (StatusCode, Value) {
    t.post(
        &t.gateway("/pay/"),
        json!({ "token": token, "product_id": "coffee" }),
    )
    .await
}

/// The phone pays with `wx.requestPayment`'s parameters as `/pay/` answered them (the
/// sandbox verifies the RSA paySign with the merchant's public key).
async fn sandbox_pays(t: &TestStack, params: &Value) {
    let body = wxmp_tests::request_payment(params).expect("wx.requestPayment parameters");
    let (status, answer) = t.post(&t.sandbox("/sandbox/pay"), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

async fn v3_faults(t: &TestStack, faults: Value) {
    let (status, answer) = t.post(&t.sandbox("/sandbox/v3/faults"), faults).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Waits until pay-service has recorded `n` notifies for `order_no` (`""`: those it could not
/// attribute, i.e. refused before decryption).
async fn wait_verdicts(t: &TestStack, order_no: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PAID_WITHIN;
    loop {
        let got = verdicts(t, order_no).await;
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn buy_a_product_on_v3(backend: Backend) {
    let t = start(backend, sandbox::v3::Mode::PublicKey).await;
    let (token, _) = t.login(None).await;
    let (status, answer) = pay_for(&t, &token).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let params = &answer["data"];
    // The mini program's answer keeps its shape; signType is RSA and paySign verifies with the
    // merchant's public key over appId\ntimeStamp\nnonceStr\npackage\n (as WeChat's client does).
    assert_eq!(params["signType"], "RSA", "{params}");
    let message = lines([
        sandbox::DEV_APP_ID.as_bytes(),
        params["timeStamp"].as_str().unwrap().as_bytes(),
        params["nonceStr"].as_str().unwrap().as_bytes(),
        params["package"].as_str().unwrap().as_bytes(),
    ]);
    let merchant = PublicKey::from_spki_pem(sandbox::v3::dev::MERCHANT_PUBLIC_KEY).unwrap();
    assert!(merchant.verify(&message, params["paySign"].as_str().unwrap()));

    let order_no = params["order_no"].as_str().unwrap();
    assert_eq!(api_of(&t, order_no).await, "v3");
    let order = t
        .wait_for_order_state(&token, order_no, "PAYING", Duration::ZERO)
        .await;
    assert_eq!(order["amount_fen"], 1800, "{order}");
    // Asking again reuses the prepay_id.
    let (_, again) = pay_for_order(&t, &token, order_no).await;
    assert_eq!(again["data"]["package"], params["package"]);

    sandbox_pays(&t, params).await;
    let order = t
        .wait_for_order_state(&token, order_no, "PAID", PAID_WITHIN)
        .await;
    assert!(
        order["transaction_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{order}"
    );
    assert_eq!(verdicts(&t, order_no).await, ["applied"]);
}
on_both_backends!(workers = 4; buy_a_product_on_v3 as a_product_is_paid_on_v3);

async fn pay_for_order(t: &TestStack, token: &str, order_no: &str) -> (StatusCode, Value) {
    t.post(
        &t.gateway("/pay/"),
        json!({ "token": token, "order_no": order_no }),
    )
    .await
}

async fn bad_notifies_on_v3(backend: Backend) {
    // Many refusals from one IP on purpose: keep the gateway's per-IP limit out of the way.
    let t = TestStack::start_with(backend, |o| {
        v3(o, sandbox::v3::Mode::PublicKey);
        o.gateway_args
            .extend(["--notify-fail-limit", "0"].map(String::from));
    })
    .await;
    let (token, _) = t.login(None).await;
    let mut unattributed = 0;
    for (faults, verdict) in [
        (json!({"bad_signature": true}), "bad_signature"),
        (json!({"unknown_serial": true}), "bad_signature"),
        (json!({"clock_skew_secs": -600}), "bad_signature"),
        (json!({"tamper_ciphertext": true}), "malformed"),
    ] {
        let (_, answer) = pay_for(&t, &token).await;
        let params = answer["data"].clone();
        let order_no = params["order_no"].as_str().unwrap().to_owned();
        v3_faults(&t, faults.clone()).await;
        sandbox_pays(&t, &params).await;
        // Refused before decryption, so filed without an order number.
        let seen = wait_verdicts(&t, "", unattributed + 2).await;
        let new = &seen[unattributed.min(seen.len())..];
        assert!(
            new.len() >= 2 && new.iter().all(|v| v == verdict),
            "{faults}: {seen:?}"
        );
        let order = t
            .wait_for_order_state(&token, &order_no, "PAYING", Duration::ZERO)
            .await;
        assert_eq!(order["state"], "PAYING", "{faults}: nothing changed");
        // WeChat retries; once the notify is genuine again it is applied exactly once.
        v3_faults(&t, json!({})).await;
        t.wait_for_order_state(&token, &order_no, "PAID", PAID_WITHIN)
            .await;
        let seen = verdicts(&t, &order_no).await;
        assert_eq!(seen, ["applied"], "{faults}");
        // PAID means WeChat's attempts for this order are over: every refusal is on record.
        unattributed = verdicts(&t, "").await.len();
    }
    // A notify posted by anyone else: no headers, no verdict but FAIL.
    let reply = t
        .http
        .post(t.gateway("/pay/notify/v3"))
        .json(&json!({"id": "x", "event_type": "TRANSACTION.SUCCESS", "resource": {}}))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_client_error(), "{}", reply.status());
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["code"], "FAIL");
}
on_both_backends!(workers = 4; bad_notifies_on_v3 as forged_stale_and_tampered_v3_notifies_change_nothing);

async fn rotation_mid_run(backend: Backend) {
    let t = start(backend, sandbox::v3::Mode::Certificate).await;
    let (token, _) = t.login(None).await;
    let (_, first) = pay_for(&t, &token).await;
    let first = first["data"].clone();
    sandbox_pays(&t, &first).await;
    t.wait_for_order_state(
        &token,
        first["order_no"].as_str().unwrap(),
        "PAID",
        PAID_WITHIN,
    )
    .await;
    let (status, _) = t.post(&t.sandbox("/sandbox/v3/rotate"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Everything WeChat signs now carries certificate B's serial: pay-service downloads the
    // certificates again and keeps working.
    let (status, second) = pay_for(&t, &token).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second = second["data"].clone();
    sandbox_pays(&t, &second).await;
    let order_no = second["order_no"].as_str().unwrap();
    t.wait_for_order_state(&token, order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(verdicts(&t, order_no).await, ["applied"]);
}
on_both_backends!(workers = 4; rotation_mid_run as a_platform_certificate_rotated_mid_run_is_picked_up);

/// The states of every order, oldest first.
async fn order_states(t: &TestStack) -> Vec<String> {
    async fn query(url: &str) -> Result<Vec<String>, DbError> {
        let db = Database::connect(url, PoolOptions::default())?;
        Ok(service_kit::with_conn!(&db, |conn| {
            orders::table
                .order(orders::id)
                .select(orders::state)
                .load::<String>(conn)
                .await
        })?)
    }
    query(&t.pay_database_url).await.expect("read orders")
}

async fn unverifiable_answer(backend: Backend) {
    let t = start(backend, sandbox::v3::Mode::PublicKey).await;
    let (token, _) = t.login(None).await;
    v3_faults(&t, json!({"bad_signature": true})).await;
    let (status, answer) = pay_for(&t, &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["code"], 212, "WeChat unavailable: {answer}");
    // WeChat's unauthenticated answer changed nothing here: the order never became PAYING.
    assert_eq!(order_states(&t).await, ["CREATED"]);
    v3_faults(&t, json!({})).await;
    let (status, answer) = pay_for(&t, &token).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The retry pays the same order (a double tap buys once: PAY_PRODUCT_REUSE_SECS).
    assert_eq!(order_states(&t).await, ["PAYING"]);
}
on_both_backends!(workers = 4; unverifiable_answer as an_unverifiable_answer_is_wechat_unavailable);

diesel::table! {
    refund_notifications (id) {
        id -> BigInt,
        out_refund_no -> Text,
        verdict -> Text,
    }
}

/// Every refund notify verdict pay-service recorded for `out_refund_no`, oldest first.
async fn refund_verdicts(t: &TestStack, out_refund_no: &str) -> Vec<String> {
    async fn query(url: &str, no: &str) -> Result<Vec<String>, DbError> {
        let db = Database::connect(url, PoolOptions::default())?;
        let no = no.to_owned();
        Ok(service_kit::with_conn!(&db, |conn| {
            refund_notifications::table
                .filter(refund_notifications::out_refund_no.eq(&no))
                .order(refund_notifications::id)
                .select(refund_notifications::verdict)
                .load::<String>(conn)
                .await
        })?)
    }
    query(&t.pay_database_url, out_refund_no)
        .await
        .expect("read refund_notifications")
}

/// A refund on v3 through the whole stack, in certificate mode with the platform certificate
/// rotated between the payment and the refund: pay-service → 申请退款 at the sandbox (its
/// answer signed by the new certificate, downloaded on sight) → the signed, encrypted
/// REFUND.SUCCESS notify → the gateway's /pay/refund-notify/v3 (204) → SUCCESS once; a notify
/// posted by anyone else is refused there and changes nothing.
async fn refund_on_v3(backend: Backend) {
    let t = start(backend, sandbox::v3::Mode::Certificate).await;
    let (token, _) = t.login(None).await;
    let (_, answer) = pay_for(&t, &token).await;
    let params = answer["data"].clone();
    let order_no = params["order_no"]
        .as_str()
        .unwrap_or_else(|| panic!("an order in {answer}"))
        .to_owned();
    sandbox_pays(&t, &params).await;
    t.wait_for_order_state(&token, &order_no, "PAID", PAID_WITHIN)
        .await;
    let (status, _) = t.post(&t.sandbox("/sandbox/v3/rotate"), json!({})).await;
    assert_eq!(status, StatusCode::OK);

    let mut pay = wxmp::operator::Pay::connect(&wxmp::operator::PayTarget {
        url: t.stack.pay_url.clone(),
        internal_token: None,
    })
    .await
    .unwrap();
    let refund = pay
        .refund(&order_no, 500, "e2e v3 refund", "e2e-v3-r1")
        .await
        .unwrap()
        .refund
        .unwrap();
    assert_eq!(refund.api, "v3");
    // A forged refund notify (no WeChat signature) is refused at the gateway.
    let forged = t
        .http
        .post(t.gateway("/pay/refund-notify/v3"))
        .header("Wechatpay-Timestamp", "1764561600")
        .header("Wechatpay-Nonce", "n")
        .header("Wechatpay-Signature", "Zm9yZ2Vk")
        .header("Wechatpay-Serial", sandbox::v3::dev::PLATFORM_B_SERIAL)
        .json(&json!({"id": "EV-x", "event_type": "REFUND.SUCCESS", "resource": {
            "algorithm": "AEAD_AES_256_GCM", "ciphertext": "eA==", "nonce": "n", "associated_data": "refund"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    assert_eq!(forged.json::<Value>().await.unwrap()["code"], "FAIL");

    let deadline = tokio::time::Instant::now() + PAID_WITHIN;
    let settled = loop {
        let r = pay.get_refund("e2e-v3-r1").await.unwrap();
        if wxmp::operator::refund_state(&r) == "SUCCESS" || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(wxmp::operator::refund_state(&settled), "SUCCESS");
    // WeChat's notify reached the v3 refund route and was answered 204 (the sandbox files a
    // notify once its answer is back, which may be just after the refund settled here).
    let deadline = tokio::time::Instant::now() + PAID_WITHIN;
    let sent = loop {
        let sent: Vec<Value> = t
            .http
            .get(t.sandbox("/sandbox/v3/notifies?out_refund_no=e2e-v3-r1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if sent.iter().any(|r| r["accepted"] == true) || tokio::time::Instant::now() > deadline {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let accepted: Vec<&Value> = sent.iter().filter(|r| r["accepted"] == true).collect();
    assert_eq!(accepted.len(), 1, "{sent:?}");
    assert_eq!(accepted[0]["status"], 204);
    assert_eq!(accepted[0]["serial"], sandbox::v3::dev::PLATFORM_B_SERIAL);
    assert!(
        accepted[0]["url"]
            .as_str()
            .unwrap()
            .ends_with("/pay/refund-notify/v3")
    );
    assert_eq!(
        refund_verdicts(&t, "e2e-v3-r1")
            .await
            .last()
            .map(String::as_str),
        Some("applied")
    );
    let (order, refunds) = pay.order(&order_no).await.unwrap();
    assert_eq!(wxmp::operator::order_state(&order), "PAID");
    assert_eq!((order.refunded_fen, order.refunding_fen), (500, 0));
    assert_eq!(refunds.len(), 1);
}
on_both_backends!(workers = 4; refund_on_v3 as a_refund_on_v3_is_settled_by_its_notify);

/// As on v2 (`tests/security.rs`): an address over its budget of forged v3 signatures is
/// throttled — its forgeries get 429 and are not even recorded — yet WeChat's genuine v3
/// notify from that same address (here 127.0.0.1: no trusted proxy) is applied.
async fn throttled_address_on_v3(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        v3(o, sandbox::v3::Mode::PublicKey);
        o.gateway_args
            .extend(["--notify-fail-limit", "3"].map(String::from));
    })
    .await;
    let (token, _) = t.login(None).await;
    let (_, answer) = pay_for(&t, &token).await;
    let params = answer["data"].clone();
    let order_no = params["order_no"].as_str().unwrap().to_owned();
    for (i, path) in ["/pay/notify/v3", "/pay/refund-notify/v3"]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        let reply = t
            .http
            .post(t.gateway(path))
            .header("Wechatpay-Timestamp", unix_now().to_string())
            .header("Wechatpay-Nonce", format!("n{i}"))
            .header("Wechatpay-Signature", "Zm9yZ2Vk")
            .header("Wechatpay-Serial", sandbox::v3::dev::PUBLIC_KEY_ID)
            .json(&json!({"id": format!("EV-{i}"), "event_type": "TRANSACTION.SUCCESS", "resource": {}}))
            .send()
            .await
            .unwrap();
        let expected = if i < 3 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(reply.status(), expected, "forgery {i} to {path}");
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["code"], "FAIL");
    }
    let forgeries = t
        .db_verdicts()
        .await
        .into_iter()
        .filter(|(_, v)| v == "bad_signature")
        .count();
    // The three judged ones: two payment notifies (refund notifies are filed elsewhere); the
    // throttled ones after them are not stored.
    assert_eq!(forgeries, 2, "throttled forgeries are not stored");

    sandbox_pays(&t, &params).await;
    t.wait_for_order_state(&token, &order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(verdicts(&t, &order_no).await, ["applied"]);
}
on_both_backends!(workers = 4; throttled_address_on_v3 as a_throttled_address_still_passes_genuine_v3_notifies);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
