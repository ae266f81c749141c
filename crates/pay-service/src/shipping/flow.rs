//! `Ship`: the shop's shipping of a paid order (the first upload, or WeChat's one
//! modification), and the order's shipping state for GetOrder.

use super::{
    rules::{self, ShipRequest, Shipment, ShippingState},
    store::{self, NewShipment},
    worker,
};
use crate::{error::Error, orders::Order, payments::Payments};

/// Order states whose payment WeChat holds (frozen) until shipping.
const SHIPPABLE: [&str; 2] = ["PAID", "REFUNDING"];

impl Payments {
    /// Records the shipping of a paid order and queues its upload to WeChat. A second call
    /// for a shipped order is the one modification WeChat allows; a third, or one while an
    /// upload is still pending, is ORDER_STATE.
    #[tracing::instrument(skip_all, fields(order_no = %req.order_no))]
    pub async fn ship(&self, req: ShipRequest) -> Result<(Order, Shipment), Error> {
        if req.order_no.trim().is_empty() {
            return Err(Error::MissingParameter("order_no"));
        }
        let (logistics, mode, stored) = rules::check_ship(&req)?;
        let order = self.get_order_as_admin(&req.order_no).await?;
        if !SHIPPABLE.contains(&order.state.as_str()) || order.transaction_id.is_empty() {
            return Err(Error::OrderState(format!(
                "order is {}: only a paid order ships",
                order.state
            )));
        }
        let request = serde_json::to_string(&stored)
            .map_err(|e| Error::Internal(format!("shipping request: {e}")))?;
        let now = self.now();
        let logistics = i32::from(u8::from(logistics));
        let mode = i32::from(u8::from(mode));
        let db = self.database();
        let new = NewShipment::pending(&order, logistics, mode, request.clone(), now);
        if store::insert(db, &new).await? {
            worker::wake();
            let shipment = store::find(db, &order.order_no)
                .await?
                .ok_or_else(|| Error::Internal("shipment vanished".into()))?;
            return Ok((order, shipment));
        }
        if let Some(shipment) =
            store::modify(db, &order.order_no, logistics, mode, &request, now).await?
        {
            tracing::info!("shipping modified (WeChat allows this once)");
            worker::wake();
            return Ok((order, shipment));
        }
        let current = store::find(db, &order.order_no).await?;
        Err(Error::OrderState(
            match current.as_ref().and_then(Shipment::state) {
                Some(ShippingState::PendingUpload) => {
                    "the shipping is still being uploaded to WeChat; retry once it is SHIPPED"
                        .into()
                }
                Some(ShippingState::Shipped) => "the shipping was already modified once".into(),
                Some(state) => format!(
                    "the order is {}: too late to modify its shipping",
                    state.as_str()
                ),
                None => "the order's shipping could not be recorded".into(),
            },
        ))
    }

    /// The order's shipment, if any (GetOrder shows it).
    pub async fn shipment(&self, order_no: &str) -> Result<Option<Shipment>, Error> {
        store::find(self.database(), order_no).await
    }
}
