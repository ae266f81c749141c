//! What a refund means: its states, its row, and the rules that decide whether an order may
//! be refunded and which state the order shows. Pure functions, no SQL and no I/O: the SQL
//! lives in [`super::store`], the flow (WeChat calls, reconciling) in [`super::flow`] and the
//! notifies in [`super::notify`].
//!
//! Refund states: `PENDING` (written before WeChat is called) → `PROCESSING` (WeChat accepted
//! it) → `SUCCESS` | `FAILED` | `CLOSED`; `PENDING` may also go straight to a final state (a
//! refusal, or a notify/query that overtook the answer). `ABNORMAL` (v2 `CHANGE`, v3
//! `ABNORMAL`, 退款异常) is not final: WeChat took the money from the merchant's account and
//! holds it in its intermediate refund account ("退款资金会停留在退款的中间账户内") until the
//! merchant re-routes it (merchant platform, or v3 `apply-abnormal-refund`)
//! (<https://pay.weixin.qq.com/doc/v3/merchant/4013071031>, 开发指引 2.3/2.4;
//! <https://pay.weixin.qq.com/docs/merchant/apis/refund/refunds/create-abnormal-refund.html>).
//! It keeps its amount reserved and is queried at a slower cadence; a later `SUCCESS` settles
//! it as refunded, `CLOSED` releases it.
//!
//! The order keeps two totals: `refunding_fen` (refunds in flight, abnormal ones included) and `refunded_fen`
//! (refunds settled SUCCESS), with `refunding_fen + refunded_fen <= amount_fen`. Its state
//! follows them ([`order_state_after`]): `REFUNDING` while any refund is in flight,
//! `REFUNDED` once everything is refunded, otherwise what it was before refunds (`PAID`, or
//! `CLOSED` for an order paid after it was closed). A partly refunded order is therefore
//! `PAID` with `refunded_fen > 0`.

use diesel::{Queryable, Selectable};
use rand::{Rng as _, distr::Alphanumeric};
use wechat::pay::RefundStatus;
use wxmp_proto::pay::v1 as pb;

use crate::{
    clock,
    orders::{Order, OrderState},
    schema::refunds,
};

/// WeChat's `refund_desc` limit (80 characters; we count bytes, which is stricter).
pub const MAX_REASON_BYTES: usize = 80;
/// WeChat's `out_refund_no` limit.
pub const MAX_OUT_REFUND_NO_LEN: usize = 64;
/// `refunds.api` of a refund recorded from v2's refundquery (refunds made elsewhere).
pub const API_V2: &str = "v2";
/// `refunds.origin` of a refund asked for through wxmp.
pub const ORIGIN_WXMP: &str = "wxmp";
/// `refunds.origin` of a refund made outside wxmp (e.g. in the merchant platform) that WeChat's
/// v2 refundquery of its order reported: recorded so the order's totals count it.
pub const ORIGIN_OUTSIDE: &str = "outside";
/// WeChat's `user_received_account` of a refund re-routed to the merchant's bank account
/// ("退还商户: 商户基本账户、商户结算银行账户", 退款结果通知,
/// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>): SUCCESS at WeChat, yet the payer
/// did not get the money.
pub const MERCHANT_ACCOUNTS: [&str; 2] = ["商户基本账户", "商户结算银行账户"];
/// The banks whose debit cards 发起异常退款 can send money to (`bank_type`, USER_BANK_CARD):
/// "仅支持招行、交通银行、农行、建行、工商、中行、平安、浦发、中信、光大、民生、兴业、广发、邮储、宁波银行的借记卡"
/// (<https://pay.weixin.qq.com/docs/merchant/apis/refund/refunds/create-abnormal-refund.html>;
/// the identifiers as WeChat's API lists them, <https://wechatpay.im/openapi/v3/refund/domestic/refunds/%7Brefund_id%7D/apply-abnormal-refund>).
pub const ABNORMAL_REFUND_BANK_TYPES: [&str; 15] = [
    "CMB_DEBIT",
    "COMM_DEBIT",
    "ABC_DEBIT",
    "CCB_DEBIT",
    "ICBC_DEBIT",
    "BOC_DEBIT",
    "PAB_DEBIT",
    "SPDB_DEBIT",
    "CITIC_DEBIT",
    "CEB_DEBIT",
    "CMBC_DEBIT",
    "CIB_DEBIT",
    "GDB_DEBIT",
    "PSBC_DEBIT",
    "NBCB_DEBIT",
];

/// Where 发起异常退款 sends an abnormal refund's money (WeChat's `type`).
#[derive(Clone, PartialEq, Eq)]
pub enum AbnormalTarget {
    /// USER_BANK_CARD: the payer's debit card. Card number and name are personal data: never
    /// logged (no `Debug` of them) nor stored.
    UserBankCard {
        bank_type: String,
        bank_account: String,
        real_name: String,
    },
    /// MERCHANT_BANK_CARD: the merchant's bank account.
    MerchantBankCard,
}

impl std::fmt::Debug for AbnormalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserBankCard { bank_type, .. } => {
                write!(f, "UserBankCard {{ bank_type: {bank_type:?}, .. }}")
            }
            Self::MerchantBankCard => f.write_str("MerchantBankCard"),
        }
    }
}

impl AbnormalTarget {
    /// WeChat's `type`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::UserBankCard { .. } => "USER_BANK_CARD",
            Self::MerchantBankCard => "MERCHANT_BANK_CARD",
        }
    }

    /// Checks the payer's card details as WeChat requires them ("若退款至用户此字段必填").
    pub fn check(&self) -> Result<(), String> {
        let Self::UserBankCard {
            bank_type,
            bank_account,
            real_name,
        } = self
        else {
            return Ok(());
        };
        if !ABNORMAL_REFUND_BANK_TYPES.contains(&bank_type.as_str()) {
            return Err(format!(
                "bank_type must be one of {}",
                ABNORMAL_REFUND_BANK_TYPES.join(", ")
            ));
        }
        if !(8..=30).contains(&bank_account.len())
            || !bank_account.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("bank_account must be 8 to 30 digits".into());
        }
        if real_name.trim().is_empty()
            || real_name.chars().count() > 64
            || real_name.chars().any(char::is_control)
        {
            return Err("real_name must be 1 to 64 characters without control characters".into());
        }
        Ok(())
    }
}

/// Random characters after `R` + the date in a generated out_refund_no.
const OUT_REFUND_NO_RANDOM_CHARS: usize = 16;

/// The order states a refund may start from (besides a CLOSED order that was paid anyway).
pub const REFUNDABLE_STATES: [&str; 2] = ["PAID", "REFUNDING"];
/// Refund states still waiting for WeChat (their amount reserved on the order).
pub const IN_FLIGHT: [&str; 3] = ["PENDING", "PROCESSING", "ABNORMAL"];
/// How long the reconciler waits between queries of an ABNORMAL refund: it waits on a person
/// (re-routing in the merchant platform), so WeChat is asked hourly, not every pass (WeChat's
/// own guide decays polling of slow refunds to 30-minute steps).
pub const ABNORMAL_RECHECK_SECS: i64 = 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefundState {
    Pending,
    Processing,
    /// Accepted, then abnormal at WeChat (v2 CHANGE, v3 ABNORMAL): the money is held by
    /// WeChat; not final, the amount stays reserved.
    Abnormal,
    Success,
    Failed,
    Closed,
}

impl RefundState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Abnormal => "ABNORMAL",
            Self::Success => "SUCCESS",
            Self::Failed => "FAILED",
            Self::Closed => "CLOSED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "PROCESSING" => Self::Processing,
            "ABNORMAL" => Self::Abnormal,
            "SUCCESS" => Self::Success,
            "FAILED" => Self::Failed,
            "CLOSED" => Self::Closed,
            _ => return None,
        })
    }

    /// SUCCESS, FAILED and CLOSED never change again.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Closed)
    }

    /// Reaching this state writes an outbox event: the final states and ABNORMAL.
    pub const fn has_event(self) -> bool {
        self.is_final() || matches!(self, Self::Abnormal)
    }

    /// The states a refund may move to `self` from: every in-flight state but `self` (so a
    /// repeated ABNORMAL changes nothing and writes no second event).
    pub fn moves_from(self) -> Vec<Self> {
        [Self::Pending, Self::Processing, Self::Abnormal]
            .into_iter()
            .filter(|s| *s != self)
            .collect()
    }

    fn to_proto(self) -> pb::RefundState {
        match self {
            Self::Pending => pb::RefundState::RefundPending,
            Self::Processing => pb::RefundState::RefundProcessing,
            Self::Abnormal => pb::RefundState::RefundAbnormal,
            Self::Success => pb::RefundState::RefundSuccess,
            Self::Failed => pb::RefundState::RefundFailed,
            Self::Closed => pb::RefundState::RefundClosed,
        }
    }
}

/// A row of `refunds`.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = refunds)]
pub struct Refund {
    pub id: i64,
    pub out_refund_no: String,
    pub order_no: String,
    pub amount_fen: i64,
    pub reason: String,
    pub state: String,
    pub api: String,
    pub refund_id: String,
    pub failure: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub settled_at: Option<i64>,
    pub next_check_at: i64,
    /// The refund notify URL bound at creation ('' on rows older than the binding: the
    /// configured one).
    pub notify_url: String,
    /// [`ORIGIN_WXMP`] or [`ORIGIN_OUTSIDE`].
    pub origin: String,
    /// Where WeChat says the money went (v3 `user_received_account`), once it says.
    pub received_account: String,
}

impl Refund {
    pub fn state(&self) -> Option<RefundState> {
        RefundState::parse(&self.state)
    }

    pub fn to_proto(&self) -> pb::RefundRecord {
        pb::RefundRecord {
            out_refund_no: self.out_refund_no.clone(),
            order_no: self.order_no.clone(),
            amount_fen: self.amount_fen,
            reason: self.reason.clone(),
            state: self
                .state()
                .map_or(pb::RefundState::Unspecified, RefundState::to_proto)
                as i32,
            refund_id: self.refund_id.clone(),
            failure: self.failure.clone(),
            api: self.api.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            settled_at: self.settled_at.unwrap_or(0),
            origin: self.origin.clone(),
            received_account: self.received_account.clone(),
        }
    }

    /// A repeat of the refund that made this row (same key, same order, amount and reason).
    pub fn is_same_request(&self, order_no: &str, amount_fen: i64, reason: &str) -> bool {
        self.order_no == order_no && self.amount_fen == amount_fen && self.reason == reason
    }
}

/// Why an order cannot take a refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not paid (CREATED, PAYING, or CLOSED unpaid).
    NotPaid,
    /// More than what is left to refund.
    ExceedsPaid { left_fen: i64 },
}

/// True when money was received for `order`: PAID (or later), or CLOSED with a payment that
/// arrived after the close.
pub fn was_paid(order: &Order) -> bool {
    match order.state() {
        Some(OrderState::Paid | OrderState::Refunding | OrderState::Refunded) => true,
        Some(OrderState::Closed) => !order.transaction_id.is_empty(),
        _ => false,
    }
}

/// Fen still refundable: paid minus refunded minus in flight.
pub fn refundable_fen(order: &Order) -> i64 {
    if was_paid(order) {
        (order.amount_fen - order.refunded_fen - order.refunding_fen).max(0)
    } else {
        0
    }
}

/// Whether `order` may take a refund of `amount_fen` now. The store re-checks the same rule
/// atomically in the UPDATE that reserves the amount.
pub fn check_refund(order: &Order, amount_fen: i64) -> Result<(), Refusal> {
    if !was_paid(order) {
        return Err(Refusal::NotPaid);
    }
    let left_fen = refundable_fen(order);
    if amount_fen > left_fen {
        return Err(Refusal::ExceedsPaid { left_fen });
    }
    Ok(())
}

/// The state an order shows given its refund totals (see the module docs).
pub fn order_state_after(order: &Order) -> OrderState {
    if order.refunding_fen > 0 {
        OrderState::Refunding
    } else if order.refunded_fen >= order.amount_fen {
        OrderState::Refunded
    } else if order.closed_at.is_some() {
        // Paid after it was closed: it stays CLOSED (see the notify verdict paid_after_close).
        OrderState::Closed
    } else {
        OrderState::Paid
    }
}

/// Where a refund stands at WeChat, whatever the API; the failure text is the word of the API
/// that carries the refund (the refund's `api` says which), as an operator finds it in
/// WeChat's documents and merchant platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WxRefundStatus {
    /// Accepted, not settled yet.
    Processing,
    /// The money is back with the payer.
    Success,
    /// The money could not reach the payer and is held by WeChat until the merchant re-routes
    /// it: v2 `CHANGE`, v3 `ABNORMAL` (退款异常). Not a failure (see the module docs).
    Abnormal(&'static str),
    /// Closed without refunding: v2 `REFUNDCLOSE`, v3 `CLOSED`.
    Closed(&'static str),
}

impl WxRefundStatus {
    /// v2's `refund_status`.
    pub const fn from_v2(status: RefundStatus) -> Self {
        match status {
            RefundStatus::Success => Self::Success,
            RefundStatus::Change => Self::Abnormal("CHANGE"),
            RefundStatus::RefundClose => Self::Closed("REFUNDCLOSE"),
            RefundStatus::Processing => Self::Processing,
        }
    }

    /// v3's `status` (查询单笔退款, e.g. <https://pay.wechatpay.cn/doc/v3/partner/4012760530>)
    /// or `refund_status` (退款结果通知, <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>):
    /// SUCCESS, CLOSED, PROCESSING, ABNORMAL.
    pub fn from_v3(status: &str) -> Option<Self> {
        Some(match status {
            "SUCCESS" => Self::Success,
            "PROCESSING" => Self::Processing,
            "ABNORMAL" => Self::Abnormal("ABNORMAL"),
            "CLOSED" => Self::Closed("CLOSED"),
            _ => return None,
        })
    }

    /// The state this status moves a refund to (final, or ABNORMAL), with the failure text
    /// to keep; `None` while WeChat is still processing.
    pub const fn settlement(self) -> Option<(RefundState, &'static str)> {
        match self {
            Self::Success => Some((RefundState::Success, "")),
            Self::Abnormal(why) => Some((RefundState::Abnormal, why)),
            Self::Closed(why) => Some((RefundState::Closed, why)),
            Self::Processing => None,
        }
    }
}

/// What v2's `refund_status` settles a refund to, with the failure text to keep.
pub fn settlement_of(status: RefundStatus) -> Option<(RefundState, &'static str)> {
    WxRefundStatus::from_v2(status).settlement()
}

/// A new out_refund_no: `R`, the China date, 16 random `[0-9A-Za-z]`.
pub fn new_out_refund_no(now: i64) -> String {
    let mut no = String::from("R");
    no.push_str(&clock::china_date(now));
    no.extend(
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(OUT_REFUND_NO_RANDOM_CHARS)
            .map(char::from),
    );
    no
}

/// WeChat's shape of an out_refund_no: 1..=64 of `[0-9A-Za-z_-|*@]`.
pub fn valid_out_refund_no(no: &str) -> bool {
    !no.is_empty()
        && no.len() <= MAX_OUT_REFUND_NO_LEN
        && no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
}

/// `wxmp_refunds_total{event}`: requested, succeeded, failed, closed, abnormal, rerouted
/// (ApplyAbnormalRefund taken by WeChat) (alert on any
/// `abnormal`: its money waits at WeChat for an operator).
pub(crate) fn count(event: &'static str) {
    metrics::counter!("wxmp_refunds_total", "event" => event).increment(1);
}

/// Exports `wxmp_refunds_total{event="abnormal"}` at 0 from the start, so that the first
/// abnormal refund is an `increase()` the alert rule (WxmpRefundAbnormal) sees.
pub(crate) fn register_metrics() {
    metrics::counter!("wxmp_refunds_total", "event" => "abnormal").increment(0);
}

/// Counts a refund reaching `state`.
pub(crate) fn count_settled(state: RefundState) {
    match state {
        RefundState::Success => count("succeeded"),
        RefundState::Failed => count("failed"),
        RefundState::Closed => count("closed"),
        RefundState::Abnormal => count("abnormal"),
        RefundState::Pending | RefundState::Processing => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(state: &str, amount: i64, refunding: i64, refunded: i64) -> Order {
        Order {
            id: 1,
            order_no: "20261201a".into(),
            user_id: 1,
            app_id: "wx".into(),
            openid: "o".into(),
            client_ip: String::new(),
            amount_fen: amount,
            description: "d".into(),
            attach: String::new(),
            product_id: String::new(),
            state: state.into(),
            prepay_id: String::new(),
            prepay_expires_at: 0,
            prepared_at: 0,
            transaction_id: String::new(),
            idempotency_key: None,
            created_at: 0,
            updated_at: 0,
            paid_at: None,
            expires_at: 0,
            closed_at: None,
            reconcile_lease_until: 0,
            next_query_at: 0,
            notify_url: String::new(),
            sign_type: String::new(),
            reconcile_lease_owner: String::new(),
            refunding_fen: refunding,
            refunded_fen: refunded,
            api: "v2".into(),
        }
    }

    #[test]
    fn only_paid_orders_refund_and_never_beyond_the_amount() {
        assert_eq!(check_refund(&order("PAID", 100, 0, 0), 100), Ok(()));
        assert_eq!(
            check_refund(&order("PAID", 100, 30, 20), 51),
            Err(Refusal::ExceedsPaid { left_fen: 50 })
        );
        assert_eq!(check_refund(&order("REFUNDING", 100, 30, 20), 50), Ok(()));
        for unpaid in ["CREATED", "PAYING", "CLOSED"] {
            assert_eq!(
                check_refund(&order(unpaid, 100, 0, 0), 1),
                Err(Refusal::NotPaid)
            );
        }
        let mut paid_after_close = order("CLOSED", 100, 0, 0);
        paid_after_close.transaction_id = "4200".into();
        assert_eq!(check_refund(&paid_after_close, 100), Ok(()));
        assert_eq!(
            check_refund(&order("REFUNDED", 100, 0, 100), 1),
            Err(Refusal::ExceedsPaid { left_fen: 0 })
        );
    }

    #[test]
    fn the_order_state_follows_the_totals() {
        assert_eq!(
            order_state_after(&order("PAID", 100, 10, 0)),
            OrderState::Refunding
        );
        assert_eq!(
            order_state_after(&order("REFUNDING", 100, 0, 10)),
            OrderState::Paid
        );
        assert_eq!(
            order_state_after(&order("REFUNDING", 100, 0, 100)),
            OrderState::Refunded
        );
        assert_eq!(
            order_state_after(&order("REFUNDING", 100, 0, 0)),
            OrderState::Paid
        );
        let mut closed = order("REFUNDING", 100, 0, 40);
        closed.closed_at = Some(5);
        assert_eq!(order_state_after(&closed), OrderState::Closed);
    }

    #[test]
    fn abnormal_refund_targets_are_checked_as_wechat_requires() {
        let user = |bank: &str, account: &str, name: &str| AbnormalTarget::UserBankCard {
            bank_type: bank.into(),
            bank_account: account.into(),
            real_name: name.into(),
        };
        assert_eq!(
            user("ICBC_DEBIT", "6222020202020202", "张三").check(),
            Ok(())
        );
        assert_eq!(AbnormalTarget::MerchantBankCard.check(), Ok(()));
        assert_eq!(
            AbnormalTarget::MerchantBankCard.kind(),
            "MERCHANT_BANK_CARD"
        );
        for bad in [
            user("ICBC_CREDIT", "6222020202020202", "张三"),
            user("ICBC_DEBIT", "6222-0202", "张三"),
            user("ICBC_DEBIT", "1234567", "张三"),
            user("ICBC_DEBIT", "6222020202020202", " "),
            user("ICBC_DEBIT", "6222020202020202", "a\nb"),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        // Card details never reach a log line through Debug.
        let shown = format!("{:?}", user("ICBC_DEBIT", "6222020202020202", "张三"));
        assert!(
            !shown.contains("6222") && !shown.contains("张三"),
            "{shown}"
        );
    }

    #[test]
    fn out_refund_numbers() {
        let a = new_out_refund_no(1_764_000_000);
        assert!(a.starts_with("R20251125"), "{a}");
        assert!(valid_out_refund_no(&a));
        assert_ne!(a, new_out_refund_no(1_764_000_000));
        assert!(valid_out_refund_no("shop-42|a*b@c_d"));
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_out_refund_no(bad), "{bad}");
        }
    }

    #[test]
    fn wechat_statuses_settle() {
        // CHANGE / ABNORMAL are held by WeChat, not failed (issue 23).
        assert_eq!(
            settlement_of(RefundStatus::Change),
            Some((RefundState::Abnormal, "CHANGE"))
        );
        assert_eq!(settlement_of(RefundStatus::Processing), None);
        assert_eq!(
            WxRefundStatus::from_v3("ABNORMAL").and_then(WxRefundStatus::settlement),
            Some((RefundState::Abnormal, "ABNORMAL"))
        );
        assert_eq!(
            WxRefundStatus::from_v3("CLOSED").and_then(WxRefundStatus::settlement),
            Some((RefundState::Closed, "CLOSED"))
        );
        assert_eq!(
            WxRefundStatus::from_v3("SUCCESS").and_then(WxRefundStatus::settlement),
            Some((RefundState::Success, ""))
        );
        assert_eq!(
            WxRefundStatus::from_v3("PROCESSING"),
            Some(WxRefundStatus::Processing)
        );
        assert_eq!(WxRefundStatus::from_v3("CHANGE"), None);
        assert!(!RefundState::Abnormal.is_final());
        assert_eq!(
            RefundState::Abnormal.moves_from(),
            [RefundState::Pending, RefundState::Processing]
        );
        for s in [
            "PENDING",
            "PROCESSING",
            "ABNORMAL",
            "SUCCESS",
            "FAILED",
            "CLOSED",
        ] {
            assert_eq!(RefundState::parse(s).map(RefundState::as_str), Some(s));
        }
    }
}
