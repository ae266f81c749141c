//! Refunds end to end against the sandbox, on PostgreSQL and SQLite, and on both WeChat Pay
//! APIs with the same assertions (v2: mutual TLS, AES-256-ECB notifies; v3: signed JSON,
//! AES-256-GCM notifies): partial and full refunds, over-refunds, races for the last fen,
//! idempotent retries, forged notifies, lost notifies, CHANGE / ABNORMAL, NOTENOUGH /
//! NOT_ENOUGH, SYSTEMERROR / SYSTEM_ERROR and a crash between the WeChat call and storing its
//! answer; plus an order placed on v2 that refunds on v2 after the switch to v3.

use crate::helpers::{
    Api, Backend, Env, eventually, get_refund, on_both_backends, on_both_backends_and_apis,
    principal, reason, sandbox_get,
};
use pay_service::{RefundState, refunds};
use serde_json::{Value, json};
use service_kit::ErrorReason;
use tonic::{Request, Status};
use wechat::pay::{refund::encrypt_req_info, xml};
use wxmp_proto::pay::v1::{
    self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target,
};

/// The vip product of the test catalog.
const PRICE: i64 = 990;

async fn paid_order(env: &Env, user_id: i64) -> pb::Order {
    let prepared = env
        .prepare(&principal(user_id), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let order_no = prepared.order.as_ref().unwrap().order_no.clone();
    env.sandbox_pay(&prepared, None).await;
    eventually(|| async {
        env.get(&order_no, 0).await.unwrap().state == pb::OrderState::Paid as i32
    })
    .await;
    env.get(&order_no, 0).await.unwrap()
}

async fn refund(
    env: &Env,
    order_no: &str,
    refund_fen: i64,
    out_refund_no: &str,
) -> Result<pb::RefundResponse, Status> {
    PayService::refund(
        &env.pay,
        Request::new(pb::RefundRequest {
            order_no: order_no.into(),
            refund_fen,
            reason: "returned item".into(),
            out_refund_no: out_refund_no.into(),
        }),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn wait_refund(env: &Env, out_refund_no: &str, state: pb::RefundState) -> pb::RefundRecord {
    eventually(|| async { get_refund(env, out_refund_no).await.state == state as i32 }).await;
    get_refund(env, out_refund_no).await
}

async fn set_faults(env: &Env, faults: Value) {
    env.set_faults(faults).await;
}

/// The refunds WeChat (the sandbox) holds for an order on `api`, as `{out_refund_no,
/// refund_fee, requests}` (v3 calls the amount `refund`).
async fn at_wechat_on(env: &Env, api: Api, order_no: &str) -> Vec<Value> {
    let path = match api {
        Api::V2 => format!("/sandbox/refunds?out_trade_no={order_no}"),
        Api::V3 => format!("/sandbox/v3/refunds?out_trade_no={order_no}"),
    };
    let listed = sandbox_get(env, &path).await;
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!({
                "out_refund_no": r["out_refund_no"],
                "refund_fee": if api == Api::V2 { &r["refund_fee"] } else { &r["refund"] },
                "requests": r["requests"],
            })
        })
        .collect()
}

/// The refunds WeChat holds for an order placed with the env's API.
async fn at_wechat(env: &Env, order_no: &str) -> Vec<Value> {
    at_wechat_on(env, env.api, order_no).await
}

/// Where WeChat says the refund stands (v2 refund_status, v3 status).
async fn wechat_status(env: &Env, out_refund_no: &str) -> Value {
    match env.api {
        Api::V2 => {
            sandbox_get(env, &format!("/sandbox/refunds/{out_refund_no}")).await["refund_status"]
                .clone()
        }
        Api::V3 => {
            sandbox_get(env, &format!("/sandbox/v3/refunds/{out_refund_no}")).await["status"]
                .clone()
        }
    }
}

/// Waits until a notify of `key` is stored: the notify settles the refund first and stores
/// its verdict after, so a refund seen settled may not have its verdict yet.
async fn stored_verdict(env: &Env, key: &str) {
    eventually(|| async {
        !refunds::store::notification_verdicts(env.pay.database(), key)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
}

fn refunded(order: &pb::Order) -> (i64, i64) {
    (order.refunded_fen, order.refunding_fen)
}

async fn partial_then_full_refund(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 1).await;
    let first = refund(&env, &order.order_no, 300, "shop-r1").await.unwrap();
    let record = first.refund.unwrap();
    assert_eq!(record.amount_fen, 300);
    assert_ne!(record.state, pb::RefundState::RefundPending as i32);
    // While in flight the order shows REFUNDING.
    let during = first.order.unwrap();
    if record.state == pb::RefundState::RefundProcessing as i32 {
        assert_eq!(during.state, pb::OrderState::Refunding as i32);
        assert_eq!(refunded(&during), (0, 300));
    }
    let settled = wait_refund(&env, "shop-r1", pb::RefundState::RefundSuccess).await;
    assert!(!settled.refund_id.is_empty());
    assert!(settled.settled_at > 0);
    // Partly refunded: PAID with refunded_fen > 0.
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.state, pb::OrderState::Paid as i32);
    assert_eq!(refunded(&after), (300, 0));

    refund(&env, &order.order_no, PRICE - 300, "shop-r2")
        .await
        .unwrap();
    wait_refund(&env, "shop-r2", pb::RefundState::RefundSuccess).await;
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.state, pb::OrderState::Refunded as i32);
    assert_eq!(refunded(&after), (PRICE, 0));
    let listed = PayService::list_refunds(
        &env.pay,
        Request::new(pb::ListRefundsRequest {
            order_no: order.order_no.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .refunds;
    let keys: Vec<&str> = listed.iter().map(|r| r.out_refund_no.as_str()).collect();
    assert_eq!(keys, ["shop-r1", "shop-r2"]);
    // WeChat got each refund once, with our amounts (v2 over mutual TLS, v3 signed).
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 2);
    assert!(wechat.iter().all(|r| r["requests"] == 1));
    assert_eq!(wechat[0]["refund_fee"], 300);
    // Each settlement is one REFUND_SUCCEEDED event in the outbox, carrying the refund.
    let settled_events = refund_events(&env).await;
    let seen: Vec<(&str, &str)> = settled_events
        .iter()
        .map(|(kind, payload)| {
            (
                kind.as_str(),
                payload["refund"]["out_refund_no"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("REFUND_SUCCEEDED", "shop-r1"),
            ("REFUND_SUCCEEDED", "shop-r2")
        ]
    );
    assert_eq!(settled_events[1].1["refunded_fen"], PRICE);
    assert_eq!(settled_events[1].1["state"], "REFUNDED");
    // Each settled by its encrypted notify, on the API of its order.
    for key in ["shop-r1", "shop-r2"] {
        assert_eq!(get_refund(&env, key).await.api, api.as_str());
        stored_verdict(&env, key).await;
        let verdicts = refunds::store::notification_verdicts(env.pay.database(), key)
            .await
            .unwrap();
        assert_eq!(
            verdicts.first(),
            Some(&("applied".to_owned(), true)),
            "{key}"
        );
    }
}

async fn over_refund_is_refused_and_never_sent(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 2).await;
    let err = refund(&env, &order.order_no, PRICE + 1, "")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundExceedsPaid);
    refund(&env, &order.order_no, 500, "r-500").await.unwrap();
    let err = refund(&env, &order.order_no, PRICE - 499, "r-491")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundExceedsPaid);
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // Nothing of the refused ones reached WeChat or the table.
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    assert_eq!(
        refunds::store::find(env.pay.database(), "r-491")
            .await
            .unwrap(),
        None
    );
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.refunded_fen + after.refunding_fen, 500);
}

async fn concurrent_refunds_race_for_the_last_fen(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 3).await;
    refund(&env, &order.order_no, PRICE - 1, "most")
        .await
        .unwrap();
    // Eight callers want the last fen at once: exactly one gets it.
    let calls = (0..8).map(|i| {
        let env = &env;
        let order_no = order.order_no.clone();
        async move { refund(env, &order_no, 1, &format!("last-{i}")).await }
    });
    let results = futures::future::join_all(calls).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(lost), ErrorReason::RefundExceedsPaid, "{lost:?}");
    }
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 2);
    let listed = refunds::store::list_for_order(env.pay.database(), &order.order_no)
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|r| r.amount_fen).sum::<i64>(), PRICE);
    eventually(|| async {
        env.get(&order.order_no, 0).await.unwrap().state == pb::OrderState::Refunded as i32
    })
    .await;
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (PRICE, 0)
    );
}

async fn retries_with_the_same_key_answer_the_first_refund(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 4).await;
    // Concurrent first calls with one key: one refund.
    let (a, b) = tokio::join!(
        refund(&env, &order.order_no, 200, "idem-1"),
        refund(&env, &order.order_no, 200, "idem-1")
    );
    let (a, b) = (a.unwrap().refund.unwrap(), b.unwrap().refund.unwrap());
    assert_eq!(a.out_refund_no, b.out_refund_no);
    wait_refund(&env, "idem-1", pb::RefundState::RefundSuccess).await;
    // A later retry answers the settled refund and sends nothing.
    let again = refund(&env, &order.order_no, 200, "idem-1").await.unwrap();
    assert_eq!(
        again.refund.unwrap().state,
        pb::RefundState::RefundSuccess as i32
    );
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 1);
    // The same key with another amount or order is a conflict.
    let err = refund(&env, &order.order_no, 201, "idem-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundConflict);
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (200, 0)
    );
}

/// Six callers retry one refund (same out_refund_no, same parameters) at once, for the whole
/// amount: every one of them is answered that refund, none REFUND_EXCEEDS_PAID (issue 23,
/// defect 4), and WeChat holds one refund.
async fn concurrent_retries_of_one_key_answer_one_refund(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 20).await;
    let calls = (0..6).map(|_| {
        let env = &env;
        let order_no = order.order_no.clone();
        async move { refund(env, &order_no, PRICE, "same-6").await }
    });
    let results = futures::future::join_all(calls).await;
    for result in &results {
        let answered = result.as_ref().expect("every retry answers the refund");
        assert_eq!(answered.refund.as_ref().unwrap().out_refund_no, "same-6");
    }
    wait_refund(&env, "same-6", pb::RefundState::RefundSuccess).await;
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (PRICE, 0)
    );
}

async fn unpaid_and_unknown_orders_are_refused(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let created = env.create(5, 100, "unpaid", "").await.unwrap();
    let err = refund(&env, &created.order_no, 1, "").await.unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);
    let err = refund(&env, "20261201NoSuchOrder00000", 1, "")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::NotFound);
    for (fen, key, why) in [(0, "", "zero"), (1, "bad key!", "key")] {
        let err = refund(&env, &created.order_no, fen, key).await.unwrap_err();
        assert_eq!(reason(&err), ErrorReason::InvalidArgument, "{why}");
    }
    assert!(at_wechat(&env, &created.order_no).await.is_empty());
    assert_eq!(
        env.get(&created.order_no, 0).await.unwrap().state,
        pb::OrderState::Created as i32
    );
}

/// Refunds need what the order's API needs to send them: v2 the merchant certificate, v3 its
/// keys. A service without it (v2: no certificate; v3: switched back to v2 without the v3
/// keys) refuses with REFUNDS_DISABLED and sends nothing.
async fn refunds_without_a_certificate_are_disabled(backend: Backend, api: Api) {
    let (env, service) = match api {
        Api::V2 => {
            let env = Env::new(backend).await;
            let service = env.pay.clone();
            (env, service)
        }
        Api::V3 => {
            let env = Env::refunding_on(backend, api).await;
            let service = env.replica_with(|c| c.v3 = Default::default());
            (env, service)
        }
    };
    let order = paid_order(&env, 6).await;
    let err = PayService::refund(
        &service,
        Request::new(pb::RefundRequest {
            order_no: order.order_no.clone(),
            refund_fen: 1,
            reason: String::new(),
            out_refund_no: String::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundsDisabled);
    assert!(at_wechat(&env, &order.order_no).await.is_empty());
    assert!(
        refunds::store::list_for_order(env.pay.database(), &order.order_no)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A refund notify body as WeChat sends it, req_info encrypted with `key`.
fn refund_notify(key: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut plain = String::from("<root>");
    for (k, v) in fields {
        plain.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    plain.push_str("</root>");
    xml::to_xml([
        ("return_code", "SUCCESS"),
        ("appid", sandbox::DEV_APP_ID),
        ("mch_id", sandbox::DEV_MCH_ID),
        ("nonce_str", "n0nce"),
        ("req_info", &encrypt_req_info(key, plain.as_bytes())),
    ])
    .into_bytes()
}

async fn notify(env: &Env, body: Vec<u8>) -> pb::HandleRefundNotifyResponse {
    PayService::handle_refund_notify(
        &env.pay,
        Request::new(pb::HandleRefundNotifyRequest { raw_body: body }),
    )
    .await
    .unwrap()
    .into_inner()
}

/// A refund notify as it reaches pay-service.
#[derive(Clone, Debug)]
enum RawNotify {
    /// The XML body of `/pay/refund-notify`.
    V2(Vec<u8>),
    /// `/pay/refund-notify/v3`: Wechatpay-Timestamp, -Nonce, -Signature, -Serial and the body.
    V3 { headers: [String; 4], body: Vec<u8> },
}

/// Hands a refund notify to pay-service: (verdict, accepted).
async fn send_notify(env: &Env, raw: RawNotify) -> (String, bool) {
    match raw {
        RawNotify::V2(body) => {
            let reply = notify(env, body).await;
            // The XML answer says the same as `accepted`.
            assert_eq!(reply.reply_xml.contains("SUCCESS"), reply.accepted);
            (reply.verdict, reply.accepted)
        }
        RawNotify::V3 { headers, body } => {
            let [timestamp, nonce, signature, serial] = headers;
            let reply = PayService::handle_refund_notify_v3(
                &env.pay,
                Request::new(pb::HandleRefundNotifyV3Request {
                    raw_body: body,
                    timestamp,
                    nonce,
                    signature,
                    serial,
                }),
            )
            .await
            .unwrap()
            .into_inner();
            assert_eq!(reply.message.is_empty(), reply.accepted);
            (reply.verdict, reply.accepted)
        }
    }
}

/// What a v3 refund notify is made of, each piece spoilable on its own.
struct V3Notify {
    event_type: &'static str,
    resource: Value,
    /// Encrypt with this APIv3 key.
    apiv3_key: [u8; 32],
    /// Flip a character of the ciphertext after sealing.
    tamper: bool,
    /// Sign with a key WeChat never published.
    forged: bool,
    serial: String,
    /// Seconds added to now for Wechatpay-Timestamp.
    skew_secs: i64,
}

impl V3Notify {
    fn genuine(resource: Value) -> Self {
        let key: [u8; 32] = sandbox::v3::dev::APIV3_KEY.as_bytes().try_into().unwrap();
        Self {
            event_type: "REFUND.SUCCESS",
            resource,
            apiv3_key: key,
            tamper: false,
            forged: false,
            serial: sandbox::v3::dev::PUBLIC_KEY_ID.into(),
            skew_secs: 0,
        }
    }

    /// Built with the sandbox's WeChat-side crypto (its own RSA and AES-GCM code), not with
    /// the library pay-service verifies it with.
    fn build(self) -> RawNotify {
        use sandbox::v3::{Mode, crypto, keys::Signers};
        let nonce = crypto::resource_nonce();
        let mut ciphertext = crypto::seal(
            &self.apiv3_key,
            &nonce,
            b"refund",
            self.resource.to_string().as_bytes(),
        );
        if self.tamper {
            let mid = ciphertext.len() / 2;
            let flipped = if &ciphertext[mid..=mid] == "A" {
                "B"
            } else {
                "A"
            };
            ciphertext.replace_range(mid..=mid, flipped);
        }
        let body = json!({
            "id": "EV-2026120100000000000000000001",
            "create_time": "2026-12-01T10:00:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": self.event_type,
            "summary": "退款成功",
            "resource": {
                "original_type": "refund",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ciphertext,
                "associated_data": "refund",
                "nonce": String::from_utf8_lossy(&nonce),
            }
        })
        .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let timestamp = (now + self.skew_secs).to_string();
        let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS".to_owned();
        let signers = Signers::built_in();
        let signer = if self.forged {
            signers.stranger()
        } else {
            signers.current(Mode::PublicKey, false).1
        };
        let message =
            crypto::signed_lines(&[timestamp.as_bytes(), nonce.as_bytes(), body.as_bytes()]);
        RawNotify::V3 {
            headers: [timestamp, nonce, signer.sign(&message), self.serial],
            body: body.into_bytes(),
        }
    }
}

/// The resource of a v3 refund notify (退款结果通知) for WeChat's refund `refund_id`.
fn v3_refund_resource(
    out_refund_no: &str,
    refund: i64,
    out_trade_no: &str,
    refund_id: &str,
) -> Value {
    json!({
        "mchid": sandbox::DEV_MCH_ID,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000202612010000000001",
        "out_refund_no": out_refund_no,
        "refund_id": refund_id,
        "refund_status": "SUCCESS",
        "success_time": "2026-12-01T10:00:05+08:00",
        "user_received_account": "支付用户零钱",
        "amount": { "total": PRICE, "refund": refund, "payer_total": PRICE, "payer_refund": refund },
    })
}

/// The forged, mismatched and malformed notifies of `api` for refund `forge-me` (100 fen of
/// `order_no`, WeChat's `refund_id`), each with the verdict it must get; and the genuine one.
fn spoiled_notifies(
    api: Api,
    order_no: &str,
    refund_id: &str,
) -> (Vec<(RawNotify, &'static str)>, RawNotify) {
    match api {
        Api::V2 => {
            let total = PRICE.to_string();
            let genuine = |out_refund_no: &'static str, fee: &'static str, trade: &str| {
                vec![
                    ("out_refund_no", out_refund_no.to_owned()),
                    ("out_trade_no", trade.to_owned()),
                    ("refund_fee", fee.to_owned()),
                    ("total_fee", total.clone()),
                    ("refund_status", "SUCCESS".to_owned()),
                    ("refund_id", refund_id.to_owned()),
                ]
            };
            // Our refund in every field but WeChat's refund_id (issue 23: checked on v2 too).
            let mut other_id = genuine("forge-me", "100", order_no);
            other_id[5].1 = "50000000000000000000000000001".to_owned();
            let body = |key: &str, v: Vec<(&'static str, String)>| {
                let fields: Vec<(&str, &str)> = v.iter().map(|(k, x)| (*k, x.as_str())).collect();
                RawNotify::V2(refund_notify(key, &fields))
            };
            let cases = vec![
                (
                    body(
                        "not the merchant key 000000000000",
                        genuine("forge-me", "100", order_no),
                    ),
                    "undecryptable",
                ),
                (
                    body(sandbox::DEV_PAY_KEY, genuine("nobody", "100", order_no)),
                    "unknown_refund",
                ),
                (
                    body(sandbox::DEV_PAY_KEY, genuine("forge-me", "990", order_no)),
                    "mismatch",
                ),
                (
                    body(
                        sandbox::DEV_PAY_KEY,
                        genuine("forge-me", "100", "20261201OtherOrder000000"),
                    ),
                    "mismatch",
                ),
                (body(sandbox::DEV_PAY_KEY, other_id), "mismatch"),
                (
                    RawNotify::V2(b"<xml><return_code>SUCCESS</return_code>".to_vec()),
                    "malformed",
                ),
                (
                    RawNotify::V2(
                        xml::to_xml([
                            ("return_code", "SUCCESS"),
                            ("mch_id", sandbox::DEV_MCH_ID),
                            ("req_info", "bm90IGNpcGhlcnRleHQ="),
                        ])
                        .into_bytes(),
                    ),
                    "undecryptable",
                ),
            ];
            let genuine = body(sandbox::DEV_PAY_KEY, genuine("forge-me", "100", order_no));
            (cases, genuine)
        }
        Api::V3 => {
            let ours = || v3_refund_resource("forge-me", 100, order_no, refund_id);
            let spoil = |f: &dyn Fn(&mut V3Notify)| {
                let mut n = V3Notify::genuine(ours());
                f(&mut n);
                n.build()
            };
            let with_resource = |r: Value| V3Notify::genuine(r).build();
            let mut other_mch = ours();
            other_mch["mchid"] = json!("1900000999");
            let mut other_order = ours();
            other_order["out_trade_no"] = json!("20261201OtherOrder000000");
            let mut other_total = ours();
            other_total["amount"]["total"] = json!(PRICE + 1);
            let cases = vec![
                (spoil(&|n| n.forged = true), "bad_signature"),
                (
                    spoil(&|n| n.serial = "PUB_KEY_ID_0000WRONG".into()),
                    "bad_signature",
                ),
                (spoil(&|n| n.skew_secs = -600), "bad_signature"),
                (spoil(&|n| n.tamper = true), "malformed"),
                (
                    spoil(&|n| n.apiv3_key = *b"another-apiv3-key-0000000000000!"),
                    "malformed",
                ),
                (spoil(&|n| n.event_type = "REFUND.CLOSED"), "malformed"),
                (
                    with_resource(v3_refund_resource("nobody", 100, order_no, refund_id)),
                    "unknown_refund",
                ),
                (
                    with_resource(v3_refund_resource("forge-me", 990, order_no, refund_id)),
                    "mismatch",
                ),
                (
                    with_resource(v3_refund_resource(
                        "forge-me",
                        100,
                        order_no,
                        "50300000000000000000000000999",
                    )),
                    "mismatch",
                ),
                (with_resource(other_order), "mismatch"),
                (with_resource(other_total), "mismatch"),
                (with_resource(other_mch), "mch_id_mismatch"),
                (
                    RawNotify::V3 {
                        headers: Default::default(),
                        body: b"{}".to_vec(),
                    },
                    "bad_signature",
                ),
            ];
            (cases, V3Notify::genuine(ours()).build())
        }
    }
}

/// Forged, stale, tampered and mismatched refund notifies are refused and change nothing;
/// the genuine one settles the refund once and its replay is a duplicate.
async fn forged_and_mismatched_notifies_change_nothing(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 7).await;
    // WeChat's own refund notifies never come: only ours below.
    set_faults(&env, json!({ "drop_notify": true })).await;
    refund(&env, &order.order_no, 100, "forge-me")
        .await
        .unwrap();
    let processing = get_refund(&env, "forge-me").await;
    assert_eq!(processing.state, pb::RefundState::RefundProcessing as i32);
    let (cases, genuine) = spoiled_notifies(api, &order.order_no, &processing.refund_id);
    for (raw, verdict) in cases {
        let (got, accepted) = send_notify(&env, raw).await;
        assert!(!accepted, "{verdict}");
        assert_eq!(got, verdict);
    }
    assert_eq!(get_refund(&env, "forge-me").await, processing);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (0, 100)
    );
    // The genuine one settles it, once; its replay changes nothing.
    assert_eq!(
        send_notify(&env, genuine.clone()).await,
        ("applied".to_owned(), true)
    );
    assert_eq!(
        send_notify(&env, genuine).await,
        ("duplicate".to_owned(), true)
    );
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (100, 0)
    );
    let verdicts = refunds::store::notification_verdicts(env.pay.database(), "forge-me")
        .await
        .unwrap();
    assert_eq!(verdicts.last(), Some(&("duplicate".to_owned(), true)));
}

async fn duplicate_wechat_notifies_settle_once(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 8).await;
    refund(&env, &order.order_no, 400, "dup-1").await.unwrap();
    wait_refund(&env, "dup-1", pb::RefundState::RefundSuccess).await;
    // WeChat sends the same notify again (a retry after a lost answer). The sandbox records a
    // notify once its answer is back, which may be just after the refund settled here.
    let path = match api {
        Api::V2 => "/sandbox/refund-notifies?out_refund_no=dup-1",
        Api::V3 => "/sandbox/v3/notifies?out_refund_no=dup-1",
    };
    let sent = std::sync::Mutex::new(Vec::<Value>::new());
    eventually(|| async {
        let listed: Vec<Value> = serde_json::from_value(sandbox_get(&env, path).await).unwrap();
        let found = !listed.is_empty();
        *sent.lock().unwrap() = listed;
        found
    })
    .await;
    let sent = sent.into_inner().unwrap();
    let raw = match api {
        Api::V2 => RawNotify::V2(sent[0]["request"].as_str().unwrap().as_bytes().to_vec()),
        Api::V3 => RawNotify::V3 {
            headers: [
                sent[0]["timestamp"].as_str().unwrap().to_owned(),
                sent[0]["nonce"].as_str().unwrap().to_owned(),
                sent[0]["signature"].as_str().unwrap().to_owned(),
                sent[0]["serial"].as_str().unwrap().to_owned(),
            ],
            body: sent[0]["request"].as_str().unwrap().as_bytes().to_vec(),
        },
    };
    let reply = send_notify(&env, raw).await;
    assert_eq!(reply, ("duplicate".to_owned(), true));
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (400, 0)
    );
}

async fn lost_notify_is_repaired_by_the_reconciler(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 9).await;
    set_faults(&env, json!({ "drop_notify": true })).await;
    refund(&env, &order.order_no, 250, "lost-1").await.unwrap();
    // WeChat settles it, but its notify never comes.
    eventually(|| async { wechat_status(&env, "lost-1").await == "SUCCESS" }).await;
    assert_eq!(
        get_refund(&env, "lost-1").await.state,
        pb::RefundState::RefundProcessing as i32
    );
    let report = env.replica().reconcile_refunds_once().await.unwrap();
    assert_eq!((report.queried, report.settled, report.errors), (1, 1, 0));
    assert_eq!(
        get_refund(&env, "lost-1").await.state,
        pb::RefundState::RefundSuccess as i32
    );
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (250, 0)
    );
    // Nothing left to do.
    assert_eq!(env.pay.reconcile_refunds_once().await.unwrap().settled, 0);
}

/// The refund events of the outbox, oldest first: (kind, payload).
async fn refund_events(env: &Env) -> Vec<(String, Value)> {
    use pay_service::events::{self, EventKind};
    events::after(
        env.pay.database(),
        0,
        &[
            EventKind::RefundSucceeded,
            EventKind::RefundFailed,
            EventKind::RefundAbnormal,
        ],
        100,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|e| (e.kind, serde_json::from_str(&e.payload).unwrap()))
    .collect()
}

/// v2 CHANGE / v3 ABNORMAL (退款异常): WeChat took the money from the merchant and holds it
/// until the merchant re-routes it. The refund is ABNORMAL, in flight: its amount stays
/// reserved, one REFUND_ABNORMAL event (not REFUND_FAILED), queried at a slower cadence; a
/// later SUCCESS (by query here) settles it as refunded, a CLOSED (by notify) releases it.
/// (Issue 23, defect 1: this test asserted FAILED with the amount released, which was wrong.)
async fn change_is_abnormal_and_keeps_the_amount_reserved(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    set_faults(
        &env,
        json!({ "refund_change": true, "path_prefix": api.refund_path() }),
    )
    .await;
    let order = paid_order(&env, 10).await;
    refund(&env, &order.order_no, 300, "change-1")
        .await
        .unwrap();
    let abnormal = wait_refund(&env, "change-1", pb::RefundState::RefundAbnormal).await;
    assert_eq!(abnormal.failure, api.abnormal());
    assert_eq!(abnormal.settled_at, 0);
    let events = refund_events(&env).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "REFUND_ABNORMAL");
    assert_eq!(events[0].1["refund"]["failure"], api.abnormal());
    // The money is held by WeChat: still reserved, the order REFUNDING, not refundable again.
    let during = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(during.state, pb::OrderState::Refunding as i32);
    assert_eq!(refunded(&during), (0, 300));
    let err = refund(&env, &order.order_no, PRICE, "change-2")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundExceedsPaid);

    // The merchant re-routes it; no notify reaches us: the reconciler's query settles it, at
    // the slower cadence (not on the next pass, after ABNORMAL_RECHECK_SECS).
    set_faults(&env, json!({ "drop_notify": true })).await;
    let finished: Value = env
        .http
        .post(env.sandbox.url("/sandbox/refunds/change-1/finish"))
        .json(&json!({ "outcome": "success" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(finished["status"], "SUCCESS", "{finished}");
    assert_eq!(env.pay.reconcile_refunds_once().await.unwrap().queried, 0);
    env.clock.advance(refunds::ABNORMAL_RECHECK_SECS);
    let report = env.pay.reconcile_refunds_once().await.unwrap();
    assert_eq!((report.queried, report.settled), (1, 1), "{report:?}");
    assert_eq!(
        get_refund(&env, "change-1").await.state,
        pb::RefundState::RefundSuccess as i32
    );
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.state, pb::OrderState::Paid as i32);
    assert_eq!(refunded(&after), (300, 0));

    // Another goes abnormal, then WeChat closes it (notified): released.
    set_faults(
        &env,
        json!({ "refund_change": true, "path_prefix": api.refund_path() }),
    )
    .await;
    refund(&env, &order.order_no, 200, "change-3")
        .await
        .unwrap();
    wait_refund(&env, "change-3", pb::RefundState::RefundAbnormal).await;
    set_faults(&env, json!({})).await;
    let finished: Value = env
        .http
        .post(env.sandbox.url("/sandbox/refunds/change-3/finish"))
        .json(&json!({ "outcome": "close" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(finished["status"], api.closed(), "{finished}");
    let closed = wait_refund(&env, "change-3", pb::RefundState::RefundClosed).await;
    assert_eq!(closed.failure, api.closed());
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (300, 0)
    );
    let kinds: Vec<String> = refund_events(&env).await.into_iter().map(|e| e.0).collect();
    assert_eq!(
        kinds,
        [
            "REFUND_ABNORMAL",
            "REFUND_SUCCEEDED",
            "REFUND_ABNORMAL",
            "REFUND_FAILED"
        ]
    );
}

async fn closed_is_recorded_as_closed(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    set_faults(
        &env,
        json!({ "refund_close": true, "path_prefix": api.refund_path() }),
    )
    .await;
    let order = paid_order(&env, 16).await;
    refund(&env, &order.order_no, 300, "close-1").await.unwrap();
    let closed = wait_refund(&env, "close-1", pb::RefundState::RefundClosed).await;
    assert_eq!(closed.failure, api.closed());
    // Nothing was refunded and nothing is held: the whole amount is refundable again.
    let after = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(after.state, pb::OrderState::Paid as i32);
    assert_eq!(refunded(&after), (0, 0));
    set_faults(&env, json!({})).await;
    refund(&env, &order.order_no, PRICE, "close-2")
        .await
        .unwrap();
    wait_refund(&env, "close-2", pb::RefundState::RefundSuccess).await;
}

async fn notenough_fails_the_refund_and_releases_the_amount(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 11).await;
    set_faults(
        &env,
        json!({ "refund_not_enough": true, "path_prefix": api.refund_path() }),
    )
    .await;
    let answer = refund(&env, &order.order_no, PRICE, "poor-1")
        .await
        .unwrap();
    let record = answer.refund.unwrap();
    assert_eq!(record.state, pb::RefundState::RefundFailed as i32);
    assert_eq!(record.failure, api.not_enough());
    assert_eq!(refunded(&answer.order.unwrap()), (0, 0));
    // Topped up: a new refund of the whole amount goes through.
    set_faults(&env, json!({})).await;
    refund(&env, &order.order_no, PRICE, "poor-2")
        .await
        .unwrap();
    wait_refund(&env, "poor-2", pb::RefundState::RefundSuccess).await;
}

async fn systemerror_is_retried_with_the_same_key(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 12).await;
    set_faults(
        &env,
        json!({ "pay_system_error": true, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let err = refund(&env, &order.order_no, 120, "sys-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    // Recorded and held, not sent to WeChat's books.
    assert_eq!(
        get_refund(&env, "sys-1").await.state,
        pb::RefundState::RefundPending as i32
    );
    let held = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(
        (held.state, refunded(&held)),
        (pb::OrderState::Refunding as i32, (0, 120))
    );
    assert!(at_wechat(&env, &order.order_no).await.is_empty());
    // The caller retries with the same key: sent again, settled once.
    refund(&env, &order.order_no, 120, "sys-1").await.unwrap();
    wait_refund(&env, "sys-1", pb::RefundState::RefundSuccess).await;
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (120, 0)
    );
}

/// A first send is accepted and its answer lost (SYSTEMERROR / 500 after WeChat recorded it);
/// the retry is refused before WeChat looks at the refund (v2 return_code=FAIL, v3 401). The
/// refusal is not proof: WeChat is asked, holds the refund, and it settles as refunded (issue
/// 23, defect 3). A refund WeChat never got still fails on a refused resend, its amount
/// released.
async fn a_refused_resend_after_a_lost_answer_asks_wechat_first(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 21).await;
    set_faults(
        &env,
        json!({ "refund_answer_lost": true, "drop_notify": true, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let err = refund(&env, &order.order_no, 330, "lost-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    assert_eq!(
        at_wechat(&env, &order.order_no).await.len(),
        1,
        "WeChat has it"
    );
    set_faults(
        &env,
        json!({ "refund_refused": true, "drop_notify": true, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let again = refund(&env, &order.order_no, 330, "lost-1")
        .await
        .expect("answered from WeChat's query");
    assert_ne!(
        again.refund.unwrap().state,
        pb::RefundState::RefundFailed as i32,
        "a refused resend is not proof"
    );
    set_faults(&env, json!({ "drop_notify": true })).await;
    eventually(|| async {
        let _ = env.pay.reconcile_refunds_once().await;
        get_refund(&env, "lost-1").await.state == pb::RefundState::RefundSuccess as i32
    })
    .await;
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (330, 0)
    );

    // Lost before WeChat saw it (a 503), then refused: WeChat holds none, so it fails.
    set_faults(
        &env,
        json!({ "http_status": 503, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let err = refund(&env, &order.order_no, 100, "never-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    set_faults(
        &env,
        json!({ "refund_refused": true, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let again = refund(&env, &order.order_no, 100, "never-1").await.unwrap();
    assert_eq!(
        again.refund.unwrap().state,
        pb::RefundState::RefundFailed as i32
    );
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (330, 0)
    );
}

/// A Refund without out_refund_no whose answer is lost (WeChat recorded it, answered
/// SYSTEMERROR / 500) is answered PENDING with its generated key, never an error that loses
/// it (issue 23, defect 2): the caller's retry with that key answers the same refund, and
/// WeChat holds one.
async fn a_keyless_refund_never_loses_its_key(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 22).await;
    set_faults(
        &env,
        json!({ "refund_answer_lost": true, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let answered = refund(&env, &order.order_no, 250, "")
        .await
        .expect("answered with the key, not an error");
    let record = answered.refund.unwrap();
    assert_eq!(record.state, pb::RefundState::RefundPending as i32);
    assert!(!record.out_refund_no.is_empty());
    assert_eq!(refunded(&answered.order.unwrap()), (0, 250));
    let again = refund(&env, &order.order_no, 250, &record.out_refund_no)
        .await
        .unwrap();
    assert_eq!(again.refund.unwrap().out_refund_no, record.out_refund_no);
    wait_refund(&env, &record.out_refund_no, pb::RefundState::RefundSuccess).await;
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (250, 0)
    );
}

/// Anyone can post to the refund notify endpoint: a body that does not decrypt is kept as a
/// short prefix with the SHA-256 and length of the whole, not 8 KiB of it (issue 23, defect 5).
async fn undecryptable_refund_notifies_keep_a_prefix_and_hash(backend: Backend) {
    use sha2::Digest as _;
    let env = Env::refunding(backend).await;
    let junk = "A".repeat(8000);
    let body = xml::to_xml([
        ("return_code", "SUCCESS"),
        ("mch_id", sandbox::DEV_MCH_ID),
        ("req_info", junk.as_str()),
    ])
    .into_bytes();
    assert_eq!(
        send_notify(&env, RawNotify::V2(body.clone())).await,
        ("undecryptable".to_owned(), false)
    );
    let stored = refunds::store::notification_bodies(env.pay.database(), "")
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (raw, sha256, len) = &stored[0];
    assert!(raw.len() <= 64, "{} bytes kept", raw.len());
    assert!(body.starts_with(raw.as_bytes()));
    assert_eq!(*sha256, hex::encode(sha2::Sha256::digest(&body)));
    assert_eq!(*len, i64::try_from(body.len()).unwrap());
}

/// A throttled sender's v2 refund notify is decrypted first: one that does not decrypt is
/// dropped unrecorded (`rate_limited`), WeChat's own is handled as any other.
async fn throttled_senders_refund_notifies_must_decrypt(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 23).await;
    set_faults(&env, json!({ "drop_notify": true })).await;
    refund(&env, &order.order_no, 100, "throttle-1")
        .await
        .unwrap();
    let processing = get_refund(&env, "throttle-1").await;
    let fields = |key: &str| {
        refund_notify(
            key,
            &[
                ("out_refund_no", "throttle-1"),
                ("out_trade_no", order.order_no.as_str()),
                ("refund_fee", "100"),
                ("total_fee", &PRICE.to_string()),
                ("refund_status", "SUCCESS"),
                ("refund_id", processing.refund_id.as_str()),
            ],
        )
    };
    let throttled = |body: Vec<u8>| {
        let mut request = Request::new(pb::HandleRefundNotifyRequest { raw_body: body });
        request.metadata_mut().insert(
            service_kit::grpc::NOTIFY_SENDER_THROTTLED,
            "1".parse().unwrap(),
        );
        request
    };
    let forged = PayService::handle_refund_notify(
        &env.pay,
        throttled(fields("not the merchant key 000000000000")),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (forged.verdict.as_str(), forged.accepted),
        ("rate_limited", false)
    );
    assert!(
        refunds::store::notification_bodies(env.pay.database(), "")
            .await
            .unwrap()
            .is_empty()
    );
    let genuine =
        PayService::handle_refund_notify(&env.pay, throttled(fields(sandbox::DEV_PAY_KEY)))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        (genuine.verdict.as_str(), genuine.accepted),
        ("applied", true)
    );
    assert_eq!(
        get_refund(&env, "throttle-1").await.state,
        pb::RefundState::RefundSuccess as i32
    );
}

/// Refund notifies are pruned by age with the retention of pay notifies (issue 23, defect 5).
async fn old_refund_notifies_are_pruned(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let now = env.clock.now();
    let retention =
        i64::try_from(pay_service::config::DEFAULT_NOTIFY_RETENTION_DAYS * 86_400).unwrap();
    for (key, received_at) in [("old-1", now - retention - 10), ("new-1", now - 10)] {
        refunds::store::insert_notification(
            env.pay.database(),
            &refunds::store::NewRefundNotification {
                received_at,
                out_refund_no: key.into(),
                raw_body: "<xml/>".into(),
                verdict: "unknown_refund".into(),
                accepted: false,
                body_sha256: String::new(),
                body_len: 6,
            },
        )
        .await
        .unwrap();
    }
    let report = env.pay.reconcile_refunds_once().await.unwrap();
    assert_eq!(report.pruned_notifies, 1, "{report:?}");
    let verdicts = |key: &'static str| {
        let env = &env;
        async move {
            refunds::store::notification_verdicts(env.pay.database(), key)
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!((verdicts("old-1").await, verdicts("new-1").await), (0, 1));
}

/// pay-service dies after WeChat recorded the refund but before the answer is stored: the
/// request's task is dropped mid-call (what SIGKILL does to it). A replica's reconciler sends
/// the PENDING refund again with the same out_refund_no; WeChat answers the same refund and
/// the payer is refunded once.
async fn killed_between_the_call_and_the_answer(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 13).await;
    set_faults(
        &env,
        json!({ "refund_reply_delay_ms": 30000, "drop_notify": true, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let pay = env.pay.clone();
    let order_no = order.order_no.clone();
    let call = tokio::spawn(async move {
        pay.refund(pay_service::RefundOrder {
            order_no,
            refund_fen: 330,
            reason: "returned item".into(),
            out_refund_no: "crash-1".into(),
        })
        .await
    });
    // WeChat has it...
    eventually(|| async { at_wechat(&env, &order.order_no).await.len() == 1 }).await;
    // ...and the service dies before the answer arrives.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let row = refunds::store::find(env.pay.database(), "crash-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state(), Some(RefundState::Pending));
    // WeChat settles it meanwhile; no notify reaches us (the fault).
    set_faults(&env, json!({ "drop_notify": true })).await;
    let replica = env.replica();
    let first = replica.reconcile_refunds_once().await.unwrap();
    assert_eq!((first.resent, first.errors), (1, 0));
    let record = get_refund(&env, "crash-1").await;
    assert_ne!(record.state, pb::RefundState::RefundPending as i32);
    // Settled by the next pass (query) if the resend found it still processing.
    eventually(|| async {
        let _ = replica.reconcile_refunds_once().await;
        get_refund(&env, "crash-1").await.state == pb::RefundState::RefundSuccess as i32
    })
    .await;
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 1, "one refund at WeChat");
    assert_eq!(wechat[0]["requests"], 2, "the same refund asked for twice");
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (330, 0)
    );
}

/// A payment whose notify was lost, then refunded in the merchant platform: the reconciler's
/// orderquery answers REFUND; the payment is recorded, then the refund WeChat lists.
async fn orderquery_refund_records_payment_and_refund(backend: Backend) {
    let env = Env::refunding(backend).await;
    let prepared = env
        .prepare(&principal(14), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let order_no = prepared.order.as_ref().unwrap().order_no.clone();
    env.sandbox_pay(&prepared, Some(json!({ "drop_notify": true })))
        .await;
    // The merchant refunds 90 fen by other means (their own client with the certificate).
    let client = wechat::WechatClient::new(wechat::WechatConfig {
        pay_base: env.sandbox.base_url.clone(),
        ..wechat::WechatConfig::default()
    })
    .unwrap()
    .with_merchant_cert(&wechat::MerchantCert {
        cert_pem: env.sandbox.pki.client_cert_pem.clone().into_bytes(),
        key_pem: env.sandbox.pki.client_key_pem.clone().into_bytes(),
        secapi_base: Some(env.sandbox.secapi_url.clone()),
        ca_pem: Some(env.sandbox.pki.ca_pem.clone().into_bytes()),
    })
    .unwrap();
    let pay = wechat::PayConfig::new(
        sandbox::DEV_APP_ID,
        sandbox::DEV_MCH_ID,
        sandbox::DEV_PAY_KEY,
    );
    let outside = client
        .refund(
            &pay,
            &wechat::pay::RefundRequest {
                out_trade_no: order_no.clone(),
                out_refund_no: "platform-1".into(),
                total_fee: PRICE,
                refund_fee: 90,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(outside.refund_fee, 90);
    eventually(|| async {
        let r: Value = env
            .http
            .get(env.sandbox.url("/sandbox/refunds/platform-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["refund_status"] == "SUCCESS"
    })
    .await;
    assert_eq!(
        env.get(&order_no, 0).await.unwrap().state,
        pb::OrderState::Paying as i32
    );
    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(report.paid, 1);
    let order = env.get(&order_no, 0).await.unwrap();
    assert!(!order.transaction_id.is_empty());
    assert_eq!(order.state, pb::OrderState::Paid as i32);
    assert_eq!(refunded(&order), (90, 0));
    let recorded = get_refund(&env, "platform-1").await;
    assert_eq!(recorded.state, pb::RefundState::RefundSuccess as i32);
    assert_eq!(recorded.amount_fen, 90);
}

/// Orders remember their API: one placed (and paid) on v2 refunds on v2 after the service is
/// switched to `WXMP_PAY_API=v3`, settled by its v2 notify, while a new order is placed and
/// refunded on v3.
async fn an_order_placed_on_v2_refunds_on_v2_after_the_switch_to_v3(backend: Backend) {
    let env = Env::refunding(backend).await;
    let old = paid_order(&env, 17).await;
    // The restart with WXMP_PAY_API=v3 (the v2 key and certificate stay for v2 orders).
    let keys = env.keys_dir().to_owned();
    let switched = env.replica_with(|c| c.v3 = crate::helpers::v3_config(&keys, Api::V3));
    let answer = switched
        .refund(pay_service::RefundOrder {
            order_no: old.order_no.clone(),
            refund_fen: 200,
            reason: "returned item".into(),
            out_refund_no: "switch-v2".into(),
        })
        .await
        .unwrap();
    assert_eq!(answer.0.api, "v2");
    let settled = wait_refund(&env, "switch-v2", pb::RefundState::RefundSuccess).await;
    assert_eq!(settled.api, "v2");
    // Sent to WeChat's v2 refund API only, and settled by its v2 notify.
    assert_eq!(at_wechat_on(&env, Api::V2, &old.order_no).await.len(), 1);
    assert!(at_wechat_on(&env, Api::V3, &old.order_no).await.is_empty());
    stored_verdict(&env, "switch-v2").await;
    let verdicts = refunds::store::notification_verdicts(env.pay.database(), "switch-v2")
        .await
        .unwrap();
    assert_eq!(verdicts.first(), Some(&("applied".to_owned(), true)));
    assert_eq!(
        refunded(&env.get(&old.order_no, 0).await.unwrap()),
        (200, 0)
    );

    // A new order on the switched service is placed and refunded on v3.
    let prepared = PayService::prepare_jsapi_payment(
        &switched,
        Request::new(pb::PrepareJsapiPaymentRequest {
            principal: Some(principal(18)),
            target: Some(Target::ProductId("vip".into())),
            client_ip: "203.0.113.7".into(),
            idempotency_key: String::new(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(prepared.params.as_ref().unwrap().sign_type, "RSA");
    let new_no = prepared.order.as_ref().unwrap().order_no.clone();
    env.sandbox_pay(&prepared, None).await;
    // Its v3 notify reaches the receiver's core, which has no v3 keys: the reconciler of the
    // switched service records the payment from the v3 query instead.
    eventually(|| async {
        let _ = switched.reconcile_once().await;
        env.get(&new_no, 0).await.unwrap().state == pb::OrderState::Paid as i32
    })
    .await;
    let (refund, _) = switched
        .refund(pay_service::RefundOrder {
            order_no: new_no.clone(),
            refund_fen: 100,
            reason: String::new(),
            out_refund_no: "switch-v3".into(),
        })
        .await
        .unwrap();
    assert_eq!(refund.api, "v3");
    assert_eq!(at_wechat_on(&env, Api::V3, &new_no).await.len(), 1);
    assert!(at_wechat_on(&env, Api::V2, &new_no).await.is_empty());
    eventually(|| async {
        let _ = switched.reconcile_refunds_once().await;
        get_refund(&env, "switch-v3").await.state == pb::RefundState::RefundSuccess as i32
    })
    .await;
}

/// The first v3 pay notify WeChat sent for `out_trade_no`, headers and all (the sandbox keeps
/// every attempt; the receiver's copies are not told apart, their resource being sealed).
async fn sent_v3_notice(env: &Env, out_trade_no: &str) -> crate::helpers::Notice {
    let path = format!("/sandbox/v3/notifies?out_trade_no={out_trade_no}");
    let sent = std::sync::Mutex::new(Value::Null);
    eventually(|| async {
        let listed = sandbox_get(env, &path).await;
        let found = listed.as_array().is_some_and(|a| !a.is_empty());
        *sent.lock().unwrap() = listed;
        found
    })
    .await;
    let first = sent.into_inner().unwrap()[0].clone();
    let field = |name: &str| first[name].as_str().unwrap().to_owned();
    crate::helpers::Notice {
        body: field("request").into_bytes(),
        headers: Some([
            field("timestamp"),
            field("nonce"),
            field("signature"),
            field("serial"),
        ]),
    }
}

/// Rollback (issue 13): orders placed on v3, then the service restarted with
/// `WXMP_PAY_API=v2` and the v3 settings still set. New orders go to v2; the v3 orders are
/// still paid by their v3 notify and by the reconciler's v3 query, and refund on v3. Without
/// the v3 settings a v3 order is left as it is (PAYING, its notify refused so that WeChat
/// retries), never closed or failed.
async fn v3_orders_are_served_after_the_switch_back_to_v2(backend: Backend) {
    use std::sync::atomic::Ordering;
    let env = Env::refunding_on(backend, Api::V3).await;
    // Notifies are held at the receiver, to be handed to the restarted service.
    env.receiver.forward.store(false, Ordering::SeqCst);
    let env = &env;
    let place = |user| async move {
        env.prepare(&principal(user), Target::ProductId("vip".into()))
            .await
            .unwrap()
    };
    let by_notify = place(21).await;
    let by_query = place(22).await;
    let stranded = place(23).await;
    for prepared in [&by_notify, &by_query, &stranded] {
        assert_eq!(prepared.order.as_ref().unwrap().pay_api, "v3");
    }
    let no = |p: &pb::PrepareJsapiPaymentResponse| p.order.as_ref().unwrap().order_no.clone();

    // The restart: WXMP_PAY_API=v2, the v3 variables still set.
    let switched = env.replica_with(|c| c.v3.api = pay_service::config::PayApi::V2);
    let fresh = PayService::prepare_jsapi_payment(
        &switched,
        Request::new(pb::PrepareJsapiPaymentRequest {
            principal: Some(principal(24)),
            target: Some(Target::ProductId("vip".into())),
            client_ip: "203.0.113.7".into(),
            idempotency_key: String::new(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(fresh.order.as_ref().unwrap().pay_api, "v2");
    assert_eq!(fresh.params.as_ref().unwrap().sign_type, "MD5");

    // Paid by its v3 notify, verified and applied by the v2-configured service.
    env.sandbox_pay(&by_notify, None).await;
    let notice = sent_v3_notice(env, &no(&by_notify)).await;
    let reply = crate::helpers::deliver_to(&switched, &notice).await;
    assert_eq!((reply.verdict.as_str(), reply.accepted), ("applied", true));
    assert_eq!(
        env.get(&no(&by_notify), 0).await.unwrap().state,
        pb::OrderState::Paid as i32
    );

    // Paid with the notify lost: the reconciler's v3 query applies it.
    env.sandbox_pay(&by_query, Some(json!({ "drop_notify": true })))
        .await;
    let report = switched.reconcile_once().await.unwrap();
    assert_eq!((report.paid, report.errors), (1, 0), "{report:?}");
    let paid = env.get(&no(&by_query), 0).await.unwrap();
    assert_eq!(paid.state, pb::OrderState::Paid as i32);
    assert!(!paid.transaction_id.is_empty());

    // Refunded on v3 by the switched service, settled by WeChat's v3 refund notify.
    env.receiver.forward.store(true, Ordering::SeqCst);
    let (record, _) = switched
        .refund(pay_service::RefundOrder {
            order_no: no(&by_notify),
            refund_fen: 300,
            reason: String::new(),
            out_refund_no: "rollback-v3".into(),
        })
        .await
        .unwrap();
    assert_eq!(record.api, "v3");
    wait_refund(env, "rollback-v3", pb::RefundState::RefundSuccess).await;
    assert_eq!(at_wechat_on(env, Api::V3, &no(&by_notify)).await.len(), 1);
    assert!(at_wechat_on(env, Api::V2, &no(&by_notify)).await.is_empty());
    assert_eq!(
        refunded(&env.get(&no(&by_notify), 0).await.unwrap()),
        (300, 0)
    );

    // A service without the v3 settings leaves a paid v3 order alone: its query is WeChat
    // unavailable (not closed, not failed), its notify is refused so that WeChat retries.
    env.receiver.forward.store(false, Ordering::SeqCst);
    let bare = env.replica_with(|c| c.v3 = Default::default());
    env.sandbox_pay(&stranded, None).await;
    let notice = sent_v3_notice(env, &no(&stranded)).await;
    let reply = crate::helpers::deliver_to(&bare, &notice).await;
    assert!(!reply.accepted && !reply.wechat_stops(), "{reply:?}");
    let report = bare.reconcile_once().await.unwrap();
    assert_eq!(report.paid, 0, "{report:?}");
    assert_eq!(
        env.get(&no(&stranded), 0).await.unwrap().state,
        pb::OrderState::Paying as i32
    );
    // The service with them applies the same notify.
    let reply = crate::helpers::deliver_to(&switched, &notice).await;
    assert_eq!((reply.verdict.as_str(), reply.accepted), ("applied", true));
}

/// v3 only (v2 answers carry no signature of WeChat's own to fake): WeChat records the refund
/// but its answer's signature fails. That is WeChat unavailable: the refund stays PENDING with
/// its amount held, and the retry with the same out_refund_no gets the same refund.
async fn an_unverifiable_refund_answer_is_wechat_unavailable(backend: Backend) {
    let env = Env::refunding_on(backend, Api::V3).await;
    let order = paid_order(&env, 19).await;
    let sandbox = &env;
    let v3_faults = |faults: Value| async move {
        let resp = sandbox
            .http
            .post(sandbox.sandbox.url("/sandbox/v3/faults"))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    };
    v3_faults(json!({ "bad_signature": true })).await;
    let err = refund(&env, &order.order_no, 150, "unsigned-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    assert_eq!(
        get_refund(&env, "unsigned-1").await.state,
        pb::RefundState::RefundPending as i32
    );
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (0, 150)
    );
    v3_faults(json!({})).await;
    refund(&env, &order.order_no, 150, "unsigned-1")
        .await
        .unwrap();
    wait_refund(&env, "unsigned-1", pb::RefundState::RefundSuccess).await;
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 1, "one refund at WeChat");
    assert_eq!(wechat[0]["requests"], 2, "the same refund asked for twice");
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (150, 0)
    );
}

/// The secapi port demands the merchant certificate from the sandbox's CA: a client with a
/// certificate of another CA gets no TLS session and WeChat records nothing.
async fn the_secapi_port_requires_the_merchant_certificate(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 15).await;
    let stranger = sandbox::DevPki::generate(sandbox::DEV_MCH_ID, &[]).unwrap();
    let client = wechat::WechatClient::new(wechat::WechatConfig::default())
        .unwrap()
        .with_merchant_cert(&wechat::MerchantCert {
            cert_pem: stranger.client_cert_pem.into_bytes(),
            key_pem: stranger.client_key_pem.into_bytes(),
            secapi_base: Some(env.sandbox.secapi_url.clone()),
            ca_pem: Some(env.sandbox.pki.ca_pem.clone().into_bytes()),
        })
        .unwrap();
    let pay = wechat::PayConfig::new(
        sandbox::DEV_APP_ID,
        sandbox::DEV_MCH_ID,
        sandbox::DEV_PAY_KEY,
    );
    let err = client
        .refund(
            &pay,
            &wechat::pay::RefundRequest {
                out_trade_no: order.order_no.clone(),
                out_refund_no: "stranger-1".into(),
                total_fee: PRICE,
                refund_fee: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, wechat::PayError::Transport(_)), "{err:?}");
    assert!(at_wechat(&env, &order.order_no).await.is_empty());
    // A client without any certificate cannot even try.
    let bare = wechat::WechatClient::new(wechat::WechatConfig::default()).unwrap();
    assert!(matches!(
        bare.refund(&pay, &wechat::pay::RefundRequest::default())
            .await,
        Err(wechat::PayError::NoCertificate)
    ));
}

on_both_backends_and_apis!(
    api = crate::helpers::Api;
    partial_then_full_refund,
    over_refund_is_refused_and_never_sent,
    concurrent_refunds_race_for_the_last_fen,
    retries_with_the_same_key_answer_the_first_refund,
    concurrent_retries_of_one_key_answer_one_refund,
    unpaid_and_unknown_orders_are_refused,
    refunds_without_a_certificate_are_disabled,
    forged_and_mismatched_notifies_change_nothing,
    duplicate_wechat_notifies_settle_once,
    lost_notify_is_repaired_by_the_reconciler,
    change_is_abnormal_and_keeps_the_amount_reserved,
    closed_is_recorded_as_closed,
    notenough_fails_the_refund_and_releases_the_amount,
    systemerror_is_retried_with_the_same_key,
    killed_between_the_call_and_the_answer,
    a_refused_resend_after_a_lost_answer_asks_wechat_first,
    a_keyless_refund_never_loses_its_key,
    old_refund_notifies_are_pruned,
);

/// v2 only: v3 has no refund list per order to learn refunds made elsewhere from; the switch
/// starts on v2.
mod v2_only {
    use super::*;

    on_both_backends!(
        orderquery_refund_records_payment_and_refund,
        an_order_placed_on_v2_refunds_on_v2_after_the_switch_to_v3,
        undecryptable_refund_notifies_keep_a_prefix_and_hash,
        throttled_senders_refund_notifies_must_decrypt,
    );
}

/// v3 only: what v2 has no counterpart of.
mod v3_only {
    use super::*;

    on_both_backends!(
        an_unverifiable_refund_answer_is_wechat_unavailable,
        v3_orders_are_served_after_the_switch_back_to_v2,
    );
}

/// Not storage-specific: once is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secapi_requires_the_merchant_certificate() {
    the_secapi_port_requires_the_merchant_certificate(Backend::Sqlite).await;
}

/// Two refunds of 100 fen PENDING: their first sends failed before WeChat saw them (503).
async fn two_pending(env: &Env, api: Api, order_no: &str, keys: [&str; 2]) {
    set_faults(
        env,
        json!({ "http_status": 503, "times": 2, "path_prefix": api.refund_path() }),
    )
    .await;
    for key in keys {
        let err = refund(env, order_no, 100, key).await.unwrap_err();
        assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    }
    assert!(at_wechat(env, order_no).await.is_empty());
}

/// A replica dies (SIGKILL: its pass is dropped) while WeChat holds the answer to its resend:
/// its claim on the refund lasts PAY_RECONCILE_LEASE_SECS, not a hard-coded two minutes, and
/// then another replica sends it again (issue 23: the lease ignored the setting). Failed
/// before: the survivor's pass after the 5 s lease resent nothing.
async fn a_dead_replicas_claim_lasts_only_the_lease(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 31).await;
    set_faults(
        &env,
        json!({ "http_status": 503, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let err = refund(&env, &order.order_no, 200, "lease-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    let lease = |c: &mut pay_service::Config| c.reconcile_lease_secs = 5;
    let dying = env.replica_with(lease);
    set_faults(
        &env,
        json!({ "refund_reply_delay_ms": 30000, "drop_notify": true, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let pass = tokio::spawn(async move { dying.reconcile_refunds_once().await });
    eventually(|| async { at_wechat(&env, &order.order_no).await.len() == 1 }).await;
    pass.abort();
    assert!(pass.await.unwrap_err().is_cancelled());
    let survivor = env.replica_with(lease);
    // Within the lease the refund is the dead replica's...
    assert_eq!(survivor.reconcile_refunds_once().await.unwrap().resent, 0);
    // ...after it, the survivor's.
    env.clock.advance(6);
    let report = survivor.reconcile_refunds_once().await.unwrap();
    assert_eq!((report.resent, report.errors), (1, 0));
    eventually(|| async {
        let _ = survivor.reconcile_refunds_once().await;
        get_refund(&env, "lease-1").await.state == pb::RefundState::RefundSuccess as i32
    })
    .await;
    let wechat = at_wechat(&env, &order.order_no).await;
    assert_eq!(wechat.len(), 1, "one refund at WeChat");
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (200, 0)
    );
}

/// The refund reconciler reads its clock per refund, as the order reconciler does: in a pass
/// slowed by WeChat, a refund claimed later holds its lease (and its next check) from then,
/// not from the start of the pass, when it would be born expired and another replica could
/// take it at once. Failed before: the second refund's claim ran from the pass's start.
async fn the_refund_reconciler_reads_its_clock_per_refund(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 32).await;
    two_pending(&env, api, &order.order_no, ["clock-1", "clock-2"]).await;
    set_faults(
        &env,
        json!({ "refund_reply_delay_ms": 1500, "drop_notify": true, "times": 2, "path_prefix": api.refund_path() }),
    )
    .await;
    let start = env.clock.now();
    let replica = env.replica();
    let pass = tokio::spawn(async move { replica.reconcile_refunds_once().await });
    eventually(|| async { at_wechat(&env, &order.order_no).await.len() == 1 }).await;
    let first = at_wechat(&env, &order.order_no).await[0]["out_refund_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let later = if first == "clock-1" {
        "clock-2"
    } else {
        "clock-1"
    };
    // 1000 s pass while WeChat answers the first one.
    env.clock.advance(1000);
    eventually(|| async { at_wechat(&env, &order.order_no).await.len() == 2 }).await;
    let claimed = refunds::store::find(env.pay.database(), later)
        .await
        .unwrap()
        .unwrap();
    assert!(
        claimed.next_check_at >= start + 1000,
        "claimed at {} for a pass that started at {start}",
        claimed.next_check_at
    );
    let report = pass.await.unwrap().unwrap();
    assert_eq!((report.resent, report.errors), (2, 0));
    let after = refunds::store::find(env.pay.database(), later)
        .await
        .unwrap()
        .unwrap();
    assert!(after.next_check_at >= start + 1000, "{after:?}");
}

/// A refund's notify URL is bound when it is created, like an order's: a replica configured
/// with another PAY_REFUND_NOTIFY_URL sends it again with the first URL (the same request),
/// and its notify reaches us there. Failed before: the resend carried the replica's URL.
async fn a_refund_keeps_the_notify_url_it_was_created_with(backend: Backend, api: Api) {
    let env = Env::refunding_on(backend, api).await;
    let order = paid_order(&env, 33).await;
    set_faults(
        &env,
        json!({ "http_status": 503, "times": 1, "path_prefix": api.refund_path() }),
    )
    .await;
    let err = refund(&env, &order.order_no, 150, "bound-1")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    let moved = env.replica_with(|c| {
        c.refunds.refund_notify_url = Some("http://127.0.0.1:9/moved/refund-notify".into());
    });
    let report = moved.reconcile_refunds_once().await.unwrap();
    assert_eq!((report.resent, report.errors), (1, 0));
    let bound = env.config.refunds.refund_notify_url.clone().unwrap();
    let (held, expected) = match api {
        Api::V2 => (
            sandbox_get(&env, "/sandbox/refunds/bound-1").await,
            bound.clone(),
        ),
        Api::V3 => (
            sandbox_get(&env, "/sandbox/v3/refunds/bound-1").await,
            format!("{}/v3", bound.trim_end_matches('/')),
        ),
    };
    assert_eq!(held["notify_url"], expected.as_str());
    // Its notify reaches the bound URL and settles it.
    wait_refund(&env, "bound-1", pb::RefundState::RefundSuccess).await;
    stored_verdict(&env, "bound-1").await;
}

/// Refunds made outside wxmp (the merchant platform) are not ignored (issue 23): WeChat's v2
/// refundquery of the order lists them, and they are recorded against the order with origin
/// `outside`, so refunded_fen counts them and an over-refund is refused here, nothing sent.
/// Learnt when WeChat refuses a refund of ours, and by the reconciler's query of the order.
/// Failed before: the refused refund left the ledger at 0 refunded and the next one was sent.
async fn refunds_made_outside_wxmp_are_recorded_and_counted(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 34).await;
    let outside = |order_no: String, fee: i64, no: &'static str| {
        let env = &env;
        async move {
            let r = env
                .http
                .post(env.sandbox.url("/sandbox/refunds/outside"))
                .json(&json!({ "out_trade_no": order_no, "refund_fee": fee, "out_refund_no": no }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            eventually(|| async {
                sandbox_get(env, &format!("/sandbox/refunds/{no}")).await["refund_status"]
                    == "SUCCESS"
            })
            .await;
        }
    };
    outside(order.order_no.clone(), 900, "platform-9").await;
    // Our ledger does not know yet: a refund of 200 goes to WeChat, which refuses it...
    let refused = refund(&env, &order.order_no, 200, "over-1").await.unwrap();
    assert_eq!(
        refused.refund.unwrap().state,
        pb::RefundState::RefundFailed as i32
    );
    // ...and the order's refundquery is read: the outside refund is recorded and counted.
    let recorded = get_refund(&env, "platform-9").await;
    assert_eq!(
        (
            recorded.state,
            recorded.amount_fen,
            recorded.origin.as_str()
        ),
        (pb::RefundState::RefundSuccess as i32, 900, "outside")
    );
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (900, 0)
    );
    let err = refund(&env, &order.order_no, 200, "over-2")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundExceedsPaid);
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 1);
    // What is left refunds as usual.
    refund(&env, &order.order_no, 90, "rest-1").await.unwrap();
    wait_refund(&env, "rest-1", pb::RefundState::RefundSuccess).await;
    let done = env.get(&order.order_no, 0).await.unwrap();
    assert_eq!(
        (done.state, refunded(&done)),
        (pb::OrderState::Refunded as i32, (990, 0))
    );
    let events: Vec<_> = refund_events(&env)
        .await
        .into_iter()
        .filter(|(kind, e)| {
            kind == "REFUND_SUCCEEDED" && e["refund"]["out_refund_no"] == "platform-9"
        })
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");

    // The reconciler's query of one of our refunds lists the order's others too.
    let second = paid_order(&env, 35).await;
    set_faults(
        &env,
        json!({ "refund_hold": true, "drop_notify": true, "times": 1, "path_prefix": "/secapi/" }),
    )
    .await;
    refund(&env, &second.order_no, 100, "mine-1").await.unwrap();
    outside(second.order_no.clone(), 300, "platform-3").await;
    let report = env.pay.reconcile_refunds_once().await.unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(
        get_refund(&env, "platform-3").await.state,
        pb::RefundState::RefundSuccess as i32
    );
    assert_eq!(
        refunded(&env.get(&second.order_no, 0).await.unwrap()),
        (300, 100)
    );
}

/// An order refunded in more than ten parts in the merchant platform: WeChat's refundquery of
/// the order answers ten at a time (分页查询), and every page is read, so all twelve are
/// recorded and counted. Failed before: only the first ten were, and wxmp sent a refund of
/// what it thought was left.
async fn an_order_refunded_in_twelve_parts_outside_is_read_past_the_first_page(backend: Backend) {
    let env = Env::refunding(backend).await;
    let order = paid_order(&env, 36).await;
    assert_eq!(order.amount_fen, 990);
    for n in 0..12 {
        let no = format!("platform-page-{n:02}");
        let r = env
            .http
            .post(env.sandbox.url("/sandbox/refunds/outside"))
            .json(&json!({ "out_trade_no": order.order_no, "refund_fee": 80, "out_refund_no": no }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    for n in 0..12 {
        let path = format!("/sandbox/refunds/platform-page-{n:02}");
        let env = &env;
        eventually(|| async { sandbox_get(env, &path).await["refund_status"] == "SUCCESS" }).await;
    }
    // 960 of 990 refunded at WeChat: a refund of 100 is refused there, and the order's
    // refunds are read.
    let refused = refund(&env, &order.order_no, 100, "paged-over-1")
        .await
        .unwrap();
    assert_eq!(
        refused.refund.unwrap().state,
        pb::RefundState::RefundFailed as i32
    );
    for n in 0..12 {
        let recorded = get_refund(&env, &format!("platform-page-{n:02}")).await;
        assert_eq!(
            (recorded.amount_fen, recorded.origin.as_str()),
            (80, "outside"),
            "refund {n}"
        );
    }
    eventually(|| async { refunded(&env.get(&order.order_no, 0).await.unwrap()) == (960, 0) })
        .await;
    let err = refund(&env, &order.order_no, 100, "paged-over-2")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::RefundExceedsPaid);
    assert_eq!(at_wechat(&env, &order.order_no).await.len(), 12);
}

async fn apply(
    env: &Env,
    out_refund_no: &str,
    target: pb::AbnormalRefundTarget,
    card: Option<(&str, &str, &str)>,
) -> Result<pb::RefundRecord, Status> {
    let (bank_type, bank_account, real_name) = card.unwrap_or_default();
    PayService::apply_abnormal_refund(
        &env.pay,
        Request::new(pb::ApplyAbnormalRefundRequest {
            out_refund_no: out_refund_no.into(),
            target: target as i32,
            bank_type: bank_type.into(),
            bank_account: bank_account.into(),
            real_name: real_name.into(),
        }),
    )
    .await
    .map(|r| r.into_inner().refund.unwrap())
}

/// v3 发起异常退款: an ABNORMAL refund's money re-routed to the payer's debit card (card number
/// and name sealed for WeChat's public key; the sandbox opens them) or to the merchant's bank
/// account. WeChat processes it anew (PROCESSING, the amount still reserved), then SUCCESS
/// with where the money went: the card, or 商户结算银行账户 (the payer then paid otherwise).
async fn abnormal_refunds_are_rerouted_on_v3(backend: Backend) {
    use pb::AbnormalRefundTarget::{MerchantBankCard, UserBankCard};
    let env = Env::refunding_on(backend, Api::V3).await;
    set_faults(
        &env,
        json!({ "refund_change": true, "path_prefix": "/v3/refund/domestic/refunds" }),
    )
    .await;
    let order = paid_order(&env, 36).await;
    refund(&env, &order.order_no, 300, "abn-1").await.unwrap();
    refund(&env, &order.order_no, 200, "abn-2").await.unwrap();
    wait_refund(&env, "abn-1", pb::RefundState::RefundAbnormal).await;
    wait_refund(&env, "abn-2", pb::RefundState::RefundAbnormal).await;
    set_faults(&env, json!({})).await;
    // Bad input: a clear error, nothing sent.
    for (card, why) in [
        (("VISA_CREDIT", "6222020202020202", "张三"), "bank_type"),
        (("ICBC_DEBIT", "6222 0202", "张三"), "bank_account"),
        (("ICBC_DEBIT", "6222020202020202", ""), "real_name"),
    ] {
        let err = apply(&env, "abn-1", UserBankCard, Some(card))
            .await
            .unwrap_err();
        assert_eq!(reason(&err), ErrorReason::InvalidArgument, "{why}");
        assert!(err.message().contains(why), "{err:?}");
    }
    let err = apply(
        &env,
        "abn-1",
        MerchantBankCard,
        Some(("ICBC_DEBIT", "", "")),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::InvalidArgument);
    let err = apply(&env, "nope-1", MerchantBankCard, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::NotFound);
    let err = apply(&env, "abn-1", pb::AbnormalRefundTarget::Unspecified, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::MissingParameter);
    assert_eq!(wechat_status(&env, "abn-1").await, "ABNORMAL");
    // WeChat does not answer: nothing changes here, but WeChat is asked soon, not in an hour.
    set_faults(
        &env,
        json!({ "http_status": 503, "times": 1, "path_prefix": "/v3/refund/domestic/refunds" }),
    )
    .await;
    let err = apply(&env, "abn-1", MerchantBankCard, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::WechatUnavailable);
    let row = refunds::store::find(env.pay.database(), "abn-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state(), Some(RefundState::Abnormal));
    assert!(row.next_check_at <= env.clock.now() + 1, "{row:?}");
    assert_eq!(wechat_status(&env, "abn-1").await, "ABNORMAL");

    let rerouted = apply(
        &env,
        "abn-1",
        UserBankCard,
        Some(("ICBC_DEBIT", "6222020202020202", "张三")),
    )
    .await
    .unwrap();
    assert_eq!(rerouted.state, pb::RefundState::RefundProcessing as i32);
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (0, 500)
    );
    let settled = wait_refund(&env, "abn-1", pb::RefundState::RefundSuccess).await;
    assert_eq!(settled.received_account, "工商银行借记卡0202");
    // Only an abnormal refund is re-routed.
    let err = apply(&env, "abn-1", MerchantBankCard, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), ErrorReason::OrderState);

    apply(&env, "abn-2", MerchantBankCard, None).await.unwrap();
    let settled = wait_refund(&env, "abn-2", pb::RefundState::RefundSuccess).await;
    assert_eq!(settled.received_account, "商户结算银行账户");
    assert_eq!(
        refunded(&env.get(&order.order_no, 0).await.unwrap()),
        (500, 0)
    );
    let at = sandbox_get(&env, "/sandbox/v3/refunds/abn-2").await;
    assert_eq!(
        (at["status"].as_str(), at["received_account"].as_str()),
        (Some("SUCCESS"), Some("商户结算银行账户"))
    );
}

/// v2 has no 发起异常退款: FAILED_PRECONDITION naming the merchant platform, nothing changed.
async fn v2_abnormal_refunds_are_rerouted_in_the_merchant_platform(backend: Backend) {
    let env = Env::refunding(backend).await;
    set_faults(
        &env,
        json!({ "refund_change": true, "path_prefix": "/secapi/" }),
    )
    .await;
    let order = paid_order(&env, 37).await;
    refund(&env, &order.order_no, 300, "abn-v2").await.unwrap();
    wait_refund(&env, "abn-v2", pb::RefundState::RefundAbnormal).await;
    let err = apply(
        &env,
        "abn-v2",
        pb::AbnormalRefundTarget::MerchantBankCard,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("merchant platform"), "{err:?}");
    assert_eq!(
        get_refund(&env, "abn-v2").await.state,
        pb::RefundState::RefundAbnormal as i32
    );
}

mod issue_23_rest {
    use super::*;

    on_both_backends_and_apis!(
        api = crate::helpers::Api;
        a_dead_replicas_claim_lasts_only_the_lease,
        the_refund_reconciler_reads_its_clock_per_refund,
        a_refund_keeps_the_notify_url_it_was_created_with,
    );

    on_both_backends!(
        refunds_made_outside_wxmp_are_recorded_and_counted,
        an_order_refunded_in_twelve_parts_outside_is_read_past_the_first_page,
        abnormal_refunds_are_rerouted_on_v3,
        v2_abnormal_refunds_are_rerouted_in_the_merchant_platform,
    );
}
