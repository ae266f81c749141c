//! Fake auth-, user- and pay-services (tonic servers on 127.0.0.1:0 that record what they
//! receive) and a real gateway in front of them.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use service_kit::{ErrorReason, Shutdown, reason::status};
use tonic::{Request, Response, Status, service::Routes};
use wxmp_proto::{
    auth::v1::{
        AuthenticateRequest, AuthenticateResponse, AuthenticateWithSessionKeyResponse,
        GetSessionKeyRequest, GetSessionKeyResponse, LoginRequest, LoginResponse, LogoutRequest,
        LogoutResponse, Principal,
        auth_service_server::{AuthService, AuthServiceServer},
    },
    pay::v1::{
        ApplyAbnormalRefundRequest, ApplyAbnormalRefundResponse, CloseOrderRequest,
        CloseOrderResponse, CreateOrderRequest, CreateOrderResponse, GetOrderRequest,
        GetOrderResponse, GetRefundRequest, GetRefundResponse, HandleMessagePushRequest,
        HandleMessagePushResponse, HandlePayNotifyRequest, HandlePayNotifyResponse,
        HandlePayNotifyV3Request, HandlePayNotifyV3Response, HandleRefundNotifyRequest,
        HandleRefundNotifyResponse, HandleRefundNotifyV3Request, HandleRefundNotifyV3Response,
        JsapiParams, ListProductsRequest, ListProductsResponse, ListRefundsRequest,
        ListRefundsResponse, Order, OrderState, PrepareJsapiPaymentRequest,
        PrepareJsapiPaymentResponse, Product, RefundRequest, RefundResponse, ShipRequest,
        ShipResponse,
        pay_service_server::{PayService, PayServiceServer},
        prepare_jsapi_payment_request::Target,
    },
    user::v1::{
        EnsureUserRequest, EnsureUserResponse, GetUserRequest, GetUserResponse,
        UpdatePhoneNumberRequest, UpdatePhoneNumberResponse, UpdateProfileRequest,
        UpdateProfileResponse, User,
        user_service_server::{UserService, UserServiceServer},
    },
};

pub const GOOD_TOKEN: &str = "tok-good";
pub const NOTIFY_REPLY: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code></xml>";

/// One call a fake received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    pub request_id: Option<String>,
    pub internal_token: Option<String>,
    /// Method-specific: the code, the client ip, the raw notify body, ...
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct Recorder(Arc<Mutex<Vec<Call>>>);

impl Recorder {
    fn record<T>(&self, method: &'static str, req: &Request<T>, detail: impl Into<String>) {
        let md = req.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        self.0.lock().unwrap().push(Call {
            method,
            request_id: get("x-request-id"),
            internal_token: get("x-wxmp-internal-token"),
            detail: detail.into(),
        });
    }

    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    pub fn of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }
}

fn principal(user_id: i64) -> Principal {
    Principal {
        user_id,
        app_id: "wxapp".into(),
        openid: format!("o-{user_id}"),
        unionid: "u-1".into(),
    }
}

fn user(id: i64) -> User {
    User {
        id,
        app_id: "wxapp".into(),
        openid: format!("o-{id}"),
        unionid: "u-1".into(),
        nickname: "Nick".into(),
        avatar_url: "https://a/1.png".into(),
        gender: 1,
        language: "zh_CN".into(),
        city: "Shenzhen".into(),
        province: "Guangdong".into(),
        country: "China".into(),
        phone: String::new(),
        phone_country_code: String::new(),
        phone_number: String::new(),
        created_at: 1,
        updated_at: 2,
    }
}

/// The fakes' sessions: the user id of a token, as auth-service would answer it.
fn user_of_token(token: &str) -> Result<i64, Status> {
    match token {
        GOOD_TOKEN => Ok(7),
        "tok-other" => Ok(8),
        _ => Err(status(ErrorReason::InvalidToken, "invalid token")),
    }
}

/// The caller of an update, as user-service resolves it: the token when one is sent (the
/// gateway's way), else the principal.
fn caller(token: &str, principal: Option<&Principal>) -> Result<i64, Status> {
    if token.is_empty() {
        Ok(principal.map_or(0, |p| p.user_id))
    } else {
        user_of_token(token)
    }
}

struct FakeAuth(Recorder);

#[tonic::async_trait]
impl AuthService for FakeAuth {
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let r = req.get_ref().clone();
        self.0
            .record("login", &req, format!("{}|{}", r.app_id, r.code));
        match r.code.as_str() {
            "good" => Ok(Response::new(LoginResponse {
                token: GOOD_TOKEN.into(),
                expires_in: 7200,
                principal: Some(principal(7)),
                new_user: true,
            })),
            "bad" => Err(status(ErrorReason::InvalidCode, "invalid code")),
            "wxdown" => Err(status(ErrorReason::WechatUnavailable, "wechat timed out")),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(Status::internal("too late"))
            }
            other => match other
                .strip_prefix("reason-")
                .and_then(ErrorReason::from_str_name)
            {
                Some(reason) => Err(status(reason, "secret detail 10.0.0.1")),
                None => Err(status(ErrorReason::InvalidCode, "unknown code")),
            },
        }
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let token = req.get_ref().token.clone();
        self.0.record("authenticate", &req, token.clone());
        let user_id = user_of_token(&token)?;
        Ok(Response::new(AuthenticateResponse {
            principal: Some(principal(user_id)),
            expires_in: 100,
        }))
    }

    async fn logout(
        &self,
        req: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let token = req.get_ref().token.clone();
        self.0.record("logout", &req, token.clone());
        Ok(Response::new(LogoutResponse {
            revoked: token == GOOD_TOKEN,
        }))
    }

    async fn get_session_key(
        &self,
        _: Request<GetSessionKeyRequest>,
    ) -> Result<Response<GetSessionKeyResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn authenticate_with_session_key(
        &self,
        _: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateWithSessionKeyResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn get_access_token(
        &self,
        _: Request<wxmp_proto::auth::v1::GetAccessTokenRequest>,
    ) -> Result<Response<wxmp_proto::auth::v1::GetAccessTokenResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }
}

struct FakeUser(Recorder);

#[tonic::async_trait]
impl UserService for FakeUser {
    async fn ensure_user(
        &self,
        _: Request<EnsureUserRequest>,
    ) -> Result<Response<EnsureUserResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let id = req.get_ref().user_id;
        self.0.record("get_user", &req, id.to_string());
        Ok(Response::new(GetUserResponse {
            user: Some(user(id)),
        }))
    }

    async fn update_profile(
        &self,
        req: Request<UpdateProfileRequest>,
    ) -> Result<Response<UpdateProfileResponse>, Status> {
        let r = req.get_ref().clone();
        let uid = caller(&r.token, r.principal.as_ref())?;
        self.0.record(
            "update_profile",
            &req,
            format!(
                "{uid}|{}|{}|{}|{}",
                r.encrypted_data, r.iv, r.raw_data, r.signature
            ),
        );
        if r.encrypted_data == "garbage" {
            return Err(status(ErrorReason::DecryptFailed, "decrypt failed"));
        }
        Ok(Response::new(UpdateProfileResponse {
            user: Some(user(uid)),
        }))
    }

    async fn update_phone_number(
        &self,
        req: Request<UpdatePhoneNumberRequest>,
    ) -> Result<Response<UpdatePhoneNumberResponse>, Status> {
        let r = req.get_ref().clone();
        let uid = caller(&r.token, r.principal.as_ref())?;
        self.0.record(
            "update_phone_number",
            &req,
            format!("{uid}|{}|{}", r.encrypted_data, r.iv),
        );
        let mut u = user(uid);
        u.phone = "13800138000".into();
        u.phone_country_code = "86".into();
        Ok(Response::new(UpdatePhoneNumberResponse { user: Some(u) }))
    }
}

struct FakePay(Recorder);

fn order(no: &str, user_id: i64, state: OrderState) -> Order {
    Order {
        order_no: no.into(),
        user_id,
        app_id: "wxapp".into(),
        amount_fen: 100,
        description: "coffee".into(),
        attach: "internal-attach".into(),
        product_id: "coffee".into(),
        state: state as i32,
        transaction_id: String::new(),
        created_at: 10,
        paid_at: 0,
        expires_at: 1810,
        refunded_fen: 0,
        refunding_fen: 0,
        pay_api: "v2".into(),
        shipping: None,
    }
}

/// What the fake pay-service answers to a refund notify.
pub const REFUND_NOTIFY_REPLY: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

#[tonic::async_trait]
impl PayService for FakePay {
    async fn create_order(
        &self,
        _: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn prepare_jsapi_payment(
        &self,
        req: Request<PrepareJsapiPaymentRequest>,
    ) -> Result<Response<PrepareJsapiPaymentResponse>, Status> {
        let r = req.get_ref().clone();
        let uid = r.principal.as_ref().map_or(0, |p| p.user_id);
        let order_no = match &r.target {
            Some(Target::OrderNo(no)) => no.clone(),
            Some(Target::ProductId(_)) => "NEW1".into(),
            None => String::new(),
        };
        self.0.record(
            "prepare_jsapi_payment",
            &req,
            format!("{uid}|{:?}|{}|{}", r.target, r.idempotency_key, r.client_ip),
        );
        if order_no == "PAID1" {
            return Err(status(ErrorReason::OrderState, "already paid"));
        }
        Ok(Response::new(PrepareJsapiPaymentResponse {
            virtual_payment: None,
            order: Some(order(&order_no, uid, OrderState::Paying)),
            params: Some(JsapiParams {
                app_id: "wxapp".into(),
                time_stamp: "1700000000".into(),
                nonce_str: "nonce".into(),
                package: "prepay_id=wx123".into(),
                sign_type: "MD5".into(),
                pay_sign: "SIGN".into(),
            }),
        }))
    }

    async fn handle_pay_notify(
        &self,
        req: Request<HandlePayNotifyRequest>,
    ) -> Result<Response<HandlePayNotifyResponse>, Status> {
        let body = String::from_utf8_lossy(&req.get_ref().raw_body).into_owned();
        let throttled = req
            .metadata()
            .contains_key(service_kit::grpc::NOTIFY_SENDER_THROTTLED);
        self.0.record(
            if throttled {
                "handle_pay_notify_throttled"
            } else {
                "handle_pay_notify"
            },
            &req,
            body.clone(),
        );
        // Plays pay-service's verdicts: a body saying `forged` fails its signature, one
        // naming a verdict gets it, anything else is applied.
        let verdict = if body.contains("forged") {
            if throttled {
                "rate_limited"
            } else {
                "bad_signature"
            }
        } else if let Some(v) = ["unknown_order", "amount_mismatch", "malformed"]
            .into_iter()
            .find(|v| body.contains(v))
        {
            v
        } else {
            return Ok(Response::new(HandlePayNotifyResponse {
                reply_xml: NOTIFY_REPLY.into(),
                accepted: true,
                verdict: "applied".into(),
            }));
        };
        Ok(Response::new(HandlePayNotifyResponse {
            reply_xml: format!(
                "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[{verdict}]]></return_msg></xml>"
            ),
            accepted: false,
            verdict: verdict.into(),
        }))
    }

    /// Accepts a v3 notify whose signature header is `good`; records the four headers + body.
    async fn handle_pay_notify_v3(
        &self,
        req: Request<HandlePayNotifyV3Request>,
    ) -> Result<Response<HandlePayNotifyV3Response>, Status> {
        let r = req.get_ref().clone();
        let body = String::from_utf8_lossy(&r.raw_body).into_owned();
        self.0.record(
            "handle_pay_notify_v3",
            &req,
            format!(
                "{}|{}|{}|{}|{body}",
                r.timestamp, r.nonce, r.signature, r.serial
            ),
        );
        let accepted = r.signature == "good";
        Ok(Response::new(HandlePayNotifyV3Response {
            accepted,
            verdict: if accepted { "applied" } else { "bad_signature" }.into(),
            message: if accepted {
                String::new()
            } else {
                "bad_signature".into()
            },
        }))
    }

    /// As [`handle_pay_notify_v3`](Self::handle_pay_notify_v3), for v3 refund notifies.
    async fn ship(&self, _: Request<ShipRequest>) -> Result<Response<ShipResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    /// Records `app_id|event|dedup_key|message_json`; answers "handled".
    async fn handle_message_push(
        &self,
        req: Request<HandleMessagePushRequest>,
    ) -> Result<Response<HandleMessagePushResponse>, Status> {
        let r = req.get_ref().clone();
        self.0.record(
            "handle_message_push",
            &req,
            format!(
                "{}|{}|{}|{}",
                r.app_id, r.event, r.dedup_key, r.message_json
            ),
        );
        Ok(Response::new(HandleMessagePushResponse {
            verdict: "handled".into(),
        }))
    }

    // Coin mode (issue 26): internal RPCs for a shop service, not behind the gateway.
    async fn get_coin_balance(
        &self,
        _: Request<wxmp_proto::pay::v1::GetCoinBalanceRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::GetCoinBalanceResponse>, Status> {
        Err(Status::unimplemented("not behind the gateway"))
    }

    async fn spend_coins(
        &self,
        _: Request<wxmp_proto::pay::v1::SpendCoinsRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::SpendCoinsResponse>, Status> {
        Err(Status::unimplemented("not behind the gateway"))
    }

    async fn cancel_coin_spend(
        &self,
        _: Request<wxmp_proto::pay::v1::CancelCoinSpendRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::CancelCoinSpendResponse>, Status> {
        Err(Status::unimplemented("not behind the gateway"))
    }

    async fn handle_refund_notify_v3(
        &self,
        req: Request<HandleRefundNotifyV3Request>,
    ) -> Result<Response<HandleRefundNotifyV3Response>, Status> {
        let r = req.get_ref().clone();
        let body = String::from_utf8_lossy(&r.raw_body).into_owned();
        self.0.record(
            "handle_refund_notify_v3",
            &req,
            format!(
                "{}|{}|{}|{}|{body}",
                r.timestamp, r.nonce, r.signature, r.serial
            ),
        );
        let accepted = r.signature == "good";
        Ok(Response::new(HandleRefundNotifyV3Response {
            accepted,
            verdict: if accepted { "applied" } else { "bad_signature" }.into(),
            message: if accepted {
                String::new()
            } else {
                "bad_signature".into()
            },
        }))
    }

    async fn reconcile_bills(
        &self,
        _: Request<wxmp_proto::pay::v1::ReconcileBillsRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::BillReport>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn get_bill_report(
        &self,
        _: Request<wxmp_proto::pay::v1::GetBillReportRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::BillReport>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn prepare_virtual_payment(
        &self,
        _: Request<wxmp_proto::pay::v1::PrepareJsapiPaymentRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::PrepareVirtualPaymentResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn resolve_bill_mismatch(
        &self,
        _: Request<wxmp_proto::pay::v1::ResolveBillMismatchRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::BillMismatch>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn get_order(
        &self,
        req: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let r = req.get_ref().clone();
        self.0
            .record("get_order", &req, format!("{}|{}", r.order_no, r.user_id));
        match r.order_no.as_str() {
            "ORD1" if r.user_id == 7 => Ok(Response::new(GetOrderResponse {
                order: Some(order("ORD1", 7, OrderState::Paid)),
            })),
            // A buggy service that ignores user_id: the gateway must still not show it.
            "LEAKY" => Ok(Response::new(GetOrderResponse {
                order: Some(order("LEAKY", 9, OrderState::Paid)),
            })),
            _ => Err(status(ErrorReason::NotFound, "no such order")),
        }
    }

    async fn close_order(
        &self,
        _: Request<CloseOrderRequest>,
    ) -> Result<Response<CloseOrderResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn list_products(
        &self,
        req: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        self.0.record("list_products", &req, "");
        Ok(Response::new(ListProductsResponse {
            products: vec![Product {
                id: "coffee".into(),
                name: "Coffee".into(),
                price_fen: 100,
            }],
        }))
    }

    type WatchOrderEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<wxmp_proto::pay::v1::OrderEvent, Status>> + Send>,
    >;

    async fn watch_order_events(
        &self,
        _: Request<wxmp_proto::pay::v1::WatchOrderEventsRequest>,
    ) -> Result<Response<Self::WatchOrderEventsStream>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn list_webhook_deliveries(
        &self,
        _: Request<wxmp_proto::pay::v1::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<wxmp_proto::pay::v1::ListWebhookDeliveriesResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }
    async fn refund(&self, _: Request<RefundRequest>) -> Result<Response<RefundResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn get_refund(
        &self,
        _: Request<GetRefundRequest>,
    ) -> Result<Response<GetRefundResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    async fn list_refunds(
        &self,
        _: Request<ListRefundsRequest>,
    ) -> Result<Response<ListRefundsResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }

    /// Plays pay-service's verdicts on v2 refund notifies: a body saying `forged` does not
    /// decrypt (`undecryptable`, or `rate_limited` from a throttled sender), one saying
    /// `unknown_refund` gets that verdict, anything else is applied.
    async fn handle_refund_notify(
        &self,
        req: Request<HandleRefundNotifyRequest>,
    ) -> Result<Response<HandleRefundNotifyResponse>, Status> {
        let body = String::from_utf8_lossy(&req.get_ref().raw_body).into_owned();
        let throttled = req
            .metadata()
            .contains_key(service_kit::grpc::NOTIFY_SENDER_THROTTLED);
        self.0.record(
            if throttled {
                "handle_refund_notify_throttled"
            } else {
                "handle_refund_notify"
            },
            &req,
            body.clone(),
        );
        let verdict = if body.contains("forged") {
            if throttled {
                "rate_limited"
            } else {
                "undecryptable"
            }
        } else if body.contains("unknown_refund") {
            "unknown_refund"
        } else {
            return Ok(Response::new(HandleRefundNotifyResponse {
                reply_xml: REFUND_NOTIFY_REPLY.into(),
                accepted: true,
                verdict: "applied".into(),
            }));
        };
        Ok(Response::new(HandleRefundNotifyResponse {
            reply_xml: format!(
                "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[{verdict}]]></return_msg></xml>"
            ),
            accepted: false,
            verdict: verdict.into(),
        }))
    }

    async fn apply_abnormal_refund(
        &self,
        _: Request<ApplyAbnormalRefundRequest>,
    ) -> Result<Response<ApplyAbnormalRefundResponse>, Status> {
        Err(Status::unimplemented("not for the gateway"))
    }
}

/// How to set up a stack.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub auth_down: bool,
    pub user_down: bool,
    pub pay_down: bool,
    /// pay-service accepts connections and never answers (a hung process, a black hole).
    pub pay_hung: bool,
    pub trusted_proxies: Option<String>,
    pub rpc_timeout_ms: Option<u64>,
    pub body_limit: Option<u64>,
    pub internal_token: Option<String>,
    pub login_rate_per_min: Option<u32>,
    pub notify_fail_limit: Option<u32>,
    /// GATEWAY_REDIS_URL and a key prefix (fresh per test).
    pub redis: Option<(String, String)>,
    pub upstream_check_ms: Option<u64>,
    /// GATEWAY_PUSH_APPS.
    pub push_apps: Option<String>,
}

pub struct Stack {
    pub base: String,
    /// The gateway's configuration (to start more replicas in front of the same fakes).
    pub config: gateway::Config,
    pub calls: Recorder,
    pub shutdown: Shutdown,
    pub gateway: tokio::task::JoinHandle<std::io::Result<()>>,
    pub http: reqwest::Client,
}

/// A URL nobody listens on: bind, note the port, close.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

async fn start_fake(routes: Routes, name: &str, shutdown: Shutdown) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let names = [name.to_owned()];
    tokio::spawn(async move {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = service_kit::grpc::serve(listener, routes, &names, shutdown).await;
    });
    format!("http://{addr}")
}

pub async fn start(options: Options) -> Stack {
    let calls = Recorder::default();
    let shutdown = Shutdown::new();
    let auth_url = if options.auth_down {
        closed_url()
    } else {
        start_fake(
            Routes::new(AuthServiceServer::new(FakeAuth(calls.clone()))),
            "wxmp.auth.v1.AuthService",
            shutdown.clone(),
        )
        .await
    };
    let user_url = if options.user_down {
        closed_url()
    } else {
        start_fake(
            Routes::new(UserServiceServer::new(FakeUser(calls.clone()))),
            "wxmp.user.v1.UserService",
            shutdown.clone(),
        )
        .await
    };
    let pay_url = if options.pay_down {
        closed_url()
    } else if options.pay_hung {
        hung_url().await
    } else {
        start_fake(
            Routes::new(PayServiceServer::new(FakePay(calls.clone()))),
            "wxmp.pay.v1.PayService",
            shutdown.clone(),
        )
        .await
    };
    let mut config = gateway::Config::new(&auth_url, &user_url, &pay_url);
    config.workers = Some(1);
    if let Some(t) = &options.trusted_proxies {
        config.trusted_proxies = t.parse().unwrap();
    }
    if let Some(ms) = options.rpc_timeout_ms {
        config.rpc_timeout_ms = ms;
    }
    if let Some(limit) = options.body_limit {
        config.body_limit = limit;
    }
    config.internal.internal_token = options.internal_token.as_deref().map(Into::into);
    if let Some(n) = options.login_rate_per_min {
        config.login_rate_per_min = n;
    }
    if let Some(n) = options.notify_fail_limit {
        config.notify_fail_limit = n;
    }
    if let Some((url, prefix)) = &options.redis {
        config.redis_url = Some(url.as_str().into());
        config.redis_prefix = prefix.clone();
    }
    if let Some(ms) = options.upstream_check_ms {
        config.upstream_check_ms = ms;
    }
    if let Some(apps) = &options.push_apps {
        config.push_apps = Some(apps.as_str().into());
    }
    let (base, gateway) = start_gateway(config.clone(), shutdown.clone());
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Stack {
        base,
        config,
        calls,
        shutdown,
        gateway,
        http,
    }
}

/// Serves a gateway with `config` on a free port until `shutdown`; answers its base URL.
pub fn start_gateway(
    config: gateway::Config,
    shutdown: Shutdown,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (
        base,
        tokio::spawn(gateway::serve(config, listener, shutdown)),
    )
}

/// A URL that accepts TCP connections and never answers a byte (kept open for the test).
async fn hung_url() -> String {
    wxmp_testkit::http::TestServer::silent().await.base()
}

impl Stack {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST a JSON value; answers (HTTP status, body as JSON).
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::read(res).await
    }

    pub async fn get_auth(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.unwrap()).await
    }

    pub async fn read(res: reqwest::Response) -> (u16, serde_json::Value) {
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = res.text().await.unwrap();
        assert!(
            ct.starts_with("application/json"),
            "content-type {ct:?} for {text}"
        );
        let json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        (status, json)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let outcome = tokio::time::timeout(Duration::from_secs(30), self.gateway)
            .await
            .expect("gateway stops")
            .expect("gateway task");
        outcome.expect("serve returns Ok");
    }
}

/// A private `redis-server` (no persistence) on a free port, that a test may stop; the shared
/// Redis on 6379 is never touched. Killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The shared Redis of the tests (`WXMP_TEST_REDIS_URL`, default 127.0.0.1:6379) and a fresh
/// key prefix.
pub fn shared_redis() -> (String, String) {
    (
        wxmp_testkit::redis::url(),
        wxmp_testkit::redis::fresh_prefix("wxmp-gw-test"),
    )
}

/// Polls `f` every 50 ms until it answers true or `timeout` passes; answers the last result.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        if f().await {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the envelope of a failure: code, HTTP status, data null, msg present.
pub fn assert_failure(got: &(u16, serde_json::Value), code: u64, http: u16) {
    let (status, body) = got;
    assert_eq!(body["code"], code, "envelope code in {body}");
    assert_eq!(*status, http, "HTTP status for {body}");
    assert!(body["data"].is_null(), "data must be null: {body}");
    assert!(
        body["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The process's metrics recorder (installed on first use), to read what the gateway reported.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("a metrics recorder")
    })
}
