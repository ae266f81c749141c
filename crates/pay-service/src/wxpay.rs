//! The one interface pay-service talks to WeChat Pay through: place an order, query it, close
//! it, build the `wx.requestPayment` parameters, send a refund and ask about it, with a v2
//! (XML) and a v3 (JSON, RSA) implementation. Each order records the API that places it
//! (`orders.api`), and each refund the API that carries it (`refunds.api`, the order's), so
//! switching `WXMP_PAY_API` strands neither. Failures of both APIs become one [`WxError`]
//! ([`RefundCallError`] for refunds, which must keep WeChat's code); metrics and the mapping
//! to [`Error`] live here too.

use service_kit::Secret;
use wechat::{
    PayConfig, PayError, SignType, WechatClient,
    pay::{
        OrderQueryResponse, RefundQueryBy, RefundQueryResponse, RefundRequest, RefundResponse,
        RequestPaymentParams, TradeState, UnifiedOrderRequest, UnifiedOrderResponse, nonce_str,
        request_payment_params,
        v3::{JsapiOrder, OrderAmount, Payer, V3Client, V3Error},
    },
};

use crate::config::PayApi;
use crate::error::Error;
use crate::refunds::WxRefundStatus;

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

    pub async fn unified_order(
        &self,
        appid: &str,
        req: &UnifiedOrderRequest,
    ) -> Result<UnifiedOrderResponse, PayError> {
        let result = self
            .client
            .unified_order(&self.config_for(appid), req)
            .await;
        count("unifiedorder", &result);
        result
    }

    /// [`WechatPay::unified_order`] with the merchant settings `pay` (an order's own
    /// sign_type, see `Payments::pay_config_of`).
    pub async fn unified_order_with(
        &self,
        pay: &PayConfig,
        req: &UnifiedOrderRequest,
    ) -> Result<UnifiedOrderResponse, PayError> {
        let result = self.client.unified_order(pay, req).await;
        count("unifiedorder", &result);
        result
    }

    pub async fn order_query(
        &self,
        appid: &str,
        out_trade_no: &str,
    ) -> Result<OrderQueryResponse, PayError> {
        let result = self
            .client
            .order_query(&self.config_for(appid), out_trade_no)
            .await;
        count("orderquery", &result);
        result
    }

    /// True when refunds of orders placed with `api` can be sent: v2 needs the merchant
    /// certificate (mutual TLS), v3 its configuration (every call is signed).
    pub fn can_refund(&self, api: PayApi) -> bool {
        match api {
            PayApi::V2 => self.client.has_merchant_cert(),
            PayApi::V3 => self.v3.is_some(),
        }
    }

    pub async fn refund(
        &self,
        appid: &str,
        req: &RefundRequest,
    ) -> Result<RefundResponse, PayError> {
        let result = self.client.refund(&self.config_for(appid), req).await;
        count("refund", &result);
        result
    }

    pub async fn refund_query(
        &self,
        appid: &str,
        by: &RefundQueryBy,
    ) -> Result<RefundQueryResponse, PayError> {
        let result = self.client.refund_query(&self.config_for(appid), by).await;
        count("refundquery", &result);
        result
    }

    pub async fn close_order(&self, appid: &str, out_trade_no: &str) -> Result<(), PayError> {
        let result = self
            .client
            .close_order(&self.config_for(appid), out_trade_no)
            .await;
        count("closeorder", &result);
        result
    }
}

/// `wxmp_wechat_requests_total{api,result}`; result is `ok`, WeChat's err_code, or the kind of
/// failure (a small, bounded set).
fn count<T>(api: &'static str, result: &Result<T, PayError>) {
    let label: String = match result {
        Ok(_) => "ok".into(),
        Err(PayError::Transport(_)) => "transport".into(),
        Err(PayError::Business { err_code, .. }) => {
            if !err_code.is_empty()
                && err_code.len() <= 32
                && err_code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                err_code.clone()
            } else {
                "business".into()
            }
        }
        Err(PayError::Return { .. }) => "return_fail".into(),
        Err(PayError::BadSignature) => "bad_signature".into(),
        Err(PayError::Mismatch(_)) => "mismatch".into(),
        Err(PayError::Xml(_) | PayError::BadResponse(_)) => "bad_response".into(),
        Err(PayError::NoCertificate) => "no_certificate".into(),
    };
    metrics::counter!("wxmp_wechat_requests_total", "api" => api, "result" => label).increment(1);
}

/// True for WeChat's `err_code` `code`.
pub fn is_err_code(e: &PayError, code: &str) -> bool {
    e.err_code() == Some(code)
}

/// WeChat's answers to a unifiedorder whose out_trade_no it already holds with other
/// parameters: `INVALID_REQUEST` ("201 商户订单号重复"; WeChat's unifiedorder document lists it for
/// a re-entered order whose parameters differ) and `OUT_TRADE_NO_USED` (the same number used
/// for another trade). ORDERPAID and ORDERCLOSED are handled on their own.
pub fn is_duplicate_order(e: &PayError) -> bool {
    matches!(e.err_code(), Some("INVALID_REQUEST" | "OUT_TRADE_NO_USED"))
}

/// WeChat's failure as the service's error: unreachable or SYSTEMERROR → WECHAT_UNAVAILABLE
/// (retry later), anything else → WECHAT_ERROR.
pub fn map_error(e: PayError) -> Error {
    if e.is_retryable() {
        Error::WechatUnavailable(e.to_string())
    } else {
        Error::Wechat(e.to_string())
    }
}

/// Why a WeChat Pay call failed, the same for v2 and v3: what callers act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WxError {
    /// v2 `ORDERPAID`, v3 `ORDERPAID`.
    OrderPaid,
    /// v2 `ORDERCLOSED`, v3 `ORDER_CLOSED`.
    OrderClosed,
    /// v2 `ORDERNOTEXIST`, v3 `ORDER_NOT_EXIST` (404).
    OrderNotExist,
    /// WeChat holds this out_trade_no with other parameters (see [`is_duplicate_order`]): no
    /// retry can pay it; the caller must start a new order.
    DuplicateOrder(String),
    /// Unreachable, 5xx, `SYSTEMERROR`/`SYSTEM_ERROR`, `FREQUENCY_LIMITED`, or an answer whose
    /// signature did not verify: retry later; nothing is known to have changed.
    Unavailable(String),
    /// Anything else WeChat refused.
    Refused(String),
}

impl std::fmt::Display for WxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OrderPaid => f.write_str("WeChat Pay: order already paid"),
            Self::OrderClosed => f.write_str("WeChat Pay: order closed"),
            Self::OrderNotExist => f.write_str("WeChat Pay: order does not exist"),
            Self::DuplicateOrder(m) | Self::Unavailable(m) | Self::Refused(m) => f.write_str(m),
        }
    }
}

impl From<PayError> for WxError {
    fn from(e: PayError) -> Self {
        match e.err_code() {
            Some("ORDERPAID") => Self::OrderPaid,
            Some("ORDERCLOSED") => Self::OrderClosed,
            Some("ORDERNOTEXIST") => Self::OrderNotExist,
            _ if is_duplicate_order(&e) => Self::DuplicateOrder(e.to_string()),
            _ if e.is_retryable() => Self::Unavailable(e.to_string()),
            _ => Self::Refused(e.to_string()),
        }
    }
}

impl From<V3Error> for WxError {
    fn from(e: V3Error) -> Self {
        use wechat::pay::v3::error::code;
        match e.code() {
            Some(code::ORDERPAID) => Self::OrderPaid,
            Some(code::ORDER_CLOSED) => Self::OrderClosed,
            Some(code::ORDER_NOT_EXIST) => Self::OrderNotExist,
            // 403 OUT_TRADE_NO_USED (商户订单号重复: the number was placed with other
            // parameters, JSAPI下单 error codes, https://pay.weixin.qq.com/doc/v3/merchant/4012556398):
            // v2's duplicate-order answer, no retry can pay it.
            Some(code::OUT_TRADE_NO_USED) => Self::DuplicateOrder(e.to_string()),
            _ if e.is_retryable() => Self::Unavailable(e.to_string()),
            _ => Self::Refused(e.to_string()),
        }
    }
}

/// [`WxError`] as the service's error.
pub fn map_wx_error(e: WxError) -> Error {
    match e {
        WxError::Unavailable(m) => Error::WechatUnavailable(m),
        WxError::DuplicateOrder(m) => {
            // Not WeChat failing, and no retry of ours can pay it: the caller's cue to start a
            // new order.
            tracing::error!(error = %m, "WeChat refuses the order number as a duplicate");
            Error::OrderState(
                "order number is already used at WeChat with other parameters; create a new order"
                    .into(),
            )
        }
        other => Error::Wechat(other.to_string()),
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

impl WechatPay {
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

    /// The v3 client for an order placed on v3. Without the v3 settings (a service started
    /// without them while v3 orders are in flight) WeChat is unavailable *to us*: the order
    /// stays as it is, to be handled by a service that has them, never failed or closed here.
    fn v3_or_unavailable(&self) -> Result<&V3Client, WxError> {
        self.v3.as_ref().ok_or_else(|| {
            v3_missing("order");
            WxError::Unavailable(V3_MISSING.into())
        })
    }

    fn v2_ready(&self) -> Result<(), WxError> {
        if self.key.is_empty() {
            return Err(WxError::Refused(
                "a v2 order needs WXMP_PAY_KEY, which is not set".into(),
            ));
        }
        Ok(())
    }

    /// JSAPI order with `api`: the prepay_id.
    pub async fn place_order(
        &self,
        api: PayApi,
        order: &PlaceOrder<'_>,
    ) -> Result<String, WxError> {
        match api {
            PayApi::V2 => {
                self.v2_ready()?;
                let req = UnifiedOrderRequest {
                    body: order.description.to_owned(),
                    out_trade_no: order.out_trade_no.to_owned(),
                    total_fee: order.amount_fen,
                    spbill_create_ip: order.client_ip.to_owned(),
                    notify_url: order.notify_url.unwrap_or(&self.notify_url).to_owned(),
                    openid: order.openid.to_owned(),
                    attach: order.attach.map(str::to_owned),
                    time_expire: Some(wechat::pay::time::format(order.expires_at)),
                };
                let mut pay = self.config_for(order.appid);
                if let Some(sign_type) = order.sign_type {
                    pay.sign_type = sign_type;
                }
                Ok(self.unified_order_with(&pay, &req).await?.prepay_id)
            }
            PayApi::V3 => {
                let v3 = self.v3_or_unavailable()?;
                let req = JsapiOrder {
                    appid: order.appid.to_owned(),
                    mchid: String::new(),
                    description: order.description.to_owned(),
                    out_trade_no: order.out_trade_no.to_owned(),
                    time_expire: Some(wechat::pay::v3::model::unix_rfc3339(order.expires_at)),
                    attach: order.attach.map(str::to_owned),
                    // The notify_url bound at the first prepare (+ `/v3`), as on v2: a retry
                    // must be the first request, whatever PAY_NOTIFY_URL says now.
                    notify_url: v3_notify_url(order.notify_url.unwrap_or(&self.notify_url)),
                    amount: OrderAmount {
                        total: order.amount_fen,
                        currency: "CNY".into(),
                    },
                    payer: Payer {
                        openid: order.openid.to_owned(),
                    },
                };
                let result = v3.jsapi(req).await;
                count_v3("jsapi", &result);
                Ok(result?)
            }
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
            PayApi::V2 => {
                self.v2_ready()?;
                let q = self.order_query(appid, out_trade_no).await?;
                Ok(Queried {
                    state: q.trade_state,
                    transaction_id: q.transaction_id.filter(|t| !t.is_empty()),
                    total_fen: q.total_fee,
                    paid_at: q.time_end.as_deref().and_then(wechat::pay::time::parse),
                })
            }
            PayApi::V3 => {
                let v3 = self.v3_or_unavailable()?;
                let result = v3.query_by_out_trade_no(out_trade_no).await;
                count_v3("query", &result);
                let tx = result?;
                if tx.appid != appid {
                    return Err(WxError::Refused(
                        "v3 query: appid is not the order's".into(),
                    ));
                }
                Ok(Queried {
                    state: tx.state()?,
                    transaction_id: tx.transaction_id.clone().filter(|t| !t.is_empty()),
                    total_fen: tx.total(),
                    paid_at: tx.success_unix(),
                })
            }
        }
    }

    /// Closes an order placed with `api`.
    pub async fn close(&self, api: PayApi, appid: &str, out_trade_no: &str) -> Result<(), WxError> {
        match api {
            PayApi::V2 => {
                self.v2_ready()?;
                Ok(self.close_order(appid, out_trade_no).await?)
            }
            PayApi::V3 => {
                let v3 = self.v3_or_unavailable()?;
                let result = v3.close(out_trade_no).await;
                count_v3("close", &result);
                Ok(result?)
            }
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
            PayApi::V2 => {
                let mut pay = self.config_for(appid);
                if let Some(sign_type) = sign_type {
                    pay.sign_type = sign_type;
                }
                Ok(request_payment_params(&pay, prepay_id, now, &nonce_str()))
            }
            PayApi::V3 => {
                let v3 = self.v3_or_unavailable()?;
                Ok(wechat::pay::v3::jsapi::request_payment_params(
                    appid,
                    &v3.merchant().key,
                    prepay_id,
                    now,
                    &nonce_str(),
                ))
            }
        }
    }
}

/// The v3 notify URL of a (v2-style) notify URL: the gateway's `/pay/notify` + `/v3`.
fn v3_notify_url(notify_url: &str) -> String {
    format!("{}/v3", notify_url.trim_end_matches('/'))
}

/// Why a v3 order or refund cannot be handled here.
pub(crate) const V3_MISSING: &str = "Pay v3 is not configured on this service (WXMP_PAY_V3_KEY, WXMP_PAY_PRIVATE_KEY_PATH, WXMP_PAY_CERT_SERIAL): the v3 order or refund stays as it is";

/// Logs, loudly, that a v3 order or refund met a service without the v3 settings: an
/// operator who switched back to v2 must keep them while v3 orders are in flight.
pub(crate) fn v3_missing(what: &'static str) {
    tracing::error!(
        what,
        "a Pay v3 {what} needs the v3 settings, which this service lacks; it is left as it is \
         (keep WXMP_PAY_V3_KEY, WXMP_PAY_PRIVATE_KEY_PATH and WXMP_PAY_CERT_SERIAL set while v3 \
         orders are in flight)"
    );
    metrics::counter!("wxmp_pay_v3_unconfigured_total", "what" => what).increment(1);
}

fn count_v3<T>(api: &'static str, result: &Result<T, V3Error>) {
    let label: String = match result {
        Ok(_) => "ok".into(),
        Err(V3Error::Transport(_)) => "transport".into(),
        Err(V3Error::Verify(_)) => "bad_signature".into(),
        Err(V3Error::Decrypt(_) | V3Error::BadResponse(_)) => "bad_response".into(),
        Err(V3Error::Api { code, .. }) => {
            if !code.is_empty()
                && code.len() <= 32
                && code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                code.clone()
            } else {
                "business".into()
            }
        }
    };
    metrics::counter!("wxmp_wechat_requests_total", "api" => api, "result" => label).increment(1);
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
}

/// Why a refund call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundCallError {
    /// No answer, `SYSTEMERROR` / `SYSTEM_ERROR`, `FREQUENCY_LIMITED`, 5xx, or an answer that
    /// did not authenticate: WeChat may have the refund; send the same request again later.
    Unknown(String),
    /// WeChat refused it for good with `code` (v2 err_code, e.g. NOTENOUGH; v3 code, e.g.
    /// NOT_ENOUGH, INVALID_REQUEST, RESOURCE_NOT_EXISTS).
    Refused { code: String, message: String },
}

impl std::fmt::Display for RefundCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown(m) | Self::Refused { message: m, .. } => f.write_str(m),
        }
    }
}

impl RefundCallError {
    /// WeChat's code of a final refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            Self::Unknown(_) => None,
        }
    }

    /// True when the merchant's balance cannot cover the refund (v2 NOTENOUGH, v3 NOT_ENOUGH).
    pub fn is_not_enough(&self) -> bool {
        matches!(self.code(), Some("NOTENOUGH" | "NOT_ENOUGH"))
    }

    /// True when WeChat knows no such refund (v2 REFUNDNOTEXIST, v3 RESOURCE_NOT_EXISTS).
    pub fn is_not_found(&self) -> bool {
        matches!(self.code(), Some("REFUNDNOTEXIST" | "RESOURCE_NOT_EXISTS"))
    }
}

impl From<PayError> for RefundCallError {
    fn from(e: PayError) -> Self {
        if e.is_retryable() || !matches!(e, PayError::Business { .. } | PayError::Return { .. }) {
            return Self::Unknown(e.to_string());
        }
        Self::Refused {
            code: e
                .err_code()
                .filter(|c| !c.is_empty())
                .unwrap_or("REFUSED")
                .to_owned(),
            message: e.to_string(),
        }
    }
}

impl From<V3Error> for RefundCallError {
    fn from(e: V3Error) -> Self {
        match &e {
            V3Error::Api { code, .. } if !e.is_retryable() => Self::Refused {
                code: if code.is_empty() {
                    "REFUSED".to_owned()
                } else {
                    code.clone()
                },
                message: e.to_string(),
            },
            _ => Self::Unknown(e.to_string()),
        }
    }
}

/// [`RefundCallError`] as the service's error: Unknown → WECHAT_UNAVAILABLE (retry later),
/// a refusal → WECHAT_ERROR.
pub fn map_refund_error(e: RefundCallError) -> Error {
    match e {
        RefundCallError::Unknown(m) => Error::WechatUnavailable(m),
        RefundCallError::Refused { message, .. } => Error::Wechat(message),
    }
}

impl WechatPay {
    /// Sends a refund of an order placed with `api`: WeChat's refund as it answered it.
    pub async fn send_refund(
        &self,
        api: PayApi,
        refund: &SendRefund<'_>,
    ) -> Result<RefundSeen, RefundCallError> {
        match api {
            PayApi::V2 => {
                let request = RefundRequest {
                    out_trade_no: refund.out_trade_no.to_owned(),
                    out_refund_no: refund.out_refund_no.to_owned(),
                    total_fee: refund.total_fen,
                    refund_fee: refund.refund_fen,
                    refund_desc: refund.reason.map(str::to_owned),
                    notify_url: refund.notify_url.map(str::to_owned),
                };
                let answer = self.refund(refund.appid, &request).await?;
                Ok(RefundSeen {
                    refund_id: answer.refund_id,
                    out_trade_no: refund.out_trade_no.to_owned(),
                    refund_fen: answer.refund_fee,
                    // v2 answers acceptance only; the status comes by notify or query.
                    status: WxRefundStatus::Processing,
                })
            }
            PayApi::V3 => {
                // Not configured (here, now): a PENDING refund waits for a service that is,
                // never FAILED (WeChat may hold it from an earlier send).
                let v3 = self.v3.as_ref().ok_or_else(|| {
                    v3_missing("refund");
                    RefundCallError::Unknown(V3_MISSING.into())
                })?;
                let request = wechat::pay::v3::RefundRequest {
                    out_trade_no: refund.out_trade_no.to_owned(),
                    out_refund_no: refund.out_refund_no.to_owned(),
                    reason: refund.reason.map(str::to_owned),
                    notify_url: refund
                        .notify_url
                        .map(|url| format!("{}/v3", url.trim_end_matches('/'))),
                    amount: wechat::pay::v3::RefundAmountRequest {
                        refund: refund.refund_fen,
                        total: refund.total_fen,
                        currency: "CNY".into(),
                    },
                };
                let result = v3.refund(&request).await;
                count_v3("refund", &result);
                seen_v3(result?)
            }
        }
    }

    /// Asks WeChat about the refund `out_refund_no` of an order placed with `api`.
    pub async fn query_refund(
        &self,
        api: PayApi,
        appid: &str,
        out_refund_no: &str,
    ) -> Result<RefundSeen, RefundCallError> {
        match api {
            PayApi::V2 => {
                let answer = self
                    .refund_query(appid, &RefundQueryBy::OutRefundNo(out_refund_no.to_owned()))
                    .await?;
                let item = answer
                    .refunds
                    .iter()
                    .find(|r| r.out_refund_no == out_refund_no)
                    .ok_or_else(|| {
                        RefundCallError::Unknown("refundquery did not list the refund".into())
                    })?;
                Ok(RefundSeen {
                    refund_id: item.refund_id.clone(),
                    out_trade_no: answer.out_trade_no.clone(),
                    refund_fen: item.refund_fee,
                    status: WxRefundStatus::from_v2(item.status),
                })
            }
            PayApi::V3 => {
                // Not configured (here, now): a PENDING refund waits for a service that is,
                // never FAILED (WeChat may hold it from an earlier send).
                let v3 = self.v3.as_ref().ok_or_else(|| {
                    v3_missing("refund");
                    RefundCallError::Unknown(V3_MISSING.into())
                })?;
                let result = v3.query_refund(out_refund_no).await;
                count_v3("refund_query", &result);
                let refund = result?;
                if refund.out_refund_no != out_refund_no {
                    return Err(RefundCallError::Unknown(
                        "v3 refund query answered another refund".into(),
                    ));
                }
                seen_v3(refund)
            }
        }
    }
}

/// A v3 refund (申请退款 or 查询单笔退款 answer) as [`RefundSeen`]; an unknown `status` is an
/// answer we cannot act on (sent again / asked again later).
fn seen_v3(refund: wechat::pay::v3::Refund) -> Result<RefundSeen, RefundCallError> {
    let status = WxRefundStatus::from_v3(&refund.status).ok_or_else(|| {
        RefundCallError::Unknown(format!("unknown v3 refund status {:?}", refund.status))
    })?;
    Ok(RefundSeen {
        refund_id: refund.refund_id,
        out_trade_no: refund.out_trade_no,
        refund_fen: refund.amount.refund,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(status: u16, code: &str) -> V3Error {
        V3Error::Api {
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    fn v2(err_code: &str) -> PayError {
        PayError::Business {
            err_code: err_code.into(),
            err_code_des: "d".into(),
        }
    }

    fn refused(code: &str) -> Option<String> {
        Some(code.to_owned())
    }

    /// Each WeChat order failure, v2 and v3, as one meaning and one service error: the same
    /// word on both APIs (ORDERCLOSED / ORDER_CLOSED, OUT_TRADE_NO_USED on both) acts alike.
    #[test]
    fn order_failures_of_both_apis_map_to_one_meaning() {
        use service_kit::ErrorReason as R;
        let cases: Vec<(WxError, WxError, R)> = vec![
            (v2("ORDERPAID").into(), WxError::OrderPaid, R::WechatError),
            (
                v3(403, "ORDERPAID").into(),
                WxError::OrderPaid,
                R::WechatError,
            ),
            (
                v2("ORDERCLOSED").into(),
                WxError::OrderClosed,
                R::WechatError,
            ),
            (
                v3(400, "ORDER_CLOSED").into(),
                WxError::OrderClosed,
                R::WechatError,
            ),
            (
                v2("ORDERNOTEXIST").into(),
                WxError::OrderNotExist,
                R::WechatError,
            ),
            (
                v3(404, "ORDER_NOT_EXIST").into(),
                WxError::OrderNotExist,
                R::WechatError,
            ),
        ];
        for (got, meaning, reason) in cases {
            assert_eq!(got, meaning);
            assert_eq!(map_wx_error(got).reason(), reason, "{meaning:?}");
        }
        let kind = |e: &WxError| std::mem::discriminant(e);
        let duplicate = WxError::DuplicateOrder(String::new());
        let unavailable = WxError::Unavailable(String::new());
        let refused = WxError::Refused(String::new());
        let cases: Vec<(WxError, &WxError, R)> = vec![
            (v2("OUT_TRADE_NO_USED").into(), &duplicate, R::OrderState),
            (v2("INVALID_REQUEST").into(), &duplicate, R::OrderState),
            (
                v3(403, "OUT_TRADE_NO_USED").into(),
                &duplicate,
                R::OrderState,
            ),
            (v2("SYSTEMERROR").into(), &unavailable, R::WechatUnavailable),
            (
                v3(500, "SYSTEM_ERROR").into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                v3(429, "FREQUENCY_LIMITED").into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                v3(502, "BAD_GATEWAY").into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                V3Error::Transport("timeout".into()).into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (
                V3Error::Verify(wechat::pay::v3::VerifyError::Signature("S".into())).into(),
                &unavailable,
                R::WechatUnavailable,
            ),
            (v3(401, "SIGN_ERROR").into(), &refused, R::WechatError),
            (v3(400, "PARAM_ERROR").into(), &refused, R::WechatError),
            (v3(400, "INVALID_REQUEST").into(), &refused, R::WechatError),
            (v2("NOAUTH").into(), &refused, R::WechatError),
        ];
        for (got, meaning, reason) in cases {
            assert_eq!(kind(&got), kind(meaning), "{got:?}");
            assert_eq!(map_wx_error(got.clone()).reason(), reason, "{got:?}");
        }
    }

    /// Each WeChat refund failure, v2 and v3, as what the refund flow does with it: Unknown
    /// keeps the refund PENDING (WECHAT_UNAVAILABLE), Refused fails it with the code.
    #[test]
    fn refund_failures_of_both_apis_map_to_one_meaning() {
        let cases: Vec<(RefundCallError, Option<String>)> = vec![
            (v3(403, "NOT_ENOUGH").into(), refused("NOT_ENOUGH")),
            (
                v3(400, "INVALID_REQUEST").into(),
                refused("INVALID_REQUEST"),
            ),
            (
                v3(404, "RESOURCE_NOT_EXISTS").into(),
                refused("RESOURCE_NOT_EXISTS"),
            ),
            (v3(401, "SIGN_ERROR").into(), refused("SIGN_ERROR")),
            (v3(429, "FREQUENCY_LIMITED").into(), None),
            (v3(500, "SYSTEM_ERROR").into(), None),
            (v3(502, "BAD_GATEWAY").into(), None),
            (V3Error::Transport("timeout".into()).into(), None),
            (
                V3Error::Verify(wechat::pay::v3::VerifyError::Signature("S".into())).into(),
                None,
            ),
            (V3Error::BadResponse("json".into()).into(), None),
            (v2("NOTENOUGH").into(), refused("NOTENOUGH")),
            (v2("SYSTEMERROR").into(), None),
            (PayError::Transport("timeout".into()).into(), None),
            (PayError::BadSignature.into(), None),
            (PayError::NoCertificate.into(), None),
        ];
        for (e, code) in cases {
            assert_eq!(e.code().map(str::to_owned), code, "{e:?}");
            let mapped = map_refund_error(e.clone());
            match code {
                Some(_) => assert!(matches!(mapped, Error::Wechat(_)), "{e:?}"),
                None => assert!(matches!(mapped, Error::WechatUnavailable(_)), "{e:?}"),
            }
        }
        assert!(RefundCallError::from(v3(403, "NOT_ENOUGH")).is_not_enough());
        assert!(RefundCallError::from(v2("NOTENOUGH")).is_not_enough());
        assert!(RefundCallError::from(v3(404, "RESOURCE_NOT_EXISTS")).is_not_found());
        assert!(RefundCallError::from(v2("REFUNDNOTEXIST")).is_not_found());
    }

    #[test]
    fn v3_refund_answers_carry_their_status() {
        let refund = |status: &str| wechat::pay::v3::Refund {
            refund_id: "5030".into(),
            out_refund_no: "R1".into(),
            transaction_id: None,
            out_trade_no: "O1".into(),
            status: status.into(),
            success_time: None,
            amount: wechat::pay::v3::model::RefundAmount {
                total: 100,
                refund: 40,
                payer_refund: None,
                currency: None,
            },
        };
        let seen = seen_v3(refund("PROCESSING")).unwrap();
        assert_eq!(
            (seen.status, seen.refund_fen, seen.out_trade_no.as_str()),
            (WxRefundStatus::Processing, 40, "O1")
        );
        assert_eq!(
            seen_v3(refund("ABNORMAL")).unwrap().status,
            WxRefundStatus::Failed("ABNORMAL")
        );
        assert!(matches!(
            seen_v3(refund("REFUNDED?")),
            Err(RefundCallError::Unknown(_))
        ));
    }
}
