//! The uploader: a background task of every replica that sends due shipping uploads to WeChat
//! (`upload_shipping_info`) and retries them until WeChat takes them.
//!
//! * A due row (PENDING_UPLOAD, `next_attempt_at <= now`, lease expired) is claimed by a
//!   conditional UPDATE that takes its lease (`lease_until`, a random `lease_token`), so one
//!   replica uploads it at a time; one that dies mid-upload releases it when the lease ends.
//!   Re-sending after such a crash is harmless: WeChat keeps the latest upload of an order.
//! * WeChat answers 10060001 ("支付单不存在") for a while after a payment, until it has indexed
//!   it: retried with backoff (`PAY_SHIPPING_RETRY_MS`, doubling, at most an hour); 45009 (over
//!   the daily quota) waits `PAY_SHIPPING_QUOTA_BACKOFF_SECS`; everything else backs off too.
//!   Nothing is given up: frozen money is at stake. An upload pending longer than
//!   `PAY_SHIPPING_STUCK_SECS` is counted in the gauge `wxmp_pay_shipping_stuck_uploads`
//!   (alert `WxmpShippingUploadStuck`) and shown by `wxmp order`.
//! * Paid orders of virtual products (`PAY_VIRTUAL_PRODUCTS`) get their row when paid
//!   ([`on_paid`]) and, should that insert be lost (a crash between the payment and it), from
//!   a scan of recently paid orders: the upload happens once the process is back.
//! * The access_token is auth-service's (GetAccessToken); a token WeChat rejects (40001...) is
//!   force-refreshed once and the upload retried once, as for subscribe messages.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use service_kit::{Shutdown, grpc::AttachToken};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use wechat::{ApiError, WechatClient};
use wxmp_proto::auth::v1::{GetAccessTokenRequest, auth_service_client::AuthServiceClient};

use super::{
    rules::{self, UploadVerdict},
    store::{self, NewShipment},
};
use crate::{config::Config, error::Error, orders::PaidOutcome, payments::Payments};

/// How often the uploader looks for due rows when nothing woke it.
const POLL: Duration = Duration::from_secs(1);
/// Rows claimed per round.
const BATCH: i64 = 20;
/// The virtual-product scan looks this far back.
const SCAN_WINDOW_SECS: i64 = 7 * 86_400;
/// How often the scan and the stuck gauge run.
const SCAN_EVERY: Duration = Duration::from_secs(10);

static WAKE: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// Wakes this process's uploader (a new or modified shipment).
pub fn wake() {
    WAKE.notify_one();
}

/// The PAID hook: queues the automatic upload of a virtual product's order. Never fails the
/// payment: an error is logged and the scan queues it later.
pub async fn on_paid(payments: &Payments, outcome: &PaidOutcome) {
    let (PaidOutcome::Applied(order) | PaidOutcome::Duplicate(order)) = outcome else {
        return;
    };
    if !payments.is_virtual_product(&order.product_id) || order.transaction_id.is_empty() {
        return;
    }
    let request = serde_json::to_string(&rules::virtual_request(&order.description))
        .unwrap_or_else(|_| "{}".into());
    // logistics_type 3 (virtual), delivery_mode 1 (unified).
    let row = NewShipment::pending(order, 3, 1, request, payments.now());
    match store::insert(payments.database(), &row).await {
        Ok(true) => wake(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(order_no = %order.order_no, error = %e, "could not queue the virtual goods' shipping; the scan will");
        }
    }
}

type AuthClient = AuthServiceClient<InterceptedService<Channel, AttachToken>>;

/// What uploads: WeChat, auth-service for the token, the schedule.
#[derive(Clone, Debug)]
pub struct Uploader {
    wechat: WechatClient,
    auth: AuthClient,
    retry_ms: u64,
    quota_secs: u64,
    lease_secs: i64,
    stuck_secs: i64,
}

/// Why an attempt did not upload: the message to record, and WeChat's errcode if any.
struct Failure {
    error: String,
    errcode: Option<i64>,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self {
            errcode: e.errcode(),
            error: e.to_string(),
        }
    }
}

impl Uploader {
    /// The uploader of `config`; `None` when `PAY_AUTH_SERVICE_URL` is empty (no access_token
    /// source: shipping is recorded but not uploaded; a warning says so at start).
    pub fn from_config(config: &Config) -> Result<Option<Self>, Error> {
        if config.paid_message.auth_service_url.trim().is_empty() {
            tracing::warn!(
                "PAY_AUTH_SERVICE_URL is empty: shipping information is recorded but not uploaded to WeChat"
            );
            return Ok(None);
        }
        let timeout = config.wechat_timeout();
        let channel =
            service_kit::grpc::channel(&config.paid_message.auth_service_url, timeout, timeout)
                .map_err(|e| Error::Config(format!("PAY_AUTH_SERVICE_URL: {e}")))?;
        let s = &config.shipping;
        Ok(Some(Self {
            wechat: config.wechat.client().map_err(Error::Config)?,
            auth: AuthServiceClient::with_interceptor(
                channel,
                AttachToken::new(config.internal.internal_token.as_ref()),
            ),
            retry_ms: s.shipping_retry_ms,
            quota_secs: s.shipping_quota_backoff_secs,
            lease_secs: i64::try_from(s.shipping_lease_secs).unwrap_or(60),
            stuck_secs: i64::try_from(s.shipping_stuck_secs).unwrap_or(3600),
        }))
    }

    async fn token(&self, app_id: &str, stale: Option<i64>) -> Result<(String, i64), Failure> {
        let t = self
            .auth
            .clone()
            .get_access_token(GetAccessTokenRequest {
                app_id: app_id.to_owned(),
                force_refresh: stale.is_some(),
                stale_generation: stale.unwrap_or(0),
            })
            .await
            .map_err(|s| Failure {
                error: format!(
                    "GetAccessToken: {}",
                    service_kit::reason::reason_of(&s).as_str_name()
                ),
                errcode: None,
            })?
            .into_inner();
        Ok((t.access_token, t.generation))
    }

    async fn upload(
        &self,
        info: &wechat::shipping::ShippingInfo,
        app_id: &str,
    ) -> Result<(), Failure> {
        let (token, generation) = self.token(app_id, None).await?;
        match self.wechat.upload_shipping_info(&token, info).await {
            Err(e) if e.is_token_rejected() => {
                tracing::info!(errcode = ?e.errcode(), "access_token rejected; refreshing once");
                let (token, _) = self.token(app_id, Some(generation)).await?;
                Ok(self.wechat.upload_shipping_info(&token, info).await?)
            }
            other => Ok(other?),
        }
    }

    /// Whether WeChat already holds the first upload of `shipment`, which an earlier attempt
    /// sent but whose answer never came back (lost on the way, or the replica died before
    /// recording it). Sending it again would spend the order's one modification (10060003
    /// for any later change), so a retried first upload asks `get_order` first: 已发货 or later
    /// means it is there. Any doubt (an error, an unknown payment) uploads as before.
    async fn already_uploaded(&self, shipment: &rules::Shipment) -> bool {
        if shipment.uploads > 0 || shipment.attempts <= 1 || shipment.transaction_id.is_empty() {
            return false;
        }
        let Ok((token, _)) = self.token(&shipment.app_id, None).await else {
            return false;
        };
        match self
            .wechat
            .get_shipping_order(&token, Some(&shipment.transaction_id), None)
            .await
        {
            Ok(order) if order.order_state >= wechat::shipping::ORDER_STATE_SHIPPED => {
                tracing::warn!(
                    order_no = %shipment.order_no, order_state = order.order_state,
                    "WeChat already holds this shipping upload (an earlier answer was lost): not sent again"
                );
                true
            }
            _ => false,
        }
    }

    /// Queues the virtual products' paid orders that have no shipment (repairs a lost
    /// [`on_paid`]) and updates the stuck gauge.
    pub async fn scan(&self, payments: &Payments) -> Result<usize, Error> {
        let now = payments.now();
        let db = payments.database();
        let mut made = 0;
        let missing = store::unshipped_paid(
            db,
            &payments.inner.settings.virtual_products,
            now - SCAN_WINDOW_SECS,
            500,
        )
        .await?;
        for order in &missing {
            let request = serde_json::to_string(&rules::virtual_request(&order.description))
                .unwrap_or_else(|_| "{}".into());
            if store::insert(db, &NewShipment::pending(order, 3, 1, request, now)).await? {
                made += 1;
            }
        }
        if made > 0 {
            tracing::warn!(
                made,
                "queued virtual goods' shipping that the PAID hook missed"
            );
        }
        let stuck = store::stuck(db, now - self.stuck_secs).await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("wxmp_pay_shipping_stuck_uploads").set(stuck as f64);
        Ok(made)
    }

    /// One round: claims due uploads and sends them. The number of rows it handled.
    pub async fn run_once(&self, payments: &Payments) -> Result<usize, Error> {
        let db = payments.database();
        let due = store::due(db, payments.now(), BATCH).await?;
        let mut handled = 0;
        for order_no in due {
            let token = crate::orders::rules::new_lease_owner();
            let Some(shipment) =
                store::claim(db, &order_no, payments.now(), self.lease_secs, &token).await?
            else {
                continue;
            };
            handled += 1;
            let result = if self.already_uploaded(&shipment).await {
                Ok(())
            } else {
                match rules::upload_body(&shipment, payments.now()) {
                    Ok(info) => self.upload(&info, &shipment.app_id).await,
                    Err(e) => Err(Failure {
                        error: e,
                        errcode: None,
                    }),
                }
            };
            let (result, errcode) = match result {
                Ok(()) => (Ok(()), None),
                Err(f) => (Err(f.error), f.errcode),
            };
            let now = payments.now();
            match rules::verdict_of(
                &result,
                errcode,
                shipment.attempts,
                self.retry_ms,
                self.quota_secs,
            ) {
                UploadVerdict::Shipped => {
                    store::mark_shipped(db, &order_no, &token, now).await?;
                    metrics::counter!("wxmp_pay_shipping_uploads_total", "result" => "shipped")
                        .increment(1);
                    tracing::info!(order_no = %order_no, attempts = shipment.attempts, "shipping uploaded");
                }
                UploadVerdict::Retry { delay_secs, error } => {
                    store::mark_retry(db, &order_no, &token, now + delay_secs, &error, now).await?;
                    let label = match errcode {
                        Some(wechat::shipping::ERR_ORDER_NOT_FOUND) => "not_found_yet",
                        Some(wechat::shipping::ERR_QUOTA) => "quota",
                        _ => "retry",
                    };
                    metrics::counter!("wxmp_pay_shipping_uploads_total", "result" => label)
                        .increment(1);
                    tracing::info!(order_no = %order_no, attempts = shipment.attempts, delay_secs, error = %error, "shipping upload retried later");
                }
            }
        }
        Ok(handled)
    }
}

/// The uploader loop: until `shutdown`, in every replica (rows are leased, never shared).
pub async fn run(payments: Payments, uploader: Uploader, shutdown: Shutdown) {
    let mut last_scan: Option<Instant> = None;
    loop {
        if last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            last_scan = Some(Instant::now());
            if let Err(e) = uploader.scan(&payments).await {
                tracing::warn!(error = %e, "shipping scan failed");
            }
        }
        match uploader.run_once(&payments).await {
            Ok(n) if i64::try_from(n) == Ok(BATCH) => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "shipping upload round failed"),
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = WAKE.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
