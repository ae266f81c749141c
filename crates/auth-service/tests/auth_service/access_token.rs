//! The shared access_token: several auth-service instances on one Redis against the sandbox,
//! which counts every token fetch and checks every token used.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::helpers::{DEV_APP, Options, Store, bounded, reason, redis_url};
use auth_service::{
    Config,
    access_token::{AccessTokens, AnyTokenCache, TokenApi, Want},
};
use service_kit::{ErrorReason, Secret};
use wxmp_proto::auth::v1::GetAccessTokenRequest;

fn sandbox_config(expires_in_secs: u64, grace_ms: u64) -> sandbox::Config {
    let mut c = sandbox::Config::dev();
    c.token_expires_in_secs = expires_in_secs;
    c.token_grace_ms = grace_ms;
    c
}

fn config(sandbox: &sandbox::SandboxHandle, prefix: &str, redis: Option<String>) -> Config {
    let mut c = Config::new(
        format!("{}:{}", sandbox::DEV_APP_ID, sandbox::DEV_APP_SECRET)
            .parse()
            .unwrap(),
        sandbox.base_url.clone(),
        "http://127.0.0.1:1",
    );
    c.redis_url = redis.map(Secret::new);
    c.redis_prefix = prefix.to_owned();
    c.wechat.timeout_ms = 3000;
    c
}

fn prefix() -> String {
    wxmp_testkit::redis::fresh_prefix("wxmp-test")
}

/// One "replica": its own Redis connection and its own in-process state.
fn replica(config: &Config) -> AccessTokens<AnyTokenCache> {
    auth_service::access_tokens(config, auth_service::open_token_cache(config).unwrap()).unwrap()
}

async fn stats(sandbox: &sandbox::SandboxHandle) -> sandbox::TokenStats {
    reqwest::get(sandbox.url("/sandbox/access-tokens"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Uses the token at the sandbox the way a service would: true when WeChat accepts it.
async fn accepted(http: &reqwest::Client, sandbox: &sandbox::SandboxHandle, token: &str) -> bool {
    let answer: serde_json::Value = http
        .get(sandbox.url("/cgi-bin/getcallbackip"))
        .query(&[("access_token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer.get("ip_list").is_some()
}

const NO_FORCE: Want = Want {
    force_refresh: false,
    stale_generation: 0,
};

async fn hammer_across_expiries(api: TokenApi) {
    // 2 s tokens, a 1 s renewal window / grace period: several expiries in a few seconds.
    let sandbox = sandbox::spawn(sandbox_config(2, 1000)).await.unwrap();
    let mut config = config(&sandbox, &prefix(), Some(redis_url()));
    config.access_token_api = api;
    let replicas: Vec<Arc<AccessTokens<AnyTokenCache>>> =
        (0..3).map(|_| Arc::new(replica(&config))).collect();
    let http = reqwest::Client::new();
    let seen = Arc::new(Mutex::new(BTreeMap::<String, i64>::new()));
    let rejected = Arc::new(Mutex::new(Vec::new()));
    let run_for = Duration::from_millis(6500);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..15 {
        let replica = replicas[i % replicas.len()].clone();
        let (seen, rejected, http) = (seen.clone(), rejected.clone(), http.clone());
        let sandbox_url = sandbox.base_url.clone();
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < run_for {
                let token = replica.get("", NO_FORCE).await.expect("a token");
                let answer: serde_json::Value = http
                    .get(format!("{sandbox_url}/cgi-bin/getcallbackip"))
                    .query(&[("access_token", &token.access_token)])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if answer.get("ip_list").is_none() {
                    rejected.lock().unwrap().push(answer);
                }
                seen.lock()
                    .unwrap()
                    .insert(token.access_token, token.generation);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rejected = rejected.lock().unwrap().clone();
    assert!(
        rejected.is_empty(),
        "{api:?}: WeChat rejected tokens: {rejected:?}"
    );
    let stats = stats(&sandbox).await;
    let fetches = match api {
        TokenApi::Stable => stats.stable_fetches,
        TokenApi::Legacy => stats.legacy_fetches,
    };
    let seen = seen.lock().unwrap().clone();
    // Exactly one fetch per refresh window: every fetch made the token of a new window, every
    // token was handed out, and no window had two.
    assert_eq!(fetches, stats.tokens_issued, "{api:?}: {stats:?}");
    assert_eq!(seen.len() as u64, fetches, "{api:?}: {stats:?}");
    let generations: BTreeSet<i64> = seen.values().copied().collect();
    assert_eq!(generations.len(), seen.len(), "one generation per token");
    // Refreshed at 80 % of 2 s: 6.5 s hold 4 to 5 windows, never more.
    assert!(
        (4..=5).contains(&fetches),
        "{api:?}: {fetches} fetches in 6.5 s: {stats:?}"
    );
    assert_eq!(stats.rejected_uses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_stable_token_across_expiries() {
    hammer_across_expiries(TokenApi::Stable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_legacy_token_across_expiries() {
    hammer_across_expiries(TokenApi::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_rejections_causes_one_refresh() {
    let sandbox = sandbox::spawn(sandbox::Config::dev()).await.unwrap();
    let config = config(&sandbox, &prefix(), Some(redis_url()));
    let replicas: Vec<Arc<AccessTokens<AnyTokenCache>>> =
        (0..3).map(|_| Arc::new(replica(&config))).collect();
    let first = replicas[0].get("", NO_FORCE).await.unwrap();
    let http = reqwest::Client::new();
    assert!(accepted(&http, &sandbox, &first.access_token).await);
    // Someone else forced a refresh: the shared token now answers 40001 everywhere.
    http.post(sandbox.url("/sandbox/access-tokens/invalidate"))
        .send()
        .await
        .unwrap();
    assert!(!accepted(&http, &sandbox, &first.access_token).await);
    let before = stats(&sandbox).await;

    let storm: Vec<_> = (0..100)
        .map(|i| {
            let replica = replicas[i % 3].clone();
            let stale = first.generation;
            tokio::spawn(async move {
                replica
                    .get(
                        "",
                        Want {
                            force_refresh: true,
                            stale_generation: stale,
                        },
                    )
                    .await
            })
        })
        .collect();
    let mut tokens = BTreeSet::new();
    for t in storm {
        let token = bounded(t).await.unwrap().expect("a refreshed token");
        assert!(token.generation > first.generation);
        tokens.insert(token.access_token);
    }
    assert_eq!(tokens.len(), 1, "every caller got the one new token");
    let new = tokens.into_iter().next().unwrap();
    assert_ne!(new, first.access_token);
    assert!(accepted(&http, &sandbox, &new).await);
    let after = stats(&sandbox).await;
    assert_eq!(
        after.stable_fetches - before.stable_fetches,
        1,
        "one refresh for 100 reports: {after:?}"
    );
    assert_eq!(
        after.stable_forced, 0,
        "a normal fetch already got the new token"
    );

    // The same reports again, now stale: answered from the cache, no fetch at all.
    for replica in &replicas {
        let again = replica
            .get(
                "",
                Want {
                    force_refresh: true,
                    stale_generation: first.generation,
                },
            )
            .await
            .unwrap();
        assert_eq!(again.access_token, new);
    }
    assert_eq!(stats(&sandbox).await.stable_fetches, after.stable_fetches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_a_clear_error_and_fetches_nothing() {
    let sandbox = sandbox::spawn(sandbox::Config::dev()).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there any more.
    let config = config(
        &sandbox,
        &prefix(),
        Some(format!("redis://127.0.0.1:{port}")),
    );
    let replica = Arc::new(replica(&config));
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let replica = replica.clone();
            tokio::spawn(async move { replica.get("", NO_FORCE).await })
        })
        .collect();
    for c in calls {
        let err = bounded(c).await.unwrap().expect_err("Redis is down");
        assert_eq!(err.reason(), ErrorReason::DependencyUnavailable, "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "fails fast");
    let stats = stats(&sandbox).await;
    assert_eq!(
        (stats.stable_fetches, stats.legacy_fetches),
        (0, 0),
        "no replica fetches on its own while the shared cache is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_refresh_is_taken_over_after_the_lock_ttl() {
    let sandbox = sandbox::spawn(sandbox::Config::dev()).await.unwrap();
    let prefix = prefix();
    let mut config = config(&sandbox, &prefix, Some(redis_url()));
    config.access_token_lock_ttl_ms = 1000;
    config.access_token_wait_ms = 8000;
    let http = reqwest::Client::new();
    // The first token fetch hangs (WeChat slow), the next ones answer at once.
    http.post(sandbox.url("/sandbox/faults"))
        .json(&serde_json::json!({"latency_ms": 2500, "times": 1, "path_prefix": "/cgi-bin/stable_token"}))
        .send()
        .await
        .unwrap();
    let holder = Arc::new(replica(&config));
    let doomed = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get("", NO_FORCE).await }
    });
    // Wait until the holder has the lock, then kill it mid-refresh.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let lock_key = format!("{prefix}at:{DEV_APP}:lock");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&lock_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if exists {
            break;
        }
        assert!(Instant::now() < deadline, "the holder never took the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.abort();
    assert!(doomed.await.unwrap_err().is_cancelled());
    drop(holder);

    let successor = replica(&config);
    let started = Instant::now();
    let token = bounded(successor.get("", NO_FORCE))
        .await
        .expect("taken over");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the successor waited for the dead holder's lock ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(5),
        "and no longer ({waited:?})"
    );
    assert!(
        token.generation >= 2,
        "a later fencing value than the dead holder's"
    );
    assert!(accepted(&http, &sandbox, &token.access_token).await);
    // A third replica reads the successor's token from Redis. (Its generation may be later:
    // aborting the holder's call does not stop a refresh it spawned, which may still take the
    // lock after the takeover and store the same stable token under a newer fence; a killed
    // process would not. The token is what callers use.)
    let third = replica(&config).get("", NO_FORCE).await.unwrap();
    assert_eq!(third.access_token, token.access_token);
    assert!(third.generation >= token.generation);
}

#[tokio::test]
async fn get_access_token_over_grpc_in_memory() {
    let stack = crate::helpers::start(Options::on(Store::Memory)).await;
    let mut auth = stack.auth.clone();
    let get = |force: bool, stale: i64| GetAccessTokenRequest {
        app_id: String::new(),
        force_refresh: force,
        stale_generation: stale,
    };
    let a = bounded(auth.get_access_token(get(false, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.app_id, DEV_APP);
    assert!(
        a.expires_in > 7000 && a.expires_in <= 7200,
        "{}",
        a.expires_in
    );
    let b = auth
        .get_access_token(get(false, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.access_token.as_str(), a.generation),
        (b.access_token.as_str(), b.generation)
    );
    let http = reqwest::Client::new();
    assert!(accepted(&http, &stack.sandbox, &a.access_token).await);
    // A forced refresh with the current generation makes a new token; the old one is dead.
    let c = auth
        .get_access_token(get(true, a.generation))
        .await
        .unwrap()
        .into_inner();
    assert!(c.generation > a.generation);
    assert_ne!(c.access_token, a.access_token);
    assert!(accepted(&http, &stack.sandbox, &c.access_token).await);
    assert!(!accepted(&http, &stack.sandbox, &a.access_token).await);
    // Within the force interval a second force answers the fresh token without a fetch.
    let fetches = stats(&stack.sandbox).await.stable_fetches;
    let d = auth
        .get_access_token(get(true, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.access_token, c.access_token);
    assert_eq!(stats(&stack.sandbox).await.stable_fetches, fetches);
    let unknown = auth
        .get_access_token(GetAccessTokenRequest {
            app_id: "wxnope".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(unknown), ErrorReason::UnknownApp);
}
