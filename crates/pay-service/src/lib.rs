//! wxmp pay-service: `wxmp.pay.v1.PayService`.
//!
//! One folder per capability, each holding its rules (pure functions, unit-tested), its flow,
//! its notify handling and its SQL side by side:
//!
//! | module | what it holds |
//! |---|---|
//! | [`orders`] | `rules.rs` (order states, what a payment means), `flow.rs` (create, prepare, get, close, sync), `notify.rs` (pay notifies v2/v3), `store.rs` (orders and notifies SQL), `reconciler.rs` |
//! | [`refunds`] | `rules.rs` (refund states and totals), `flow.rs` (Refund, reconciling), `notify.rs` (refund notifies v2/v3), `store.rs` |
//! | [`events`] | the outbox (`events.rs`) and its readers: `watch.rs` (the gRPC stream), `webhooks.rs`, `relay.rs` (into a message bus; `relay/nats.rs`: NATS JetStream) |
//! | [`subscribe`] | the "order paid" subscribe message: a durable queue and its sender |
//! | [`bills`] | WeChat's daily bills: `rules.rs` (matching), `flow.rs` (the daily job), `store.rs`, `meter.rs` |
//! | [`shipping`] | shipping info to WeChat (Ship, the uploader with retries) and the message-push events pay-service owns (receipt, settlement) |
//! | [`wechat_pay`] | the one interface over WeChat Pay: `v2.rs`, `v3.rs`, `errors.rs` |
//! | [`config`] | [`Config`], with one file per sub-config under `config/` |
//! | [`payments`] | the core [`Payments`] every capability implements its part of |
//! | [`grpc`] | the thin tonic adapter; [`error`] maps errors to gRPC codes and reasons |
//!
//! Shared: [`clock`], [`meter`] (reconciler metrics), [`schema`] (diesel tables) and
//! [`notify_throttle`] (the cheap check before a throttled sender's notify is handled).
//!
//! Orders live in `orders` (PostgreSQL or SQLite through [`service_kit::db::Database`]); every
//! payment notify is kept in `pay_notifications` with its verdict (see [`orders::notify`]).
//!
//! Order states: `CREATED → PAYING (prepay_id held) → PAID`, `CREATED|PAYING → CLOSED`. Each
//! transition is one conditional UPDATE (see [`orders::store`]), so a notify, the reconciler
//! and CloseOrder racing on the same order change it at most once.
//!
//! Decisions worth knowing:
//! - Another user's order is NOT_FOUND (not PERMISSION_DENIED), so order numbers cannot be
//!   probed for existence.
//! - The first PrepareJsapiPayment binds the payer (appid, openid, client IP) to the order;
//!   every later unifiedorder of that order is the identical request, for which WeChat answers
//!   the same prepay_id. The prepay_id is stored and reused for 2 h minus 5 min.
//! - A genuine payment of a CLOSED order (the user paid while it was being closed) is
//!   answered SUCCESS so WeChat stops retrying, kept on the order (transaction_id, state stays
//!   CLOSED) with the notify verdict `paid_after_close`: refund it manually.
//! - The reconciler ([`orders::reconciler`]) repairs lost notifies with orderquery and closes
//!   expired orders; it is safe with several replicas.
//! - Refunds ([`refunds`]) are rows of their own, written PENDING before WeChat is called; the
//!   order's refund totals move in the same transaction as the refund's state.

pub mod bills;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod grpc;
pub mod meter;
pub mod notify_throttle;
pub mod orders;
pub mod payments;
pub mod refunds;
pub mod schema;
pub mod shipping;
pub mod subscribe;
pub mod wechat_pay;
pub mod xpay;

use diesel_migrations::embed_migrations;
use events::webhooks;
use service_kit::{
    Shutdown,
    db::{Database, Migrations, PoolOptions},
};
use tokio::net::TcpListener;
use tonic::service::Routes;
use wxmp_proto::pay::v1::pay_service_server::PayServiceServer;

pub use clock::Clock;
pub use config::{Catalog, Config, EventsConfig, NatsConfig, Product, RefundConfig};
pub use error::Error;
pub use orders::{
    CreateOrder, NotifyReply, NotifyV3Reply, Order, OrderState, PayTarget, Payer, ReconcileReport,
};
pub use payments::Payments;
pub use refunds::{Refund, RefundOrder, RefundReconcileReport, RefundState};

/// The migrations of pay-service, one set per back end. Their versions
/// (`2026-11-25-0002xx_*`) do not collide with user-service's when both share a database.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: embed_migrations!("migrations/postgres"),
    sqlite: embed_migrations!("migrations/sqlite"),
};

fn pool_options(config: &Config) -> PoolOptions {
    PoolOptions {
        max_size: config.db_pool_size,
        ..PoolOptions::default()
    }
}

/// Runs the pending migrations of `database_url` (`wxmp migrate`).
pub async fn migrate(database_url: &str) -> Result<(), Error> {
    service_kit::db::migrate(database_url, &MIGRATIONS).await?;
    Ok(())
}

/// Connects, migrates and builds the core from `config` (what [`serve`] does before serving).
pub async fn connect(config: &Config, clock: Clock) -> Result<Payments, Error> {
    config.validate().map_err(Error::Config)?;
    let url = config.database_url.expose();
    let db = Database::connect(url, pool_options(config))?;
    db.migrate(url, &MIGRATIONS).await?;
    Payments::new(config, db, clock)
}

/// Serves PayService (plus gRPC health) on `listener` and runs the reconciler, until
/// `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    let payments = connect(&config, Clock::system()).await?;
    serve_payments(payments, &config, listener, shutdown).await
}

/// [`serve`] with a core built by the caller (tests use a manual clock).
pub async fn serve_payments(
    payments: Payments,
    config: &Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    // Webhook endpoints are registered before anything runs (see webhooks::register).
    let endpoints = config.events.webhook_endpoints();
    let webhook_worker = match endpoints.is_empty() {
        true => None,
        false => {
            let worker = webhooks::Webhooks::new(
                payments.database().clone(),
                payments.clock().clone(),
                webhook_settings(config, endpoints),
            )?;
            worker.register().await?;
            Some(worker)
        }
    };
    // The relay's cursor is registered before anything runs, like the webhooks'.
    let relay = match config.nats.enabled() {
        false => None,
        true => {
            let sink = events::relay::nats::NatsSink::connect(&config.nats).await?;
            let relay = events::relay::Relay::new(
                payments.database().clone(),
                payments.clock().clone(),
                sink,
                relay_settings(config),
            );
            relay.register().await?;
            tracing::info!(
                relay = relay.name(),
                "order events relayed to NATS JetStream"
            );
            Some(relay)
        }
    };
    let relays: Vec<String> = relay.iter().map(|r| r.name().to_owned()).collect();
    // The background tasks stop with the server: on shutdown, or when the server fails.
    let stop_reconciler = Shutdown::new();
    let reconciler = tokio::spawn(orders::reconciler::run(
        payments.clone(),
        stop_reconciler.clone(),
    ));
    let mut background = vec![tokio::spawn(events::run_retention(
        payments.database().clone(),
        payments.clock().clone(),
        config.events.retention(),
        relays,
        stop_reconciler.clone(),
    ))];
    let relay_task = relay.map(|relay| tokio::spawn(relay.run(stop_reconciler.clone())));
    if let Some(worker) = webhook_worker {
        background.push(tokio::spawn(worker.run(stop_reconciler.clone())));
    }
    // Open event streams would hold the graceful drain open: end them when shutdown starts.
    {
        let (payments, shutdown) = (payments.clone(), shutdown.clone());
        background.push(tokio::spawn(async move {
            shutdown.wait().await;
            payments.stop_event_streams();
        }));
    }
    background.push(tokio::spawn(bills::flow::run(
        payments.clone(),
        stop_reconciler.clone(),
    )));
    let sender = tokio::spawn(subscribe::run(payments.clone(), stop_reconciler.clone()));
    if let Some(uploader) = shipping::worker::Uploader::from_config(config)? {
        background.push(tokio::spawn(shipping::worker::run(
            payments.clone(),
            uploader,
            stop_reconciler.clone(),
        )));
    }
    let probe_db = payments.inner.db.clone();
    let tls = config
        .internal
        .grpc_tls()
        .map_err(|e| Error::Config(e.to_string()))?;
    let service =
        PayServiceServer::with_interceptor(payments, config.internal.require_token(&listener));
    tracing::info!(addr = ?listener.local_addr().ok(), "pay-service listening");
    // Health follows the database: NOT_SERVING while it is unreachable.
    let ready = move || {
        let db = probe_db.clone();
        async move { db.ping().await.is_ok() }
    };
    let routes = service_kit::grpc::with_reflection(
        Routes::new(service),
        &[grpc::SERVICE_NAME],
        config.internal.internal_token.clone(),
    );
    let served = service_kit::grpc::serve_draining(
        listener,
        routes,
        &[grpc::SERVICE_NAME],
        shutdown,
        ready,
        tls.as_ref(),
        config.drain,
    )
    .await;
    stop_reconciler.trigger();
    if let Err(e) = reconciler.await {
        tracing::warn!(error = %e, "reconciler task ended abnormally");
    }
    if let Err(e) = sender.await {
        tracing::warn!(error = %e, "paid message sender ended abnormally");
    }
    // The relay lets its lease go as it stops, so another replica takes over at once.
    if let Some(task) = relay_task {
        let abort = task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .is_err()
        {
            abort.abort();
            tracing::warn!("the event relay did not stop within 5 s");
        }
    }
    for task in background {
        task.abort();
        let _ = task.await;
    }
    served?;
    Ok(())
}

/// The relay's settings from the config.
pub fn relay_settings(config: &Config) -> events::relay::RelaySettings {
    events::relay::RelaySettings {
        lease: config.nats.lease(),
        batch: config.nats.nats_batch,
        poll: config.events.poll(),
        secret: config.events.webhook_secret.clone(),
    }
}

/// The webhook worker's settings from the config (validated: the secret is set).
fn webhook_settings(config: &Config, endpoints: Vec<String>) -> webhooks::WebhookSettings {
    let events = &config.events;
    webhooks::WebhookSettings {
        endpoints,
        secret: events.webhook_secret.clone().unwrap_or_default(),
        timeout: std::time::Duration::from_millis(events.webhook_timeout_ms),
        max_age_secs: i64::try_from(events.webhook_max_age_secs).unwrap_or(i64::MAX),
        backoff: std::time::Duration::from_secs(events.webhook_backoff_secs),
        poll: events.poll(),
    }
}
