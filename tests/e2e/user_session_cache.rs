//! user-service's session cache (`crates/user-service/src/sessions.rs`, the gateway's
//! `service_kit::session_cache` keeping `AuthenticateWithSessionKey` answers): a logout is
//! refused on every user-service replica within the feed's delay, and within the TTL with the
//! feed cut; a newer login's key is used though an older answer is cached; the cache stays
//! within its bound and never answers one user's token with another's principal or key.
//!
//! Each test runs a stack on PostgreSQL + Redis (auth-service keeps its sessions in Redis and
//! announces logouts on `<prefix>session-revoked`) and starts user-service replicas of its own
//! on the stack's users database, called over gRPC with a session token as the gateway does
//! for `POST /userinfo/`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use service_kit::{
    ErrorReason, Shutdown,
    reason::reason_of,
    session_cache::{SessionCache, TokenKey},
};
use tonic::transport::Channel;
use user_service::Session;
use wxmp_proto::user::v1::{UpdateProfileRequest, User, user_service_client::UserServiceClient};
use wxmp_tests::{Backend, OwnRedis, StopOnDrop, TestStack, eventually};

/// A user-service replica of the test's own, with a handle on its session cache.
struct Replica {
    client: UserServiceClient<Channel>,
    cache: Arc<SessionCache<Session>>,
    _stop: StopOnDrop,
}

impl Replica {
    /// A replica following the Redis at `redis_url` on `channel`, keeping answers `ttl`, at
    /// most `max` of them; waits until its feed is subscribed (the cache serves only then).
    async fn start(
        t: &TestStack,
        redis_url: String,
        channel: String,
        ttl: Duration,
        max: u64,
    ) -> Self {
        let mut config =
            user_service::Config::new(t.user_database_url.clone(), t.stack.auth_url.clone());
        config.redis_url = Some(service_kit::Secret::new(redis_url));
        // auth-service announces logins on `<prefix>key-rotated` beside its revocations.
        config.key_rotation_channel = channel.replace("session-revoked", "key-rotated");
        config.session_revocation_channel = channel;
        config.session_cache_ttl_ms = u64::try_from(ttl.as_millis()).unwrap();
        config.session_cache_max_entries = max;
        let cache = user_service::session_cache(&config).expect("the session cache is on");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::new();
        tokio::spawn(user_service::serve_with_cache(
            config,
            Some(cache.clone()),
            listener,
            shutdown.clone(),
        ));
        let client = UserServiceClient::new(Channel::from_shared(url).unwrap().connect_lazy());
        let live = cache.clone();
        eventually(Duration::from_secs(10), || {
            let live = live.clone();
            async move { live.is_live().then_some(()) }
        })
        .await
        .expect("the revocation feed is subscribed");
        Self {
            client,
            cache,
            _stop: StopOnDrop(shutdown),
        }
    }

    /// UpdateProfile with the session token and the sandbox's payload; the user stored, or the
    /// refusal's reason.
    async fn update(&self, token: &str, data: &Value) -> Result<User, ErrorReason> {
        let request = UpdateProfileRequest {
            token: token.to_owned(),
            encrypted_data: data["encryptedData"].as_str().unwrap().to_owned(),
            iv: data["iv"].as_str().unwrap().to_owned(),
            raw_data: data["rawData"].as_str().unwrap_or_default().to_owned(),
            signature: data["signature"].as_str().unwrap_or_default().to_owned(),
            ..Default::default()
        };
        // The server may still be binding its listener: retry transport failures briefly.
        let started = Instant::now();
        loop {
            match self.client.clone().update_profile(request.clone()).await {
                Ok(answer) => return Ok(answer.into_inner().user.unwrap()),
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && started.elapsed() < Duration::from_secs(10) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => return Err(reason_of(&status)),
            }
        }
    }

    fn holds(&self, token: &str) -> bool {
        self.cache.get(&TokenKey::of(token)).is_some()
    }
}

/// The session_key the replica keeps for `token`.
fn cached_key(replica: &Replica, token: &str) -> Option<String> {
    let session = replica.cache.get(&TokenKey::of(token))?;
    Some(session.session_key?.expose().to_owned())
}

fn profile(nick: &str) -> Value {
    json!({ "nickName": nick, "gender": 1, "language": "en", "city": "Shenzhen",
            "province": "Guangdong", "country": "China", "avatarUrl": "" })
}

/// The stack on PostgreSQL + Redis under a fresh prefix, and the channel auth-service
/// announces logouts on.
async fn stack() -> (TestStack, String) {
    let prefix = wxmp_testkit::redis::fresh_prefix("wxmp-e2e-ucache");
    let channel = service_kit::session_cache::channel(&prefix);
    let t = TestStack::start_with(Backend::Postgres, move |o| o.redis_prefix = Some(prefix)).await;
    (t, channel)
}

async fn logout(t: &TestStack, token: &str) {
    let response = t
        .http
        .post(t.gateway("/logout"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["data"]["revoked"], json!(true), "{answer}");
}

/// How soon a logout reaches a replica over a connected feed (one PUBLISH); far below the TTL
/// the replicas are given, so only the feed can explain the refusal.
const FEED_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_is_refused_on_every_user_service_replica() {
    let (t, channel) = stack().await;
    let ttl = Duration::from_secs(60);
    let a = Replica::start(&t, wxmp_tests::redis_url(), channel.clone(), ttl, 1000).await;
    let b = Replica::start(&t, wxmp_tests::redis_url(), channel, ttl, 1000).await;
    let (token, openid) = t.login(None).await;
    let data = t.user_data(&openid, profile("first")).await;
    assert_eq!(a.update(&token, &data).await.unwrap().nickname, "first");
    assert_eq!(b.update(&token, &data).await.unwrap().nickname, "first");
    assert!(
        a.holds(&token) && b.holds(&token),
        "both keep the answer (60 s)"
    );

    logout(&t, &token).await;
    let started = Instant::now();
    for (name, replica) in [("A", &a), ("B", &b)] {
        let refused = eventually(FEED_BOUND, || async {
            (replica.update(&token, &data).await == Err(ErrorReason::InvalidToken)).then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "replica {name} still served the token {:?} after the logout",
            started.elapsed()
        );
        assert!(!replica.holds(&token), "replica {name} forgot the answer");
    }
    // Another user's session on B is untouched.
    let (other, other_openid) = t.login(None).await;
    let data = t.user_data(&other_openid, profile("other")).await;
    assert_eq!(b.update(&other, &data).await.unwrap().openid, other_openid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_feed_cut_a_logout_is_refused_within_the_ttl() {
    let (t, _) = stack().await;
    let ttl = Duration::from_secs(2);
    // Silently cut: subscribed (so serving) on a channel auth-service never publishes to, as a
    // partition the connection has not noticed loses every announcement.
    let cut = Replica::start(
        &t,
        wxmp_tests::redis_url(),
        "wxmp-e2e-ucache:nobody-publishes-here".into(),
        ttl,
        1000,
    )
    .await;
    let (token, openid) = t.login(None).await;
    let data = t.user_data(&openid, profile("cut")).await;
    // Kept for 2 s only: on a loaded machine an answer may expire before it is looked at.
    eventually(Duration::from_secs(10), || async {
        cut.update(&token, &data).await.unwrap();
        cut.holds(&token).then_some(())
    })
    .await
    .expect("the replica keeps the answer");
    logout(&t, &token).await;
    let logged_out = Instant::now();
    let refused = eventually(ttl + Duration::from_secs(3), || async {
        (cut.update(&token, &data).await == Err(ErrorReason::InvalidToken))
            .then(|| logged_out.elapsed())
    })
    .await
    .expect("refused once the entry's TTL passed");
    // The poll's own step (200 ms) and a request's time on a busy machine on top of the TTL.
    assert!(
        refused <= ttl + Duration::from_secs(1),
        "refused only after {refused:?}"
    );

    // Noticeably cut: the feed's own Redis stops. The cache goes dark (serves nothing) at once,
    // so the logout is refused immediately whatever the TTL.
    let mut own = OwnRedis::start().await;
    let dark = Replica::start(&t, own.url(), "any".into(), Duration::from_secs(60), 1000).await;
    let (token, openid) = t.login(None).await;
    let data = t.user_data(&openid, profile("dark")).await;
    dark.update(&token, &data).await.unwrap();
    assert!(dark.holds(&token));
    own.kill();
    let cache = dark.cache.clone();
    eventually(Duration::from_secs(10), || {
        let cache = cache.clone();
        async move { (!cache.is_live()).then_some(()) }
    })
    .await
    .expect("the cache goes dark when its feed's connection drops");
    logout(&t, &token).await;
    assert_eq!(
        dark.update(&token, &data).await.map(|u| u.id),
        Err(ErrorReason::InvalidToken)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_login_s_key_opens_the_payload_though_an_older_answer_is_cached() {
    let (t, channel) = stack().await;
    let replica = Replica::start(
        &t,
        wxmp_tests::redis_url(),
        channel,
        Duration::from_secs(60),
        1000,
    )
    .await;
    let (token, openid) = t.login(None).await;
    let data = t.user_data(&openid, profile("old key")).await;
    replica.update(&token, &data).await.unwrap();
    let first_key = cached_key(&replica, &token).expect("the answer with the first key is kept");
    // A second wx.login() of the same user: WeChat rotates the session_key, and the mini
    // program's next payload is sealed with the new one. The first token still lives.
    let (_second_token, again) = t.login(Some(&openid)).await;
    assert_eq!(again, openid);
    let data = t.user_data(&openid, profile("new key")).await;
    let user = replica
        .update(&token, &data)
        .await
        .expect("opened with the new key");
    assert_eq!(user.nickname, "new key");
    // The login's announcement may cross that fetch (its answer is then not kept): the next
    // one's is.
    let second_key = eventually(FEED_BOUND, || async {
        replica.update(&token, &data).await.unwrap();
        cached_key(&replica, &token).filter(|key| *key != first_key)
    })
    .await
    .expect("the fresh answer with the new key is kept");
    assert_ne!(first_key, second_key, "the stale key was replaced");
    // The refreshed answer replaced the stale one: the next payload opens from the cache.
    let data = t.user_data(&openid, profile("again")).await;
    assert_eq!(
        replica.update(&token, &data).await.unwrap().nickname,
        "again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_is_bounded_and_answers_each_token_with_its_own_session() {
    let (t, channel) = stack().await;
    let t = Arc::new(t);
    // 16 entries (one per shard) for 48 users: entries are evicted all the time.
    let replica = Arc::new(
        Replica::start(
            &t,
            wxmp_tests::redis_url(),
            channel,
            Duration::from_secs(30),
            16,
        )
        .await,
    );
    let mut users = Vec::new();
    for n in 0..48 {
        let (token, openid) = t.login(None).await;
        let data = t.user_data(&openid, profile(&format!("user {n}"))).await;
        users.push((n, token, openid, data));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (n, token, openid, data) in users {
        let (replica, _t) = (replica.clone(), t.clone());
        tasks.spawn(async move {
            for _ in 0..10 {
                // Another user's key would not open this payload; another principal would
                // store it on another row.
                let user = replica.update(&token, &data).await.expect("stored");
                assert_eq!(user.openid, openid, "another user's principal");
                if let Some(kept) = replica.cache.get(&TokenKey::of(&token)) {
                    assert_eq!(kept.principal.openid, openid, "kept under another's token");
                }
                assert_eq!(user.nickname, format!("user {n}"));
                assert!(replica.cache.len() <= replica.cache.max_entries());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(replica.cache.max_entries(), 16);
    assert!(replica.cache.len() <= 16, "{} entries", replica.cache.len());
    assert!(!replica.cache.is_empty(), "the cache was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_new_login_the_previous_key_stops_opening_on_every_replica() {
    let (t, channel) = stack().await;
    let ttl = Duration::from_secs(60);
    let a = Replica::start(&t, wxmp_tests::redis_url(), channel.clone(), ttl, 1000).await;
    let b = Replica::start(&t, wxmp_tests::redis_url(), channel, ttl, 1000).await;
    let (token, openid) = t.login(None).await;
    let old = t.user_data(&openid, profile("old key")).await;
    for replica in [&a, &b] {
        assert_eq!(
            replica.update(&token, &old).await.unwrap().nickname,
            "old key"
        );
        assert!(
            replica.holds(&token),
            "the answer with the first key is kept (60 s)"
        );
    }
    // A second wx.login() of the same user rotates the key; the first token still lives.
    // Without the announcement each replica would open the old payload for the whole TTL.
    t.login(Some(&openid)).await;
    let started = Instant::now();
    for (name, replica) in [("A", &a), ("B", &b)] {
        let refused = eventually(FEED_BOUND, || async {
            (replica.update(&token, &old).await == Err(ErrorReason::DecryptFailed)).then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "replica {name} still opened the old key's payload {:?} after the login",
            started.elapsed()
        );
    }
    // The new key's payload opens on both, from a fresh answer.
    let new = t.user_data(&openid, profile("new key")).await;
    for replica in [&a, &b] {
        assert_eq!(
            replica.update(&token, &new).await.unwrap().nickname,
            "new key"
        );
    }
}
