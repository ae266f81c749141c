//! The JSON bodies of the v3 calls wxmp makes (JSAPI下单, 查询订单, 申请退款, 查询单笔退款).

use serde::{Deserialize, Serialize};

use crate::pay::api::TradeState;
use crate::pay::v3::error::V3Error;

/// `amount` of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAmount {
    /// Fen.
    pub total: i64,
    #[serde(default = "cny")]
    pub currency: String,
}

fn cny() -> String {
    "CNY".to_owned()
}

/// `payer` of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    pub openid: String,
}

/// `POST /v3/pay/transactions/jsapi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsapiOrder {
    pub appid: String,
    pub mchid: String,
    pub description: String,
    pub out_trade_no: String,
    /// RFC 3339 with the China offset, e.g. `2026-12-01T10:00:00+08:00`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_expire: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach: Option<String>,
    pub notify_url: String,
    pub amount: OrderAmount,
    pub payer: Payer,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PrepayResponse {
    pub prepay_id: String,
}

/// `amount` of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionAmount {
    #[serde(default)]
    pub total: Option<i64>,
    #[serde(default)]
    pub payer_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// A transaction, as `GET /v3/pay/transactions/out-trade-no/{no}` answers and as the decrypted
/// resource of a `TRANSACTION.SUCCESS` notify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub trade_type: Option<String>,
    pub trade_state: String,
    #[serde(default)]
    pub trade_state_desc: Option<String>,
    #[serde(default)]
    pub attach: Option<String>,
    /// RFC 3339, once paid.
    #[serde(default)]
    pub success_time: Option<String>,
    #[serde(default)]
    pub payer: Option<Payer>,
    #[serde(default)]
    pub amount: Option<TransactionAmount>,
}

impl Transaction {
    /// `trade_state` as the same enum v2 uses (v3 keeps v2's values).
    pub fn state(&self) -> Result<TradeState, V3Error> {
        self.trade_state
            .parse()
            .map_err(|_| V3Error::BadResponse(format!("unknown trade_state {}", self.trade_state)))
    }

    /// The paid amount in fen (`amount.total`).
    pub fn total(&self) -> Option<i64> {
        self.amount.as_ref().and_then(|a| a.total)
    }

    /// `success_time` as unix seconds.
    pub fn success_unix(&self) -> Option<i64> {
        self.success_time.as_deref().and_then(rfc3339_unix)
    }
}

/// `amount` of a refund request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAmountRequest {
    pub refund: i64,
    pub total: i64,
    pub currency: String,
}

/// `POST /v3/refund/domestic/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub out_trade_no: String,
    pub out_refund_no: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
    pub amount: RefundAmountRequest,
}

/// `amount` of a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAmount {
    pub total: i64,
    pub refund: i64,
    #[serde(default)]
    pub payer_refund: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// A refund, as 申请退款 and 查询单笔退款 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub out_refund_no: String,
    #[serde(default)]
    pub transaction_id: Option<String>,
    pub out_trade_no: String,
    /// `SUCCESS`, `CLOSED`, `PROCESSING` or `ABNORMAL`.
    pub status: String,
    #[serde(default)]
    pub success_time: Option<String>,
    pub amount: RefundAmount,
    /// Where the money went (退款入账账户), e.g. 支付用户零钱, a card, 商户结算银行账户.
    #[serde(default)]
    pub user_received_account: Option<String>,
}

/// The body of 发起异常退款 (`POST /v3/refund/domestic/refunds/{refund_id}/
/// apply-abnormal-refund`, <https://pay.weixin.qq.com/docs/merchant/apis/refund/refunds/create-abnormal-refund.html>):
/// `type` USER_BANK_CARD (with `bank_type`, and `bank_account` / `real_name` sealed with
/// [`crate::pay::v3::PublicKey::encrypt_sensitive`]) or MERCHANT_BANK_CARD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbnormalRefundRequest {
    pub out_refund_no: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_name: Option<String>,
}

/// `amount` of a refund notify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNoticeAmount {
    pub total: i64,
    pub refund: i64,
    #[serde(default)]
    pub payer_total: Option<i64>,
    #[serde(default)]
    pub payer_refund: Option<i64>,
}

/// The decrypted resource of a `REFUND.SUCCESS` / `REFUND.ABNORMAL` / `REFUND.CLOSED` notify
/// (退款结果通知, <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>): `refund_status`, not
/// the `status` of 查询单笔退款.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundNotice {
    pub mchid: String,
    pub out_trade_no: String,
    #[serde(default)]
    pub transaction_id: Option<String>,
    pub out_refund_no: String,
    pub refund_id: String,
    /// `SUCCESS`, `CLOSED` or `ABNORMAL`.
    pub refund_status: String,
    #[serde(default)]
    pub success_time: Option<String>,
    #[serde(default)]
    pub user_received_account: Option<String>,
    pub amount: RefundNoticeAmount,
}

/// RFC 3339 (`2026-12-01T10:00:00+08:00`) as unix seconds.
pub fn rfc3339_unix(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp())
}

/// Unix seconds as RFC 3339 in China time, as v3 writes `time_expire`.
pub fn unix_rfc3339(unix_secs: i64) -> String {
    let china = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    chrono::DateTime::from_timestamp(unix_secs, 0)
        .unwrap_or_default()
        .with_timezone(&china)
        .to_rfc3339()
}
