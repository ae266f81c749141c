//! Shipping (issue 25): WeChat keeps a payment's money frozen until the merchant uploads the
//! order's shipping information (`upload_shipping_info`) and the user confirms receipt (or a
//! timeout passes); then it settles. Both later steps arrive as message pushes.
//!
//! | file | what it holds |
//! |---|---|
//! | [`rules`] | shipping states, what a Ship request may be (WeChat's rules), upload backoff, what a push means (pure) |
//! | [`flow`] | `Ship` (first upload or the one modification) and the order's shipping state for GetOrder |
//! | [`store`] | the `shipments` and `message_pushes` SQL (conditional UPDATEs, outbox rows in the same transaction) |
//! | [`worker`] | the uploader: claims due uploads with a lease, calls WeChat, retries with backoff; queues paid orders of virtual products |
//! | [`push`] | `HandleMessagePush`: the table of events pay-service owns (event name → handler), dedup by key |
//!
//! States: `PENDING_UPLOAD → SHIPPED → RECEIVED → SETTLED`, and `SHIPPED → PENDING_UPLOAD` once
//! more for WeChat's one modification. The shipping state sits beside the payment state and
//! never changes it. `ORDER_SHIPPED`, `ORDER_RECEIVED` and `ORDER_SETTLED` go to the outbox
//! with the change.

pub mod flow;
pub mod push;
pub mod rules;
pub mod store;
pub mod worker;

pub use rules::{ShipParcel, ShipRequest, Shipment, ShippingState};
