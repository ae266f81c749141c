//! The stack the gRPC tests run against: the real service on a port, the WeChat sandbox, a
//! small fake user-service, and sessions in memory or in the real Redis.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use auth_service::Config;
use service_kit::{
    ErrorReason, Secret, Shutdown,
    grpc::{AttachToken, RequireToken},
    reason::reason_of,
};
use tokio::net::TcpListener;
use tonic::{
    Request, Response, Status, service::Routes, service::interceptor::InterceptedService,
    transport::Channel,
};
use wxmp_proto::{
    auth::v1::{
        AuthenticateRequest, GetSessionKeyRequest, LoginRequest, LoginResponse, LogoutRequest,
        auth_service_client::AuthServiceClient,
    },
    user::v1::{
        EnsureUserRequest, EnsureUserResponse, GetUserRequest, GetUserResponse,
        UpdatePhoneNumberRequest, UpdatePhoneNumberResponse, UpdateProfileRequest,
        UpdateProfileResponse, User,
        user_service_server::{UserService, UserServiceServer},
    },
};

// ---- a fake user-service ------------------------------------------------------------------

#[derive(Default)]
pub struct FakeUsersInner {
    /// (app_id, openid) → (id, unionid)
    users: Mutex<HashMap<(String, String), (i64, String)>>,
    next_id: AtomicI64,
    request_ids: Mutex<Vec<String>>,
}

/// EnsureUser over a map; remembers the request ids it saw.
#[derive(Clone, Default)]
pub struct FakeUsers(Arc<FakeUsersInner>);

impl FakeUsers {
    pub fn request_ids(&self) -> Vec<String> {
        self.0.request_ids.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl UserService for FakeUsers {
    async fn ensure_user(
        &self,
        request: Request<EnsureUserRequest>,
    ) -> Result<Response<EnsureUserResponse>, Status> {
        if let Some(id) = service_kit::grpc::request_id(request.metadata()) {
            self.0.request_ids.lock().unwrap().push(id.to_owned());
        }
        let req = request.into_inner();
        if req.app_id.is_empty() || req.openid.is_empty() {
            return Err(Status::invalid_argument("app_id and openid are required"));
        }
        let mut users = self.0.users.lock().unwrap();
        let key = (req.app_id.clone(), req.openid.clone());
        let created = !users.contains_key(&key);
        let entry = users.entry(key).or_insert_with(|| {
            (
                self.0.next_id.fetch_add(1, Ordering::SeqCst) + 1,
                String::new(),
            )
        });
        if !req.unionid.is_empty() {
            entry.1 = req.unionid.clone();
        }
        Ok(Response::new(EnsureUserResponse {
            user: Some(User {
                id: entry.0,
                app_id: req.app_id,
                openid: req.openid,
                unionid: entry.1.clone(),
                ..User::default()
            }),
            created,
        }))
    }

    async fn get_user(
        &self,
        _: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_profile(
        &self,
        _: Request<UpdateProfileRequest>,
    ) -> Result<Response<UpdateProfileResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_phone_number(
        &self,
        _: Request<UpdatePhoneNumberRequest>,
    ) -> Result<Response<UpdatePhoneNumberResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

// ---- the stack under test -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Memory,
    Redis,
}

pub struct Options {
    pub store: Store,
    pub session_ttl_secs: u64,
    pub internal_token: Option<&'static str>,
    pub sandbox: sandbox::Config,
    /// Overrides the sandbox as WeChat's base URL.
    pub wechat_base: Option<String>,
    /// Overrides the fake as user-service's URL.
    pub user_service_url: Option<String>,
    /// Overrides the Redis URL (with `Store::Redis`).
    pub redis_url: Option<String>,
}

impl Options {
    pub fn on(store: Store) -> Self {
        Self {
            store,
            session_ttl_secs: 3600,
            internal_token: None,
            sandbox: sandbox::Config::dev(),
            wechat_base: None,
            user_service_url: None,
            redis_url: None,
        }
    }
}

pub type Client = AuthServiceClient<InterceptedService<Channel, AttachToken>>;

pub struct Stack {
    pub sandbox: sandbox::SandboxHandle,
    pub users: FakeUsers,
    pub auth: Client,
    pub auth_url: String,
    pub redis_prefix: String,
    pub config: Config,
    pub shutdown: Shutdown,
    pub http: reqwest::Client,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub use wxmp_testkit::redis::url as redis_url;

pub async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

pub async fn start(options: Options) -> Stack {
    let shutdown = Shutdown::new();
    let token = options.internal_token.map(Secret::new);

    let apps: Vec<String> = options
        .sandbox
        .apps
        .0
        .iter()
        .map(|a| format!("{}:{}", a.appid, a.secret.expose()))
        .collect();
    let sandbox = sandbox::spawn(options.sandbox).await.expect("sandbox");

    let users = FakeUsers::default();
    let (users_listener, users_url) = bind().await;
    tokio::spawn(service_kit::grpc::serve(
        users_listener,
        Routes::new(UserServiceServer::with_interceptor(
            users.clone(),
            RequireToken::new(token.clone()),
        )),
        &[],
        shutdown.clone(),
    ));

    let redis_prefix = wxmp_testkit::redis::fresh_prefix("wxmp-test");
    let mut config = Config::new(
        apps.join(",").parse().unwrap(),
        options
            .wechat_base
            .unwrap_or_else(|| sandbox.base_url.clone()),
        options.user_service_url.unwrap_or(users_url),
    );
    config.session_ttl_secs = options.session_ttl_secs;
    config.internal.internal_token = token.clone();
    config.redis_prefix = redis_prefix.clone();
    config.wechat.timeout_ms = 3000;
    if options.store == Store::Redis {
        config.redis_url = Some(Secret::new(options.redis_url.unwrap_or_else(redis_url)));
    }

    let (auth_listener, auth_url) = bind().await;
    tokio::spawn({
        let config = config.clone();
        let shutdown = shutdown.clone();
        async move {
            if let Err(e) = auth_service::serve(config, auth_listener, shutdown).await {
                panic!("auth-service failed: {e}");
            }
        }
    });
    let auth = client(&auth_url, token.as_ref());
    Stack {
        sandbox,
        users,
        auth,
        auth_url,
        redis_prefix,
        config,
        shutdown,
        http: reqwest::Client::new(),
    }
}

pub fn client(url: &str, token: Option<&Secret>) -> Client {
    let channel =
        service_kit::grpc::channel(url, Duration::from_secs(5), Duration::from_secs(20)).unwrap();
    AuthServiceClient::with_interceptor(channel, AttachToken::new(token))
}

impl Stack {
    /// Plays wx.login: a fresh code for `openid` (a new user when `None`).
    pub async fn code(&self, body: serde_json::Value) -> sandbox::LoginCode {
        let resp = self
            .http
            .post(self.sandbox.url("/sandbox/login-code"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "login-code: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn new_code(&self) -> sandbox::LoginCode {
        self.code(serde_json::json!({})).await
    }

    pub async fn code_for(&self, openid: &str) -> sandbox::LoginCode {
        self.code(serde_json::json!({ "openid": openid })).await
    }

    pub async fn login(&self, app_id: &str, code: &str) -> Result<LoginResponse, Status> {
        self.auth
            .clone()
            .login(LoginRequest {
                app_id: app_id.into(),
                code: code.into(),
            })
            .await
            .map(Response::into_inner)
    }

    pub async fn authenticate(
        &self,
        token: &str,
    ) -> Result<wxmp_proto::auth::v1::AuthenticateResponse, Status> {
        self.auth
            .clone()
            .authenticate(AuthenticateRequest {
                token: token.into(),
            })
            .await
            .map(Response::into_inner)
    }

    pub async fn authenticate_with_session_key(
        &self,
        token: &str,
    ) -> Result<wxmp_proto::auth::v1::AuthenticateWithSessionKeyResponse, Status> {
        self.auth
            .clone()
            .authenticate_with_session_key(AuthenticateRequest {
                token: token.into(),
            })
            .await
            .map(Response::into_inner)
    }

    pub async fn session_key(&self, app_id: &str, openid: &str) -> Result<String, Status> {
        self.auth
            .clone()
            .get_session_key(GetSessionKeyRequest {
                app_id: app_id.into(),
                openid: openid.into(),
            })
            .await
            .map(|r| r.into_inner().session_key)
    }

    pub async fn logout(&self, token: &str) -> bool {
        self.auth
            .clone()
            .logout(LogoutRequest {
                token: token.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .revoked
    }

    /// What the phone would get from wx.getUserProfile now: encrypted with WeChat's current key.
    pub async fn user_data(&self, openid: &str) -> sandbox::UserData {
        let resp = self
            .http
            .post(self.sandbox.url("/sandbox/user-data"))
            .json(&serde_json::json!({ "openid": openid }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "user-data: {}", resp.status());
        resp.json().await.unwrap()
    }
}

/// The reason of a failed call, failing the test on success.
pub fn reason<T: std::fmt::Debug>(result: Result<T, Status>) -> ErrorReason {
    reason_of(&result.expect_err("the call should have failed"))
}

/// Fails the test instead of hanging when a call does not give up by itself.
pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("the call hung instead of failing")
}

pub const DEV_APP: &str = sandbox::DEV_APP_ID;
