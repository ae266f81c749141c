//! User data end to end: the sandbox encrypts a profile with the user's session_key, the
//! gateway hands it to user-service, which decrypts, checks and stores it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxmp_tests::{Backend, TestStack, on_both_backends};

fn profile(nick: &str) -> Value {
    json!({
        "nickName": nick,
        "gender": 2,
        "language": "zh_CN",
        "city": "Guangzhou",
        "province": "Guangdong",
        "country": "China",
        "avatarUrl": "https://thirdwx.qlogo.cn/mmopen/vi_32/x/132"
    })
}

async fn post_userinfo(t: &TestStack, token: &str, data: &Value) -> (StatusCode, Value) {
    t.post(
        &t.gateway("/userinfo/"),
        json!({
            "token": token,
            "encryptedData": data["encryptedData"],
            "iv": data["iv"],
            "rawData": data["rawData"],
            "signature": data["signature"],
        }),
    )
    .await
}

async fn profile_round_trip(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, openid) = t.login(None).await;
    let nick = "微信用户🐼 テスト 👩‍👩‍👧";
    let data = t.user_data(&openid, profile(nick)).await;
    // The seed's body: {token, encryptedData, iv}; rawData/signature are optional.
    let (status, answer) = t
        .post(
            &t.gateway("/userinfo/"),
            json!({ "token": token, "encryptedData": data["encryptedData"], "iv": data["iv"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["code"], 200);
    assert_eq!(answer["msg"], "suc");
    assert_eq!(answer["data"]["nickname"], nick);
    assert_eq!(answer["data"]["city"], "Guangzhou");
    assert_eq!(answer["data"]["gender"], 2);
    let text = answer.to_string();
    assert!(
        !text.contains("session_key") && !text.contains("sessionKey"),
        "{text}"
    );

    let (_, me) = t.me(&token).await;
    assert_eq!(me["data"]["nickname"], nick, "{me}");

    // With rawData + signature as well.
    let data = t.user_data(&openid, profile("第二次")).await;
    let (status, answer) = post_userinfo(&t, &token, &data).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["nickname"], "第二次");
}
on_both_backends!(workers = 4; profile_round_trip as a_sandbox_profile_is_decrypted_and_stored);

async fn failures_are_uniform(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, openid) = t.login(None).await;
    let good = t.user_data(&openid, profile("原来的")).await;
    let (status, _) = post_userinfo(&t, &token, &good).await;
    assert_eq!(status, StatusCode::OK);

    let data = t.user_data(&openid, profile("攻击者")).await;
    let encrypted = data["encryptedData"].as_str().unwrap().to_owned();
    let mut tampered = encrypted.clone().into_bytes();
    // Flip a character in the last block: the padding check fails.
    let at = tampered.len() - 6;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let cases = [
        (
            "bad base64",
            json!({ "encryptedData": "%%%not base64%%%", "iv": data["iv"] }),
        ),
        (
            "wrong iv length",
            json!({ "encryptedData": encrypted, "iv": "AAAA" }),
        ),
        (
            "bad padding",
            json!({ "encryptedData": String::from_utf8(tampered).unwrap(), "iv": data["iv"] }),
        ),
        (
            "bad signature",
            json!({ "encryptedData": encrypted, "iv": data["iv"], "rawData": data["rawData"], "signature": "0".repeat(40) }),
        ),
    ];
    let mut messages = Vec::new();
    for (what, mut body) in cases {
        body["token"] = json!(token);
        let (status, answer) = t.post(&t.gateway("/userinfo/"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(answer["code"], 205, "{what}: {answer}");
        messages.push(answer["msg"].clone());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "one message for every failure: {messages:?}"
    );
    let (_, me) = t.me(&token).await;
    assert_eq!(me["data"]["nickname"], "原来的", "nothing changed: {me}");
}
on_both_backends!(workers = 4; failures_are_uniform as every_decryption_failure_is_205_and_changes_nothing);

async fn relogin_between(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (_, openid) = t.login(None).await;
    let stale = t.user_data(&openid, profile("旧")).await;
    // A second wx.login rotates the session_key: the payload made before it must fail.
    let (token, _) = t.login(Some(&openid)).await;
    let (status, answer) = post_userinfo(&t, &token, &stale).await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(205)),
        "{answer}"
    );
    let fresh = t.user_data(&openid, profile("新")).await;
    let (status, answer) = post_userinfo(&t, &token, &fresh).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["nickname"], "新");
}
on_both_backends!(workers = 4; relogin_between as a_relogin_between_fetch_and_post_fails_cleanly_then_succeeds);

async fn phone_number(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (token, openid) = t.login(None).await;
    let (status, data) = t
        .post(
            &t.sandbox("/sandbox/user-data"),
            json!({ "openid": openid, "kind": "phone", "phone": "13800138000", "countryCode": "86" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{data}");
    let (status, answer) = t
        .post(
            &t.gateway("/phone/"),
            json!({ "token": token, "encryptedData": data["encryptedData"], "iv": data["iv"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, me) = t.me(&token).await;
    assert_eq!(me["data"]["phone"], "13800138000", "{me}");
}
on_both_backends!(workers = 4; phone_number as a_phone_number_is_stored);

async fn token_required(backend: Backend) {
    let t = TestStack::start(backend).await;
    let (status, answer) = t
        .post(
            &t.gateway("/userinfo/"),
            json!({ "token": "x".repeat(43), "encryptedData": "AAAA", "iv": "AAAA" }),
        )
        .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!(202)),
        "{answer}"
    );
}
on_both_backends!(workers = 4; token_required as an_unknown_token_is_202);
