//! Paying: wx.requestPayment parameters, the order's state, the catalog.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use wxmp_proto::pay::v1::{
    GetOrderRequest, ListProductsRequest, Order, OrderShipping, OrderState,
    PrepareJsapiPaymentRequest, ShippingState, prepare_jsapi_payment_request::Target,
};

use super::authenticate;
use crate::{envelope::Envelope, openapi::ErrorEnvelope};
use crate::{
    envelope::{ApiError, Code, ok},
    extract::{self, JsonBody},
    request_id::RequestId,
    server::AppState,
};

/// WeChat's limit for out_trade_no.
const MAX_ORDER_NO: usize = 32;
const MAX_PRODUCT_ID: usize = 64;
/// pay-service's limit for idempotency keys.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// The header a client retrying `POST /pay/` may send (the body's `idempotency_key` also works).
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The body of `POST /pay/`. There is deliberately no amount: the price always comes from the
/// server (the order or the catalog); amount fields a client sends are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PayBody {
    /// The session token, when not sent as `Authorization: Bearer`.
    token: Option<String>,
    /// An existing order of the caller (`orderNo` accepted); or give `product_id`.
    #[serde(alias = "orderNo")]
    order_no: Option<String>,
    /// A catalog product (`productId` accepted): a new order at the catalog price.
    #[serde(alias = "productId")]
    product_id: Option<String>,
    /// One per purchase (`idempotencyKey` accepted; or the `Idempotency-Key` header): a retry
    /// with the same key answers the same order.
    #[serde(alias = "idempotencyKey")]
    idempotency_key: Option<String>,
}

/// Exactly the keys `wx.requestPayment` takes, plus the order to poll afterwards.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PayData {
    app_id: String,
    time_stamp: String,
    nonce_str: String,
    package: String,
    sign_type: String,
    pay_sign: String,
    #[serde(rename = "order_no")]
    order_no: String,
}

/// For a product sold through virtual payment (虚拟支付): exactly the keys
/// `wx.requestVirtualPayment` takes (`signData` passed on verbatim), plus the order to poll.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VirtualPayData {
    sign_data: String,
    pay_sig: String,
    signature: String,
    mode: String,
    #[serde(rename = "order_no")]
    order_no: String,
}

fn non_blank(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// The `Idempotency-Key` header or the body's `idempotency_key` ('' when neither); both must
/// agree when both are sent.
fn idempotency_key(req: &HttpRequest, body: &PayBody) -> Result<String, ApiError> {
    let header = match req.headers().get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("invalid idempotency key"))?
                .trim(),
        ),
    };
    let key = match (
        header.filter(|h| !h.is_empty()),
        non_blank(&body.idempotency_key),
    ) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::invalid(
                "Idempotency-Key and idempotency_key differ",
            ));
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => return Ok(String::new()),
    };
    Ok(extract::checked_id(key, "idempotency key", MAX_IDEMPOTENCY_KEY)?.to_owned())
}

/// `POST /pay/ {token, order_no | product_id, idempotency_key?}` (or header `Idempotency-Key`)
/// → wx.requestPayment parameters.
#[utoipa::path(post, path = "/pay/", tag = "pay",
    summary = "wx.requestPayment parameters for an order or a product (pay.PrepareJsapiPayment)",
    description = "Also served as `/pay`. Never takes an amount: the price is the order's or the catalog's. A product bought with the same `Idempotency-Key` header (or `idempotency_key` field), or again within PAY_PRODUCT_REUSE_SECS without one, answers the same order.",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-128 characters of [0-9A-Za-z_-]; one per purchase")),
    request_body(content = PayBody, content_type = "application/json"),
    security(("bearer" = []), ("body_token" = [])),
    responses(
        (status = 200, description = "code 200: pass everything but order_no to wx.requestPayment; for a virtual-payment product (PAY_XPAY_PRODUCTS) the data is VirtualPayData, for wx.requestVirtualPayment", body = Envelope<PayData>),
        (status = 400, description = "201 missing order_no/product_id or token, 203 both given or malformed", body = ErrorEnvelope),
        (status = 401, description = "202 invalid token", body = ErrorEnvelope),
        (status = 403, description = "206 not the caller's order", body = ErrorEnvelope),
        (status = 404, description = "207 no such order or product", body = ErrorEnvelope),
        (status = 409, description = "209 the order is paid, closed or expired; 210 the idempotency key was used for another product", body = ErrorEnvelope),
        (status = 413, description = "204 body too large", body = ErrorEnvelope),
        (status = 502, description = "211 WeChat answered an error", body = ErrorEnvelope),
        (status = 503, description = "212 WeChat unavailable, 213 a service unavailable", body = ErrorEnvelope),
    ))]
pub async fn pay(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    JsonBody(body): JsonBody<PayBody>,
) -> Result<HttpResponse, ApiError> {
    let target = match (non_blank(&body.order_no), non_blank(&body.product_id)) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("give order_no or product_id, not both"));
        }
        (None, None) => return Err(ApiError::missing("order_no or product_id")),
        (Some(no), None) => {
            Target::OrderNo(extract::checked_id(no, "order_no", MAX_ORDER_NO)?.to_owned())
        }
        (None, Some(id)) => {
            Target::ProductId(extract::checked_id(id, "product_id", MAX_PRODUCT_ID)?.to_owned())
        }
    };
    let idempotency_key = idempotency_key(&req, &body)?;
    let principal = authenticate(&state, &request_id, &req, body.token.as_deref()).await?;
    let client_ip = extract::client_ip(&req, &state.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let upstreams = &state.upstreams;
    let response = upstreams
        .pay()
        .prepare_jsapi_payment(upstreams.request(
            &request_id,
            PrepareJsapiPaymentRequest {
                principal: Some(principal),
                target: Some(target),
                client_ip,
                idempotency_key,
            },
        ))
        .await?
        .into_inner();
    if let (Some(v), Some(order)) = (&response.virtual_payment, &response.order) {
        return Ok(ok(VirtualPayData {
            sign_data: v.sign_data.clone(),
            pay_sig: v.pay_sig.clone(),
            signature: v.signature.clone(),
            mode: v.mode.clone(),
            order_no: order.order_no.clone(),
        }));
    }
    let (Some(params), Some(order)) = (response.params, response.order) else {
        tracing::error!("pay-service answered PrepareJsapiPayment without params or order");
        return Err(Code::Internal.into());
    };
    Ok(ok(PayData {
        app_id: params.app_id,
        time_stamp: params.time_stamp,
        nonce_str: params.nonce_str,
        package: params.package,
        sign_type: params.sign_type,
        pay_sign: params.pay_sign,
        order_no: order.order_no,
    }))
}

/// An order as its owner sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    order_no: String,
    /// CREATED, PAYING, PAID or CLOSED (later states may be added: treat unknown ones as pending).
    #[schema(value_type = String, example = "PAID")]
    state: &'static str,
    amount_fen: i64,
    description: String,
    product_id: String,
    transaction_id: String,
    created_at: i64,
    paid_at: i64,
    expires_at: i64,
    /// Fen refunded so far (a partly refunded order stays PAID).
    refunded_fen: i64,
    /// Shipping as WeChat knows it (null until the merchant ships): what a mini program shows
    /// as "shipped" / "received", and what releases the payment to the merchant (SETTLED).
    shipping: Option<ShippingView>,
}

/// The shipping of an order as its owner sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShippingView {
    /// PENDING_UPLOAD, SHIPPED, RECEIVED or SETTLED.
    #[schema(value_type = String, example = "SHIPPED")]
    state: &'static str,
    /// WeChat's logistics_type: 1 express, 2 same-city, 3 virtual, 4 self pickup.
    logistics_type: i32,
    /// Unix seconds; 0 until it happened.
    shipped_at: i64,
    received_at: i64,
    settled_at: i64,
}

impl From<OrderShipping> for ShippingView {
    fn from(s: OrderShipping) -> Self {
        let state = match s.state() {
            ShippingState::Unspecified => "UNKNOWN",
            ShippingState::PendingUpload => "PENDING_UPLOAD",
            ShippingState::Shipped => "SHIPPED",
            ShippingState::Received => "RECEIVED",
            ShippingState::Settled => "SETTLED",
        };
        Self {
            state,
            logistics_type: s.logistics_type,
            shipped_at: s.shipped_at,
            received_at: s.received_at,
            settled_at: s.settled_at,
        }
    }
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        let state = match o.state() {
            OrderState::Unspecified => "UNKNOWN",
            other => other.as_str_name(),
        };
        Self {
            order_no: o.order_no,
            state,
            amount_fen: o.amount_fen,
            description: o.description,
            product_id: o.product_id,
            transaction_id: o.transaction_id,
            created_at: o.created_at,
            paid_at: o.paid_at,
            expires_at: o.expires_at,
            refunded_fen: o.refunded_fen,
            shipping: o.shipping.map(ShippingView::from),
        }
    }
}

/// `GET /orders/{order_no}` (token in `Authorization: Bearer`): the caller's own order only.
#[utoipa::path(get, path = "/orders/{order_no}", tag = "pay",
    summary = "The caller's order (pay.GetOrder); poll it after wx.requestPayment",
    params(("order_no" = String, Path, description = "1-32 of [0-9A-Za-z_-]")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "code 200", body = Envelope<OrderView>),
        (status = 400, description = "201 token missing, 203 invalid order_no", body = ErrorEnvelope),
        (status = 401, description = "202 invalid token", body = ErrorEnvelope),
        (status = 404, description = "207 no such order of the caller", body = ErrorEnvelope),
        (status = 503, description = "213 pay-service unavailable", body = ErrorEnvelope),
    ))]
pub async fn order(
    state: web::Data<AppState>,
    request_id: RequestId,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order_no = extract::checked_id(&path, "order_no", MAX_ORDER_NO)?.to_owned();
    let principal = authenticate(&state, &request_id, &req, None).await?;
    let upstreams = &state.upstreams;
    let response = upstreams
        .pay()
        .get_order(upstreams.request(
            &request_id,
            GetOrderRequest {
                order_no,
                // Scopes the lookup to the caller: someone else's order is NOT_FOUND.
                user_id: principal.user_id,
                internal_admin: false,
            },
        ))
        .await?
        .into_inner();
    match response.order {
        Some(order) if order.user_id == principal.user_id => Ok(ok(OrderView::from(order))),
        // Defence in depth: never show another user's order, whatever the service answers.
        Some(_) => Err(Code::NotFound.into()),
        None => Err(Code::NotFound.into()),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ProductView {
    id: String,
    name: String,
    price_fen: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ProductsData {
    products: Vec<ProductView>,
}

/// `GET /products`: the catalog (public, no token).
#[utoipa::path(get, path = "/products", tag = "pay",
    summary = "The product catalog (pay.ListProducts)",
    description = "Also served as `/products/`. Public: no token.",
    responses(
        (status = 200, description = "code 200", body = Envelope<ProductsData>),
        (status = 503, description = "213 pay-service unavailable", body = ErrorEnvelope),
    ))]
pub async fn products(
    state: web::Data<AppState>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let upstreams = &state.upstreams;
    let response = upstreams
        .pay()
        .list_products(upstreams.request(&request_id, ListProductsRequest {}))
        .await?
        .into_inner();
    Ok(ok(ProductsData {
        products: response
            .products
            .into_iter()
            .map(|p| ProductView {
                id: p.id,
                name: p.name,
                price_fen: p.price_fen,
            })
            .collect(),
    }))
}
