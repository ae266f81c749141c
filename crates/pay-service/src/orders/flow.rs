//! The order flow: CreateOrder, PrepareJsapiPayment (with catalog products), GetOrder,
//! CloseOrder, and syncing an order with WeChat's orderquery. What an order and a payment
//! *mean* is in [`super::rules`]; the SQL in [`super::store`].

use wechat::pay::{RequestPaymentParams, TradeState};

use super::{
    rules::{
        MAX_AMOUNT_FEN, MAX_ATTACH_BYTES, MAX_DESCRIPTION_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, Order,
        OrderState, PaidOutcome, check_client_ip, check_order_no, check_text, new_order_no,
        state_error,
    },
    store::{self, NewOrder},
};
use crate::{
    config::valid_product_id,
    error::Error,
    payments::Payments,
    wechat_pay::{PlaceOrder, WxError, map_wx_error},
};

/// A prepay_id is valid for 2 hours at WeChat; stop reusing it 5 minutes early so the user
/// never gets one that dies on the payment sheet.
pub const PREPAY_REUSE_SECS: i64 = 2 * 3600 - 300;

/// WeChat refuses a JSAPI unifiedorder whose time_expire is less than 5 minutes away; keep a
/// few seconds for clock differences.
pub const MIN_PAY_WINDOW_SECS: i64 = 5 * 60 + 10;

/// How often a request retries after losing a race with a concurrent change of the same order.
const RACE_RETRIES: usize = 4;

/// What `CreateOrder` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOrder {
    pub user_id: i64,
    pub amount_fen: i64,
    pub description: String,
    pub attach: String,
    pub idempotency_key: String,
}

/// The authenticated buyer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payer {
    pub user_id: i64,
    pub app_id: String,
    pub openid: String,
}

/// What to pay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayTarget {
    Order(String),
    Product(String),
}

pub(crate) fn count_transition(state: OrderState) {
    metrics::counter!("wxmp_pay_orders_total", "state" => state.as_str()).increment(1);
}

impl Payments {
    /// Creates an order for an internal caller. With an idempotency key, a repeat answers the
    /// first order; the same key with other parameters is IDEMPOTENCY_CONFLICT. The unique
    /// index on (user_id, idempotency_key) decides between concurrent first calls.
    pub async fn create_order(&self, req: CreateOrder) -> Result<Order, Error> {
        if req.user_id <= 0 {
            return Err(Error::MissingParameter("user_id"));
        }
        if !(1..=MAX_AMOUNT_FEN).contains(&req.amount_fen) {
            return Err(Error::InvalidArgument(format!(
                "amount_fen must be in 1..={MAX_AMOUNT_FEN}"
            )));
        }
        check_text("description", &req.description, MAX_DESCRIPTION_BYTES, true)?;
        check_text("attach", &req.attach, MAX_ATTACH_BYTES, false)?;
        check_text(
            "idempotency_key",
            &req.idempotency_key,
            MAX_IDEMPOTENCY_KEY_BYTES,
            false,
        )?;
        let key = (!req.idempotency_key.is_empty()).then(|| req.idempotency_key.clone());
        let same = |o: &Order| {
            o.amount_fen == req.amount_fen
                && o.description == req.description
                && o.attach == req.attach
                && o.product_id.is_empty()
        };
        if let Some(key) = &key
            && let Some(existing) =
                store::find_by_idempotency_key(self.database(), req.user_id, key).await?
        {
            return if same(&existing) {
                Ok(existing)
            } else {
                Err(Error::IdempotencyConflict)
            };
        }
        for _ in 0..RACE_RETRIES {
            let now = self.now();
            let new = NewOrder {
                order_no: new_order_no(now),
                user_id: req.user_id,
                app_id: String::new(),
                openid: String::new(),
                client_ip: String::new(),
                amount_fen: req.amount_fen,
                description: req.description.clone(),
                attach: req.attach.clone(),
                product_id: String::new(),
                state: OrderState::Created.as_str().into(),
                api: self.inner.wechat.api().as_str().into(),
                idempotency_key: key.clone(),
                created_at: now,
                updated_at: now,
                expires_at: now + self.inner.settings.order_ttl_secs,
                // Bound with the payer by the first PrepareJsapiPayment.
                notify_url: String::new(),
                sign_type: String::new(),
            };
            match store::insert_order(self.database(), &new).await {
                Ok(order) => {
                    count_transition(OrderState::Created);
                    return Ok(order);
                }
                Err(Error::Db(e)) if e.is_unique_violation() => {
                    // Either a concurrent call with the same key won, or (astronomically
                    // unlikely) the order number collided: then try another number.
                    if let Some(key) = &key
                        && let Some(existing) =
                            store::find_by_idempotency_key(self.database(), req.user_id, key)
                                .await?
                    {
                        return if same(&existing) {
                            Ok(existing)
                        } else {
                            Err(Error::IdempotencyConflict)
                        };
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Internal("could not allocate an order number".into()))
    }

    /// The order a `POST /pay/` of a catalog product pays: the price is the server's, never
    /// the client's.
    ///
    /// - With an idempotency key: the order first made with that key (the same key for another
    ///   product is IDEMPOTENCY_CONFLICT); the unique (user_id, idempotency_key) index decides
    ///   between concurrent first calls.
    /// - Without one: the caller's newest open order of the same product made within
    ///   `PAY_PRODUCT_REUSE_SECS` (and still payable), so a double tap buys once.
    /// - Otherwise a new order. Nobody else knows it yet, so the payer (and what its
    ///   unifiedorder is placed with) is bound by the INSERT itself, saving the conditional
    ///   bind's round trip.
    pub(crate) async fn product_order(
        &self,
        payer: &Payer,
        product_id: &str,
        client_ip: &str,
        idempotency_key: &str,
    ) -> Result<Order, Error> {
        if !valid_product_id(product_id) {
            return Err(Error::NotFound("product"));
        }
        check_text(
            "idempotency_key",
            idempotency_key,
            MAX_IDEMPOTENCY_KEY_BYTES,
            false,
        )?;
        let product = self
            .inner
            .settings
            .catalog
            .get(product_id)
            .ok_or(Error::NotFound("product"))?
            .clone();
        let key = (!idempotency_key.is_empty()).then(|| idempotency_key.to_owned());
        let keyed = |existing: Order| {
            if existing.product_id == product.id {
                Ok(existing)
            } else {
                Err(Error::IdempotencyConflict)
            }
        };
        if let Some(key) = &key {
            if let Some(existing) =
                store::find_by_idempotency_key(self.database(), payer.user_id, key).await?
            {
                return keyed(existing);
            }
        } else if self.inner.settings.product_reuse_secs > 0 {
            let now = self.now();
            if let Some(open) = store::recent_product_order(
                self.database(),
                payer.user_id,
                &product.id,
                &payer.app_id,
                &payer.openid,
                now - self.inner.settings.product_reuse_secs,
                now + MIN_PAY_WINDOW_SECS,
            )
            .await?
            {
                tracing::info!(order_no = %open.order_no, "reusing the caller's recent order of the product");
                return Ok(open);
            }
        }
        for _ in 0..RACE_RETRIES {
            let now = self.now();
            let new = NewOrder {
                order_no: new_order_no(now),
                user_id: payer.user_id,
                app_id: payer.app_id.clone(),
                openid: payer.openid.clone(),
                client_ip: client_ip.to_owned(),
                amount_fen: product.price_fen,
                description: product.name.clone(),
                attach: String::new(),
                product_id: product.id.clone(),
                state: OrderState::Created.as_str().into(),
                api: self.inner.wechat.api().as_str().into(),
                idempotency_key: key.clone(),
                created_at: now,
                updated_at: now,
                expires_at: now + self.inner.settings.order_ttl_secs,
                notify_url: self.inner.wechat.notify_url().to_owned(),
                sign_type: self.inner.wechat.sign_type().as_str().to_owned(),
            };
            // Sold through virtual payment (xpay/): bound to it from the start.
            let new = if self.is_xpay_product(&product.id) {
                NewOrder {
                    notify_url: String::new(),
                    sign_type: crate::xpay::XPAY_SIGN_TYPE.to_owned(),
                    ..new
                }
            } else {
                new
            };
            match store::insert_order(self.database(), &new).await {
                Ok(order) => {
                    count_transition(OrderState::Created);
                    return Ok(order);
                }
                Err(Error::Db(e)) if e.is_unique_violation() => {
                    // A concurrent first call with the same key won (or the order number
                    // collided: then try another number).
                    if let Some(key) = &key
                        && let Some(existing) =
                            store::find_by_idempotency_key(self.database(), payer.user_id, key)
                                .await?
                    {
                        return keyed(existing);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Internal("could not allocate an order number".into()))
    }

    /// The order `order_no` of the user `user_id`. Another user's order is NOT_FOUND rather
    /// than PERMISSION_DENIED, so order numbers cannot be probed for existence. A user id is
    /// required: 0 never means "any user" (that is [`Payments::get_order_as_admin`]).
    pub async fn get_order(&self, order_no: &str, user_id: i64) -> Result<Order, Error> {
        if user_id <= 0 {
            return Err(Error::MissingParameter("user_id"));
        }
        self.find_order(order_no, Some(user_id)).await
    }

    /// The order `order_no` whoever owns it: for internal admin callers only (the gRPC field
    /// `internal_admin`; the gateway never sets it).
    pub async fn get_order_as_admin(&self, order_no: &str) -> Result<Order, Error> {
        self.find_order(order_no, None).await
    }

    async fn find_order(&self, order_no: &str, owner: Option<i64>) -> Result<Order, Error> {
        check_order_no(order_no)?;
        match store::find_order(self.database(), order_no).await? {
            Some(order) if owner.is_none_or(|user_id| order.user_id == user_id) => Ok(order),
            _ => Err(Error::NotFound("order")),
        }
    }

    async fn reload(&self, order_no: &str) -> Result<Order, Error> {
        store::find_order(self.database(), order_no)
            .await?
            .ok_or_else(|| Error::Internal(format!("order {order_no} vanished")))
    }

    /// Prepares `wx.requestPayment` for an order of `payer` (or a new order of a product).
    ///
    /// Every unifiedorder of an order is the same request: the payer (appid, openid, IP) is
    /// bound to the order by the first prepare with a conditional UPDATE, and the rest comes
    /// from the order row. WeChat answers an identical repeat with the same prepay_id, so
    /// concurrent prepares of one order are harmless; the prepay_id is stored and reused while
    /// it is valid.
    ///
    /// `idempotency_key` applies to products (see `product_order`); an existing
    /// order is its own key.
    pub async fn prepare_jsapi_payment(
        &self,
        payer: &Payer,
        target: PayTarget,
        client_ip: &str,
        idempotency_key: &str,
    ) -> Result<(Order, RequestPaymentParams), Error> {
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
        for _ in 0..RACE_RETRIES {
            let now = self.now();
            if let Some(e) = state_error(&order, now) {
                return Err(e);
            }
            // Too late for a new unifiedorder (a live prepay_id is still handed out below).
            if order.live_prepay_id(now).is_none() && order.expires_at - now < MIN_PAY_WINDOW_SECS {
                return Err(Error::OrderState(
                    "order expires too soon to be paid; create a new one".into(),
                ));
            }
            if order.app_id.is_empty() {
                order = match store::bind_payer(
                    self.database(),
                    &order.order_no,
                    &payer.app_id,
                    &payer.openid,
                    &client_ip,
                    self.inner.wechat.notify_url(),
                    self.inner.wechat.sign_type().as_str(),
                    now,
                )
                .await?
                {
                    Some(bound) => bound,
                    // Someone else bound it (or it closed): the row says who pays, or why
                    // nobody can.
                    None => self.reload(&order.order_no).await?,
                };
                continue;
            }
            if order.app_id != payer.app_id || order.openid != payer.openid {
                return Err(Error::OrderState(
                    "order is being paid from another mini program".into(),
                ));
            }
            if order.sign_type == crate::xpay::XPAY_SIGN_TYPE {
                return Err(Error::OrderState(
                    "order is paid through virtual payment".into(),
                ));
            }
            if let Some(prepay_id) = order.live_prepay_id(now) {
                let params = self.payment_params(&order, prepay_id)?;
                return Ok((order, params));
            }
            let prepay_id = match self.place_unified_order(&order).await {
                Ok(id) => id,
                Err(WxError::OrderPaid) => {
                    self.sync_from_wechat(&order).await?;
                    return Err(Error::OrderState("order is already paid".into()));
                }
                Err(WxError::OrderClosed) => {
                    // Closed at WeChat but not here (a close that failed half way): finish it.
                    if store::close_if_unchanged(self.database(), &order, now).await? {
                        count_transition(OrderState::Closed);
                    }
                    return Err(Error::OrderState("order is closed".into()));
                }
                Err(e) => return Err(map_wx_error(e)),
            };
            let prepay_expires_at = now + PREPAY_REUSE_SECS;
            if let Some(prepared) = store::set_prepay(
                self.database(),
                &order.order_no,
                &prepay_id,
                prepay_expires_at,
                now,
            )
            .await?
            {
                if order.state() == Some(OrderState::Created) {
                    count_transition(OrderState::Paying);
                }
                let params = self.payment_params(&prepared, &prepay_id)?;
                return Ok((prepared, params));
            }
            // Paid or closed meanwhile. A close that raced our unifiedorder may have missed
            // the order at WeChat: close it there too, so the prepay_id is dead everywhere.
            order = self.reload(&order.order_no).await?;
            if order.state() == Some(OrderState::Closed)
                && let Err(e) = self
                    .inner
                    .wechat
                    .close(order.pay_api(), &order.app_id, &order.order_no)
                    .await
                && e != WxError::OrderClosed
            {
                tracing::warn!(order_no = %order.order_no, error = %e, "closing a raced unifiedorder failed");
            }
        }
        Err(Error::OrderState("order is changing; retry".into()))
    }

    /// Every unifiedorder of an order is byte-identical but for nonce_str and sign: its fields
    /// come from the row, including the notify_url and sign_type bound at the first prepare
    /// (the live configuration only for orders bound before those were kept).
    async fn place_unified_order(&self, order: &Order) -> Result<String, WxError> {
        let api = order.pay_api();
        let place = PlaceOrder {
            appid: &order.app_id,
            out_trade_no: &order.order_no,
            description: &order.description,
            amount_fen: order.amount_fen,
            client_ip: &order.client_ip,
            openid: &order.openid,
            attach: (!order.attach.is_empty()).then_some(order.attach.as_str()),
            expires_at: order.expires_at,
            notify_url: (!order.notify_url.is_empty()).then_some(order.notify_url.as_str()),
            sign_type: order.sign_type.parse().ok(),
        };
        let prepay_id = self.inner.wechat.place_order(api, &place).await?;
        tracing::info!(order_no = %order.order_no, api = api.as_str(), "order placed at WeChat");
        Ok(prepay_id)
    }

    /// `wx.requestPayment`'s signType must be the unifiedorder's: the order's.
    fn payment_params(
        &self,
        order: &Order,
        prepay_id: &str,
    ) -> Result<RequestPaymentParams, Error> {
        self.inner
            .wechat
            .payment_params(
                order.pay_api(),
                &order.app_id,
                order.sign_type.parse().ok(),
                prepay_id,
                self.now(),
            )
            .map_err(map_wx_error)
    }

    /// The merchant as the order was placed: its appid and the sign_type of its first
    /// unifiedorder (the configured one for an order not bound yet, or bound before the
    /// sign_type was kept).
    pub(crate) fn pay_config_of(&self, order: &Order) -> wechat::PayConfig {
        let mut pay = self.inner.wechat.config_for(&order.app_id);
        if let Ok(sign_type) = order.sign_type.parse() {
            pay.sign_type = sign_type;
        }
        pay
    }

    /// Asks WeChat about a placed order and applies a confirmed payment (same conditional
    /// UPDATE as the notify). Answers the outcome when WeChat says the order is paid.
    pub(crate) async fn sync_from_wechat(
        &self,
        order: &Order,
    ) -> Result<Option<PaidOutcome>, Error> {
        if order.app_id.is_empty() {
            return Ok(None);
        }
        let query = self
            .inner
            .wechat
            .query(order.pay_api(), &order.app_id, &order.order_no)
            .await
            .map_err(map_wx_error)?;
        // REFUND: paid, then (partly) refunded; the payment is recorded first, then the
        // refunds WeChat knows of (see refunds/flow.rs).
        if !matches!(query.state, TradeState::Success | TradeState::Refund) {
            return Ok(None);
        }
        let transaction_id = query.transaction_id.clone().unwrap_or_default();
        if query.total_fen != Some(order.amount_fen) || transaction_id.is_empty() {
            tracing::error!(
                order_no = %order.order_no,
                amount_fen = order.amount_fen,
                total_fee = ?query.total_fen,
                "orderquery reports a payment that does not match the order; not applied"
            );
            return Err(Error::Internal(
                "WeChat's payment does not match the order".into(),
            ));
        }
        let now = self.now();
        let paid_at = query.paid_at.unwrap_or(now);
        let outcome = store::mark_paid(
            self.database(),
            &order.order_no,
            &transaction_id,
            paid_at,
            now,
        )
        .await?;
        log_paid_outcome(&outcome, "orderquery");
        crate::subscribe::on_paid(self, &outcome).await;
        crate::shipping::worker::on_paid(self, &outcome).await;
        if query.state == TradeState::Refund {
            self.sync_refunds_from_wechat(outcome.order()).await?;
        }
        Ok(Some(outcome))
    }

    /// Closes an order of `user_id` here and at WeChat. CLOSED is idempotent; PAID is
    /// ORDER_STATE. When WeChat says the order was paid meanwhile, the payment is applied and
    /// the close refused.
    pub async fn close_order(&self, order_no: &str, user_id: i64) -> Result<Order, Error> {
        let order = self.get_order(order_no, user_id).await?;
        Ok(self.close(order).await?.0)
    }

    /// [`Payments::close_order`] for an internal admin caller: whoever owns the order.
    pub async fn close_order_as_admin(&self, order_no: &str) -> Result<Order, Error> {
        let order = self.get_order_as_admin(order_no).await?;
        Ok(self.close(order).await?.0)
    }

    /// Closes `order`; the flag says whether this call closed it.
    pub(crate) async fn close(&self, order: Order) -> Result<(Order, bool), Error> {
        match self.try_close(order).await? {
            Closing::Closed(order) => Ok((order, true)),
            Closing::WasClosed(order) => Ok((order, false)),
            Closing::PaidAtWechat(_) => Err(Error::OrderState("order is already paid".into())),
        }
    }

    /// [`Payments::close`], telling apart an order WeChat reports paid: then its payment is
    /// applied instead, and the outcome says whether this call applied it (the reconciler
    /// counts only its own).
    pub(crate) async fn try_close(&self, mut order: Order) -> Result<Closing, Error> {
        for _ in 0..RACE_RETRIES {
            match order.state() {
                Some(OrderState::Closed) => return Ok(Closing::WasClosed(order)),
                Some(OrderState::Created | OrderState::Paying) => {}
                _ => {
                    return Err(state_error(&order, self.now())
                        .unwrap_or_else(|| Error::OrderState("order cannot be closed".into())));
                }
            }
            // A virtual order has no closeorder (nor is it a WeChat Pay order): query_order
            // says whether it was paid before it is closed here.
            if order.sign_type == crate::xpay::XPAY_SIGN_TYPE {
                if let Some(outcome) = self.xpay_before_close(&order).await? {
                    return Ok(Closing::PaidAtWechat(Some(outcome)));
                }
            }
            // A bound order may have been placed at WeChat (even if we never stored a
            // prepay_id: a unifiedorder may be in flight or its answer lost), so close it
            // there first; only then here.
            else if !order.app_id.is_empty() {
                match self
                    .inner
                    .wechat
                    .close(order.pay_api(), &order.app_id, &order.order_no)
                    .await
                {
                    Ok(()) | Err(WxError::OrderClosed | WxError::OrderNotExist) => {}
                    Err(WxError::OrderPaid) => {
                        let outcome = self.sync_from_wechat(&order).await?;
                        return Ok(Closing::PaidAtWechat(outcome));
                    }
                    Err(e) => return Err(map_wx_error(e)),
                }
            }
            let now = self.now();
            if store::close_if_unchanged(self.database(), &order, now).await? {
                count_transition(OrderState::Closed);
                tracing::info!(order_no = %order.order_no, "order closed");
                return Ok(Closing::Closed(self.reload(&order.order_no).await?));
            }
            // Paid, closed, bound or given a prepay_id meanwhile: look again.
            order = self.reload(&order.order_no).await?;
        }
        Err(Error::OrderState("order is changing; retry".into()))
    }
}

/// What closing an order came to (see [`Payments::try_close`]).
#[derive(Debug)]
pub(crate) enum Closing {
    /// This call closed it.
    Closed(Order),
    /// It was closed already.
    WasClosed(Order),
    /// WeChat says it is paid: its payment was synced instead (None: WeChat's query did not
    /// confirm it yet).
    PaidAtWechat(Option<PaidOutcome>),
}

pub(crate) fn log_paid_outcome(outcome: &PaidOutcome, source: &'static str) {
    match outcome {
        PaidOutcome::Applied(o) => {
            count_transition(OrderState::Paid);
            tracing::info!(order_no = %o.order_no, source, "order paid");
        }
        PaidOutcome::Duplicate(o) => {
            tracing::debug!(order_no = %o.order_no, source, "payment already applied");
        }
        PaidOutcome::OtherTransaction(o) => tracing::error!(
            order_no = %o.order_no, source,
            "order already paid by another transaction: needs manual review"
        ),
        PaidOutcome::PaidAfterClose(o) => tracing::error!(
            order_no = %o.order_no, source,
            "payment for a closed order: refund it manually"
        ),
        PaidOutcome::Unexpected(o) => tracing::error!(
            order_no = %o.order_no, state = %o.state, source,
            "payment for an order in an unexpected state: needs manual review"
        ),
    }
}
