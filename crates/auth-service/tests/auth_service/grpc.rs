//! AuthService end to end over gRPC: the real service on a port, the WeChat sandbox, a small
//! fake user-service, and sessions in memory or in the real Redis.

use std::time::Duration;

use crate::helpers::*;
use service_kit::{ErrorReason, Secret};
use tonic::Request;
use wxmp_proto::auth::v1::{AuthenticateRequest, GetSessionKeyRequest, LoginRequest};

/// Runs each scenario on both session stores.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Store::Memory).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Store::Redis).await;
                }
            )*
        }
    };
}

on_both_stores!(
    login_then_authenticate,
    newest_session_key_wins,
    one_call_authenticates_and_answers_the_newest_key,
    logout_invalidates,
    expired_session_is_refused,
    reused_code_is_invalid_code,
);

// ---- scenarios on both stores ---------------------------------------------------------------

async fn login_then_authenticate(store: Store) {
    let stack = start(Options::on(store)).await;
    let code = stack.new_code().await;

    let mut request = Request::new(LoginRequest {
        app_id: String::new(),
        code: code.code.clone(),
    });
    request.metadata_mut().insert(
        service_kit::grpc::REQUEST_ID,
        "req-login-1".parse().unwrap(),
    );
    let login = stack
        .auth
        .clone()
        .login(request)
        .await
        .unwrap()
        .into_inner();

    assert_eq!(login.token.len(), 43, "URL-safe base64 of 32 bytes");
    assert!(auth_service::token::is_well_formed(&login.token));
    assert_eq!(login.expires_in, 3600);
    assert!(login.new_user);
    let principal = login.principal.clone().unwrap();
    assert_eq!(
        principal.app_id, DEV_APP,
        "empty app_id selects the default app"
    );
    assert_eq!(principal.openid, code.openid);
    assert_eq!(principal.unionid, code.unionid);
    assert!(principal.user_id > 0);
    assert_eq!(
        stack.users.request_ids(),
        vec!["req-login-1".to_owned()],
        "request id forwarded"
    );

    let auth = stack.authenticate(&login.token).await.unwrap();
    assert_eq!(auth.principal, login.principal);
    assert!(
        auth.expires_in > 0 && auth.expires_in <= 3600,
        "{}",
        auth.expires_in
    );

    // The same user again: not new, same id, a second independent token.
    let again = stack
        .login(DEV_APP, &stack.code_for(&code.openid).await.code)
        .await
        .unwrap();
    assert!(!again.new_user);
    assert_eq!(again.principal.as_ref().unwrap().user_id, principal.user_id);
    assert_ne!(again.token, login.token);
    for token in [&login.token, &again.token] {
        let auth = stack.authenticate(token).await.unwrap();
        assert_eq!(auth.principal.as_ref(), Some(&principal));
        assert!(auth.expires_in > 0 && auth.expires_in <= 3600, "{auth:?}");
    }

    if store == Store::Redis {
        // Only the token's hash is stored, never the token itself.
        let mut conn = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", stack.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        let hashed = format!(
            "{}session:{}",
            stack.redis_prefix,
            auth_service::token::hash(&login.token)
        );
        assert!(keys.contains(&hashed), "{keys:?}");
        for key in &keys {
            assert!(!key.contains(&login.token));
            let value: String = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(!value.contains(&login.token));
            let ttl: i64 = redis::cmd("TTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{key} has no TTL");
        }
    }
}

async fn newest_session_key_wins(store: Store) {
    let stack = start(Options::on(store)).await;
    let code = stack.new_code().await;
    stack.login("", &code.code).await.unwrap();
    let first = stack.session_key(DEV_APP, &code.openid).await.unwrap();

    stack
        .login("", &stack.code_for(&code.openid).await.code)
        .await
        .unwrap();
    let second = stack.session_key(DEV_APP, &code.openid).await.unwrap();
    assert_ne!(first, second, "the second login rotated the key");

    // What the phone encrypts now opens with the key we answer, not with the older one.
    let data = stack.user_data(&code.openid).await;
    let plain = wechat::crypto::decrypt_user_data(&second, &data.encrypted_data, &data.iv, DEV_APP)
        .expect("GetSessionKey answers WeChat's current key");
    assert_eq!(plain["openId"], code.openid.as_str());
    assert!(
        wechat::crypto::decrypt_user_data(&first, &data.encrypted_data, &data.iv, DEV_APP).is_err()
    );
}

/// AuthenticateWithSessionKey is Authenticate + GetSessionKey in one call: the same principal
/// and expiry as Authenticate, the same (newest) key as GetSessionKey, the same refusals.
async fn one_call_authenticates_and_answers_the_newest_key(store: Store) {
    let stack = start(Options::on(store)).await;
    let code = stack.new_code().await;
    let first = stack.login("", &code.code).await.unwrap();
    // A second login rotates the key: the first token must answer the newest key too.
    let second = stack
        .login("", &stack.code_for(&code.openid).await.code)
        .await
        .unwrap();
    let newest = stack.session_key(DEV_APP, &code.openid).await.unwrap();
    for login in [&first, &second] {
        let both = stack
            .authenticate_with_session_key(&login.token)
            .await
            .unwrap();
        let alone = stack.authenticate(&login.token).await.unwrap();
        assert_eq!(both.principal, alone.principal);
        assert_eq!(both.principal, login.principal);
        assert!(
            both.expires_in > 0 && both.expires_in <= 3600,
            "{}",
            both.expires_in
        );
        assert_eq!(both.session_key, newest);
    }
    let data = stack.user_data(&code.openid).await;
    let answered = stack
        .authenticate_with_session_key(&first.token)
        .await
        .unwrap()
        .session_key;
    let plain =
        wechat::crypto::decrypt_user_data(&answered, &data.encrypted_data, &data.iv, DEV_APP)
            .expect("the answered key is WeChat's current one");
    assert_eq!(plain["openId"], code.openid.as_str());

    for refused in ["", "short", &"A".repeat(43)] {
        assert_eq!(
            reason(stack.authenticate_with_session_key(refused).await),
            ErrorReason::InvalidToken,
            "{refused:?}"
        );
    }
    assert!(stack.logout(&first.token).await);
    assert_eq!(
        reason(stack.authenticate_with_session_key(&first.token).await),
        ErrorReason::InvalidToken
    );
}

async fn logout_invalidates(store: Store) {
    let stack = start(Options::on(store)).await;
    let login = stack.login("", &stack.new_code().await.code).await.unwrap();
    let other = stack
        .login(
            "",
            &stack
                .code_for(&login.principal.as_ref().unwrap().openid)
                .await
                .code,
        )
        .await
        .unwrap();

    assert!(stack.logout(&login.token).await, "a live token is revoked");
    assert_eq!(
        reason(stack.authenticate(&login.token).await),
        ErrorReason::InvalidToken
    );
    assert!(
        !stack.logout(&login.token).await,
        "revoking twice answers false"
    );
    assert_eq!(
        stack.authenticate(&other.token).await.unwrap().principal,
        other.principal,
        "other sessions stay"
    );
    assert!(!stack.logout("not-a-token").await);
}

async fn expired_session_is_refused(store: Store) {
    let mut options = Options::on(store);
    options.session_ttl_secs = 1;
    let stack = start(options).await;
    let login = stack.login("", &stack.new_code().await.code).await.unwrap();
    assert_eq!(login.expires_in, 1);
    // Polled until refused (bounded): the 1 s session must not live for seconds.
    let mut polls = 0;
    while stack.authenticate(&login.token).await.is_ok() {
        polls += 1;
        assert!(polls < 100, "the session outlived its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reason(stack.authenticate(&login.token).await),
        ErrorReason::InvalidToken
    );
}

async fn reused_code_is_invalid_code(store: Store) {
    let stack = start(Options::on(store)).await;
    let code = stack.new_code().await;
    stack.login("", &code.code).await.unwrap();
    assert_eq!(
        reason(stack.login("", &code.code).await),
        ErrorReason::InvalidCode
    );
    assert_eq!(
        reason(stack.login("", "no-such-code").await),
        ErrorReason::InvalidCode
    );
    assert_eq!(
        reason(stack.login("", "").await),
        ErrorReason::MissingParameter
    );
}

// ---- scenarios on one store ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_refused_without_the_store() {
    // A Redis that cannot be reached: a well-formed token would answer DEPENDENCY_UNAVAILABLE,
    // so INVALID_TOKEN proves the shape check comes first.
    let mut options = Options::on(Store::Redis);
    options.redis_url = Some("redis://127.0.0.1:1".into());
    let stack = start(options).await;
    let good_shape = "A".repeat(43);
    let bad = [
        String::new(),
        "short".into(),
        "A".repeat(42),
        "A".repeat(44),
        format!("{}+", "A".repeat(42)),
        format!("{}=", "A".repeat(42)),
        "é".repeat(21),
    ];
    for token in bad {
        assert_eq!(
            reason(stack.authenticate(&token).await),
            ErrorReason::InvalidToken,
            "{token:?}"
        );
    }
    assert_eq!(
        reason(bounded(stack.authenticate(&good_shape)).await),
        ErrorReason::DependencyUnavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_is_dependency_unavailable() {
    let mut options = Options::on(Store::Redis);
    options.redis_url = Some("redis://127.0.0.1:1".into());
    let stack = start(options).await;
    let code = stack.new_code().await;
    assert_eq!(
        reason(bounded(stack.login("", &code.code)).await),
        ErrorReason::DependencyUnavailable
    );
    assert_eq!(
        reason(bounded(stack.session_key(DEV_APP, &code.openid)).await),
        ErrorReason::DependencyUnavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_answering_5xx_is_wechat_unavailable() {
    let mut options = Options::on(Store::Memory);
    options.sandbox.faults.http_status = Some(503);
    let stack = start(options).await;
    let code = stack.new_code().await;
    assert_eq!(
        reason(stack.login("", &code.code).await),
        ErrorReason::WechatUnavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_unreachable_is_wechat_unavailable() {
    let mut options = Options::on(Store::Memory);
    options.wechat_base = Some("http://127.0.0.1:1".into());
    let stack = start(options).await;
    let code = stack.new_code().await;
    assert_eq!(
        reason(bounded(stack.login("", &code.code)).await),
        ErrorReason::WechatUnavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_quota_is_rate_limited() {
    let mut options = Options::on(Store::Memory);
    options.sandbox.faults.quota_exceeded = true;
    let stack = start(options).await;
    let code = stack.new_code().await;
    assert_eq!(
        reason(stack.login("", &code.code).await),
        ErrorReason::RateLimited
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_service_down_is_dependency_unavailable() {
    let mut options = Options::on(Store::Memory);
    options.user_service_url = Some("http://127.0.0.1:1".into());
    let stack = start(options).await;
    let code = stack.new_code().await;
    assert_eq!(
        reason(bounded(stack.login("", &code.code)).await),
        ErrorReason::DependencyUnavailable
    );
    // The code was spent at WeChat, so the key it rotated is kept all the same.
    let key = stack.session_key(DEV_APP, &code.openid).await.unwrap();
    let data = stack.user_data(&code.openid).await;
    let plain = wechat::crypto::decrypt_user_data(&key, &data.encrypted_data, &data.iv, DEV_APP)
        .expect("the key WeChat rotated");
    assert_eq!(plain["openId"], code.openid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_app_and_missing_parameters() {
    let stack = start(Options::on(Store::Memory)).await;
    let code = stack.new_code().await;
    assert_eq!(
        reason(stack.login("wxnotconfigured", &code.code).await),
        ErrorReason::UnknownApp
    );
    // The code was not spent: it still logs in with the right app.
    let login = stack.login(DEV_APP, &code.code).await.unwrap();
    let principal = login.principal.unwrap();
    assert_eq!(
        (principal.app_id.as_str(), principal.openid.as_str()),
        (DEV_APP, code.openid.as_str())
    );

    assert_eq!(
        reason(stack.session_key(DEV_APP, "nobody").await),
        ErrorReason::NotFound
    );
    assert_eq!(
        reason(stack.session_key("", "o1").await),
        ErrorReason::MissingParameter
    );
    assert_eq!(
        reason(stack.session_key(DEV_APP, "").await),
        ErrorReason::MissingParameter
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_apps_share_the_unionid() {
    let mut options = Options::on(Store::Memory);
    options.sandbox.apps = "wxaaaaaaaaaaaaaaa1:secret-a,wxbbbbbbbbbbbbbbb2:secret-b"
        .parse()
        .unwrap();
    let stack = start(options).await;

    let a = stack.new_code().await;
    assert_eq!(a.appid, "wxaaaaaaaaaaaaaaa1");
    let in_a = stack.login("", &a.code).await.unwrap().principal.unwrap();
    assert_eq!(in_a.app_id, "wxaaaaaaaaaaaaaaa1");

    let b = stack
        .code(serde_json::json!({ "appid": "wxbbbbbbbbbbbbbbb2", "unionid": a.unionid }))
        .await;
    let in_b = stack
        .login("wxbbbbbbbbbbbbbbb2", &b.code)
        .await
        .unwrap()
        .principal
        .unwrap();
    assert_eq!(in_b.app_id, "wxbbbbbbbbbbbbbbb2");
    assert_eq!(in_b.unionid, in_a.unionid, "one person, one unionid");
    assert_ne!(in_b.openid, in_a.openid, "openids are per app");
    assert_ne!(in_b.user_id, in_a.user_id, "users are per app");

    // A code of app B is not valid for app A.
    let b2 = stack
        .code(serde_json::json!({ "appid": "wxbbbbbbbbbbbbbbb2", "openid": b.openid }))
        .await;
    assert_eq!(
        reason(stack.login("", &b2.code).await),
        ErrorReason::InvalidCode
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_token_is_enforced() {
    let mut options = Options::on(Store::Memory);
    options.internal_token = Some("internal-s3cret");
    let stack = start(options).await;

    let anonymous = client(&stack.auth_url, None);
    let err = anonymous
        .clone()
        .authenticate(AuthenticateRequest {
            token: "A".repeat(43),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let wrong = client(&stack.auth_url, Some(&Secret::new("internal-guess")));
    let err = wrong
        .clone()
        .get_session_key(GetSessionKeyRequest {
            app_id: DEV_APP.into(),
            openid: "o".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // With the token: the login goes through, and so does our call to user-service, which
    // requires the same token.
    let login = stack.login("", &stack.new_code().await.code).await.unwrap();
    assert_eq!(
        stack.authenticate(&login.token).await.unwrap().principal,
        login.principal
    );
    assert!(stack.config.internal.internal_token.is_some());
}
