//! A developer counter of WeChat Pay calls per order: how many `unifiedorder`, `orderquery`
//! and `closeorder` requests named each `out_trade_no`, and the most `orderquery`/`closeorder`
//! requests about one order that were in progress at the same moment (counted from the
//! moment the request arrives until its answer leaves, injected latency included). Lets a test
//! prove that two reconcilers never ask WeChat about the same order at once.
//!
//! `GET /sandbox/calls[?out_trade_no=]` → `[{"out_trade_no","unifiedorder","orderquery",
//! "closeorder","max_in_flight"}]`, sorted by out_trade_no. Not a WeChat path.

use std::{collections::BTreeMap, sync::Mutex};

use actix_web::{
    Error, HttpMessage, HttpResponse,
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    web,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::wx;

/// The calls about one order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCalls {
    pub out_trade_no: String,
    pub unifiedorder: u32,
    pub orderquery: u32,
    pub closeorder: u32,
    /// Most orderquery + closeorder requests about this order in progress at once.
    pub max_in_flight: u32,
    #[serde(skip)]
    in_flight: u32,
}

/// Every order's calls; shared by the workers.
#[derive(Debug, Default)]
pub struct Calls(Mutex<BTreeMap<String, OrderCalls>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    UnifiedOrder,
    OrderQuery,
    CloseOrder,
}

impl Kind {
    fn of(path: &str) -> Option<Self> {
        match path {
            "/pay/unifiedorder" => Some(Self::UnifiedOrder),
            "/pay/orderquery" => Some(Self::OrderQuery),
            "/pay/closeorder" => Some(Self::CloseOrder),
            _ => None,
        }
    }

    /// Asking about or closing an order: the calls that must not overlap.
    fn is_exclusive(self) -> bool {
        self != Self::UnifiedOrder
    }
}

impl Calls {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, OrderCalls>) -> T) -> T {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn begin(&self, order: &str, kind: Kind) {
        self.with(|all| {
            let calls = all.entry(order.to_owned()).or_insert_with(|| OrderCalls {
                out_trade_no: order.to_owned(),
                ..OrderCalls::default()
            });
            match kind {
                Kind::UnifiedOrder => calls.unifiedorder += 1,
                Kind::OrderQuery => calls.orderquery += 1,
                Kind::CloseOrder => calls.closeorder += 1,
            }
            if kind.is_exclusive() {
                calls.in_flight += 1;
                calls.max_in_flight = calls.max_in_flight.max(calls.in_flight);
            }
        });
    }

    fn end(&self, order: &str, kind: Kind) {
        if kind.is_exclusive() {
            self.with(|all| {
                if let Some(calls) = all.get_mut(order) {
                    calls.in_flight = calls.in_flight.saturating_sub(1);
                }
            });
        }
    }

    fn list(&self, out_trade_no: Option<&str>) -> Vec<OrderCalls> {
        self.with(|all| {
            all.values()
                .filter(|c| out_trade_no.is_none_or(|o| c.out_trade_no == o))
                .cloned()
                .collect()
        })
    }
}

/// Ends the in-flight count even when the request is dropped half way.
struct InFlight<'a> {
    calls: &'a Calls,
    order: String,
    kind: Kind,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.calls.end(&self.order, self.kind);
    }
}

/// Middleware around the pay paths (outside the fault middleware, so injected latency counts
/// as time in progress): reads the body (bounded), notes the order, puts the body back.
pub async fn track(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let (Some(kind), Some(calls)) = (
        Kind::of(req.path()),
        req.app_data::<web::Data<Calls>>().cloned(),
    ) else {
        return next.call(req).await;
    };
    let mut payload = req.take_payload();
    let mut body = web::BytesMut::new();
    while body.len() <= wx::MAX_XML_BYTES {
        match payload.next().await {
            Some(Ok(chunk)) => body.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    let body = body.freeze();
    let order = wx::parse_xml(&body).ok().and_then(|pairs| {
        pairs
            .into_iter()
            .find(|(k, _)| k == "out_trade_no")
            .map(|(_, v)| v)
    });
    // The handler reads what was taken, then whatever was not.
    let rest = futures::stream::once(async move { Ok(body) }).chain(payload);
    req.set_payload(Payload::Stream {
        payload: Box::pin(rest),
    });
    let Some(order) = order.filter(|o| !o.is_empty()) else {
        return next.call(req).await;
    };
    calls.begin(&order, kind);
    let _in_flight = InFlight {
        calls: &calls,
        order,
        kind,
    };
    next.call(req).await
}

#[derive(Debug, Deserialize)]
pub struct CallsQuery {
    out_trade_no: Option<String>,
}

/// `GET /sandbox/calls`: the counters, optionally of one order.
pub async fn list(calls: web::Data<Calls>, query: web::Query<CallsQuery>) -> HttpResponse {
    HttpResponse::Ok().json(calls.list(query.out_trade_no.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_calls_about_one_order_are_seen() {
        let calls = Calls::default();
        calls.begin("A", Kind::OrderQuery);
        calls.begin("B", Kind::OrderQuery);
        calls.begin("A", Kind::CloseOrder);
        calls.end("A", Kind::OrderQuery);
        calls.end("A", Kind::CloseOrder);
        calls.end("B", Kind::OrderQuery);
        calls.begin("B", Kind::OrderQuery);
        calls.end("B", Kind::OrderQuery);
        calls.begin("B", Kind::UnifiedOrder);
        let all = calls.list(None);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].orderquery, all[0].closeorder), (1, 1));
        assert_eq!(all[0].max_in_flight, 2, "A was asked and closed at once");
        assert_eq!((all[1].orderquery, all[1].unifiedorder), (2, 1));
        assert_eq!(
            all[1].max_in_flight, 1,
            "B's queries came one after the other"
        );
        assert_eq!(calls.list(Some("B")).len(), 1);
    }
}
