//! The parameters of `wx.requestPayment`: WeChat's second signature, over the prepay_id.

use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::pay::api::PayConfig;
use crate::pay::sign::sign;

/// What the mini program passes to `wx.requestPayment` (serialized as `appId`, `timeStamp`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPaymentParams {
    /// Signed but not passed to `wx.requestPayment` itself.
    pub app_id: String,
    /// Unix seconds as a string.
    pub time_stamp: String,
    pub nonce_str: String,
    /// `prepay_id=...`.
    pub package: String,
    /// `MD5` or `HMAC-SHA256`: the same as used for `unifiedorder` (`RSA` on Pay v3).
    pub sign_type: String,
    pub pay_sign: String,
}

/// Signs `appId`, `nonceStr`, `package`, `signType`, `timeStamp` with the pay key.
///
/// ```
/// use wechat::pay::{PayConfig, request_payment_params, sign::{SignType, verify}};
///
/// let pay = PayConfig::new("wx1", "1900000109", "key");
/// let p = request_payment_params(&pay, "wx2017", 1_700_000_000, "abc");
/// assert_eq!(p.package, "prepay_id=wx2017");
/// assert_eq!(p.sign_type, "MD5");
/// let json = serde_json::to_value(&p).unwrap();
/// assert_eq!(json["timeStamp"], "1700000000");
/// let signed = [("appId", "wx1"), ("timeStamp", "1700000000"), ("nonceStr", "abc"),
///               ("package", "prepay_id=wx2017"), ("signType", "MD5")];
/// assert!(verify(signed, "key", SignType::Md5, &p.pay_sign));
/// ```
pub fn request_payment_params(
    pay: &PayConfig,
    prepay_id: &str,
    time_stamp: i64,
    nonce_str: &str,
) -> RequestPaymentParams {
    let time_stamp = time_stamp.to_string();
    let package = format!("prepay_id={prepay_id}");
    let sign_type = pay.sign_type.as_str();
    let pay_sign = sign(
        [
            ("appId", pay.appid.as_str()),
            ("nonceStr", nonce_str),
            ("package", package.as_str()),
            ("signType", sign_type),
            ("timeStamp", time_stamp.as_str()),
        ],
        &pay.key,
        pay.sign_type,
    );
    RequestPaymentParams {
        app_id: pay.appid.clone(),
        time_stamp,
        nonce_str: nonce_str.to_owned(),
        package,
        sign_type: sign_type.to_owned(),
        pay_sign,
    }
}

/// 32 random characters `[A-Za-z0-9]` from the thread-local CSPRNG (ChaCha, OS-seeded).
///
/// ```
/// let n = wechat::pay::nonce_str();
/// assert_eq!(n.len(), 32);
/// assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
/// ```
pub fn nonce_str() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}
