//! `wx.requestPayment` for a v3 prepay_id: `signType` `RSA`, `paySign` the merchant key's
//! SHA256withRSA over `appId\ntimeStamp\nnonceStr\npackage\n`
//! (小程序调起支付, <https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter7_2_9.shtml>).

use crate::pay::jsapi::RequestPaymentParams;
use crate::pay::v3::keys::MerchantKey;
use crate::pay::v3::sign::lines;

/// The parameters for `wx.requestPayment`, the same shape as v2's with `signType: "RSA"`.
pub fn request_payment_params(
    appid: &str,
    key: &MerchantKey,
    prepay_id: &str,
    time_stamp: i64,
    nonce_str: &str,
) -> RequestPaymentParams {
    let time_stamp = time_stamp.to_string();
    let package = format!("prepay_id={prepay_id}");
    let pay_sign = key.sign(&lines([
        appid.as_bytes(),
        time_stamp.as_bytes(),
        nonce_str.as_bytes(),
        package.as_bytes(),
    ]));
    RequestPaymentParams {
        app_id: appid.to_owned(),
        time_stamp,
        nonce_str: nonce_str.to_owned(),
        package,
        sign_type: "RSA".to_owned(),
        pay_sign,
    }
}
