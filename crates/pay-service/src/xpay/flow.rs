//! `PrepareJsapiPayment` for a virtual-payment product: the order (the catalog's price, never
//! the client's), bound to the payer with `sign_type = XPAY` and moved to PAYING, and the
//! `wx.requestVirtualPayment` parameters: `paySig` with the AppKey, the user-state `signature`
//! with the user's session_key, which auth-service hands to pay-service (`GetSessionKey`, as to
//! user-service for `/userinfo/`) and which never leaves the backend.

use service_kit::grpc::AttachToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use wechat::xpay::VirtualPaymentParams;
use wxmp_proto::auth::v1::{
    GetAccessTokenRequest, GetSessionKeyRequest, auth_service_client::AuthServiceClient,
};

use super::rules::{XPAY_SIGN_TYPE, XpaySettings};
use crate::{
    config::Config,
    error::Error,
    orders::{
        Order, OrderState, PayTarget, Payer,
        rules::{check_client_ip, state_error},
        store,
    },
    payments::Payments,
};

/// How long the prepared parameters are marked on the order (the order's own expiry still
/// bounds it).
const PREPARED_SECS: i64 = 2 * 3600;

type AuthClient = AuthServiceClient<InterceptedService<Channel, AttachToken>>;

/// The virtual-payment part of the core.
#[derive(Clone, Debug)]
pub struct Xpay {
    pub(crate) settings: XpaySettings,
    /// None without `PAY_AUTH_SERVICE_URL`: no session_key, virtual products cannot be sold.
    pub(crate) auth: Option<AuthClient>,
    /// For `query_order` (the reconciler's fallback when the delivery push is lost).
    pub(crate) wechat: wechat::WechatClient,
}

impl Xpay {
    /// None when `PAY_XPAY_PRODUCTS` is empty.
    pub fn from_config(config: &Config) -> Result<Option<Self>, Error> {
        let Some(settings) = XpaySettings::from_config(&config.xpay).map_err(Error::Config)? else {
            return Ok(None);
        };
        let url = config.paid_message.auth_service_url.trim();
        let auth = if url.is_empty() {
            tracing::warn!(
                "PAY_AUTH_SERVICE_URL is empty: virtual-payment products cannot be sold (no session_key)"
            );
            None
        } else {
            let timeout = config.wechat_timeout();
            let channel = service_kit::grpc::channel(url, timeout, timeout)
                .map_err(|e| Error::Config(format!("PAY_AUTH_SERVICE_URL: {e}")))?;
            Some(AuthServiceClient::with_interceptor(
                channel,
                AttachToken::new(config.internal.internal_token.as_ref()),
            ))
        };
        let wechat = config.wechat.client().map_err(Error::Config)?;
        super::meter::register();
        Ok(Some(Self {
            settings,
            auth,
            wechat,
        }))
    }

    /// The user's newest session_key; an error when there is none (log in again).
    pub(crate) async fn session_key(&self, app_id: &str, openid: &str) -> Result<String, Error> {
        let Some(auth) = &self.auth else {
            return Err(Error::Config(
                "virtual payment needs PAY_AUTH_SERVICE_URL".into(),
            ));
        };
        match auth
            .clone()
            .get_session_key(GetSessionKeyRequest {
                app_id: app_id.to_owned(),
                openid: openid.to_owned(),
            })
            .await
        {
            Ok(r) => {
                let key = r.into_inner().session_key;
                if key.is_empty() {
                    Err(Error::OrderState(
                        "no live session for virtual payment; log in again".into(),
                    ))
                } else {
                    Ok(key)
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => Err(Error::OrderState(
                "no live session for virtual payment; log in again".into(),
            )),
            Err(s) => Err(Error::Internal(format!(
                "auth-service GetSessionKey: {}",
                s.code()
            ))),
        }
    }
}

impl Xpay {
    /// auth-service's access_token of `app_id` (the xpay server APIs need one).
    pub(super) async fn access_token(&self, app_id: &str) -> Result<String, Error> {
        let Some(auth) = &self.auth else {
            return Err(Error::Config(
                "the xpay server APIs need PAY_AUTH_SERVICE_URL".into(),
            ));
        };
        Ok(auth
            .clone()
            .get_access_token(GetAccessTokenRequest {
                app_id: app_id.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|s| {
                Error::WechatUnavailable(format!("auth-service GetAccessToken: {}", s.code()))
            })?
            .into_inner()
            .access_token)
    }

    /// The WeChat client the xpay server APIs go through.
    pub(super) fn wechat(&self) -> &wechat::WechatClient {
        &self.wechat
    }

    /// `query_order` for `order` with auth-service's access_token: WeChat's view of it.
    async fn query(&self, order: &Order) -> Result<wechat::xpay::XpayOrder, Error> {
        let token = self.access_token(&order.app_id).await?;
        self.wechat
            .xpay_query_order(
                &token,
                self.settings.app_key.expose(),
                &order.openid,
                self.settings.env,
                &order.order_no,
            )
            .await
            .map_err(|e| api_error("query_order", &e))
    }

    /// `notify_provide_goods`: tells WeChat a paid order was delivered when its delivery push
    /// never got our "success" (a lost or late push repaired by `query_order`). WeChat's
    /// document: "正常通过xpay_goods_deliver_notify消息推送返回成功的不需要调用这个api"; without
    /// it WeChat keeps the order 待发货. Best effort: the order is paid here either way.
    async fn provide_goods(&self, order: &Order) {
        let result = match self.access_token(&order.app_id).await {
            Ok(token) => self
                .wechat
                .xpay_notify_provide_goods(
                    &token,
                    self.settings.app_key.expose(),
                    self.settings.env,
                    &order.order_no,
                )
                .await
                .map_err(|e| api_error("notify_provide_goods", &e)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::info!(order_no = %order.order_no, "told WeChat the repaired virtual order is delivered");
            }
            Err(e) => {
                tracing::warn!(order_no = %order.order_no, error = %e, "notify_provide_goods failed; WeChat shows the order undelivered");
            }
        }
    }
}

/// An xpay API's error: no answer (transport, -1 system busy, an unreadable answer) is
/// WECHAT_UNAVAILABLE; an errcode answer is WeChat's word (WECHAT_ERROR).
pub(super) fn api_error(api: &str, e: &wechat::ApiError) -> Error {
    match e {
        wechat::ApiError::Transport(_)
        | wechat::ApiError::SystemBusy
        | wechat::ApiError::BadResponse(_) => Error::WechatUnavailable(format!("{api}: {e}")),
        _ => Error::Wechat(format!("{api}: {e}")),
    }
}

impl Payments {
    /// The reconciler's fallback for a PAYING virtual order whose delivery push is late or
    /// lost: `query_order`; paid there (status 2, 3 or 4) for the order's payer and amount →
    /// the same PAID transition as the push (a later push is then a duplicate). True when
    /// this call paid it.
    pub(crate) async fn query_xpay_paying(&self, order: &Order) -> Result<bool, Error> {
        if self.xpay().is_none() {
            return Ok(false);
        }
        Ok(matches!(
            self.xpay_paid_outcome(order).await?,
            Some(crate::orders::PaidOutcome::Applied(_))
        ))
    }

    /// Before an expired virtual order is closed: virtual payment has no closeorder (an order
    /// exists at WeChat only once the phone paid it), so WeChat Pay's is never called for it;
    /// `query_order` says whether it was paid. Paid → its payment is applied instead (the
    /// outcome); not paid, or unknown to WeChat (an errcode answer) → None, close it here.
    /// No answer at all → an error, the close waits for the next pass. A payment made after
    /// the close arrives as a push for a CLOSED order (paid_after_close, refundable).
    pub(crate) async fn xpay_before_close(
        &self,
        order: &Order,
    ) -> Result<Option<crate::orders::PaidOutcome>, Error> {
        if self.xpay().is_none() {
            tracing::warn!(order_no = %order.order_no, "virtual payment is no longer configured: the expired order is closed without asking query_order");
            return Ok(None);
        }
        match self.xpay_paid_outcome(order).await {
            Ok(outcome) => Ok(outcome),
            Err(Error::Wechat(why)) => {
                tracing::info!(order_no = %order.order_no, %why, "query_order knows no payment of the expired virtual order; closing it");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `query_order` of a virtual order; paid at WeChat → the PAID transition's outcome.
    async fn xpay_paid_outcome(
        &self,
        order: &Order,
    ) -> Result<Option<crate::orders::PaidOutcome>, Error> {
        let Some(xpay) = self.xpay() else {
            return Err(Error::Config(
                "a virtual-payment order without PAY_XPAY_* settings".into(),
            ));
        };
        let at_wechat = xpay
            .query(order)
            .await
            .inspect_err(|_| super::meter::query_order("error"))?;
        // 2 paid, 3 being delivered, 4 delivered.
        if !matches!(at_wechat.status, 2..=4) {
            super::meter::query_order("unpaid");
            return Ok(None);
        }
        if at_wechat.paid_fee != order.amount_fen || at_wechat.openid != order.openid {
            super::meter::query_order("mismatch");
            tracing::error!(order_no = %order.order_no, "query_order reports a payment that does not match the order; not applied");
            return Err(Error::Internal(
                "WeChat's virtual payment does not match the order".into(),
            ));
        }
        let transaction_id = if !at_wechat.wxpay_order_id.is_empty() {
            at_wechat.wxpay_order_id.clone()
        } else if !at_wechat.wx_order_id.is_empty() {
            at_wechat.wx_order_id.clone()
        } else {
            format!("xpay:{}", order.order_no)
        };
        let now = self.now();
        let paid_at = if at_wechat.paid_time > 0 {
            at_wechat.paid_time
        } else {
            now
        };
        let outcome = store::mark_paid(
            self.database(),
            &order.order_no,
            &transaction_id,
            paid_at,
            now,
        )
        .await?;
        crate::orders::flow::log_paid_outcome(&outcome, "xpay_query_order");
        crate::subscribe::on_paid(self, &outcome).await;
        let repaired = matches!(outcome, crate::orders::PaidOutcome::Applied(_));
        super::meter::query_order(if repaired { "repaired" } else { "duplicate" });
        // 2: paid, not delivered at WeChat: no push of ours was answered "success". Only an
        // order paid here is delivered (one paid after its close waits for a refund).
        if at_wechat.status == 2
            && matches!(
                outcome,
                crate::orders::PaidOutcome::Applied(_) | crate::orders::PaidOutcome::Duplicate(_)
            )
        {
            xpay.provide_goods(order).await;
        }
        Ok(Some(outcome))
    }

    pub(crate) fn xpay(&self) -> Option<&Xpay> {
        self.inner.xpay.as_ref()
    }

    /// Whether `product_id` is sold through virtual payment (goods or coins).
    pub fn is_xpay_product(&self, product_id: &str) -> bool {
        self.xpay()
            .is_some_and(|x| x.settings.sold(product_id).is_some())
    }

    /// Whether a PrepareJsapiPayment of `target` is a virtual payment: a product sold this
    /// way, or an order bound to virtual payment.
    pub async fn is_xpay_target(&self, target: &PayTarget) -> Result<bool, Error> {
        Ok(match target {
            PayTarget::Product(id) => self.is_xpay_product(id),
            PayTarget::Order(no) => {
                self.xpay().is_some()
                    && store::find_order(self.database(), no)
                        .await?
                        .is_some_and(|o| o.sign_type == XPAY_SIGN_TYPE)
            }
        })
    }

    /// The `requestVirtualPayment` parameters of an order of `payer` (a new one for a
    /// product). Repeats answer the same signData (the same order), freshly signed with the
    /// user's current session_key.
    pub async fn prepare_virtual_payment(
        &self,
        payer: &Payer,
        target: PayTarget,
        client_ip: &str,
        idempotency_key: &str,
    ) -> Result<(Order, VirtualPaymentParams), Error> {
        let xpay = self
            .xpay()
            .ok_or(Error::NotFound("virtual-payment product"))?;
        if payer.user_id <= 0 {
            return Err(Error::MissingParameter("principal.user_id"));
        }
        if payer.app_id.is_empty() {
            return Err(Error::MissingParameter("principal.app_id"));
        }
        if payer.openid.is_empty() {
            return Err(Error::MissingParameter("principal.openid"));
        }
        let client_ip = check_client_ip(client_ip)?;
        // First, so that a user without a live session changes nothing.
        let session_key = xpay.session_key(&payer.app_id, &payer.openid).await?;
        let mut order = match target {
            PayTarget::Product(id) if id.is_empty() => {
                return Err(Error::MissingParameter("product_id"));
            }
            PayTarget::Product(id) => {
                self.product_order(payer, &id, &client_ip, idempotency_key)
                    .await?
            }
            PayTarget::Order(no) => self.get_order(&no, payer.user_id).await?,
        };
        let sold = xpay
            .settings
            .sold(&order.product_id)
            .ok_or(Error::NotFound("virtual-payment product"))?;
        let now = self.now();
        if let Some(e) = state_error(&order, now) {
            return Err(e);
        }
        if order.app_id.is_empty() {
            order = match store::bind_payer(
                self.database(),
                &order.order_no,
                &payer.app_id,
                &payer.openid,
                &client_ip,
                "",
                XPAY_SIGN_TYPE,
                now,
            )
            .await?
            {
                Some(bound) => bound,
                None => self.reload_xpay_order(&order.order_no).await?,
            };
            if let Some(e) = state_error(&order, now) {
                return Err(e);
            }
        }
        if order.app_id != payer.app_id || order.openid != payer.openid {
            return Err(Error::OrderState(
                "order is being paid from another mini program".into(),
            ));
        }
        if order.sign_type != XPAY_SIGN_TYPE {
            return Err(Error::OrderState(
                "order is being paid through WeChat Pay".into(),
            ));
        }
        // 道具直购 or 代币 (coins.rs), from the order's server-side price.
        let params = xpay.settings.request_params(&sold, &order, &session_key)?;
        // CREATED → PAYING (the marker is no JSAPI prepay_id: JSAPI refuses XPAY orders).
        if order.state() == Some(OrderState::Created)
            && let Some(paying) = store::set_prepay(
                self.database(),
                &order.order_no,
                "xpay",
                now + PREPARED_SECS,
                now,
            )
            .await?
        {
            order = paying;
        }
        Ok((order, params))
    }

    async fn reload_xpay_order(&self, order_no: &str) -> Result<Order, Error> {
        store::find_order(self.database(), order_no)
            .await?
            .ok_or_else(|| Error::Internal(format!("order {order_no} vanished")))
    }
}
