//! `wxmp events`: follow pay-service's order events (the outbox stream) or list the webhook
//! deliveries that were dead-lettered; and the demo's last step, the PAID event of its order.

use std::time::Duration;

use service_kit::{Secret, grpc::AttachToken};
use tonic::{codegen::InterceptedService, transport::Channel};
use wxmp_proto::pay::v1::{self as pb, OrderEventKind, pay_service_client::PayServiceClient};

/// Default address of pay-service's gRPC API (`wxmp up`).
pub const DEFAULT_PAY_URL: &str = "http://127.0.0.1:50053";

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// pay-service's gRPC address.
    #[arg(long, env = "WXMP_PAY_URL", default_value = DEFAULT_PAY_URL)]
    pub pay_url: String,
    /// The internal token, when the services require one.
    #[arg(long, env = "WXMP_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<Secret>,
    /// List the dead-lettered webhook deliveries instead of following events.
    #[arg(long)]
    pub failed: bool,
    /// Follow events after this id (your last processed one).
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Only these kinds (e.g. ORDER_PAID); repeatable.
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long)]
    pub count: Option<usize>,
}

type Client = PayServiceClient<InterceptedService<Channel, AttachToken>>;

fn client(url: &str, token: Option<&Secret>) -> Result<Client, String> {
    // Streams stay open: unlike the services' channels, no per-call deadline.
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(PayServiceClient::with_interceptor(
        channel,
        AttachToken::new(token),
    ))
}

/// The kind's short name (`ORDER_PAID`), as in payloads and webhooks.
fn kind_name(kind: i32) -> &'static str {
    OrderEventKind::try_from(kind).map_or("UNKNOWN", |k| {
        k.as_str_name().trim_start_matches("ORDER_EVENT_KIND_")
    })
}

/// Runs `wxmp events`.
pub async fn run(args: EventsArgs) -> Result<(), String> {
    let mut client = client(&args.pay_url, args.internal_token.as_ref())?;
    if args.failed {
        let deliveries = client
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                state: "DEAD".into(),
                limit: 1000,
            })
            .await
            .map_err(|s| format!("ListWebhookDeliveries: {}", s.message()))?
            .into_inner()
            .deliveries;
        if deliveries.is_empty() {
            println!("no dead-lettered webhook deliveries");
        }
        for d in deliveries {
            println!(
                "event {:>8}  {:<24} {:<26} attempts {:>3}  {}  {}",
                d.event_id,
                kind_name(d.kind),
                d.order_no,
                d.attempts,
                d.endpoint,
                d.last_error
            );
        }
        return Ok(());
    }
    let kinds = args
        .kinds
        .iter()
        .map(|k| {
            OrderEventKind::from_str_name(k)
                .or_else(|| OrderEventKind::from_str_name(&format!("ORDER_EVENT_KIND_{k}")))
                .map(|k| k as i32)
                .ok_or_else(|| format!("unknown event kind {k}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut stream = client
        .watch_order_events(pb::WatchOrderEventsRequest {
            after_id: args.after,
            kinds,
        })
        .await
        .map_err(|s| format!("WatchOrderEvents: {}", s.message()))?
        .into_inner();
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        let Some(event) = stream
            .message()
            .await
            .map_err(|s| format!("WatchOrderEvents: {}", s.message()))?
        else {
            break;
        };
        let line = serde_json::json!({
            "id": event.id,
            "kind": kind_name(event.kind),
            "order_no": event.order_no,
            "created_at": event.created_at,
            "data": serde_json::from_str::<serde_json::Value>(&event.payload_json)
                .unwrap_or_default(),
        });
        println!("{line}");
        seen += 1;
    }
    Ok(())
}

/// Waits for the ORDER_PAID event of `order_no` on the stream: what a shop service does
/// instead of polling GetOrder.
pub async fn paid_event(
    pay_url: &str,
    token: Option<&Secret>,
    order_no: &str,
    timeout: Duration,
) -> Result<pb::OrderEvent, String> {
    let mut events = paid_events_until(pay_url, token, order_no, timeout).await?;
    events
        .pop()
        .ok_or_else(|| "the event stream ended".to_owned())
}

/// Every ORDER_PAID event from the start of the stream up to and including the first one of
/// `order_no`. Ids follow commit order, so these are all the payments committed before
/// `order_no`'s (the demo counts a virtual order's events this way: exactly one).
pub async fn paid_events_until(
    pay_url: &str,
    token: Option<&Secret>,
    order_no: &str,
    timeout: Duration,
) -> Result<Vec<pb::OrderEvent>, String> {
    let mut client = client(pay_url, token)?;
    let wait = async {
        let mut stream = client
            .watch_order_events(pb::WatchOrderEventsRequest {
                after_id: 0,
                kinds: vec![OrderEventKind::OrderPaid as i32],
            })
            .await
            .map_err(|s| format!("WatchOrderEvents: {}", s.message()))?
            .into_inner();
        let mut seen = Vec::new();
        while let Some(event) = stream
            .message()
            .await
            .map_err(|s| format!("WatchOrderEvents: {}", s.message()))?
        {
            let last = event.order_no == order_no;
            seen.push(event);
            if last {
                return Ok(seen);
            }
        }
        Err("the event stream ended".to_owned())
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| format!("no ORDER_PAID event for {order_no} within {timeout:?}"))?
}
