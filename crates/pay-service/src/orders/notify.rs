//! WeChat's payment notify: authenticate, check against the order, apply exactly once, and
//! keep every notify with its verdict in `pay_notifications`.
//!
//! Verdicts (`HandlePayNotifyResponse.verdict`, `wxmp_pay_notifies_total{verdict}`):
//!
//! | verdict | reply | meaning |
//! |---|---|---|
//! | `applied` | SUCCESS | this notify moved the order to PAID |
//! | `duplicate` | SUCCESS | the order is already PAID by this transaction; nothing changed |
//! | `paid_after_close` | SUCCESS | a genuine payment of a CLOSED order: the order stays CLOSED, the transaction_id is kept on it; **refund it manually** (WeChat must stop retrying, the money is ours to return) |
//! | `conflicting_transaction` | SUCCESS | the order is PAID by another transaction: nothing changed; needs manual review |
//! | `unexpected_state` | SUCCESS | a genuine payment of an order in another state; nothing changed; manual review |
//! | `payment_failed` | SUCCESS | a verified notify whose result_code is not SUCCESS (a failed payment: no transaction_id, total_fee or time_end); nothing changed |
//! | `return_fail` | SUCCESS | return_code FAIL: an unsigned transport-level message that carries no payment; acknowledged (a retry would bring nothing), nothing changed |
//! | `malformed` | FAIL | not WeChat's XML, too large, or a required field missing or malformed |
//! | `bad_signature` | FAIL | the signature does not verify with the merchant key |
//! | `unknown_order` | FAIL | no such out_trade_no here |
//! | `appid_mismatch` | FAIL | appid is not the one the order was placed through |
//! | `mch_id_mismatch` | FAIL | mch_id is not ours |
//! | `amount_mismatch` | FAIL | total_fee differs from the order's amount |
//! | `internal_error` | FAIL | the database failed; WeChat will retry |
//!
//! A FAIL reply changes nothing about the order.
//!
//! The signature is checked with the sign_type the order was placed with (kept on the order
//! at its first prepare), else the configured `WXMP_PAY_SIGN_TYPE`: WeChat's notify carries no
//! `sign_type` of its own (see `wechat::pay::verify_notify`).
//!
//! Storage: anyone can post to the notify URL, so only a notify whose signature verified is
//! kept whole in `pay_notifications.raw_body`; any other keeps the first
//! [`UNVERIFIED_PREFIX_BYTES`] bytes, with the SHA-256 and length of the whole body (as every
//! row does). Rows older than `PAY_NOTIFY_RETENTION_DAYS` are deleted by the reconciler.
//! Pay v3 notifies ([`Payments::handle_pay_notify_v3`]) get the same verdicts, with v3's own
//! checks in place of the v2 ones: `bad_signature` also covers a stale `Wechatpay-Timestamp`
//! (±5 min) and an unknown `Wechatpay-Serial`, `malformed` a resource that does not decrypt
//! (tampered, or another APIv3 key), and `api_mismatch` an order placed with v2.

use sha2::{Digest as _, Sha256};
use wechat::pay::{
    NotifyError, notify_reply_fail, notify_reply_success, verify_notify,
    xml::{self, Fields},
};

use crate::{
    error::Error,
    orders::{
        PaidOutcome,
        flow::log_paid_outcome,
        store::{self, NewNotification, Payment},
        valid_order_no,
    },
    payments::Payments,
};

/// Most bytes of a verified notify body kept in `pay_notifications` (WeChat's are about 1 KiB).
pub const MAX_STORED_BODY_BYTES: usize = 8 * 1024;
/// Bytes of an unverified notify body kept (enough to see what it was).
pub const UNVERIFIED_PREFIX_BYTES: usize = 64;
/// Most characters of out_trade_no / transaction_id kept from an unverified notify.
const MAX_STORED_ID_CHARS: usize = 64;

/// The answer to one notify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyReply {
    /// The XML for WeChat.
    pub reply_xml: String,
    /// True when the reply is SUCCESS.
    pub accepted: bool,
    pub verdict: &'static str,
}

fn verdict_of(outcome: &PaidOutcome) -> (&'static str, bool) {
    match outcome {
        PaidOutcome::Applied(_) => ("applied", true),
        PaidOutcome::Duplicate(_) => ("duplicate", true),
        PaidOutcome::PaidAfterClose(_) => ("paid_after_close", true),
        PaidOutcome::OtherTransaction(_) => ("conflicting_transaction", true),
        PaidOutcome::Unexpected(_) => ("unexpected_state", true),
    }
}

fn verdict_of_error(e: &NotifyError) -> &'static str {
    match e {
        NotifyError::Xml(_) | NotifyError::MissingField(_) | NotifyError::BadAmount => "malformed",
        NotifyError::BadSignature => "bad_signature",
        NotifyError::AppIdMismatch => "appid_mismatch",
        NotifyError::MchIdMismatch => "mch_id_mismatch",
        NotifyError::ReturnFail(_) => "return_fail",
    }
}

fn bounded(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// What judging a notify decided, whether its signature verified, and whether the record is
/// already stored.
struct Judgement {
    verdict: &'static str,
    accepted: bool,
    verified: bool,
    stored: bool,
}

impl Judgement {
    fn reject(verdict: &'static str) -> Self {
        Self {
            verdict,
            accepted: false,
            verified: false,
            stored: false,
        }
    }

    /// A verified notify refused or answered without a payment to apply.
    fn verified(verdict: &'static str, accepted: bool) -> Self {
        Self {
            verdict,
            accepted,
            verified: true,
            stored: false,
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Payments {
    /// Stores the notify with its verdict (unless the payment's transaction already did; a
    /// verified body whole), counts and logs it. Answers the verdict WeChat gets: a notify that
    /// could not be recorded is `internal_error`, so WeChat sends it again.
    async fn conclude(
        &self,
        record: &mut NewNotification,
        judgement: Judgement,
        raw_body: &[u8],
        what: &'static str,
    ) -> (&'static str, bool) {
        let mut verdict = judgement.verdict;
        let mut accepted = judgement.accepted;
        if !judgement.stored {
            if judgement.verified {
                record.raw_body = lossy(&raw_body[..raw_body.len().min(MAX_STORED_BODY_BYTES)]);
            }
            record.verdict = verdict.to_owned();
            record.accepted = accepted;
            if let Err(e) = store::insert_notification(self.database(), record).await {
                // Every notify must be on record: let WeChat send it again.
                tracing::error!(error = %e, verdict, what, "could not store a notify");
                if accepted {
                    verdict = "internal_error";
                    accepted = false;
                }
            }
        }
        metrics::counter!("wxmp_pay_notifies_total", "verdict" => verdict).increment(1);
        if accepted {
            tracing::info!(out_trade_no = %record.out_trade_no, verdict, "{what} accepted");
        } else {
            tracing::warn!(out_trade_no = %record.out_trade_no, verdict, "{what} refused");
        }
        (verdict, accepted)
    }

    /// Handles one notify body exactly as received. Never fails: errors become a FAIL reply
    /// (WeChat retries later) with the verdict `internal_error`.
    pub async fn handle_pay_notify(&self, raw_body: &[u8]) -> NotifyReply {
        let now = self.now();
        let mut record = unverified_record(raw_body, now);
        let judgement = match self.judge(raw_body, now, &mut record).await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "notify could not be processed; WeChat will retry");
                Judgement::reject("internal_error")
            }
        };
        let (verdict, accepted) = self
            .conclude(&mut record, judgement, raw_body, "notify")
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

    async fn judge(
        &self,
        raw_body: &[u8],
        now: i64,
        record: &mut NewNotification,
    ) -> Result<Judgement, Error> {
        let fields: Fields = match xml::parse(raw_body) {
            Ok(f) => f,
            Err(_) => return Ok(Judgement::reject("malformed")),
        };
        // return_code FAIL first: unsigned, no payment, nothing to verify or to retry.
        if fields.get("return_code").is_some_and(|c| c != "SUCCESS") {
            return Ok(Judgement {
                verdict: "return_fail",
                accepted: true,
                verified: false,
                stored: false,
            });
        }
        let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
        record.out_trade_no = bounded(field("out_trade_no"), MAX_STORED_ID_CHARS);
        record.transaction_id = bounded(field("transaction_id"), MAX_STORED_ID_CHARS);

        // The order decides which appid the notify must carry. An unknown order still gets
        // its signature checked (against the notify's own appid) so the verdict says which
        // check failed first. The lookup and the payment share one database connection.
        let out_trade_no = field("out_trade_no");
        let lookup = valid_order_no(out_trade_no).then_some(out_trade_no);
        // Stored only with a payment, i.e. after the signature verified: the whole body.
        let mut verified_record = record.clone();
        verified_record.raw_body = lossy(&raw_body[..raw_body.len().min(MAX_STORED_BODY_BYTES)]);
        let judged = store::settle_notify(
            self.database(),
            lookup,
            now,
            verified_record,
            verdict_of,
            |order| {
                // The order's appid and sign_type; the configured ones for an unknown order.
                let pay = match order {
                    Some(o) => self.pay_config_of(o),
                    None => self.inner.wechat.config_for(field("appid")),
                };
                let notify = match verify_notify(raw_body, &pay) {
                    Ok(n) => n,
                    // A signature that verified with a wrong appid or mch_id is still ours
                    // to keep whole.
                    Err(e @ (NotifyError::AppIdMismatch | NotifyError::MchIdMismatch)) => {
                        return Err(Judgement::verified(verdict_of_error(&e), false));
                    }
                    Err(e) => return Err(Judgement::reject(verdict_of_error(&e))),
                };
                let Some(order) = order else {
                    return Err(Judgement::verified("unknown_order", false));
                };
                if !notify.is_success() {
                    return Err(Judgement::verified("payment_failed", true));
                }
                if notify.total_fee != order.amount_fen {
                    tracing::error!(
                        order_no = %order.order_no,
                        amount_fen = order.amount_fen,
                        total_fee = notify.total_fee,
                        "verified notify with the wrong amount"
                    );
                    return Err(Judgement::verified("amount_mismatch", false));
                }
                Ok(Payment {
                    paid_at: wechat::pay::time::parse(&notify.time_end).unwrap_or(now),
                    transaction_id: notify.transaction_id,
                })
            },
        )
        .await?;
        let outcome = match judged {
            Ok(outcome) => outcome,
            Err(judgement) => return Ok(judgement),
        };
        log_paid_outcome(&outcome, "notify");
        crate::subscribe::on_paid(self, &outcome).await;
        crate::shipping::worker::on_paid(self, &outcome).await;
        let (verdict, accepted) = verdict_of(&outcome);
        Ok(Judgement {
            verdict,
            accepted,
            verified: true,
            stored: true,
        })
    }
}

/// The answer to one v3 notify: 204 when accepted, else `{"code":"FAIL","message"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyV3Reply {
    pub accepted: bool,
    pub verdict: &'static str,
    pub message: String,
}

fn verdict_of_v3_error(e: &wechat::pay::v3::NotifyError) -> &'static str {
    use wechat::pay::v3::NotifyError as E;
    match e {
        E::Verify(_) => "bad_signature",
        E::Decrypt(_) | E::Json(_) => "malformed",
        E::Mismatch(_) => "mch_id_mismatch",
        E::Keys(_) => "internal_error",
    }
}

impl Payments {
    /// Handles one v3 notify: verify the headers (via the v3 client, which refreshes platform
    /// certificates on an unknown serial), decrypt, then the same checks and exactly-once
    /// update as v2. Never fails: errors become a FAIL reply.
    pub async fn handle_pay_notify_v3(
        &self,
        headers: &wechat::pay::v3::SignatureHeaders,
        raw_body: &[u8],
    ) -> NotifyV3Reply {
        let now = self.now();
        // As for v2: whole only once authenticated (judge_v3 replaces it), else a prefix.
        let mut record = unverified_record(raw_body, now);
        let judgement = match self.judge_v3(headers, raw_body, now, &mut record).await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "v3 notify could not be processed; WeChat will retry");
                Judgement::reject("internal_error")
            }
        };
        let (verdict, accepted) = self
            .conclude(&mut record, judgement, raw_body, "v3 notify")
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

    async fn judge_v3(
        &self,
        headers: &wechat::pay::v3::SignatureHeaders,
        raw_body: &[u8],
        now: i64,
        record: &mut NewNotification,
    ) -> Result<Judgement, Error> {
        let Some(v3) = self.inner.wechat.v3() else {
            // Not verifiable here: FAIL, so WeChat retries (a service with the v3 settings,
            // or this one once they are back, applies it).
            crate::wechat_pay::v3_missing("notify");
            return Ok(Judgement::reject("api_mismatch"));
        };
        let (opened, tx) = match v3.transaction_notify(headers, raw_body).await {
            Ok(ok) => ok,
            Err(e) => {
                // What failed (serial unknown, signature, clock, ciphertext), never a key.
                tracing::warn!(failed = %e, "v3 notify not authenticated");
                return Ok(Judgement::reject(verdict_of_v3_error(&e)));
            }
        };
        // Authenticated: WeChat's own notify, kept whole.
        record.raw_body = lossy(&raw_body[..raw_body.len().min(MAX_STORED_BODY_BYTES)]);
        record.out_trade_no = bounded(&tx.out_trade_no, MAX_STORED_ID_CHARS);
        record.transaction_id = bounded(
            tx.transaction_id.as_deref().unwrap_or_default(),
            MAX_STORED_ID_CHARS,
        );
        let lookup = valid_order_no(&tx.out_trade_no).then_some(tx.out_trade_no.as_str());
        let success =
            opened.notification.event_type == "TRANSACTION.SUCCESS" && tx.trade_state == "SUCCESS";
        let judged = store::settle_notify(
            self.database(),
            lookup,
            now,
            record.clone(),
            verdict_of,
            |order| {
                let Some(order) = order else {
                    return Err(Judgement::verified("unknown_order", false));
                };
                if order.pay_api() != crate::config::PayApi::V3 {
                    return Err(Judgement::verified("api_mismatch", false));
                }
                if tx.appid != order.app_id {
                    return Err(Judgement::verified("appid_mismatch", false));
                }
                if !success {
                    return Err(Judgement::verified("payment_failed", true));
                }
                let transaction_id = tx.transaction_id.clone().unwrap_or_default();
                if transaction_id.is_empty() {
                    return Err(Judgement::verified("malformed", false));
                }
                if tx.total() != Some(order.amount_fen) {
                    tracing::error!(
                        order_no = %order.order_no,
                        amount_fen = order.amount_fen,
                        total = ?tx.total(),
                        "verified v3 notify with the wrong amount"
                    );
                    return Err(Judgement::verified("amount_mismatch", false));
                }
                Ok(Payment {
                    paid_at: tx.success_unix().unwrap_or(now),
                    transaction_id,
                })
            },
        )
        .await?;
        let outcome = match judged {
            Ok(outcome) => outcome,
            Err(judgement) => return Ok(judgement),
        };
        log_paid_outcome(&outcome, "notify_v3");
        crate::subscribe::on_paid(self, &outcome).await;
        crate::shipping::worker::on_paid(self, &outcome).await;
        let (verdict, accepted) = verdict_of(&outcome);
        Ok(Judgement {
            verdict,
            accepted,
            verified: true,
            stored: true,
        })
    }
}

/// A notify's record before it is judged: a prefix of the body with its SHA-256 and length
/// (anyone can post to the notify URL; the whole body is kept once it is verified).
fn unverified_record(raw_body: &[u8], now: i64) -> NewNotification {
    NewNotification {
        received_at: now,
        out_trade_no: String::new(),
        transaction_id: String::new(),
        raw_body: lossy(&raw_body[..raw_body.len().min(UNVERIFIED_PREFIX_BYTES)]),
        verdict: String::new(),
        accepted: false,
        body_sha256: hex::encode(Sha256::digest(raw_body)),
        body_len: i64::try_from(raw_body.len()).unwrap_or(i64::MAX),
    }
}
