//! Pay v3: known-answer tests against vectors made by OpenSSL (commands next to each vector,
//! run in `testdata/pay_v3/`), and the client against a local server playing WeChat.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::helpers::{Reply, Request, serve};
use wechat::pay::v3::aead::{self, ApiV3Key, DecryptError, EncryptedResource};
use wechat::pay::v3::error::code;
use wechat::pay::v3::keys::{KeyError, MerchantKey, PublicKey};
use wechat::pay::v3::sign::{SignedRequest, authorization, request_message, response_message};
use wechat::pay::v3::verify::{PlatformKeys, SignatureHeaders, VerifyError};
use wechat::pay::v3::{
    JsapiOrder, Merchant, NotifyError, OrderAmount, Payer, RefundAmountRequest, RefundRequest,
    V3Client, V3Error, jsapi,
};

const MERCHANT_KEY: &str = include_str!("../../testdata/pay_v3/merchant_key.pem");
const PLATFORM_KEY: &str = include_str!("../../testdata/pay_v3/platform_key.pem");
const PLATFORM_PUB: &str = include_str!("../../testdata/pay_v3/platform_pub.pem");
const PLATFORM_CERT: &str = include_str!("../../testdata/pay_v3/platform_cert.pem");
const CERT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
pub(crate) const PUB_KEY_ID: &str = "PUB_KEY_ID_0112345678902026120100000000000001";
const APIV3_KEY: &str = "0123456789abcdefghijABCDEFGHIJ01";
const APPID: &str = "wxd678efh567hg6787";
const MCHID: &str = "1230000109";

// printf 'POST\n/v3/pay/transactions/jsapi\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n{"appid":"wxd678efh567hg6787","mchid":"1230000109"}\n' \
//   | openssl dgst -sha256 -sign merchant_key.pem | base64 -w0
const REQUEST_SIG: &str = "CLdcpjCWmKy3tIPNLT1lQ6F867GY5+zex70ehjAcH5IfRc6XiOVuwvNURSdia67U2xt2SAOg4dzmJJSWFbD/3RR5IYpf0XhmQ6W6nrZr4lnGbGf1rDRa0RJ/bUlgRiFCMUDISkZ/2TCQGeJQmQ7rRwFMM0blvZbx9M4SxoAKjNHrdL3oE6pHOKwP6d1KaboK886O7noBdaVcuMxfsAG9RXe+ndQX2PXzguRys5h136Posnp50sawqzC75ZkWpYG9oerW4n9KeUJJ4ILkX1YLnfczUGk0iJlIv6C0mQ5hiM7CJYwys10s1Vr8C+9N14jVb3ZTm86JzVbiMO+guK+x+A==";
const REQUEST_BODY: &str = r#"{"appid":"wxd678efh567hg6787","mchid":"1230000109"}"#;

// printf '1554209980\nc5ac7061fccab6bf3e254dcf98995b8c\n{"prepay_id":"wx26112221580621e9b071c00d9e093b0000"}\n' \
//   | openssl dgst -sha256 -sign platform_key.pem | base64 -w0
const RESPONSE_SIG: &str = "YsTY5wUgk4xknpeI3d7JBUUvuXkUAO0ofbixv2tHzSLoBHTVfCXlhQ324IYiyZEth6EJxB2O8rdBLAcbUJLk8AGEXiEmxk34u6VKIP5weOBP5lEX0SJ96fqOmTOtwomEVajcTlo2XvonhKRFiFRZVoa7H4rc/pR2CtZVPd2yYhYUYgzcx8pcJhbIyywF8Q50zpuJ5CJaxkem7EuZR0YsWsoLKGI0up7E0dnGO8LVtE1mEAXtxvbGksGsXUYIrDt6ucwyYy0p3DvRdj2k1fysDD7cRg0gvvoxn1O4x5e5ns3QfByco39X0nnTjZa0Dc3N/5J+GLqi4vgVd8izmwhUGg==";
const RESPONSE_BODY: &str = r#"{"prepay_id":"wx26112221580621e9b071c00d9e093b0000"}"#;
const RESPONSE_TS: i64 = 1_554_209_980;
const RESPONSE_NONCE: &str = "c5ac7061fccab6bf3e254dcf98995b8c";

// printf 'wx8888888888888888\n1414561699\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\nprepay_id=wx201410272009395522657a690389285100\n' \
//   | openssl dgst -sha256 -sign merchant_key.pem | base64 -w0
const PAY_SIGN: &str = "On4mza1bURKsyCLTKu4gCzdaPcSQY3H+WN5bm/rJj1bSj8YggBRxp4tHnWXtjH5xF3O6qOsIz/XZDcvSIYUimEmFNLMGa96XiSKpxwOS8SL7iiP8i4+DhsHXzeVoApjugD2tzkHeWnnU1A78Y1ouSMvXRvfLPSnDYDHb5fkdu2DLYcpkd2UQa9hJopOHG8O2Fwv8qnGCFCL+GcPKkD44Bi2oBnFEQzQPjvH7mxDa2r7CWXrYRyvv2mWcrjzZdUNrhyO4oHLaojE4Wk7lhysAgFkY+1+52yj8fU8SwJ0X7akHtO4jH75meGya4qpgrzRdCzO+Vh806im3p6yGb1rB9w==";

// python3 -c 'from cryptography.hazmat.primitives.ciphers.aead import AESGCM; import base64;
//   print(base64.b64encode(AESGCM(b"0123456789abcdefghijABCDEFGHIJ01").encrypt(b"fdasflkjaQWE",
//   b"{\"out_trade_no\":\"1217752501201407033233368018\",\"trade_state\":\"SUCCESS\",\"amount\":{\"total\":100}}",
//   b"transaction")).decode())'
// (pyca/cryptography's AESGCM is OpenSSL's EVP AES-256-GCM; `openssl enc` refuses AEAD ciphers.)
const GCM_CIPHERTEXT: &str = "6DJu39B/+ckcMS4yAXi4djAWANUIeVhuRfU1sydhTA20TbSJz3+dCGfBli4GdcuvglCsW2U65xvpoxft9DUQ3bEiw9sTuuc7g873bb6DEHZZVqS1HbD3efr7bdfKPlZ2PWpK5i3qus+CHDxGtoc=";
const GCM_PLAINTEXT: &str = r#"{"out_trade_no":"1217752501201407033233368018","trade_state":"SUCCESS","amount":{"total":100}}"#;

fn merchant_key() -> MerchantKey {
    MerchantKey::from_pkcs8_pem(MERCHANT_KEY).unwrap()
}

fn resource(ciphertext: &str, nonce: &str, ad: &str) -> EncryptedResource {
    EncryptedResource {
        algorithm: "AEAD_AES_256_GCM".into(),
        ciphertext: ciphertext.into(),
        associated_data: ad.into(),
        nonce: nonce.into(),
        original_type: Some("transaction".into()),
    }
}

#[test]
fn request_message_is_five_lines_each_ending_in_newline() {
    let msg = request_message(
        "GET",
        "/v3/certificates",
        1_554_208_460,
        "593BEC0C930BF1AFEB40B4A08C8FB242",
        b"",
    );
    assert_eq!(
        msg,
        b"GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
    );
    assert_eq!(
        response_message("1554209980", "n", b""),
        b"1554209980\nn\n\n",
        "an empty (204) body is an empty last line"
    );
}

#[test]
fn request_signature_matches_openssl() {
    let header = authorization(
        MCHID,
        "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C",
        &merchant_key(),
        &SignedRequest {
            method: "POST",
            url: "/v3/pay/transactions/jsapi",
            timestamp: 1_554_208_460,
            nonce: "593BEC0C930BF1AFEB40B4A08C8FB242",
            body: REQUEST_BODY.as_bytes(),
        },
    );
    assert_eq!(
        header,
        format!(
            r#"WECHATPAY2-SHA256-RSA2048 mchid="1230000109",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",signature="{REQUEST_SIG}",timestamp="1554208460",serial_no="1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C""#
        )
    );
}

#[test]
fn response_signature_by_openssl_verifies_with_public_key_and_certificate() {
    let msg = response_message(
        &RESPONSE_TS.to_string(),
        RESPONSE_NONCE,
        RESPONSE_BODY.as_bytes(),
    );
    let public = PublicKey::from_spki_pem(PLATFORM_PUB).unwrap();
    let from_cert = PublicKey::from_certificate_pem(PLATFORM_CERT).unwrap();
    assert_eq!(public, from_cert, "the certificate carries the same key");
    assert!(public.verify(&msg, RESPONSE_SIG));
    assert!(from_cert.verify(&msg, RESPONSE_SIG));
    let tampered = response_message(
        &RESPONSE_TS.to_string(),
        RESPONSE_NONCE,
        b"{\"prepay_id\":\"x\"}",
    );
    assert!(!public.verify(&tampered, RESPONSE_SIG));
    assert!(!public.verify(&msg, "not base64!"));
    // The merchant's key is not WeChat's.
    let merchant_pub = MerchantKey::from_pkcs8_pem(MERCHANT_KEY).unwrap();
    assert!(!public.verify(&msg, &merchant_pub.sign(&msg)));
}

#[test]
fn pay_sign_matches_openssl() {
    let p = jsapi::request_payment_params(
        "wx8888888888888888",
        &merchant_key(),
        "wx201410272009395522657a690389285100",
        1_414_561_699,
        "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
    );
    assert_eq!(p.sign_type, "RSA");
    assert_eq!(p.package, "prepay_id=wx201410272009395522657a690389285100");
    assert_eq!(p.time_stamp, "1414561699");
    assert_eq!(p.pay_sign, PAY_SIGN);
}

#[test]
fn aes_gcm_decrypts_openssl_vector_and_rejects_tampering() {
    let key = ApiV3Key::new(APIV3_KEY).unwrap();
    let plain = aead::decrypt(
        &key,
        &resource(GCM_CIPHERTEXT, "fdasflkjaQWE", "transaction"),
    )
    .unwrap();
    assert_eq!(plain, GCM_PLAINTEXT.as_bytes());

    let mut bytes = base64_decode(GCM_CIPHERTEXT);
    bytes[3] ^= 1;
    let tampered = base64_encode(&bytes);
    assert_eq!(
        aead::decrypt(&key, &resource(&tampered, "fdasflkjaQWE", "transaction")),
        Err(DecryptError::Tag)
    );
    assert_eq!(
        aead::decrypt(
            &key,
            &resource(GCM_CIPHERTEXT, "fdasflkjaQWE", "certificate")
        ),
        Err(DecryptError::Tag),
        "associated data is authenticated"
    );
    let other = ApiV3Key::new("0123456789abcdefghijABCDEFGHIJ02").unwrap();
    assert_eq!(
        aead::decrypt(
            &other,
            &resource(GCM_CIPHERTEXT, "fdasflkjaQWE", "transaction")
        ),
        Err(DecryptError::Tag)
    );
    assert_eq!(
        aead::decrypt(&key, &resource(GCM_CIPHERTEXT, "short", "transaction")),
        Err(DecryptError::Nonce)
    );
    let mut other_alg = resource(GCM_CIPHERTEXT, "fdasflkjaQWE", "transaction");
    other_alg.algorithm = "AEAD_SM4_GCM".into();
    assert!(matches!(
        aead::decrypt(&key, &other_alg),
        Err(DecryptError::Algorithm(_))
    ));
}

#[test]
fn keys_reject_bad_input_without_showing_it() {
    assert_eq!(ApiV3Key::new("short").unwrap_err().0, 5);
    assert!(!format!("{:?}", ApiV3Key::new(APIV3_KEY).unwrap()).contains("0123"));
    assert!(!format!("{:?}", merchant_key()).contains("MII"));
    let pkcs1 = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n";
    assert_eq!(
        MerchantKey::from_pkcs8_pem(pkcs1).unwrap_err(),
        KeyError::Pkcs1
    );
    assert_eq!(
        MerchantKey::from_pkcs8_pem(PLATFORM_PUB).unwrap_err(),
        KeyError::NoPem("PRIVATE KEY")
    );
    assert!(matches!(
        PublicKey::from_spki_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
        Err(KeyError::Rejected(_))
    ));
    assert!(PublicKey::from_certificate_der(&[0x30, 0x03, 0x02, 0x01]).is_err());
}

fn headers(ts: i64, nonce: &str, sig: &str, serial: &str) -> SignatureHeaders {
    SignatureHeaders {
        timestamp: ts.to_string(),
        nonce: nonce.into(),
        signature: sig.into(),
        serial: serial.into(),
    }
}

#[test]
fn platform_keys_check_clock_serial_and_signature_in_that_order() {
    let keys =
        PlatformKeys::public_key_mode(PUB_KEY_ID, PublicKey::from_spki_pem(PLATFORM_PUB).unwrap());
    let body = RESPONSE_BODY.as_bytes();
    let ok = headers(RESPONSE_TS, RESPONSE_NONCE, RESPONSE_SIG, PUB_KEY_ID);
    assert_eq!(keys.verify(&ok, body, RESPONSE_TS + 300), Ok(()));
    assert_eq!(keys.verify(&ok, body, RESPONSE_TS - 300), Ok(()));
    assert_eq!(
        keys.verify(&ok, body, RESPONSE_TS + 301),
        Err(VerifyError::Clock { skew_secs: -301 })
    );
    assert_eq!(
        keys.verify(&ok, body, RESPONSE_TS - 301),
        Err(VerifyError::Clock { skew_secs: 301 })
    );
    let wrong_serial = headers(RESPONSE_TS, RESPONSE_NONCE, RESPONSE_SIG, CERT_SERIAL);
    assert_eq!(
        keys.verify(&wrong_serial, body, RESPONSE_TS),
        Err(VerifyError::UnknownSerial(CERT_SERIAL.into()))
    );
    let forged = headers(RESPONSE_TS, "another-nonce", RESPONSE_SIG, PUB_KEY_ID);
    assert_eq!(
        keys.verify(&forged, body, RESPONSE_TS),
        Err(VerifyError::Signature(PUB_KEY_ID.into()))
    );
    let missing = SignatureHeaders::from_lookup(|name| (name != "Wechatpay-Serial").then_some("1"));
    assert_eq!(missing, Err(VerifyError::MissingHeader("Wechatpay-Serial")));
    let message = VerifyError::Signature(PUB_KEY_ID.into()).to_string();
    assert!(message.starts_with("signature"), "{message}");
}

#[test]
fn certificates_rotate_with_overlap_and_expire() {
    use wechat::pay::v3::PlatformCertificate;
    let keys = PlatformKeys::certificate_mode().with_forced_refresh_secs(60);
    let now = RESPONSE_TS;
    assert!(keys.refresh_due(now), "nothing downloaded yet");
    let cert = |serial: &str, expires_at| PlatformCertificate {
        serial_no: serial.into(),
        key: PublicKey::from_certificate_pem(PLATFORM_CERT).unwrap(),
        expires_at,
    };
    keys.install_certificates(vec![cert("OLD", now + 3 * 86_400)], now);
    assert!(!keys.refresh_due(now));
    assert!(
        keys.refresh_due(now + 2 * 86_400 + 1),
        "refresh a day before the last expiry"
    );
    keys.install_certificates(vec![cert("NEW", now + 400 * 86_400)], now + 10);
    assert_eq!(
        keys.certificate_serials(),
        vec!["NEW", "OLD"],
        "both during rotation"
    );
    let body = RESPONSE_BODY.as_bytes();
    let old = headers(now, RESPONSE_NONCE, RESPONSE_SIG, "OLD");
    assert_eq!(keys.verify(&old, body, now), Ok(()));
    // Once expired, the old certificate no longer verifies anything.
    let later = now + 3 * 86_400 + 1;
    let old_late = headers(later, RESPONSE_NONCE, RESPONSE_SIG, "OLD");
    assert_eq!(
        keys.verify(&old_late, body, later),
        Err(VerifyError::UnknownSerial("OLD".into()))
    );
    assert!(keys.claim_forced_refresh(now));
    assert!(
        !keys.claim_forced_refresh(now + 59),
        "forced downloads are rate limited"
    );
    assert!(keys.claim_forced_refresh(now + 60));
}

// ---- the client against a local server playing WeChat ----

/// WeChat's side of the test: signs responses with the platform key.
pub(crate) struct Wechat {
    signer: MerchantKey,
    serial: String,
    now: Arc<AtomicI64>,
}

impl Wechat {
    pub(crate) fn new(serial: &str, now: Arc<AtomicI64>) -> Arc<Self> {
        Arc::new(Self {
            signer: MerchantKey::from_pkcs8_pem(PLATFORM_KEY).unwrap(),
            serial: serial.into(),
            now,
        })
    }

    pub(crate) fn signed(&self, status: u16, body: &str) -> Reply {
        let ts = self.now.load(Ordering::SeqCst).to_string();
        let nonce = "0123456789abcdef";
        let sig = self
            .signer
            .sign(&response_message(&ts, nonce, body.as_bytes()));
        Reply::new("application/json", body.to_owned())
            .status(status)
            .header("Wechatpay-Timestamp", &ts)
            .header("Wechatpay-Nonce", nonce)
            .header("Wechatpay-Signature", &sig)
            .header("Wechatpay-Serial", &self.serial)
    }
}

fn merchant() -> Merchant {
    Merchant {
        appid: APPID.into(),
        mchid: MCHID.into(),
        serial_no: "MERCHANTSERIAL".into(),
        key: merchant_key(),
        apiv3_key: ApiV3Key::new(APIV3_KEY).unwrap(),
    }
}

pub(crate) fn client(
    base: &crate::helpers::Server,
    now: &Arc<AtomicI64>,
    platform: PlatformKeys,
) -> V3Client {
    let now = now.clone();
    V3Client::new(base.client(), merchant(), platform)
        .with_clock(move || now.load(Ordering::SeqCst))
}

pub(crate) fn public_key_mode() -> PlatformKeys {
    PlatformKeys::public_key_mode(PUB_KEY_ID, PublicKey::from_spki_pem(PLATFORM_PUB).unwrap())
}

fn order() -> JsapiOrder {
    JsapiOrder {
        appid: String::new(),
        mchid: String::new(),
        description: "Image形象店-深圳腾大-QQ公仔".into(),
        out_trade_no: "1217752501201407033233368018".into(),
        time_expire: None,
        attach: None,
        notify_url: "https://www.weixin.qq.com/wxpay/pay.php".into(),
        amount: OrderAmount {
            total: 100,
            currency: "CNY".into(),
        },
        payer: Payer {
            openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
        },
    }
}

fn authorization_of(req: &Request) -> String {
    req.headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Parses our Authorization header and checks its signature with the merchant's public key.
pub(crate) fn request_signature_verifies(req: &Request) -> bool {
    let auth = authorization_of(req);
    let Some(params) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
        return false;
    };
    let get = |name: &str| {
        params
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let msg = request_message(
        &req.method,
        &req.target,
        get("timestamp").parse().unwrap_or(0),
        &get("nonce_str"),
        &req.body,
    );
    merchant_public().verify(&msg, &get("signature")) && get("mchid") == MCHID
}

fn merchant_public() -> PublicKey {
    // openssl pkey -in merchant_key.pem -pubout -out merchant_pub.pem
    PublicKey::from_spki_pem(include_str!("../../testdata/pay_v3/merchant_pub.pem")).unwrap()
}

#[tokio::test]
async fn jsapi_signs_the_request_and_verifies_the_response() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let wx = Wechat::new(PUB_KEY_ID, now.clone());
    let side = wx.clone();
    let server = serve(move |_| {
        side.signed(
            200,
            r#"{"prepay_id":"wx26112221580621e9b071c00d9e093b0000"}"#,
        )
    })
    .await;
    let client = client(&server, &now, public_key_mode());
    let prepay = client.jsapi(order()).await.unwrap();
    assert_eq!(prepay, "wx26112221580621e9b071c00d9e093b0000");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].target, "/v3/pay/transactions/jsapi");
    let sent: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(sent["appid"], APPID);
    assert_eq!(sent["mchid"], MCHID);
    assert_eq!(sent["amount"]["total"], 100);
    assert!(
        request_signature_verifies(&reqs[0]),
        "{}",
        authorization_of(&reqs[0])
    );
    assert!(authorization_of(&reqs[0]).contains(r#"serial_no="MERCHANTSERIAL""#));

    let params = client.request_payment_params(&prepay);
    assert_eq!(params.sign_type, "RSA");
    assert_eq!(params.time_stamp, "1800000000");
}

#[tokio::test]
async fn a_response_that_fails_verification_is_an_error_not_a_result() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    // Signed by WeChat's key but declared under a serial we do not know.
    let wx = Wechat::new("PUB_KEY_ID_SOMEONE_ELSE", now.clone());
    let server = serve(move |_| wx.signed(200, r#"{"prepay_id":"wx1"}"#)).await;
    let err = client(&server, &now, public_key_mode())
        .jsapi(order())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        V3Error::Verify(VerifyError::UnknownSerial("PUB_KEY_ID_SOMEONE_ELSE".into()))
    );
    assert!(
        err.is_retryable(),
        "an unauthenticated answer counts as WeChat unavailable"
    );

    // Signed, but with a clock ten minutes off.
    let skewed = Arc::new(AtomicI64::new(1_800_000_600));
    let wx = Wechat::new(PUB_KEY_ID, skewed);
    let server = serve(move |_| wx.signed(200, r#"{"prepay_id":"wx1"}"#)).await;
    let err = client(&server, &now, public_key_mode())
        .jsapi(order())
        .await
        .unwrap_err();
    assert_eq!(err, V3Error::Verify(VerifyError::Clock { skew_secs: 600 }));

    // Unsigned.
    let server = serve(|_| Reply::new("application/json", r#"{"prepay_id":"wx1"}"#)).await;
    let err = client(&server, &now, public_key_mode())
        .jsapi(order())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        V3Error::Verify(VerifyError::MissingHeader("Wechatpay-Timestamp"))
    );
}

#[tokio::test]
async fn errors_map_status_and_code() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    for (status, body, retryable) in [
        (
            400,
            r#"{"code":"ORDER_CLOSED","message":"订单已关闭"}"#,
            false,
        ),
        (
            403,
            r#"{"code":"ORDERPAID","message":"该订单已支付"}"#,
            false,
        ),
        (403, r#"{"code":"NOT_ENOUGH","message":"余额不足"}"#, false),
        (401, r#"{"code":"SIGN_ERROR","message":"签名错误"}"#, false),
        (
            429,
            r#"{"code":"FREQUENCY_LIMITED","message":"频率超限"}"#,
            true,
        ),
        (500, r#"{"code":"SYSTEM_ERROR","message":"系统错误"}"#, true),
    ] {
        let server = serve(move |_| Reply::new("application/json", body).status(status)).await;
        let err = client(&server, &now, public_key_mode())
            .jsapi(order())
            .await
            .unwrap_err();
        let expected: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(err.code(), expected["code"].as_str(), "{err}");
        assert_eq!(err.is_retryable(), retryable, "{err}");
    }
    assert_eq!(code::ORDERPAID, "ORDERPAID");
    let server = serve(|_| Reply::new("text/html", "<html>bad gateway</html>").status(502)).await;
    let err = client(&server, &now, public_key_mode())
        .close("A1")
        .await
        .unwrap_err();
    assert!(matches!(err, V3Error::Transport(_)), "{err}");
}

#[tokio::test]
async fn query_close_refund_and_refund_query_use_v3_paths() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let wx = Wechat::new(PUB_KEY_ID, now.clone());
    let side = wx.clone();
    let server = serve(move |req| {
        let path = req.target.split('?').next().unwrap_or_default().to_owned();
        match (req.method.as_str(), path.as_str()) {
            ("GET", "/v3/pay/transactions/out-trade-no/A1") => side.signed(
                200,
                r#"{"appid":"wxd678efh567hg6787","mchid":"1230000109","out_trade_no":"A1","transaction_id":"4200001","trade_state":"SUCCESS","success_time":"2026-12-01T10:00:00+08:00","amount":{"total":100,"payer_total":100,"currency":"CNY"},"payer":{"openid":"o1"}}"#,
            ),
            ("POST", "/v3/pay/transactions/out-trade-no/A1/close") => side.signed(204, ""),
            ("POST", "/v3/refund/domestic/refunds") | ("GET", "/v3/refund/domestic/refunds/R1") => side.signed(
                200,
                r#"{"refund_id":"50000000382019052709732678859","out_refund_no":"R1","transaction_id":"4200001","out_trade_no":"A1","status":"PROCESSING","amount":{"total":100,"refund":40,"payer_refund":40,"currency":"CNY"}}"#,
            ),
            _ => Reply::new("application/json", r#"{"code":"NOT_FOUND","message":"x"}"#).status(404),
        }
    })
    .await;
    let client = client(&server, &now, public_key_mode());
    let tx = client.query_by_out_trade_no("A1").await.unwrap();
    assert_eq!(tx.state().unwrap(), wechat::pay::TradeState::Success);
    assert_eq!(tx.total(), Some(100));
    assert_eq!(tx.success_unix(), Some(1_796_090_400));
    client.close("A1").await.unwrap();
    let refund = client
        .refund(&RefundRequest {
            out_trade_no: "A1".into(),
            out_refund_no: "R1".into(),
            reason: None,
            notify_url: None,
            amount: RefundAmountRequest {
                refund: 40,
                total: 100,
                currency: "CNY".into(),
            },
        })
        .await
        .unwrap();
    assert_eq!(
        (refund.status.as_str(), refund.amount.refund),
        ("PROCESSING", 40)
    );
    assert_eq!(client.query_refund("R1").await.unwrap().out_refund_no, "R1");
    let reqs = server.requests();
    assert_eq!(
        reqs[0].target,
        "/v3/pay/transactions/out-trade-no/A1?mchid=1230000109"
    );
    assert!(reqs.iter().all(request_signature_verifies));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reqs[1].body).unwrap(),
        serde_json::json!({"mchid": MCHID})
    );
    assert!(
        client.query_by_out_trade_no("A1/../x").await.is_err(),
        "no path injection"
    );
}

/// Encrypts like WeChat for the certificate endpoint and notifies (pyca/OpenSSL vector above
/// pins the decryption side; this helper only builds inputs).
fn encrypt(plaintext: &[u8], nonce: &str, ad: &str) -> String {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, APIV3_KEY.as_bytes()).unwrap());
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce.as_bytes().try_into().unwrap()),
        Aad::from(ad.as_bytes()),
        &mut buf,
    )
    .unwrap();
    base64_encode(&buf)
}

#[tokio::test]
async fn certificate_mode_downloads_on_unknown_serial_and_accepts_both_during_rotation() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let serial = Arc::new(std::sync::Mutex::new(vec!["OLDSERIAL".to_owned()]));
    let listed = serial.clone();
    let clock = now.clone();
    let server = serve(move |req| {
        let serials = listed.lock().unwrap().clone();
        let signing = serials.last().unwrap().clone();
        let wx = Wechat::new(&signing, clock.clone());
        if req.target == "/v3/certificates" {
            let data: Vec<_> = serials
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "serial_no": s,
                        "effective_time": "2026-01-01T00:00:00+08:00",
                        "expire_time": "2031-01-01T00:00:00+08:00",
                        "encrypt_certificate": {
                            "algorithm": "AEAD_AES_256_GCM",
                            "nonce": "61f9c719728a",
                            "associated_data": "certificate",
                            "ciphertext": encrypt(PLATFORM_CERT.as_bytes(), "61f9c719728a", "certificate"),
                        }
                    })
                })
                .collect();
            wx.signed(200, &serde_json::json!({ "data": data }).to_string())
        } else {
            wx.signed(200, r#"{"prepay_id":"wx1"}"#)
        }
    })
    .await;
    let client = client(
        &server,
        &now,
        PlatformKeys::certificate_mode().with_forced_refresh_secs(0),
    );
    assert_eq!(client.jsapi(order()).await.unwrap(), "wx1");
    assert_eq!(client.platform().certificate_serials(), vec!["OLDSERIAL"]);
    let count = |s: &crate::helpers::Server| {
        s.requests()
            .iter()
            .filter(|r| r.target == "/v3/certificates")
            .count()
    };
    assert_eq!(count(&server), 1, "downloaded once before the first call");

    // WeChat rotates: now signs with NEWSERIAL and lists both.
    serial.lock().unwrap().push("NEWSERIAL".into());
    assert_eq!(client.jsapi(order()).await.unwrap(), "wx1");
    assert_eq!(
        count(&server),
        2,
        "the unknown serial triggered one download"
    );
    assert_eq!(
        client.platform().certificate_serials(),
        vec!["NEWSERIAL", "OLDSERIAL"]
    );
    assert!(server.requests().iter().all(request_signature_verifies));
}

#[tokio::test]
async fn certificate_list_with_a_tampered_certificate_is_refused() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let wx = Wechat::new("S1", now.clone());
    let server = serve(move |_| {
        let mut ct = base64_decode(&encrypt(
            PLATFORM_CERT.as_bytes(),
            "61f9c719728a",
            "certificate",
        ));
        ct[10] ^= 0x40;
        let body = serde_json::json!({"data": [{
            "serial_no": "S1", "effective_time": "2026-01-01T00:00:00+08:00",
            "expire_time": "2031-01-01T00:00:00+08:00",
            "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": "61f9c719728a",
              "associated_data": "certificate", "ciphertext": base64_encode(&ct)}}]});
        wx.signed(200, &body.to_string())
    })
    .await;
    let client = client(&server, &now, PlatformKeys::certificate_mode());
    assert_eq!(
        client.refresh_certificates().await.unwrap_err(),
        V3Error::Decrypt(DecryptError::Tag)
    );
    assert!(client.platform().certificate_serials().is_empty());
    assert!(
        client.jsapi(order()).await.is_err(),
        "no certificate, nothing verifies"
    );
}

#[tokio::test]
async fn notify_is_verified_then_decrypted() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let wx = Wechat::new(PUB_KEY_ID, now.clone());
    let server = serve(|_| Reply::new("text/plain", "")).await;
    let client = client(&server, &now, public_key_mode());
    let tx = r#"{"appid":"wxd678efh567hg6787","mchid":"1230000109","out_trade_no":"A1","transaction_id":"4200001","trade_type":"JSAPI","trade_state":"SUCCESS","success_time":"2026-12-01T10:00:00+08:00","payer":{"openid":"o1"},"amount":{"total":100,"payer_total":100,"currency":"CNY","payer_currency":"CNY"}}"#;
    let body = |ciphertext: &str| {
        serde_json::json!({
            "id": "EV-2018022511223320873", "create_time": "2026-12-01T10:00:01+08:00",
            "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
              "ciphertext": ciphertext, "associated_data": "transaction", "nonce": "fdasflkjaQWE"}
        })
        .to_string()
    };
    let good = body(&encrypt(tx.as_bytes(), "fdasflkjaQWE", "transaction"));
    let reply = wx.signed(200, &good);
    let hdr = |reply: &Reply| {
        SignatureHeaders::from_lookup(|n| {
            reply
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        })
        .unwrap()
    };
    let (opened, paid) = client
        .transaction_notify(&hdr(&reply), good.as_bytes())
        .await
        .unwrap();
    assert_eq!(opened.notification.event_type, "TRANSACTION.SUCCESS");
    assert_eq!(
        (paid.out_trade_no.as_str(), paid.total()),
        ("A1", Some(100))
    );

    // Forged: the body changed after signing.
    let forged = good.replace("支付成功", "paid!!");
    assert!(matches!(
        client
            .transaction_notify(&hdr(&reply), forged.as_bytes())
            .await,
        Err(NotifyError::Verify(VerifyError::Signature(_)))
    ));
    // Tampered ciphertext, correctly signed (by someone holding the signing key but not the APIv3 key).
    let mut ct = base64_decode(&encrypt(tx.as_bytes(), "fdasflkjaQWE", "transaction"));
    ct[0] ^= 1;
    let tampered = body(&base64_encode(&ct));
    let reply = wx.signed(200, &tampered);
    assert_eq!(
        client
            .transaction_notify(&hdr(&reply), tampered.as_bytes())
            .await
            .unwrap_err(),
        NotifyError::Decrypt(DecryptError::Tag)
    );
    // Stale: replayed eleven minutes later.
    let reply = wx.signed(200, &good);
    now.fetch_add(660, Ordering::SeqCst);
    assert!(matches!(
        client
            .transaction_notify(&hdr(&reply), good.as_bytes())
            .await,
        Err(NotifyError::Verify(VerifyError::Clock { .. }))
    ));
    assert_eq!(
        wechat::pay::v3::notify::reply_fail("签名错误"),
        r#"{"code":"FAIL","message":"签名错误"}"#
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
