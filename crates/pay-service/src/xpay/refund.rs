//! Refunds of virtual orders: xpay's `refund_order` instead of WeChat Pay's refund, under the
//! same ledger as every refund ([`crate::refunds`]: the PENDING row and its reserved amount
//! before WeChat is called, out_refund_no as the idempotency key, REFUND_EXCEEDS_PAID, the
//! REFUND_* events, the refund reconciler).
//!
//! * `refund_order` ("启动订单退款任务",
//!   <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_refund_order.md>)
//!   only starts the refund: "启动后需要调用query_order接口来查询退款单状态". Its fields: the
//!   payer's `openid`, `order_id` (our out_trade_no), `refund_order_id` (our out_refund_no:
//!   8 to 32 of `[0-9A-Za-z_-]`), `left_fee` (what WeChat has left on the order, read from
//!   `query_order`; a wrong one is 268490016), `refund_fee` in `(0, left_fee]`, `biz_meta`
//!   (our reason, answered back by `query_order`), `refund_reason` "0".."5", `req_from`
//!   "1".."3" (field names as silenceper's `RefundOrderRequest` spells them).
//! * The result comes as the `xpay_refund_notify` push (`MchRefundId`, `MchOrderId`,
//!   `RefundFee`, `RetCode` 0 = refunded), through the message-push endpoint; the refund
//!   reconciler's fallback asks `query_order` by the refund_order_id: `order_type` 1, `status`
//!   5 refunded, 7 refund failed.
//! * The xpay error codes (268490002 no such data / bad field, 268490004 repeated operation,
//!   268490014 refund in progress, 268490015 rate limit, 268490016 left_fee) as the API pages'
//!   error tables list them.
//!
//! A refund failed at WeChat (status 7, `RetCode` ≠ 0) settles CLOSED with failure
//! `XPAY_REFUND_FAILED`: the amount is released, as a closed WeChat Pay refund's is.

use wechat::{
    ApiError,
    xpay::{
        ORDER_TYPE_REFUND, RefundNotify, RefundOrder, STATUS_REFUND_FAILED, STATUS_REFUNDED,
        XpayOrder,
    },
};

use super::rules::XPAY_SIGN_TYPE;
use crate::{
    error::Error,
    orders::{Order, store as order_store},
    payments::Payments,
    refunds::{
        self, Refund, RefundState, WxRefundStatus,
        store::{self as refund_store, Change, Transition},
    },
    shipping::push::{Handled, Push, record},
    wechat_pay::{RefundCallError, RefundSeen},
};

/// `refunds.api` of a refund carried by virtual payment.
pub const API_XPAY: &str = "xpay";
/// The failure kept on a refund WeChat's virtual payment failed.
pub const FAILED_AT_WECHAT: &str = "XPAY_REFUND_FAILED";
/// 268490002: a bad field, or no such data (`query_order` of an unknown order id).
pub const ERR_NO_DATA: i64 = 268_490_002;
/// 268490004: a repeated operation; the first one went through.
pub const ERR_REPEATED: i64 = 268_490_004;
/// 268490014: a refund of the order is in progress; retry with the same parameters.
pub const ERR_REFUND_IN_PROGRESS: i64 = 268_490_014;
/// 268490015: rate limited.
pub const ERR_RATE_LIMITED: i64 = 268_490_015;
/// `refund_reason` "0": no description (our reason goes into `biz_meta`).
const REFUND_REASON: &str = "0";
/// `req_from` "1": a refund made by the merchant's staff (the `Refund` RPC is an operator's).
const REQ_FROM: &str = "1";

/// True for an order paid through virtual payment: its refunds go through `refund_order`.
pub fn is_xpay_order(order: &Order) -> bool {
    order.sign_type == XPAY_SIGN_TYPE
}

/// An xpay call's error as a refund call's: no answer, busy, rate limited, a refund in
/// progress or a rejected token → Unknown (the same request again later); any other errcode
/// → refused with it.
fn refund_call_error(api: &str, e: &ApiError) -> RefundCallError {
    let unknown = match e {
        ApiError::Transport(_) | ApiError::BadResponse(_) | ApiError::SystemBusy => true,
        ApiError::Other { errcode, .. } => {
            matches!(*errcode, ERR_REFUND_IN_PROGRESS | ERR_RATE_LIMITED) || e.is_token_rejected()
        }
        _ => false,
    };
    match e.errcode() {
        Some(code) if !unknown => RefundCallError::Refused {
            code: code.to_string(),
            message: format!("{api}: {e}"),
        },
        _ => RefundCallError::Unknown(format!("{api}: {e}")),
    }
}

fn is_code(e: &ApiError, code: i64) -> bool {
    e.errcode() == Some(code)
}

/// What `query_order` says of a refund order, as a refund's status.
fn seen_of(order: &Order, at_wechat: &XpayOrder) -> RefundSeen {
    let status = match at_wechat.status {
        STATUS_REFUNDED => WxRefundStatus::Success,
        STATUS_REFUND_FAILED => WxRefundStatus::Closed(FAILED_AT_WECHAT),
        _ => WxRefundStatus::Processing,
    };
    // A refund order of another payer or kind is not ours: the amount check refuses it.
    let refund_fen =
        if at_wechat.order_type == ORDER_TYPE_REFUND && at_wechat.openid == order.openid {
            at_wechat.refund_fee
        } else {
            -1
        };
    RefundSeen {
        refund_id: at_wechat.wx_order_id.clone(),
        out_trade_no: order.order_no.clone(),
        refund_fen,
        status,
        received_account: String::new(),
    }
}

impl Payments {
    /// Sends a PENDING refund of a virtual order to `refund_order`. `again`: a resend after an
    /// unknown outcome; WeChat is asked first (`query_order` by the refund_order_id) and only a
    /// refund it does not hold (268490002) is sent again, so a refusal of the resend is a
    /// refusal of a refund WeChat does not have.
    pub(crate) async fn xpay_send_refund(
        &self,
        refund: &Refund,
        order: &Order,
        again: bool,
    ) -> Result<RefundSeen, RefundCallError> {
        let Some(xpay) = self.xpay() else {
            return Err(RefundCallError::Unknown(
                "a virtual order's refund without PAY_XPAY_* settings".into(),
            ));
        };
        let token = xpay
            .access_token(&order.app_id)
            .await
            .map_err(|e| RefundCallError::Unknown(e.to_string()))?;
        let (key, env) = (xpay.settings.app_key.expose(), xpay.settings.env);
        let query = |id: String| {
            let token = token.clone();
            async move {
                xpay.wechat()
                    .xpay_query_order(&token, key, &order.openid, env, &id)
                    .await
            }
        };
        if again {
            match query(refund.out_refund_no.clone()).await {
                Ok(at_wechat) => return Ok(seen_of(order, &at_wechat)),
                Err(e) if is_code(&e, ERR_NO_DATA) => {}
                Err(e) => return Err(refund_call_error("query_order", &e)),
            }
        }
        // left_fee is WeChat's: what it has left after its own refunds of the order.
        let paid = query(order.order_no.clone())
            .await
            .map_err(|e| refund_call_error("query_order", &e))?;
        let ours =
            order.amount_fen - order.refunded_fen - (order.refunding_fen - refund.amount_fen);
        let left_fee = paid.left_fee.unwrap_or(ours);
        let request = RefundOrder {
            openid: order.openid.clone(),
            order_id: order.order_no.clone(),
            refund_order_id: refund.out_refund_no.clone(),
            left_fee,
            refund_fee: refund.amount_fen,
            biz_meta: refund.reason.clone(),
            refund_reason: REFUND_REASON.into(),
            req_from: REQ_FROM.into(),
            env,
        };
        match xpay.wechat().xpay_refund_order(&token, key, &request).await {
            Ok(answer) => {
                if !answer.pay_order_id.is_empty() && answer.pay_order_id != order.order_no {
                    return Err(RefundCallError::Unknown(
                        "refund_order answers another order".into(),
                    ));
                }
                Ok(RefundSeen {
                    refund_id: answer.refund_wx_order_id,
                    out_trade_no: order.order_no.clone(),
                    refund_fen: refund.amount_fen,
                    status: WxRefundStatus::Processing,
                    received_account: String::new(),
                })
            }
            // The same refund went through before (its answer lost): WeChat's view of it.
            Err(e) if is_code(&e, ERR_REPEATED) => {
                match query(refund.out_refund_no.clone()).await {
                    Ok(at_wechat) => Ok(seen_of(order, &at_wechat)),
                    Err(q) => Err(refund_call_error("query_order", &q)),
                }
            }
            Err(e) => Err(refund_call_error("refund_order", &e)),
        }
    }

    /// The refund reconciler's question about a virtual order's refund: `query_order` by its
    /// refund_order_id.
    pub(crate) async fn xpay_query_refund(
        &self,
        refund: &Refund,
        order: &Order,
    ) -> Result<RefundSeen, RefundCallError> {
        let Some(xpay) = self.xpay() else {
            return Err(RefundCallError::Unknown(
                "a virtual order's refund without PAY_XPAY_* settings".into(),
            ));
        };
        let token = xpay
            .access_token(&order.app_id)
            .await
            .map_err(|e| RefundCallError::Unknown(e.to_string()))?;
        let at_wechat = xpay
            .wechat()
            .xpay_query_order(
                &token,
                xpay.settings.app_key.expose(),
                &order.openid,
                xpay.settings.env,
                &refund.out_refund_no,
            )
            .await
            .map_err(|e| refund_call_error("query_order", &e))?;
        Ok(seen_of(order, &at_wechat))
    }
}

pub(crate) fn on_refund_notify<'a>(p: &'a Payments, push: &'a Push) -> Handled<'a> {
    Box::pin(refund_notify(p, push))
}

/// Why a refund push does not settle its refund.
fn push_mismatch(notify: &RefundNotify, refund: &Refund, order: &Order) -> Option<&'static str> {
    if !is_xpay_order(order) {
        Some("the order is not a virtual-payment order")
    } else if notify.mch_order_id != order.order_no {
        Some("the push's order is not the refund's")
    } else if notify.openid.is_empty() || notify.openid != order.openid {
        Some("the push's openid is not the order's payer")
    } else if notify.refund_fee != refund.amount_fen {
        Some("the push's amount is not the refund's")
    } else {
        None
    }
}

/// `xpay_refund_notify`: checked against its refund and order (the same app, order, payer and
/// amount), then the refund's one transition out of flight: SUCCESS (`RetCode` 0) or CLOSED
/// (`XPAY_REFUND_FAILED`), with its order's totals and REFUND_* event in the same
/// transaction. Retries and copies on other replicas find it settled and change nothing.
async fn refund_notify(payments: &Payments, push: &Push) -> Result<&'static str, Error> {
    if payments.xpay().is_none() {
        return record(payments, push, "not_configured").await;
    }
    let Ok(notify) = serde_json::from_value::<RefundNotify>(push.message.clone()) else {
        return record(payments, push, "malformed").await;
    };
    let refund = if wechat::xpay::valid_refund_order_id(&notify.mch_refund_id) {
        refund_store::find(payments.database(), &notify.mch_refund_id).await?
    } else {
        None
    };
    let Some(refund) = refund else {
        tracing::warn!(mch_order_id = %notify.mch_order_id, "xpay_refund_notify of a refund wxmp did not make (e.g. in the mini program's admin): needs review");
        return record(payments, push, "unknown_refund").await;
    };
    let order = order_store::find_order(payments.database(), &refund.order_no).await?;
    let Some(order) = order.filter(|o| o.app_id == push.app_id) else {
        return record(payments, push, "unknown_refund").await;
    };
    if let Some(why) = push_mismatch(&notify, &refund, &order) {
        tracing::error!(out_refund_no = %refund.out_refund_no, why, "refund push does not match its refund; not applied");
        return record(payments, push, "mismatch").await;
    }
    let (to, failure) = if notify.ret_code == 0 {
        (RefundState::Success, String::new())
    } else {
        tracing::warn!(out_refund_no = %refund.out_refund_no, ret_code = notify.ret_code, ret_msg = %notify.ret_msg, "WeChat failed a virtual order's refund");
        (RefundState::Closed, FAILED_AT_WECHAT.to_owned())
    };
    let now = payments.now();
    let change = Change {
        to,
        refund_id: notify.wx_refund_id.clone(),
        failure,
        now,
        next_check_at: now,
        received_account: String::new(),
    };
    let verdict = match refund_store::transition(
        payments.database(),
        &refund.out_refund_no,
        &to.moves_from(),
        &change,
    )
    .await?
    {
        Transition::Applied(refund, order) => {
            refunds::count_settled(to);
            tracing::info!(
                out_refund_no = %refund.out_refund_no, state = to.as_str(),
                order_state = %order.state, refunded_fen = order.refunded_fen,
                "refund settled by xpay_refund_notify"
            );
            "handled"
        }
        Transition::Unchanged(_) => "duplicate",
        Transition::Unknown => "unknown_refund",
    };
    record(payments, push, verdict).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        Order {
            order_no: "N1".into(),
            openid: "o1".into(),
            amount_fen: 990,
            sign_type: XPAY_SIGN_TYPE.into(),
            ..Order::default()
        }
    }

    fn refund() -> Refund {
        Refund {
            id: 1,
            out_refund_no: "R2026120600000001".into(),
            order_no: "N1".into(),
            amount_fen: 300,
            reason: String::new(),
            state: "PROCESSING".into(),
            api: API_XPAY.into(),
            refund_id: String::new(),
            failure: String::new(),
            created_at: 0,
            updated_at: 0,
            settled_at: None,
            next_check_at: 0,
            notify_url: String::new(),
            origin: "wxmp".into(),
            received_account: String::new(),
        }
    }

    fn notify() -> RefundNotify {
        RefundNotify {
            openid: "o1".into(),
            mch_refund_id: "R2026120600000001".into(),
            mch_order_id: "N1".into(),
            refund_fee: 300,
            ret_code: 0,
            ..RefundNotify::default()
        }
    }

    #[test]
    fn a_refund_push_must_match_order_payer_and_amount() {
        assert_eq!(push_mismatch(&notify(), &refund(), &order()), None);
        let mut n = notify();
        n.refund_fee = 990;
        assert!(push_mismatch(&n, &refund(), &order()).is_some());
        let mut n = notify();
        n.openid = "o2".into();
        assert!(push_mismatch(&n, &refund(), &order()).is_some());
        let mut n = notify();
        n.mch_order_id = "N2".into();
        assert!(push_mismatch(&n, &refund(), &order()).is_some());
        let mut o = order();
        o.sign_type = "MD5".into();
        assert!(push_mismatch(&notify(), &refund(), &o).is_some());
    }

    #[test]
    fn query_order_statuses_settle_a_refund() {
        let at = |status, order_type, openid: &str| XpayOrder {
            status,
            order_type,
            refund_fee: 300,
            openid: openid.into(),
            ..XpayOrder::default()
        };
        let seen = seen_of(&order(), &at(5, 1, "o1"));
        assert_eq!(
            (seen.status, seen.refund_fen),
            (WxRefundStatus::Success, 300)
        );
        assert_eq!(
            seen_of(&order(), &at(7, 1, "o1")).status,
            WxRefundStatus::Closed(FAILED_AT_WECHAT)
        );
        assert_eq!(
            seen_of(&order(), &at(1, 1, "o1")).status,
            WxRefundStatus::Processing
        );
        // A payment order, or another payer's: not this refund (the amount check refuses it).
        assert_eq!(seen_of(&order(), &at(5, 0, "o1")).refund_fen, -1);
        assert_eq!(seen_of(&order(), &at(5, 1, "o2")).refund_fen, -1);
    }

    #[test]
    fn only_unanswered_calls_are_unknown() {
        let other = |errcode| ApiError::Other {
            errcode,
            errmsg: "m".into(),
        };
        for e in [
            ApiError::Transport("t".into()),
            ApiError::SystemBusy,
            other(ERR_REFUND_IN_PROGRESS),
            other(ERR_RATE_LIMITED),
            other(40001),
        ] {
            assert!(
                matches!(refund_call_error("x", &e), RefundCallError::Unknown(_)),
                "{e:?}"
            );
        }
        assert_eq!(
            refund_call_error("x", &other(wechat::xpay::ERR_LEFT_FEE)).code(),
            Some("268490016")
        );
        assert_eq!(
            refund_call_error("x", &other(wechat::xpay::ERR_PAY_SIG)).code(),
            Some("-15005")
        );
    }
}
