//! Virtual payment (issue 26): PrepareJsapiPayment of a virtual-payment product answers the
//! `requestVirtualPayment` parameters from the catalog price, signed with the AppKey and the
//! session_key auth-service holds; the `xpay_goods_deliver_notify` push pays the order once,
//! retried and handled by two replicas at once; pushes that do not match the order change
//! nothing.
//!
//! The session_key comes from a stand-in for auth-service's `GetSessionKey` (auth-service's own
//! behaviour is tested in its crate).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use pay_service::events::{self, EventKind};
use sandbox::{
    DEV_APP_ID, DEV_APP_SECRET,
    xpay::{DEV_XPAY_OFFER_ID, DEV_XPAY_SANDBOX_APP_KEY},
};
use tonic::{Request, Response, Status, service::Routes};
use wxmp_proto::{
    auth::v1::{self as auth, auth_service_server::AuthService},
    pay::v1::{self as pb, prepare_jsapi_payment_request::Target},
};

use crate::helpers::{Backend, Env, on_both_backends, principal};

pub(crate) const APP_KEY: &str = DEV_XPAY_SANDBOX_APP_KEY;
pub(crate) const SESSION_KEY: &str = "HyVFkGl5F5OQWJZZaNzBBg==";

/// GetSessionKey (the keys given; none for anyone else) and GetAccessToken (the sandbox's
/// stable token, once a sandbox is set).
#[derive(Clone, Default)]
pub(crate) struct Stand {
    pub(crate) keys: Arc<Mutex<HashMap<String, String>>>,
    pub(crate) wechat: Arc<Mutex<Option<wechat::WechatClient>>>,
}

struct SessionKeysOnly {
    stand: Stand,
}

#[tonic::async_trait]
impl AuthService for SessionKeysOnly {
    async fn login(
        &self,
        _: Request<auth::LoginRequest>,
    ) -> Result<Response<auth::LoginResponse>, Status> {
        Err(Status::unimplemented("session keys only"))
    }
    async fn authenticate(
        &self,
        _: Request<auth::AuthenticateRequest>,
    ) -> Result<Response<auth::AuthenticateResponse>, Status> {
        Err(Status::unimplemented("session keys only"))
    }
    async fn logout(
        &self,
        _: Request<auth::LogoutRequest>,
    ) -> Result<Response<auth::LogoutResponse>, Status> {
        Err(Status::unimplemented("session keys only"))
    }
    async fn get_session_key(
        &self,
        req: Request<auth::GetSessionKeyRequest>,
    ) -> Result<Response<auth::GetSessionKeyResponse>, Status> {
        let r = req.into_inner();
        let key = self.stand.keys.lock().unwrap().get(&r.openid).cloned();
        match key {
            Some(k) if r.app_id == DEV_APP_ID => Ok(Response::new(auth::GetSessionKeyResponse {
                session_key: k,
            })),
            _ => Err(Status::not_found("no session")),
        }
    }
    async fn authenticate_with_session_key(
        &self,
        _: Request<auth::AuthenticateRequest>,
    ) -> Result<Response<auth::AuthenticateWithSessionKeyResponse>, Status> {
        Err(Status::unimplemented("session keys only"))
    }
    async fn get_access_token(
        &self,
        _: Request<auth::GetAccessTokenRequest>,
    ) -> Result<Response<auth::GetAccessTokenResponse>, Status> {
        let wechat = self.stand.wechat.lock().unwrap().clone();
        let Some(wechat) = wechat else {
            return Err(Status::unavailable("no sandbox"));
        };
        let t = wechat
            .stable_token(DEV_APP_ID, DEV_APP_SECRET, false)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(auth::GetAccessTokenResponse {
            access_token: t.access_token,
            expires_in: t.expires_in,
            generation: 1,
            app_id: DEV_APP_ID.into(),
        }))
    }
}

pub(crate) async fn auth_url(stand: Stand) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = Routes::new(
        wxmp_proto::auth::v1::auth_service_server::AuthServiceServer::new(SessionKeysOnly {
            stand,
        }),
    );
    tokio::spawn(async move {
        let _ = service_kit::grpc::serve(
            listener,
            routes,
            &["wxmp.auth.v1.AuthService"],
            service_kit::Shutdown::new(),
        )
        .await;
    });
    url
}

/// A stack selling "vip" (990 fen) as the xpay product `vip_month`, in WeChat's sandbox env.
async fn env(backend: Backend) -> Env {
    let stand = Stand::default();
    stand
        .keys
        .lock()
        .unwrap()
        .insert(principal(1).openid, SESSION_KEY.to_owned());
    env_with(backend, stand).await
}

pub(crate) async fn env_with(backend: Backend, stand: Stand) -> Env {
    let url = auth_url(stand).await;
    Env::with(backend, move |c| {
        c.xpay.xpay_products = "vip:vip_month".into();
        c.xpay.xpay_offer_id = DEV_XPAY_OFFER_ID.into();
        c.xpay.xpay_sandbox_app_key = service_kit::Secret::new(APP_KEY);
        c.xpay.xpay_env = 1;
        c.paid_message.auth_service_url = url;
    })
    .await
}

pub(crate) async fn paid_events(env: &Env, order_no: &str) -> usize {
    events::after(env.pay.database(), 0, &[EventKind::OrderPaid], 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.order_no == order_no)
        .count()
}

/// The delivery push of `order_no` as WeChat sends it (JSON mode, after decryption).
fn deliver(order_no: &str, openid: &str, price: i64) -> String {
    serde_json::json!({
        "ToUserName": "gh_sandbox", "FromUserName": openid, "CreateTime": 1_765_000_000,
        "MsgType": "event", "Event": "xpay_goods_deliver_notify",
        "OpenId": openid, "OutTradeNo": order_no, "Env": 1,
        "WeChatPayInfo": {"MchOrderNo": "mch-1", "TransactionId": "4200000xpay01", "PaidTime": 1_765_000_000},
        "GoodsInfo": {"ProductId": "vip_month", "Quantity": 1, "OrigPrice": price, "ActualPrice": price, "Attach": ""}
    })
    .to_string()
}

pub(crate) async fn prepare_vip(env: &Env) -> (pb::Order, pb::VirtualPaymentParams) {
    let r = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    assert!(r.params.is_none(), "no JSAPI params for a virtual product");
    (r.order.unwrap(), r.virtual_payment.unwrap())
}

async fn prepare_answers_request_virtual_payment(backend: Backend) {
    let env = env(backend).await;
    let (order, p) = prepare_vip(&env).await;
    assert_eq!(order.state, pb::OrderState::Paying as i32);
    assert_eq!(order.amount_fen, 990);
    let sign_data: serde_json::Value = serde_json::from_str(&p.sign_data).unwrap();
    assert_eq!(
        sign_data,
        serde_json::json!({"offerId": DEV_XPAY_OFFER_ID, "buyQuantity": 1, "env": 1,
            "currencyType": "CNY", "platform": "android", "productId": "vip_month",
            "goodsPrice": 990, "outTradeNo": order.order_no, "attach": ""})
    );
    assert_eq!(p.mode, "short_series_goods");
    assert!(wechat::xpay::verify_pay_sig_for_request(
        APP_KEY,
        &p.sign_data,
        &p.pay_sig
    ));
    assert!(wechat::xpay::verify_user_signature(
        SESSION_KEY,
        &p.sign_data,
        &p.signature
    ));
    // JSAPI never pays a virtual order; preparing it again answers the same signData.
    let again = env
        .prepare(&principal(1), Target::OrderNo(order.order_no.clone()))
        .await
        .unwrap();
    assert_eq!(again.virtual_payment.unwrap().sign_data, p.sign_data);
    let jsapi = env
        .pay
        .prepare_jsapi_payment(
            &pay_service::orders::Payer {
                user_id: 1,
                app_id: DEV_APP_ID.into(),
                openid: principal(1).openid,
            },
            pay_service::orders::PayTarget::Order(order.order_no.clone()),
            "203.0.113.7",
            "",
        )
        .await;
    assert!(jsapi.is_err());
    // A user without a live session: refused, and no order is created.
    let e = env
        .prepare_keyed(&principal(2), Target::ProductId("vip".into()), "k2")
        .await
        .unwrap_err();
    assert!(e.message().contains("log in again"), "{e:?}");
    assert!(
        pay_service::orders::store::find_by_idempotency_key(env.pay.database(), 2, "k2")
            .await
            .unwrap()
            .is_none()
    );
    // The session_key never appears in the answer.
    assert!(!format!("{p:?}").contains(SESSION_KEY));
}
on_both_backends!(prepare_answers_request_virtual_payment);

/// PrepareVirtualPayment, PrepareJsapiPayment's sibling for a shop service: the same order
/// and parameters for a virtual product; anything else refused with nothing created.
async fn prepare_virtual_payment_is_for_virtual_products_only(backend: Backend) {
    use pb::pay_service_server::PayService;
    let env = env(backend).await;
    let call = |target: Target, key: &str| {
        PayService::prepare_virtual_payment(
            &env.pay,
            Request::new(pb::PrepareJsapiPaymentRequest {
                principal: Some(principal(1)),
                target: Some(target),
                client_ip: "203.0.113.7".into(),
                idempotency_key: key.into(),
            }),
        )
    };
    let answer = call(Target::ProductId("vip".into()), "sibling-1")
        .await
        .unwrap()
        .into_inner();
    let (order, params) = (answer.order.unwrap(), answer.params.unwrap());
    assert_eq!(
        (order.amount_fen, params.mode.as_str()),
        (990, "short_series_goods")
    );
    assert!(wechat::xpay::verify_pay_sig_for_request(
        APP_KEY,
        &params.sign_data,
        &params.pay_sig
    ));
    assert!(wechat::xpay::verify_user_signature(
        SESSION_KEY,
        &params.sign_data,
        &params.signature
    ));
    // The same order through the other door answers the same signData.
    let again = env
        .prepare(&principal(1), Target::OrderNo(order.order_no.clone()))
        .await
        .unwrap();
    assert_eq!(again.virtual_payment.unwrap().sign_data, params.sign_data);
    // A product sold through WeChat Pay: refused, no order.
    let refused = call(Target::ProductId("coins".into()), "sibling-2")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        pay_service::orders::store::find_by_idempotency_key(env.pay.database(), 1, "sibling-2")
            .await
            .unwrap()
            .is_none()
    );
    assert!(!format!("{params:?}").contains(SESSION_KEY));
}
on_both_backends!(prepare_virtual_payment_is_for_virtual_products_only);

async fn delivery_push_retried_and_on_two_replicas_pays_once(backend: Backend) {
    let env = env(backend).await;
    let (order, _) = prepare_vip(&env).await;
    let no = order.order_no.clone();
    let other = env.replica();
    let message = deliver(&no, &principal(1).openid, 990);
    let event = "xpay_goods_deliver_notify";
    // Three retries (each its own delivery, so no dedup key helps) sent to both replicas at once.
    let mut verdicts = Vec::new();
    for retry in 0..3 {
        let (ka, kb) = (format!("a{retry}"), format!("b{retry}"));
        let (a, b) = tokio::join!(
            env.pay
                .handle_message_push(DEV_APP_ID, event, &message, &ka),
            other.handle_message_push(DEV_APP_ID, event, &message, &kb),
        );
        verdicts.push(a.unwrap());
        verdicts.push(b.unwrap());
    }
    assert_eq!(
        verdicts.iter().filter(|v| **v == "handled").count(),
        1,
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts.iter().filter(|v| **v == "duplicate").count(),
        5,
        "{verdicts:?}"
    );
    let paid = env.get(&no, 1).await.unwrap();
    assert_eq!(paid.state, pb::OrderState::Paid as i32);
    assert_eq!(paid.transaction_id, "4200000xpay01");
    assert_eq!(paid_events(&env, &no).await, 1);
}
on_both_backends!(delivery_push_retried_and_on_two_replicas_pays_once);

async fn pushes_that_do_not_match_change_nothing(backend: Backend) {
    let env = env(backend).await;
    let (order, _) = prepare_vip(&env).await;
    let no = order.order_no.clone();
    let event = "xpay_goods_deliver_notify";
    let openid = principal(1).openid;
    let cases = [
        (deliver(&no, &openid, 1), "mismatch"),
        (deliver(&no, &principal(9).openid, 990), "mismatch"),
        (deliver("N-none", &openid, 990), "unknown_order"),
        (
            deliver(&no, &openid, 990).replace("\"Env\":1", "\"Env\":0"),
            "mismatch",
        ),
        ("[1]".to_owned(), "malformed"),
    ];
    for (i, (message, want)) in cases.iter().enumerate() {
        let verdict = env
            .pay
            .handle_message_push(DEV_APP_ID, event, message, &format!("k{i}"))
            .await
            .unwrap();
        assert_eq!(verdict, *want, "case {i}");
    }
    // From another app: not this order.
    let verdict = env
        .pay
        .handle_message_push("wxother", event, &deliver(&no, &openid, 990), "k-app")
        .await
        .unwrap();
    assert_eq!(verdict, "unknown_order");
    assert_eq!(
        env.get(&no, 1).await.unwrap().state,
        pb::OrderState::Paying as i32
    );
    assert_eq!(paid_events(&env, &no).await, 0);
}
on_both_backends!(pushes_that_do_not_match_change_nothing);

async fn a_lost_push_is_repaired_by_query_order_and_a_late_push_changes_nothing(backend: Backend) {
    let stand = Stand::default();
    let env = env_with(backend, stand.clone()).await;
    let base = env.sandbox.base_url.clone();
    *stand.wechat.lock().unwrap() = Some(
        wechat::WechatClient::new(wechat::WechatConfig {
            api_base: base.clone(),
            ..wechat::WechatConfig::default()
        })
        .unwrap(),
    );
    // The user logs in at the sandbox: the session_key it issued is the one auth-service holds.
    let openid = principal(1).openid;
    let code: serde_json::Value = env
        .http
        .post(env.sandbox.url("/sandbox/login-code"))
        .json(&serde_json::json!({"appid": DEV_APP_ID, "openid": openid}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session: serde_json::Value = env
        .http
        .get(env.sandbox.url("/sns/jscode2session"))
        .query(&[
            ("appid", DEV_APP_ID),
            ("secret", DEV_APP_SECRET),
            ("js_code", code["code"].as_str().unwrap()),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stand.keys.lock().unwrap().insert(
        openid.clone(),
        session["session_key"].as_str().unwrap().to_owned(),
    );
    let (order, p) = prepare_vip(&env).await;
    let no = order.order_no.clone();
    // The phone pays; the sandbox has no push URL here: the delivery push is lost.
    let paid: serde_json::Value = env
        .http
        .post(env.sandbox.url("/sandbox/xpay/pay"))
        .json(
            &serde_json::json!({"openid": openid, "mode": p.mode, "signData": p.sign_data,
            "paySig": p.pay_sig, "signature": p.signature}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["errcode"], 0, "{paid}");
    assert_eq!(
        env.get(&no, 1).await.unwrap().state,
        pb::OrderState::Paying as i32
    );
    // The reconciler asks query_order (through the sandbox's WeChat API base).
    let pay = env.replica_with(|c| {
        c.wechat = service_kit::settings::WechatApi::new(&base);
    });
    let report = pay.reconcile_once().await.unwrap();
    assert_eq!(report.paid, 1, "{report:?}");
    let repaired = env.get(&no, 1).await.unwrap();
    assert_eq!(repaired.state, pb::OrderState::Paid as i32);
    let wx_order_id = paid["wx_order_id"].as_str().unwrap();
    assert_eq!(repaired.transaction_id, wx_order_id);
    // The late push (the same WeChat transaction) changes nothing.
    let late = deliver(&no, &openid, 990).replace("4200000xpay01", wx_order_id);
    let verdict = pay
        .handle_message_push(DEV_APP_ID, "xpay_goods_deliver_notify", &late, "late")
        .await
        .unwrap();
    assert_eq!(verdict, "duplicate");
    assert_eq!(paid_events(&env, &no).await, 1);
    assert_eq!(pay.reconcile_once().await.unwrap().paid, 0);
}
on_both_backends!(a_lost_push_is_repaired_by_query_order_and_a_late_push_changes_nothing);

/// A stack whose auth stand-in holds the session_key the sandbox issued to principal(1) at a
/// real login, and answers the sandbox's access_token; `wechat` is a core whose WeChat API
/// base is the sandbox.
pub(crate) async fn logged_in(backend: Backend) -> (Env, pay_service::Payments) {
    let stand = Stand::default();
    log_in_at_sandbox(env_with(backend, stand.clone()).await, stand).await
}

/// [`logged_in`] for an `env` made with `stand` (e.g. the coin suite's catalog).
pub(crate) async fn log_in_at_sandbox(env: Env, stand: Stand) -> (Env, pay_service::Payments) {
    let base = env.sandbox.base_url.clone();
    *stand.wechat.lock().unwrap() = Some(
        wechat::WechatClient::new(wechat::WechatConfig {
            api_base: base.clone(),
            ..wechat::WechatConfig::default()
        })
        .unwrap(),
    );
    let openid = principal(1).openid;
    let code: serde_json::Value = env
        .http
        .post(env.sandbox.url("/sandbox/login-code"))
        .json(&serde_json::json!({"appid": DEV_APP_ID, "openid": openid}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session: serde_json::Value = env
        .http
        .get(env.sandbox.url("/sns/jscode2session"))
        .query(&[
            ("appid", DEV_APP_ID),
            ("secret", DEV_APP_SECRET),
            ("js_code", code["code"].as_str().unwrap()),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stand
        .keys
        .lock()
        .unwrap()
        .insert(openid, session["session_key"].as_str().unwrap().to_owned());
    let wechat = env.replica_with(|c| {
        c.wechat = service_kit::settings::WechatApi::new(&base);
    });
    (env, wechat)
}
