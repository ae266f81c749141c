//! WeChat's refund notify: decrypt, match against a refund we asked for, settle it exactly
//! once, and keep every notify with its verdict in `refund_notifications`.
//!
//! The notify has no signature: only the merchant key decrypts `req_info` (AES-256-ECB under
//! md5(key)), and the decrypted refund must match one of ours (out_refund_no, out_trade_no,
//! refund_fee, the order's total_fee and appid) before it changes anything.
//!
//! | verdict | reply | meaning |
//! |---|---|---|
//! | `applied` | SUCCESS | this notify settled the refund (SUCCESS, FAILED for CHANGE, CLOSED for REFUNDCLOSE) |
//! | `duplicate` | SUCCESS | the refund was already in that state; nothing changed |
//! | `conflicting_state` | SUCCESS | the refund was already settled otherwise; nothing changed; manual review |
//! | `malformed` | FAIL | not WeChat's XML, a field missing or malformed |
//! | `return_fail` | FAIL | return_code FAIL |
//! | `mch_id_mismatch` | FAIL | not our merchant |
//! | `undecryptable` | FAIL | req_info does not decrypt with our key (forged or corrupted) |
//! | `unknown_refund` | FAIL | no such out_refund_no here |
//! | `mismatch` | FAIL | decrypts, but out_trade_no / refund_fee / total_fee / appid differ from ours |
//! | `internal_error` | FAIL | the database failed; WeChat will retry |

use wechat::pay::{
    RefundNotifyError, decrypt_refund_notify, notify_reply_fail, notify_reply_success, xml,
};

use crate::{
    error::Error,
    notify::{MAX_STORED_BODY_BYTES, NotifyReply},
    payments::Payments,
    refunds::{RefundState, settlement_of, valid_out_refund_no},
    store::{
        self,
        refunds::{Change, NewRefundNotification, Transition},
    },
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
        let now = self.now();
        let stored_len = raw_body.len().min(MAX_STORED_BODY_BYTES);
        let mut record = NewRefundNotification {
            received_at: now,
            out_refund_no: String::new(),
            raw_body: String::from_utf8_lossy(&raw_body[..stored_len]).into_owned(),
            verdict: String::new(),
            accepted: false,
        };
        let (mut verdict, mut accepted) = match self.judge_refund(raw_body, &mut record).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "refund notify could not be processed; WeChat will retry");
                ("internal_error", false)
            }
        };
        record.verdict = verdict.to_owned();
        record.accepted = accepted;
        if let Err(e) = store::refunds::insert_notification(self.database(), &record).await {
            tracing::error!(error = %e, verdict, "could not store a refund notify");
            if accepted {
                // Every notify must be on record: let WeChat send it again (nothing changes
                // twice: the refund is settled already).
                verdict = "internal_error";
                accepted = false;
            }
        }
        metrics::counter!("wxmp_refund_notifies_total", "verdict" => verdict).increment(1);
        if accepted {
            tracing::info!(out_refund_no = %record.out_refund_no, verdict, "refund notify accepted");
        } else {
            tracing::warn!(out_refund_no = %record.out_refund_no, verdict, "refund notify refused");
        }
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
        if !valid_out_refund_no(&notify.out_refund_no) {
            return Ok(("malformed", false));
        }
        record.out_refund_no = notify.out_refund_no.clone();
        let Some(refund) = store::refunds::find(self.database(), &notify.out_refund_no).await?
        else {
            return Ok(("unknown_refund", false));
        };
        let order = store::find_order(self.database(), &refund.order_no)
            .await?
            .ok_or_else(|| Error::Internal(format!("order {} vanished", refund.order_no)))?;
        if notify.out_trade_no != refund.order_no
            || notify.refund_fee != refund.amount_fen
            || notify.total_fee != order.amount_fen
            || (!order.app_id.is_empty() && notify.appid != order.app_id)
        {
            tracing::error!(
                out_refund_no = %refund.out_refund_no,
                "decrypted refund notify does not match our refund; not applied"
            );
            return Ok(("mismatch", false));
        }
        let Some((to, failure)) = settlement_of(notify.refund_status) else {
            return Ok(("malformed", false));
        };
        let now = self.now();
        let change = Change {
            to,
            refund_id: notify.refund_id.clone(),
            failure: failure.to_owned(),
            now,
            next_check_at: now,
        };
        let from = [RefundState::Pending, RefundState::Processing];
        Ok(
            match store::refunds::transition(self.database(), &refund.out_refund_no, &from, &change)
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
}
