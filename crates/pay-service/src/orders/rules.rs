//! What an order means: its states, its row, the checks on what callers send, order
//! numbers, and what a payment means for an order ([`PaidOutcome`]). Pure functions, no SQL.

use std::net::IpAddr;

use diesel::{Queryable, Selectable};
use rand::{Rng as _, distr::Alphanumeric};
use wxmp_proto::pay::v1 as pb;

use crate::{clock, error::Error, schema::orders};

/// Largest amount of one order: 1,000,000 yuan. Anything above is a bug in the caller.
pub const MAX_AMOUNT_FEN: i64 = 100_000_000;
/// WeChat's `body` limit.
pub const MAX_DESCRIPTION_BYTES: usize = 128;
/// WeChat's `attach` limit.
pub const MAX_ATTACH_BYTES: usize = 127;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Longest out_trade_no WeChat accepts.
pub const MAX_ORDER_NO_LEN: usize = 32;
/// Random characters after the date in an order number: 62^16 ≈ 2^95 per day.
const ORDER_NO_RANDOM_CHARS: usize = 16;

/// An order's state, stored as its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderState {
    Created,
    Paying,
    Paid,
    Closed,
    Refunding,
    Refunded,
}

impl OrderState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Paying => "PAYING",
            Self::Paid => "PAID",
            Self::Closed => "CLOSED",
            Self::Refunding => "REFUNDING",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CREATED" => Self::Created,
            "PAYING" => Self::Paying,
            "PAID" => Self::Paid,
            "CLOSED" => Self::Closed,
            "REFUNDING" => Self::Refunding,
            "REFUNDED" => Self::Refunded,
            _ => return None,
        })
    }

    fn to_proto(self) -> pb::OrderState {
        match self {
            Self::Created => pb::OrderState::Created,
            Self::Paying => pb::OrderState::Paying,
            Self::Paid => pb::OrderState::Paid,
            Self::Closed => pb::OrderState::Closed,
            Self::Refunding => pb::OrderState::Refunding,
            Self::Refunded => pb::OrderState::Refunded,
        }
    }
}

/// The states from which an order may still be paid or closed.
pub const OPEN_STATES: [&str; 2] = ["CREATED", "PAYING"];

/// A row of `orders`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct Order {
    pub id: i64,
    pub order_no: String,
    pub user_id: i64,
    pub app_id: String,
    pub openid: String,
    pub client_ip: String,
    pub amount_fen: i64,
    pub description: String,
    pub attach: String,
    pub product_id: String,
    pub state: String,
    pub prepay_id: String,
    pub prepay_expires_at: i64,
    pub prepared_at: i64,
    pub transaction_id: String,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub paid_at: Option<i64>,
    pub expires_at: i64,
    pub closed_at: Option<i64>,
    pub reconcile_lease_until: i64,
    pub next_query_at: i64,
    /// The notify_url of the first unifiedorder ('' for orders placed before it was kept).
    pub notify_url: String,
    /// The sign_type of the first unifiedorder, `MD5` or `HMAC-SHA256` ('' as above).
    pub sign_type: String,
    /// The random value of the current reconcile claim ('' when none).
    pub reconcile_lease_owner: String,
    /// Fen of refunds in flight (PENDING, PROCESSING).
    pub refunding_fen: i64,
    /// Fen refunded (SUCCESS).
    pub refunded_fen: i64,
    /// `v2` or `v3`: the WeChat Pay API of this order.
    pub api: String,
}

impl Order {
    /// The parsed state; the CHECK constraint keeps unknown names out of the table.
    pub fn state(&self) -> Option<OrderState> {
        OrderState::parse(&self.state)
    }

    /// The API this order is placed, queried and closed with (`orders.api`).
    pub fn pay_api(&self) -> crate::config::PayApi {
        if self.api == "v3" {
            crate::config::PayApi::V3
        } else {
            crate::config::PayApi::V2
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state(), Some(OrderState::Created | OrderState::Paying))
    }

    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }

    /// The order's prepay_id while WeChat still honours it and the order can be paid.
    pub fn live_prepay_id(&self, now: i64) -> Option<&str> {
        (!self.prepay_id.is_empty() && now < self.prepay_expires_at && now < self.expires_at)
            .then_some(self.prepay_id.as_str())
    }

    pub fn to_proto(&self) -> pb::Order {
        pb::Order {
            order_no: self.order_no.clone(),
            user_id: self.user_id,
            app_id: self.app_id.clone(),
            amount_fen: self.amount_fen,
            description: self.description.clone(),
            attach: self.attach.clone(),
            product_id: self.product_id.clone(),
            state: self
                .state()
                .map_or(pb::OrderState::Unspecified, OrderState::to_proto)
                as i32,
            transaction_id: self.transaction_id.clone(),
            created_at: self.created_at,
            paid_at: self.paid_at.unwrap_or(0),
            expires_at: self.expires_at,
            refunded_fen: self.refunded_fen,
            refunding_fen: self.refunding_fen,
            pay_api: self.api.clone(),
            shipping: None,
        }
    }
}

/// A new order's number: the China date (`yyyyMMdd`, for humans reading statements) and 16
/// characters of `[0-9A-Za-z]` from the thread-local CSPRNG, so numbers are neither sequential
/// nor guessable.
pub fn new_order_no(now: i64) -> String {
    let mut no = clock::china_date(now);
    no.extend(
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(ORDER_NO_RANDOM_CHARS)
            .map(char::from),
    );
    no
}

/// A fresh random value for a reconcile claim (see `store::claim`): two claims never share one,
/// so a replica can tell its own lease from the one that replaced it.
pub fn new_lease_owner() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(ORDER_NO_RANDOM_CHARS)
        .map(char::from)
        .collect()
}

/// The shape of every order number we issue: at most 32 characters of `[0-9A-Za-z]`.
pub fn valid_order_no(no: &str) -> bool {
    !no.is_empty() && no.len() <= MAX_ORDER_NO_LEN && no.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub(crate) fn check_text(
    name: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), Error> {
    if required && value.is_empty() {
        return Err(Error::MissingParameter(name));
    }
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{name} is longer than {max} bytes"
        )));
    }
    // Control characters cannot travel in WeChat's XML.
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{name} contains control characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_order_no(order_no: &str) -> Result<(), Error> {
    if order_no.is_empty() {
        return Err(Error::MissingParameter("order_no"));
    }
    if !valid_order_no(order_no) {
        return Err(Error::InvalidArgument("order_no is malformed".into()));
    }
    Ok(())
}

/// spbill_create_ip: the buyer's IP as the gateway saw it; "127.0.0.1" only when none is known.
pub(crate) fn check_client_ip(ip: &str) -> Result<String, Error> {
    let ip = ip.trim();
    if ip.is_empty() {
        return Ok("127.0.0.1".into());
    }
    ip.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| Error::InvalidArgument("client_ip is not an IP address".into()))
}

/// The error for an order that can no longer be paid or closed.
pub(crate) fn state_error(order: &Order, now: i64) -> Option<Error> {
    let message = match order.state() {
        Some(OrderState::Paid) => "order is already paid",
        Some(OrderState::Closed) => "order is closed",
        Some(OrderState::Refunding | OrderState::Refunded) => "order is refunded",
        None => "order is in an unknown state",
        Some(OrderState::Created | OrderState::Paying) if order.is_expired(now) => {
            "order has expired"
        }
        Some(OrderState::Created | OrderState::Paying) => return None,
    };
    Some(Error::OrderState(message.into()))
}

/// What an attempt to mark an order PAID found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaidOutcome {
    /// This call moved the order to PAID.
    Applied(Order),
    /// Already PAID with the same transaction: nothing changed.
    Duplicate(Order),
    /// Already PAID by another transaction: nothing changed; needs a human.
    OtherTransaction(Order),
    /// The order was CLOSED: the transaction is recorded on it for a manual refund.
    PaidAfterClose(Order),
    /// Any other state (REFUNDING, REFUNDED): nothing changed.
    Unexpected(Order),
}

impl PaidOutcome {
    pub fn order(&self) -> &Order {
        match self {
            Self::Applied(o)
            | Self::Duplicate(o)
            | Self::OtherTransaction(o)
            | Self::PaidAfterClose(o)
            | Self::Unexpected(o) => o,
        }
    }
}

/// The outcome of a payment for an order that is PAID or later (REFUNDING, REFUNDED), or in a
/// state nobody expects: nothing can change it any more.
pub fn settled_outcome(current: Order, transaction_id: &str) -> PaidOutcome {
    match current.state() {
        // PAID, or later (REFUNDING, REFUNDED) by this very transaction.
        _ if current.transaction_id == transaction_id => PaidOutcome::Duplicate(current),
        Some(OrderState::Paid) => PaidOutcome::OtherTransaction(current),
        _ => PaidOutcome::Unexpected(current),
    }
}

/// States an order never leaves for an open one (and never for CLOSED): a payment of such an
/// order changes nothing, so judging it needs no transaction.
pub fn is_settled(order: &Order) -> bool {
    matches!(
        order.state(),
        Some(OrderState::Paid | OrderState::Refunding | OrderState::Refunded)
    )
}

/// A genuine payment of a CLOSED order: the order stays CLOSED for a manual refund. When the
/// store `recorded` this transaction on it (only the first one is kept: a closed order is paid
/// at most once at WeChat), the row carries it from `now`.
pub fn paid_after_close(
    mut closed: Order,
    transaction_id: &str,
    now: i64,
    recorded: bool,
) -> PaidOutcome {
    if recorded {
        closed.transaction_id = transaction_id.to_owned();
        closed.updated_at = now;
    }
    PaidOutcome::PaidAfterClose(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_numbers_are_valid_and_distinct() {
        let now = 1_764_000_000; // 2025-11-24T16:00:00Z = 2025-11-25 00:00 in China
        let a = new_order_no(now);
        let b = new_order_no(now);
        assert_ne!(a, b);
        assert!(a.starts_with("20251125"), "{a}");
        assert_eq!(a.len(), 24);
        assert!(valid_order_no(&a));
        assert!(!valid_order_no(""));
        assert!(!valid_order_no("abc-1"));
        assert!(!valid_order_no(&"1".repeat(33)));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            OrderState::Created,
            OrderState::Paying,
            OrderState::Paid,
            OrderState::Closed,
            OrderState::Refunding,
            OrderState::Refunded,
        ] {
            assert_eq!(OrderState::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderState::parse("paid"), None);
    }

    fn order(state: OrderState, transaction_id: &str) -> Order {
        Order {
            state: state.as_str().into(),
            transaction_id: transaction_id.into(),
            ..Order::default()
        }
    }

    #[test]
    fn what_a_payment_means_for_an_order_that_cannot_move() {
        for state in [
            OrderState::Paid,
            OrderState::Refunding,
            OrderState::Refunded,
        ] {
            assert!(is_settled(&order(state, "t1")));
            assert!(matches!(
                settled_outcome(order(state, "t1"), "t1"),
                PaidOutcome::Duplicate(_)
            ));
        }
        for state in [OrderState::Created, OrderState::Paying, OrderState::Closed] {
            assert!(!is_settled(&order(state, "")));
        }
        assert!(matches!(
            settled_outcome(order(OrderState::Paid, "t1"), "t2"),
            PaidOutcome::OtherTransaction(_)
        ));
        assert!(matches!(
            settled_outcome(order(OrderState::Refunded, "t1"), "t2"),
            PaidOutcome::Unexpected(_)
        ));
        let kept = paid_after_close(order(OrderState::Closed, ""), "t9", 77, true);
        assert_eq!(
            (
                kept.order().transaction_id.as_str(),
                kept.order().updated_at
            ),
            ("t9", 77)
        );
        let second = paid_after_close(order(OrderState::Closed, "t9"), "t10", 78, false);
        assert_eq!(second.order().transaction_id, "t9");
        assert_eq!(second.order().state(), Some(OrderState::Closed));
    }
}
