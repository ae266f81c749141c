//! The sandbox's in-memory world: apps, merchant, users, codes, tokens, orders, notifies.
//! One `Mutex` around [`State`]; it is never held across an `.await`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use service_kit::{Secret, Shutdown};

use crate::{
    config::{App, Config},
    faults::Faults,
    notify::NotifyRecord,
    openapi::OpenApi,
    order::{Order, OrderKey},
    rate::RateLimiter,
    token::{TokenRules, Tokens},
};

/// Most notify records kept; the oldest go first.
const MAX_NOTIFY_RECORDS: usize = 50_000;

/// A WeChat Pay merchant and the apps bound to it.
#[derive(Clone, Debug)]
pub struct Merchant {
    pub mch_id: String,
    pub key: Secret,
    pub appids: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub code_ttl: Duration,
    pub code_rate_per_min: u32,
    pub app_rate_per_min: u32,
    pub notify_time_scale: f64,
    pub notify_timeout: Duration,
    pub tokens: TokenRules,
    /// How long an accepted refund takes to settle.
    pub refund_delay: Duration,
}

/// Shared by every worker (actix `Data`) and every notify task.
pub struct Sandbox {
    pub apps: Vec<App>,
    pub merchants: Vec<Merchant>,
    pub settings: Settings,
    pub state: Mutex<State>,
    pub faults: Mutex<Faults>,
    pub http: reqwest::Client,
    /// Notify deliveries run here, not on an HTTP worker, so they outlive the request.
    pub runtime: tokio::runtime::Handle,
    pub shutdown: Shutdown,
    /// Everything Pay v3.
    pub v3: crate::v3::V3,
    /// The order shipping service and the message push.
    pub shipping: crate::shipping::Shipping,
    /// Virtual payment (xpay).
    pub xpay: crate::xpay::Xpay,
}

impl Sandbox {
    pub fn new(
        config: &Config,
        runtime: tokio::runtime::Handle,
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.notify_timeout_ms))
            // Notify URLs are usually local or in-cluster: never send them through a proxy.
            .no_proxy()
            // Below actix's 5 s keep-alive (the merchant's gateway): a notify written onto a
            // connection the gateway is closing would be lost until the next retry.
            .pool_idle_timeout(Duration::from_secs(3))
            .user_agent("Mozilla/4.0 (wxmp-sandbox; WeChat Pay notify)")
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            apps: config.apps.0.clone(),
            merchants: vec![Merchant {
                mch_id: config.mch_id.clone(),
                key: config.pay_key.clone(),
                appids: config.apps.0.iter().map(|a| a.appid.clone()).collect(),
            }],
            settings: Settings {
                code_ttl: Duration::from_secs(config.code_ttl_secs),
                code_rate_per_min: config.code_rate_per_min,
                app_rate_per_min: config.app_rate_per_min,
                notify_time_scale: config.notify_time_scale,
                notify_timeout: Duration::from_millis(config.notify_timeout_ms),
                tokens: TokenRules {
                    lifetime: Duration::from_secs(config.token_expires_in_secs),
                    grace: Duration::from_millis(config.token_grace_ms),
                    daily_quota: config.token_daily_quota as usize,
                },
                refund_delay: Duration::from_millis(config.refund_delay_ms),
            },
            state: Mutex::new(State::default()),
            faults: Mutex::new(config.faults.clone()),
            http,
            runtime,
            shutdown,
            v3: crate::v3::V3::new(&config.pay_v3, config.notify_time_scale)?,
            shipping: crate::shipping::Shipping::new(&config.shipping),
            xpay: crate::xpay::Xpay::default(),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn app(&self, appid: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.appid == appid)
    }

    /// The app used when a developer endpoint names none: the first configured.
    pub fn default_app(&self) -> &App {
        &self.apps[0]
    }

    pub fn merchant(&self, mch_id: &str) -> Option<&Merchant> {
        self.merchants.iter().find(|m| m.mch_id == mch_id)
    }
}

/// A user of one app. The person behind it (shared across apps) is the unionid.
#[derive(Clone, Debug)]
pub struct User {
    pub unionid: String,
    /// The current session_key; rotated by each successful jscode2session.
    pub session_key: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CodeEntry {
    pub appid: String,
    pub openid: String,
    pub issued: Instant,
    pub used: bool,
}

#[derive(Default)]
pub struct State {
    /// (appid, openid) → user.
    pub users: HashMap<(String, String), User>,
    /// openid → the apps it is a user of: whether an openid belongs to another app is one
    /// lookup (a scan of `users` per unifiedorder grew with every user the bench made).
    pub openid_apps: HashMap<String, Vec<String>>,
    /// unionid → appid → openid: one person across the configured apps.
    pub persons: HashMap<String, HashMap<String, String>>,
    pub codes: HashMap<String, CodeEntry>,
    pub codes_pruning: crate::prune::Pruning,
    pub limiter: RateLimiter,
    pub tokens: Tokens,
    pub orders: HashMap<OrderKey, Order>,
    pub prepay_ids: HashMap<String, OrderKey>,
    pub notifies: VecDeque<NotifyRecord>,
    pub openapi: OpenApi,
    /// (appid, openid) → when its session_key was last rotated (the console shows the age).
    pub session_key_issued: HashMap<(String, String), Instant>,
    pub refunds: crate::refund::Refunds,
    /// The daily bills' faults and v3 downloads (bills.rs).
    pub bills: crate::bills::BillState,
}

impl State {
    pub fn record_notify(&mut self, record: NotifyRecord) {
        if self.notifies.len() >= MAX_NOTIFY_RECORDS {
            self.notifies.pop_front();
        }
        self.notifies.push_back(record);
    }
}
