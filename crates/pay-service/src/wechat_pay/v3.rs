//! Pay v3 (JSON, SHA256-RSA signatures, AES-GCM notifies): each call counted in
//! `wxmp_wechat_requests_total`, like v2's. Without the v3 settings a v3 order or refund is left
//! as it is ([`V3_MISSING`]), never failed here.

use wechat::pay::{
    RequestPaymentParams, nonce_str,
    v3::{JsapiOrder, OrderAmount, Payer, V3Client, V3Error},
};

use super::{PlaceOrder, Queried, RefundCallError, RefundSeen, SendRefund, WechatPay, WxError};
use crate::refunds::WxRefundStatus;

impl WechatPay {
    /// The v3 client for an order placed on v3. Without the v3 settings (a service started
    /// without them while v3 orders are in flight) WeChat is unavailable *to us*: the order
    /// stays as it is, to be handled by a service that has them, never failed or closed here.
    fn v3_or_unavailable(&self) -> Result<&V3Client, WxError> {
        self.v3.as_ref().ok_or_else(|| {
            v3_missing("order");
            WxError::Unavailable(V3_MISSING.into())
        })
    }

    /// The v3 client for a refund. Not configured (here, now): a PENDING refund waits for a
    /// service that is, never FAILED (WeChat may hold it from an earlier send).
    fn v3_for_refund(&self) -> Result<&V3Client, RefundCallError> {
        self.v3.as_ref().ok_or_else(|| {
            v3_missing("refund");
            RefundCallError::Unknown(V3_MISSING.into())
        })
    }

    pub(super) async fn place_order_v3(&self, order: &PlaceOrder<'_>) -> Result<String, WxError> {
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

    pub(super) async fn query_v3(
        &self,
        appid: &str,
        out_trade_no: &str,
    ) -> Result<Queried, WxError> {
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

    pub(super) async fn close_v3(&self, out_trade_no: &str) -> Result<(), WxError> {
        let v3 = self.v3_or_unavailable()?;
        let result = v3.close(out_trade_no).await;
        count_v3("close", &result);
        Ok(result?)
    }

    pub(super) fn payment_params_v3(
        &self,
        appid: &str,
        prepay_id: &str,
        now: i64,
    ) -> Result<RequestPaymentParams, WxError> {
        let v3 = self.v3_or_unavailable()?;
        Ok(wechat::pay::v3::jsapi::request_payment_params(
            appid,
            &v3.merchant().key,
            prepay_id,
            now,
            &nonce_str(),
        ))
    }

    pub(super) async fn send_refund_v3(
        &self,
        refund: &SendRefund<'_>,
    ) -> Result<RefundSeen, RefundCallError> {
        let v3 = self.v3_for_refund()?;
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

    /// 发起异常退款 of a v3 refund WeChat holds as ABNORMAL.
    pub(super) async fn apply_abnormal_refund_v3(
        &self,
        refund_id: &str,
        request: wechat::pay::v3::AbnormalRefundRequest,
    ) -> Result<RefundSeen, RefundCallError> {
        let v3 = self.v3_for_refund()?;
        let result = v3.apply_abnormal_refund(refund_id, request).await;
        count_v3("apply_abnormal_refund", &result);
        seen_v3(result?)
    }

    pub(super) async fn query_refund_v3(
        &self,
        out_refund_no: &str,
    ) -> Result<RefundSeen, RefundCallError> {
        let v3 = self.v3_for_refund()?;
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

/// The v3 notify URL of a (v2-style) notify URL: the gateway's `/pay/notify` + `/v3`.
pub(super) fn v3_notify_url(notify_url: &str) -> String {
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
        received_account: refund.user_received_account.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            user_received_account: None,
        };
        let seen = seen_v3(refund("PROCESSING")).unwrap();
        assert_eq!(
            (seen.status, seen.refund_fen, seen.out_trade_no.as_str()),
            (WxRefundStatus::Processing, 40, "O1")
        );
        assert_eq!(
            seen_v3(refund("ABNORMAL")).unwrap().status,
            WxRefundStatus::Abnormal("ABNORMAL")
        );
        assert!(matches!(
            seen_v3(refund("REFUNDED?")),
            Err(RefundCallError::Unknown(_))
        ));
    }
}
