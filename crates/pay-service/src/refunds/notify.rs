//! WeChat's refund notify: decrypt, match against a refund we asked for, settle it exactly
//! once, and keep every notify with its verdict in `refund_notifications`.
//!
//! The notify has no signature: only the merchant key decrypts `req_info` (AES-256-ECB under
//! md5(key)), and the decrypted refund must match one of ours (out_refund_no, out_trade_no,
//! refund_fee, the order's total_fee and appid) before it changes anything.
//!
//! | verdict | reply | meaning |
//! |---|---|---|
//! | `applied` | SUCCESS | this notify settled the refund (SUCCESS, CLOSED for REFUNDCLOSE) or made it ABNORMAL (CHANGE: in flight, amount reserved) |
//! | `duplicate` | SUCCESS | the refund was already in that state; nothing changed |
//! | `conflicting_state` | SUCCESS | the refund was already settled otherwise; nothing changed; manual review |
//! | `malformed` | FAIL | not WeChat's XML, a field missing or malformed |
//! | `return_fail` | FAIL | return_code FAIL |
//! | `mch_id_mismatch` | FAIL | not our merchant |
//! | `undecryptable` | FAIL | req_info does not decrypt with our key (forged or corrupted) |
//! | `unknown_refund` | FAIL | no such out_refund_no here |
//! | `mismatch` | FAIL | decrypts, but out_trade_no / refund_fee / total_fee / appid / refund_id (v3: out_trade_no, amount.refund, amount.total, refund_id) differ from ours |
//! | `api_mismatch` | FAIL | the refund was sent over the other API |
//! | `internal_error` | FAIL | the database failed; WeChat will retry |
//!
//! Pay v3 refund notifies ([`Payments::handle_refund_notify_v3`], `REFUND.SUCCESS`,
//! `REFUND.ABNORMAL`, `REFUND.CLOSED`) are signed like every v3 notify and their resource is
//! AES-256-GCM encrypted with the APIv3 key; they get the same verdicts (204 for SUCCESS,
//! `{"code":"FAIL"}` for FAIL), with v3's checks in place of v2's: `bad_signature` (signature,
//! unknown serial, timestamp outside ±5 min), `malformed` (tampered or undecryptable resource,
//! an event_type that is not the resource's refund_status), `mch_id_mismatch`, and
//! `api_mismatch` (the refund was sent over v2, or v3 is not configured). A body that does not
//! decrypt (v2) or authenticate (v3) is kept as a 64-byte prefix with the SHA-256 and length
//! of the whole; refund notifies are pruned after `PAY_NOTIFY_RETENTION_DAYS`, as pay notifies
//! (by the refund reconciler).

use wechat::pay::{
    RefundNotifyError, decrypt_refund_notify, notify_reply_fail, notify_reply_success, xml,
};

use super::store::{self as refund_store, Change, NewRefundNotification, Transition};
use crate::{
    error::Error,
    orders::notify::{NotifyReply, NotifyV3Reply},
    orders::store,
    payments::Payments,
    refunds::{Refund, RefundState, WxRefundStatus, valid_out_refund_no},
};

fn verdict_of_error(e: &RefundNotifyError) -> &'static str {
    match e {
        RefundNotifyError::Xml(_)
        | RefundNotifyError::MissingField(_)
        | RefundNotifyError::Malformed(_) => "malformed",
        RefundNotifyError::ReturnFail(_) => "return_fail",
        RefundNotifyError::MchIdMismatch => "mch_id_mismatch",
        RefundNotifyError::Undecryptable => "undecryptable",
    }
}

impl Payments {
    /// Handles one refund notify body exactly as received. Never fails: errors become a FAIL
    /// reply (WeChat retries later).
    #[tracing::instrument(skip_all)]
    pub async fn handle_refund_notify(&self, raw_body: &[u8]) -> NotifyReply {
        // Anyone can post here: whole only once it decrypts (judge_refund).
        let mut record = NewRefundNotification::unverified(raw_body, self.now());
        let (verdict, accepted) = match self.judge_refund(raw_body, &mut record).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "refund notify could not be processed; WeChat will retry");
                ("internal_error", false)
            }
        };
        let (verdict, accepted) = self
            .conclude_refund(&mut record, verdict, accepted, "refund notify")
            .await;
        NotifyReply {
            reply_xml: if accepted {
                notify_reply_success()
            } else {
                notify_reply_fail(verdict)
            },
            accepted,
            verdict,
        }
    }

    async fn judge_refund(
        &self,
        raw_body: &[u8],
        record: &mut NewRefundNotification,
    ) -> Result<(&'static str, bool), Error> {
        // The key is the merchant's (one for every app bound to it); the appid is checked
        // against the order below.
        let appid = xml::parse(raw_body)
            .ok()
            .and_then(|f| f.get("appid").cloned())
            .unwrap_or_default();
        let pay = self.inner.wechat.config_for(&appid);
        let notify = match decrypt_refund_notify(raw_body, &pay) {
            Ok(n) => n,
            Err(e) => return Ok((verdict_of_error(&e), false)),
        };
        // Decrypted with our key: WeChat's own notify, kept whole.
        record.keep_whole(raw_body);
        if !valid_out_refund_no(&notify.out_refund_no) {
            return Ok(("malformed", false));
        }
        record.out_refund_no = notify.out_refund_no.clone();
        let Some(refund) = refund_store::find(self.database(), &notify.out_refund_no).await? else {
            return Ok(("unknown_refund", false));
        };
        if refund.api != crate::config::PayApi::V2.as_str() {
            return Ok(("api_mismatch", false));
        }
        let order = store::find_order(self.database(), &refund.order_no)
            .await?
            .ok_or_else(|| Error::Internal(format!("order {} vanished", refund.order_no)))?;
        if notify.out_trade_no != refund.order_no
            || notify.refund_fee != refund.amount_fen
            || notify.total_fee != order.amount_fen
            || (!order.app_id.is_empty() && notify.appid != order.app_id)
            || (!refund.refund_id.is_empty() && notify.refund_id != refund.refund_id)
        {
            tracing::error!(
                out_refund_no = %refund.out_refund_no,
                "decrypted refund notify does not match our refund; not applied"
            );
            return Ok(("mismatch", false));
        }
        self.settle_notified(
            &refund,
            WxRefundStatus::from_v2(notify.refund_status),
            &notify.refund_id,
            "",
        )
        .await
    }
}

impl Payments {
    /// Stores the refund notify with its verdict, counts and logs it. Answers the verdict
    /// WeChat gets: one that could not be recorded is `internal_error`, so WeChat sends it
    /// again (nothing changes twice: the refund is settled already).
    async fn conclude_refund(
        &self,
        record: &mut NewRefundNotification,
        mut verdict: &'static str,
        mut accepted: bool,
        what: &'static str,
    ) -> (&'static str, bool) {
        record.verdict = verdict.to_owned();
        record.accepted = accepted;
        if let Err(e) = refund_store::insert_notification(self.database(), record).await {
            tracing::error!(error = %e, verdict, what, "could not store a refund notify");
            if accepted {
                verdict = "internal_error";
                accepted = false;
            }
        }
        metrics::counter!("wxmp_refund_notifies_total", "verdict" => verdict).increment(1);
        if accepted {
            tracing::info!(out_refund_no = %record.out_refund_no, verdict, "{what} accepted");
        } else {
            tracing::warn!(out_refund_no = %record.out_refund_no, verdict, "{what} refused");
        }
        (verdict, accepted)
    }

    /// Settles a refund as an authenticated notify that matches it says: one conditional
    /// transition, so a repeat (or a notify racing the reconciler) changes nothing twice.
    async fn settle_notified(
        &self,
        refund: &Refund,
        status: WxRefundStatus,
        refund_id: &str,
        received_account: &str,
    ) -> Result<(&'static str, bool), Error> {
        let Some((to, failure)) = status.settlement() else {
            return Ok(("malformed", false));
        };
        let now = self.now();
        let change = Change {
            to,
            refund_id: refund_id.to_owned(),
            failure: failure.to_owned(),
            now,
            // ABNORMAL stays in flight: queried again at its slow cadence.
            next_check_at: if to == RefundState::Abnormal {
                now + crate::refunds::ABNORMAL_RECHECK_SECS
            } else {
                now
            },
            received_account: received_account.to_owned(),
        };
        let from = to.moves_from();
        Ok(
            match refund_store::transition(self.database(), &refund.out_refund_no, &from, &change)
                .await?
            {
                Transition::Applied(_, order) => {
                    crate::refunds::count_settled(to);
                    tracing::info!(
                        out_refund_no = %refund.out_refund_no, state = to.as_str(),
                        order_state = %order.state, refunded_fen = order.refunded_fen,
                        "refund settled by notify"
                    );
                    ("applied", true)
                }
                Transition::Unchanged(current) if current.state() == Some(to) => {
                    ("duplicate", true)
                }
                Transition::Unchanged(current) => {
                    tracing::error!(
                        out_refund_no = %current.out_refund_no, ours = %current.state,
                        wechat = to.as_str(),
                        "refund notify disagrees with a settled refund: needs manual review"
                    );
                    ("conflicting_state", true)
                }
                Transition::Unknown => ("unknown_refund", false),
            },
        )
    }

    /// Handles one v3 refund notify (body + the four `Wechatpay-*` headers). Never fails:
    /// errors become a FAIL reply (WeChat retries later).
    #[tracing::instrument(skip_all)]
    pub async fn handle_refund_notify_v3(
        &self,
        headers: &wechat::pay::v3::SignatureHeaders,
        raw_body: &[u8],
    ) -> NotifyV3Reply {
        // Anyone can post here: whole only once authenticated (judge_refund_v3).
        let mut record = NewRefundNotification::unverified(raw_body, self.now());
        let (verdict, accepted) = match self.judge_refund_v3(headers, raw_body, &mut record).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "v3 refund notify could not be processed; WeChat will retry");
                ("internal_error", false)
            }
        };
        let (verdict, accepted) = self
            .conclude_refund(&mut record, verdict, accepted, "v3 refund notify")
            .await;
        NotifyV3Reply {
            accepted,
            verdict,
            message: if accepted {
                String::new()
            } else {
                verdict.to_owned()
            },
        }
    }

    async fn judge_refund_v3(
        &self,
        headers: &wechat::pay::v3::SignatureHeaders,
        raw_body: &[u8],
        record: &mut NewRefundNotification,
    ) -> Result<(&'static str, bool), Error> {
        use wechat::pay::v3::NotifyError as E;
        let Some(v3) = self.inner.wechat.v3() else {
            // Not verifiable here: FAIL, so WeChat retries.
            crate::wechat_pay::v3_missing("refund notify");
            return Ok(("api_mismatch", false));
        };
        let (opened, notice) = match v3.refund_notify(headers, raw_body).await {
            Ok(ok) => ok,
            Err(e) => {
                // What failed (serial unknown, signature, clock, ciphertext), never a key.
                tracing::warn!(failed = %e, "v3 refund notify not authenticated");
                return Ok(match e {
                    E::Verify(_) => ("bad_signature", false),
                    E::Decrypt(_) | E::Json(_) => ("malformed", false),
                    E::Mismatch(_) => ("mch_id_mismatch", false),
                    E::Keys(_) => return Err(Error::WechatUnavailable(e.to_string())),
                });
            }
        };
        // Authenticated: WeChat's own notify, kept whole.
        record.keep_whole(raw_body);
        if !valid_out_refund_no(&notice.out_refund_no) {
            return Ok(("malformed", false));
        }
        record.out_refund_no = notice.out_refund_no.clone();
        // The event names the outcome the resource carries; both must agree.
        let Some(status) = WxRefundStatus::from_v3(&notice.refund_status) else {
            return Ok(("malformed", false));
        };
        if opened.notification.event_type != format!("REFUND.{}", notice.refund_status)
            || status == WxRefundStatus::Processing
        {
            return Ok(("malformed", false));
        }
        let Some(refund) = refund_store::find(self.database(), &notice.out_refund_no).await? else {
            return Ok(("unknown_refund", false));
        };
        if refund.api != crate::config::PayApi::V3.as_str() {
            return Ok(("api_mismatch", false));
        }
        let order = store::find_order(self.database(), &refund.order_no)
            .await?
            .ok_or_else(|| Error::Internal(format!("order {} vanished", refund.order_no)))?;
        if notice.out_trade_no != refund.order_no
            || notice.amount.refund != refund.amount_fen
            || notice.amount.total != order.amount_fen
            || (!refund.refund_id.is_empty() && notice.refund_id != refund.refund_id)
        {
            tracing::error!(
                out_refund_no = %refund.out_refund_no,
                "authenticated v3 refund notify does not match our refund; not applied"
            );
            return Ok(("mismatch", false));
        }
        self.settle_notified(
            &refund,
            status,
            &notice.refund_id,
            notice.user_received_account.as_deref().unwrap_or_default(),
        )
        .await
    }
}
