//! Pay v3 end to end: `crates/wechat`'s v3 client against the sandbox playing WeChat (public-key
//! and certificate mode), a merchant notify endpoint that verifies and decrypts like the gateway,
//! and every v3 fault.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::v3::{Mode, dev};
use sandbox::{Config, SandboxHandle};
use serde_json::{Value, json};
use wechat::pay::v3::{
    AbnormalRefundRequest, ApiV3Key, JsapiOrder, Merchant, MerchantKey, NotifyError, OrderAmount,
    Payer, PlatformKeys, PublicKey, RefundAmountRequest, RefundRequest, SignatureHeaders, V3Client,
    V3Error, VerifyError,
};
use wechat::{WechatClient, WechatConfig};
use wxmp_testkit::http::TestServer;

fn config(mode: Mode) -> Config {
    let mut c = Config {
        notify_time_scale: 0.001,
        notify_timeout_ms: 2000,
        ..Config::dev()
    };
    c.pay_v3.mode = mode;
    c.pay_v3.refund_after_ms = 200;
    c
}

async fn start(mode: Mode) -> SandboxHandle {
    sandbox::spawn(config(mode)).await.expect("sandbox starts")
}

fn merchant(key_pem: &str, serial: &str) -> Merchant {
    Merchant {
        appid: sandbox::DEV_APP_ID.into(),
        mchid: sandbox::DEV_MCH_ID.into(),
        serial_no: serial.into(),
        key: MerchantKey::from_pkcs8_pem(key_pem).unwrap(),
        apiv3_key: ApiV3Key::new(dev::APIV3_KEY).unwrap(),
    }
}

fn public_key_mode() -> PlatformKeys {
    PlatformKeys::public_key_mode(
        dev::PUBLIC_KEY_ID,
        PublicKey::from_spki_pem(dev::WECHATPAY_PUBLIC_KEY).unwrap(),
    )
}

fn client_with(sb: &SandboxHandle, m: Merchant, platform: PlatformKeys) -> V3Client {
    let wechat = WechatClient::new(WechatConfig {
        api_base: sb.base_url.clone(),
        pay_base: sb.base_url.clone(),
        ..WechatConfig::default()
    })
    .unwrap();
    V3Client::new(wechat, m, platform)
}

fn client(sb: &SandboxHandle, platform: PlatformKeys) -> V3Client {
    client_with(
        sb,
        merchant(dev::MERCHANT_PRIVATE_KEY, dev::MERCHANT_SERIAL),
        platform,
    )
}

fn order(out_trade_no: &str, notify_url: &str) -> JsapiOrder {
    JsapiOrder {
        appid: String::new(),
        mchid: String::new(),
        description: "wxmp v3 test".into(),
        out_trade_no: out_trade_no.into(),
        time_expire: None,
        attach: Some("a1".into()),
        notify_url: notify_url.into(),
        amount: OrderAmount {
            total: 321,
            currency: "CNY".into(),
        },
        payer: Payer {
            openid: "oTEST00000000000000000000001".into(),
        },
    }
}

/// What the phone hands `/sandbox/pay`: `wx.requestPayment`'s v3 parameters, `paySign` made
/// with the dev merchant key over `appId\ntimeStamp\nnonceStr\npackage\n`, as the
/// merchant's backend makes it.
fn request_payment(prepay: &str) -> Value {
    let appid = sandbox::DEV_APP_ID;
    let (time_stamp, nonce) = ("1764561600", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS");
    let package = format!("prepay_id={prepay}");
    let signer = sandbox::v3::crypto::Signer::from_pem(dev::MERCHANT_PRIVATE_KEY).unwrap();
    let pay_sign = signer.sign(format!("{appid}\n{time_stamp}\n{nonce}\n{package}\n").as_bytes());
    json!({
        "appId": appid,
        "timeStamp": time_stamp,
        "nonceStr": nonce,
        "package": package,
        "signType": "RSA",
        "paySign": pay_sign,
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(sb: &SandboxHandle, path: &str, body: Value) -> (u16, Value) {
    let res = http().post(sb.url(path)).json(&body).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn get(sb: &SandboxHandle, path: &str) -> Value {
    http()
        .get(sb.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What the merchant's notify endpoint concluded about one notify.
#[derive(Clone, Debug)]
enum Seen {
    Paid {
        out_trade_no: String,
        total: Option<i64>,
    },
    Refunded {
        event_type: String,
        out_refund_no: String,
        refund_status: String,
        refund: i64,
    },
    Refused(NotifyError),
}

/// A merchant notify endpoint: verifies and decrypts with `client`, answers 204 or
/// 500 `{"code":"FAIL"}` like the gateway.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    async fn start(client: V3Client) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = TestServer::start(move |request: wxmp_testkit::http::Request| {
            let (client, log) = (client.clone(), log.clone());
            async move {
                let headers = SignatureHeaders::from_lookup(|name| request.header(name));
                let body = &request.body;
                let refund = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["event_type"].as_str().map(str::to_owned))
                    .filter(|e| e.starts_with("REFUND."));
                let result = match (headers, refund) {
                    (Ok(h), Some(_)) => {
                        client
                            .refund_notify(&h, body)
                            .await
                            .map(|(opened, r)| Seen::Refunded {
                                event_type: opened.notification.event_type,
                                out_refund_no: r.out_refund_no,
                                refund_status: r.refund_status,
                                refund: r.amount.refund,
                            })
                    }
                    (Ok(h), None) => {
                        client
                            .transaction_notify(&h, body)
                            .await
                            .map(|(_, tx)| Seen::Paid {
                                out_trade_no: tx.out_trade_no.clone(),
                                total: tx.total(),
                            })
                    }
                    (Err(e), _) => Err(NotifyError::Verify(e)),
                };
                match result {
                    Ok(seen) => {
                        log.lock().unwrap().push(seen);
                        wxmp_testkit::http::Response::empty(204)
                    }
                    Err(e) => {
                        log.lock().unwrap().push(Seen::Refused(e.clone()));
                        wxmp_testkit::http::Response::new(
                            "application/json",
                            json!({"code": "FAIL", "message": e.to_string()}).to_string(),
                        )
                        .status(500)
                    }
                }
            }
        })
        .await;
        Self {
            url: server.url("/pay/notify/v3"),
            seen,
        }
    }

    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        for _ in 0..500 {
            let got = self.seen.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} notifies, got {:?}", self.seen.lock().unwrap());
    }
}

async fn wait_order_notify_state(sb: &SandboxHandle, no: &str, want: &str) -> Value {
    for _ in 0..500 {
        let order = get(sb, &format!("/sandbox/v3/orders/{no}")).await;
        if order["notify_state"] == want {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("order {no} never reached notify_state {want}");
}

#[tokio::test]
async fn public_key_mode_order_pay_notify_query_close_refund() {
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    let receiver = Receiver::start(client.clone()).await;

    let prepay = client
        .jsapi(order("V3PK0001", &receiver.url))
        .await
        .unwrap();
    assert!(prepay.starts_with("wx"), "{prepay}");
    // An identical repeat gets the same prepay_id; the same number with other fields does not.
    assert_eq!(
        client
            .jsapi(order("V3PK0001", &receiver.url))
            .await
            .unwrap(),
        prepay
    );
    let mut other = order("V3PK0001", &receiver.url);
    other.amount.total = 1;
    assert_eq!(
        client.jsapi(other).await.unwrap_err().code(),
        Some("OUT_TRADE_NO_USED")
    );
    let tx = client.query_by_out_trade_no("V3PK0001").await.unwrap();
    assert_eq!(tx.trade_state, "NOTPAY");

    // A paySign that does not verify is the phone's fail callback: nothing is paid.
    let mut forged = request_payment(&prepay);
    forged["nonceStr"] = json!("another-nonce");
    let (status, refused) = post(&sb, "/sandbox/pay", forged).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        client
            .query_by_out_trade_no("V3PK0001")
            .await
            .unwrap()
            .trade_state,
        "NOTPAY"
    );
    let (status, view) = post(&sb, "/sandbox/pay", request_payment(&prepay)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["api"], "v3");
    let seen = receiver.wait_for(1).await;
    assert!(
        matches!(&seen[0], Seen::Paid { out_trade_no, total: Some(321) } if out_trade_no == "V3PK0001"),
        "{seen:?}"
    );
    let order_view = wait_order_notify_state(&sb, "V3PK0001", "accepted").await;
    assert_eq!(order_view["notify_attempts"], 1);
    let records = get(&sb, "/sandbox/v3/notifies?out_trade_no=V3PK0001").await;
    assert_eq!(records[0]["status"], 204);
    assert_eq!(records[0]["serial"], dev::PUBLIC_KEY_ID);

    let paid = client.query_by_out_trade_no("V3PK0001").await.unwrap();
    assert_eq!(paid.trade_state, "SUCCESS");
    assert_eq!(paid.total(), Some(321));
    assert!(paid.transaction_id.is_some() && paid.success_unix().is_some());
    assert_eq!(
        client.close("V3PK0001").await.unwrap_err().code(),
        Some("ORDERPAID")
    );
    assert_eq!(
        client
            .jsapi(order("V3PK0001", &receiver.url))
            .await
            .unwrap_err()
            .code(),
        Some("ORDERPAID")
    );

    let refund_req = |no: &str, fen| RefundRequest {
        out_trade_no: "V3PK0001".into(),
        out_refund_no: no.into(),
        reason: None,
        notify_url: None,
        amount: RefundAmountRequest {
            refund: fen,
            total: 321,
            currency: "CNY".into(),
        },
    };
    let r = client.refund(&refund_req("V3RF0001", 300)).await.unwrap();
    assert_eq!((r.status.as_str(), r.amount.refund), ("PROCESSING", 300));
    let err = client
        .refund(&refund_req("V3RF0002", 22))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("INVALID_REQUEST"), "more than refundable");
    let mut done = None;
    for _ in 0..200 {
        let q = client.query_refund("V3RF0001").await.unwrap();
        if q.status == "SUCCESS" {
            done = Some(q);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(done.expect("refund succeeds").success_time.is_some());
    assert_eq!(
        client.query_refund("V3RFNONE").await.unwrap_err().code(),
        Some("RESOURCE_NOT_EXISTS")
    );

    // Close an unpaid order: 204, then it is CLOSED and cannot be ordered again.
    client
        .jsapi(order("V3PK0002", &receiver.url))
        .await
        .unwrap();
    client.close("V3PK0002").await.unwrap();
    assert_eq!(
        client
            .query_by_out_trade_no("V3PK0002")
            .await
            .unwrap()
            .trade_state,
        "CLOSED"
    );
    assert_eq!(
        client
            .jsapi(order("V3PK0002", &receiver.url))
            .await
            .unwrap_err()
            .code(),
        Some("ORDER_CLOSED")
    );
    assert_eq!(
        client
            .query_by_out_trade_no("V3NOSUCH")
            .await
            .unwrap_err()
            .code(),
        Some("ORDER_NOT_EXIST")
    );
}

#[tokio::test]
async fn requests_signed_wrongly_are_refused_with_sign_error() {
    let sb = start(Mode::PublicKey).await;
    // Signed with a key WeChat does not know for this merchant.
    let stranger = include_str!("../../devkeys/platform_a_key.pem");
    let bad_key = client_with(
        &sb,
        merchant(stranger, dev::MERCHANT_SERIAL),
        public_key_mode(),
    );
    let err = bad_key
        .jsapi(order("V3SIG001", "http://127.0.0.1:9/n"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, V3Error::Api { status: 401, code, .. } if code == "SIGN_ERROR"),
        "{err}"
    );
    let bad_serial = client_with(
        &sb,
        merchant(
            dev::MERCHANT_PRIVATE_KEY,
            "0000000000000000000000000000000000000000",
        ),
        public_key_mode(),
    );
    assert_eq!(
        bad_serial
            .query_by_out_trade_no("V3SIG001")
            .await
            .unwrap_err()
            .code(),
        Some("SIGN_ERROR")
    );
    // Unsigned.
    let res = http()
        .get(sb.url("/v3/pay/transactions/out-trade-no/V3SIG001?mchid=1900000109"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // The request was signed over another URL than the one sent: a different order number.
    assert_eq!(
        get(&sb, "/sandbox/v3/orders/V3SIG001").await["error"],
        "unknown_order"
    );
}

#[tokio::test]
async fn response_faults_fail_verification_and_change_nothing() {
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    client
        .jsapi(order("V3FLT001", "http://127.0.0.1:9/n"))
        .await
        .unwrap();
    for (faults, expect) in [
        (json!({"bad_signature": true}), "signature"),
        (json!({"unknown_serial": true}), "serial unknown"),
        (json!({"clock_skew_secs": 600}), "clock"),
        (json!({"clock_skew_secs": -400}), "clock"),
    ] {
        let (status, _) = post(&sb, "/sandbox/v3/faults", faults.clone()).await;
        assert_eq!(status, 200);
        let err = client.query_by_out_trade_no("V3FLT001").await.unwrap_err();
        let V3Error::Verify(inner) = &err else {
            panic!("{faults}: {err}");
        };
        assert!(inner.to_string().starts_with(expect), "{faults}: {inner}");
        assert!(err.is_retryable(), "treated as WeChat unavailable");
        // A close whose answer cannot be trusted: the caller must not count it as closed.
        assert!(client.close("V3FLT001").await.is_err());
    }
    assert_eq!(
        http()
            .delete(sb.url("/sandbox/v3/faults"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // The order is exactly as before the faults, apart from the closes WeChat did perform.
    let tx = client.query_by_out_trade_no("V3FLT001").await.unwrap();
    assert_eq!(tx.trade_state, "CLOSED");
}

#[tokio::test]
async fn certificate_mode_downloads_and_survives_rotation_mid_run() {
    let sb = start(Mode::Certificate).await;
    let client = client(
        &sb,
        PlatformKeys::certificate_mode().with_forced_refresh_secs(0),
    );
    let receiver = Receiver::start(client.clone()).await;
    let prepay = client
        .jsapi(order("V3CRT001", &receiver.url))
        .await
        .unwrap();
    assert_eq!(
        client.platform().certificate_serials(),
        vec![dev::PLATFORM_A_SERIAL]
    );

    let (status, _) = post(&sb, "/sandbox/v3/rotate", json!({})).await;
    assert_eq!(status, 200);
    // The next answer is signed with certificate B: unknown, so the client downloads again.
    post(&sb, "/sandbox/pay", request_payment(&prepay)).await;
    let seen = receiver.wait_for(1).await;
    assert!(matches!(&seen[0], Seen::Paid { .. }), "{seen:?}");
    assert_eq!(
        client.platform().certificate_serials(),
        vec![dev::PLATFORM_A_SERIAL, dev::PLATFORM_B_SERIAL]
    );
    assert_eq!(
        client
            .query_by_out_trade_no("V3CRT001")
            .await
            .unwrap()
            .trade_state,
        "SUCCESS"
    );
    let records = get(&sb, "/sandbox/v3/notifies?out_trade_no=V3CRT001").await;
    assert_eq!(records[0]["serial"], dev::PLATFORM_B_SERIAL);

    // Public-key mode rotation is refused (nothing to rotate).
    let pk = start(Mode::PublicKey).await;
    assert_eq!(post(&pk, "/sandbox/v3/rotate", json!({})).await.0, 409);
}

/// How the merchant must have refused a faulty notify.
type RefusedAs = fn(&NotifyError) -> bool;

#[tokio::test]
async fn forged_or_tampered_notifies_are_refused_and_retried_until_clean() {
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    let cases: [(&str, Value, RefusedAs); 4] = [
        ("V3NTF001", json!({"tamper_ciphertext": true}), |e| {
            matches!(e, NotifyError::Decrypt(_))
        }),
        ("V3NTF002", json!({"bad_signature": true}), |e| {
            matches!(e, NotifyError::Verify(VerifyError::Signature(_)))
        }),
        ("V3NTF003", json!({"unknown_serial": true}), |e| {
            matches!(e, NotifyError::Verify(VerifyError::UnknownSerial(_)))
        }),
        ("V3NTF004", json!({"clock_skew_secs": -3600}), |e| {
            matches!(e, NotifyError::Verify(VerifyError::Clock { .. }))
        }),
    ];
    for (no, faults, refused_as) in cases {
        let receiver = Receiver::start(client.clone()).await;
        let prepay = client.jsapi(order(no, &receiver.url)).await.unwrap();
        post(&sb, "/sandbox/v3/faults", faults.clone()).await;
        post(&sb, "/sandbox/pay", request_payment(&prepay)).await;
        let seen = receiver.wait_for(2).await;
        for s in &seen[..2] {
            assert!(
                matches!(s, Seen::Refused(e) if refused_as(e)),
                "{faults}: {seen:?}"
            );
        }
        http()
            .delete(sb.url("/sandbox/v3/faults"))
            .send()
            .await
            .unwrap();
        let order_view = wait_order_notify_state(&sb, no, "accepted").await;
        assert!(
            order_view["notify_attempts"].as_u64().unwrap() >= 3,
            "{order_view}"
        );
        assert!(
            matches!(receiver.seen.lock().unwrap().last(), Some(Seen::Paid { out_trade_no, .. }) if out_trade_no == no)
        );
        let records = get(&sb, &format!("/sandbox/v3/notifies?out_trade_no={no}")).await;
        let records = records.as_array().unwrap();
        assert_eq!(records[0]["status"], 500, "{faults}");
        assert!(
            !records[0]["faults"].as_array().unwrap().is_empty(),
            "{faults}"
        );
        assert!(records.last().unwrap()["accepted"].as_bool().unwrap());
        // WeChat's schedule: the second attempt comes 15 s (× 0.001) after the first.
        let gap = records[1]["at_ms"].as_i64().unwrap() - records[0]["at_ms"].as_i64().unwrap();
        assert!(gap >= 15, "{gap} ms");
    }
}

/// 申请退款 with a notify_url: once settled, WeChat sends REFUND.SUCCESS / REFUND.ABNORMAL /
/// REFUND.CLOSED (signed, the refund encrypted with `refund_status`), and 查询单笔退款 answers
/// the same status; drop_notify settles without a notify; NOT_ENOUGH and SYSTEM_ERROR refuse
/// and record nothing.
#[tokio::test]
async fn refunds_settle_to_each_status_with_their_notify() {
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    let receiver = Receiver::start(client.clone()).await;
    let prepay = client
        .jsapi(order("V3RN0001", &receiver.url))
        .await
        .unwrap();
    let (status, _) = post(&sb, "/sandbox/pay", request_payment(&prepay)).await;
    assert_eq!(status, 200);
    receiver.wait_for(1).await;
    let refund_req = |no: &str, fen| RefundRequest {
        out_trade_no: "V3RN0001".into(),
        out_refund_no: no.into(),
        reason: Some("returned".into()),
        notify_url: Some(receiver.url.clone()),
        amount: RefundAmountRequest {
            refund: fen,
            total: 321,
            currency: "CNY".into(),
        },
    };
    let sbr = &sb;
    let faults = |f: Value| async move {
        let (status, answer) = post(sbr, "/sandbox/faults", f).await;
        assert_eq!(status, 200, "{answer}");
    };
    let mut expected = Vec::new();
    for (no, fault, status) in [
        ("V3RN-ok", json!({}), "SUCCESS"),
        ("V3RN-abnormal", json!({"refund_change": true}), "ABNORMAL"),
        ("V3RN-closed", json!({"refund_close": true}), "CLOSED"),
    ] {
        faults(fault).await;
        let r = client.refund(&refund_req(no, 10)).await.unwrap();
        assert_eq!(r.status, "PROCESSING", "{no}");
        expected.push((format!("REFUND.{status}"), no.to_owned(), status.to_owned()));
    }
    faults(json!({})).await;
    let seen = receiver.wait_for(4).await;
    let mut refunds: Vec<(String, String, String)> = seen[1..]
        .iter()
        .map(|s| match s {
            Seen::Refunded {
                event_type,
                out_refund_no,
                refund_status,
                refund,
            } => {
                assert_eq!(*refund, 10);
                (
                    event_type.clone(),
                    out_refund_no.clone(),
                    refund_status.clone(),
                )
            }
            other => panic!("not a refund notify: {other:?}"),
        })
        .collect();
    refunds.sort();
    expected.sort();
    assert_eq!(refunds, expected);
    for (_, no, status) in &expected {
        let q = client.query_refund(no).await.unwrap();
        assert_eq!(&q.status, status, "{no}");
        assert_eq!(q.success_time.is_some(), status == "SUCCESS", "{no}");
    }
    // Each notify is filed under its refund.
    let records = get(&sb, "/sandbox/v3/notifies?out_refund_no=V3RN-ok").await;
    assert_eq!(records.as_array().map(Vec::len), Some(1), "{records}");
    assert_eq!(records[0]["event_type"], "REFUND.SUCCESS");

    // A repeat of the same out_refund_no answers the same refund and is counted.
    let again = client.refund(&refund_req("V3RN-ok", 10)).await.unwrap();
    assert_eq!(again.status, "SUCCESS");
    assert_eq!(get(&sb, "/sandbox/v3/refunds/V3RN-ok").await["requests"], 2);

    // drop_notify: settled at WeChat, never notified.
    faults(json!({"drop_notify": true})).await;
    client.refund(&refund_req("V3RN-quiet", 10)).await.unwrap();
    let mut settled = Value::Null;
    for _ in 0..500 {
        settled = get(&sb, "/sandbox/v3/refunds/V3RN-quiet").await;
        if settled["status"] == "SUCCESS" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(settled["status"], "SUCCESS", "{settled}");
    assert_eq!(settled["notify_state"], "dropped");

    // A refund notify the merchant refuses (here: tampered in transit) is sent again on
    // WeChat's schedule until it is answered 204.
    faults(json!({})).await;
    let (status, _) = post(
        &sb,
        "/sandbox/v3/faults",
        json!({"tamper_ciphertext": true}),
    )
    .await;
    assert_eq!(status, 200);
    client.refund(&refund_req("V3RN-retry", 10)).await.unwrap();
    let notifies = "/sandbox/v3/notifies?out_refund_no=V3RN-retry";
    let mut records = Value::Null;
    for _ in 0..500 {
        records = get(&sb, notifies).await;
        if records.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(records[0]["accepted"], false, "{records}");
    assert_eq!(records[0]["faults"], json!(["tamper_ciphertext"]));
    let (status, _) = post(&sb, "/sandbox/v3/faults", json!({})).await;
    assert_eq!(status, 200);
    let mut refund = Value::Null;
    for _ in 0..500 {
        refund = get(&sb, "/sandbox/v3/refunds/V3RN-retry").await;
        if refund["notify_state"] == "accepted" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(refund["notify_state"], "accepted", "{refund}");
    let records = get(&sb, notifies).await;
    let records = records.as_array().unwrap();
    assert!(records.len() >= 2, "{records:?}");
    assert_eq!(records.last().unwrap()["accepted"], true);

    // Refusals record nothing.
    faults(json!({"refund_not_enough": true})).await;
    let err = client
        .refund(&refund_req("V3RN-poor", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOT_ENOUGH"));
    faults(json!({"pay_system_error": true})).await;
    let err = client
        .refund(&refund_req("V3RN-busy", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("SYSTEM_ERROR"));
    assert!(err.is_retryable());
    faults(json!({})).await;
    let listed = get(&sb, "/sandbox/v3/refunds?out_trade_no=V3RN0001").await;
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["out_refund_no"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(!listed.contains(&"V3RN-poor") && !listed.contains(&"V3RN-busy"));
    // The console lists them with their status.
    let page = http()
        .get(sb.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refunds = &page[page.find("<h2>Refunds</h2>").expect("a Refunds section")..];
    for shown in ["V3RN-abnormal", "ABNORMAL", "V3RN-quiet", "dropped"] {
        assert!(refunds.contains(shown), "{shown} in {refunds}");
    }
}

/// An answer lost after acceptance (500 SYSTEM_ERROR, the refund recorded) and a refused
/// resend (401 SIGN_ERROR, nothing recorded, nothing said of the refund): what a merchant must
/// not take as proof either way. The query knows the truth.
#[tokio::test]
async fn lost_refund_answers_and_refused_resends() {
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    let receiver = Receiver::start(client.clone()).await;
    let prepay = client
        .jsapi(order("V3LA0001", &receiver.url))
        .await
        .unwrap();
    let (status, _) = post(&sb, "/sandbox/pay", request_payment(&prepay)).await;
    assert_eq!(status, 200);
    receiver.wait_for(1).await;
    let req = RefundRequest {
        out_trade_no: "V3LA0001".into(),
        out_refund_no: "V3LA-1".into(),
        reason: None,
        notify_url: None,
        amount: RefundAmountRequest {
            refund: 21,
            total: 321,
            currency: "CNY".into(),
        },
    };
    let (status, _) = post(&sb, "/sandbox/faults", json!({"refund_answer_lost": true})).await;
    assert_eq!(status, 200);
    let err = client.refund(&req).await.unwrap_err();
    assert_eq!(err.code(), Some("SYSTEM_ERROR"));
    assert_eq!(get(&sb, "/sandbox/v3/refunds/V3LA-1").await["requests"], 1);
    let (status, _) = post(&sb, "/sandbox/faults", json!({"refund_refused": true})).await;
    assert_eq!(status, 200);
    let err = client.refund(&req).await.unwrap_err();
    assert_eq!(err.code(), Some("SIGN_ERROR"));
    assert!(!err.is_retryable());
    assert_eq!(get(&sb, "/sandbox/v3/refunds/V3LA-1").await["requests"], 1);
    let (status, _) = post(&sb, "/sandbox/faults", json!({})).await;
    assert_eq!(status, 200);
    let queried = client.query_refund("V3LA-1").await.unwrap();
    assert_eq!(queried.amount.refund, 21);
}

/// The console plays the phone for v3 orders too (it cannot make the phone's RSA paySign,
/// so it applies what `/sandbox/pay` applies after checking it): fail, pay (the encrypted
/// TRANSACTION.SUCCESS notify the merchant verifies and decrypts), resend, drop.
#[tokio::test]
async fn console_buttons_pay_fail_resend_and_drop_v3_orders() {
    use crate::helpers::click;
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    let receiver = Receiver::start(client.clone()).await;
    let prepay = client
        .jsapi(order("V3CN0001", &receiver.url))
        .await
        .unwrap();
    let html = crate::helpers::page(&sb).await;
    assert!(
        html.contains(r#"<span class="trade-state" data-order="V3CN0001">NOTPAY</span>"#),
        "{html}"
    );
    assert!(html.contains(r#"data-action="pay" data-key="V3CN0001""#));

    let msg = click(
        &sb,
        "/console/pay",
        &[("prepay_id", &prepay), ("outcome", "fail")],
    )
    .await;
    assert_eq!(msg, format!("payment failed for {prepay}"));
    let tx = client.query_by_out_trade_no("V3CN0001").await.unwrap();
    assert_eq!(tx.trade_state, "PAYERROR");

    let msg = click(
        &sb,
        "/console/pay",
        &[("prepay_id", &prepay), ("outcome", "success")],
    )
    .await;
    assert_eq!(msg, format!("paid {prepay}"));
    let seen = receiver.wait_for(1).await;
    assert!(
        matches!(&seen[0], Seen::Paid { out_trade_no, total: Some(321) } if out_trade_no == "V3CN0001"),
        "{seen:?}"
    );
    wait_order_notify_state(&sb, "V3CN0001", "accepted").await;
    let tx = client.query_by_out_trade_no("V3CN0001").await.unwrap();
    assert_eq!(tx.trade_state, "SUCCESS");
    let msg = click(
        &sb,
        "/console/pay",
        &[("prepay_id", &prepay), ("outcome", "success")],
    )
    .await;
    assert_eq!(msg, "refused: order V3CN0001 is already paid");

    let msg = click(
        &sb,
        "/console/notify/resend",
        &[
            ("api", "v3"),
            ("mch_id", sandbox::DEV_MCH_ID),
            ("out_trade_no", "V3CN0001"),
        ],
    )
    .await;
    assert_eq!(msg, "notify of V3CN0001 sent again");
    let seen = receiver.wait_for(2).await;
    assert!(matches!(&seen[1], Seen::Paid { out_trade_no, .. } if out_trade_no == "V3CN0001"));

    // A notify nobody answers (closed port) stays pending until dropped, then stops.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/pay/notify/v3", closed.local_addr().unwrap());
    drop(closed);
    let prepay = client.jsapi(order("V3CN0002", &dead_url)).await.unwrap();
    click(
        &sb,
        "/console/pay",
        &[("prepay_id", &prepay), ("outcome", "success")],
    )
    .await;
    wait_order_notify_state(&sb, "V3CN0002", "pending").await;
    let msg = click(
        &sb,
        "/console/notify/drop",
        &[
            ("api", "v3"),
            ("mch_id", sandbox::DEV_MCH_ID),
            ("out_trade_no", "V3CN0002"),
        ],
    )
    .await;
    assert_eq!(msg, "notify of V3CN0002 dropped");
    let sent = |v: Value| v.as_array().map_or(0, Vec::len);
    let at_drop = sent(get(&sb, "/sandbox/v3/notifies?out_trade_no=V3CN0002").await);
    // The schedule (15 s, 15 s, 30 s, 3 min … × 0.001) sends 4 more within 240 ms: a witness
    // order paid after the drop, notified to the same dead URL, reaching its 5th attempt
    // shows that V3CN0002's would have been sent by now.
    let witness = client.jsapi(order("V3CN0003", &dead_url)).await.unwrap();
    click(
        &sb,
        "/console/pay",
        &[("prepay_id", &witness), ("outcome", "success")],
    )
    .await;
    let mut witnessed = 0;
    for _ in 0..1000 {
        witnessed = sent(get(&sb, "/sandbox/v3/notifies?out_trade_no=V3CN0003").await);
        if witnessed >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(witnessed >= 5, "the witness had {witnessed} attempts");
    let order = get(&sb, "/sandbox/v3/orders/V3CN0002").await;
    assert_eq!(order["notify_state"], "dropped");
    let after = sent(get(&sb, "/sandbox/v3/notifies?out_trade_no=V3CN0002").await);
    assert!(
        after <= at_drop + 1,
        "{at_drop} then {after}: at most the one in flight"
    );
}

/// With `refund_hold`, v3 refunds stay PROCESSING until the console's settle / fail / close
/// conclude them as SUCCESS / ABNORMAL / CLOSED, each followed by its signed, encrypted
/// REFUND.* notify; a concluded refund cannot be concluded again.
#[tokio::test]
async fn console_buttons_settle_fail_and_close_held_v3_refunds() {
    use crate::helpers::click;
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    let receiver = Receiver::start(client.clone()).await;
    let prepay = client
        .jsapi(order("V3CR0001", &receiver.url))
        .await
        .unwrap();
    let (status, _) = post(&sb, "/sandbox/pay", request_payment(&prepay)).await;
    assert_eq!(status, 200);
    receiver.wait_for(1).await;
    let (status, _) = post(&sb, "/sandbox/faults", json!({"refund_hold": true})).await;
    assert_eq!(status, 200);

    let ends = [
        ("V3CR-settle", "success", "SUCCESS"),
        ("V3CR-fail", "change", "ABNORMAL"),
        ("V3CR-close", "close", "CLOSED"),
    ];
    for (no, _, _) in ends {
        let r = client
            .refund(&RefundRequest {
                out_trade_no: "V3CR0001".into(),
                out_refund_no: no.into(),
                reason: None,
                notify_url: Some(receiver.url.clone()),
                amount: RefundAmountRequest {
                    refund: 10,
                    total: 321,
                    currency: "CNY".into(),
                },
            })
            .await
            .unwrap();
        assert_eq!(r.status, "PROCESSING");
    }
    // Held: each shows its three buttons, and the query still answers PROCESSING.
    let html = crate::helpers::page(&sb).await;
    for (no, _, _) in ends {
        assert!(
            html.contains(&format!(r#"data-action="settle" data-key="{no}""#)),
            "{no}: {html}"
        );
        assert_eq!(client.query_refund(no).await.unwrap().status, "PROCESSING");
    }

    for (i, (no, outcome, status)) in ends.into_iter().enumerate() {
        let fields = [
            ("api", "v3"),
            ("mch_id", sandbox::DEV_MCH_ID),
            ("out_refund_no", no),
            ("outcome", outcome),
        ];
        let msg = click(&sb, "/console/refund/finish", &fields).await;
        assert_eq!(msg, format!("refund {no} is {status}, notify sent"));
        let seen = receiver.wait_for(2 + i).await;
        assert!(
            matches!(&seen[1 + i], Seen::Refunded { out_refund_no, refund_status, event_type, .. }
                if out_refund_no == no && refund_status == status && *event_type == format!("REFUND.{status}")),
            "{seen:?}"
        );
        assert_eq!(client.query_refund(no).await.unwrap().status, status);
        let again = click(&sb, "/console/refund/finish", &fields).await;
        assert_eq!(
            again,
            format!("refused: refund {no} is {status}, not PROCESSING")
        );
    }
}

/// 发起异常退款 as WeChat's document describes it: only an ABNORMAL refund is re-routed
/// (INVALID_REQUEST otherwise), `out_refund_no`, `type` and `bank_type` are checked, the card
/// fields are opened with the key `Wechatpay-Serial` names; then PROCESSING, and SUCCESS with
/// `user_received_account` the payer's card or 商户结算银行账户, with its REFUND.SUCCESS notify.
#[tokio::test]
async fn apply_abnormal_refund_reroutes_only_abnormal_refunds() {
    let sb = start(Mode::PublicKey).await;
    let client = client(&sb, public_key_mode());
    let receiver = Receiver::start(client.clone()).await;
    let prepay = client
        .jsapi(order("V3AB0001", &receiver.url))
        .await
        .unwrap();
    let (status, _) = post(&sb, "/sandbox/pay", request_payment(&prepay)).await;
    assert_eq!(status, 200);
    receiver.wait_for(1).await;
    let refund = |no: &str| RefundRequest {
        out_trade_no: "V3AB0001".into(),
        out_refund_no: no.into(),
        reason: None,
        notify_url: Some(receiver.url.clone()),
        amount: RefundAmountRequest {
            refund: 30,
            total: 321,
            currency: "CNY".into(),
        },
    };
    let (status, _) = post(&sb, "/sandbox/faults", json!({"refund_change": true})).await;
    assert_eq!(status, 200);
    let card = client.refund(&refund("V3AB-card")).await.unwrap();
    let merchant = client.refund(&refund("V3AB-merchant")).await.unwrap();
    let (status, _) = post(&sb, "/sandbox/faults", json!({})).await;
    assert_eq!(status, 200);
    let ok = client.refund(&refund("V3AB-ok")).await.unwrap();
    receiver.wait_for(4).await;
    assert_eq!(
        client.query_refund("V3AB-card").await.unwrap().status,
        "ABNORMAL"
    );
    let to_card = |no: &str, bank: &str| AbnormalRefundRequest {
        out_refund_no: no.into(),
        kind: "USER_BANK_CARD".into(),
        bank_type: Some(bank.into()),
        bank_account: Some("6222020202020202".into()),
        real_name: Some("张三".into()),
    };
    // Not abnormal, unknown, mismatched, or malformed: refused, nothing changes.
    let err = client
        .apply_abnormal_refund(&ok.refund_id, to_card("V3AB-ok", "ICBC_DEBIT"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("INVALID_REQUEST"), "{err:?}");
    let err = client
        .apply_abnormal_refund("50000000000000000000", to_card("V3AB-card", "ICBC_DEBIT"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("RESOURCE_NOT_EXISTS"), "{err:?}");
    for (id, request) in [
        (&card.refund_id, to_card("V3AB-merchant", "ICBC_DEBIT")),
        (&card.refund_id, to_card("V3AB-card", "VISA_CREDIT")),
        (
            &card.refund_id,
            AbnormalRefundRequest {
                kind: "TO_MY_POCKET".into(),
                ..to_card("V3AB-card", "ICBC_DEBIT")
            },
        ),
    ] {
        let err = client.apply_abnormal_refund(id, request).await.unwrap_err();
        assert_eq!(err.code(), Some("PARAM_ERROR"), "{err:?}");
    }
    assert_eq!(
        client.query_refund("V3AB-card").await.unwrap().status,
        "ABNORMAL"
    );

    let rerouted = client
        .apply_abnormal_refund(&card.refund_id, to_card("V3AB-card", "ICBC_DEBIT"))
        .await
        .unwrap();
    assert_eq!(rerouted.status, "PROCESSING");
    let rerouted = client
        .apply_abnormal_refund(
            &merchant.refund_id,
            AbnormalRefundRequest {
                out_refund_no: "V3AB-merchant".into(),
                kind: "MERCHANT_BANK_CARD".into(),
                bank_type: None,
                bank_account: None,
                real_name: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(rerouted.status, "PROCESSING");
    receiver.wait_for(6).await;
    let card = client.query_refund("V3AB-card").await.unwrap();
    assert_eq!(
        (card.status.as_str(), card.user_received_account.as_deref()),
        ("SUCCESS", Some("工商银行借记卡0202"))
    );
    let merchant = client.query_refund("V3AB-merchant").await.unwrap();
    assert_eq!(
        (
            merchant.status.as_str(),
            merchant.user_received_account.as_deref()
        ),
        ("SUCCESS", Some("商户结算银行账户"))
    );
}
