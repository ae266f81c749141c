//! The app's one shared access_token (`GetAccessToken`).
//!
//! Every replica reads the token from the cache; when it is due (`refresh_at`, ahead of
//! WeChat's expiry) exactly one replica refreshes it:
//!
//! 1. fast path: a cached token before its `refresh_at` is answered (one Redis GET);
//! 2. in process, callers of one app queue on one async mutex (single flight), and re-read
//!    the cache once they hold it;
//! 3. across replicas, the refresher takes a Redis lock (`SET NX PX`) whose value is a fencing
//!    number from `INCR`; it fetches from WeChat and stores the token with a script that checks
//!    the lock still holds its number, so a stalled holder never overwrites a newer token;
//! 4. a replica that finds the lock taken answers the cached token while it is still valid
//!    (the refresh window lies before expiry), or waits for the new one; if the holder dies,
//!    its lock expires after `AUTH_ACCESS_TOKEN_LOCK_TTL_MS` and the next waiter takes over.
//!
//! Forced refreshes (a caller's API call answered 40001/42001/40014) carry the rejected
//! token's generation: if the cache already holds a newer one it is answered with no fetch,
//! and a forced fetch runs at most once per `AUTH_ACCESS_TOKEN_FORCE_INTERVAL_SECS` per app,
//! so a storm of rejections causes one refresh.
//!
//! Redis unreachable is an error (DEPENDENCY_UNAVAILABLE), never a reason to fetch: replicas
//! fetching on their own is exactly the storm (and, with the legacy API, the mutual
//! invalidation) this module exists to prevent.

pub mod cache;

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use wechat::{AccessToken, WechatClient};

use crate::{config::Apps, error::Error, meter};
pub use cache::{AnyTokenCache, CachedToken, MemoryTokenCache, RedisTokenCache, TokenCache};

/// How often a waiter re-reads the cache while another replica refreshes.
const POLL: Duration = Duration::from_millis(25);

/// Which WeChat endpoint issues tokens (`WXMP_ACCESS_TOKEN_API`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenApi {
    /// `POST /cgi-bin/stable_token`: a fetch does not invalidate the token others hold.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: every fetch replaces the previous token (after 5 minutes).
    Legacy,
}

impl TokenApi {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Legacy => "legacy",
        }
    }
}

impl FromStr for TokenApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stable" => Ok(Self::Stable),
            "legacy" => Ok(Self::Legacy),
            _ => Err(format!(
                "WXMP_ACCESS_TOKEN_API must be stable or legacy, not {s:?}"
            )),
        }
    }
}

/// The knobs of the refresh protocol (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct TokenOptions {
    pub api: TokenApi,
    /// Refresh this long before WeChat's expiry, at most a fifth of the lifetime. Keep it
    /// under 5 minutes: stable_token renews only in a token's last 5 minutes.
    pub refresh_before: Duration,
    /// The refresh lock's TTL: a dead holder blocks the others this long at most.
    pub lock_ttl: Duration,
    /// How long a caller waits for another replica's refresh before failing.
    pub wait: Duration,
    /// At most one forced refresh per app per this interval.
    pub force_interval: Duration,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            api: TokenApi::Stable,
            refresh_before: Duration::from_secs(240),
            lock_ttl: Duration::from_secs(10),
            wait: Duration::from_secs(15),
            force_interval: Duration::from_secs(30),
        }
    }
}

/// What GetAccessToken answers.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub app_id: String,
    pub access_token: String,
    pub expires_in: Duration,
    pub generation: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("app_id", &self.app_id)
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("generation", &self.generation)
            .finish()
    }
}

/// A caller's request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    pub force_refresh: bool,
    /// With `force_refresh`: the generation WeChat rejected (0 = unknown).
    pub stale_generation: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The shared access tokens of every configured app.
pub struct AccessTokens<C> {
    apps: Apps,
    wechat: WechatClient,
    cache: C,
    options: TokenOptions,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

enum Why {
    Missing,
    Ahead,
    Forced,
}

impl Why {
    fn label(&self) -> &'static str {
        match self {
            Why::Missing => "missing",
            Why::Ahead => "ahead",
            Why::Forced => "forced",
        }
    }
}

impl<C: TokenCache> AccessTokens<C> {
    pub fn new(apps: Apps, wechat: WechatClient, cache: C, options: TokenOptions) -> Self {
        Self {
            apps,
            wechat,
            cache,
            options,
            flights: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &TokenOptions {
        &self.options
    }

    fn flight(&self, app_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        flights.entry(app_id.to_owned()).or_default().clone()
    }

    /// The app's token, refreshing it when due. `app_id` empty is the default app.
    pub async fn get(&self, app_id: &str, want: Want) -> Result<Token, Error> {
        let app = self
            .apps
            .resolve(app_id)
            .ok_or_else(|| Error::UnknownApp(app_id.chars().take(64).collect()))?;
        let app_id = app.app_id.as_str();
        let first = self.cache.get(app_id).await?;
        if let Some(t) = self.usable(app_id, &first, want) {
            meter::access_token_served("cache");
            return Ok(t);
        }
        let flight = self.flight(app_id);
        // In process, one task per app refreshes; the others answer the still-valid token
        // meanwhile, or queue behind it when there is none (or theirs was rejected).
        let _turn = match flight.clone().try_lock_owned() {
            Ok(turn) => turn,
            Err(_) => {
                if !want.force_refresh
                    && let Some(c) = first.as_ref().filter(|c| now_ms() < c.expires_at_ms)
                {
                    meter::access_token_served("cache");
                    return Ok(token(app_id, c));
                }
                tokio::time::timeout(self.options.wait, flight.lock_owned())
                    .await
                    .map_err(|_| Error::TokenRefreshTimeout)?
            }
        };
        let deadline = tokio::time::Instant::now() + self.options.wait;
        let mut waited = false;
        loop {
            // Another task of this process, or another replica, may have refreshed meanwhile.
            let cached = self.cache.get(app_id).await?;
            if let Some(t) = self.usable(app_id, &cached, want) {
                meter::access_token_served(if waited { "waited" } else { "cache" });
                return Ok(t);
            }
            let valid = cached.as_ref().filter(|c| now_ms() < c.expires_at_ms);
            let why = match valid {
                None => Why::Missing,
                Some(_) if want.force_refresh => Why::Forced,
                Some(_) => Why::Ahead,
            };
            match self.cache.lock(app_id, self.options.lock_ttl).await? {
                Some(fence) => {
                    // The previous holder may have stored a fresh token between our read and
                    // our lock: look again before fetching (one fetch per refresh window).
                    let latest = self.cache.get(app_id).await?;
                    if latest.as_ref().map(|c| c.generation)
                        != cached.as_ref().map(|c| c.generation)
                    {
                        self.cache.unlock(app_id, fence).await?;
                        continue;
                    }
                    if matches!(why, Why::Forced)
                        && !self
                            .cache
                            .claim_force(app_id, self.options.force_interval)
                            .await?
                    {
                        // A forced refresh ran moments ago: its token is as fresh as it gets.
                        meter::access_token_forced("rate_limited");
                        self.cache.unlock(app_id, fence).await?;
                        if let Some(c) = valid {
                            return Ok(token(app_id, c));
                        }
                        continue;
                    }
                    if matches!(why, Why::Forced) {
                        meter::access_token_forced("refreshed");
                    }
                    return self.refresh(app_id, fence, cached.as_ref(), why).await;
                }
                None => {
                    // Another replica is refreshing. A still-valid token serves meanwhile,
                    // unless the caller was just told it is dead.
                    if !want.force_refresh
                        && let Some(c) = valid
                    {
                        meter::access_token_served("cache");
                        return Ok(token(app_id, c));
                    }
                    if !waited {
                        meter::access_token_lock_wait();
                        waited = true;
                    }
                    self.wait_for_change(app_id, cached.as_ref(), deadline)
                        .await?;
                }
            }
        }
    }

    /// The cached token when it can be answered as is.
    fn usable(&self, app_id: &str, cached: &Option<CachedToken>, want: Want) -> Option<Token> {
        let c = cached.as_ref()?;
        let now = now_ms();
        if now >= c.expires_at_ms {
            return None;
        }
        if want.force_refresh {
            // Only a token newer than the rejected one helps.
            return (want.stale_generation > 0 && c.generation > want.stale_generation).then(
                || {
                    meter::access_token_forced("already_newer");
                    token(app_id, c)
                },
            );
        }
        (now < c.refresh_at_ms).then(|| token(app_id, c))
    }

    /// Polls until the cached token changes or the lock is free again (its holder finished
    /// or died and the TTL ran out).
    async fn wait_for_change(
        &self,
        app_id: &str,
        before: Option<&CachedToken>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::TokenRefreshTimeout);
            }
            tokio::time::sleep(POLL).await;
            let now = self.cache.get(app_id).await?;
            if now.as_ref().map(|c| c.generation) != before.map(|c| c.generation) {
                return Ok(());
            }
            if !self.cache.locked(app_id).await? {
                return Ok(());
            }
        }
    }

    async fn refresh(
        &self,
        app_id: &str,
        fence: i64,
        cached: Option<&CachedToken>,
        why: Why,
    ) -> Result<Token, Error> {
        let fetched = self.fetch(app_id, cached, &why).await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                // Let the next caller try at once rather than after the lock TTL.
                if let Err(unlock) = self.cache.unlock(app_id, fence).await {
                    tracing::warn!(error = %unlock, "could not release the access_token lock");
                }
                return Err(e);
            }
        };
        let lifetime = Duration::from_secs(u64::try_from(fetched.expires_in).unwrap_or(1).max(1));
        let margin = self.options.refresh_before.min(lifetime / 5);
        let fetched_at = now_ms();
        let record = CachedToken {
            access_token: fetched.access_token,
            expires_at_ms: fetched_at + ms(lifetime),
            refresh_at_ms: fetched_at + ms(lifetime - margin),
            generation: fence,
        };
        meter::access_token_refresh(why.label());
        if !self.cache.store(app_id, fence, &record, lifetime).await? {
            // Our lock ran out while WeChat answered: whoever holds it now decides what is
            // cached. The token we got is still valid at WeChat.
            tracing::warn!(
                app_id,
                fence,
                "access_token lock lost before storing; not cached"
            );
        } else {
            tracing::info!(
                app_id,
                generation = fence,
                reason = why.label(),
                expires_in = fetched.expires_in,
                "access_token refreshed"
            );
        }
        Ok(token(app_id, &record))
    }

    /// One fetch from WeChat (two for a forced stable refresh that got the rejected token
    /// back: only force_refresh replaces a stable token before its last minutes).
    async fn fetch(
        &self,
        app_id: &str,
        cached: Option<&CachedToken>,
        why: &Why,
    ) -> Result<AccessToken, Error> {
        let app = self
            .apps
            .resolve(app_id)
            .ok_or_else(|| Error::UnknownApp(app_id.to_owned()))?;
        let secret = app.secret.expose();
        let api = self.options.api;
        let result = match api {
            TokenApi::Legacy => self.wechat.access_token(app_id, secret).await,
            TokenApi::Stable => self.wechat.stable_token(app_id, secret, false).await,
        };
        meter::access_token_fetch(api.as_str(), result.as_ref().map(drop));
        let token = result.map_err(Error::from_token_fetch)?;
        let same = cached.is_some_and(|c| c.access_token == token.access_token);
        if api == TokenApi::Stable && matches!(why, Why::Forced) && same {
            let forced = self.wechat.stable_token(app_id, secret, true).await;
            meter::access_token_fetch("stable_force", forced.as_ref().map(drop));
            return forced.map_err(Error::from_token_fetch);
        }
        Ok(token)
    }
}

fn token(app_id: &str, c: &CachedToken) -> Token {
    let left = (c.expires_at_ms - now_ms()).max(0);
    Token {
        app_id: app_id.to_owned(),
        access_token: c.access_token.clone(),
        expires_in: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
        generation: c.generation,
    }
}
