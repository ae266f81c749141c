//! Orders, side by side: [`rules`] (order states, the shape of an order, what a payment means:
//! pure and unit-tested), [`flow`] (CreateOrder, PrepareJsapiPayment, GetOrder, CloseOrder,
//! syncing with WeChat), [`notify`] (WeChat's pay notifies, v2 and v3), [`store`] (the SQL of
//! orders and notifies) and [`reconciler`] (lost notifies and expired orders).
//!
//! Order states: `CREATED → PAYING (prepay_id held) → PAID`, `CREATED|PAYING → CLOSED`; refunds
//! move a paid order to `REFUNDING`/`REFUNDED` (see [`crate::refunds`]). Each transition is
//! one conditional UPDATE, so a notify, the reconciler and CloseOrder racing on the same order
//! change it at most once.

pub mod flow;
pub mod notify;
pub mod reconciler;
pub mod rules;
pub mod store;

pub use flow::{CreateOrder, MIN_PAY_WINDOW_SECS, PREPAY_REUSE_SECS, PayTarget, Payer};
pub use notify::{NotifyReply, NotifyV3Reply};
pub use reconciler::ReconcileReport;
pub use rules::{
    MAX_AMOUNT_FEN, MAX_ATTACH_BYTES, MAX_DESCRIPTION_BYTES, MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_ORDER_NO_LEN, OPEN_STATES, Order, OrderState, PaidOutcome, new_lease_owner, new_order_no,
    valid_order_no,
};
