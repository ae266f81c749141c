//! The pay-service core every capability hangs off: [`Payments`], its settings, and the
//! WeChat Pay clients it is built with. The capabilities implement their parts of it in their
//! own folders (`orders/flow.rs`, `orders/notify.rs`, `orders/reconciler.rs`, `refunds/flow.rs`,
//! `refunds/notify.rs`, `notify_throttle.rs`).

use std::{sync::Arc, time::Duration};

use service_kit::db::Database;
use wechat::{WechatClient, WechatConfig};

use crate::{
    clock::Clock,
    config::{Catalog, Config, Product},
    error::Error,
    wechat_pay::WechatPay,
};

/// Settings of [`Payments`], from [`Config`].
#[derive(Clone, Debug)]
pub struct Settings {
    pub catalog: Catalog,
    pub order_ttl_secs: i64,
    pub reconcile_after_secs: i64,
    pub reconcile_interval: Duration,
    /// How often event streams look for other replicas' events.
    pub event_poll: Duration,
    /// See `PAY_PRODUCT_REUSE_SECS` (0 = off).
    pub product_reuse_secs: i64,
    /// See `PAY_NOTIFY_RETENTION_DAYS`, in seconds (0 = keep forever).
    pub notify_retention_secs: i64,
    /// How long a reconciler's claim on an order lasts (`PAY_RECONCILE_LEASE_SECS`).
    pub reconcile_lease_secs: i64,
    /// WeChat queries a reconcile pass runs at once (`PAY_RECONCILE_CONCURRENCY`).
    pub reconcile_concurrency: usize,
    /// Where WeChat posts refund notifies (set when refunds are on).
    pub refund_notify_url: Option<String>,
    /// The bill job (`PAY_BILLS_*`).
    pub bills: crate::bills::BillsSettings,
    /// Catalog products shipped to WeChat by themselves when paid (`PAY_VIRTUAL_PRODUCTS`).
    pub virtual_products: Vec<String>,
}

/// The pay-service core. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct Payments {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Database,
    pub(crate) wechat: WechatPay,
    pub(crate) settings: Settings,
    /// The "order paid" subscribe message (subscribe.rs); None when not configured.
    pub(crate) paid_messages: Option<Arc<crate::subscribe::PaidMessages>>,
    pub(crate) clock: Clock,
    /// Ends the event streams of this core when its server shuts down.
    pub(crate) streams_stop: service_kit::Shutdown,
    /// Virtual payment (xpay/); None when no product is sold that way.
    pub(crate) xpay: Option<crate::xpay::flow::Xpay>,
}

impl Payments {
    /// Builds the core from a validated config (see [`Config::validate`]).
    pub fn new(config: &Config, db: Database, clock: Clock) -> Result<Self, Error> {
        let sign_type = config.sign_type().map_err(Error::Config)?;
        let client = WechatClient::new(WechatConfig {
            pay_base: config.wechat_pay_base.clone(),
            ..config.wechat.client_config()
        })
        .map_err(|e| Error::Config(e.to_string()))?;
        // Refunds need the merchant certificate: unreadable files stop the start naming
        // their variable.
        let client = match config.refunds.merchant_cert().map_err(Error::Config)? {
            Some(cert) => client.with_merchant_cert(&cert).map_err(|e| {
                Error::Config(format!("WXMP_PAY_CERT_PATH / WXMP_PAY_CERT_KEY_PATH: {e}"))
            })?,
            None => client,
        };
        let mut wechat = WechatPay::new(
            client.clone(),
            config.mch_id.trim().to_owned(),
            config.pay_key.clone(),
            sign_type,
            config.notify_url.clone(),
        );
        // v3 whenever its settings are present (WXMP_PAY_API only picks the API of new
        // orders): v3 orders stay serviceable after a switch back to v2.
        if config.v3.configured() {
            wechat = wechat.with_v3(v3_client(config, client)?);
        }
        let wechat = wechat.with_api(config.v3.api);
        let settings = Settings {
            catalog: config.products.clone(),
            order_ttl_secs: i64::try_from(config.order_ttl_secs)
                .map_err(|_| Error::Config("PAY_ORDER_TTL_SECS is too large".into()))?,
            reconcile_after_secs: i64::try_from(config.reconcile_after_secs)
                .map_err(|_| Error::Config("PAY_RECONCILE_AFTER_SECS is too large".into()))?,
            reconcile_interval: Duration::from_secs(config.reconcile_interval_secs),
            event_poll: config.events.poll(),
            product_reuse_secs: i64::try_from(config.product_reuse_secs)
                .map_err(|_| Error::Config("PAY_PRODUCT_REUSE_SECS is too large".into()))?,
            notify_retention_secs: i64::try_from(config.notify_retention_days)
                .ok()
                .and_then(|days| days.checked_mul(86_400))
                .ok_or_else(|| Error::Config("PAY_NOTIFY_RETENTION_DAYS is too large".into()))?,
            reconcile_lease_secs: i64::try_from(config.reconcile_lease_secs)
                .map_err(|_| Error::Config("PAY_RECONCILE_LEASE_SECS is too large".into()))?,
            reconcile_concurrency: usize::try_from(config.reconcile_concurrency)
                .unwrap_or(1)
                .max(1),
            refund_notify_url: config.refunds.refund_notify_url.clone(),
            bills: bills_settings(config)?,
            virtual_products: config.shipping.virtual_product_ids(),
        };
        crate::refunds::register_metrics();
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                wechat,
                settings,
                clock,
                streams_stop: service_kit::Shutdown::new(),
                paid_messages: crate::subscribe::PaidMessages::from_config(config)
                    .map_err(Error::Config)?,
                xpay: crate::xpay::flow::Xpay::from_config(config)?,
            }),
        })
    }

    /// Whether `product_id` is a virtual product (shipped by itself when paid).
    pub fn is_virtual_product(&self, product_id: &str) -> bool {
        !product_id.is_empty()
            && self
                .inner
                .settings
                .virtual_products
                .iter()
                .any(|p| p == product_id)
    }

    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn products(&self) -> &[Product] {
        &self.inner.settings.catalog.0
    }

    /// Follows the outbox after `after_id` (see [`crate::watch`]).
    pub fn watch_events(
        &self,
        after_id: i64,
        kinds: Vec<crate::events::EventKind>,
    ) -> crate::events::watch::EventStream {
        crate::events::watch::follow(
            self.inner.db.clone(),
            after_id,
            kinds,
            self.inner.settings.event_poll,
            self.inner.streams_stop.clone(),
        )
    }

    /// Ends every event stream of this core (its server is shutting down).
    pub fn stop_event_streams(&self) {
        self.inner.streams_stop.trigger();
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// The same core with other bill settings (tests: the crash hook, a batch size).
    #[doc(hidden)]
    pub fn with_bill_settings(&self, f: impl FnOnce(&mut crate::bills::BillsSettings)) -> Self {
        let mut settings = self.inner.settings.clone();
        f(&mut settings.bills);
        Self {
            inner: Arc::new(Inner {
                db: self.inner.db.clone(),
                wechat: self.inner.wechat.clone(),
                settings,
                paid_messages: self.inner.paid_messages.clone(),
                clock: self.inner.clock.clone(),
                streams_stop: self.inner.streams_stop.clone(),
                xpay: self.inner.xpay.clone(),
            }),
        }
    }
}

/// The bill job's settings from `PAY_BILLS_*`: the APIs in use are v2 when the v2 key is set
/// and v3 when v3 is configured (`PAY_BILLS_APIS=auto`).
fn bills_settings(config: &Config) -> Result<crate::bills::BillsSettings, Error> {
    let bills = &config.bills;
    let apis = bills
        .api_list(!config.pay_key.is_empty(), config.v3.configured())
        .map_err(Error::Config)?;
    Ok(crate::bills::BillsSettings {
        enabled: bills.enabled,
        hour: bills.hour,
        apis,
        appid: bills.appid.clone().unwrap_or_default(),
        retry_secs: i64::try_from(bills.retry_secs)
            .map_err(|_| Error::Config("PAY_BILLS_RETRY_SECS is too large".into()))?,
        max_attempts: i32::try_from(bills.max_attempts)
            .map_err(|_| Error::Config("PAY_BILLS_MAX_ATTEMPTS is too large".into()))?,
        lease_secs: i64::try_from(bills.lease_secs)
            .map_err(|_| Error::Config("PAY_BILLS_LEASE_SECS is too large".into()))?,
        ..crate::bills::BillsSettings::default()
    })
}

/// The v3 client from `WXMP_PAY_*` (keys read and checked by [`PayV3Config::load`]).
///
/// [`PayV3Config::load`]: crate::config::PayV3Config::load
fn v3_client(config: &Config, client: WechatClient) -> Result<wechat::pay::v3::V3Client, Error> {
    use wechat::pay::v3::{Merchant, V3Client};
    let settings = config.v3.load().map_err(Error::Config)?;
    let platform = settings.platform_keys();
    tracing::info!(
        public_keys = ?platform.public_key_ids(),
        platform_certificates = platform.uses_certificates(),
        "WeChat Pay v3 verifies with these keys"
    );
    // v3 orders carry their own appid (the order's); the merchant needs no default one.
    let merchant = Merchant {
        appid: String::new(),
        mchid: config.mch_id.trim().to_owned(),
        serial_no: settings.cert_serial,
        key: settings.merchant_key,
        apiv3_key: settings.apiv3_key,
    };
    Ok(V3Client::new(client, merchant, platform)
        .with_certificate_wait(Duration::from_millis(config.v3.certificate_wait_ms)))
}
