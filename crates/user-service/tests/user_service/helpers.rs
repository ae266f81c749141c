//! Test support shared by the integration tests: a fresh database of either back end, a
//! session-key source held in memory, a fake auth-service on a real port, and payloads
//! encrypted the way WeChat does.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use service_kit::{
    ErrorReason, Secret,
    db::{Database, PoolOptions},
    grpc::{INTERNAL_TOKEN, REQUEST_ID},
    reason::{reason_of, status},
};
use tempfile::TempDir;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use user_service::{Error, MIGRATIONS, Service, Session, SessionKeys, Users};
use wxmp_proto::auth::v1::{
    self as auth, Principal,
    auth_service_server::{AuthService, AuthServiceServer},
};
use wxmp_testkit::db as testing;

pub const APP: &str = "wx0000000000test01";
pub const OTHER_APP: &str = "wx0000000000test02";

pub use wxmp_testkit::{Backend, on_both_backends};

/// A migrated, empty database; the SQLite file lives as long as this value.
pub struct TestDb {
    pub url: String,
    pub db: Database,
    _dir: Option<TempDir>,
}

pub async fn fresh_db(backend: Backend) -> TestDb {
    let (url, dir) = match backend {
        Backend::Postgres => (
            testing::migrated_postgres_url("wxmp_user", &MIGRATIONS)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432"),
            None,
        ),
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (testing::fresh_sqlite_url(dir.path(), "users"), Some(dir))
        }
    };
    let db = Database::connect(&url, PoolOptions::default()).unwrap();
    db.migrate(&url, &MIGRATIONS).await.unwrap();
    TestDb { url, db, _dir: dir }
}

/// The newest session_key per (app_id, openid) and the live session tokens, as auth-service
/// keeps them.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    keys: Arc<Mutex<HashMap<(String, String), String>>>,
    sessions: Arc<Mutex<HashMap<String, Principal>>>,
    /// How many times `authenticate` was asked (auth-service round trips).
    pub asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl Keys {
    /// A login: the user's key becomes `key`, replacing any older one.
    pub fn rotate(&self, app_id: &str, openid: &str, key: &str) {
        self.keys
            .lock()
            .unwrap()
            .insert((app_id.to_owned(), openid.to_owned()), key.to_owned());
    }

    pub fn forget(&self, app_id: &str, openid: &str) {
        self.keys
            .lock()
            .unwrap()
            .remove(&(app_id.to_owned(), openid.to_owned()));
    }

    pub fn get(&self, app_id: &str, openid: &str) -> Option<String> {
        self.keys
            .lock()
            .unwrap()
            .get(&(app_id.to_owned(), openid.to_owned()))
            .cloned()
    }

    /// A live session: `token` stands for `principal`.
    /// The session of `token` ends at auth-service (a logout nobody was told of).
    pub fn sign_out(&self, token: &str) {
        self.sessions.lock().unwrap().remove(token);
    }

    /// Calls of `authenticate` so far.
    pub fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn sign_in(&self, token: &str, principal: Principal) {
        self.sessions
            .lock()
            .unwrap()
            .insert(token.to_owned(), principal);
    }

    /// What AuthenticateWithSessionKey answers for `token`.
    pub fn session(&self, token: &str) -> Option<(Principal, Option<String>)> {
        let principal = self.sessions.lock().unwrap().get(token).cloned()?;
        let key = self.get(&principal.app_id, &principal.openid);
        Some((principal, key))
    }
}

impl SessionKeys for Keys {
    async fn session_key(
        &self,
        _incoming: &MetadataMap,
        app_id: &str,
        openid: &str,
    ) -> Result<Option<Secret>, Error> {
        Ok(self.get(app_id, openid).map(Secret::new))
    }

    async fn authenticate(&self, _incoming: &MetadataMap, token: &str) -> Result<Session, Error> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (principal, key) = self.session(token).ok_or(Error::InvalidToken)?;
        Ok(Session {
            principal,
            session_key: key.map(Secret::new),
            expires_in: std::time::Duration::from_secs(100),
        })
    }
}

/// A distinct valid base64 session_key (16 bytes) per `n`.
pub fn key(n: u32) -> String {
    format!("{n:0>21}A==")
}

/// A distinct valid base64 iv (16 bytes) per `n`.
pub fn iv(n: u32) -> String {
    format!("{n:0>21}w==")
}

/// `json` encrypted as WeChat would with `key` and `iv`.
pub fn seal(key: &str, iv: &str, json: &serde_json::Value) -> String {
    wechat::crypto::encrypt(key, iv, json.to_string().as_bytes()).unwrap()
}

/// A `wx.getUserInfo` payload of `openid` for `app_id`.
pub fn profile_json(app_id: &str, openid: &str, nickname: &str) -> serde_json::Value {
    serde_json::json!({
        "openId": openid,
        "nickName": nickname,
        "gender": 2,
        "language": "zh_CN",
        "city": "Hangzhou",
        "province": "Zhejiang",
        "country": "CN",
        "avatarUrl": "https://thirdwx.qlogo.cn/mmopen/vi_32/abc/132",
        "watermark": { "appid": app_id, "timestamp": 1_764_000_000 }
    })
}

/// A `getPhoneNumber` payload for `app_id`.
pub fn phone_json(app_id: &str, pure: &str, country: &str) -> serde_json::Value {
    serde_json::json!({
        "phoneNumber": format!("+{country} {pure}"),
        "purePhoneNumber": pure,
        "countryCode": country,
        "watermark": { "appid": app_id, "timestamp": 1_764_000_000 }
    })
}

pub fn principal_of(user: &wxmp_proto::user::v1::User) -> Principal {
    Principal {
        user_id: user.id,
        app_id: user.app_id.clone(),
        openid: user.openid.clone(),
        unionid: user.unionid.clone(),
    }
}

/// The service under test with in-memory keys, on a fresh database.
pub struct Harness {
    pub db: TestDb,
    pub keys: Keys,
    pub service: Service<Keys>,
}

impl Harness {
    pub async fn new(backend: Backend) -> Self {
        let db = fresh_db(backend).await;
        let keys = Keys::default();
        let users = Users::new(db.db.clone());
        let service = Service::new(users, keys.clone());
        Self { db, keys, service }
    }
}

pub fn assert_reason(status: &Status, reason: ErrorReason) {
    assert_eq!(
        reason_of(status),
        reason,
        "unexpected status {:?}: {}",
        status.code(),
        status.message()
    );
}

/// What the fake auth-service saw of one GetSessionKey or AuthenticateWithSessionKey call.
#[derive(Clone, Debug, Default)]
pub struct SeenCall {
    /// `get_session_key` or `authenticate_with_session_key`.
    pub method: &'static str,
    pub request_id: Option<String>,
    pub internal_token: Option<String>,
    pub app_id: String,
    pub openid: String,
}

/// auth-service's GetSessionKey on a real port, answering from [`Keys`].
#[derive(Clone, Default)]
pub struct FakeAuth {
    pub keys: Keys,
    pub seen: Arc<Mutex<Vec<SeenCall>>>,
}

#[tonic::async_trait]
impl AuthService for FakeAuth {
    async fn login(
        &self,
        _: Request<auth::LoginRequest>,
    ) -> Result<Response<auth::LoginResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn authenticate(
        &self,
        _: Request<auth::AuthenticateRequest>,
    ) -> Result<Response<auth::AuthenticateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn logout(
        &self,
        _: Request<auth::LogoutRequest>,
    ) -> Result<Response<auth::LogoutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_session_key(
        &self,
        request: Request<auth::GetSessionKeyRequest>,
    ) -> Result<Response<auth::GetSessionKeyResponse>, Status> {
        let text = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let call = SeenCall {
            method: "get_session_key",
            request_id: text(REQUEST_ID),
            internal_token: text(INTERNAL_TOKEN),
            app_id: request.get_ref().app_id.clone(),
            openid: request.get_ref().openid.clone(),
        };
        self.seen.lock().unwrap().push(call.clone());
        match self.keys.get(&call.app_id, &call.openid) {
            Some(session_key) => Ok(Response::new(auth::GetSessionKeyResponse { session_key })),
            None => Err(status(ErrorReason::NotFound, "no live session")),
        }
    }

    async fn authenticate_with_session_key(
        &self,
        request: Request<auth::AuthenticateRequest>,
    ) -> Result<Response<auth::AuthenticateWithSessionKeyResponse>, Status> {
        let text = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (principal, key) = self
            .keys
            .session(&request.get_ref().token)
            .ok_or_else(|| status(ErrorReason::InvalidToken, "invalid token"))?;
        self.seen.lock().unwrap().push(SeenCall {
            method: "authenticate_with_session_key",
            request_id: text(REQUEST_ID),
            internal_token: text(INTERNAL_TOKEN),
            app_id: principal.app_id.clone(),
            openid: principal.openid.clone(),
        });
        Ok(Response::new(auth::AuthenticateWithSessionKeyResponse {
            principal: Some(principal),
            expires_in: 100,
            session_key: key.unwrap_or_default(),
        }))
    }

    async fn get_access_token(
        &self,
        _: Request<auth::GetAccessTokenRequest>,
    ) -> Result<Response<auth::GetAccessTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `fake` on 127.0.0.1:0 until the test ends; answers its URL.
pub async fn spawn_fake_auth(fake: FakeAuth) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}
