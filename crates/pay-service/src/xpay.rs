//! Virtual payment (虚拟支付, issue 26): catalog products sold through `wx.requestVirtualPayment`
//! (道具直购) instead of JSAPI WeChat Pay, as WeChat requires for virtual goods.
//!
//! | file | what it holds |
//! |---|---|
//! | [`rules`] | the xpay settings, which products are sold this way, what a delivery push must match (pure) |
//! | [`flow`] | `PrepareJsapiPayment` for such a product: the order, bound to the payer, and the `requestVirtualPayment` parameters signed with the AppKey and the user's session_key (from auth-service) |
//! | [`push`] | `xpay_goods_deliver_notify`: checked against the order, then the order's one PAID transition |
//! | [`meter`] | the delivery pushes' and `query_order`'s metrics, the virtual orders waiting for delivery |
//! | [`coins`] | coin mode (代币): coin products' `requestVirtualPayment` parameters, `xpay_coin_pay_notify` |
//! | [`spends`] | coin mode for a shop service: a user's balance, spending coins once per key (`coin_spends`), the undo |
//! | [`refund`] | refunds of virtual orders: `refund_order` (sent by the refund flow), `xpay_refund_notify` and `query_order` settling them under the refunds' ledger |
//!
//! A virtual order is an ordinary order bound with `sign_type = XPAY`: JSAPI never pays it,
//! and the PAID transition is the orders' own conditional UPDATE with ORDER_PAID in the outbox,
//! so a push retried or delivered to several replicas pays it once.

pub mod coins;
pub mod flow;
pub mod meter;
pub mod push;
pub mod refund;
pub mod rules;
pub mod spends;

pub use rules::{XPAY_SIGN_TYPE, XpaySettings};
