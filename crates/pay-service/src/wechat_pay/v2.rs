//! Pay v2 (XML, MD5/HMAC-SHA256 signatures, mutual TLS for refunds): each call counted in
//! `wxmp_wechat_requests_total`.

use wechat::{
    PayConfig, PayError, SignType,
    pay::{
        OrderQueryResponse, RefundQueryBy, RefundQueryResponse, RefundRequest, RefundResponse,
        RequestPaymentParams, UnifiedOrderRequest, UnifiedOrderResponse, nonce_str,
        request_payment_params,
    },
};

use super::{PlaceOrder, Queried, RefundCallError, RefundSeen, SendRefund, WechatPay, WxError};
use crate::refunds::WxRefundStatus;

impl WechatPay {
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

    fn v2_ready(&self) -> Result<(), WxError> {
        if self.key.is_empty() {
            return Err(WxError::Refused(
                "a v2 order needs WXMP_PAY_KEY, which is not set".into(),
            ));
        }
        Ok(())
    }

    pub(super) async fn place_order_v2(&self, order: &PlaceOrder<'_>) -> Result<String, WxError> {
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

    pub(super) async fn query_v2(
        &self,
        appid: &str,
        out_trade_no: &str,
    ) -> Result<Queried, WxError> {
        self.v2_ready()?;
        let q = self.order_query(appid, out_trade_no).await?;
        Ok(Queried {
            state: q.trade_state,
            transaction_id: q.transaction_id.filter(|t| !t.is_empty()),
            total_fen: q.total_fee,
            paid_at: q.time_end.as_deref().and_then(wechat::pay::time::parse),
        })
    }

    pub(super) async fn close_v2(&self, appid: &str, out_trade_no: &str) -> Result<(), WxError> {
        self.v2_ready()?;
        Ok(self.close_order(appid, out_trade_no).await?)
    }

    pub(super) fn payment_params_v2(
        &self,
        appid: &str,
        sign_type: Option<SignType>,
        prepay_id: &str,
        now: i64,
    ) -> RequestPaymentParams {
        let mut pay = self.config_for(appid);
        if let Some(sign_type) = sign_type {
            pay.sign_type = sign_type;
        }
        request_payment_params(&pay, prepay_id, now, &nonce_str())
    }

    pub(super) async fn send_refund_v2(
        &self,
        refund: &SendRefund<'_>,
    ) -> Result<RefundSeen, RefundCallError> {
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
            received_account: String::new(),
        })
    }

    pub(super) async fn query_refund_v2(
        &self,
        appid: &str,
        out_refund_no: &str,
    ) -> Result<RefundSeen, RefundCallError> {
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
            received_account: String::new(),
        })
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
