//! The gateway over real HTTP in front of fake gRPC services.

mod hardening;
mod push;
mod user_cache;

use crate::helpers::{GOOD_TOKEN, NOTIFY_REPLY, Options, Stack, assert_failure, start};
use serde_json::json;
use service_kit::ErrorReason;

#[tokio::test]
async fn login_answers_the_seed_envelope() {
    let s = start(Options::default()).await;
    let (status, body) = s.post_json("/login/", json!({"code": "good"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"code": 200, "msg": "suc", "data": {"token": GOOD_TOKEN, "expires_in": 7200}})
    );
    // The path without the trailing slash and an explicit app id work too.
    let (status, body) = s
        .post_json("/login", json!({"code": "good", "app_id": "wxapp1"}))
        .await;
    assert_eq!((status, &body["data"]["token"]), (200, &json!(GOOD_TOKEN)));
    let logins = s.calls.of("login");
    assert_eq!(logins[0].detail, "|good");
    assert_eq!(logins[1].detail, "wxapp1|good");
    s.stop().await;
}

#[tokio::test]
async fn login_failures() {
    let s = start(Options::default()).await;
    assert_failure(&s.post_json("/login/", json!({})).await, 201, 400);
    assert_failure(
        &s.post_json("/login/", json!({"code": "  "})).await,
        201,
        400,
    );
    assert!(
        s.calls.of("login").is_empty(),
        "missing code never reaches auth"
    );
    let bad = s.post_json("/login/", json!({"code": "bad"})).await;
    assert_failure(&bad, 202, 401);
    assert_eq!(bad.1["msg"], "invalid code");
    assert_failure(
        &s.post_json("/login/", json!({"code": "wxdown"})).await,
        212,
        503,
    );
    assert_failure(
        &s.post_json("/login/", json!({"code": 123})).await,
        203,
        400,
    );
    assert_failure(
        &s.post_json("/login/", json!({"code": "good", "app_id": "../x"}))
            .await,
        203,
        400,
    );
    s.stop().await;
}

#[tokio::test]
async fn every_error_reason_maps_per_the_table() {
    let s = start(Options::default()).await;
    let table = [
        (ErrorReason::MissingParameter, 201, 400),
        (ErrorReason::InvalidArgument, 203, 400),
        (ErrorReason::InvalidCode, 202, 401),
        (ErrorReason::InvalidToken, 202, 401),
        (ErrorReason::DecryptFailed, 205, 400),
        (ErrorReason::PermissionDenied, 206, 403),
        (ErrorReason::NotFound, 207, 404),
        (ErrorReason::RateLimited, 208, 429),
        (ErrorReason::OrderState, 209, 409),
        (ErrorReason::WechatError, 211, 502),
        (ErrorReason::WechatUnavailable, 212, 503),
        (ErrorReason::DependencyUnavailable, 213, 503),
        (ErrorReason::Internal, 500, 500),
        (ErrorReason::UnknownApp, 203, 400),
        (ErrorReason::IdempotencyConflict, 210, 409),
    ];
    for (reason, code, http) in table {
        let got = s
            .post_json(
                "/login/",
                json!({"code": format!("reason-{}", reason.as_str_name())}),
            )
            .await;
        assert_failure(&got, code, http);
        // Upstream detail stays in the logs.
        assert!(
            !got.1["msg"].as_str().unwrap().contains("10.0.0.1"),
            "{got:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn token_from_header_or_body() {
    let s = start(Options::default()).await;
    let (status, body) = s.get_auth("/me", Some(GOOD_TOKEN)).await;
    assert_eq!((status, body["code"].as_u64()), (200, Some(200)));
    assert_eq!(body["data"]["user_id"], 7);
    assert_eq!(body["data"]["openid"], "o-7");
    assert_eq!(body["data"]["nickname"], "Nick");
    assert_eq!(body["data"]["has_unionid"], true);
    assert!(body["data"].get("session_key").is_none());
    assert_failure(&s.get_auth("/me", None).await, 201, 400);
    assert_failure(&s.get_auth("/me", Some("nope")).await, 202, 401);

    // Body token (the seed's clients) and header token, on a POST route.
    let body_tok = s
        .post_json(
            "/userinfo/",
            json!({"token": "tok-other", "encryptedData": "ED", "iv": "IV"}),
        )
        .await;
    assert_eq!(body_tok.1["data"]["user_id"], 8, "{body_tok:?}");
    let res = s
        .http
        .post(s.url("/userinfo/"))
        .bearer_auth(GOOD_TOKEN)
        .json(&json!({"token": "tok-other", "encryptedData": "ED", "iv": "IV"}))
        .send()
        .await
        .unwrap();
    let header_tok = Stack::read(res).await;
    assert_eq!(header_tok.1["data"]["user_id"], 7, "the header wins");
    s.stop().await;
}

#[tokio::test]
async fn userinfo_and_phone() {
    let s = start(Options::default()).await;
    let (status, body) = s
        .post_json(
            "/userinfo/",
            json!({"token": GOOD_TOKEN, "encryptedData": "ED", "iv": "IV",
                   "rawData": "{}", "signature": "abc", "extra": [1, 2]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 200);
    assert_eq!(body["msg"], "suc");
    for key in [
        "nickname",
        "avatar_url",
        "gender",
        "city",
        "province",
        "country",
        "language",
    ] {
        assert!(body["data"].get(key).is_some(), "{key} in {body}");
    }
    assert_eq!(s.calls.of("update_profile")[0].detail, "7|ED|IV|{}|abc");
    assert_failure(
        &s.post_json(
            "/userinfo/",
            json!({"token": GOOD_TOKEN, "encryptedData": "ED"}),
        )
        .await,
        201,
        400,
    );
    assert_failure(
        &s.post_json("/userinfo/", json!({"encryptedData": "ED", "iv": "IV"}))
            .await,
        201,
        400,
    );
    assert_failure(
        &s.post_json(
            "/userinfo/",
            json!({"token": GOOD_TOKEN, "encryptedData": "garbage", "iv": "IV"}),
        )
        .await,
        205,
        400,
    );
    let (status, body) = s
        .post_json(
            "/phone/",
            json!({"token": GOOD_TOKEN, "encryptedData": "P", "iv": "I"}),
        )
        .await;
    assert_eq!(
        (status, &body["data"]["phone"]),
        (200, &json!("13800138000"))
    );
    assert_eq!(s.calls.of("update_phone_number")[0].detail, "7|P|I");
    // The token goes to user-service, which authenticates it with the session_key in one
    // auth-service call: the gateway itself calls auth for none of these.
    assert!(
        s.calls.of("authenticate").is_empty(),
        "{:?}",
        s.calls.calls()
    );
    assert_failure(
        &s.post_json(
            "/userinfo/",
            json!({"token": "tok-unknown", "encryptedData": "ED", "iv": "IV"}),
        )
        .await,
        202,
        401,
    );
    assert_failure(
        &s.post_json("/phone/", json!({"token": "tok-unknown", "code": "C"}))
            .await,
        202,
        401,
    );
    s.stop().await;
}

#[tokio::test]
async fn pay_returns_request_payment_params() {
    let s = start(Options::default()).await;
    let (status, body) = s
        .post_json(
            "/pay/",
            json!({"token": GOOD_TOKEN, "product_id": "coffee", "amount": 1, "total_fee": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"code": 200, "msg": "suc", "data": {
            "appId": "wxapp", "timeStamp": "1700000000", "nonceStr": "nonce",
            "package": "prepay_id=wx123", "signType": "MD5", "paySign": "SIGN", "order_no": "NEW1"
        }})
    );
    let call = &s.calls.of("prepare_jsapi_payment")[0];
    assert!(
        call.detail.starts_with("7|Some(ProductId(\"coffee\"))|"),
        "{call:?}"
    );

    let (status, body) = s
        .post_json("/pay/", json!({"token": GOOD_TOKEN, "order_no": "ORD1"}))
        .await;
    assert_eq!((status, &body["data"]["order_no"]), (200, &json!("ORD1")));
    assert_failure(
        &s.post_json("/pay/", json!({"token": GOOD_TOKEN, "order_no": "PAID1"}))
            .await,
        209,
        409,
    );
    assert_failure(
        &s.post_json("/pay/", json!({"token": GOOD_TOKEN})).await,
        201,
        400,
    );
    assert_failure(
        &s.post_json(
            "/pay/",
            json!({"token": GOOD_TOKEN, "order_no": "A", "product_id": "B"}),
        )
        .await,
        203,
        400,
    );
    assert_failure(
        &s.post_json(
            "/pay/",
            json!({"token": GOOD_TOKEN, "order_no": "../../etc/passwd"}),
        )
        .await,
        203,
        400,
    );
    assert_failure(
        &s.post_json("/pay/", json!({"order_no": "ORD1"})).await,
        201,
        400,
    );
    assert_failure(
        &s.post_json("/pay/", json!({"token": "nope", "order_no": "ORD1"}))
            .await,
        202,
        401,
    );
    s.stop().await;
}

#[tokio::test]
async fn orders_and_products() {
    let s = start(Options::default()).await;
    let (status, body) = s.get_auth("/orders/ORD1", Some(GOOD_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "PAID");
    assert_eq!(body["data"]["amount_fen"], 100);
    assert!(body["data"].get("attach").is_none());
    assert_eq!(s.calls.of("get_order")[0].detail, "ORD1|7");
    assert_failure(
        &s.get_auth("/orders/ORD2", Some(GOOD_TOKEN)).await,
        207,
        404,
    );
    assert_failure(
        &s.get_auth("/orders/LEAKY", Some(GOOD_TOKEN)).await,
        207,
        404,
    );
    assert_failure(&s.get_auth("/orders/ORD1", None).await, 201, 400);

    let before = s.calls.of("get_order").len();
    for bad in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "a%20b",
        "ORD1%00",
        &"A".repeat(33),
    ] {
        let (status, body) = s
            .get_auth(&format!("/orders/{bad}"), Some(GOOD_TOKEN))
            .await;
        assert!(matches!(status, 400 | 404), "{bad}: {status} {body}");
        assert!(
            matches!(body["code"].as_u64(), Some(203 | 207)),
            "{bad}: {body}"
        );
    }
    assert_eq!(
        s.calls.of("get_order").len(),
        before,
        "bad order numbers never reach pay"
    );

    let (status, body) = s.get_auth("/products", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!({"products": [{"id": "coffee", "name": "Coffee", "price_fen": 100}]})
    );
    s.stop().await;
}

#[tokio::test]
async fn logout_with_header_or_body() {
    let s = start(Options::default()).await;
    let res = s
        .http
        .post(s.url("/logout"))
        .bearer_auth(GOOD_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, body) = Stack::read(res).await;
    assert_eq!((status, &body["data"]), (200, &json!({"revoked": true})));
    let (status, body) = s.post_json("/logout", json!({"token": "old"})).await;
    assert_eq!((status, &body["data"]), (200, &json!({"revoked": false})));
    let res = s.http.post(s.url("/logout")).send().await.unwrap();
    assert_failure(&Stack::read(res).await, 201, 400);
    s.stop().await;
}

#[tokio::test]
async fn notify_is_relayed_as_xml() {
    let s = start(Options::default()).await;
    let xml = "<xml><return_code><![CDATA[SUCCESS]]></return_code><out_trade_no>ORD1</out_trade_no></xml>";
    let res = s
        .http
        .post(s.url("/pay/notify"))
        .header("content-type", "text/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert_eq!(res.text().await.unwrap(), NOTIFY_REPLY);
    assert_eq!(s.calls.of("handle_pay_notify")[0].detail, xml);

    let huge = format!("<xml>{}</xml>", "a".repeat(70 * 1024));
    let res = s
        .http
        .post(s.url("/pay/notify"))
        .header("content-type", "text/xml")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let text = res.text().await.unwrap();
    assert!(text.contains("FAIL"), "{text}");
    assert_eq!(
        s.calls.of("handle_pay_notify").len(),
        1,
        "oversize never forwarded"
    );
    s.stop().await;
}

#[tokio::test]
async fn refund_notify_is_relayed_as_xml() {
    let s = start(Options::default()).await;
    let xml = "<xml><return_code>SUCCESS</return_code><mch_id>1900000109</mch_id><req_info>AAAA</req_info></xml>";
    let res = s
        .http
        .post(s.url("/pay/refund-notify"))
        .header("content-type", "text/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert_eq!(
        res.text().await.unwrap(),
        crate::helpers::REFUND_NOTIFY_REPLY
    );
    let calls = s.calls.of("handle_refund_notify");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].detail, xml);
    // Not the payment notify's handler.
    assert!(s.calls.of("handle_pay_notify").is_empty());

    let huge = format!("<xml>{}</xml>", "a".repeat(70 * 1024));
    let res = s
        .http
        .post(s.url("/pay/refund-notify"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    assert!(res.text().await.unwrap().contains("FAIL"));
    assert_eq!(
        s.calls.of("handle_refund_notify").len(),
        1,
        "oversize never forwarded"
    );
    s.stop().await;
}

/// The v3 payment and refund notifies are relayed alike: the four headers and the body to
/// their RPC, 204 or `{"code":"FAIL","message"}` back.
#[tokio::test]
async fn v3_notify_relays_headers_and_answers_204_or_fail_json() {
    let s = start(Options::default()).await;
    for (path, rpc, event) in [
        (
            "/pay/notify/v3",
            "handle_pay_notify_v3",
            "TRANSACTION.SUCCESS",
        ),
        (
            "/pay/refund-notify/v3",
            "handle_refund_notify_v3",
            "REFUND.SUCCESS",
        ),
    ] {
        let body = format!(r#"{{"id":"EV-1","event_type":"{event}","resource":{{}}}}"#);
        let send = |signature: &'static str| {
            s.http
                .post(s.url(path))
                .header("content-type", "application/json")
                .header("Wechatpay-Timestamp", "1700000000")
                .header("Wechatpay-Nonce", "n1")
                .header("Wechatpay-Signature", signature)
                .header("Wechatpay-Serial", "PUB_KEY_ID_1")
                .body(body.clone())
                .send()
        };
        let res = send("good").await.unwrap();
        assert_eq!(res.status().as_u16(), 204, "{path}");
        assert_eq!(
            res.text().await.unwrap(),
            "",
            "no envelope on WeChat's answer"
        );
        assert_eq!(
            s.calls.of(rpc)[0].detail,
            format!("1700000000|n1|good|PUB_KEY_ID_1|{body}")
        );
        let res = send("forged").await.unwrap();
        assert_eq!(res.status().as_u16(), 400, "{path}");
        let answer: serde_json::Value = res.json().await.unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"code": "FAIL", "message": "bad_signature"})
        );
        assert_eq!(s.calls.of(rpc).len(), 2, "{path}");
    }

    // Too big, whether declared (Content-Length) or only seen while reading (chunked): a v3
    // FAIL, and nothing reaches pay-service.
    let huge = format!(r#"{{"id":"{}"}}"#, "a".repeat(70 * 1024));
    let res = s
        .http
        .post(s.url("/pay/notify/v3"))
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"code": "FAIL", "message": "body too large"})
    );
    let head = chunked_post(&s.url("/pay/refund-notify/v3"), huge.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    for rpc in ["handle_pay_notify_v3", "handle_refund_notify_v3"] {
        assert_eq!(s.calls.of(rpc).len(), 2, "oversize never forwarded ({rpc})");
    }
    s.stop().await;
}

/// POSTs `body` to `url` with `Transfer-Encoding: chunked` (no length declared up front) and
/// answers the response's status line and headers.
async fn chunked_post(url: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = url.trim_start_matches("http://").split('/').next().unwrap();
    let path = &url[url.find(authority).unwrap() + authority.len()..];
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(8 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn notify_fails_with_503_when_pay_is_down() {
    let s = start(Options {
        pay_down: true,
        ..Default::default()
    })
    .await;
    let res = s
        .http
        .post(s.url("/pay/notify"))
        .header("content-type", "text/xml")
        .body("<xml></xml>")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("<return_code><![CDATA[FAIL]]></return_code>")
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_enveloped_never_500() {
    let s = start(Options {
        body_limit: Some(1024),
        ..Default::default()
    })
    .await;
    let raw = |path: &'static str, ct: Option<&'static str>, body: Vec<u8>| {
        let mut req = s.http.post(s.url(path)).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        async move { Stack::read(req.send().await.unwrap()).await }
    };
    let json_ct = Some("application/json");
    assert_failure(
        &raw("/login/", json_ct, b"{\"code\":".to_vec()).await,
        203,
        400,
    );
    assert_failure(&raw("/login/", json_ct, b"".to_vec()).await, 203, 400);
    assert_failure(&raw("/login/", json_ct, b"[1,2]".to_vec()).await, 203, 400);
    assert_failure(&raw("/login/", json_ct, b"null".to_vec()).await, 203, 400);
    assert_failure(
        &raw("/login/", json_ct, b"{\"code\":[\"x\"]}".to_vec()).await,
        203,
        400,
    );
    assert_failure(
        &raw("/login/", json_ct, b"{\"code\":\"\xff\xfe\"}".to_vec()).await,
        203,
        400,
    );
    assert_failure(
        &raw(
            "/login/",
            Some("text/plain"),
            b"{\"code\":\"good\"}".to_vec(),
        )
        .await,
        203,
        400,
    );
    assert_failure(
        &raw(
            "/login/",
            Some("text/json"),
            b"{\"code\":\"good\"}".to_vec(),
        )
        .await,
        203,
        400,
    );
    assert_failure(
        &raw("/login/", None, b"{\"code\":\"good\"}".to_vec()).await,
        203,
        400,
    );
    assert_failure(
        &raw(
            "/login/",
            Some("application/x-www-form-urlencoded"),
            b"code=good".to_vec(),
        )
        .await,
        203,
        400,
    );
    let big = format!("{{\"code\":\"{}\"}}", "a".repeat(2000)).into_bytes();
    assert_failure(&raw("/login/", json_ct, big.clone()).await, 204, 413);
    assert_failure(&raw("/userinfo/", json_ct, big.clone()).await, 204, 413);
    assert_failure(&raw("/logout", json_ct, big).await, 204, 413);
    assert_failure(
        &raw("/logout", Some("text/plain"), b"token=x".to_vec()).await,
        203,
        400,
    );
    // A charset parameter is fine.
    let (status, body) = raw(
        "/login/",
        Some("application/json; charset=utf-8"),
        b"{\"code\":\"good\"}".to_vec(),
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (200, Some(200)));

    // actix's own answers, enveloped.
    assert_failure(&s.get_auth("/login/", None).await, 203, 405);
    assert_failure(&s.get_auth("/nope", None).await, 207, 404);
    assert_failure(&raw("/", json_ct, b"{}".to_vec()).await, 207, 404);
    assert!(
        s.calls.of("login").len() == 1,
        "only the good request reached auth"
    );
    s.stop().await;
}

/// `POST /pay/` passes the `Idempotency-Key` header or the body's `idempotency_key` to
/// pay-service; a key that is malformed, or differs between the two, is 203 before any call.
#[tokio::test]
async fn pay_forwards_the_idempotency_key() {
    let s = start(Options::default()).await;
    let key_of = |s: &Stack| {
        let calls = s.calls.of("prepare_jsapi_payment");
        calls
            .last()
            .unwrap()
            .detail
            .split('|')
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let with_header = |key: &'static str, body: serde_json::Value| {
        let req = s
            .http
            .post(s.url("/pay/"))
            .header("idempotency-key", key)
            .json(&body);
        async move { Stack::read(req.send().await.unwrap()).await }
    };
    let (status, body) = with_header(
        "tap-7f3a",
        json!({"token": GOOD_TOKEN, "product_id": "coffee"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(key_of(&s), "tap-7f3a");

    let (status, _) = s
        .post_json(
            "/pay/",
            json!({"token": GOOD_TOKEN, "product_id": "coffee", "idempotency_key": "body-1"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(key_of(&s), "body-1");

    let (status, _) = s
        .post_json(
            "/pay/",
            json!({"token": GOOD_TOKEN, "product_id": "coffee"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(key_of(&s), "");

    let calls = s.calls.of("prepare_jsapi_payment").len();
    assert_failure(
        &with_header(
            "a",
            json!({"token": GOOD_TOKEN, "product_id": "coffee", "idempotency_key": "b"}),
        )
        .await,
        203,
        400,
    );
    assert_failure(
        &with_header(
            "has space/and slash",
            json!({"token": GOOD_TOKEN, "product_id": "coffee"}),
        )
        .await,
        203,
        400,
    );
    let long = "k".repeat(129);
    assert_failure(
        &s.post_json(
            "/pay/",
            json!({"token": GOOD_TOKEN, "product_id": "coffee", "idempotency_key": long}),
        )
        .await,
        203,
        400,
    );
    assert_eq!(s.calls.of("prepare_jsapi_payment").len(), calls);
    s.stop().await;
}

#[tokio::test]
async fn forwarded_for_only_from_trusted_proxies() {
    let pay = |s: &Stack, xff: &'static str| {
        let req = s
            .http
            .post(s.url("/pay/"))
            .header("x-forwarded-for", xff)
            .json(&json!({"token": GOOD_TOKEN, "order_no": "ORD1"}));
        async move { Stack::read(req.send().await.unwrap()).await }
    };
    let client_ip = |s: &Stack| {
        let calls = s.calls.of("prepare_jsapi_payment");
        calls
            .last()
            .unwrap()
            .detail
            .rsplit('|')
            .next()
            .unwrap()
            .to_owned()
    };

    let trusted = start(Options {
        trusted_proxies: Some("10.0.0.0/8, 127.0.0.1".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(pay(&trusted, "6.6.6.6, 1.2.3.4").await.0, 200);
    assert_eq!(client_ip(&trusted), "1.2.3.4");
    assert_eq!(pay(&trusted, "not-an-ip").await.0, 200);
    assert_eq!(client_ip(&trusted), "127.0.0.1");
    // user → CDN → load balancer → gateway: the first hop from the right that is not ours.
    assert_eq!(pay(&trusted, "9.9.9.9, 1.2.3.4, 10.0.0.9").await.0, 200);
    assert_eq!(client_ip(&trusted), "1.2.3.4");
    trusted.stop().await;

    let untrusted = start(Options {
        trusted_proxies: Some("10.0.0.0/8".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(pay(&untrusted, "1.2.3.4").await.0, 200);
    assert_eq!(client_ip(&untrusted), "127.0.0.1");
    untrusted.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_and_forwarded() {
    let s = start(Options {
        internal_token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let res = s
        .http
        .post(s.url("/pay/"))
        .header("x-request-id", "req-abc_123")
        .json(&json!({"token": GOOD_TOKEN, "order_no": "ORD1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-abc_123");
    assert_eq!(res.status().as_u16(), 200);
    let calls = s.calls.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for call in &calls {
        assert_eq!(call.request_id.as_deref(), Some("req-abc_123"), "{call:?}");
        assert_eq!(call.internal_token.as_deref(), Some("s3cret"), "{call:?}");
    }

    // An unusable incoming id is replaced by a fresh one, the same everywhere.
    let res = s
        .http
        .post(s.url("/login/"))
        .header("x-request-id", "bad id with spaces")
        .json(&json!({"code": "good"}))
        .send()
        .await
        .unwrap();
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(echoed, "bad id with spaces");
    assert!(echoed.len() == 36, "{echoed}");
    assert_eq!(
        s.calls.of("login")[0].request_id.as_deref(),
        Some(echoed.as_str())
    );

    // Errors carry one too.
    let res = s.http.get(s.url("/nowhere")).send().await.unwrap();
    assert!(res.headers().contains_key("x-request-id"));
    s.stop().await;
}

#[tokio::test]
async fn a_down_upstream_is_213() {
    let s = start(Options {
        auth_down: true,
        ..Default::default()
    })
    .await;
    assert_failure(
        &s.post_json("/login/", json!({"code": "good"})).await,
        213,
        503,
    );
    assert_failure(&s.get_auth("/me", Some(GOOD_TOKEN)).await, 213, 503);
    s.stop().await;
}

#[tokio::test]
async fn a_slow_upstream_hits_the_deadline() {
    let s = start(Options {
        rpc_timeout_ms: Some(300),
        ..Default::default()
    })
    .await;
    assert_failure(
        &s.post_json("/login/", json!({"code": "slow"})).await,
        213,
        503,
    );
    s.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let s = start(Options::default()).await;
    let (status, body) = s.get_auth("/healthz", None).await;
    assert_eq!((status, body["code"].as_u64()), (200, Some(200)));
    let (status, body) = s.get_auth("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"auth": "serving", "user": "serving", "pay": "serving"})
    );
    s.stop().await;

    let s = start(Options {
        user_down: true,
        ..Default::default()
    })
    .await;
    let (status, body) = s.get_auth("/healthz", None).await;
    assert_eq!(status, 200, "liveness ignores upstreams");
    assert_eq!(body["code"], 200);
    // A down user-service keeps the gateway ready (auth serves), and says which is down.
    let (status, body) = s.get_auth("/readyz", None).await;
    assert_eq!((status, body["code"].as_u64()), (200, Some(200)), "{body}");
    assert_eq!(body["data"]["auth"], "serving");
    assert_eq!(body["data"]["pay"], "serving");
    assert_ne!(body["data"]["user"], "serving");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_stops_on_a_multi_thread_runtime() {
    let s = start(Options::default()).await;
    let (status, _) = s.post_json("/login/", json!({"code": "good"})).await;
    assert_eq!(status, 200);
    let base = s.base.clone();
    s.stop().await;
    // Stopped: no longer accepting.
    let after = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "still serving after shutdown: {after:?}");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let s = start(Options {
        rpc_timeout_ms: Some(1500),
        ..Default::default()
    })
    .await;
    let req = s
        .http
        .post(s.url("/login/"))
        .json(&json!({"code": "slow"}))
        .send();
    let in_flight = tokio::spawn(req);
    // Wait until the request is inside the gateway (auth has seen it), then stop.
    for _ in 0..300 {
        if !s.calls.of("login").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(s.calls.of("login").len(), 1);
    s.shutdown.trigger();
    let res = in_flight
        .await
        .unwrap()
        .expect("the in-flight request gets its answer");
    assert_failure(&Stack::read(res).await, 213, 503);
    s.stop().await;
}
