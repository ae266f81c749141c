//! Bad input through the real gateway and services: malformed or oversized JSON, wrong types,
//! hostile XML on /pay/notify, non-UTF-8, base64 garbage, replayed and forged notifies, odd
//! tokens, path traversal. Each gets a clear 4xx envelope (or a notify FAIL), never a 500 or a
//! panic, and changes nothing.

use reqwest::{Method, StatusCode};
use sandbox::wx::{self, SignType};
use serde_json::{Value, json};
use wxmp_tests::{Backend, TestStack, on_both_backends, order_and_prepay};

/// (what, path, headers, body, expected envelope code).
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64);

const JSON: (&str, &str) = ("content-type", "application/json");
const XML: (&str, &str) = ("content-type", "text/xml");

/// Asserts a JSON envelope failure with `code` and a 4xx status.
fn assert_envelope(what: &str, status: StatusCode, body: &str, code: u64) {
    assert!(status.is_client_error(), "{what}: HTTP {status} {body}");
    let envelope: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: {body}"));
    assert_eq!(envelope["code"], code, "{what}: {body}");
    assert!(envelope["data"].is_null(), "{what}: {body}");
    assert!(
        envelope["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}"
    );
}

fn assert_notify_fail(what: &str, status: StatusCode, body: &str) {
    assert!(status.as_u16() < 500, "{what}: HTTP {status} {body}");
    assert!(
        body.contains("<return_code><![CDATA[FAIL]]></return_code>"),
        "{what}: {body}"
    );
}

/// A notify for `order_no` as WeChat would send it, signed with `key`.
fn notify_xml(order_no: &str, total_fee: &str, key: &str) -> String {
    let fields: Vec<(&str, String)> = vec![
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
        ("transaction_id", "4200000000000000000000000042".to_owned()),
        ("out_trade_no", order_no.to_owned()),
        ("time_end", "20261125120000".to_owned()),
    ];
    // Signed and written by the sandbox's WeChat-side code, not by the library under test.
    let mut all: wx::Pairs = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let signature = wx::sign(&all, key, SignType::Md5);
    all.push(("sign".to_owned(), signature));
    wx::to_xml(&all)
}

async fn json_bodies(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        // Every case below is one login attempt from 127.0.0.1; keep the limit out of the way.
        o.gateway_args
            .extend(["--login-rate-per-min", "0"].map(String::from));
    })
    .await;
    let (token, openid) = t.login(None).await;
    let (_, before) = t.me(&token).await;

    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let cases: Vec<Case> = vec![
        ("malformed JSON", "/login/", vec![JSON], b"{\"code\": ".to_vec(), 203),
        ("trailing garbage", "/login/", vec![JSON], b"{\"code\":\"x\"} xx".to_vec(), 203),
        ("code as a number", "/login/", vec![JSON], b"{\"code\": 123}".to_vec(), 203),
        ("code as an object", "/login/", vec![JSON], b"{\"code\": {\"a\":1}}".to_vec(), 203),
        ("array body", "/login/", vec![JSON], b"[1,2,3]".to_vec(), 203),
        ("empty body", "/login/", vec![JSON], Vec::new(), 203),
        ("no content type", "/login/", vec![], b"{\"code\":\"abc\"}".to_vec(), 203),
        ("form content type", "/login/", vec![("content-type", "application/x-www-form-urlencoded")], b"code=abc".to_vec(), 203),
        ("non-UTF-8 JSON", "/login/", vec![JSON], b"{\"code\":\"\xff\xfe\xfd\"}".to_vec(), 203),
        ("deeply nested JSON", "/login/", vec![JSON], deep.into_bytes(), 203),
        ("oversized body", "/login/", vec![JSON], format!("{{\"code\":\"{}\"}}", "a".repeat(70_000)).into_bytes(), 204),
        ("missing code", "/login/", vec![JSON], b"{}".to_vec(), 201),
        ("blank code", "/login/", vec![JSON], b"{\"code\":\"   \"}".to_vec(), 201),
        ("huge code", "/login/", vec![JSON], format!("{{\"code\":\"{}\"}}", "a".repeat(5000)).into_bytes(), 202),
        ("unknown code", "/login/", vec![JSON], b"{\"code\":\"0a1b2c3d4e5f\"}".to_vec(), 202),
        ("control chars in code", "/login/", vec![JSON], b"{\"code\":\"a\\u0000b\\r\\n\"}".to_vec(), 202),
        ("app_id traversal", "/login/", vec![JSON], b"{\"code\":\"x\",\"app_id\":\"../../etc\"}".to_vec(), 203),
        ("userinfo wrong types", "/userinfo/", vec![JSON], json!({"token": token, "encryptedData": 5, "iv": []}).to_string().into_bytes(), 203),
        ("userinfo base64 garbage", "/userinfo/", vec![JSON], json!({"token": token, "encryptedData": "!!!not base64@@@", "iv": "***"}).to_string().into_bytes(), 205),
        ("userinfo iv wrong length", "/userinfo/", vec![JSON], json!({"token": token, "encryptedData": "AAAAAAAAAAAAAAAAAAAAAA==", "iv": "AAAA"}).to_string().into_bytes(), 205),
        ("userinfo not a block multiple", "/userinfo/", vec![JSON], json!({"token": token, "encryptedData": "AAAAAAAAAAAAAAAAAAAA", "iv": "AAAAAAAAAAAAAAAAAAAAAA=="}).to_string().into_bytes(), 205),
        ("userinfo random ciphertext", "/userinfo/", vec![JSON], json!({"token": token, "encryptedData": "3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "iv": "AAAAAAAAAAAAAAAAAAAAAA=="}).to_string().into_bytes(), 205),
        ("phone base64 garbage", "/phone/", vec![JSON], json!({"token": token, "encryptedData": "%%%%", "iv": "%%%%"}).to_string().into_bytes(), 205),
        ("userinfo oversized", "/userinfo/", vec![JSON], json!({"token": token, "encryptedData": "A".repeat(80_000), "iv": "AAAAAAAAAAAAAAAAAAAAAA=="}).to_string().into_bytes(), 204),
        ("pay with an amount only", "/pay/", vec![JSON], json!({"token": token, "total_fee": 1}).to_string().into_bytes(), 201),
        ("pay order_no traversal", "/pay/", vec![JSON], json!({"token": token, "order_no": "../../etc/passwd"}).to_string().into_bytes(), 203),
        ("pay product_id with NUL", "/pay/", vec![JSON], json!({"token": token, "product_id": "coffee\u{0}"}).to_string().into_bytes(), 203),
        ("pay unknown product", "/pay/", vec![JSON], json!({"token": token, "product_id": "caviar"}).to_string().into_bytes(), 207),
        ("pay both targets", "/pay/", vec![JSON], json!({"token": token, "product_id": "coffee", "order_no": "X1"}).to_string().into_bytes(), 203),
    ];
    for (what, path, headers, body, code) in cases {
        let (status, text) = t.raw(Method::POST, path, &headers, body).await;
        assert_envelope(what, status, &text, code);
    }

    // Tokens of every wrong shape: 202 (or 201 when empty), never anything else.
    let long = "t".repeat(4000);
    for (what, bad) in [
        ("short token", "x"),
        ("63 chars", &"a".repeat(63)[..]),
        ("65 chars", &"a".repeat(65)[..]),
        ("long token", long.as_str()),
        ("token with spaces", "a b c"),
        ("token that looks like SQL", "' OR '1'='1"),
    ] {
        let response = t
            .http
            .get(t.gateway("/me"))
            .header("authorization", format!("Bearer {bad}").into_bytes())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_envelope(what, status, &text, 202);
    }
    // A header that is not even ASCII cannot be read: treated as no token at all.
    let response = t
        .http
        .get(t.gateway("/me"))
        .header("authorization", "Bearer 令牌".as_bytes())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_envelope("unicode token", status, &text, 201);
    let (status, text) = t
        .raw(Method::GET, "/me", &[("authorization", "Bearer ")], "")
        .await;
    assert_envelope("empty bearer", status, &text, 201);
    let (status, text) = t
        .raw(
            Method::POST,
            "/logout",
            &[JSON],
            json!({"token": "nope"}).to_string(),
        )
        .await;
    assert!(status.is_success() || status.is_client_error(), "{text}");

    // Path traversal and junk in order numbers.
    for path in [
        "/orders/..%2F..%2Fetc%2Fpasswd",
        "/orders/..",
        "/orders/%2e%2e",
        "/orders/%00",
        "/orders/a%20b",
        "/orders/%E4%BD%A0",
        "/orders/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/orders/NOSUCHORDER",
        "/orders/",
    ] {
        let (status, text) = t
            .raw(
                Method::GET,
                path,
                &[("authorization", &format!("Bearer {token}"))],
                "",
            )
            .await;
        assert!(status.is_client_error(), "{path}: {status} {text}");
        let envelope: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        assert!(
            matches!(envelope["code"].as_u64(), Some(203 | 207)),
            "{path}: {text}"
        );
    }

    // Nothing changed: same profile, no orders, the user can still log in.
    let (_, after) = t.me(&token).await;
    assert_eq!(before, after);
    assert!(t.db_orders().await.is_empty());
    t.login(Some(&openid)).await;
}
on_both_backends!(workers = 4; json_bodies as bad_json_input_gets_a_clear_4xx_and_changes_nothing);

async fn hostile_notifies(backend: Backend) {
    let t = TestStack::start_with(backend, |o| {
        o.gateway_args
            .extend(["--notify-fail-limit", "0"].map(String::from));
    })
    .await;
    let (token, _) = t.login(None).await;
    let (_, answer) = t.pay_product(&token, "coffee").await;
    let (order_no, prepay) = order_and_prepay(&answer).unwrap();
    let key = sandbox::DEV_PAY_KEY;
    let genuine = notify_xml(&order_no, "1800", key);

    let nested = format!("{}{}", "<a>".repeat(20_000), "</a>".repeat(20_000));
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">{}]><xml><return_code>&lol9;</return_code></xml>",
        (1..10)
            .map(|i| format!(
                "<!ENTITY lol{i} \"{}\">",
                format!(
                    "&lol{};",
                    if i == 1 {
                        String::new()
                    } else {
                        (i - 1).to_string()
                    }
                )
                .repeat(10)
            ))
            .collect::<String>()
    );
    let external = format!(
        "<!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{}",
        genuine.replace(
            "<bank_type><![CDATA[CMC]]></bank_type>",
            "<bank_type>&xxe;</bank_type>"
        )
    );
    let mut non_utf8 = genuine.clone().into_bytes();
    non_utf8.extend_from_slice(b"<x>\xff\xfe</x>");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("JSON", b"{\"return_code\":\"SUCCESS\"}".to_vec()),
        ("plain text", b"SUCCESS".to_vec()),
        (
            "truncated XML",
            genuine.as_bytes()[..genuine.len() / 2].to_vec(),
        ),
        ("deeply nested XML", nested.into_bytes()),
        ("billion laughs", laughs.into_bytes()),
        ("external entity", external.into_bytes()),
        (
            "doctype on a genuine notify",
            format!("<!DOCTYPE xml>{genuine}").into_bytes(),
        ),
        ("non-UTF-8", non_utf8),
        (
            "huge XML",
            format!("<xml><a>{}</a></xml>", "x".repeat(200_000)).into_bytes(),
        ),
        (
            "forged signature",
            notify_xml(&order_no, "1800", "a-key-that-is-not-the-merchants").into_bytes(),
        ),
        (
            "unsigned",
            genuine
                .replace("<sign>", "<sig>")
                .replace("</sign>", "</sig>")
                .into_bytes(),
        ),
        ("wrong amount", notify_xml(&order_no, "1", key).into_bytes()),
        (
            "traversal order",
            notify_xml("../../etc/passwd", "1800", key).into_bytes(),
        ),
        (
            "unknown order",
            notify_xml("NOSUCHORDER0000000000000000001", "1800", key).into_bytes(),
        ),
        (
            "duplicate fields",
            genuine
                .replace("</xml>", "<total_fee>1</total_fee></xml>")
                .into_bytes(),
        ),
    ];
    for (what, body) in cases {
        let (status, text) = t.raw(Method::POST, "/pay/notify", &[XML], body).await;
        assert_notify_fail(what, status, &text);
    }
    let order = t
        .wait_for_order_state(&token, &order_no, "PAYING", std::time::Duration::ZERO)
        .await;
    assert_eq!(order["state"], "PAYING", "nothing changed: {order}");
    assert!(
        t.db_verdicts().await.iter().all(|(_, v)| v != "applied"),
        "no hostile notify applied"
    );

    // The phone pays; the genuine notify applies once, and replaying it changes nothing.
    t.sandbox_pay(&prepay, "success", None).await;
    let paid = t
        .wait_for_order_state(
            &token,
            &order_no,
            "PAID",
            std::time::Duration::from_secs(20),
        )
        .await;
    assert_eq!(paid["state"], "PAID");
    let stored = wechat_notify_of(&t, &order_no).await;
    for _ in 0..3 {
        let (status, text) = t
            .raw(Method::POST, "/pay/notify", &[XML], stored.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains("SUCCESS"), "a replay is acknowledged: {text}");
    }
    // A notify signed with the real key but another transaction id is not applied either.
    let (status, text) = t
        .raw(
            Method::POST,
            "/pay/notify",
            &[XML],
            notify_xml(&order_no, "1800", key),
        )
        .await;
    assert!(status.as_u16() < 500, "{text}");
    let again = t
        .wait_for_order_state(&token, &order_no, "PAID", std::time::Duration::ZERO)
        .await;
    assert_eq!(again["transaction_id"], paid["transaction_id"]);
    assert_eq!(again["paid_at"], paid["paid_at"]);
    let applied = t
        .db_verdicts()
        .await
        .into_iter()
        .filter(|(no, v)| no == &order_no && v == "applied")
        .count();
    assert_eq!(applied, 1);
}
on_both_backends!(workers = 4; hostile_notifies as hostile_notifies_fail_and_change_nothing);

/// The body of the notify the sandbox delivered for `order_no` (the genuine one).
async fn wechat_notify_of(t: &TestStack, order_no: &str) -> String {
    let response = t
        .http
        .get(t.sandbox("/sandbox/notifies"))
        .query(&[("out_trade_no", order_no)])
        .send()
        .await
        .unwrap();
    let notifies: Value = response.json().await.unwrap();
    notifies
        .as_array()
        .and_then(|a| a.iter().find_map(|n| n["request"].as_str()))
        .expect("the sandbox sent a notify")
        .to_owned()
}
