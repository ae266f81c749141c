//! The gateway's cache of user rows for `GET /me` (`GATEWAY_USER_CACHE_*`, a
//! `service_kit::session_cache::SessionCache` keyed by user id): a profile stored through one
//! gateway shows on another's `/me` within the feed's delay (user-service announces each
//! changed user on `<prefix>user-changed`), within the TTL with the feed cut silently and at
//! once when its connection drops; the cache stays within its bound and never answers one
//! user's `/me` with another's row.
//!
//! Each test runs a stack on PostgreSQL + Redis, a user-service of its own on the stack's users
//! database that announces on Redis (the stack's own announces in-process only, as in `wxmp
//! up`), and gateways of its own in front of it that follow Redis.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use service_kit::{Shutdown, session_cache::UserKey};
use wxmp_tests::{Backend, OwnGateway, OwnRedis, StopOnDrop, TestStack, eventually};

/// The stack, the Redis prefix, and a user-service announcing changed users on Redis.
struct Setup {
    t: TestStack,
    prefix: String,
    user_url: String,
    _user: StopOnDrop,
}

async fn setup() -> Setup {
    let prefix = wxmp_testkit::redis::fresh_prefix("wxmp-e2e-rows");
    let stack_prefix = prefix.clone();
    let t = TestStack::start_with(Backend::Postgres, move |o| {
        o.redis_prefix = Some(stack_prefix);
    })
    .await;
    let mut config =
        user_service::Config::new(t.user_database_url.clone(), t.stack.auth_url.clone());
    config.redis_url = Some(service_kit::Secret::new(wxmp_tests::redis_url()));
    config.session_revocation_channel = service_kit::session_cache::channel(&prefix);
    config.user_change_channel = service_kit::session_cache::user_channel(&prefix);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let user_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    tokio::spawn(user_service::serve(config, listener, shutdown.clone()));
    Setup {
        t,
        prefix,
        user_url,
        _user: StopOnDrop(shutdown),
    }
}

/// A gateway of the test's own in front of the setup's user-service.
struct Gateway {
    url: String,
    rows: Arc<gateway::UserRows>,
    _own: OwnGateway,
}

impl Gateway {
    async fn start(s: &Setup, adjust: impl FnOnce(&mut gateway::Config)) -> Self {
        let stack = &s.t.stack;
        let mut config = gateway::Config::new(&stack.auth_url, &s.user_url, &stack.pay_url);
        config.redis_url = Some(service_kit::Secret::new(wxmp_tests::redis_url()));
        config.redis_prefix = s.prefix.clone();
        adjust(&mut config);
        let own = OwnGateway::start(config);
        let rows = own
            .state
            .users
            .clone()
            .expect("the cache of user rows is on");
        let live = rows.clone();
        eventually(Duration::from_secs(10), || {
            let live = live.clone();
            async move { live.is_live().then_some(()) }
        })
        .await
        .expect("the user-changed feed is subscribed");
        Self {
            url: own.url.clone(),
            rows,
            _own: own,
        }
    }

    async fn me(&self, t: &TestStack, token: &str) -> Value {
        let (status, me) = t.get(&format!("{}/me", self.url), token).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        me["data"].clone()
    }

    async fn nickname(&self, t: &TestStack, token: &str) -> String {
        self.me(t, token).await["nickname"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn store(&self, t: &TestStack, token: &str, data: &Value) -> Value {
        let (status, answer) = t
            .post(
                &format!("{}/userinfo/", self.url),
                json!({ "token": token, "encryptedData": data["encryptedData"],
                        "iv": data["iv"] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["data"].clone()
    }

    fn holds(&self, user_id: i64) -> bool {
        self.rows.get(&UserKey(user_id)).is_some()
    }
}

fn profile(nick: &str) -> Value {
    json!({ "nickName": nick, "gender": 1, "language": "en", "city": "Shenzhen",
            "province": "Guangdong", "country": "China", "avatarUrl": "" })
}

fn ttl(c: &mut gateway::Config, ttl: Duration) {
    c.user_cache_ttl_ms = u64::try_from(ttl.as_millis()).unwrap();
}

/// How soon a change reaches another gateway over a connected feed (one PUBLISH); far below
/// the TTL these tests give the caches, so only the feed can explain the new row.
const FEED_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_profile_stored_through_one_gateway_shows_on_another() {
    let s = setup().await;
    let t = &s.t;
    let a = Gateway::start(&s, |c| ttl(c, Duration::from_secs(60))).await;
    let b = Gateway::start(&s, |c| ttl(c, Duration::from_secs(60))).await;
    let (token, openid) = t.login(None).await;
    let first = a
        .store(t, &token, &t.user_data(&openid, profile("first")).await)
        .await;
    let user_id = first["user_id"].as_i64().unwrap();
    // B keeps the row once a /me of its was not crossed by the announcement of "first".
    eventually(FEED_BOUND, || async {
        assert_eq!(b.nickname(t, &token).await, "first");
        b.holds(user_id).then_some(())
    })
    .await
    .expect("gateway B keeps the row (60 s)");

    let stored = a
        .store(t, &token, &t.user_data(&openid, profile("second")).await)
        .await;
    assert_eq!(stored["nickname"], json!("second"));
    assert!(!a.holds(user_id), "gateway A forgot its copy at once");
    assert_eq!(a.nickname(t, &token).await, "second");
    let started = Instant::now();
    let seen = eventually(FEED_BOUND, || async {
        (b.nickname(t, &token).await == "second").then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "B still showed the old profile {:?} after the change",
        started.elapsed()
    );
    // Another user's row on B is untouched by this user's announcements. Redis delivers a
    // channel's messages in order, so once B has evicted for a change made after the other
    // user's, it has heard the other's announcement too.
    let (other, other_openid) = t.login(None).await;
    let other_data = t.user_data(&other_openid, profile("other")).await;
    let other_id = a.store(t, &other, &other_data).await["user_id"]
        .as_i64()
        .unwrap();
    let evicts_after = |nick: &'static str| {
        let (a, b, t, token, openid) = (&a, &b, t, &token, &openid);
        async move {
            eventually(FEED_BOUND, || async {
                (b.nickname(t, token).await != "never" && b.holds(user_id)).then_some(())
            })
            .await
            .expect("B keeps this user's row");
            a.store(t, token, &t.user_data(openid, profile(nick)).await)
                .await;
            eventually(FEED_BOUND, || async { (!b.holds(user_id)).then_some(()) })
                .await
                .expect("B evicts the changed row");
        }
    };
    evicts_after("third").await;
    eventually(FEED_BOUND, || async {
        assert_eq!(b.nickname(t, &other).await, "other");
        b.holds(other_id).then_some(())
    })
    .await
    .expect("gateway B keeps the other row");
    evicts_after("fourth").await;
    assert!(b.holds(other_id), "the other user's row stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_feed_cut_a_change_shows_within_the_ttl() {
    let s = setup().await;
    let t = &s.t;
    let writer = Gateway::start(&s, |c| ttl(c, Duration::from_secs(60))).await;
    let lifetime = Duration::from_secs(2);
    // Silently cut: subscribed (so serving) on a channel user-service never publishes to, as
    // a partition the connection has not noticed loses every announcement.
    let prefix = s.prefix.clone();
    let cut = Gateway::start(&s, |c| {
        ttl(c, lifetime);
        c.user_change_channel = Some(format!("{prefix}nobody-publishes-here"));
    })
    .await;
    let (token, openid) = t.login(None).await;
    let user_id = writer
        .store(t, &token, &t.user_data(&openid, profile("before")).await)
        .await["user_id"]
        .as_i64()
        .unwrap();
    assert_eq!(cut.nickname(t, &token).await, "before");
    assert!(cut.holds(user_id));
    writer
        .store(t, &token, &t.user_data(&openid, profile("after")).await)
        .await;
    let changed = Instant::now();
    let seen = eventually(lifetime + Duration::from_secs(3), || async {
        (cut.nickname(t, &token).await == "after").then(|| changed.elapsed())
    })
    .await
    .expect("the new row shows once the entry's TTL passed");
    // The poll's own step (200 ms) and a request's time on a busy machine on top of the TTL.
    assert!(
        seen <= lifetime + Duration::from_secs(1),
        "shown only after {seen:?}"
    );

    // Noticeably cut: the feed's own Redis stops. The cache goes dark (serves nothing) at
    // once, so a change shows on the next /me whatever the TTL.
    let mut own = OwnRedis::start().await;
    let own_url = own.url();
    let dark = Gateway::start(&s, |c| {
        ttl(c, Duration::from_secs(60));
        c.redis_url = Some(service_kit::Secret::new(own_url));
    })
    .await;
    assert_eq!(dark.nickname(t, &token).await, "after");
    assert!(dark.holds(user_id));
    own.kill();
    let rows = dark.rows.clone();
    eventually(Duration::from_secs(10), || {
        let rows = rows.clone();
        async move { (!rows.is_live()).then_some(()) }
    })
    .await
    .expect("the cache goes dark when its feed's connection drops");
    writer
        .store(t, &token, &t.user_data(&openid, profile("dark")).await)
        .await;
    assert_eq!(dark.nickname(t, &token).await, "dark");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_is_bounded_and_answers_each_user_with_their_own_row() {
    let s = setup().await;
    // 16 entries (one per shard) for 48 users: rows are evicted all the time.
    let gw = Arc::new(
        Gateway::start(&s, |c| {
            ttl(c, Duration::from_secs(30));
            c.user_cache_max_entries = 16;
        })
        .await,
    );
    let t = Arc::new(s.t);
    let mut users = Vec::new();
    for n in 0..48 {
        let (token, openid) = t.login(None).await;
        let data = t.user_data(&openid, profile(&format!("user {n}"))).await;
        let user_id = gw.store(&t, &token, &data).await["user_id"]
            .as_i64()
            .unwrap();
        users.push((n, token, openid, user_id, data));
    }
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, token, openid, user_id, data) in users {
        let (gw, t, served) = (gw.clone(), t.clone(), served.clone());
        tasks.spawn(async move {
            for round in 0..10 {
                let me = gw.me(&t, &token).await;
                assert_eq!(me["user_id"], json!(user_id), "another user's row");
                assert_eq!(me["openid"], json!(openid), "another user's row");
                assert_eq!(me["nickname"], json!(format!("user {n}")));
                if let Some(kept) = gw.rows.get(&UserKey(user_id)) {
                    assert_eq!(kept.openid, openid, "kept under another's id");
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if round % 3 == 0 {
                    // Changes (and their announcements) interleave with the reads.
                    gw.store(&t, &token, &data).await;
                }
                assert!(gw.rows.len() <= gw.rows.max_entries());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(gw.rows.max_entries(), 16);
    assert!(gw.rows.len() <= 16, "{} entries", gw.rows.len());
    assert!(
        served.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the cache was used"
    );
}
