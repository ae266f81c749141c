//! The strings Pay v3 signs, and the `Authorization` header of a request.
//!
//! Every v3 signature is SHA256withRSA over lines that each end in `\n`
//! (签名生成, <https://wechatpay-api.gitbook.io/wechatpay-api-v3/qian-ming-zhi-nan-1/qian-ming-sheng-cheng>;
//! 签名验证, <https://pay.weixin.qq.com/wiki/doc/apiv3/wechatpay/wechatpay4_1.shtml>):
//! a request signs `METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n` (the URL is the path plus query, no
//! host; an empty body is an empty line), a response or notify `TIMESTAMP\nNONCE\nBODY\n`, and
//! `wx.requestPayment` `appId\ntimeStamp\nnonceStr\npackage\n`.

use crate::pay::v3::keys::MerchantKey;

/// The scheme of the `Authorization` header.
pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Lines joined with a `\n` after each, as every v3 signature wants.
pub fn lines<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out
}

/// `METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n` for a request to `url` (path and query).
pub fn request_message(
    method: &str,
    url: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let ts = timestamp.to_string();
    lines([
        method.as_bytes(),
        url.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
        body,
    ])
}

/// `TIMESTAMP\nNONCE\nBODY\n` of a response or a notify, from its `Wechatpay-*` headers.
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    lines([timestamp.as_bytes(), nonce.as_bytes(), body])
}

/// One request as signed: method, URL (path and query), timestamp, nonce, body.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub timestamp: i64,
    pub nonce: &'a str,
    pub body: &'a [u8],
}

/// The `Authorization` header value for one request.
///
/// `serial_no` is the serial of the merchant API certificate whose key signs.
pub fn authorization(
    mchid: &str,
    serial_no: &str,
    key: &MerchantKey,
    req: &SignedRequest<'_>,
) -> String {
    let SignedRequest {
        method,
        url,
        timestamp,
        nonce,
        body,
    } = *req;
    let signature = key.sign(&request_message(method, url, timestamp, nonce, body));
    format!(
        r#"{AUTH_SCHEME} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",timestamp="{timestamp}",serial_no="{serial_no}""#
    )
}
