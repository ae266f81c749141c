//! code2session and access_token against a local server answering WeChat's documented samples.

use std::time::{Duration, Instant};

use crate::helpers::{Reply, client_for, serve, serve_silence};
use wechat::{ApiError, Code2SessionError};

const APPID: &str = "wx4f4bc4dec97d474b";
const SECRET: &str = "S3CR3T-app-secret-0123456789abcdef";

fn json(body: &str) -> Reply {
    Reply::new("application/json; charset=utf-8", body.to_owned())
}

fn assert_no_secret(err: &ApiError) {
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(SECRET), "secret leaked: {shown}");
    assert!(!shown.contains("js_code"), "query leaked: {shown}");
}

#[tokio::test]
async fn success_sends_the_documented_query() {
    let server = serve(|_| {
        json(r#"{"openid":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","session_key":"tiihtNczf5v6AKRyjwEUhQ==","unionid":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA"}"#)
    })
    .await;
    let session = server
        .client()
        .code2session(APPID, SECRET, "0a1b2c+/=")
        .await
        .unwrap();
    assert_eq!(session.openid, "oGZUI0egBJY1zhBYw2KhdUfwVJJE");
    assert_eq!(session.session_key, "tiihtNczf5v6AKRyjwEUhQ==");
    assert_eq!(
        session.unionid.as_deref(),
        Some("ocMvos6NjeKLIBqg5Mr9QjxrP1FA")
    );
    assert!(!format!("{session:?}").contains("tiiht"));

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    let url = url::Url::parse(&format!("http://x{}", requests[0].target)).unwrap();
    assert_eq!(url.path(), "/sns/jscode2session");
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(
        query,
        [
            ("appid".to_owned(), APPID.to_owned()),
            ("secret".to_owned(), SECRET.to_owned()),
            ("js_code".to_owned(), "0a1b2c+/=".to_owned()),
            ("grant_type".to_owned(), "authorization_code".to_owned()),
        ]
    );
}

#[tokio::test]
async fn text_plain_and_errcode_zero_are_success() {
    let server = serve(|_| {
        Reply::new(
            "text/plain",
            r#"{"session_key":"HyVFkGl5F5OQWJZZaNzBBg==","openid":"o1","errcode":0,"errmsg":"ok"}"#,
        )
    })
    .await;
    let session = server
        .client()
        .code2session(APPID, SECRET, "c")
        .await
        .unwrap();
    assert_eq!(session.openid, "o1");
    assert_eq!(session.unionid, None);
}

#[tokio::test]
async fn documented_errcodes() {
    let cases = [
        (
            r#"{"errcode":40029,"errmsg":"invalid code, rid: 6565a5a4-3f4bd7a1-1b5c3b3a"}"#,
            ApiError::InvalidCode,
            40029,
        ),
        (
            r#"{"errcode":40163,"errmsg":"code been used, rid: 6565a5a4-1b2c3d4e-5f6a7b8c"}"#,
            ApiError::CodeUsed,
            40163,
        ),
        (
            r#"{"errcode":45011,"errmsg":"api minute-quota reach limit  mustslower  retry next minute"}"#,
            ApiError::RateLimited,
            45011,
        ),
        (
            r#"{"errcode":40226,"errmsg":"high risk user"}"#,
            ApiError::HighRiskUser,
            40226,
        ),
        (
            r#"{"errcode":40125,"errmsg":"invalid appsecret, view more at http://t.cn/RAEkdVq"}"#,
            ApiError::InvalidAppSecret,
            40125,
        ),
        (
            r#"{"errcode":40013,"errmsg":"invalid appid"}"#,
            ApiError::InvalidAppId,
            40013,
        ),
        (
            r#"{"errcode":-1,"errmsg":"system error"}"#,
            ApiError::SystemBusy,
            -1,
        ),
    ];
    for (body, expected, code) in cases {
        let server = serve(move |_| Reply::new("text/plain", body)).await;
        let err: Code2SessionError = server
            .client()
            .code2session(APPID, SECRET, "c")
            .await
            .unwrap_err();
        assert_eq!(
            std::mem::discriminant(&err),
            std::mem::discriminant(&expected),
            "{body} -> {err:?}"
        );
        assert_eq!(err.errcode(), Some(code));
        assert_eq!(err.is_retryable(), code == -1, "{body}");
        assert_no_secret(&err);
    }
}

#[tokio::test]
async fn unknown_errcode_is_other() {
    let server = serve(|_| json(r#"{"errcode":40001,"errmsg":"invalid credential"}"#)).await;
    let err = server
        .client()
        .code2session(APPID, SECRET, "c")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Other { errcode: 40001, errmsg } if errmsg == "invalid credential")
    );
    assert_eq!(err.errcode(), Some(40001));
}

#[tokio::test]
async fn invalid_json_and_missing_fields_are_bad_responses() {
    for body in [
        "<html>502 Bad Gateway</html>",
        "",
        r#"{"openid":"o1"}"#,
        r#"{"session_key":"k"}"#,
        r#"{"openid":"","session_key":"k"}"#,
        r#"{"openid":123,"session_key":"S3CR3T"}"#,
        r#"[1,2]"#,
    ] {
        let server = serve(move |_| json(body)).await;
        let err = server
            .client()
            .code2session(APPID, SECRET, "c")
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::BadResponse(_)), "{body} -> {err:?}");
        assert!(!err.is_retryable());
        assert_eq!(err.errcode(), None);
        assert!(!err.to_string().contains("S3CR3T"), "{err}");
    }
}

#[tokio::test]
async fn server_errors_are_transport_and_retryable() {
    let server = serve(|_| json("{}").status(502)).await;
    let err = server
        .client()
        .code2session(APPID, SECRET, "c")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_no_secret(&err);

    let server = serve(|_| json("{}").status(404)).await;
    let err = server
        .client()
        .code2session(APPID, SECRET, "c")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::BadResponse(_)), "{err:?}");
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_configured_timeout() {
    let base = serve_silence().await;
    let client = client_for(&base, Duration::from_millis(300));
    let started = Instant::now();
    let err = client.code2session(APPID, SECRET, "c").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, ApiError::Transport(m) if m.contains("timeout")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_no_secret(&err);
}

#[tokio::test]
async fn connection_refused_is_transport() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = client_for(&base, Duration::from_secs(2))
        .code2session(APPID, SECRET, "c")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Transport(_)), "{err:?}");
    assert_no_secret(&err);
}

#[tokio::test]
async fn empty_code_is_invalid_without_a_request() {
    let server = serve(|_| json("{}")).await;
    let err = server
        .client()
        .code2session(APPID, SECRET, "")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::InvalidCode));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn access_token_success_and_error() {
    let server = serve(|req| {
        if req.target.contains("appid=wxbad") {
            json(r#"{"errcode":40013,"errmsg":"invalid appid"}"#)
        } else {
            json(r#"{"access_token":"ACCESS_TOKEN_VALUE","expires_in":7200}"#)
        }
    })
    .await;
    let token = server.client().access_token(APPID, SECRET).await.unwrap();
    assert_eq!(token.access_token, "ACCESS_TOKEN_VALUE");
    assert_eq!(token.expires_in, 7200);
    assert!(!format!("{token:?}").contains("ACCESS_TOKEN_VALUE"));
    let target = &server.requests()[0].target;
    assert!(
        target.starts_with("/cgi-bin/token?grant_type=client_credential&appid="),
        "{target}"
    );

    let err = server
        .client()
        .access_token("wxbad", SECRET)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::InvalidAppId));
}

#[tokio::test]
async fn base_url_with_trailing_slash() {
    let server = serve(|_| json(r#"{"openid":"o","session_key":"k"}"#)).await;
    let client = client_for(&format!("{}/", server.base), Duration::from_secs(5));
    client.code2session(APPID, SECRET, "c").await.unwrap();
    assert!(
        server.requests()[0]
            .target
            .starts_with("/sns/jscode2session?")
    );
}
