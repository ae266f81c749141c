//! `wxmp.pay.v1.PayService` over tonic: proto in, [`Payments`] call, proto out.

use tonic::{Request, Response, Status};
use wxmp_proto::pay::v1::{
    self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target,
};

use crate::{
    error::Error,
    payments::{CreateOrder, PayTarget, Payer, Payments},
};

/// The fully qualified service name, as reported by gRPC health.
pub const SERVICE_NAME: &str = "wxmp.pay.v1.PayService";

#[tonic::async_trait]
impl PayService for Payments {
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let r = request.into_inner();
        let order = Payments::create_order(
            self,
            CreateOrder {
                user_id: r.user_id,
                amount_fen: r.amount_fen,
                description: r.description,
                attach: r.attach,
                idempotency_key: r.idempotency_key,
            },
        )
        .await?;
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order.to_proto()),
        }))
    }

    async fn prepare_jsapi_payment(
        &self,
        request: Request<pb::PrepareJsapiPaymentRequest>,
    ) -> Result<Response<pb::PrepareJsapiPaymentResponse>, Status> {
        let r = request.into_inner();
        let principal = r.principal.ok_or(Error::MissingParameter("principal"))?;
        let target = match r.target {
            Some(Target::OrderNo(no)) => PayTarget::Order(no),
            Some(Target::ProductId(id)) => PayTarget::Product(id),
            None => return Err(Error::MissingParameter("order_no or product_id").into()),
        };
        let payer = Payer {
            user_id: principal.user_id,
            app_id: principal.app_id,
            openid: principal.openid,
        };
        let (order, params) = self
            .prepare_jsapi_payment(&payer, target, &r.client_ip)
            .await?;
        Ok(Response::new(pb::PrepareJsapiPaymentResponse {
            order: Some(order.to_proto()),
            params: Some(pb::JsapiParams {
                app_id: params.app_id,
                time_stamp: params.time_stamp,
                nonce_str: params.nonce_str,
                package: params.package,
                sign_type: params.sign_type,
                pay_sign: params.pay_sign,
            }),
        }))
    }

    async fn handle_pay_notify(
        &self,
        request: Request<pb::HandlePayNotifyRequest>,
    ) -> Result<Response<pb::HandlePayNotifyResponse>, Status> {
        let reply = self.handle_pay_notify(&request.into_inner().raw_body).await;
        Ok(Response::new(pb::HandlePayNotifyResponse {
            reply_xml: reply.reply_xml,
            accepted: reply.accepted,
            verdict: reply.verdict.to_owned(),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let r = request.into_inner();
        let order = Payments::get_order(self, &r.order_no, r.user_id).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order.to_proto()),
        }))
    }

    async fn close_order(
        &self,
        request: Request<pb::CloseOrderRequest>,
    ) -> Result<Response<pb::CloseOrderResponse>, Status> {
        let r = request.into_inner();
        let order = Payments::close_order(self, &r.order_no, r.user_id).await?;
        Ok(Response::new(pb::CloseOrderResponse {
            order: Some(order.to_proto()),
        }))
    }

    async fn list_products(
        &self,
        _request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        Ok(Response::new(pb::ListProductsResponse {
            products: self
                .products()
                .iter()
                .map(|p| pb::Product {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    price_fen: p.price_fen,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(serial = %request.get_ref().serial))]
    async fn handle_pay_notify_v3(
        &self,
        request: Request<pb::HandlePayNotifyV3Request>,
    ) -> Result<Response<pb::HandlePayNotifyV3Response>, Status> {
        let r = request.into_inner();
        let headers = wechat::pay::v3::SignatureHeaders {
            timestamp: r.timestamp,
            nonce: r.nonce,
            signature: r.signature,
            serial: r.serial,
        };
        let reply = self.handle_pay_notify_v3(&headers, &r.raw_body).await;
        Ok(Response::new(pb::HandlePayNotifyV3Response {
            accepted: reply.accepted,
            verdict: reply.verdict.to_owned(),
            message: reply.message,
        }))
    }
}
