//! jscode2session, the token paths and `/sandbox/login-code`, checked against the documented
//! JSON shapes and errcodes.

use std::time::Duration;

use crate::helpers::*;
use sandbox::{Config, DEV_APP_ID, DEV_APP_SECRET};
use serde_json::{Value, json};

type Query = Vec<(&'static str, String)>;

fn errcode(v: &Value) -> i64 {
    v["errcode"]
        .as_i64()
        .unwrap_or_else(|| panic!("no errcode in {v}"))
}

async fn new_code(sb: &sandbox::SandboxHandle, body: Value) -> Value {
    let (status, code) = post_json(sb, "/sandbox/login-code", body).await;
    assert_eq!(status, 200, "{code}");
    code
}

#[tokio::test]
async fn login_success_shape_and_single_use() {
    let sb = start().await;
    let code = new_code(&sb, json!({})).await;
    let openid = code["openid"].as_str().unwrap();
    assert_eq!(openid.len(), 28);
    assert!(openid.starts_with('o'));
    assert_eq!(code["appid"], DEV_APP_ID);
    assert_eq!(code["code"].as_str().unwrap().len(), 32);

    let res = http()
        .get(sb.url("/sns/jscode2session"))
        .query(&[
            ("appid", DEV_APP_ID),
            ("secret", DEV_APP_SECRET),
            ("js_code", code["code"].as_str().unwrap()),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let session: Value = res.json().await.unwrap();
    assert_eq!(
        sorted_keys(&session),
        ["openid", "session_key", "unionid"],
        "{session}"
    );
    assert_eq!(session["openid"], openid);
    assert_eq!(session["unionid"], code["unionid"]);
    let key = session["session_key"].as_str().unwrap();
    assert_eq!(base64_len(key), 16);

    // Single use: the same code again is 40163 "code been used".
    let again = jscode2session(
        &sb,
        DEV_APP_ID,
        DEV_APP_SECRET,
        code["code"].as_str().unwrap(),
    )
    .await;
    assert_eq!(errcode(&again), 40163);
    assert!(
        again["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("code been used"),
        "{again}"
    );
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn base64_len(s: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap()
        .len()
}

#[tokio::test]
async fn each_login_rotates_the_session_key() {
    let sb = start().await;
    let (openid, key1, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let (openid2, key2, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, Some(&openid)).await;
    assert_eq!(openid, openid2);
    assert_ne!(key1, key2);
}

#[tokio::test]
async fn documented_errcodes() {
    let sb = start().await;
    let code = new_code(&sb, json!({})).await;
    let code = code["code"].as_str().unwrap();
    let call = |q: Vec<(&'static str, String)>| {
        let url = sb.url("/sns/jscode2session");
        async move {
            http()
                .get(url)
                .query(&q)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let full = |appid: &str, secret: &str, code: &str, grant: &str| {
        vec![
            ("appid", appid.to_owned()),
            ("secret", secret.to_owned()),
            ("js_code", code.to_owned()),
            ("grant_type", grant.to_owned()),
        ]
    };
    let cases: Vec<(Query, i64, &str)> = vec![
        (
            full(DEV_APP_ID, "wrong-secret", code, "authorization_code"),
            40125,
            "invalid appsecret",
        ),
        (
            full(
                "wx0000000000000bad",
                DEV_APP_SECRET,
                code,
                "authorization_code",
            ),
            40013,
            "invalid appid",
        ),
        (
            full(
                DEV_APP_ID,
                DEV_APP_SECRET,
                "no-such-code",
                "authorization_code",
            ),
            40029,
            "invalid code",
        ),
        (
            full(DEV_APP_ID, DEV_APP_SECRET, code, "client_credential"),
            40002,
            "invalid grant_type",
        ),
        (
            vec![("secret", DEV_APP_SECRET.into()), ("js_code", code.into())],
            41002,
            "appid missing",
        ),
        (
            vec![("appid", DEV_APP_ID.into()), ("js_code", code.into())],
            41004,
            "appsecret missing",
        ),
        (
            full(DEV_APP_ID, DEV_APP_SECRET, "", "authorization_code"),
            41008,
            "missing code",
        ),
        // A code of another app is invalid for this one.
        (
            full(APP2_ID, APP2_SECRET, code, "authorization_code"),
            40029,
            "invalid code",
        ),
    ];
    for (query, want, msg) in cases {
        let v = call(query).await;
        assert_eq!(errcode(&v), want, "{v}");
        let errmsg = v["errmsg"].as_str().unwrap();
        assert!(errmsg.starts_with(msg) && errmsg.contains("rid: "), "{v}");
        assert!(v.get("openid").is_none());
    }
    // None of the failures consumed the code.
    let ok = jscode2session(&sb, DEV_APP_ID, DEV_APP_SECRET, code).await;
    assert!(ok.get("errcode").is_none(), "{ok}");
}

#[tokio::test]
async fn codes_expire() {
    let sb = sandbox::spawn(Config {
        code_ttl_secs: 1,
        ..config()
    })
    .await
    .unwrap();
    let code = new_code(&sb, json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = jscode2session(
        &sb,
        DEV_APP_ID,
        DEV_APP_SECRET,
        code["code"].as_str().unwrap(),
    )
    .await;
    assert_eq!(errcode(&v), 40029);
}

#[tokio::test]
async fn hammering_gives_45011() {
    let sb = sandbox::spawn(Config {
        code_rate_per_min: 3,
        app_rate_per_min: 5,
        ..config()
    })
    .await
    .unwrap();
    let code = new_code(&sb, json!({})).await;
    let code = code["code"].as_str().unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(errcode_or_zero(
            &jscode2session(&sb, DEV_APP_ID, DEV_APP_SECRET, code).await,
        ));
    }
    assert_eq!(codes, [0, 40163, 40163]);
    let v = jscode2session(&sb, DEV_APP_ID, DEV_APP_SECRET, code).await;
    assert_eq!(errcode(&v), 45011, "{v}");
    assert!(
        v["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("api minute-quota reach limit")
    );

    // 5 calls for the app so far (4 + this one): the sixth is over the app quota.
    let fresh = new_code(&sb, json!({})).await;
    let fresh = fresh["code"].as_str().unwrap();
    assert_eq!(
        errcode_or_zero(&jscode2session(&sb, DEV_APP_ID, DEV_APP_SECRET, "x").await),
        40029
    );
    assert_eq!(
        errcode(&jscode2session(&sb, DEV_APP_ID, DEV_APP_SECRET, fresh).await),
        45011
    );
    // Another app has its own quota.
    let (_, _, _) = login(&sb, APP2_ID, APP2_SECRET, None).await;
}

fn errcode_or_zero(v: &Value) -> i64 {
    v.get("errcode").and_then(Value::as_i64).unwrap_or(0)
}

#[tokio::test]
async fn one_person_one_unionid_across_apps() {
    let sb = start().await;
    let (openid1, _, unionid) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let code = new_code(&sb, json!({ "appid": APP2_ID, "unionid": unionid })).await;
    assert_eq!(code["unionid"], unionid.as_str());
    let openid2 = code["openid"].as_str().unwrap().to_owned();
    assert_ne!(openid1, openid2, "openids are per app");
    let session = jscode2session(&sb, APP2_ID, APP2_SECRET, code["code"].as_str().unwrap()).await;
    assert_eq!(session["unionid"], unionid.as_str());
    // Asking again for the same person in app 2 gives the same openid.
    let again = new_code(&sb, json!({ "appid": APP2_ID, "unionid": unionid })).await;
    assert_eq!(again["openid"], openid2.as_str());
    // A chosen openid is kept.
    let chosen = new_code(&sb, json!({ "openid": "oChosenOpenid000000000000001" })).await;
    assert_eq!(chosen["openid"], "oChosenOpenid000000000000001");
}

#[tokio::test]
async fn login_code_errors() {
    let sb = start().await;
    let (status, v) = post_json(&sb, "/sandbox/login-code", json!({ "appid": "wxnope" })).await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown_app")));
    let (status, v) = post_json(&sb, "/sandbox/login-code", json!({ "opnid": "x" })).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")));
    // An empty body is allowed: default app, new user.
    let res = http()
        .post(sb.url("/sandbox/login-code"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // An openid already bound to another person conflicts.
    let a = new_code(&sb, json!({})).await;
    let (status, v) = post_json(
        &sb,
        "/sandbox/login-code",
        json!({ "openid": a["openid"], "unionid": "oOtherPerson" }),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (409, Some("conflict")));
}

#[tokio::test]
async fn access_tokens() {
    let sb = start().await;
    let get = |q: Vec<(&'static str, &'static str)>| {
        let url = sb.url("/cgi-bin/token");
        async move {
            http()
                .get(url)
                .query(&q)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let t1 = get(vec![
        ("grant_type", "client_credential"),
        ("appid", DEV_APP_ID),
        ("secret", DEV_APP_SECRET),
    ])
    .await;
    assert_eq!(t1["expires_in"], 7200);
    assert_eq!(sorted_keys(&t1), ["access_token", "expires_in"]);
    let t2 = get(vec![
        ("grant_type", "client_credential"),
        ("appid", DEV_APP_ID),
        ("secret", DEV_APP_SECRET),
    ])
    .await;
    assert_ne!(
        t1["access_token"], t2["access_token"],
        "getAccessToken issues a new token per call"
    );
    assert_eq!(
        errcode(
            &get(vec![
                ("grant_type", "client_credential"),
                ("appid", DEV_APP_ID),
                ("secret", "bad")
            ])
            .await
        ),
        40125
    );
    assert_eq!(
        errcode(
            &get(vec![
                ("grant_type", "client_credential"),
                ("appid", "wxbad"),
                ("secret", "bad")
            ])
            .await
        ),
        40013
    );
    assert_eq!(
        errcode(
            &get(vec![
                ("grant_type", "password"),
                ("appid", DEV_APP_ID),
                ("secret", DEV_APP_SECRET)
            ])
            .await
        ),
        40002
    );

    let stable = |body: Value| {
        let url = sb.url("/cgi-bin/stable_token");
        async move {
            http()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let body =
        json!({ "grant_type": "client_credential", "appid": DEV_APP_ID, "secret": DEV_APP_SECRET });
    let s1 = stable(body.clone()).await;
    let s2 = stable(body.clone()).await;
    assert_eq!(
        s1["access_token"], s2["access_token"],
        "normal mode keeps the token"
    );
    assert_ne!(
        s1["access_token"], t1["access_token"],
        "isolated from getAccessToken"
    );
    assert!(s2["expires_in"].as_i64().unwrap() <= 7200);
    let forced = stable(json!({ "grant_type": "client_credential", "appid": DEV_APP_ID, "secret": DEV_APP_SECRET, "force_refresh": true })).await;
    assert_ne!(forced["access_token"], s1["access_token"]);
    assert_eq!(
        stable(body.clone()).await["access_token"],
        forced["access_token"]
    );
    // A second force within 30 s "不会刷新" (auth.getStableAccessToken doc): the same token.
    let too_soon = stable(json!({ "grant_type": "client_credential", "appid": DEV_APP_ID, "secret": DEV_APP_SECRET, "force_refresh": true })).await;
    assert_eq!(
        too_soon["access_token"], forced["access_token"],
        "{too_soon}"
    );
    assert_eq!(
        errcode(
            &stable(
                json!({ "grant_type": "client_credential", "appid": DEV_APP_ID, "secret": "x" })
            )
            .await
        ),
        40125
    );
    assert_eq!(
        errcode(&stable(json!({ "grant_type": "client_credential", "secret": "x" })).await),
        41002
    );
    let garbage = http()
        .post(sb.url("/cgi-bin/stable_token"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(&garbage.json::<Value>().await.unwrap()), 47001);
}

#[tokio::test]
async fn quota_and_http_faults_on_login_paths() {
    let sb = start().await;
    let (status, _) = post_json(
        &sb,
        "/sandbox/faults",
        json!({ "quota_exceeded": true, "times": 1 }),
    )
    .await;
    assert_eq!(status, 200);
    let code = new_code(&sb, json!({})).await;
    let code = code["code"].as_str().unwrap();
    assert_eq!(
        errcode(&jscode2session(&sb, DEV_APP_ID, DEV_APP_SECRET, code).await),
        45011
    );
    // times: 1 → cleared; the code was not consumed.
    let (_, faults) = get_json(&sb, "/sandbox/faults").await;
    assert_eq!(faults["quota_exceeded"], false);
    assert!(
        jscode2session(&sb, DEV_APP_ID, DEV_APP_SECRET, code)
            .await
            .get("errcode")
            .is_none()
    );

    // Per-request header: a 502 for this request only.
    let res = http()
        .get(sb.url("/sns/jscode2session"))
        .header("X-Sandbox-Faults", r#"{"http_status":502}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let res = http()
        .get(sb.url("/cgi-bin/token"))
        .header("X-Sandbox-Faults", r#"{"http_status":404}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "only 5xx statuses are accepted");
}

#[tokio::test]
async fn faults_from_config_env_shape() {
    // Faults set in Config (i.e. from SANDBOX_FAULT_* at start) apply from the first request.
    let mut config = config();
    config.faults.http_status = Some(503);
    let sb = sandbox::spawn(config).await.unwrap();
    let res = http().get(sb.url("/cgi-bin/token")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    // Developer endpoints are never affected.
    let (status, _) = post_json(&sb, "/sandbox/login-code", json!({})).await;
    assert_eq!(status, 200);
    let res = http()
        .delete(sb.url("/sandbox/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = http().get(sb.url("/cgi-bin/token")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn latency_fault_delays_answers() {
    let sb = start().await;
    post_json(
        &sb,
        "/sandbox/faults",
        json!({ "latency_ms": 800, "path_prefix": "/cgi-bin/" }),
    )
    .await;
    let started = std::time::Instant::now();
    let res = http()
        .get(sb.url("/sns/jscode2session"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "other prefixes are not delayed"
    );
    let started = std::time::Instant::now();
    let res = http().get(sb.url("/cgi-bin/token")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(800));
    let timeout = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(
        timeout
            .get(sb.url("/cgi-bin/token"))
            .send()
            .await
            .unwrap_err()
            .is_timeout()
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sb = start().await;
    let url = sb.url("/healthz");
    assert_eq!(
        http().get(&url).send().await.unwrap().text().await.unwrap(),
        "ok"
    );
    sb.shutdown().await.unwrap();
    assert!(http().get(&url).send().await.is_err());
}
