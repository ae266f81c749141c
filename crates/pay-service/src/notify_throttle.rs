//! Notifies from a sender the gateway throttles (metadata
//! `x-wxmp-notify-sender-throttled`: the sender's address failed too many signature checks).
//!
//! Such a notify is authenticated before anything else, with no database work: one that
//! verifies (WeChat sharing an address with a forger, behind a proxy or a NAT) is handled as
//! any other, so WeChat is never locked out; one that does not is dropped unrecorded with the
//! verdict `rate_limited`, so a flood of forgeries costs one signature check each. The same
//! holds for v3 notifies (payment and refund), authenticated by their RSA signature, and for v2
//! refund notifies, authenticated by decrypting with the merchant key.

use wechat::pay::{NotifyError, SignType, notify_reply_fail, verify_notify, xml};

use crate::{
    orders::{NotifyReply, NotifyV3Reply},
    payments::Payments,
};

/// The verdict of a throttled sender's notify that did not verify.
pub const RATE_LIMITED: &str = "rate_limited";

impl Payments {
    /// [`Payments::handle_pay_notify`] for a throttled sender.
    pub async fn handle_throttled_pay_notify(&self, raw_body: &[u8]) -> NotifyReply {
        if self.notify_signature_verifies(raw_body) {
            return self.handle_pay_notify(raw_body).await;
        }
        metrics::counter!("wxmp_pay_notifies_total", "verdict" => RATE_LIMITED).increment(1);
        NotifyReply {
            reply_xml: notify_reply_fail(RATE_LIMITED),
            accepted: false,
            verdict: RATE_LIMITED,
        }
    }

    /// [`Payments::handle_pay_notify_v3`] for a throttled sender.
    pub async fn handle_throttled_pay_notify_v3(
        &self,
        headers: &wechat::pay::v3::SignatureHeaders,
        raw_body: &[u8],
    ) -> NotifyV3Reply {
        if self.v3_notify_is_genuine(headers, raw_body).await {
            return self.handle_pay_notify_v3(headers, raw_body).await;
        }
        rate_limited_v3("wxmp_pay_notifies_total")
    }

    /// [`Payments::handle_refund_notify`] (v2) for a throttled sender: a body that does not
    /// decrypt with our key is dropped unrecorded (issue 23: anyone can post refund notifies).
    pub async fn handle_throttled_refund_notify(&self, raw_body: &[u8]) -> NotifyReply {
        if self.refund_notify_decrypts(raw_body) {
            return self.handle_refund_notify(raw_body).await;
        }
        metrics::counter!("wxmp_refund_notifies_total", "verdict" => RATE_LIMITED).increment(1);
        NotifyReply {
            reply_xml: notify_reply_fail(RATE_LIMITED),
            accepted: false,
            verdict: RATE_LIMITED,
        }
    }

    /// Whether a v2 refund notify's req_info decrypts with the key of the merchant of its
    /// appid (the refund notify has no signature: decrypting is its authentication).
    fn refund_notify_decrypts(&self, raw_body: &[u8]) -> bool {
        let appid = xml::parse(raw_body)
            .ok()
            .and_then(|f| f.get("appid").cloned())
            .unwrap_or_default();
        let pay = self.inner.wechat.config_for(&appid);
        wechat::pay::decrypt_refund_notify(raw_body, &pay).is_ok()
    }

    /// [`Payments::handle_refund_notify_v3`] for a throttled sender.
    pub async fn handle_throttled_refund_notify_v3(
        &self,
        headers: &wechat::pay::v3::SignatureHeaders,
        raw_body: &[u8],
    ) -> NotifyV3Reply {
        if self.v3_notify_is_genuine(headers, raw_body).await {
            return self.handle_refund_notify_v3(headers, raw_body).await;
        }
        rate_limited_v3("wxmp_refund_notifies_total")
    }

    /// Whether a v3 notify is WeChat's: signed with its key, in the clock window, decryptable
    /// with our APIv3 key. What it is about is the full handling's to judge.
    async fn v3_notify_is_genuine(
        &self,
        headers: &wechat::pay::v3::SignatureHeaders,
        raw_body: &[u8],
    ) -> bool {
        match self.inner.wechat.v3() {
            Some(v3) => v3.open_notify(headers, raw_body).await.is_ok(),
            None => false,
        }
    }

    /// Whether the notify's signature verifies with the key of the merchant of its own appid,
    /// under either algorithm (an order may have been placed before the merchant switched;
    /// the full handling then checks it against the order as usual).
    fn notify_signature_verifies(&self, raw_body: &[u8]) -> bool {
        let Ok(fields) = xml::parse(raw_body) else {
            return false;
        };
        let appid = fields.get("appid").map(String::as_str).unwrap_or_default();
        let mut pay = self.inner.wechat.config_for(appid);
        [SignType::Md5, SignType::HmacSha256]
            .into_iter()
            .any(|sign_type| {
                pay.sign_type = sign_type;
                signature_verified(&verify_notify(raw_body, &pay))
            })
    }
}

fn rate_limited_v3(metric: &'static str) -> NotifyV3Reply {
    metrics::counter!(metric, "verdict" => RATE_LIMITED).increment(1);
    NotifyV3Reply {
        accepted: false,
        verdict: RATE_LIMITED,
        message: RATE_LIMITED.to_owned(),
    }
}

/// Whether `verify_notify` got past the signature check: it checks the signature before
/// trusting any field, so these later failures all come from a correctly signed notify. The
/// fields it may require before the signature (`return_code`, `result_code`, `sign`) say
/// nothing about it.
fn signature_verified<T>(outcome: &Result<T, NotifyError>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(NotifyError::MissingField(field)) => {
            !matches!(*field, "sign" | "return_code" | "result_code")
        }
        Err(NotifyError::AppIdMismatch | NotifyError::MchIdMismatch | NotifyError::BadAmount) => {
            true
        }
        Err(NotifyError::Xml(_) | NotifyError::BadSignature | NotifyError::ReturnFail(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_before_the_signature_check_count_as_unverified() {
        let ok: Result<(), NotifyError> = Ok(());
        assert!(signature_verified(&ok));
        assert!(!signature_verified::<()>(&Err(NotifyError::BadSignature)));
        assert!(!signature_verified::<()>(&Err(NotifyError::MissingField(
            "sign"
        ))));
        assert!(!signature_verified::<()>(&Err(NotifyError::ReturnFail(
            String::new()
        ))));
        assert!(signature_verified::<()>(&Err(NotifyError::MissingField(
            "transaction_id"
        ))));
        assert!(signature_verified::<()>(&Err(NotifyError::AppIdMismatch)));
        for before_the_signature in ["sign", "return_code", "result_code"] {
            assert!(!signature_verified::<()>(&Err(NotifyError::MissingField(
                before_the_signature
            ))));
        }
    }
}
