//! The one interface pay-service talks to WeChat Pay through: place an order, query it, close
//! it, build the `wx.requestPayment` parameters, send a refund and ask about it, with a v2
//! (XML, [`v2`]) and a v3 (JSON, RSA, [`v3`]) implementation. Each order records the API that
//! places it (`orders.api`), and each refund the API that carries it (`refunds.api`, the
//! order's), so switching `WXMP_PAY_API` strands neither. Failures of both APIs become one
//! [`WxError`] ([`RefundCallError`] for refunds, which must keep WeChat's code; see
//! [`errors`]); metrics and the mapping to [`crate::Error`] live here too.

pub mod errors;
mod v2;
mod v3;

use service_kit::Secret;
use wechat::{
    PayConfig, SignType, WechatClient,
    pay::{RequestPaymentParams, TradeState, v3::V3Client},
};

pub use errors::{
    RefundCallError, WxError, is_duplicate_order, is_err_code, map_error, map_refund_error,
    map_wx_error,
};
pub(crate) use v3::v3_missing;
use v3::v3_notify_url;

use crate::{config::PayApi, refunds::WxRefundStatus};

/// The merchant and the clients that speak for it.
#[derive(Clone, Debug)]
pub struct WechatPay {
    client: WechatClient,
    mch_id: String,
    key: Secret,
    sign_type: SignType,
    notify_url: String,
    /// The API new orders are placed with.
    api: PayApi,
    v3: Option<V3Client>,
}

impl WechatPay {
    pub fn new(
        client: WechatClient,
        mch_id: String,
        key: Secret,
        sign_type: SignType,
        notify_url: String,
    ) -> Self {
        Self {
            client,
            mch_id,
            key,
            sign_type,
            notify_url,
            api: PayApi::V2,
            v3: None,
        }
    }

    /// The WeChat client (v2 calls; bills).
    pub fn client(&self) -> &WechatClient {
        &self.client
    }

    pub fn mch_id(&self) -> &str {
        &self.mch_id
    }

    pub fn notify_url(&self) -> &str {
        &self.notify_url
    }

    /// The configured sign type (`WXMP_PAY_SIGN_TYPE`): what new orders are placed with.
    pub fn sign_type(&self) -> SignType {
        self.sign_type
    }

    /// The merchant as seen through one mini program (orders are placed per appid).
    pub fn config_for(&self, appid: &str) -> PayConfig {
        PayConfig {
            appid: appid.to_owned(),
            mch_id: self.mch_id.clone(),
            key: self.key.expose().to_owned(),
            sign_type: self.sign_type,
        }
    }

    /// True when refunds of orders placed with `api` can be sent: v2 needs the merchant
    /// certificate (mutual TLS), v3 its configuration (every call is signed).
    pub fn can_refund(&self, api: PayApi) -> bool {
        match api {
            PayApi::V2 => self.client.has_merchant_cert(),
            PayApi::V3 => self.v3.is_some(),
        }
    }

    /// Adds Pay v3: built whenever its settings are present, whatever API new orders use, so
    /// that v3 orders keep being queried, closed, refunded and notified after a switch back to
    /// v2.
    pub fn with_v3(mut self, v3: V3Client) -> Self {
        self.v3 = Some(v3);
        self
    }

    /// `api` is the API new orders are placed with (`WXMP_PAY_API`).
    pub fn with_api(mut self, api: PayApi) -> Self {
        self.api = api;
        self
    }

    /// The API new orders are placed with.
    pub fn api(&self) -> PayApi {
        self.api
    }

    pub fn v3(&self) -> Option<&V3Client> {
        self.v3.as_ref()
    }

    /// Where WeChat sends the v3 notifies: `PAY_NOTIFY_URL` + `/v3`.
    pub fn notify_url_v3(&self) -> String {
        v3_notify_url(&self.notify_url)
    }

    /// JSAPI order with `api`: the prepay_id.
    pub async fn place_order(
        &self,
        api: PayApi,
        order: &PlaceOrder<'_>,
    ) -> Result<String, WxError> {
        match api {
            PayApi::V2 => self.place_order_v2(order).await,
            PayApi::V3 => self.place_order_v3(order).await,
        }
    }

    /// Asks WeChat about an order placed with `api`.
    pub async fn query(
        &self,
        api: PayApi,
        appid: &str,
        out_trade_no: &str,
    ) -> Result<Queried, WxError> {
        match api {
            PayApi::V2 => self.query_v2(appid, out_trade_no).await,
            PayApi::V3 => self.query_v3(appid, out_trade_no).await,
        }
    }

    /// Closes an order placed with `api`.
    pub async fn close(&self, api: PayApi, appid: &str, out_trade_no: &str) -> Result<(), WxError> {
        match api {
            PayApi::V2 => self.close_v2(appid, out_trade_no).await,
            PayApi::V3 => self.close_v3(out_trade_no).await,
        }
    }

    /// `wx.requestPayment` parameters for a prepay_id of `api` (v3: `signType` RSA).
    /// `sign_type` (v2): the order's, which `wx.requestPayment`'s signType must equal.
    pub fn payment_params(
        &self,
        api: PayApi,
        appid: &str,
        sign_type: Option<SignType>,
        prepay_id: &str,
        now: i64,
    ) -> Result<RequestPaymentParams, WxError> {
        match api {
            PayApi::V2 => Ok(self.payment_params_v2(appid, sign_type, prepay_id, now)),
            PayApi::V3 => self.payment_params_v3(appid, prepay_id, now),
        }
    }

    /// Sends a refund of an order placed with `api`: WeChat's refund as it answered it.
    pub async fn send_refund(
        &self,
        api: PayApi,
        refund: &SendRefund<'_>,
    ) -> Result<RefundSeen, RefundCallError> {
        match api {
            PayApi::V2 => self.send_refund_v2(refund).await,
            PayApi::V3 => self.send_refund_v3(refund).await,
        }
    }

    /// Re-routes an abnormal refund (v3 发起异常退款; v2 has no such API: the caller says so
    /// before calling).
    pub async fn apply_abnormal_refund(
        &self,
        refund_id: &str,
        request: wechat::pay::v3::AbnormalRefundRequest,
    ) -> Result<RefundSeen, RefundCallError> {
        self.apply_abnormal_refund_v3(refund_id, request).await
    }

    /// Asks WeChat about the refund `out_refund_no` of an order placed with `api`.
    pub async fn query_refund(
        &self,
        api: PayApi,
        appid: &str,
        out_refund_no: &str,
    ) -> Result<RefundSeen, RefundCallError> {
        match api {
            PayApi::V2 => self.query_refund_v2(appid, out_refund_no).await,
            PayApi::V3 => self.query_refund_v3(out_refund_no).await,
        }
    }
}

/// A JSAPI order to place, whatever the API.
#[derive(Debug, Clone)]
pub struct PlaceOrder<'a> {
    pub appid: &'a str,
    pub out_trade_no: &'a str,
    pub description: &'a str,
    pub amount_fen: i64,
    pub client_ip: &'a str,
    pub openid: &'a str,
    pub attach: Option<&'a str>,
    /// Unix seconds after which the order can no longer be paid.
    pub expires_at: i64,
    /// v2: the notify_url and sign type bound to the order at its first prepare, so a retry is
    /// the same request whatever the configuration says now (None: the configured ones).
    pub notify_url: Option<&'a str>,
    pub sign_type: Option<SignType>,
}

/// What WeChat says about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queried {
    pub state: TradeState,
    pub transaction_id: Option<String>,
    pub total_fen: Option<i64>,
    /// Unix seconds of the payment.
    pub paid_at: Option<i64>,
}

/// A verified, decrypted v3 payment notify.
#[derive(Debug, Clone)]
pub struct V3Paid {
    pub transaction: wechat::pay::v3::Transaction,
}

/// A refund to send, whatever the API.
#[derive(Debug, Clone)]
pub struct SendRefund<'a> {
    pub appid: &'a str,
    pub out_trade_no: &'a str,
    pub out_refund_no: &'a str,
    pub total_fen: i64,
    pub refund_fen: i64,
    pub reason: Option<&'a str>,
    /// `PAY_REFUND_NOTIFY_URL` (v2 as is, v3 with `/v3` appended, as for the pay notify);
    /// none: WeChat uses the merchant platform's setting, and the reconciler's query settles.
    pub notify_url: Option<&'a str>,
}

/// What WeChat says about one refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundSeen {
    pub refund_id: String,
    pub out_trade_no: String,
    pub refund_fen: i64,
    pub status: WxRefundStatus,
    /// Where the money went (v3 `user_received_account`; '' when not said).
    pub received_account: String,
}
