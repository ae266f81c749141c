//! Refunds, side by side: [`rules`] (what a refund means: states, totals, pure and
//! unit-tested), [`flow`] (Refund / GetRefund / ListRefunds, sending to WeChat, the reconciler's
//! pass), [`notify`] (WeChat's refund notifies, v2 and v3) and [`store`] (their SQL).
//!
//! Rows of their own, written PENDING before WeChat is called; the order's refund totals move
//! in the same transaction as the refund's state.
//!
//! Three status types meet here, each for a reason: [`RefundState`] is our row's state (with
//! `PENDING`, which WeChat never says: not sent, or its answer lost); [`WxRefundStatus`] is what
//! WeChat says of a refund on either API, carrying the API's own failure word to keep on the
//! row; `wechat::pay::RefundStatus` is v2's wire value, owned by the `wechat` crate. One
//! settles the other through [`WxRefundStatus::settlement`].

pub mod flow;
pub mod notify;
pub mod rules;
pub mod store;

pub use flow::{RefundOrder, RefundReconcileReport};
pub use rules::{
    ABNORMAL_RECHECK_SECS, ABNORMAL_REFUND_BANK_TYPES, API_V2, AbnormalTarget, IN_FLIGHT,
    MAX_OUT_REFUND_NO_LEN, MAX_REASON_BYTES, MERCHANT_ACCOUNTS, ORIGIN_OUTSIDE, ORIGIN_WXMP,
    REFUNDABLE_STATES, Refund, RefundState, Refusal, WxRefundStatus, check_refund,
    new_out_refund_no, order_state_after, refundable_fen, settlement_of, valid_out_refund_no,
    was_paid,
};
pub(crate) use rules::{count, count_settled, register_metrics};
