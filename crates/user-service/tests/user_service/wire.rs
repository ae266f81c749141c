//! `serve` for real on 127.0.0.1:0, with a fake auth-service answering GetSessionKey over
//! gRPC: the production path (channel, internal token, request id, status metadata).

use std::time::Duration;

use crate::helpers::*;
use service_kit::{
    ErrorReason, Secret, Shutdown,
    grpc::{AttachToken, REQUEST_ID},
};
use tonic::{Request, service::interceptor::InterceptedService, transport::Channel};
use user_service::{Config, DECRYPT_FAILED_MESSAGE};
use wxmp_proto::user::v1::{
    EnsureUserRequest, GetUserRequest, UpdatePhoneNumberRequest, UpdateProfileRequest,
    user_service_client::UserServiceClient,
};

on_both_backends!(
    profile_and_phone_over_the_wire,
    a_session_token_costs_one_auth_call,
    internal_token_is_required,
    auth_service_down_is_a_dependency_error,
);

const TOKEN: &str = "internal-test-token";

type Client = UserServiceClient<InterceptedService<Channel, AttachToken>>;

struct Running {
    _db: TestDb,
    fake: FakeAuth,
    url: String,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<Result<(), user_service::Error>>,
}

impl Running {
    /// user-service on a fresh database, talking to `auth_url` (the fake unless overridden).
    async fn start(backend: Backend, auth_url: Option<String>) -> Self {
        let db = fresh_db(backend).await;
        let fake = FakeAuth::default();
        let auth_url = match auth_url {
            Some(url) => url,
            None => spawn_fake_auth(fake.clone()).await,
        };
        let mut config = Config::new(db.url.clone(), auth_url);
        config.internal.internal_token = Some(Secret::new(TOKEN));
        config.rpc_timeout_ms = 10_000;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::new();
        let server = tokio::spawn(user_service::serve(config, listener, shutdown.clone()));
        Self {
            _db: db,
            fake,
            url,
            shutdown,
            server,
        }
    }

    fn client(&self, token: Option<&str>) -> Client {
        let channel =
            service_kit::grpc::channel(&self.url, Duration::from_secs(30), Duration::from_secs(30))
                .unwrap();
        let token = token.map(Secret::new);
        UserServiceClient::with_interceptor(channel, AttachToken::new(token.as_ref()))
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .expect("serve stops after shutdown")
            .unwrap()
            .expect("serve ends cleanly");
    }
}

fn with_request_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(REQUEST_ID, id.parse().unwrap());
    request
}

async fn profile_and_phone_over_the_wire(backend: Backend) {
    let running = Running::start(backend, None).await;
    let mut client = running.client(Some(TOKEN));

    let user = client
        .ensure_user(EnsureUserRequest {
            app_id: APP.into(),
            openid: "o-wire".into(),
            unionid: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    running.fake.keys.rotate(APP, "o-wire", &key(1));

    let nickname = "测试🐼用户";
    let data = seal(&key(1), &iv(1), &profile_json(APP, "o-wire", nickname));
    let request = UpdateProfileRequest {
        principal: Some(principal_of(&user)),
        encrypted_data: data.clone(),
        iv: iv(1),
        raw_data: String::new(),
        signature: String::new(),
        token: String::new(),
    };
    let stored = client
        .update_profile(with_request_id(request.clone(), "req-wire-1"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(stored.nickname, nickname);
    assert_eq!(stored.id, user.id);
    {
        let seen = running.fake.seen.lock().unwrap();
        let call = seen.last().expect("auth-service was asked for the key");
        assert_eq!(call.request_id.as_deref(), Some("req-wire-1"));
        assert_eq!(call.internal_token.as_deref(), Some(TOKEN));
        assert_eq!(
            (call.app_id.as_str(), call.openid.as_str()),
            (APP, "o-wire")
        );
    }

    // A new login rotates the key: data sealed with the old one is refused, row unchanged.
    running.fake.keys.rotate(APP, "o-wire", &key(2));
    let err = client.update_profile(request.clone()).await.unwrap_err();
    assert_reason(&err, ErrorReason::DecryptFailed);
    assert_eq!(err.message(), DECRYPT_FAILED_MESSAGE);

    // No live session: auth-service answers NOT_FOUND, the caller sees DECRYPT_FAILED.
    running.fake.keys.forget(APP, "o-wire");
    let err = client.update_profile(request).await.unwrap_err();
    assert_reason(&err, ErrorReason::DecryptFailed);
    assert_eq!(err.message(), DECRYPT_FAILED_MESSAGE);

    let got = client
        .get_user(GetUserRequest { user_id: user.id })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(got, stored);

    running.fake.keys.rotate(APP, "o-wire", &key(3));
    let phone = client
        .update_phone_number(UpdatePhoneNumberRequest {
            principal: Some(principal_of(&user)),
            encrypted_data: seal(&key(3), &iv(5), &phone_json(APP, "2025550123", "1")),
            iv: iv(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (phone.phone.as_str(), phone.phone_country_code.as_str()),
        ("2025550123", "1")
    );
    assert_eq!(phone.nickname, nickname);

    let err = client
        .get_user(GetUserRequest {
            user_id: user.id + 1000,
        })
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::NotFound);
    running.stop().await;
}

/// The gateway's way: the session token instead of a principal. auth-service is asked once
/// (AuthenticateWithSessionKey: who, and the key), never GetSessionKey as well.
async fn a_session_token_costs_one_auth_call(backend: Backend) {
    let running = Running::start(backend, None).await;
    let mut client = running.client(Some(TOKEN));
    let user = client
        .ensure_user(EnsureUserRequest {
            app_id: APP.into(),
            openid: "o-token".into(),
            unionid: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    running.fake.keys.rotate(APP, "o-token", &key(1));
    running
        .fake
        .keys
        .sign_in("session-tok", principal_of(&user));

    let request = UpdateProfileRequest {
        token: "session-tok".into(),
        encrypted_data: seal(&key(1), &iv(1), &profile_json(APP, "o-token", "一次")),
        iv: iv(1),
        ..Default::default()
    };
    let stored = client
        .update_profile(with_request_id(request, "req-tok-1"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!((stored.id, stored.nickname.as_str()), (user.id, "一次"));
    let seen: Vec<SeenCall> = running.fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one auth-service call: {seen:?}");
    assert_eq!(seen[0].method, "authenticate_with_session_key");
    assert_eq!(seen[0].request_id.as_deref(), Some("req-tok-1"));
    assert_eq!(seen[0].internal_token.as_deref(), Some(TOKEN));

    // The encrypted phone form: also one call.
    let phone = client
        .update_phone_number(UpdatePhoneNumberRequest {
            token: "session-tok".into(),
            encrypted_data: seal(&key(1), &iv(2), &phone_json(APP, "13800138000", "86")),
            iv: iv(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(phone.phone, "13800138000");
    assert_eq!(running.fake.seen.lock().unwrap().len(), 2);

    // An unknown token is INVALID_TOKEN and changes nothing.
    let err = client
        .update_profile(UpdateProfileRequest {
            token: "stolen-tok".into(),
            encrypted_data: seal(&key(1), &iv(1), &profile_json(APP, "o-token", "x")),
            iv: iv(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::InvalidToken);
    let got = client
        .get_user(GetUserRequest { user_id: user.id })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(got.nickname, "一次");
    running.stop().await;
}

async fn internal_token_is_required(backend: Backend) {
    let running = Running::start(backend, None).await;
    for token in [None, Some("wrong-token")] {
        let err = running
            .client(token)
            .ensure_user(EnsureUserRequest {
                app_id: APP.into(),
                openid: "o-intruder".into(),
                unionid: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    let err = running
        .client(Some(TOKEN))
        .get_user(GetUserRequest { user_id: 1 })
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::NotFound);
    running.stop().await;
}

async fn auth_service_down_is_a_dependency_error(backend: Backend) {
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let running = Running::start(backend, Some(closed)).await;
    let mut client = running.client(Some(TOKEN));
    let user = client
        .ensure_user(EnsureUserRequest {
            app_id: APP.into(),
            openid: "o-lonely".into(),
            unionid: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let err = client
        .update_profile(UpdateProfileRequest {
            principal: Some(principal_of(&user)),
            encrypted_data: seal(&key(1), &iv(1), &profile_json(APP, "o-lonely", "x")),
            iv: iv(1),
            raw_data: String::new(),
            signature: String::new(),
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::DependencyUnavailable);
    let got = client
        .get_user(GetUserRequest { user_id: user.id })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(got, user);
    running.stop().await;
}
