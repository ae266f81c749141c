//! WeChat Pay API v3 as WeChat serves it: JSON paths under `/v3/`, merchant request signatures
//! verified, answers and notifies signed (public-key mode or certificate mode), notify resources
//! encrypted with the APIv3 key, and v3 faults (bad signature, unknown serial, clock skew,
//! tampered ciphertext, certificate rotation mid-run).
//!
//! | path | answers |
//! |---|---|
//! | `POST /v3/pay/transactions/jsapi` | `{"prepay_id"}`; the same prepay_id for an identical repeat; 403 `OUT_TRADE_NO_USED` for the same out_trade_no with other fields; 403 `ORDERPAID`; 400 `ORDER_CLOSED`; 400 `PARAM_ERROR` |
//! | `GET /v3/pay/transactions/out-trade-no/{no}?mchid=` | the transaction; 404 `ORDER_NOT_EXIST` |
//! | `POST /v3/pay/transactions/out-trade-no/{no}/close` `{"mchid"}` | 204; 403 `ORDERPAID` |
//! | `POST /v3/refund/domestic/refunds` | the refund, `PROCESSING`; the same refund for a repeated out_refund_no; 400 `INVALID_REQUEST` (out_refund_no reused with other amounts, order unpaid, more than refundable), 404 `RESOURCE_NOT_EXISTS` (no such order), 403 `NOT_ENOUGH` and 500 `SYSTEM_ERROR` (faults) |
//! | `GET /v3/refund/domestic/refunds/{out_refund_no}` | the refund: `PROCESSING`, then `SUCCESS` (or `ABNORMAL` / `CLOSED` by fault) after `refund_after_ms` × time scale; 404 `RESOURCE_NOT_EXISTS` |
//!
//! Once settled, a refund with a `notify_url` gets its `REFUND.SUCCESS` / `REFUND.ABNORMAL` /
//! `REFUND.CLOSED` notify, encrypted and signed like the payment notify and retried on the same
//! schedule (unless `drop_notify`).
//! | `GET /v3/certificates` | certificate and migration mode: the platform certificates, each encrypted (`associated_data` `certificate`); fault `certificates_delay_ms` holds the answer |
//!
//! Every request must carry a valid `WECHATPAY2-SHA256-RSA2048` Authorization by the merchant
//! (401 `SIGN_ERROR` otherwise). Developer endpoints: `POST /sandbox/pay` pays v3 orders too
//! (their notify is v3 JSON), `GET /sandbox/v3/orders/{out_trade_no}` (with `jsapi_calls`), `GET /sandbox/v3/refunds`
//! `[?out_trade_no=]`, `GET /sandbox/v3/refunds/{out_refund_no}`, `GET /sandbox/v3/notifies`
//! `[?out_trade_no=|out_refund_no=]`,
//! `GET|POST|DELETE /sandbox/v3/faults` ([`V3Faults`]), `POST /sandbox/v3/rotate` (certificate
//! mode switches to certificate B; A stays listed and valid), `GET /sandbox/v3/keys` (the mode,
//! the public-key share and [`KeyUse`]: which key signed how many answers and callbacks).
//!
//! Migration mode ([`Mode::Migration`]) signs with both keys as WeChat does while a merchant
//! moves from platform certificates to the public key.

mod api;
mod certificates;
pub mod crypto;
mod dev_api;
pub mod keys;
mod notify;
mod refund;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use actix_web::web;
use serde::{Deserialize, Serialize};
use service_kit::Secret;

pub use keys::{Mode, Use, dev};
pub use notify::V3NotifyRecord;

/// The v3 settings of the sandbox (flattened into [`Config`](crate::Config)).
#[derive(clap::Args, Clone, Debug)]
pub struct V3Config {
    /// The merchant's APIv3 key (32 characters): encrypts notify resources and certificates.
    #[arg(long = "pay-v3-key", env = "WXMP_PAY_V3_KEY", value_name = "WXMP_PAY_V3_KEY", default_value = dev::APIV3_KEY, hide_default_value = true, hide_env_values = true)]
    pub apiv3_key: Secret,
    /// Serial of the merchant API certificate whose key signs requests.
    #[arg(long = "pay-cert-serial", env = "WXMP_PAY_CERT_SERIAL", value_name = "WXMP_PAY_CERT_SERIAL", default_value = dev::MERCHANT_SERIAL)]
    pub merchant_serial: String,
    /// PEM public key of the merchant (default: the dev merchant's).
    #[arg(
        long = "pay-v3-merchant-public-key-path",
        env = "SANDBOX_PAY_V3_MERCHANT_PUBLIC_KEY_PATH",
        value_name = "SANDBOX_PAY_V3_MERCHANT_PUBLIC_KEY_PATH"
    )]
    pub merchant_public_key_path: Option<std::path::PathBuf>,
    /// How WeChat signs: `public-key` (PUB_KEY_ID_…), `certificate`, or `migration` (the move
    /// from certificates to the public key: both sign, see [`Mode::Migration`]).
    #[arg(long = "pay-v3-mode", env = "SANDBOX_PAY_V3_MODE", value_name = "SANDBOX_PAY_V3_MODE", value_enum, default_value_t = Mode::PublicKey)]
    pub mode: Mode,
    /// Migration mode: the percentage of callbacks signed with the public key (WeChat raises it
    /// 0.1 → 1 → 5 → 10 → 20 → 50 → 100 over the seven days of the move).
    #[arg(long = "pay-v3-public-key-share", env = "SANDBOX_PAY_V3_PUBLIC_KEY_SHARE", value_name = "SANDBOX_PAY_V3_PUBLIC_KEY_SHARE",
          default_value_t = DEFAULT_PUBLIC_KEY_SHARE, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub public_key_share: u8,
    /// How long a refund stays PROCESSING (times SANDBOX_NOTIFY_TIME_SCALE).
    #[arg(
        long = "pay-v3-refund-after-ms",
        env = "SANDBOX_PAY_V3_REFUND_AFTER_MS",
        value_name = "SANDBOX_PAY_V3_REFUND_AFTER_MS",
        default_value_t = 5000
    )]
    pub refund_after_ms: u64,
}

impl Default for V3Config {
    fn default() -> Self {
        Self {
            apiv3_key: Secret::new(dev::APIV3_KEY),
            merchant_serial: dev::MERCHANT_SERIAL.to_owned(),
            merchant_public_key_path: None,
            mode: Mode::PublicKey,
            public_key_share: DEFAULT_PUBLIC_KEY_SHARE,
            refund_after_ms: 5000,
        }
    }
}

/// Default of `SANDBOX_PAY_V3_PUBLIC_KEY_SHARE`: the sixth day of the move.
pub const DEFAULT_PUBLIC_KEY_SHARE: u8 = 50;

impl V3Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.apiv3_key.expose().len() != 32 {
            return Err("WXMP_PAY_V3_KEY must be 32 bytes".into());
        }
        if self.merchant_serial.trim().is_empty() {
            return Err("WXMP_PAY_CERT_SERIAL must not be empty".into());
        }
        if self.public_key_share > 100 {
            return Err("SANDBOX_PAY_V3_PUBLIC_KEY_SHARE is a percentage, 0 to 100".into());
        }
        Ok(())
    }
}

/// v3 fault knobs (`/sandbox/v3/faults`); each applies to answers and notifies alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct V3Faults {
    /// Sign with a key WeChat never published (a forged signature).
    pub bad_signature: bool,
    /// Put a serial nobody knows in `Wechatpay-Serial`.
    pub unknown_serial: bool,
    /// Shift `Wechatpay-Timestamp` by this many seconds.
    pub clock_skew_secs: i64,
    /// Notifies: flip a bit of the encrypted resource (still validly signed).
    pub tamper_ciphertext: bool,
    /// Refunds answer 403 NOT_ENOUGH (as the general `refund_not_enough` fault does).
    pub refund_not_enough: bool,
    /// `/v3/certificates` answers only after this many milliseconds (a hanging download when
    /// longer than the merchant's timeout).
    pub certificates_delay_ms: u64,
}

/// Which keys signed what: the merchant platform's two progress bars of the move (the share of
/// callbacks, and of answers, signed with the public key), and the certificate downloads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUse {
    pub answers: u64,
    pub answers_public_key: u64,
    pub notifies: u64,
    pub notifies_public_key: u64,
    /// `GET /v3/certificates` requests received, and the most ever under way at once.
    pub certificate_requests: u64,
    pub certificate_requests_in_flight: u64,
    pub certificate_requests_max_in_flight: u64,
}

/// A v3 order as WeChat holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct V3Order {
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    pub description: String,
    pub total: i64,
    pub openid: String,
    pub notify_url: String,
    pub attach: Option<String>,
    pub time_expire: Option<String>,
    pub prepay_id: String,
    /// The request body minus nothing: a repeat must match it field for field.
    pub request: serde_json::Value,
    pub trade_state: String,
    pub transaction_id: Option<String>,
    pub success_time: Option<String>,
    pub created_at_ms: i64,
    pub notify_state: String,
    pub notify_attempts: u32,
    /// Developer view only (`GET /sandbox/v3/orders/{no}`): valid JSAPI calls naming this
    /// out_trade_no, answered or not (v2's `unifiedorder_calls`).
    #[serde(default)]
    pub jsapi_calls: u32,
}

/// A v3 refund as WeChat keeps it (`GET /sandbox/v3/refunds/{out_refund_no}`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct V3Refund {
    pub refund_id: String,
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub mchid: String,
    pub refund: i64,
    pub total: i64,
    pub reason: Option<String>,
    pub created_at_ms: i64,
    pub notify_url: Option<String>,
    /// `PROCESSING`, then `SUCCESS`, `ABNORMAL` (fault `refund_change`) or `CLOSED` (fault
    /// `refund_close`) after `SANDBOX_PAY_V3_REFUND_AFTER_MS` × the time scale.
    pub status: String,
    pub success_time: Option<String>,
    /// How many refund requests named this out_refund_no (repeats answer the same refund).
    pub requests: u32,
    /// `none`, `pending`, `accepted`, `dropped` (fault `drop_notify`) or `gave_up`.
    pub notify_state: String,
    pub notify_attempts: u32,
    /// Where the money went (`user_received_account`): 支付用户零钱 unless an abnormal refund
    /// was re-routed (发起异常退款): then the payer's card or 商户结算银行账户 once SUCCESS.
    #[serde(default)]
    pub received_account: Option<String>,
    /// `type` of an accepted 发起异常退款 (USER_BANK_CARD / MERCHANT_BANK_CARD), and the account
    /// the re-routed money goes to when it settles.
    #[serde(default)]
    pub reroute: Option<(String, String)>,
    /// The faults of the request that created it (they decide how it settles).
    #[serde(skip)]
    pub faults: crate::faults::Faults,
}

impl V3Refund {
    /// Counts against the order's refundable amount (a CLOSED one does not). ABNORMAL does:
    /// the money waits in WeChat's intermediate refund account until re-routed
    /// ("退款资金会停留在退款的中间账户内", <https://pay.weixin.qq.com/doc/v3/merchant/4013071031>).
    /// `user_received_account` as WeChat answers it now.
    pub fn received_account(&self) -> &str {
        self.received_account.as_deref().unwrap_or("支付用户零钱")
    }

    pub fn holds_money(&self) -> bool {
        matches!(self.status.as_str(), "PROCESSING" | "SUCCESS" | "ABNORMAL")
    }
}

#[derive(Default)]
pub struct V3State {
    pub rotated: bool,
    pub key_use: KeyUse,
    pub faults: V3Faults,
    pub orders: HashMap<String, V3Order>,
    pub prepay_ids: HashMap<String, String>,
    pub refunds: HashMap<String, V3Refund>,
    pub notifies: Vec<V3NotifyRecord>,
}

/// Everything v3 in the sandbox: settings, WeChat's keys, the world.
pub struct V3 {
    pub mode: Mode,
    /// Migration mode: percentage of callbacks signed with the public key.
    pub public_key_share: u8,
    pub apiv3_key: [u8; 32],
    pub merchant_serial: String,
    pub merchant_public_key: String,
    pub refund_after_ms: u64,
    /// `SANDBOX_NOTIFY_TIME_SCALE`: scales the notify schedule and the refund delay.
    pub time_scale: f64,
    pub signers: keys::Signers,
    state: Mutex<V3State>,
}

impl V3 {
    pub fn new(config: &V3Config, time_scale: f64) -> std::io::Result<Self> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let merchant_public_key = match &config.merchant_public_key_path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("SANDBOX_PAY_V3_MERCHANT_PUBLIC_KEY_PATH: {e}"),
                )
            })?,
            None => dev::MERCHANT_PUBLIC_KEY.to_owned(),
        };
        Ok(Self {
            mode: config.mode,
            public_key_share: config.public_key_share,
            apiv3_key: config
                .apiv3_key
                .expose()
                .as_bytes()
                .try_into()
                .expect("validated length"),
            merchant_serial: config.merchant_serial.clone(),
            merchant_public_key,
            refund_after_ms: config.refund_after_ms,
            time_scale,
            signers: keys::Signers::built_in(),
            state: Mutex::new(V3State::default()),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, V3State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `/v3` WeChat paths.
pub fn routes(cfg: &mut web::ServiceConfig) {
    api::routes(cfg);
}

/// The `/sandbox/v3` developer paths (inside the `/sandbox` scope).
pub fn dev_routes(cfg: &mut web::ServiceConfig) {
    dev_api::routes(cfg);
}

pub(crate) use api::{
    authenticate as authenticate_request, error as error_response, signed as signed_response,
};
pub(crate) use dev_api::{pay_v3_order, settle_v3_payment, spawn_transaction_notify};
pub(crate) use refund::{V3RefundEnd, conclude_refund};
