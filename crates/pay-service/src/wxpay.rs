//! The WeChat Pay calls pay-service makes, with the merchant settings, metrics and the mapping
//! of WeChat's failures to [`Error`].

use service_kit::Secret;
use wechat::{
    PayConfig, PayError, SignType, WechatClient,
    pay::{
        OrderQueryResponse, RefundQueryBy, RefundQueryResponse, RefundRequest, RefundResponse,
        UnifiedOrderRequest, UnifiedOrderResponse,
    },
};

use crate::error::Error;

/// The merchant and the client that speaks for it.
#[derive(Clone, Debug)]
pub struct WechatPay {
    client: WechatClient,
    mch_id: String,
    key: Secret,
    sign_type: SignType,
    notify_url: String,
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

    /// True when a merchant certificate is configured: refunds can be sent.
    pub fn can_refund(&self) -> bool {
        self.client.has_merchant_cert()
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
