//! The bill job: per China-time day and API, download → store the bill → store its lines →
//! match → DONE, each step resumable (see [`super::store`]).
//!
//! * The daily task ([`run`]): every minute, once the China-time hour reaches `PAY_BILLS_HOUR`,
//!   it makes sure yesterday's rows exist and works every day that is not DONE and whose retry
//!   is due. A day is worked under its lease (`bill_days.lease_owner/lease_until`), so one
//!   replica runs it; a replica that dies leaves the lease to lapse and the next run resumes
//!   from the stored state.
//! * A bill that cannot be had is retried after `PAY_BILLS_RETRY_SECS`: not made yet, WeChat
//!   unreachable, a v3 bill whose SHA1 is not `hash_value`, a bill that does not parse. Nothing
//!   of such a bill is kept (never half-applied): the whole bill is checked and parsed in
//!   memory before the day moves to LOADING.
//! * "No bill" for a day on which wxmp has no payment or refund is an empty day (DONE at once);
//!   on a day with some it is retried `PAY_BILLS_MAX_ATTEMPTS` times, then the day is
//!   reconciled against an empty bill (each payment then reported missing).

use std::time::Duration;

use chrono::NaiveDate;
use service_kit::Shutdown;
use wechat::pay::bills::{BillError, BillType, DownloadedBill, TradeBill};

use crate::{
    bills::{
        meter,
        rules::{self, Line, MismatchKind},
        store::{self, Day},
    },
    error::Error,
    payments::Payments,
};

/// The bill job's settings, from `PAY_BILLS_*`.
#[derive(Clone, Debug)]
pub struct BillsSettings {
    pub enabled: bool,
    pub hour: u32,
    /// The APIs whose bills are downloaded (`v2`, `v3`).
    pub apis: Vec<&'static str>,
    pub appid: String,
    pub retry_secs: i64,
    pub max_attempts: i32,
    pub lease_secs: i64,
    /// Lines stored per transaction.
    pub batch: usize,
    /// Test hook: fail the run after storing this many lines (a crash mid-run).
    #[doc(hidden)]
    pub fail_after_lines: Option<i64>,
}

impl Default for BillsSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            hour: crate::config::bills::DEFAULT_BILLS_HOUR,
            apis: vec!["v2"],
            appid: String::new(),
            retry_secs: 1800,
            max_attempts: 12,
            lease_secs: 600,
            batch: 200,
            fail_after_lines: None,
        }
    }
}

/// What one run of a day did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// Matched: the mismatches this run recorded that were not there before.
    Done { new_mismatches: usize },
    /// Already DONE, or another replica holds it, or its retry is not due.
    Skipped,
    /// The bill could not be had or read; retried at `at`.
    RetryAt { at: i64, error: String },
}

/// A day's state and differences, for operators and the back office.
#[derive(Clone, Debug, Default)]
pub struct BillReport {
    pub bill_date: String,
    pub days: Vec<Day>,
    pub mismatches: Vec<store::MismatchRow>,
}

impl BillReport {
    pub fn to_proto(&self) -> wxmp_proto::pay::v1::BillReport {
        use wxmp_proto::pay::v1 as pb;
        pb::BillReport {
            bill_date: self.bill_date.clone(),
            days: self
                .days
                .iter()
                .map(|d| {
                    let totals = rules::Totals {
                        wechat_paid_fen: d.wechat_paid_fen,
                        wechat_refunded_fen: d.wechat_refunded_fen,
                        wechat_fee_millifen: d.wechat_fee_millifen,
                        ..rules::Totals::default()
                    };
                    pb::BillDay {
                        api: d.api.clone(),
                        state: d.state.clone(),
                        attempts: d.attempts,
                        next_attempt_at: d.next_attempt_at,
                        last_error: d.last_error.clone(),
                        no_bill: d.no_bill,
                        lines: d.lines_total,
                        sha1: d.raw_sha1.clone(),
                        wechat_paid_fen: d.wechat_paid_fen,
                        wechat_refunded_fen: d.wechat_refunded_fen,
                        wechat_fee_millifen: d.wechat_fee_millifen,
                        wechat_net_millifen: totals.wechat_net_millifen(),
                        ledger_paid_fen: d.ledger_paid_fen,
                        ledger_refunded_fen: d.ledger_refunded_fen,
                        matched: d.matched,
                        completed_at: d.completed_at.unwrap_or(0),
                    }
                })
                .collect(),
            mismatches: self
                .mismatches
                .iter()
                .map(store::MismatchRow::to_proto)
                .collect(),
        }
    }
}

impl store::MismatchRow {
    pub fn to_proto(&self) -> wxmp_proto::pay::v1::BillMismatch {
        wxmp_proto::pay::v1::BillMismatch {
            bill_date: self.bill_date.clone(),
            api: self.api.clone(),
            kind: self.kind.clone(),
            key: self.key.clone(),
            order_no: self.order_no.clone(),
            out_refund_no: self.out_refund_no.clone(),
            wechat_fen: self.wechat_fen,
            ledger_fen: self.ledger_fen,
            detail: self.detail.clone(),
            created_at: self.created_at,
            resolved_at: self.resolved_at.unwrap_or(0),
            resolution: self.resolution.clone(),
        }
    }
}

/// The longest note a mismatch is resolved with.
const MAX_RESOLUTION_CHARS: usize = 500;

/// Parses `yyyy-MM-dd` (or `yyyyMMdd`).
pub fn parse_date(s: &str) -> Result<NaiveDate, Error> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s.trim(), "%Y%m%d"))
        .map_err(|_| Error::InvalidArgument("bill_date must be yyyy-MM-dd".into()))
}

impl Payments {
    fn bills(&self) -> &BillsSettings {
        &self.inner.settings.bills
    }

    /// Downloads and reconciles `date` now on every configured API (`wxmp bills`,
    /// `ReconcileBills`): ignores the hour and a pending retry's time, not the lease.
    pub async fn reconcile_bills(&self, date: NaiveDate) -> Result<BillReport, Error> {
        if self.bills().apis.is_empty() {
            return Err(Error::InvalidArgument(
                "no WeChat Pay API is configured for bills (PAY_BILLS_APIS)".into(),
            ));
        }
        let owner = crate::orders::rules::new_lease_owner();
        for api in self.bills().apis.clone() {
            self.run_day(date, api, &owner, true).await?;
        }
        self.bill_report(date).await
    }

    /// The stored state and differences of `date`.
    pub async fn bill_report(&self, date: NaiveDate) -> Result<BillReport, Error> {
        let bill_date = date.format("%Y-%m-%d").to_string();
        let (days, mismatches) = store::report(&self.inner.db, &bill_date).await?;
        Ok(BillReport {
            bill_date,
            days,
            mismatches,
        })
    }

    /// Marks the mismatch `(date, kind, key)` of a report resolved with `note`, once.
    pub async fn resolve_bill_mismatch(
        &self,
        date: NaiveDate,
        kind: &str,
        key: &str,
        note: &str,
    ) -> Result<store::MismatchRow, Error> {
        let note = note.trim();
        if note.is_empty() || note.chars().count() > MAX_RESOLUTION_CHARS {
            return Err(Error::InvalidArgument(format!(
                "note must be 1 to {MAX_RESOLUTION_CHARS} characters"
            )));
        }
        if rules::MismatchKind::parse(kind).is_none() {
            let kinds: Vec<&str> = rules::MismatchKind::ALL
                .map(rules::MismatchKind::as_str)
                .into();
            return Err(Error::InvalidArgument(format!(
                "kind must be one of {}",
                kinds.join(", ")
            )));
        }
        let bill_date = date.format("%Y-%m-%d").to_string();
        let now = self.now();
        let row = store::resolve_mismatch(&self.inner.db, &bill_date, kind, key, note, now)
            .await?
            .ok_or(Error::NotFound("bill mismatch"))?;
        if row.resolved_at == Some(now) {
            tracing::info!(bill_date, kind, key, "bill mismatch resolved");
        }
        Ok(row)
    }

    /// One run of one day on one API as `owner`.
    pub async fn run_day(
        &self,
        date: NaiveDate,
        api: &'static str,
        owner: &str,
        force: bool,
    ) -> Result<RunOutcome, Error> {
        let db = &self.inner.db;
        let bill_date = date.format("%Y-%m-%d").to_string();
        let now = self.now();
        store::ensure_day(db, &bill_date, api, now).await?;
        let lease = self.bills().lease_secs;
        let Some(day) = store::claim(db, &bill_date, api, owner, now, lease, force).await? else {
            return Ok(RunOutcome::Skipped);
        };
        let result = self.work(date, &day, owner).await;
        meter::run(api, &result);
        result
    }

    async fn work(&self, date: NaiveDate, day: &Day, owner: &str) -> Result<RunOutcome, Error> {
        let db = &self.inner.db;
        let (bill_date, api) = (day.bill_date.as_str(), day.api.as_str());
        if day.state == "WAITING" {
            match self.download(date, api).await {
                Ok(fetched) => {
                    let now = self.now();
                    if !store::store_bill(
                        db,
                        bill_date,
                        api,
                        owner,
                        &fetched.text,
                        &fetched.sha1,
                        fetched.gzip,
                        fetched.no_bill,
                        fetched.lines,
                        &fetched.summary_json,
                        now,
                    )
                    .await?
                    {
                        return Ok(RunOutcome::Skipped);
                    }
                }
                Err(e) => {
                    let bounds = rules::day_bounds(date);
                    let quiet_day = matches!(e, BillError::NoBill)
                        && store::ledger(db, bill_date, api, bounds, &[])
                            .await
                            .map(|l| l.day_orders.is_empty() && l.day_refunds.is_empty())?;
                    let give_up = matches!(e, BillError::NoBill)
                        && day.attempts + 1 >= self.bills().max_attempts;
                    if quiet_day || give_up {
                        // An empty day (or one WeChat keeps saying it has no bill for).
                        let now = self.now();
                        if !store::store_bill(
                            db, bill_date, api, owner, "", "", false, true, 0, "", now,
                        )
                        .await?
                        {
                            return Ok(RunOutcome::Skipped);
                        }
                    } else {
                        let now = self.now();
                        let at = now.saturating_add(self.bills().retry_secs);
                        let error = e.to_string();
                        tracing::warn!(bill_date, api, %error, retry_at = at, "bill not had; retrying later");
                        store::retry_later(db, bill_date, api, owner, now, at, &error).await?;
                        return Ok(RunOutcome::RetryAt { at, error });
                    }
                }
            }
        }
        let day = store::find_day(db, bill_date, api)
            .await?
            .ok_or_else(|| Error::Internal("bill day vanished".into()))?;
        if day.state == "LOADING" {
            self.load_lines(&day, owner).await?;
            if !store::start_matching(db, bill_date, api, owner, self.now()).await? {
                return Ok(RunOutcome::Skipped);
            }
        }
        self.match_day(date, &day, owner).await
    }

    /// Stores the day's lines from where the last run stopped.
    async fn load_lines(&self, day: &Day, owner: &str) -> Result<(), Error> {
        let db = &self.inner.db;
        let bill = TradeBill::parse(day.raw.as_bytes())
            .map_err(|e| Error::Internal(format!("stored bill does not parse: {e}")))?;
        let lines: Vec<Line> = bill
            .rows
            .iter()
            .enumerate()
            .map(|(i, row)| Line::of_row(i64::try_from(i).unwrap_or(i64::MAX) + 1, row))
            .collect();
        let mut done = day.lines_done;
        let batch = self.bills().batch.max(1);
        let start = usize::try_from(done).unwrap_or(usize::MAX);
        for chunk in lines.get(start..).unwrap_or_default().chunks(batch) {
            if let Some(limit) = self.bills().fail_after_lines
                && done >= limit
            {
                return Err(Error::Internal(format!(
                    "test hook: the run stops after {done} lines"
                )));
            }
            if !store::store_lines(db, &day.bill_date, &day.api, owner, done, chunk, self.now())
                .await?
            {
                return Err(Error::Internal("lost the bill day's lease".into()));
            }
            done += i64::try_from(chunk.len()).unwrap_or(i64::MAX);
        }
        Ok(())
    }

    async fn match_day(
        &self,
        date: NaiveDate,
        day: &Day,
        owner: &str,
    ) -> Result<RunOutcome, Error> {
        let db = &self.inner.db;
        let (bill_date, api) = (day.bill_date.as_str(), day.api.as_str());
        let lines = store::lines(db, bill_date, api).await?;
        let ledger = store::ledger(db, bill_date, api, rules::day_bounds(date), &lines).await?;
        let outcome = rules::reconcile(&lines, &ledger);
        let now = self.now();
        let new = store::record_mismatches(db, bill_date, api, &outcome.mismatches, now).await?;
        meter::mismatches(&new);
        for m in &outcome.mismatches {
            if m.kind != MismatchKind::RefundOutside {
                continue;
            }
            let source = format!("WeChat bill {bill_date} ({api}), refund {}", m.refund_id);
            let recorded = store::record_outside_refund(
                db,
                &m.order_no,
                &m.out_refund_no,
                &m.refund_id,
                m.wechat_fen.unwrap_or(0),
                api,
                &source,
                now,
            )
            .await?;
            if !recorded {
                tracing::warn!(order_no = %m.order_no, out_refund_no = %m.out_refund_no,
                    "an outside refund does not fit its order; kept as a mismatch only");
            }
        }
        let total = store::count_mismatches(db, bill_date).await?;
        if !store::finish(db, bill_date, api, owner, &outcome.totals, total, now).await? {
            return Ok(RunOutcome::Skipped);
        }
        tracing::info!(
            bill_date,
            api,
            matched = outcome.totals.matched,
            mismatches = outcome.mismatches.len(),
            new = new.len(),
            "bill reconciled"
        );
        Ok(RunOutcome::Done {
            new_mismatches: new.len(),
        })
    }

    /// Downloads, checks and parses the day's trade bill (ALL, gzip).
    async fn download(&self, date: NaiveDate, api: &str) -> Result<Fetched, BillError> {
        let wechat = &self.inner.wechat;
        let bill: DownloadedBill = match api {
            "v3" => {
                let v3 = wechat
                    .v3()
                    .ok_or_else(|| BillError::BadResponse("Pay v3 is not configured".into()))?;
                let link = v3.trade_bill(date, BillType::All, true).await?;
                v3.download(&link).await?
            }
            _ => {
                let pay = wechat.config_for(&self.bills().appid);
                wechat
                    .client()
                    .download_bill(&pay, date, BillType::All, true)
                    .await?
            }
        };
        let parsed = bill.trade_bill()?;
        parsed.check_summary()?;
        let text = String::from_utf8(bill.text.clone())
            .map_err(|_| BillError::BadResponse("bill is not UTF-8".into()))?;
        let summary_json = parsed.summary.as_ref().map_or_else(String::new, |s| {
            serde_json::json!({
                "count": s.count,
                "settlement_total_fen": s.settlement_total_fen,
                "refund_total_fen": s.refund_total_fen,
                "fee_total_millifen": s.fee_total_millifen,
                "order_total_fen": s.order_total_fen,
                "refund_request_total_fen": s.refund_request_total_fen,
            })
            .to_string()
        });
        Ok(Fetched {
            sha1: bill.sha1_hex(),
            gzip: bill.gzip,
            no_bill: false,
            lines: i64::try_from(parsed.rows.len()).unwrap_or(i64::MAX),
            summary_json,
            text,
        })
    }
}

struct Fetched {
    text: String,
    sha1: String,
    gzip: bool,
    no_bill: bool,
    lines: i64,
    summary_json: String,
}

/// The daily task: works due days until `stop`.
pub async fn run(payments: Payments, stop: Shutdown) {
    let settings = payments.bills().clone();
    meter::init(&settings.apis);
    if !settings.enabled || settings.apis.is_empty() {
        return;
    }
    let owner = crate::orders::rules::new_lease_owner();
    loop {
        if let Err(e) = pass(&payments, &owner).await {
            tracing::warn!(error = %e, "bill job pass failed");
        }
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// One pass of the daily task: yesterday's rows once due, then every due day.
pub async fn pass(payments: &Payments, owner: &str) -> Result<(), Error> {
    let settings = payments.bills();
    let now = payments.now();
    let Some(day) = rules::due_day(now, settings.hour) else {
        return Ok(());
    };
    for api in settings.apis.clone() {
        if let Err(e) = payments.run_day(day, api, owner, false).await {
            tracing::warn!(error = %e, api, %day, "bill day failed; it resumes next pass");
        }
    }
    // Earlier days still waiting (a retry, a run that died).
    for earlier in 1..=7 {
        let Some(d) = day.checked_sub_days(chrono::Days::new(earlier)) else {
            break;
        };
        for api in settings.apis.clone() {
            let bill_date = d.format("%Y-%m-%d").to_string();
            let pending = store::find_day(&payments.inner.db, &bill_date, api)
                .await?
                .is_some_and(|row| row.state != "DONE");
            if pending && let Err(e) = payments.run_day(d, api, owner, false).await {
                tracing::warn!(error = %e, api, %d, "bill day failed; it resumes next pass");
            }
        }
    }
    Ok(())
}
