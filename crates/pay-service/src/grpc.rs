//! `wxmp.pay.v1.PayService` over tonic: proto in, [`Payments`] call, proto out.

use tonic::{Request, Response, Status};
use wxmp_proto::pay::v1::{
    self as pb, pay_service_server::PayService, prepare_jsapi_payment_request::Target,
};

use crate::{
    error::Error,
    events::{EventKind, webhooks},
    orders::{CreateOrder, PayTarget, Payer},
    payments::Payments,
    refunds::RefundOrder,
    shipping::{ShipParcel, ShipRequest},
};

/// The fully qualified service name, as reported by gRPC health.
pub const SERVICE_NAME: &str = "wxmp.pay.v1.PayService";

/// Whose orders a GetOrder/CloseOrder may touch: one user's (Some), or with `internal_admin`
/// anyone's (None). A user id of 0 without the flag is a missing parameter, never "any user";
/// both at once is contradictory.
fn scope(user_id: i64, internal_admin: bool) -> Result<Option<i64>, Error> {
    match (user_id, internal_admin) {
        (0, true) => Ok(None),
        (_, true) => Err(Error::InvalidArgument(
            "internal_admin reads take no user_id".into(),
        )),
        (id, false) if id > 0 => Ok(Some(id)),
        (0, false) => Err(Error::MissingParameter("user_id")),
        (_, false) => Err(Error::InvalidArgument("user_id must be positive".into())),
    }
}

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

    async fn prepare_virtual_payment(
        &self,
        request: Request<pb::PrepareJsapiPaymentRequest>,
    ) -> Result<Response<pb::PrepareVirtualPaymentResponse>, Status> {
        let r = request.into_inner();
        let (payer, target) = payer_and_target(r.principal, r.target)?;
        if !self.is_xpay_target(&target).await? {
            return Err(Error::InvalidArgument(
                "not sold through virtual payment (use PrepareJsapiPayment)".into(),
            )
            .into());
        }
        let (order, params) = Payments::prepare_virtual_payment(
            self,
            &payer,
            target,
            &r.client_ip,
            &r.idempotency_key,
        )
        .await?;
        Ok(Response::new(pb::PrepareVirtualPaymentResponse {
            order: Some(order.to_proto()),
            params: Some(virtual_params(params)),
        }))
    }

    async fn prepare_jsapi_payment(
        &self,
        request: Request<pb::PrepareJsapiPaymentRequest>,
    ) -> Result<Response<pb::PrepareJsapiPaymentResponse>, Status> {
        let r = request.into_inner();
        let (payer, target) = payer_and_target(r.principal, r.target)?;
        if self.is_xpay_target(&target).await? {
            let (order, params) = self
                .prepare_virtual_payment(&payer, target, &r.client_ip, &r.idempotency_key)
                .await?;
            return Ok(Response::new(pb::PrepareJsapiPaymentResponse {
                order: Some(order.to_proto()),
                params: None,
                virtual_payment: Some(virtual_params(params)),
            }));
        }
        let (order, params) = self
            .prepare_jsapi_payment(&payer, target, &r.client_ip, &r.idempotency_key)
            .await?;
        Ok(Response::new(pb::PrepareJsapiPaymentResponse {
            virtual_payment: None,
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
        // The gateway marks notifies of a sender over its budget of failed signatures.
        let throttled = sender_throttled(&request);
        let body = request.into_inner().raw_body;
        let reply = if throttled {
            self.handle_throttled_pay_notify(&body).await
        } else {
            self.handle_pay_notify(&body).await
        };
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
        let order = match scope(r.user_id, r.internal_admin)? {
            Some(user_id) => Payments::get_order(self, &r.order_no, user_id).await?,
            None => self.get_order_as_admin(&r.order_no).await?,
        };
        let shipment = self.shipment(&order.order_no).await?;
        let mut order = order.to_proto();
        order.shipping = shipment.map(|s| s.to_proto());
        Ok(Response::new(pb::GetOrderResponse { order: Some(order) }))
    }

    async fn close_order(
        &self,
        request: Request<pb::CloseOrderRequest>,
    ) -> Result<Response<pb::CloseOrderResponse>, Status> {
        let r = request.into_inner();
        let order = match scope(r.user_id, r.internal_admin)? {
            Some(user_id) => Payments::close_order(self, &r.order_no, user_id).await?,
            None => self.close_order_as_admin(&r.order_no).await?,
        };
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

    type WatchOrderEventsStream = crate::events::watch::EventStream;

    #[tracing::instrument(skip_all, fields(after_id))]
    async fn watch_order_events(
        &self,
        request: Request<pb::WatchOrderEventsRequest>,
    ) -> Result<Response<Self::WatchOrderEventsStream>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("after_id", r.after_id);
        if r.after_id < 0 {
            return Err(Error::InvalidArgument("after_id must not be negative".into()).into());
        }
        let kinds = r
            .kinds
            .iter()
            .map(|&k| {
                pb::OrderEventKind::try_from(k)
                    .ok()
                    .and_then(EventKind::from_proto)
                    .ok_or_else(|| Error::InvalidArgument(format!("unknown event kind {k}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(self.watch_events(r.after_id, kinds)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let r = request.into_inner();
        let state = match r.state.as_str() {
            "" => webhooks::DEAD,
            s @ (webhooks::PENDING | webhooks::DELIVERED | webhooks::DEAD) => s,
            _ => {
                return Err(Error::InvalidArgument(
                    "state must be PENDING, DELIVERED or DEAD".into(),
                )
                .into());
            }
        };
        let limit = match r.limit {
            0 => 100,
            n @ 1..=1000 => i64::from(n),
            _ => return Err(Error::InvalidArgument("limit must be 1..=1000".into()).into()),
        };
        let deliveries = webhooks::list(self.database(), state, limit).await?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries,
        }))
    }

    #[tracing::instrument(skip_all, fields(order_no = %request.get_ref().order_no))]
    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let r = request.into_inner();
        let (refund, order) = Payments::refund(
            self,
            RefundOrder {
                order_no: r.order_no,
                refund_fen: r.refund_fen,
                reason: r.reason,
                out_refund_no: r.out_refund_no,
            },
        )
        .await?;
        Ok(Response::new(pb::RefundResponse {
            refund: Some(refund.to_proto()),
            order: Some(order.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all, fields(out_refund_no = %request.get_ref().out_refund_no))]
    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::GetRefundResponse>, Status> {
        let refund = Payments::get_refund(self, &request.into_inner().out_refund_no).await?;
        Ok(Response::new(pb::GetRefundResponse {
            refund: Some(refund.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all, fields(out_refund_no = %request.get_ref().out_refund_no))]
    async fn apply_abnormal_refund(
        &self,
        request: Request<pb::ApplyAbnormalRefundRequest>,
    ) -> Result<Response<pb::ApplyAbnormalRefundResponse>, Status> {
        let r = request.into_inner();
        let target = match pb::AbnormalRefundTarget::try_from(r.target) {
            Ok(pb::AbnormalRefundTarget::UserBankCard) => {
                crate::refunds::AbnormalTarget::UserBankCard {
                    bank_type: r.bank_type,
                    bank_account: r.bank_account,
                    real_name: r.real_name,
                }
            }
            Ok(pb::AbnormalRefundTarget::MerchantBankCard) => {
                if !(r.bank_type.is_empty() && r.bank_account.is_empty() && r.real_name.is_empty())
                {
                    return Err(Error::InvalidArgument(
                        "MERCHANT_BANK_CARD takes no bank_type, bank_account or real_name".into(),
                    )
                    .into());
                }
                crate::refunds::AbnormalTarget::MerchantBankCard
            }
            _ => return Err(Error::MissingParameter("target").into()),
        };
        let refund = Payments::apply_abnormal_refund(self, &r.out_refund_no, target).await?;
        Ok(Response::new(pb::ApplyAbnormalRefundResponse {
            refund: Some(refund.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all, fields(order_no = %request.get_ref().order_no))]
    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Result<Response<pb::ListRefundsResponse>, Status> {
        let refunds = Payments::list_refunds(self, &request.into_inner().order_no).await?;
        Ok(Response::new(pb::ListRefundsResponse {
            refunds: refunds
                .iter()
                .map(super::refunds::rules::Refund::to_proto)
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn handle_refund_notify(
        &self,
        request: Request<pb::HandleRefundNotifyRequest>,
    ) -> Result<Response<pb::HandleRefundNotifyResponse>, Status> {
        // The gateway marks notifies of a sender over its budget of forged ones.
        let throttled = sender_throttled(&request);
        let body = request.into_inner().raw_body;
        let reply = if throttled {
            self.handle_throttled_refund_notify(&body).await
        } else {
            Payments::handle_refund_notify(self, &body).await
        };
        Ok(Response::new(pb::HandleRefundNotifyResponse {
            reply_xml: reply.reply_xml,
            accepted: reply.accepted,
            verdict: reply.verdict.to_owned(),
        }))
    }

    #[tracing::instrument(skip_all, fields(serial = %request.get_ref().serial))]
    async fn handle_pay_notify_v3(
        &self,
        request: Request<pb::HandlePayNotifyV3Request>,
    ) -> Result<Response<pb::HandlePayNotifyV3Response>, Status> {
        let throttled = sender_throttled(&request);
        let r = request.into_inner();
        let headers = wechat::pay::v3::SignatureHeaders {
            timestamp: r.timestamp,
            nonce: r.nonce,
            signature: r.signature,
            serial: r.serial,
        };
        let reply = if throttled {
            self.handle_throttled_pay_notify_v3(&headers, &r.raw_body)
                .await
        } else {
            self.handle_pay_notify_v3(&headers, &r.raw_body).await
        };
        Ok(Response::new(pb::HandlePayNotifyV3Response {
            accepted: reply.accepted,
            verdict: reply.verdict.to_owned(),
            message: reply.message,
        }))
    }

    #[tracing::instrument(skip_all, fields(serial = %request.get_ref().serial))]
    async fn handle_refund_notify_v3(
        &self,
        request: Request<pb::HandleRefundNotifyV3Request>,
    ) -> Result<Response<pb::HandleRefundNotifyV3Response>, Status> {
        let throttled = sender_throttled(&request);
        let r = request.into_inner();
        let headers = wechat::pay::v3::SignatureHeaders {
            timestamp: r.timestamp,
            nonce: r.nonce,
            signature: r.signature,
            serial: r.serial,
        };
        let reply = if throttled {
            self.handle_throttled_refund_notify_v3(&headers, &r.raw_body)
                .await
        } else {
            self.handle_refund_notify_v3(&headers, &r.raw_body).await
        };
        Ok(Response::new(pb::HandleRefundNotifyV3Response {
            accepted: reply.accepted,
            verdict: reply.verdict.to_owned(),
            message: reply.message,
        }))
    }

    #[tracing::instrument(skip_all, fields(bill_date = %request.get_ref().bill_date))]
    async fn reconcile_bills(
        &self,
        request: Request<pb::ReconcileBillsRequest>,
    ) -> Result<Response<pb::BillReport>, Status> {
        let date = crate::bills::parse_date(&request.into_inner().bill_date)?;
        let report = Payments::reconcile_bills(self, date).await?;
        Ok(Response::new(report.to_proto()))
    }

    #[tracing::instrument(skip_all, fields(bill_date = %request.get_ref().bill_date))]
    async fn get_bill_report(
        &self,
        request: Request<pb::GetBillReportRequest>,
    ) -> Result<Response<pb::BillReport>, Status> {
        let date = crate::bills::parse_date(&request.into_inner().bill_date)?;
        let report = Payments::bill_report(self, date).await?;
        Ok(Response::new(report.to_proto()))
    }

    #[tracing::instrument(skip_all, fields(bill_date = %request.get_ref().bill_date))]
    async fn resolve_bill_mismatch(
        &self,
        request: Request<pb::ResolveBillMismatchRequest>,
    ) -> Result<Response<pb::BillMismatch>, Status> {
        let r = request.into_inner();
        let date = crate::bills::parse_date(&r.bill_date)?;
        let row = Payments::resolve_bill_mismatch(self, date, &r.kind, &r.key, &r.note).await?;
        Ok(Response::new(row.to_proto()))
    }

    #[tracing::instrument(skip_all, fields(order_no = %request.get_ref().order_no))]
    async fn ship(
        &self,
        request: Request<pb::ShipRequest>,
    ) -> Result<Response<pb::ShipResponse>, Status> {
        let r = request.into_inner();
        let (order, shipment) = Payments::ship(
            self,
            ShipRequest {
                order_no: r.order_no,
                logistics_type: r.logistics_type,
                delivery_mode: r.delivery_mode,
                parcels: r
                    .shipping_list
                    .into_iter()
                    .map(|p| ShipParcel {
                        tracking_no: p.tracking_no,
                        express_company: p.express_company,
                        item_desc: p.item_desc,
                        consignor_contact: p.consignor_contact,
                        receiver_contact: p.receiver_contact,
                    })
                    .collect(),
                is_all_delivered: r.is_all_delivered,
            },
        )
        .await?;
        let mut order = order.to_proto();
        order.shipping = Some(shipment.to_proto());
        Ok(Response::new(pb::ShipResponse { order: Some(order) }))
    }

    #[tracing::instrument(skip_all, fields(event = %request.get_ref().event))]
    async fn handle_message_push(
        &self,
        request: Request<pb::HandleMessagePushRequest>,
    ) -> Result<Response<pb::HandleMessagePushResponse>, Status> {
        let r = request.into_inner();
        let verdict =
            Payments::handle_message_push(self, &r.app_id, &r.event, &r.message_json, &r.dedup_key)
                .await?;
        Ok(Response::new(pb::HandleMessagePushResponse {
            verdict: verdict.to_owned(),
        }))
    }

    async fn get_coin_balance(
        &self,
        request: Request<pb::GetCoinBalanceRequest>,
    ) -> Result<Response<pb::GetCoinBalanceResponse>, Status> {
        let r = request.into_inner();
        let payer = payer_of(r.principal)?;
        let b = Payments::coin_balance(self, &payer, &r.client_ip).await?;
        Ok(Response::new(pb::GetCoinBalanceResponse {
            balance: b.balance,
            present_balance: b.present_balance,
        }))
    }

    async fn spend_coins(
        &self,
        request: Request<pb::SpendCoinsRequest>,
    ) -> Result<Response<pb::SpendCoinsResponse>, Status> {
        let r = request.into_inner();
        let payer = payer_of(r.principal)?;
        let spend = Payments::spend_coins(
            self,
            &payer,
            &r.client_ip,
            r.amount,
            &r.idempotency_key,
            &r.remark,
        )
        .await?;
        Ok(Response::new(pb::SpendCoinsResponse {
            spend: Some(spend.to_proto()),
        }))
    }

    async fn cancel_coin_spend(
        &self,
        request: Request<pb::CancelCoinSpendRequest>,
    ) -> Result<Response<pb::CancelCoinSpendResponse>, Status> {
        let r = request.into_inner();
        let payer = payer_of(r.principal)?;
        let spend = Payments::cancel_coin_spend(self, &payer, &r.client_ip, &r.spend_no).await?;
        Ok(Response::new(pb::CancelCoinSpendResponse {
            spend: Some(spend.to_proto()),
        }))
    }
}

/// The buyer and what they pay for, as PrepareJsapiPayment and PrepareVirtualPayment take
/// them (the principal checked first).
fn payer_and_target(
    principal: Option<wxmp_proto::auth::v1::Principal>,
    target: Option<Target>,
) -> Result<(Payer, PayTarget), Error> {
    let payer = payer_of(principal)?;
    let target = match target {
        Some(Target::OrderNo(no)) => PayTarget::Order(no),
        Some(Target::ProductId(id)) => PayTarget::Product(id),
        None => return Err(Error::MissingParameter("order_no or product_id")),
    };
    Ok((payer, target))
}

/// The user a payment or coin RPC acts for.
fn payer_of(principal: Option<wxmp_proto::auth::v1::Principal>) -> Result<Payer, Error> {
    let p = principal.ok_or(Error::MissingParameter("principal"))?;
    Ok(Payer {
        user_id: p.user_id,
        app_id: p.app_id,
        openid: p.openid,
    })
}

/// Whether the gateway marked the notify's sender as throttled (too many forged signatures
/// from its address): its notify is authenticated before anything else.
fn sender_throttled<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .contains_key(service_kit::grpc::NOTIFY_SENDER_THROTTLED)
}

/// The `requestVirtualPayment` parameters on the wire.
fn virtual_params(p: wechat::xpay::VirtualPaymentParams) -> pb::VirtualPaymentParams {
    pb::VirtualPaymentParams {
        sign_data: p.sign_data,
        pay_sig: p.pay_sig,
        signature: p.signature,
        mode: p.mode,
    }
}
