//! Shipping (issue 25) against the real sandbox as WeChat: virtual goods uploaded once paid,
//! 10060001 for a while then success, 45009 backing off, an upload surviving a crash between
//! the payment and it, one modification, and the settlement pushes moving the state once
//! across two replicas on one database.
//!
//! The access_token comes from a stand-in for auth-service that asks the sandbox's
//! `/cgi-bin/stable_token` (auth-service's own behaviour is tested in its crate).

use std::time::Duration;

use pay_service::{
    Payments,
    events::{self, EventKind},
    shipping::worker::Uploader,
};
use sandbox::{DEV_APP_ID, DEV_APP_SECRET};
use tonic::{Request, Response, Status, service::Routes};
use wxmp_proto::{
    auth::v1::{self as auth, auth_service_server::AuthService},
    pay::v1::{self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target},
};

use crate::helpers::{Backend, Env, eventually, on_both_backends, principal, reason};

/// auth-service's GetAccessToken, played by asking the sandbox for the app's stable token.
struct TokenOnly {
    wechat: wechat::WechatClient,
}

#[tonic::async_trait]
impl AuthService for TokenOnly {
    async fn login(
        &self,
        _: Request<auth::LoginRequest>,
    ) -> Result<Response<auth::LoginResponse>, Status> {
        Err(Status::unimplemented("token only"))
    }
    async fn authenticate(
        &self,
        _: Request<auth::AuthenticateRequest>,
    ) -> Result<Response<auth::AuthenticateResponse>, Status> {
        Err(Status::unimplemented("token only"))
    }
    async fn logout(
        &self,
        _: Request<auth::LogoutRequest>,
    ) -> Result<Response<auth::LogoutResponse>, Status> {
        Err(Status::unimplemented("token only"))
    }
    async fn get_session_key(
        &self,
        _: Request<auth::GetSessionKeyRequest>,
    ) -> Result<Response<auth::GetSessionKeyResponse>, Status> {
        Err(Status::unimplemented("token only"))
    }
    async fn authenticate_with_session_key(
        &self,
        _: Request<auth::AuthenticateRequest>,
    ) -> Result<Response<auth::AuthenticateWithSessionKeyResponse>, Status> {
        Err(Status::unimplemented("token only"))
    }
    async fn get_access_token(
        &self,
        req: Request<auth::GetAccessTokenRequest>,
    ) -> Result<Response<auth::GetAccessTokenResponse>, Status> {
        let r = req.into_inner();
        let t = self
            .wechat
            .stable_token(DEV_APP_ID, DEV_APP_SECRET, r.force_refresh)
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

/// An uploader of `env`'s config, its tokens from the sandbox.
async fn uploader(env: &Env) -> Uploader {
    let wechat = wechat::WechatClient::new(wechat::WechatConfig {
        api_base: env.sandbox.base_url.clone(),
        ..wechat::WechatConfig::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = Routes::new(
        wxmp_proto::auth::v1::auth_service_server::AuthServiceServer::new(TokenOnly { wechat }),
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
    let mut config = env.config.clone();
    config.paid_message.auth_service_url = url;
    config.wechat = service_kit::settings::WechatApi::new(&env.sandbox.base_url);
    Uploader::from_config(&config)
        .unwrap()
        .expect("an uploader")
}

/// A stack whose "vip" product is virtual; uploads retried after 2 s (doubling); the sandbox answers
/// 10060001 for `not_found_secs` after a payment.
async fn env(backend: Backend, not_found_secs: u64) -> Env {
    let mut sandbox = sandbox::Config::dev();
    sandbox.shipping.shipping_not_found_secs = not_found_secs;
    Env::with_sandbox(backend, sandbox, false, |c| {
        c.shipping.virtual_products = "vip".into();
        c.shipping.shipping_retry_ms = 2000;
        c.shipping.shipping_quota_backoff_secs = 3600;
    })
    .await
}

/// Buys `product` as user 1 and waits until the order is PAID.
async fn paid_order(env: &Env, product: &str) -> pb::Order {
    let prepared = env
        .prepare(&principal(1), Target::ProductId(product.into()))
        .await
        .unwrap();
    env.sandbox_pay(&prepared, None).await;
    let no = prepared.order.unwrap().order_no;
    eventually(|| async { env.get(&no, 1).await.unwrap().state == pb::OrderState::Paid as i32 })
        .await;
    env.get(&no, 1).await.unwrap()
}

/// [`paid_order`] of a virtual product, once the PAID hook (which runs right after the
/// payment's commit) has queued its upload.
async fn paid_and_queued(env: &Env, product: &str) -> pb::Order {
    let order = paid_order(env, product).await;
    let no = order.order_no.clone();
    eventually(|| async {
        shipping_state(&env.get(&no, 1).await.unwrap()) == pb::ShippingState::PendingUpload
    })
    .await;
    env.get(&no, 1).await.unwrap()
}

fn shipping_state(order: &pb::Order) -> pb::ShippingState {
    order
        .shipping
        .as_ref()
        .and_then(|s| pb::ShippingState::try_from(s.state).ok())
        .unwrap_or(pb::ShippingState::Unspecified)
}

/// The sandbox's shipping view of the payment.
async fn wechat_shipping(env: &Env, transaction_id: &str) -> (serde_json::Value, u64) {
    let all: serde_json::Value = env
        .http
        .get(env.sandbox.url("/sandbox/shipping"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order = all["orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["transaction_id"] == transaction_id)
        .cloned()
        .unwrap_or_default();
    let calls = all["calls"]["upload_shipping_info"].as_u64().unwrap_or(0);
    (order, calls)
}

/// The outbox events of `kind` for `order_no`.
async fn events_of(pay: &Payments, order_no: &str, kind: EventKind) -> usize {
    events::after(pay.database(), 0, &[kind], 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.order_no == order_no)
        .count()
}

/// Runs upload rounds until the order is SHIPPED (or panics after a while).
async fn until_shipped(env: &Env, up: &Uploader, order_no: &str) -> pb::Order {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        up.run_once(&env.pay).await.unwrap();
        let order = env.get(order_no, 1).await.unwrap();
        if shipping_state(&order) == pb::ShippingState::Shipped {
            return order;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not shipped: {:?}",
            order.shipping
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn virtual_goods_are_uploaded_once_paid_after_10060001(backend: Backend) {
    let env = env(backend, 3).await;
    let up = uploader(&env).await;
    let order = paid_order(&env, "vip").await;
    // The PAID hook queues the upload (right after the payment's commit): no Ship call for a
    // virtual product.
    let no = order.order_no.clone();
    eventually(|| async {
        shipping_state(&env.get(&no, 1).await.unwrap()) == pb::ShippingState::PendingUpload
    })
    .await;
    // Right after the payment WeChat does not know it yet.
    assert_eq!(up.run_once(&env.pay).await.unwrap(), 1);
    let order = env.get(&order.order_no, 1).await.unwrap();
    let s = order.shipping.clone().unwrap();
    assert_eq!(shipping_state(&order), pb::ShippingState::PendingUpload);
    assert!(s.last_error.contains("10060001"), "{s:?}");
    assert_eq!(s.upload_attempts, 1);
    assert!(s.next_attempt_at > 0);
    // Backed off: nothing is due at once.
    assert_eq!(up.run_once(&env.pay).await.unwrap(), 0);
    let order = until_shipped(&env, &up, &order.order_no).await;
    let s = order.shipping.clone().unwrap();
    assert!(s.upload_attempts >= 2, "{s:?}");
    assert_eq!((s.uploads, s.logistics_type), (1, 3));
    assert!(s.shipped_at > 0);
    let (at_wechat, calls) = wechat_shipping(&env, &order.transaction_id).await;
    assert_eq!(at_wechat["order_state"], 2);
    assert_eq!(at_wechat["uploads"].as_array().unwrap().len(), 1);
    assert_eq!(at_wechat["uploads"][0]["logistics_type"], 3);
    assert!(calls >= 2);
    // More rounds upload nothing more.
    up.run_once(&env.pay).await.unwrap();
    assert_eq!(wechat_shipping(&env, &order.transaction_id).await.1, calls);
    assert_eq!(
        events_of(&env.pay, &order.order_no, EventKind::OrderShipped).await,
        1
    );
    // A product that is not virtual waits for the shop's Ship.
    let coins = paid_order(&env, "coins").await;
    assert!(coins.shipping.is_none());
}

async fn over_quota_45009_backs_off(backend: Backend) {
    let env = env(backend, 0).await;
    let up = uploader(&env).await;
    env.http
        .post(env.sandbox.url("/sandbox/shipping/fault"))
        .json(&serde_json::json!({"errcode": 45009}))
        .send()
        .await
        .unwrap();
    let order = paid_and_queued(&env, "vip").await;
    assert_eq!(up.run_once(&env.pay).await.unwrap(), 1);
    let s = env.get(&order.order_no, 1).await.unwrap().shipping.unwrap();
    assert!(s.last_error.contains("45009"), "{s:?}");
    // PAY_SHIPPING_QUOTA_BACKOFF_SECS (3600), not the short retry.
    assert!(s.next_attempt_at >= env.clock.now() + 3500, "{s:?}");
    let (_, calls) = wechat_shipping(&env, &order.transaction_id).await;
    assert_eq!(up.run_once(&env.pay).await.unwrap(), 0);
    assert_eq!(wechat_shipping(&env, &order.transaction_id).await.1, calls);
    // The quota is back and the hour has passed: it goes through.
    env.http
        .post(env.sandbox.url("/sandbox/shipping/fault"))
        .json(&serde_json::json!({"errcode": null}))
        .send()
        .await
        .unwrap();
    env.clock.advance(3601);
    let order = until_shipped(&env, &up, &order.order_no).await;
    assert_eq!(order.shipping.unwrap().uploads, 1);
}

/// WeChat takes the first upload but its answer is lost (a 504, or a replica dying before it
/// records the answer): the retry finds the upload at WeChat (`get_order` says 已发货) and
/// marks the order SHIPPED without sending it again, so the order keeps its one modification.
/// Failed before: the retry uploaded again, which WeChat counts as the modification.
async fn a_lost_upload_answer_does_not_spend_the_modification(backend: Backend) {
    let env = env(backend, 0).await;
    let up = uploader(&env).await;
    env.http
        .post(env.sandbox.url("/sandbox/shipping/fault"))
        .json(&serde_json::json!({ "answers_lost": 1 }))
        .send()
        .await
        .unwrap();
    let order = paid_and_queued(&env, "vip").await;
    assert_eq!(up.run_once(&env.pay).await.unwrap(), 1);
    let pending = env.get(&order.order_no, 1).await.unwrap();
    assert_eq!(shipping_state(&pending), pb::ShippingState::PendingUpload);
    let (at_wechat, calls) = wechat_shipping(&env, &order.transaction_id).await;
    assert_eq!((at_wechat["order_state"].as_i64(), calls), (Some(2), 1));

    let order = until_shipped(&env, &up, &order.order_no).await;
    let s = order.shipping.clone().unwrap();
    assert_eq!(s.uploads, 1, "{s:?}");
    let (at_wechat, calls) = wechat_shipping(&env, &order.transaction_id).await;
    assert_eq!(calls, 1, "the upload was not sent again");
    assert_eq!(at_wechat["uploads"].as_array().unwrap().len(), 1);
    assert_eq!(
        events_of(&env.pay, &order.order_no, EventKind::OrderShipped).await,
        1
    );
    // The modification is still there to use.
    let modified = ship(&env, express(&order.order_no, "SF0000000001"))
        .await
        .unwrap();
    assert_eq!(shipping_state(&modified), pb::ShippingState::PendingUpload);
    let order = until_shipped(&env, &up, &order.order_no).await;
    assert_eq!(order.shipping.unwrap().uploads, 2);
    let (at_wechat, _) = wechat_shipping(&env, &order.transaction_id).await;
    assert_eq!(at_wechat["uploads"].as_array().unwrap().len(), 2);
}

async fn an_upload_survives_a_crash_between_payment_and_upload(backend: Backend) {
    let env = env(backend, 0).await;
    // The payment is applied by a replica that "dies" before queuing the upload: one whose
    // config has no virtual product (its PAID hook queues nothing), as if killed right after
    // the payment's commit.
    let crashed = env.replica_with(|c| c.shipping.virtual_products.clear());
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    // The notify reaches the "crashed" replica only.
    env.receiver
        .forward
        .store(false, std::sync::atomic::Ordering::SeqCst);
    env.sandbox_pay(&prepared, None).await;
    let notice = env.captured_notice(1).await;
    let reply = crate::helpers::deliver_to(&crashed, &notice).await;
    assert!(reply.accepted, "{reply:?}");
    let order = env.get(&no, 1).await.unwrap();
    assert_eq!(order.state, pb::OrderState::Paid as i32);
    assert!(order.shipping.is_none(), "nothing was queued");
    // The restarted replicas' scans find it; two of them racing queue it once.
    let (a, b) = (uploader(&env).await, uploader(&env).await);
    let replica = env.replica();
    let (made_a, made_b) = tokio::join!(a.scan(&env.pay), b.scan(&replica));
    assert_eq!(made_a.unwrap() + made_b.unwrap(), 1);
    // A replica claims it and dies mid-upload (its lease is never released) ...
    let db = env.pay.database();
    let held = pay_service::shipping::store::claim(db, &no, env.clock.now(), 60, "dead-replica")
        .await
        .unwrap();
    assert!(held.is_some());
    assert_eq!(
        a.run_once(&env.pay).await.unwrap(),
        0,
        "leased to the dead replica"
    );
    // ... and once its lease has run out, another replica uploads it, once.
    env.clock.advance(61);
    let order = until_shipped(&env, &b, &no).await;
    let (at_wechat, _) = wechat_shipping(&env, &order.transaction_id).await;
    assert_eq!(at_wechat["uploads"].as_array().unwrap().len(), 1);
    assert_eq!(events_of(&env.pay, &no, EventKind::OrderShipped).await, 1);
}

fn express(order_no: &str, tracking: &str) -> pb::ShipRequest {
    pb::ShipRequest {
        order_no: order_no.into(),
        logistics_type: 1,
        delivery_mode: 1,
        shipping_list: vec![pb::Parcel {
            tracking_no: tracking.into(),
            express_company: "ZTO".into(),
            item_desc: "100 coins gift box".into(),
            ..Default::default()
        }],
        is_all_delivered: false,
    }
}

async fn ship(env: &Env, req: pb::ShipRequest) -> Result<pb::Order, Status> {
    PayService::ship(&env.pay, Request::new(req))
        .await
        .map(|r| r.into_inner().order.unwrap())
}

async fn shipping_may_be_modified_once(backend: Backend) {
    let env = env(backend, 0).await;
    let up = uploader(&env).await;
    let order = paid_order(&env, "coins").await;
    let no = order.order_no.clone();
    // WeChat's rules are checked before anything is stored.
    let mut bad = express(&no, "");
    bad.shipping_list[0].tracking_no.clear();
    assert_eq!(
        reason(&ship(&env, bad).await.unwrap_err()),
        service_kit::ErrorReason::InvalidArgument
    );
    assert!(env.get(&no, 1).await.unwrap().shipping.is_none());

    let shipped = ship(&env, express(&no, "ZTO0001")).await.unwrap();
    assert_eq!(shipping_state(&shipped), pb::ShippingState::PendingUpload);
    // Still uploading: not yet a modification.
    assert_eq!(
        reason(&ship(&env, express(&no, "ZTO0002")).await.unwrap_err()),
        service_kit::ErrorReason::OrderState
    );
    until_shipped(&env, &up, &no).await;
    // The one modification.
    let modified = ship(&env, express(&no, "ZTO0003")).await.unwrap();
    assert_eq!(shipping_state(&modified), pb::ShippingState::PendingUpload);
    let order = until_shipped(&env, &up, &no).await;
    assert_eq!(order.shipping.unwrap().uploads, 2);
    let (at_wechat, _) = wechat_shipping(&env, &order.transaction_id).await;
    let uploads = at_wechat["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[1]["shipping_list"][0]["tracking_no"], "ZTO0003");
    // No second modification.
    assert_eq!(
        reason(&ship(&env, express(&no, "ZTO0004")).await.unwrap_err()),
        service_kit::ErrorReason::OrderState
    );
    assert_eq!(events_of(&env.pay, &no, EventKind::OrderShipped).await, 2);
    // An unpaid order does not ship.
    let unpaid = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap()
        .order
        .unwrap();
    assert_eq!(
        reason(
            &ship(&env, express(&unpaid.order_no, "X"))
                .await
                .unwrap_err()
        ),
        service_kit::ErrorReason::OrderState
    );
}

fn push(order: &pb::Order, fields: serde_json::Value, create_time: i64) -> (String, String) {
    let mut message = serde_json::json!({
        "ToUserName": "gh_1", "FromUserName": "o_sys", "CreateTime": create_time,
        "MsgType": "event", "Event": "trade_manage_order_settlement",
        "transaction_id": order.transaction_id, "merchant_trade_no": order.order_no,
    });
    for (k, v) in fields.as_object().unwrap() {
        message[k] = v.clone();
    }
    let key = format!(
        "o_sys|{create_time}|trade_manage_order_settlement|{}",
        order.transaction_id
    );
    (message.to_string(), key)
}

async fn handle(pay: &Payments, (message, key): &(String, String)) -> String {
    pay.handle_message_push(DEV_APP_ID, "trade_manage_order_settlement", message, key)
        .await
        .unwrap()
        .to_owned()
}

async fn settlement_pushes_move_the_state_once_across_replicas(backend: Backend) {
    let env = env(backend, 0).await;
    let up = uploader(&env).await;
    let order = paid_order(&env, "vip").await;
    let order = until_shipped(&env, &up, &order.order_no).await;
    let other = env.replica();
    let t = env.clock.now();
    let received = push(&order, serde_json::json!({"confirm_receive_time": t}), t);
    // The same push (WeChat's retries) to both replicas at once: one applies it.
    let (a, b, c) = tokio::join!(
        handle(&env.pay, &received),
        handle(&other, &received),
        handle(&other, &received)
    );
    let mut verdicts = vec![a, b, c];
    verdicts.sort();
    assert_eq!(verdicts, ["duplicate", "duplicate", "handled"]);
    let now = env.get(&order.order_no, 1).await.unwrap();
    assert_eq!(shipping_state(&now), pb::ShippingState::Received);
    assert_eq!(now.shipping.as_ref().unwrap().received_at, t);
    // Settlement, as XML would carry it (strings), to both replicas.
    let settled = push(
        &order,
        serde_json::json!({"confirm_receive_time": t.to_string(), "settlement_time": (t + 5).to_string(), "confirm_receive_method": "2"}),
        t + 5,
    );
    let (a, b) = tokio::join!(handle(&env.pay, &settled), handle(&other, &settled));
    let mut verdicts = vec![a, b];
    verdicts.sort();
    assert_eq!(verdicts, ["duplicate", "handled"]);
    let now = env.get(&order.order_no, 1).await.unwrap();
    assert_eq!(shipping_state(&now), pb::ShippingState::Settled);
    assert_eq!(now.shipping.as_ref().unwrap().settled_at, t + 5);
    // A late receipt push (another key) changes nothing.
    let late = push(
        &order,
        serde_json::json!({"confirm_receive_time": t}),
        t + 9,
    );
    assert_eq!(handle(&other, &late).await, "recorded");
    assert_eq!(
        events_of(&env.pay, &order.order_no, EventKind::OrderReceived).await,
        1
    );
    assert_eq!(
        events_of(&env.pay, &order.order_no, EventKind::OrderSettled).await,
        1
    );
    // The payment state is untouched: shipping sits beside it.
    assert_eq!(now.state, pb::OrderState::Paid as i32);
    // Unknown orders and unknown events are recorded, never an error.
    let mut stranger = order.clone();
    stranger.order_no = "NOSUCHORDER0000000000000000".into();
    stranger.transaction_id = "4200009999".into();
    let unknown = push(&stranger, serde_json::json!({"confirm_receive_time": t}), t);
    assert_eq!(handle(&env.pay, &unknown).await, "unknown_order");
    let v = env
        .pay
        .handle_message_push(DEV_APP_ID, "xpay_some_future_event", "{}", "k-future")
        .await
        .unwrap();
    assert_eq!(v, "unknown_event");
}

on_both_backends!(
    virtual_goods_are_uploaded_once_paid_after_10060001,
    over_quota_45009_backs_off,
    an_upload_survives_a_crash_between_payment_and_upload,
    a_lost_upload_answer_does_not_spend_the_modification,
    shipping_may_be_modified_once,
    settlement_pushes_move_the_state_once_across_replicas,
);

/// A pay-service process SIGKILLed right after it applied a payment (its PAID hook had queued
/// the virtual goods' upload; nothing was sent to WeChat yet): the next process uploads it,
/// once. The test runs itself again as a child process (the test binary, this test alone) that
/// applies the captured notify on the shared database and then `kill -9`s itself.
async fn sigkill_between_payment_and_upload(backend: Backend, test: &str) {
    const DB: &str = "WXMP_SHIP_CHILD_DB";
    const NOTICE: &str = "WXMP_SHIP_CHILD_NOTICE";
    if let (Ok(db), Ok(notice)) = (std::env::var(DB), std::env::var(NOTICE)) {
        // The child: a pay-service core of its own on the parent's database.
        let sandbox = sandbox::spawn(sandbox::Config::dev()).await.unwrap();
        let mut config = crate::helpers::config(db, &sandbox);
        config.shipping.virtual_products = "vip".into();
        let pay = pay_service::connect(&config, pay_service::Clock::system())
            .await
            .unwrap();
        let body = std::fs::read(notice).unwrap();
        let reply = crate::helpers::deliver_to(
            &pay,
            &crate::helpers::Notice {
                body,
                headers: None,
            },
        )
        .await;
        assert!(reply.accepted, "{reply:?}");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        // Only if `kill` could not run: the parent then sees SIGABRT and fails.
        std::process::abort();
    }
    let env = env(backend, 0).await;
    env.receiver
        .forward
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let prepared = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    let no = prepared.order.clone().unwrap().order_no;
    env.sandbox_pay(&prepared, None).await;
    let notice = env.captured_notice(1).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &notice.body).unwrap();
    let test = test.split_once("::").map_or(test, |(_, path)| path);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(DB, env.config.database_url.expose())
        .env(NOTICE, file.path())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the child was to die by SIGKILL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The child paid the order and queued the upload, and died before sending it.
    let order = env.get(&no, 1).await.unwrap();
    assert_eq!(order.state, pb::OrderState::Paid as i32);
    let s = order.shipping.clone().unwrap();
    assert_eq!(
        (shipping_state(&order), s.upload_attempts),
        (pb::ShippingState::PendingUpload, 0)
    );
    assert_eq!(wechat_shipping(&env, &order.transaction_id).await.1, 0);
    // The next process uploads it, once.
    let up = uploader(&env).await;
    let order = until_shipped(&env, &up, &no).await;
    let (at_wechat, calls) = wechat_shipping(&env, &order.transaction_id).await;
    assert_eq!(at_wechat["uploads"].as_array().unwrap().len(), 1);
    assert_eq!(calls, 1);
    assert_eq!(events_of(&env.pay, &no, EventKind::OrderShipped).await, 1);
}

mod sigkill_between_payment_and_upload {
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::sigkill_between_payment_and_upload(
            Backend::Postgres,
            concat!(module_path!(), "::postgres"),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::sigkill_between_payment_and_upload(
            Backend::Sqlite,
            concat!(module_path!(), "::sqlite"),
        )
        .await;
    }
}
