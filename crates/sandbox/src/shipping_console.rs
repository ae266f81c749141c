//! The console's shipping section and its buttons (their own module, beside the other
//! sections): orders WeChat holds for shipping, with "user confirms receipt" and "WeChat
//! settles" buttons that move the order and send the `trade_manage_order_settlement` push,
//! and the pushes sent.
//!
//! - `POST /console/shipping/confirm` `transaction_id`: the user confirms receipt.
//! - `POST /console/shipping/settle` `transaction_id`: WeChat settles the payment.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::{
    console::{View, button, esc},
    console_actions::{back, refuse_cross_site},
    shipping::{self, Step},
    state::Sandbox,
};

pub const CONFIRM: &str = "/console/shipping/confirm";
pub const SETTLE: &str = "/console/shipping/settle";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(CONFIRM, web::post().to(confirm))
        .route(SETTLE, web::post().to(settle));
}

fn state_name(state: u8) -> &'static str {
    match state {
        1 => "1 待发货 (to ship)",
        2 => "2 已发货 (shipped)",
        3 => "3 确认收货 (received)",
        4 => "4 交易完成 (settled)",
        _ => "?",
    }
}

/// The section: one row per paid order, newest first.
pub fn section(view: &View) -> String {
    let s = view.sandbox.shipping.state();
    let mut orders: Vec<&shipping::ShipOrder> = s.orders.values().collect();
    orders.sort_by_key(|o| std::cmp::Reverse(o.paid_at));
    let mut out = String::new();
    let push = match &view.sandbox.shipping.config.push_url {
        Some(url) => format!(
            "<p>Message push to <code>{}</code> ({} mode, {})</p>",
            esc(url),
            esc(&view.sandbox.shipping.config.push_mode),
            esc(&view.sandbox.shipping.config.push_format)
        ),
        None => r#"<p class="empty">no message push configured (SANDBOX_PUSH_URL)</p>"#.into(),
    };
    out.push_str(&push);
    if orders.is_empty() {
        out.push_str(r#"<p class="empty">none yet</p>"#);
    } else {
        out.push_str("<table><tr><th>out_trade_no</th><th>transaction_id</th><th>state</th><th>uploads</th><th>actions</th></tr>");
        for o in orders.iter().take(200) {
            let fields = [("transaction_id", o.transaction_id.as_str())];
            let mut actions = String::new();
            if o.order_state == 2 {
                actions.push_str(&button(
                    CONFIRM,
                    "user confirms receipt",
                    &fields,
                    &o.transaction_id,
                ));
            }
            if matches!(o.order_state, 2 | 3) {
                actions.push_str(&button(
                    SETTLE,
                    "WeChat settles",
                    &fields,
                    &o.transaction_id,
                ));
            }
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{actions}</td></tr>",
                esc(&o.out_trade_no),
                esc(&o.transaction_id),
                esc(state_name(o.order_state)),
                o.uploads.len(),
            ));
        }
        out.push_str("</table>");
    }
    if !s.pushes.is_empty() {
        out.push_str("<table><tr><th>push</th><th>transaction_id</th><th>mode</th><th>attempts</th><th>outcome</th></tr>");
        for p in s.pushes.iter().rev().take(50) {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.event),
                esc(&p.transaction_id),
                esc(&p.mode),
                esc(&p.format),
                p.attempts,
                esc(&p.outcome)
            ));
        }
        out.push_str("</table>");
    }
    out
}

#[derive(Debug, Deserialize)]
pub struct TransactionForm {
    transaction_id: String,
    #[serde(default)]
    csrf: String,
}

async fn confirm(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<TransactionForm>,
) -> HttpResponse {
    step(&req, &sandbox, &form, Step::Confirmed)
}

async fn settle(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<TransactionForm>,
) -> HttpResponse {
    step(&req, &sandbox, &form, Step::Settled)
}

fn step(
    req: &HttpRequest,
    sandbox: &web::Data<Sandbox>,
    form: &TransactionForm,
    step: Step,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(req, &form.csrf) {
        return refused;
    }
    let what = match step {
        Step::Confirmed => "receipt confirmed",
        Step::Settled => "settled",
    };
    match shipping::advance(sandbox, &form.transaction_id, step) {
        Ok(_) => back(&format!("{}: {what}; push sent", form.transaction_id)),
        Err(e) => back(&e),
    }
}
