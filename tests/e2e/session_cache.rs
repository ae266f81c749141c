//! The gateway's session cache (`service_kit::session_cache`): a logout on one gateway is
//! refused on another within the feed's delay; with the feed cut, within the TTL; the cache
//! stays within its bound and never answers one user with another's principal.
//!
//! Each test runs a stack on PostgreSQL + Redis (auth-service keeps its sessions in Redis and
//! announces logouts on `<prefix>session-revoked`) and starts extra gateways of its own that
//! follow Redis (not the in-process feed `wxmp up` gives its own gateway).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use service_kit::session_cache::{SessionCache, TokenKey};
use wxmp_proto::auth::v1::Principal;
use wxmp_tests::{Backend, OwnGateway, OwnRedis, TestStack, eventually};

/// A gateway of the test's own, with a handle on its session cache.
struct Gateway {
    url: String,
    cache: Arc<SessionCache<Principal>>,
    _own: OwnGateway,
}

impl Gateway {
    fn start(t: &TestStack, adjust: impl FnOnce(&mut gateway::Config)) -> Self {
        let stack = &t.stack;
        let mut config = gateway::Config::new(&stack.auth_url, &stack.user_url, &stack.pay_url);
        adjust(&mut config);
        let own = OwnGateway::start(config);
        Self {
            url: own.url.clone(),
            cache: own.state.sessions.clone().expect("the session cache is on"),
            _own: own,
        }
    }

    /// Waits until the cache follows its feed (subscribed) and so serves.
    async fn live(self) -> Self {
        let cache = self.cache.clone();
        eventually(Duration::from_secs(10), || {
            let cache = cache.clone();
            async move { cache.is_live().then_some(()) }
        })
        .await
        .expect("the revocation feed is subscribed");
        self
    }

    async fn me(&self, t: &TestStack, token: &str) -> (StatusCode, Value) {
        t.get(&format!("{}/me", self.url), token).await
    }

    fn holds(&self, token: &str) -> bool {
        self.cache.get(&TokenKey::of(token)).is_some()
    }
}

/// The stack on PostgreSQL + Redis under `prefix`.
async fn stack(prefix: &str) -> TestStack {
    let prefix = prefix.to_owned();
    TestStack::start_with(Backend::Postgres, move |o| o.redis_prefix = Some(prefix)).await
}

fn fresh_prefix() -> String {
    wxmp_testkit::redis::fresh_prefix("wxmp-e2e-cache")
}

/// A gateway following the stack's Redis on `channel_prefix`'s channel, keeping answers `ttl`.
async fn redis_gateway(t: &TestStack, prefix: &str, ttl: Duration, max: u64) -> Gateway {
    let prefix = prefix.to_owned();
    Gateway::start(t, |c| {
        c.redis_url = Some(service_kit::Secret::new(wxmp_tests::redis_url()));
        c.redis_prefix = prefix;
        c.session_cache_ttl_ms = u64::try_from(ttl.as_millis()).unwrap();
        c.session_cache_max_entries = max;
    })
    .live()
    .await
}

async fn logout(t: &TestStack, url: &str, token: &str) {
    let response = t
        .http
        .post(format!("{url}/logout"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["data"]["revoked"], json!(true), "{answer}");
}

/// How soon a logout reaches another gateway over a connected feed (one PUBLISH); far below
/// the TTL these tests give the caches, so only the feed can explain the refusal.
const FEED_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_on_one_gateway_is_refused_on_another() {
    let prefix = fresh_prefix();
    let t = stack(&prefix).await;
    let a = redis_gateway(&t, &prefix, Duration::from_secs(60), 1000).await;
    let b = redis_gateway(&t, &prefix, Duration::from_secs(60), 1000).await;
    let (token, _) = t.login(None).await;
    assert_eq!(a.me(&t, &token).await.0, StatusCode::OK);
    assert_eq!(b.me(&t, &token).await.0, StatusCode::OK);
    assert!(b.holds(&token), "gateway B keeps the answer (for 60 s)");

    logout(&t, &a.url, &token).await;
    let started = Instant::now();
    assert!(!a.holds(&token), "gateway A forgets it at once");
    let refused = eventually(FEED_BOUND, || async {
        let (status, me) = b.me(&t, &token).await;
        (status == StatusCode::UNAUTHORIZED).then_some(me)
    })
    .await;
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "B still served the token {:?} after the logout",
            started.elapsed()
        )
    });
    assert_eq!(refused["code"], json!(202), "{refused}");
    // Another user's session on B is untouched.
    let (other, _) = t.login(None).await;
    assert_eq!(b.me(&t, &other).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_feed_cut_a_logout_is_refused_within_the_ttl() {
    let prefix = fresh_prefix();
    let t = stack(&prefix).await;
    let ttl = Duration::from_secs(2);
    // Silently cut: subscribed (so serving) on a channel auth-service never publishes to, as
    // a partition that the connection has not noticed loses every announcement.
    let cut = Gateway::start(&t, |c| {
        c.redis_url = Some(service_kit::Secret::new(wxmp_tests::redis_url()));
        c.redis_prefix = prefix.clone();
        c.session_revocation_channel = Some(format!("{prefix}nobody-publishes-here"));
        c.session_cache_ttl_ms = u64::try_from(ttl.as_millis()).unwrap();
    })
    .live()
    .await;
    let (token, _) = t.login(None).await;
    assert_eq!(cut.me(&t, &token).await.0, StatusCode::OK);
    logout(&t, &t.stack.gateway_url, &token).await;
    let logged_out = Instant::now();
    let refused = eventually(ttl + Duration::from_secs(3), || async {
        let (status, _) = cut.me(&t, &token).await;
        (status == StatusCode::UNAUTHORIZED).then_some(logged_out.elapsed())
    })
    .await
    .expect("refused once the entry's TTL passed");
    // The poll's own step (200 ms) and a request's time on a busy machine on top of the TTL.
    assert!(
        refused <= ttl + Duration::from_secs(1),
        "refused only after {refused:?}"
    );

    // Noticeably cut: the feed's own Redis stops. The cache goes dark (serves nothing) at
    // once, so the logout is refused immediately whatever the TTL.
    let mut own = OwnRedis::start().await;
    let dark = Gateway::start(&t, |c| {
        c.redis_url = Some(service_kit::Secret::new(own.url()));
        c.redis_prefix = prefix.clone();
        c.session_cache_ttl_ms = 60_000;
    })
    .live()
    .await;
    let (token, _) = t.login(None).await;
    assert_eq!(dark.me(&t, &token).await.0, StatusCode::OK);
    assert!(dark.holds(&token));
    own.kill();
    let cache = dark.cache.clone();
    eventually(Duration::from_secs(10), || {
        let cache = cache.clone();
        async move { (!cache.is_live()).then_some(()) }
    })
    .await
    .expect("the cache goes dark when its feed's connection drops");
    logout(&t, &t.stack.gateway_url, &token).await;
    let (status, me) = dark.me(&t, &token).await;
    assert_eq!(
        (status, me["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!(202)),
        "{me}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_is_bounded_and_answers_each_user_with_their_own_principal() {
    let prefix = fresh_prefix();
    let t = Arc::new(stack(&prefix).await);
    // 16 entries (one per shard) for 48 users: entries are evicted all the time.
    let gw = Arc::new(redis_gateway(&t, &prefix, Duration::from_secs(30), 16).await);
    let mut users = Vec::new();
    for _ in 0..48 {
        users.push(t.login(None).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (token, openid) in users {
        let (t, gw) = (t.clone(), gw.clone());
        tasks.spawn(async move {
            for _ in 0..10 {
                let (status, me) = gw.me(&t, &token).await;
                assert_eq!(status, StatusCode::OK, "{me}");
                assert_eq!(
                    me["data"]["openid"],
                    json!(openid),
                    "another user's principal"
                );
                assert!(gw.cache.len() <= gw.cache.max_entries());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(gw.cache.max_entries(), 16);
    assert!(gw.cache.len() <= 16, "{} entries", gw.cache.len());
    assert!(!gw.cache.is_empty(), "the cache was used");
}
