//! WeChat server APIs end to end, through the one shared access_token: the phone number by
//! code, and the "order paid" subscribe message.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxmp_tests::{Backend, TestStack, eventually, on_both_backends, order_and_prepay};

const TEMPLATE: &str = "TPL-order-paid-0001";
const PAID_WITHIN: Duration = Duration::from_secs(20);

async fn phone_code(t: &TestStack, body: Value) -> String {
    let (status, answer) = t.post(&t.sandbox("/sandbox/phone-code"), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["code"].as_str().expect("code").to_owned()
}

async fn phone(t: &TestStack, token: &str, code: &str) -> (StatusCode, Value) {
    t.post(
        &t.gateway("/phone/"),
        json!({ "token": token, "code": code }),
    )
    .await
}

async fn phone_by_code(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, _) = t.login(None).await;

    let code = phone_code(&t, json!({ "purePhoneNumber": "13800138000" })).await;
    let (status, answer) = phone(&t, &token, &code).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let data = &answer["data"];
    assert_eq!(
        (
            &data["phone"],
            &data["phone_number"],
            &data["phone_country_code"]
        ),
        (&json!("13800138000"), &json!("13800138000"), &json!("86")),
        "{answer}"
    );

    // A used code and a made-up one: 221, and nothing changes.
    let (status, answer) = phone(&t, &token, &code).await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(221)),
        "{answer}"
    );
    let (status, answer) = phone(&t, &token, "not-a-real-code").await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(221)),
        "{answer}"
    );

    // WeChat busy (-1): 222, nothing stored, and the same code works on a retry.
    let foreign = phone_code(
        &t,
        json!({ "purePhoneNumber": "2025550123", "countryCode": "1", "errcode": -1 }),
    )
    .await;
    let (status, answer) = phone(&t, &token, &foreign).await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(222)),
        "{answer}"
    );
    let (_, me) = t.me(&token).await;
    assert_eq!(me["data"]["phone"], "13800138000", "{me}");
    let (status, answer) = phone(&t, &token, &foreign).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["phone_number"], "+1 2025550123", "{answer}");
    assert_eq!(answer["data"]["phone"], "2025550123");
    assert_eq!(answer["data"]["phone_country_code"], "1");

    // WeChat says the appid is wrong (40013): the operator's problem, 223.
    let misconfigured = phone_code(&t, json!({ "errcode": 40013 })).await;
    let (status, answer) = phone(&t, &token, &misconfigured).await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::BAD_GATEWAY, json!(223)),
        "{answer}"
    );

    // Neither a code nor encryptedData.
    let (status, answer) = t
        .post(&t.gateway("/phone/"), json!({ "token": token }))
        .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(201))
    );

    // A WeChat that rejects the shared token (another party refreshed it): one forced refresh,
    // one retry, and the caller never notices.
    let (status, answer) = t
        .post(&t.sandbox("/sandbox/access-tokens/invalidate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let code = phone_code(&t, json!({ "purePhoneNumber": "13900139000" })).await;
    let (status, answer) = phone(&t, &token, &code).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, me) = t.me(&token).await;
    assert_eq!(me["data"]["phone"], "13900139000", "{me}");

    let stats = t
        .http
        .get(t.sandbox("/sandbox/access-tokens"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        stats["stable_fetches"], 2,
        "one fetch, one refresh after the rejection: {stats}"
    );
    assert_eq!(stats["rejected_uses"], 1, "{stats}");
}
on_both_backends!(workers = 4; phone_by_code as phone_number_by_code);

/// (order_no, state, attempts) of every paid message row.
async fn paid_messages(t: &TestStack) -> Vec<(String, String, i32)> {
    use diesel::QueryDsl;
    use diesel_async::RunQueryDsl;
    diesel::table! {
        paid_messages (order_no) {
            order_no -> Text,
            state -> Text,
            attempts -> Integer,
        }
    }
    async fn query(url: &str) -> Result<Vec<(String, String, i32)>, service_kit::db::DbError> {
        let db = service_kit::db::Database::connect(
            url,
            service_kit::db::PoolOptions {
                max_size: 1,
                ..Default::default()
            },
        )?;
        Ok(service_kit::with_conn!(&db, |conn| {
            paid_messages::table
                .select((
                    paid_messages::order_no,
                    paid_messages::state,
                    paid_messages::attempts,
                ))
                .load::<(String, String, i32)>(conn)
                .await
        })?)
    }
    query(&t.pay_database_url)
        .await
        .expect("read paid_messages")
}

async fn sent_messages(t: &TestStack, openid: &str) -> Vec<Value> {
    t.http
        .get(t.sandbox("/sandbox/messages"))
        .query(&[("touser", openid)])
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

async fn pay_and_wait(t: &TestStack, token: &str) -> String {
    let (status, answer) = t.pay_product(token, "tea").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (order_no, prepay_id) = order_and_prepay(&answer).expect("pay params");
    t.sandbox_pay(&prepay_id, "success", None).await;
    let order = t
        .wait_for_order_state(token, &order_no, "PAID", PAID_WITHIN)
        .await;
    assert_eq!(order["state"], "PAID", "{order}");
    order_no
}

async fn paid_message_once(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.pay_args.extend(
            [
                "--paid-template-id",
                TEMPLATE,
                "--paid-template-data",
                "amount1={amount};character_string2={order_no};thing3={description}",
                "--paid-message-retry-ms",
                "100",
                "--reconcile-interval-secs",
                "1",
                "--reconcile-after-secs",
                "0",
            ]
            .map(String::from),
        );
    })
    .await;
    let (token, openid) = t.login(None).await;
    // Plenty of accepted subscriptions: a second send for an order would show.
    let (status, answer) = t
        .post(
            &t.sandbox("/sandbox/subscribe"),
            json!({ "openid": openid, "template_id": TEMPLATE, "times": 20 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Five copies of every notify at once.
    t.faults(json!({ "duplicate_notify": 5 })).await;
    let duplicated = pay_and_wait(&t, &token).await;
    // No notify at all: the reconciler finds the payment.
    t.faults(json!({ "drop_notify": true })).await;
    let repaired = pay_and_wait(&t, &token).await;
    // The messages so far go out before the next fault is set (the sender is asynchronous).
    eventually(Duration::from_secs(20), || async {
        let rows = paid_messages(&t).await;
        [&duplicated, &repaired]
            .iter()
            .all(|no| rows.iter().any(|(n, state, _)| n == *no && state == "SENT"))
            .then_some(())
    })
    .await
    .expect("the first two messages are SENT");
    // subscribe/send answers 503 twice before it works: retried, sent once.
    t.faults(json!({ "http_status": 503, "times": 2, "path_prefix": "/cgi-bin/message" }))
        .await;
    let retried = pay_and_wait(&t, &token).await;

    let orders = [&duplicated, &repaired, &retried];
    let rows = eventually(Duration::from_secs(20), || async {
        let rows = paid_messages(&t).await;
        (rows.len() == 3 && rows.iter().all(|(_, state, _)| state == "SENT")).then_some(rows)
    })
    .await
    .expect("every paid order's message is SENT");
    let attempts = |no: &str| rows.iter().find(|r| r.0 == no).map(|r| r.2);
    assert_eq!(attempts(&duplicated), Some(1));
    assert_eq!(attempts(&repaired), Some(1));
    assert_eq!(attempts(&retried), Some(3), "two 503s, then sent: {rows:?}");

    // Let every duplicate notify of the first order be received, then count the messages.
    let copies = eventually(Duration::from_secs(10), || async {
        let n = t
            .db_verdicts()
            .await
            .iter()
            .filter(|(no, _)| *no == duplicated)
            .count();
        (n >= 5).then_some(n)
    })
    .await;
    assert!(copies.is_some(), "all five notify copies arrived");
    let messages = sent_messages(&t, &openid).await;
    for order_no in orders {
        let for_order: Vec<&Value> = messages
            .iter()
            .filter(|m| m["data"]["character_string2"] == **order_no)
            .collect();
        assert_eq!(
            for_order.len(),
            1,
            "exactly one message for {order_no}: {messages:?}"
        );
        assert_eq!(for_order[0]["template_id"], TEMPLATE);
        assert_eq!(for_order[0]["data"]["amount1"], "12.00");
    }
    assert_eq!(messages.len(), 3, "{messages:?}");

    // A user who never accepted the subscription: 43101 recorded, not retried, payment fine.
    let (other_token, other_openid) = t.login(None).await;
    t.faults(json!({})).await;
    let refused = pay_and_wait(&t, &other_token).await;
    let row = eventually(Duration::from_secs(20), || async {
        paid_messages(&t)
            .await
            .into_iter()
            .find(|(no, state, _)| *no == refused && state != "PENDING" && state != "SENDING")
    })
    .await
    .expect("the refused message is recorded");
    assert_eq!((row.1.as_str(), row.2), ("REFUSED", 1), "{row:?}");
    assert!(sent_messages(&t, &other_openid).await.is_empty());
}
on_both_backends!(workers = 4; paid_message_once as the_paid_message_is_sent_exactly_once);
