//! The reconciler: asks WeChat about PAYING orders whose notify never came, and closes
//! expired unpaid orders.
//!
//! Several replicas may run it at once. Each order is claimed with a conditional UPDATE of
//! `reconcile_lease_until` (`... WHERE lease <= now`), so normally one replica handles it and
//! WeChat is asked once. Correctness does not rest on the lease, though: the changes it makes
//! are the same conditional transitions as everywhere else (`... WHERE state IN
//! ('CREATED','PAYING')`), so a replica whose lease ran out mid-way, or a notify arriving at the
//! same moment, still changes an order at most once.
//!
//! After an orderquery that found the order unpaid, `next_query_at` keeps it from being asked
//! about again before another `PAY_RECONCILE_AFTER_SECS`; expiry is checked regardless.
//!
//! A pass can be long (a slow WeChat, many orders), so the clock is read again for every
//! order: a claim made late in the pass runs `PAY_RECONCILE_LEASE_SECS` from when it is made, not from the
//! start of the pass (else it would be born expired and another replica would take the same
//! order at once). Each claim carries a random owner value, and a replica releases only a
//! lease that still carries its value: when its lease ran out mid-call and another replica
//! claimed the order, the late release leaves the other replica's lease alone.

use std::{collections::HashSet, time::Duration};

use futures::{StreamExt, TryStreamExt};
use service_kit::Shutdown;

use crate::{
    error::Error,
    orders::{OrderState, PaidOutcome, flow::Closing, store},
    payments::Payments,
};

/// Orders fetched per page of a scan; a pass goes on page after page until the backlog is
/// drained (see [`Payments::reconcile_once`]).
const BATCH: i64 = 100;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// PAYING orders asked about at WeChat.
    pub queried: usize,
    /// Orders this pass moved to PAID.
    pub paid: usize,
    /// Orders this pass moved to CLOSED.
    pub closed: usize,
    /// Orders that failed (WeChat or database errors); retried on a later pass.
    pub errors: usize,
    /// Stored notifies deleted for being older than `PAY_NOTIFY_RETENTION_DAYS`.
    pub pruned_notifies: usize,
    /// Open orders past their expiry found by the pass (every page).
    pub overdue: usize,
    /// Pages fetched (expired and due scans together).
    pub pages: usize,
}

/// What happened to one order of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    /// Another replica holds it, or it changed meanwhile.
    Skipped,
    Queried {
        paid: bool,
    },
    /// Asked about, and the question failed.
    QueryFailed,
    Closed,
    Paid,
    Nothing,
    Failed,
}

impl ReconcileReport {
    fn add(&mut self, done: Done) {
        match done {
            Done::Skipped | Done::Nothing => {}
            Done::Queried { paid } => {
                self.queried += 1;
                self.paid += usize::from(paid);
            }
            Done::QueryFailed => {
                self.queried += 1;
                self.errors += 1;
            }
            Done::Closed => self.closed += 1,
            Done::Paid => self.paid += 1,
            Done::Failed => self.errors += 1,
        }
    }
}

impl Payments {
    /// One reconciliation pass: the work of one tick of the background task.
    ///
    /// Each scan (expired open orders, then PAYING orders due for a query) is drained in pages
    /// of [`BATCH`] until a page comes back short, or holds no order this pass has not already
    /// handled (those it could not finish, say while WeChat fails, are left to the next pass);
    /// a page's orders are worked on `PAY_RECONCILE_CONCURRENCY` at a time. Handled orders
    /// leave the scan by themselves: closed or paid, or given a later `next_query_at`.
    pub async fn reconcile_once(&self) -> Result<ReconcileReport, Error> {
        let mut report = ReconcileReport::default();
        let after = self.inner.settings.reconcile_after_secs;
        let db = self.database();

        // Expired orders first: closing one asks WeChat anyway (closeorder answers ORDERPAID
        // for a paid one, whose payment is then applied instead).
        let mut seen = HashSet::new();
        loop {
            let page = store::expired_open(db, self.now(), BATCH).await?;
            report.pages += 1;
            let full = page.len() >= usize::try_from(BATCH).unwrap_or(usize::MAX);
            let fresh: Vec<String> = page
                .into_iter()
                .filter(|o| seen.insert(o.clone()))
                .collect();
            report.overdue += fresh.len();
            if fresh.is_empty() {
                break;
            }
            for done in self
                .each(fresh, |order_no| self.close_expired(order_no))
                .await?
            {
                report.add(done);
            }
            if !full {
                break;
            }
        }

        let mut seen = HashSet::new();
        loop {
            let page = store::paying_due(db, self.now() - after, self.now(), BATCH).await?;
            report.pages += 1;
            let full = page.len() >= usize::try_from(BATCH).unwrap_or(usize::MAX);
            let fresh: Vec<String> = page
                .into_iter()
                .filter(|o| seen.insert(o.clone()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for done in self
                .each(fresh, |order_no| self.query_due(order_no))
                .await?
            {
                report.add(done);
            }
            if !full {
                break;
            }
        }

        let retention = self.inner.settings.notify_retention_secs;
        if retention > 0 {
            report.pruned_notifies = store::prune_notifications(db, self.now() - retention).await?;
        }

        if report.queried + report.paid + report.closed + report.errors + report.pruned_notifies > 0
        {
            tracing::info!(?report, "reconcile pass");
        }
        Ok(report)
    }

    /// Runs `work` on every order of a page, `PAY_RECONCILE_CONCURRENCY` at a time; the first
    /// database error (not a WeChat one: those are `Done::Failed`) ends the pass.
    async fn each<'a, F, Fut>(&'a self, page: Vec<String>, work: F) -> Result<Vec<Done>, Error>
    where
        F: Fn(String) -> Fut + 'a,
        Fut: std::future::Future<Output = Result<Done, Error>> + 'a,
    {
        let concurrency = self.inner.settings.reconcile_concurrency.max(1);
        futures::stream::iter(page.into_iter().map(work))
            .buffer_unordered(concurrency)
            .try_collect()
            .await
    }

    /// Claims an expired open order, closes it (at WeChat, then here) and releases it.
    async fn close_expired(&self, order_no: String) -> Result<Done, Error> {
        let db = self.database();
        let lease_secs = self.inner.settings.reconcile_lease_secs;
        let now = self.now();
        let Some(lease) = store::claim(db, &order_no, now, now + lease_secs).await? else {
            return Ok(Done::Skipped); // another replica has it, or it is no longer open
        };
        let Some(order) = store::find_order(db, &order_no).await? else {
            return Ok(Done::Skipped);
        };
        let done = match self.try_close(order).await {
            Ok(Closing::Closed(_)) => Done::Closed,
            Ok(Closing::WasClosed(_)) => Done::Nothing,
            // Paid after all: counted only when this pass applied the payment (a notify
            // racing the close may have applied it first).
            Ok(Closing::PaidAtWechat(Some(PaidOutcome::Applied(_)))) => Done::Paid,
            Ok(Closing::PaidAtWechat(_)) => Done::Nothing,
            // Changing under us: the next pass looks again.
            Err(Error::OrderState(_)) => Done::Nothing,
            Err(e) => {
                tracing::warn!(order_no, error = %e, "closing an expired order failed");
                Done::Failed
            }
        };
        release(self, &order_no, &lease, None).await?;
        Ok(done)
    }

    /// Claims a PAYING order due for a query, asks WeChat about it and releases it with its
    /// next query time.
    async fn query_due(&self, order_no: String) -> Result<Done, Error> {
        let db = self.database();
        let lease_secs = self.inner.settings.reconcile_lease_secs;
        let after = self.inner.settings.reconcile_after_secs;
        let now = self.now();
        let Some(lease) = store::claim(db, &order_no, now, now + lease_secs).await? else {
            return Ok(Done::Skipped);
        };
        let done = match self.query_paying(&order_no).await {
            Ok(paid) => Done::Queried { paid },
            Err(e) => {
                tracing::warn!(order_no, error = %e, "reconcile query failed");
                Done::QueryFailed
            }
        };
        // Not asked again before another reconcile_after has passed since the answer.
        let next_query_at = self.now() + after;
        release(self, &order_no, &lease, Some(next_query_at)).await?;
        Ok(done)
    }

    /// Asks WeChat about one PAYING order; true when this call applied its payment.
    async fn query_paying(&self, order_no: &str) -> Result<bool, Error> {
        let Some(order) = store::find_order(self.database(), order_no).await? else {
            return Ok(false);
        };
        if order.state() != Some(OrderState::Paying) {
            return Ok(false);
        }
        // A virtual-payment order is no WeChat Pay order: orderquery does not know it; its
        // payment arrives as the xpay_goods_deliver_notify push, query_order is the fallback.
        if order.sign_type == crate::xpay::XPAY_SIGN_TYPE {
            return self.query_xpay_paying(&order).await;
        }
        match self.sync_from_wechat(&order).await {
            Ok(Some(PaidOutcome::Applied(_))) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Releases `lease`; a lease another replica took over after ours ran out is left alone (and
/// counted: it means WeChat was slower than `PAY_RECONCILE_LEASE_SECS`).
async fn release(
    payments: &Payments,
    order_no: &str,
    lease: &store::Lease,
    next_query_at: Option<i64>,
) -> Result<(), Error> {
    if !store::release(payments.database(), order_no, lease, next_query_at).await? {
        metrics::counter!("wxmp_pay_reconcile_lease_lost_total").increment(1);
        tracing::warn!(order_no, "reconcile lease ran out before the work was done");
    }
    Ok(())
}

/// Runs [`Payments::reconcile_once`] every interval until `shutdown`.
pub async fn run(payments: Payments, shutdown: Shutdown) {
    let interval = payments
        .inner
        .settings
        .reconcile_interval
        .max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = ticker.tick() => {}
        }
        // A pass cut short by shutdown leaves nothing half-done: every step is one atomic
        // UPDATE, and an unfinished claim simply expires.
        tokio::select! {
            _ = shutdown.wait() => break,
            result = payments.reconcile_once() => {
                crate::meter::reconcile_pass(&result);
                if let Err(e) = payments.export_xpay_waiting().await {
                    tracing::warn!(error = %e, "counting virtual orders waiting for delivery failed");
                }
                if let Err(e) = result {
                    tracing::warn!(error = %e, "reconcile pass failed");
                }
            }
        }
        // Refunds in flight (refunds/flow.rs): resend PENDING ones, query PROCESSING ones.
        tokio::select! {
            _ = shutdown.wait() => break,
            result = payments.reconcile_refunds_once() => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "refund reconcile pass failed");
                }
            }
        }
    }
    tracing::debug!("reconciler stopped");
}
