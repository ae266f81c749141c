//! The refund flow: Refund / GetRefund / ListRefunds, sending refunds to WeChat, the
//! reconciler's pass over refunds in flight, and recording refunds an `orderquery` REFUND
//! reveals. What a refund *means* is in [`crate::refunds`]; the SQL in [`super::store`].
//!
//! Every call about a refund goes through [`crate::wechat_pay::WechatPay`] with the API of its
//! order (`refunds.api` = `orders.api`): an order placed on v2 refunds on v2 after a switch
//! of `WXMP_PAY_API` to v3, and the other way round.
//!
//! A virtual order (`sign_type = XPAY`) is no WeChat Pay order: its refunds go through xpay's
//! `refund_order` and `query_order` ([`crate::xpay::refund`]), never WeChat Pay's refund or
//! refundquery, under the same rows, states, events and reconciler.
//!
//! Exactly once: the PENDING row (with the reserved amount) is committed before WeChat is
//! called. If the answer is lost (a crash, a timeout, SYSTEMERROR), the refund stays PENDING
//! and is sent again with the same out_refund_no (by a retried call or by the reconciler after
//! `PAY_RECONCILE_AFTER_SECS`); WeChat dedupes on it, so the payer is refunded once.

use wechat::pay::RefundQueryBy;

/// Why ApplyAbnormalRefund refuses a v2 refund: v2 has no 发起异常退款.
pub const V2_ABNORMAL_HINT: &str = "v2 has no API to re-route an abnormal refund: act in the merchant platform (pay.weixin.qq.com, 交易中心 → 退款管理 → 退款异常); the reconciler then sees its new status";

/// `reason` of a refund made outside wxmp and recorded from WeChat's refundquery.
pub const OUTSIDE_REASON: &str = "made outside wxmp; recorded from WeChat's refundquery";

use super::store::{self as refund_store, Change, Created, NewRefund, Transition};
use crate::{
    error::Error,
    orders::store,
    orders::{MAX_AMOUNT_FEN, Order},
    payments::Payments,
    refunds::{
        self, ABNORMAL_RECHECK_SECS, API_V2, AbnormalTarget, MAX_REASON_BYTES, ORIGIN_WXMP, Refund,
        RefundState, Refusal, WxRefundStatus, check_refund, new_out_refund_no, valid_out_refund_no,
    },
    wechat_pay::{
        RefundCallError, RefundSeen, SendRefund, is_err_code, map_error, map_refund_error,
    },
    xpay::refund::{API_XPAY, is_xpay_order},
};

/// Refunds looked at per reconcile pass.
const BATCH: i64 = 100;

/// What `Refund` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefundOrder {
    pub order_no: String,
    pub refund_fen: i64,
    pub reason: String,
    /// Empty: generated.
    pub out_refund_no: String,
}

/// What one reconcile pass over refunds did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefundReconcileReport {
    /// PENDING refunds sent (again) to WeChat.
    pub resent: usize,
    /// PROCESSING refunds asked about (refundquery).
    pub queried: usize,
    /// Refunds this pass moved to a final state.
    pub settled: usize,
    /// Refunds that failed (WeChat or database errors); retried on a later pass.
    pub errors: usize,
    /// Refund notifies older than the notify retention, deleted.
    pub pruned_notifies: usize,
}

/// Whether a send of a PENDING refund is its first (a refusal is final) or a repeat after an
/// unknown outcome (a refusal is checked with WeChat first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Send {
    First,
    Again,
}

fn refusal_error(refusal: Refusal) -> Error {
    match refusal {
        Refusal::NotPaid => Error::OrderState("order is not paid".into()),
        Refusal::ExceedsPaid { left_fen } => Error::RefundExceedsPaid { left_fen },
    }
}

impl Payments {
    /// Refunds (part of) a paid order; see `Refund` in pay.proto. Answers the refund and the
    /// order as they are after this call.
    #[tracing::instrument(skip_all, fields(order_no = %req.order_no, refund_fen = req.refund_fen))]
    pub async fn refund(&self, req: RefundOrder) -> Result<(Refund, Order), Error> {
        if req.order_no.is_empty() {
            return Err(Error::MissingParameter("order_no"));
        }
        if !crate::orders::valid_order_no(&req.order_no) {
            return Err(Error::InvalidArgument("order_no is malformed".into()));
        }
        if !(1..=MAX_AMOUNT_FEN).contains(&req.refund_fen) {
            return Err(Error::InvalidArgument(format!(
                "refund_fen must be in 1..={MAX_AMOUNT_FEN}"
            )));
        }
        if req.reason.len() > MAX_REASON_BYTES || req.reason.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "reason must be at most {MAX_REASON_BYTES} bytes without control characters"
            )));
        }
        if !req.out_refund_no.is_empty() && !valid_out_refund_no(&req.out_refund_no) {
            return Err(Error::InvalidArgument(
                "out_refund_no must be 1..=64 characters of [0-9A-Za-z_-|*@]".into(),
            ));
        }
        let now = self.now();
        let generated = req.out_refund_no.is_empty();
        let out_refund_no = if generated {
            new_out_refund_no(now)
        } else {
            req.out_refund_no.clone()
        };
        if let Some(existing) = refund_store::find(self.database(), &out_refund_no).await? {
            return self.repeat(existing, &req).await;
        }
        let order = store::find_order(self.database(), &req.order_no)
            .await?
            .ok_or(Error::NotFound("order"))?;
        // The order's API carries its refunds, whatever WXMP_PAY_API says now.
        if !self.can_refund(&order) {
            return Err(Error::RefundsDisabled);
        }
        if is_xpay_order(&order) && !wechat::xpay::valid_refund_order_id(&out_refund_no) {
            return Err(Error::InvalidArgument(
                "out_refund_no of a virtual order's refund must be 8..=32 characters of [0-9A-Za-z_-] (refund_order's refund_order_id)".into(),
            ));
        }
        if let Err(refusal) = check_refund(&order, req.refund_fen) {
            // A concurrent call with this key may have reserved the amount since we looked:
            // a retry is answered its refund, not refused.
            if let Some(existing) = refund_store::find(self.database(), &out_refund_no).await? {
                return self.repeat(existing, &req).await;
            }
            return Err(refusal_error(refusal));
        }
        let new = NewRefund {
            out_refund_no,
            order_no: order.order_no.clone(),
            amount_fen: req.refund_fen,
            reason: req.reason.clone(),
            state: RefundState::Pending.as_str().into(),
            api: if is_xpay_order(&order) {
                API_XPAY.into()
            } else {
                order.pay_api().as_str().into()
            },
            created_at: now,
            updated_at: now,
            // The first send is this call's; the reconciler waits before sending again.
            next_check_at: now + self.inner.settings.reconcile_after_secs,
            // Bound now, like an order's: every resend is the same request.
            notify_url: self
                .inner
                .settings
                .refund_notify_url
                .clone()
                .unwrap_or_default(),
            origin: ORIGIN_WXMP.into(),
        };
        match refund_store::create(self.database(), &new).await? {
            Created::New(refund, order) => {
                refunds::count("requested");
                tracing::info!(out_refund_no = %refund.out_refund_no, "refund recorded");
                match self.send_refund(refund.clone(), &order, Send::First).await {
                    Ok(refund) => Ok((refund, self.reload_order(&order.order_no).await?)),
                    // The key is ours, not the caller's: an error would lose it, and the
                    // caller's natural retry would make a second refund. Answer the refund as
                    // it stands (PENDING: the reconciler sends it again) with its key.
                    Err(e) if generated => {
                        tracing::warn!(out_refund_no = %refund.out_refund_no, error = %e, "refund with a generated key not confirmed; answered PENDING with its key");
                        self.as_it_stands(refund, order).await
                    }
                    Err(e) => Err(e),
                }
            }
            Created::Existing(existing) => self.repeat(existing, &req).await,
            // Lost a race for the amount (or the order changed): say why as of now.
            Created::Refused(order) => Err(refusal_error(
                check_refund(&order, req.refund_fen)
                    .err()
                    .unwrap_or(Refusal::ExceedsPaid {
                        left_fen: refunds::refundable_fen(&order),
                    }),
            )),
            Created::NoOrder => Err(Error::NotFound("order")),
        }
    }

    /// A repeated out_refund_no: the same request answers the first one's refund (sent again
    /// while PENDING); other parameters are a conflict.
    async fn repeat(&self, existing: Refund, req: &RefundOrder) -> Result<(Refund, Order), Error> {
        if !existing.is_same_request(&req.order_no, req.refund_fen, &req.reason) {
            return Err(Error::RefundConflict);
        }
        let order = self.reload_order(&existing.order_no).await?;
        let pending = existing.state() == Some(RefundState::Pending);
        if pending && !self.can_refund(&order) {
            return Err(Error::RefundsDisabled);
        }
        let refund = if pending {
            self.send_refund(existing, &order, Send::Again).await?
        } else {
            existing
        };
        Ok((refund, self.reload_order(&order.order_no).await?))
    }

    /// `refund` and `order` as the database has them now, or as given when it cannot say
    /// (never an error: the answer must carry the refund's key).
    async fn as_it_stands(&self, refund: Refund, order: Order) -> Result<(Refund, Order), Error> {
        let refund = match refund_store::find(self.database(), &refund.out_refund_no).await {
            Ok(Some(current)) => current,
            _ => refund,
        };
        let order = match store::find_order(self.database(), &order.order_no).await {
            Ok(Some(current)) => current,
            _ => order,
        };
        Ok((refund, order))
    }

    /// Whether refunds of `order` can be sent: its WeChat Pay API's settings, or virtual
    /// payment's for a virtual order.
    fn can_refund(&self, order: &Order) -> bool {
        if is_xpay_order(order) {
            self.xpay().is_some()
        } else {
            self.inner.wechat.can_refund(order.pay_api())
        }
    }

    async fn reload_order(&self, order_no: &str) -> Result<Order, Error> {
        store::find_order(self.database(), order_no)
            .await?
            .ok_or_else(|| Error::Internal(format!("order {order_no} vanished")))
    }

    /// Sends a PENDING refund to WeChat (with its order's API) and records the answer:
    /// accepted → PROCESSING (or the final state v3 may answer at once), refused for good →
    /// FAILED with WeChat's code (the amount is released). No answer (SYSTEMERROR /
    /// SYSTEM_ERROR, FREQUENCY_LIMITED, 5xx, an unauthenticated v3 answer) leaves it PENDING and
    /// is WECHAT_UNAVAILABLE: the same request is sent again later.
    ///
    /// A refusal of a send [`Send::Again`] is not proof: an earlier send may have been accepted
    /// with its answer lost, and WeChat refuses a resend for reasons of the request (a rotated
    /// key, v2 `return_code=FAIL`, any v3 4xx) without a word on the refund. WeChat is asked
    /// first ([`Self::after_refused_resend`]).
    async fn send_refund(
        &self,
        refund: Refund,
        order: &Order,
        send: Send,
    ) -> Result<Refund, Error> {
        let xpay = is_xpay_order(order);
        let answer = if xpay {
            self.xpay_send_refund(&refund, order, send == Send::Again)
                .await
        } else {
            self.inner
                .wechat
                .send_refund(
                    order.pay_api(),
                    &SendRefund {
                        appid: &order.app_id,
                        out_trade_no: &order.order_no,
                        out_refund_no: &refund.out_refund_no,
                        total_fen: order.amount_fen,
                        refund_fen: refund.amount_fen,
                        reason: (!refund.reason.is_empty()).then_some(refund.reason.as_str()),
                        notify_url: self.bound_notify_url(&refund),
                    },
                )
                .await
        };
        // A virtual order's resend asked query_order first: its refusal is of a refund WeChat
        // does not hold, final as a first send's.
        let send = if xpay { Send::First } else { send };
        let now = self.now();
        let change = match answer {
            Ok(seen)
                if seen.out_trade_no != order.order_no || seen.refund_fen != refund.amount_fen =>
            {
                tracing::error!(out_refund_no = %refund.out_refund_no, "WeChat's refund answer does not match ours; stays PENDING");
                return Err(Error::WechatUnavailable(
                    "WeChat's refund answer does not match the refund".into(),
                ));
            }
            Ok(seen) => {
                let (to, failure) = seen
                    .status
                    .settlement()
                    .unwrap_or((RefundState::Processing, ""));
                Change {
                    to,
                    refund_id: seen.refund_id,
                    failure: failure.to_owned(),
                    now,
                    next_check_at: self.next_check(to, now),
                    received_account: seen.received_account,
                }
            }
            Err(e @ RefundCallError::Unknown(_)) => {
                // Unanswered or unverifiable: WeChat may have it. Same request again later.
                tracing::warn!(out_refund_no = %refund.out_refund_no, error = %e, "refund not confirmed; stays PENDING");
                return Err(map_refund_error(e));
            }
            Err(e) if send == Send::Again => {
                tracing::warn!(out_refund_no = %refund.out_refund_no, error = %e, "refund resend refused; asking WeChat whether it holds the refund");
                return self.after_refused_resend(&refund, order, &e).await;
            }
            Err(e) => {
                tracing::warn!(out_refund_no = %refund.out_refund_no, error = %e, "refund refused by WeChat");
                if e.is_not_enough() {
                    tracing::error!(out_refund_no = %refund.out_refund_no, "merchant balance too low for a refund: top it up, then refund again");
                }
                let change = Change {
                    to: RefundState::Failed,
                    refund_id: String::new(),
                    failure: e.code().unwrap_or("REFUSED").to_owned(),
                    now,
                    next_check_at: now,
                    received_account: String::new(),
                };
                let failed = self
                    .apply(&refund.out_refund_no, &[RefundState::Pending], &change)
                    .await?;
                // WeChat may refuse because the order was refunded outside wxmp (the merchant
                // platform): on v2 its refunds are listed and recorded, so the ledger counts
                // them and the next over-refund is refused here, nothing sent.
                if !xpay
                    && order.pay_api() == crate::config::PayApi::V2
                    && let Err(e) = self.sync_refunds_from_wechat(order).await
                {
                    tracing::warn!(order_no = %order.order_no, error = %e, "refundquery of the order after a refusal failed");
                }
                return Ok(failed);
            }
        };
        self.apply(&refund.out_refund_no, &[RefundState::Pending], &change)
            .await
    }

    /// The notify URL a refund is sent with: the one bound at its creation (rows older than
    /// the binding, `''`: the configured one, as they were sent before).
    fn bound_notify_url<'a>(&'a self, refund: &'a Refund) -> Option<&'a str> {
        if refund.notify_url.is_empty() {
            self.inner.settings.refund_notify_url.as_deref()
        } else {
            Some(refund.notify_url.as_str())
        }
    }

    /// A resend of a PENDING refund was refused (`refusal`): WeChat decides. It holds the refund
    /// → settled from its status (PROCESSING when still processing); it holds no such refund →
    /// FAILED with the refusal's code (the amount is released); no answer → stays PENDING,
    /// WECHAT_UNAVAILABLE (asked again on a later pass).
    async fn after_refused_resend(
        &self,
        refund: &Refund,
        order: &Order,
        refusal: &RefundCallError,
    ) -> Result<Refund, Error> {
        let now = self.now();
        match self
            .inner
            .wechat
            .query_refund(order.pay_api(), &order.app_id, &refund.out_refund_no)
            .await
        {
            Ok(seen)
                if seen.out_trade_no != order.order_no || seen.refund_fen != refund.amount_fen =>
            {
                tracing::error!(out_refund_no = %refund.out_refund_no, "WeChat holds a refund of this key that does not match ours; stays PENDING");
                Err(Error::WechatUnavailable(
                    "WeChat's refund does not match the refund".into(),
                ))
            }
            Ok(seen) => self.settle_from(refund, &seen).await,
            Err(q) if q.is_not_found() => {
                tracing::warn!(out_refund_no = %refund.out_refund_no, error = %refusal, "WeChat holds no such refund: the refusal stands");
                let change = Change {
                    to: RefundState::Failed,
                    refund_id: String::new(),
                    failure: refusal.code().unwrap_or("REFUSED").to_owned(),
                    now,
                    next_check_at: now,
                    received_account: String::new(),
                };
                self.apply(&refund.out_refund_no, &[RefundState::Pending], &change)
                    .await
            }
            Err(q) => {
                tracing::warn!(out_refund_no = %refund.out_refund_no, error = %q, "refund query after a refused resend failed; stays PENDING");
                Err(map_refund_error(q))
            }
        }
    }

    /// When the reconciler looks at a refund in state `state` next: ABNORMAL ones wait on a
    /// person, so hourly; others after `PAY_RECONCILE_AFTER_SECS`.
    fn next_check(&self, state: RefundState, now: i64) -> i64 {
        if state == RefundState::Abnormal {
            now + ABNORMAL_RECHECK_SECS
        } else {
            now + self.inner.settings.reconcile_after_secs
        }
    }

    /// [`refund_store::transition`] with logging and metrics; answers the refund as it is.
    async fn apply(
        &self,
        out_refund_no: &str,
        from: &[RefundState],
        change: &Change,
    ) -> Result<Refund, Error> {
        match refund_store::transition(self.database(), out_refund_no, from, change).await? {
            Transition::Applied(refund, order) => {
                refunds::count_settled(change.to);
                tracing::info!(
                    out_refund_no, state = change.to.as_str(), failure = %change.failure,
                    order_state = %order.state, refunded_fen = order.refunded_fen,
                    "refund changed"
                );
                Ok(refund)
            }
            // Settled meanwhile (a notify or a query overtook this answer).
            Transition::Unchanged(refund) => Ok(refund),
            Transition::Unknown => Err(Error::Internal(format!("refund {out_refund_no} vanished"))),
        }
    }

    /// Re-routes the money of an ABNORMAL refund (see `ApplyAbnormalRefund` in pay.proto):
    /// v3 发起异常退款; WeChat answers the refund, processed anew (ABNORMAL → PROCESSING here),
    /// and it settles by notify or query. A v2 refund: FAILED_PRECONDITION naming the merchant
    /// platform, v2 has no such API. WeChat's refusal or silence changes nothing here.
    #[tracing::instrument(skip_all, fields(out_refund_no = %out_refund_no, target = target.kind()))]
    pub async fn apply_abnormal_refund(
        &self,
        out_refund_no: &str,
        target: AbnormalTarget,
    ) -> Result<Refund, Error> {
        target.check().map_err(Error::InvalidArgument)?;
        let refund = self.get_refund(out_refund_no).await?;
        if refund.state() != Some(RefundState::Abnormal) {
            return Err(Error::OrderState(format!(
                "refund is {}, not ABNORMAL: only an abnormal refund is re-routed",
                refund.state
            )));
        }
        if refund.api == API_V2 {
            return Err(Error::OrderState(V2_ABNORMAL_HINT.into()));
        }
        if !self.inner.wechat.can_refund(crate::config::PayApi::V3) {
            return Err(Error::RefundsDisabled);
        }
        if refund.refund_id.is_empty() {
            return Err(Error::Internal(
                "abnormal refund without WeChat's refund_id".into(),
            ));
        }
        let (bank_type, bank_account, real_name) = match &target {
            AbnormalTarget::UserBankCard {
                bank_type,
                bank_account,
                real_name,
            } => (
                Some(bank_type.clone()),
                Some(bank_account.clone()),
                Some(real_name.clone()),
            ),
            AbnormalTarget::MerchantBankCard => (None, None, None),
        };
        let request = wechat::pay::v3::AbnormalRefundRequest {
            out_refund_no: refund.out_refund_no.clone(),
            kind: target.kind().to_owned(),
            bank_type,
            bank_account,
            real_name,
        };
        let seen = match self
            .inner
            .wechat
            .apply_abnormal_refund(&refund.refund_id, request)
            .await
        {
            Ok(seen) => seen,
            Err(e) => {
                // Unknown (the answer lost: WeChat may have taken it) or refused (WeChat may
                // have re-routed it already, e.g. in the merchant platform): either way WeChat
                // is asked soon, not at the hourly cadence of abnormal refunds.
                tracing::warn!(error = %e, "apply-abnormal-refund not confirmed; the reconciler asks WeChat soon");
                let soon = self.now() + self.inner.settings.reconcile_after_secs;
                refund_store::check_again_at(self.database(), &refund.out_refund_no, soon).await?;
                return Err(map_refund_error(e));
            }
        };
        if seen.out_trade_no != refund.order_no || seen.refund_fen != refund.amount_fen {
            return Err(Error::Internal(
                "WeChat's answer names another refund; not applied".into(),
            ));
        }
        tracing::info!(status = ?seen.status, "abnormal refund re-routed at WeChat");
        refunds::count("rerouted");
        self.settle_from(&refund, &seen).await
    }

    /// A refund by its out_refund_no.
    pub async fn get_refund(&self, out_refund_no: &str) -> Result<Refund, Error> {
        if out_refund_no.is_empty() {
            return Err(Error::MissingParameter("out_refund_no"));
        }
        if !valid_out_refund_no(out_refund_no) {
            return Err(Error::InvalidArgument("out_refund_no is malformed".into()));
        }
        refund_store::find(self.database(), out_refund_no)
            .await?
            .ok_or(Error::NotFound("refund"))
    }

    /// The refunds of an existing order, oldest first.
    pub async fn list_refunds(&self, order_no: &str) -> Result<Vec<Refund>, Error> {
        let order = self.get_order_as_admin(order_no).await?;
        refund_store::list_for_order(self.database(), &order.order_no).await
    }

    /// One pass over refunds in flight whose check is due: PENDING ones are sent again (same
    /// out_refund_no), PROCESSING and ABNORMAL ones are asked about (refundquery) and settled
    /// (ABNORMAL ones every [`ABNORMAL_RECHECK_SECS`]).
    ///
    /// Each refund is claimed for `PAY_RECONCILE_LEASE_SECS` (as orders are), so a refund
    /// claimed by a replica that dies mid-call is taken up by another one after that lease,
    /// not held for longer. The clock is read again for every refund, as the order
    /// reconciler does: a claim made late in a long pass (slow WeChat calls) runs its lease
    /// from when it is made, and its next check counts from its own answer, not from the
    /// start of the pass.
    pub async fn reconcile_refunds_once(&self) -> Result<RefundReconcileReport, Error> {
        let mut report = RefundReconcileReport::default();
        let lease_secs = self.inner.settings.reconcile_lease_secs.max(1);
        let db = self.database();
        for refund in refund_store::due(db, self.now(), BATCH).await? {
            let now = self.now();
            if !refund_store::claim(db, &refund.out_refund_no, now, now + lease_secs).await? {
                continue; // another replica has it, or it settled
            }
            let result = match refund.state() {
                Some(RefundState::Pending) => {
                    report.resent += 1;
                    match self.reload_order(&refund.order_no).await {
                        Ok(order) => self.send_refund(refund.clone(), &order, Send::Again).await,
                        Err(e) => Err(e),
                    }
                }
                _ => {
                    report.queried += 1;
                    self.query_refund(&refund).await
                }
            };
            let state = match &result {
                Ok(r) => r.state(),
                Err(_) => refund.state(),
            };
            match result {
                Ok(r) if r.state().is_some_and(RefundState::is_final) => report.settled += 1,
                Ok(_) => {}
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(out_refund_no = %refund.out_refund_no, error = %e, "reconciling a refund failed");
                }
            }
            // Still in flight: not looked at again before another reconcile_after (an
            // ABNORMAL one: ABNORMAL_RECHECK_SECS), counted from this refund's answer.
            let now = self.now();
            let next = if state == Some(RefundState::Abnormal) {
                self.next_check(RefundState::Abnormal, now)
            } else {
                now + self.inner.settings.reconcile_after_secs.max(1)
            };
            refund_store::check_again_at(db, &refund.out_refund_no, next).await?;
        }
        let retention = self.inner.settings.notify_retention_secs;
        if retention > 0 {
            report.pruned_notifies =
                refund_store::prune_notifications(db, self.now() - retention).await?;
        }
        if report != RefundReconcileReport::default() {
            tracing::info!(?report, "refund reconcile pass");
        }
        Ok(report)
    }

    /// Asks WeChat (with the order's API) about a PROCESSING or ABNORMAL refund and settles it
    /// when WeChat has.
    ///
    /// On v2 WeChat is asked about the order's refunds (refundquery by out_trade_no): one call
    /// answers this refund and any other of the order, so refunds made outside wxmp are
    /// recorded as the reconciler goes ([`Self::sync_refunds_from_wechat`]). When that answer
    /// does not list this refund (WeChat lists a limited number per order: "如果单个支付订单
    /// 部分退款次数超过20次请使用退款单号查询") or fails, it is asked about by its own key.
    async fn query_refund(&self, refund: &Refund) -> Result<Refund, Error> {
        let order = self.reload_order(&refund.order_no).await?;
        if is_xpay_order(&order) {
            let seen = self
                .xpay_query_refund(refund, &order)
                .await
                .map_err(map_refund_error)?;
            if seen.refund_fen != refund.amount_fen {
                return Err(Error::Internal(
                    "query_order reports a refund that does not match ours; not applied".into(),
                ));
            }
            return self.settle_from(refund, &seen).await;
        }
        if order.pay_api() == crate::config::PayApi::V2 {
            match self.sync_refunds_from_wechat(&order).await {
                Ok(listed) if listed.contains(&refund.out_refund_no) => {
                    return refund_store::find(self.database(), &refund.out_refund_no)
                        .await?
                        .ok_or_else(|| Error::Internal("refund vanished".into()));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(out_refund_no = %refund.out_refund_no, error = %e, "refundquery of the order failed; asking by out_refund_no");
                }
            }
        }
        let seen = self
            .inner
            .wechat
            .query_refund(order.pay_api(), &order.app_id, &refund.out_refund_no)
            .await
            .map_err(map_refund_error)?;
        if seen.refund_fen != refund.amount_fen || seen.out_trade_no != refund.order_no {
            return Err(Error::Internal(
                "refund query reports a refund that does not match ours; not applied".into(),
            ));
        }
        self.settle_from(refund, &seen).await
    }

    /// Applies what WeChat says of an in-flight refund (no-op while PROCESSING).
    ///
    /// SUCCESS is refunded whatever account took the money: after an abnormal refund was
    /// re-routed to the merchant's bank account (发起异常退款 MERCHANT_BANK_CARD) WeChat's query
    /// answers `status` SUCCESS with `user_received_account` 商户结算银行账户 ("退还商户:
    /// 商户基本账户、商户结算银行账户", 退款结果通知
    /// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>): WeChat counts it against the
    /// order, so the ledger does too; the account is kept on the refund and logged, since the
    /// payer still has to be paid by other means.
    async fn settle_from(&self, refund: &Refund, seen: &RefundSeen) -> Result<Refund, Error> {
        let (status, refund_id) = (seen.status, seen.refund_id.as_str());
        let now = self.now();
        let (to, failure) = match status.settlement() {
            Some(settled) => settled,
            // Accepted (again: an abnormal refund re-routed is processed anew).
            None if matches!(
                refund.state(),
                Some(RefundState::Pending | RefundState::Abnormal)
            ) =>
            {
                (RefundState::Processing, "")
            }
            None => return Ok(refund.clone()),
        };
        if refund.state() == Some(to) {
            return Ok(refund.clone()); // nothing new (e.g. still ABNORMAL)
        }
        if to == RefundState::Success
            && refunds::MERCHANT_ACCOUNTS.contains(&seen.received_account.as_str())
        {
            tracing::warn!(
                out_refund_no = %refund.out_refund_no, received_account = %seen.received_account,
                "refund settled to the merchant's account (abnormal refund re-routed): pay the payer by other means"
            );
        }
        let change = Change {
            to,
            refund_id: refund_id.to_owned(),
            failure: failure.to_owned(),
            now,
            next_check_at: self.next_check(to, now),
            received_account: seen.received_account.clone(),
        };
        self.apply(&refund.out_refund_no, &to.moves_from(), &change)
            .await
    }

    /// WeChat's v2 refundquery of the order (`refund_count`, `out_refund_no_$n`, ...): record
    /// the refunds it lists (those made elsewhere, e.g. in the merchant platform, become rows
    /// of their own with origin `outside`, reserved then settled like ours, so the order's
    /// `refunded_fen` counts them) and settle ours. Run when `orderquery` says REFUND, when
    /// the reconciler asks about a v2 refund, and after WeChat refused a v2 refund.
    ///
    /// v2 only: v3 has no refund list per order (查询单笔退款 needs the out_refund_no), so on v3
    /// only the payment is recorded; our own refunds of the order settle by notify or by the
    /// refund reconciler's query, and one made in the merchant platform needs manual review.
    ///
    /// Answers the out_refund_nos WeChat listed.
    pub(crate) async fn sync_refunds_from_wechat(
        &self,
        order: &Order,
    ) -> Result<Vec<String>, Error> {
        if order.pay_api() != crate::config::PayApi::V2 {
            tracing::info!(order_no = %order.order_no, "v3 order has refunds at WeChat; ours settle by notify or query");
            return Ok(Vec::new());
        }
        let answer = match self
            .inner
            .wechat
            .refund_query(
                &order.app_id,
                &RefundQueryBy::OutTradeNo(order.order_no.clone()),
            )
            .await
        {
            Ok(a) => a,
            Err(e) if is_err_code(&e, "REFUNDNOTEXIST") => return Ok(Vec::new()),
            Err(e) => return Err(map_error(e)),
        };
        for item in &answer.refunds {
            let refund = match refund_store::find(self.database(), &item.out_refund_no).await? {
                Some(r) => r,
                None => {
                    let now = self.now();
                    let new = NewRefund::outside(
                        &item.out_refund_no,
                        &order.order_no,
                        item.refund_fee,
                        OUTSIDE_REASON.into(),
                        API_V2,
                        now,
                        now + self.inner.settings.reconcile_after_secs,
                    );
                    tracing::warn!(
                        order_no = %order.order_no, out_refund_no = %item.out_refund_no,
                        refund_fen = item.refund_fee,
                        "WeChat lists a refund made outside wxmp (merchant platform): recorded against the order"
                    );
                    match refund_store::create(self.database(), &new).await? {
                        Created::New(r, _) | Created::Existing(r) => r,
                        Created::Refused(_) | Created::NoOrder => {
                            tracing::error!(
                                order_no = %order.order_no, out_refund_no = %item.out_refund_no,
                                "WeChat lists a refund the order cannot hold: needs manual review"
                            );
                            continue;
                        }
                    }
                }
            };
            if refund.state().is_some_and(RefundState::is_final) {
                continue;
            }
            if item.refund_fee != refund.amount_fen {
                tracing::error!(out_refund_no = %item.out_refund_no, "refundquery lists a refund that does not match ours; not applied");
                continue;
            }
            let seen = RefundSeen {
                refund_id: item.refund_id.clone(),
                out_trade_no: order.order_no.clone(),
                refund_fen: item.refund_fee,
                status: WxRefundStatus::from_v2(item.status),
                received_account: String::new(),
            };
            self.settle_from(&refund, &seen).await?;
        }
        Ok(answer
            .refunds
            .iter()
            .map(|r| r.out_refund_no.clone())
            .collect())
    }
}
