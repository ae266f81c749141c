//! Operator commands against a running pay-service: `wxmp refund`, `wxmp order` and
//! `wxmp bills`.

use std::time::Duration;

use tonic::{Request, transport::Channel};
use wxmp_proto::pay::v1::{self as pb, pay_service_client::PayServiceClient};

/// Where pay-service is and the internal token it wants (if any).
#[derive(Clone, Debug)]
pub struct PayTarget {
    pub url: String,
    pub internal_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach pay-service at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{call}: {code:?} {reason}: {message}")]
    Call {
        call: &'static str,
        code: tonic::Code,
        reason: &'static str,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

fn call_error(call: &'static str, status: tonic::Status) -> OperatorError {
    OperatorError::Call {
        call,
        code: status.code(),
        reason: service_kit::reason::reason_of(&status).as_str_name(),
        message: status.message().to_owned(),
    }
}

/// A connected pay-service client.
pub struct Pay {
    client: PayServiceClient<Channel>,
    token: Option<String>,
}

impl Pay {
    pub async fn connect(target: &PayTarget) -> Result<Self, OperatorError> {
        let channel = Channel::from_shared(target.url.clone())
            .map_err(|e| OperatorError::Connect {
                url: target.url.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| OperatorError::Connect {
                url: target.url.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client: PayServiceClient::new(channel),
            token: target.internal_token.clone(),
        })
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, OperatorError> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value = token
                .parse()
                .map_err(|_| OperatorError::Invalid("WXMP_INTERNAL_TOKEN is not ASCII".into()))?;
            request
                .metadata_mut()
                .insert(service_kit::grpc::INTERNAL_TOKEN, value);
        }
        Ok(request)
    }

    pub async fn refund(
        &mut self,
        order_no: &str,
        refund_fen: i64,
        reason: &str,
        out_refund_no: &str,
    ) -> Result<pb::RefundResponse, OperatorError> {
        let request = self.request(pb::RefundRequest {
            order_no: order_no.to_owned(),
            refund_fen,
            reason: reason.to_owned(),
            out_refund_no: out_refund_no.to_owned(),
        })?;
        self.client
            .refund(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| call_error("Refund", s))
    }

    /// ApplyAbnormalRefund: re-routes an abnormal refund's money.
    pub async fn apply_abnormal_refund(
        &mut self,
        out_refund_no: &str,
        card: AbnormalCard,
    ) -> Result<pb::RefundRecord, OperatorError> {
        let (target, bank_type, bank_account, real_name) = match card {
            AbnormalCard::User {
                bank_type,
                bank_account,
                real_name,
            } => (
                pb::AbnormalRefundTarget::UserBankCard,
                bank_type,
                bank_account,
                real_name,
            ),
            AbnormalCard::Merchant => (
                pb::AbnormalRefundTarget::MerchantBankCard,
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        let request = self.request(pb::ApplyAbnormalRefundRequest {
            out_refund_no: out_refund_no.to_owned(),
            target: target as i32,
            bank_type,
            bank_account,
            real_name,
        })?;
        self.client
            .apply_abnormal_refund(request)
            .await
            .map_err(|s| call_error("ApplyAbnormalRefund", s))?
            .into_inner()
            .refund
            .ok_or_else(|| OperatorError::Invalid("ApplyAbnormalRefund answered no refund".into()))
    }

    pub async fn get_refund(
        &mut self,
        out_refund_no: &str,
    ) -> Result<pb::RefundRecord, OperatorError> {
        let request = self.request(pb::GetRefundRequest {
            out_refund_no: out_refund_no.to_owned(),
        })?;
        self.client
            .get_refund(request)
            .await
            .map_err(|s| call_error("GetRefund", s))?
            .into_inner()
            .refund
            .ok_or_else(|| OperatorError::Invalid("GetRefund answered no refund".into()))
    }

    /// The order and its refunds.
    pub async fn order(
        &mut self,
        order_no: &str,
    ) -> Result<(pb::Order, Vec<pb::RefundRecord>), OperatorError> {
        let request = self.request(pb::GetOrderRequest {
            order_no: order_no.to_owned(),
            user_id: 0,
            internal_admin: true,
        })?;
        let order = self
            .client
            .get_order(request)
            .await
            .map_err(|s| call_error("GetOrder", s))?
            .into_inner()
            .order
            .ok_or_else(|| OperatorError::Invalid("GetOrder answered no order".into()))?;
        let request = self.request(pb::ListRefundsRequest {
            order_no: order_no.to_owned(),
        })?;
        let refunds = self
            .client
            .list_refunds(request)
            .await
            .map_err(|s| call_error("ListRefunds", s))?
            .into_inner()
            .refunds;
        Ok((order, refunds))
    }

    /// Downloads and reconciles the bills of `bill_date` (yyyy-MM-dd) now.
    pub async fn reconcile_bills(
        &mut self,
        bill_date: &str,
    ) -> Result<pb::BillReport, OperatorError> {
        let request = self.request(pb::ReconcileBillsRequest {
            bill_date: bill_date.to_owned(),
        })?;
        self.client
            .reconcile_bills(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| call_error("ReconcileBills", s))
    }

    /// Marks one mismatch of a bill report resolved with `note` (idempotent).
    pub async fn resolve_bill_mismatch(
        &mut self,
        resolve: pb::ResolveBillMismatchRequest,
    ) -> Result<pb::BillMismatch, OperatorError> {
        let request = self.request(resolve)?;
        self.client
            .resolve_bill_mismatch(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| call_error("ResolveBillMismatch", s))
    }
}

/// The bill report for people: one line per API's bill, then one per difference.
pub fn describe_bills(report: &pb::BillReport) -> Vec<String> {
    let mut lines = Vec::new();
    for d in &report.days {
        let mut line = format!(
            "bill {} {} {}: {} lines, {} matched; WeChat paid {} yuan, refunded {} yuan, fees {} yuan, net {} yuan; wxmp paid {} yuan, refunded {} yuan",
            report.bill_date,
            d.api,
            d.state,
            d.lines,
            d.matched,
            yuan(d.wechat_paid_fen),
            yuan(d.wechat_refunded_fen),
            millifen_yuan(d.wechat_fee_millifen),
            millifen_yuan(d.wechat_net_millifen),
            yuan(d.ledger_paid_fen),
            yuan(d.ledger_refunded_fen),
        );
        if d.no_bill {
            line.push_str(" (WeChat has no bill: an empty day)");
        }
        if !d.last_error.is_empty() {
            line.push_str(&format!(
                ", last error: {} (attempt {})",
                d.last_error, d.attempts
            ));
        }
        lines.push(line);
    }
    if report.mismatches.is_empty() {
        lines.push(format!("{}: no differences", report.bill_date));
    }
    for m in &report.mismatches {
        lines.push(describe_mismatch(m));
    }
    lines
}

/// One difference of a bill report for people.
pub fn describe_mismatch(m: &pb::BillMismatch) -> String {
    let mut line = format!(
        "  {} {} order {}{}: WeChat {} / wxmp {}: {}",
        m.kind,
        m.key,
        if m.order_no.is_empty() {
            "-"
        } else {
            &m.order_no
        },
        if m.out_refund_no.is_empty() {
            String::new()
        } else {
            format!(" refund {}", m.out_refund_no)
        },
        m.wechat_fen.map_or("-".into(), yuan),
        m.ledger_fen.map_or("-".into(), yuan),
        m.detail
    );
    if m.resolved_at > 0 {
        line.push_str(&format!(" [resolved: {}]", m.resolution));
    }
    line
}

/// The differences as CSV for finance (amounts in yuan with two decimals).
pub fn bills_csv(report: &pb::BillReport) -> String {
    fn field(v: &str) -> String {
        if v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_owned()
        }
    }
    let mut out = String::from(
        "bill_date,api,kind,key,order_no,out_refund_no,wechat_yuan,wxmp_yuan,detail,resolution\n",
    );
    for m in &report.mismatches {
        let row = [
            m.bill_date.clone(),
            m.api.clone(),
            m.kind.clone(),
            m.key.clone(),
            m.order_no.clone(),
            m.out_refund_no.clone(),
            m.wechat_fen.map(yuan).unwrap_or_default(),
            m.ledger_fen.map(yuan).unwrap_or_default(),
            m.detail.clone(),
            m.resolution.clone(),
        ];
        let row: Vec<String> = row.iter().map(|v| field(v)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// Thousandths of a fen as yuan with five decimals.
fn millifen_yuan(millifen: i64) -> String {
    let sign = if millifen < 0 { "-" } else { "" };
    let m = millifen.unsigned_abs();
    format!("{sign}{}.{:05}", m / 100_000, m % 100_000)
}

impl Pay {
    /// Ships a paid order (pay.Ship): the first upload, or WeChat's one modification.
    pub async fn ship(&mut self, ship: pb::ShipRequest) -> Result<pb::Order, OperatorError> {
        let request = self.request(ship)?;
        self.client
            .ship(request)
            .await
            .map_err(|s| call_error("Ship", s))?
            .into_inner()
            .order
            .ok_or_else(|| OperatorError::Invalid("Ship answered no order".into()))
    }
}

/// Parses a `wxmp ship --parcel` value: `item_desc[,tracking_no,express_company[,contact]]`.
pub fn parse_parcel(spec: &str) -> Result<pb::Parcel, OperatorError> {
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let item_desc = parts.first().copied().unwrap_or("");
    if item_desc.is_empty() {
        return Err(OperatorError::Invalid(
            "--parcel is item_desc[,tracking_no,express_company[,receiver_contact]]".into(),
        ));
    }
    let part = |i: usize| parts.get(i).copied().unwrap_or("").to_owned();
    Ok(pb::Parcel {
        item_desc: item_desc.to_owned(),
        tracking_no: part(1),
        express_company: part(2),
        receiver_contact: part(3),
        consignor_contact: String::new(),
    })
}

/// One line for an order's shipping ("" when it has none), e.g. `shipping SHIPPED at ...`.
/// A pending upload shows its attempts and last error: a stuck upload is visible here.
pub fn describe_shipping(order: &pb::Order) -> String {
    let Some(s) = &order.shipping else {
        return String::new();
    };
    let state = pb::ShippingState::try_from(s.state).map_or("UNKNOWN", |st| {
        st.as_str_name().trim_start_matches("SHIPPING_STATE_")
    });
    let mut line = format!(
        "shipping {state} (logistics_type {}, uploads {})",
        s.logistics_type, s.uploads
    );
    for (name, at) in [
        ("shipped", s.shipped_at),
        ("received", s.received_at),
        ("settled", s.settled_at),
    ] {
        if at > 0 {
            line.push_str(&format!(", {name} at {at}"));
        }
    }
    if s.state == pb::ShippingState::PendingUpload as i32 {
        line.push_str(&format!(
            ", upload attempts {}, next at {}, requested at {}",
            s.upload_attempts, s.next_attempt_at, s.requested_at
        ));
        if !s.last_error.is_empty() {
            line.push_str(&format!(", last error: {}", s.last_error));
        }
    }
    line
}

fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let f = fen.unsigned_abs();
    format!("{sign}{}.{:02}", f / 100, f % 100)
}

pub fn order_state(order: &pb::Order) -> &'static str {
    pb::OrderState::try_from(order.state).map_or("UNKNOWN", |s| s.as_str_name())
}

pub fn refund_state(refund: &pb::RefundRecord) -> &'static str {
    pb::RefundState::try_from(refund.state)
        .map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("REFUND_"))
}

/// One line for an order.
pub fn describe_order(order: &pb::Order) -> String {
    format!(
        "order {} {} amount {} yuan, refunded {} yuan, refunding {} yuan, transaction {}",
        order.order_no,
        order_state(order),
        yuan(order.amount_fen),
        yuan(order.refunded_fen),
        yuan(order.refunding_fen),
        if order.transaction_id.is_empty() {
            "-"
        } else {
            &order.transaction_id
        }
    )
}

/// Where `wxmp refund apply-abnormal` sends an abnormal refund's money.
pub enum AbnormalCard {
    /// The payer's debit card (card number and name never printed).
    User {
        bank_type: String,
        bank_account: String,
        real_name: String,
    },
    /// The merchant's bank account.
    Merchant,
}

/// One line for a refund.
pub fn describe_refund(refund: &pb::RefundRecord) -> String {
    let mut line = format!(
        "refund {} {} {} yuan of order {} ({})",
        refund.out_refund_no,
        refund_state(refund),
        yuan(refund.amount_fen),
        refund.order_no,
        if refund.reason.is_empty() {
            "no reason"
        } else {
            &refund.reason
        }
    );
    if !refund.refund_id.is_empty() {
        line.push_str(&format!(", WeChat refund_id {}", refund.refund_id));
    }
    if !refund.failure.is_empty() {
        line.push_str(&format!(", failure {}", refund.failure));
    }
    if refund.origin == "outside" {
        line.push_str(", made outside wxmp");
    }
    if !refund.received_account.is_empty() {
        line.push_str(&format!(", received by {}", refund.received_account));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_in_yuan() {
        let order = pb::Order {
            order_no: "A1".into(),
            amount_fen: 1800,
            refunded_fen: 605,
            state: pb::OrderState::Paid as i32,
            ..Default::default()
        };
        let line = describe_order(&order);
        assert!(
            line.contains("PAID amount 18.00 yuan, refunded 6.05 yuan"),
            "{line}"
        );
        let refund = pb::RefundRecord {
            out_refund_no: "R1".into(),
            amount_fen: 5,
            state: pb::RefundState::RefundFailed as i32,
            failure: "CHANGE".into(),
            ..Default::default()
        };
        let line = describe_refund(&refund);
        assert!(line.contains("R1 FAILED 0.05 yuan"), "{line}");
        assert!(line.ends_with("failure CHANGE"), "{line}");
    }

    #[test]
    fn bills_print_and_export_in_yuan() {
        let report = pb::BillReport {
            bill_date: "2026-12-05".into(),
            days: vec![pb::BillDay {
                api: "v2".into(),
                state: "DONE".into(),
                lines: 3,
                matched: 2,
                wechat_paid_fen: 1991,
                wechat_fee_millifen: 11_946,
                wechat_net_millifen: 1_979_154,
                ..Default::default()
            }],
            mismatches: vec![pb::BillMismatch {
                bill_date: "2026-12-05".into(),
                api: "v2".into(),
                kind: "PAYMENT_AMOUNT".into(),
                key: "W1".into(),
                order_no: "W1".into(),
                wechat_fen: Some(991),
                ledger_fen: Some(990),
                detail: "WeChat charged 991 fen, the order is for 990 fen".into(),
                ..Default::default()
            }],
        };
        let lines = describe_bills(&report);
        assert!(lines[0].contains("WeChat paid 19.91 yuan"), "{}", lines[0]);
        assert!(lines[0].contains("fees 0.11946 yuan"), "{}", lines[0]);
        assert!(
            lines[1].contains("PAYMENT_AMOUNT W1 order W1: WeChat 9.91 / wxmp 9.90"),
            "{}",
            lines[1]
        );
        let csv = bills_csv(&report);
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "2026-12-05,v2,PAYMENT_AMOUNT,W1,W1,,9.91,9.90,\"WeChat charged 991 fen, the order is for 990 fen\","
        );
        let mut resolved = report.mismatches[0].clone();
        resolved.resolved_at = 1_765_000_000;
        resolved.resolution = "customer paid 1 fen more, refunded".into();
        assert!(
            describe_mismatch(&resolved)
                .ends_with("[resolved: customer paid 1 fen more, refunded]"),
            "{}",
            describe_mismatch(&resolved)
        );
        assert!(!lines[1].contains("resolved"), "{}", lines[1]);
        let report = pb::BillReport {
            mismatches: vec![resolved],
            ..report
        };
        assert!(
            bills_csv(&report)
                .lines()
                .nth(1)
                .unwrap()
                .ends_with(",\"customer paid 1 fen more, refunded\""),
            "{}",
            bills_csv(&report)
        );
    }

    #[test]
    fn shipping_lines_show_a_stuck_upload() {
        let mut order = pb::Order::default();
        assert_eq!(describe_shipping(&order), "");
        order.shipping = Some(pb::OrderShipping {
            state: pb::ShippingState::PendingUpload as i32,
            upload_attempts: 7,
            last_error: "WeChat error 10060001".into(),
            ..Default::default()
        });
        let line = describe_shipping(&order);
        assert!(line.starts_with("shipping PENDING_UPLOAD"), "{line}");
        assert!(line.contains("upload attempts 7"), "{line}");
        assert!(
            line.ends_with("last error: WeChat error 10060001"),
            "{line}"
        );
        let p = parse_parcel("mug,SF123,SF,138****0000").unwrap();
        assert_eq!(
            (p.tracking_no.as_str(), p.receiver_contact.as_str()),
            ("SF123", "138****0000")
        );
        assert!(parse_parcel("").is_err());
    }
}
