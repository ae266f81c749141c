//! The v3 calls on one merchant account: signed JSON requests, verified responses.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::client::WechatClient;
use crate::config::join;
use crate::http::{self, MAX_BODY_BYTES};
use crate::pay::jsapi::{RequestPaymentParams, nonce_str};
use crate::pay::v3::aead::{self, ApiV3Key, EncryptedResource};
use crate::pay::v3::error::V3Error;
use crate::pay::v3::jsapi;
use crate::pay::v3::keys::{MerchantKey, PublicKey};
use crate::pay::v3::model::{
    AbnormalRefundRequest, JsapiOrder, PrepayResponse, Refund, RefundNotice, RefundRequest,
    Transaction, rfc3339_unix,
};
use crate::pay::v3::notify::{self, NotifyError, OpenedNotify};
use crate::pay::v3::refresh::RefreshGate;
use crate::pay::v3::sign::{SignedRequest, authorization};
use crate::pay::v3::verify::{PlatformCertificate, PlatformKeys, SignatureHeaders, VerifyError};

/// A merchant account on v3. `Debug` shows no key.
pub struct Merchant {
    /// The mini program's appid.
    pub appid: String,
    pub mchid: String,
    /// Serial of the merchant API certificate whose private key is `key`.
    pub serial_no: String,
    pub key: MerchantKey,
    pub apiv3_key: ApiV3Key,
}

impl fmt::Debug for Merchant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Merchant")
            .field("appid", &self.appid)
            .field("mchid", &self.mchid)
            .field("serial_no", &self.serial_no)
            .finish_non_exhaustive()
    }
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// How long a call or notify waits for a certificate download when it holds no key to verify
/// with; with keys in hand it never waits (the download runs in the background).
pub const DEFAULT_CERTIFICATE_WAIT: Duration = Duration::from_secs(3);

/// Pay v3 for one merchant: WeChat's base URL and timeouts from the [`WechatClient`], the
/// merchant's keys, and WeChat Pay's keys (with the certificate cache in certificate mode).
/// Cheap to clone.
#[derive(Clone)]
pub struct V3Client {
    wechat: WechatClient,
    merchant: Arc<Merchant>,
    platform: Arc<PlatformKeys>,
    refresh: Arc<RefreshGate>,
    certificate_wait: Duration,
    clock: Clock,
}

impl fmt::Debug for V3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V3Client")
            .field("merchant", &self.merchant)
            .finish_non_exhaustive()
    }
}

fn system_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct CertificateList {
    data: Vec<CertificateItem>,
}

#[derive(Deserialize)]
struct CertificateItem {
    serial_no: String,
    expire_time: String,
    encrypt_certificate: EncryptedResource,
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl V3Client {
    pub fn new(wechat: WechatClient, merchant: Merchant, platform: PlatformKeys) -> Self {
        Self {
            wechat,
            merchant: Arc::new(merchant),
            platform: Arc::new(platform),
            refresh: Arc::default(),
            certificate_wait: DEFAULT_CERTIFICATE_WAIT,
            clock: Arc::new(system_now),
        }
    }

    /// Changes the bound on waiting for a certificate download (see
    /// [`DEFAULT_CERTIFICATE_WAIT`]).
    pub fn with_certificate_wait(mut self, wait: Duration) -> Self {
        self.certificate_wait = wait;
        self
    }

    /// The certificate download gate (single flight, backoff), for metrics and tests.
    pub fn certificate_refresh(&self) -> &RefreshGate {
        &self.refresh
    }

    /// Replaces the clock (unix seconds) used for timestamps and the ±5 min check.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The WeChat client (base URLs) this v3 client sends through.
    pub fn wechat(&self) -> &WechatClient {
        &self.wechat
    }

    pub fn merchant(&self) -> &Merchant {
        &self.merchant
    }

    pub fn platform(&self) -> &PlatformKeys {
        &self.platform
    }

    pub(crate) fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Sends one signed request; returns status, headers and body (any status).
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &[u8],
    ) -> Result<Answer, V3Error> {
        self.send_limited(method, url, body, MAX_BODY_BYTES).await
    }

    /// [`Self::send`] reading at most `limit` bytes of the body (bills are large).
    pub(crate) async fn send_limited(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &[u8],
        limit: usize,
    ) -> Result<Answer, V3Error> {
        let nonce = nonce_str();
        let auth = authorization(
            &self.merchant.mchid,
            &self.merchant.serial_no,
            &self.merchant.key,
            &SignedRequest {
                method: method.as_str(),
                url,
                timestamp: self.now(),
                nonce: &nonce,
                body,
            },
        );
        let mut req = self
            .wechat
            .http()
            .request(method, join(&self.wechat.config().pay_base, url))
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json");
        // The key we want the answer signed with (see PlatformKeys::request_serial).
        if let Some(serial) = self.platform.request_serial(self.now()) {
            req = req.header(crate::pay::v3::verify::header::SERIAL, serial);
        }
        if !body.is_empty() {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| V3Error::Transport(http::describe(&e)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| V3Error::Transport(http::describe(&e)))?
        {
            if bytes.len() + chunk.len() > limit {
                return Err(V3Error::BadResponse("response too large".into()));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body: bytes,
        })
    }

    /// Maps a non-2xx answer to its error.
    pub(crate) fn error_of(answer: &Answer) -> V3Error {
        match serde_json::from_slice::<ApiErrorBody>(&answer.body) {
            Ok(e) => V3Error::Api {
                status: answer.status,
                code: e.code,
                message: e.message,
            },
            Err(_) if answer.status >= 500 => V3Error::Transport(format!("HTTP {}", answer.status)),
            Err(_) => V3Error::BadResponse(format!("HTTP {} without an error body", answer.status)),
        }
    }

    /// Starts a certificate download in the background when one is due (certificate mode).
    /// Holding a key to verify with, the caller goes on at once; holding none (the first
    /// download), it waits for the download at most [`Self::with_certificate_wait`].
    async fn ensure_certificates(&self) -> Result<(), V3Error> {
        let now = self.now();
        if !self.platform.refresh_due(now) {
            return Ok(());
        }
        self.refresh_in_background();
        if self.platform.has_valid_certificate(now) || !self.platform.public_key_ids().is_empty() {
            return Ok(());
        }
        self.refresh.wait(self.certificate_wait).await;
        if self.platform.has_valid_certificate(self.now()) {
            Ok(())
        } else {
            Err(V3Error::Transport(
                "no WeChat Pay platform certificate yet: /v3/certificates has not answered".into(),
            ))
        }
    }

    /// Starts the one download unless one is under way or backing off; false when not started.
    fn refresh_in_background(&self) -> bool {
        let Some(permit) = self.refresh.begin() else {
            return false;
        };
        let this = self.clone();
        // Detached: the download outlives a caller that stops waiting for it, and the permit
        // (dropped with the task) ends the single flight however the task ends.
        tokio::spawn(async move {
            match this.refresh_certificates().await {
                Ok(serials) => {
                    tracing::info!(?serials, "WeChat Pay platform certificates downloaded");
                    permit.succeeded();
                }
                Err(e) => {
                    tracing::warn!(error = %e, failures = this.refresh.failures() + 1,
                        "WeChat Pay certificate download failed; keeping the cached ones, backing off");
                }
            }
        });
        true
    }

    /// Verifies `headers` + `body` against the platform keys; on an unknown serial in
    /// certificate mode waits for the download under way, or starts one (at most once per
    /// forced-refresh interval), within the bound before trying again.
    async fn verify_signed(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let verdict = match self.platform.verify(headers, body, self.now()) {
            Err(VerifyError::UnknownSerial(serial)) if self.platform.uses_certificates() => {
                // A download under way (the first one, started by another message) may bring
                // the certificate: a genuine callback arriving meanwhile waits for it instead
                // of being refused.
                let under_way = self.refresh.in_flight();
                if under_way || self.platform.claim_forced_refresh(self.now()) {
                    if !under_way {
                        tracing::info!(%serial, "unknown WeChat Pay serial; downloading certificates");
                        self.refresh_in_background();
                    }
                    self.refresh.wait(self.certificate_wait).await;
                    self.platform.verify(headers, body, self.now())
                } else {
                    Err(VerifyError::UnknownSerial(serial))
                }
            }
            other => other,
        };
        if let Err(VerifyError::UnknownSerial(serial)) = &verdict {
            let hint = self.platform.unknown_serial_hint(serial);
            tracing::warn!(%serial, hint, "refused: no WeChat Pay key for this Wechatpay-Serial");
        }
        verdict
    }

    /// One call: sign, send, map errors, verify the 2xx response.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, V3Error> {
        self.ensure_certificates().await?;
        let answer = self.send(method, url, body).await?;
        if !(200..300).contains(&answer.status) {
            return Err(Self::error_of(&answer));
        }
        let headers = SignatureHeaders::from_header_map(&answer.headers)?;
        if let Err(e) = self.verify_signed(&headers, &answer.body).await {
            tracing::warn!(failed = %e, url, "WeChat Pay response failed verification");
            return Err(e.into());
        }
        Ok(answer.body)
    }

    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &[u8],
    ) -> Result<T, V3Error> {
        let bytes = self.call(method, url, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| V3Error::BadResponse(e.to_string()))
    }

    /// `GET /v3/certificates`: decrypts every certificate with the APIv3 key, checks that the
    /// response is signed by one of them (or by the public key), then installs them.
    pub async fn refresh_certificates(&self) -> Result<Vec<String>, V3Error> {
        let url = "/v3/certificates";
        let answer = self.send(reqwest::Method::GET, url, b"").await?;
        if !(200..300).contains(&answer.status) {
            return Err(Self::error_of(&answer));
        }
        let list: CertificateList = serde_json::from_slice(&answer.body)
            .map_err(|e| V3Error::BadResponse(e.to_string()))?;
        let mut certs = Vec::with_capacity(list.data.len());
        for item in list.data {
            let pem = aead::decrypt(&self.merchant.apiv3_key, &item.encrypt_certificate)?;
            let pem = String::from_utf8(pem)
                .map_err(|_| V3Error::BadResponse("certificate is not UTF-8 PEM".into()))?;
            let key = PublicKey::from_certificate_pem(&pem).map_err(|e| {
                V3Error::BadResponse(format!("certificate {}: {e}", item.serial_no))
            })?;
            let expires_at = rfc3339_unix(&item.expire_time)
                .ok_or_else(|| V3Error::BadResponse("bad expire_time".into()))?;
            certs.push(PlatformCertificate {
                serial_no: item.serial_no,
                key,
                expires_at,
            });
        }
        // The list authenticates itself twice: the APIv3 key decrypted it, and one of the
        // certificates in it (or a key we already trust) signed the response.
        let headers = SignatureHeaders::from_header_map(&answer.headers)?;
        let now = self.now();
        crate::pay::v3::verify::check_clock(&headers.timestamp, now)?;
        let message = crate::pay::v3::sign::response_message(
            &headers.timestamp,
            &headers.nonce,
            &answer.body,
        );
        let signer = certs
            .iter()
            .find(|c| c.serial_no == headers.serial)
            .map(|c| c.key.clone())
            .or_else(|| self.platform.key_for(&headers.serial, now))
            .ok_or_else(|| VerifyError::UnknownSerial(headers.serial.clone()))?;
        if !signer.verify(&message, &headers.signature) {
            return Err(VerifyError::Signature(headers.serial.clone()).into());
        }
        let serials = certs.iter().map(|c| c.serial_no.clone()).collect();
        self.platform.install_certificates(certs, now);
        Ok(serials)
    }

    /// JSAPI下单 (`POST /v3/pay/transactions/jsapi`): the prepay_id (valid two hours).
    /// `order.mchid` is the merchant's; an empty `order.appid` becomes the merchant's appid.
    pub async fn jsapi(&self, mut order: JsapiOrder) -> Result<String, V3Error> {
        if order.appid.is_empty() {
            order.appid.clone_from(&self.merchant.appid);
        }
        order.mchid.clone_from(&self.merchant.mchid);
        let body = serde_json::to_vec(&order).map_err(|e| V3Error::BadResponse(e.to_string()))?;
        let resp: PrepayResponse = self
            .call_json(reqwest::Method::POST, "/v3/pay/transactions/jsapi", &body)
            .await?;
        if resp.prepay_id.is_empty() {
            return Err(V3Error::BadResponse("empty prepay_id".into()));
        }
        Ok(resp.prepay_id)
    }

    /// 查询订单 by our order number; checks appid and mchid are ours.
    pub async fn query_by_out_trade_no(&self, out_trade_no: &str) -> Result<Transaction, V3Error> {
        let url = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            path_segment(out_trade_no)?,
            path_segment(&self.merchant.mchid)?
        );
        let tx: Transaction = self.call_json(reqwest::Method::GET, &url, b"").await?;
        self.check_ours(&tx)?;
        if tx.out_trade_no != out_trade_no {
            return Err(V3Error::BadResponse("out_trade_no differs".into()));
        }
        Ok(tx)
    }

    /// 关闭订单: `204 No Content` on success.
    pub async fn close(&self, out_trade_no: &str) -> Result<(), V3Error> {
        let url = format!(
            "/v3/pay/transactions/out-trade-no/{}/close",
            path_segment(out_trade_no)?
        );
        let body = serde_json::json!({ "mchid": self.merchant.mchid }).to_string();
        self.call(reqwest::Method::POST, &url, body.as_bytes())
            .await
            .map(drop)
    }

    /// 申请退款 (`POST /v3/refund/domestic/refunds`).
    pub async fn refund(&self, request: &RefundRequest) -> Result<Refund, V3Error> {
        let body = serde_json::to_vec(request).map_err(|e| V3Error::BadResponse(e.to_string()))?;
        self.call_json(reqwest::Method::POST, "/v3/refund/domestic/refunds", &body)
            .await
    }

    /// 查询单笔退款 (`GET /v3/refund/domestic/refunds/{out_refund_no}`).
    pub async fn query_refund(&self, out_refund_no: &str) -> Result<Refund, V3Error> {
        let url = format!(
            "/v3/refund/domestic/refunds/{}",
            path_segment(out_refund_no)?
        );
        self.call_json(reqwest::Method::GET, &url, b"").await
    }

    /// 发起异常退款 (`POST /v3/refund/domestic/refunds/{refund_id}/apply-abnormal-refund`):
    /// re-routes an ABNORMAL refund; WeChat answers the refund (see [`AbnormalRefundRequest`]).
    /// For the payer's card, `bank_account` and `real_name` are plain here and sealed for the
    /// key this request names in `Wechatpay-Serial`.
    pub async fn apply_abnormal_refund(
        &self,
        refund_id: &str,
        mut request: AbnormalRefundRequest,
    ) -> Result<Refund, V3Error> {
        let url = format!(
            "/v3/refund/domestic/refunds/{}/apply-abnormal-refund",
            path_segment(refund_id)?
        );
        if request.bank_account.is_some() || request.real_name.is_some() {
            self.ensure_certificates().await?;
            let (_, key) = self.platform.encryption_key(self.now()).ok_or_else(|| {
                V3Error::Transport("no WeChat Pay public key or certificate to seal with".into())
            })?;
            let seal = |plain: Option<String>| -> Result<Option<String>, V3Error> {
                plain
                    .map(|p| {
                        key.encrypt_sensitive(p.as_bytes())
                            .map_err(|e| V3Error::BadResponse(format!("sealing a field: {e}")))
                    })
                    .transpose()
            };
            request.bank_account = seal(request.bank_account.take())?;
            request.real_name = seal(request.real_name.take())?;
        }
        let body = serde_json::to_vec(&request).map_err(|e| V3Error::BadResponse(e.to_string()))?;
        self.call_json(reqwest::Method::POST, &url, &body).await
    }

    /// `wx.requestPayment` parameters for `prepay_id`, signed now.
    pub fn request_payment_params(&self, prepay_id: &str) -> RequestPaymentParams {
        jsapi::request_payment_params(
            &self.merchant.appid,
            &self.merchant.key,
            prepay_id,
            self.now(),
            &nonce_str(),
        )
    }

    /// Authenticates and decrypts a notify (refreshing certificates on an unknown serial).
    pub async fn open_notify(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
    ) -> Result<OpenedNotify, NotifyError> {
        self.ensure_certificates()
            .await
            .map_err(|e| NotifyError::Keys(e.to_string()))?;
        self.verify_signed(headers, body).await?;
        notify::decrypt_verified(&self.merchant.apiv3_key, body)
    }

    /// A verified `TRANSACTION.*` notify as its transaction, checked to be for our mchid.
    pub async fn transaction_notify(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
    ) -> Result<(OpenedNotify, Transaction), NotifyError> {
        let opened = self.open_notify(headers, body).await?;
        let tx: Transaction = serde_json::from_slice(&opened.plaintext)
            .map_err(|e| NotifyError::Json(e.to_string()))?;
        self.check_ours(&tx)
            .map_err(|_| NotifyError::Mismatch("mchid"))?;
        Ok((opened, tx))
    }

    /// A verified `REFUND.*` notify as its refund, checked to be for our mchid (the refund's
    /// identity and amounts are the caller's to check against its own records).
    pub async fn refund_notify(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
    ) -> Result<(OpenedNotify, RefundNotice), NotifyError> {
        let opened = self.open_notify(headers, body).await?;
        let notice: RefundNotice = serde_json::from_slice(&opened.plaintext)
            .map_err(|e| NotifyError::Json(e.to_string()))?;
        if notice.mchid != self.merchant.mchid {
            return Err(NotifyError::Mismatch("mchid"));
        }
        Ok((opened, notice))
    }

    /// The transaction is this merchant's (its appid is the caller's to check against the order).
    fn check_ours(&self, tx: &Transaction) -> Result<(), V3Error> {
        if tx.mchid != self.merchant.mchid {
            return Err(V3Error::BadResponse("mchid is not ours".into()));
        }
        Ok(())
    }
}

/// Our order numbers are `[A-Za-z0-9_\-|*]`; anything else would change the URL we sign.
fn path_segment(s: &str) -> Result<&str, V3Error> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
    {
        Ok(s)
    } else {
        Err(V3Error::BadResponse(
            "identifier must be [A-Za-z0-9_-|*]".into(),
        ))
    }
}
