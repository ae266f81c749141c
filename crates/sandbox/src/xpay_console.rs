//! The console's virtual-payment section and its buttons (beside the other sections): the
//! virtual orders WeChat holds, with "pay virtual" and "fail virtual" buttons for an order whose
//! payment sheet is open (paid with `hold`, status 1), and the delivery pushes sent.
//!
//! - `POST /console/xpay/pay` `out_trade_no`: the user pays; WeChat pushes
//!   `xpay_goods_deliver_notify` (with the global push faults).
//! - `POST /console/xpay/fail` `out_trade_no`: the payment fails; nothing is paid or pushed.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::{
    console::{View, button, esc},
    console_actions::{back, refuse_cross_site},
    state::Sandbox,
    xpay::{self, XOrder},
};

pub const PAY: &str = "/console/xpay/pay";
pub const FAIL: &str = "/console/xpay/fail";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(PAY, web::post().to(pay))
        .route(FAIL, web::post().to(fail));
}

fn status_name(o: &XOrder) -> &'static str {
    match (o.status, o.failed) {
        (1, true) => "1 payment failed",
        (1, false) => "1 pending (sheet open)",
        (2, _) => "2 paid, to deliver",
        (3, _) => "3 delivering",
        (4, _) => "4 delivered",
        (5, _) => "5 refunded",
        _ => "?",
    }
}

/// The section: one row per virtual order (newest first), then the delivery pushes.
pub fn section(view: &View) -> String {
    let mut orders: Vec<(String, XOrder)> = view
        .sandbox
        .xpay
        .orders()
        .iter()
        .map(|(no, o)| (no.clone(), o.clone()))
        .collect();
    orders.sort_by(|a, b| b.1.paid_time.cmp(&a.1.paid_time).then(b.0.cmp(&a.0)));
    let mut out = String::new();
    let faults = view.sandbox.current_faults();
    if faults.xpay_push_lost || faults.xpay_push_duplicated > 1 || faults.xpay_push_late_ms > 0 {
        out.push_str(&format!(
            r#"<p class="bad">push faults: lost {}, duplicated {}, late {} ms</p>"#,
            faults.xpay_push_lost, faults.xpay_push_duplicated, faults.xpay_push_late_ms
        ));
    }
    if orders.is_empty() {
        out.push_str(r#"<p class="empty">none yet</p>"#);
        return out;
    }
    out.push_str("<table><tr><th>out_trade_no</th><th>openid</th><th>env</th><th>product</th><th>price (fen)</th><th>wx_order_id</th><th>status</th><th>actions</th></tr>");
    for (no, o) in orders.iter().take(200) {
        let fields = [("out_trade_no", no.as_str())];
        let mut actions = String::new();
        if o.status == 1 {
            actions.push_str(&button(PAY, "pay virtual", &fields, no));
            if !o.failed {
                actions.push_str(&button(FAIL, "fail virtual", &fields, no));
            }
        }
        out.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="xpay-status" data-order="{}">{}</td><td>{actions}</td></tr>"#,
            esc(no),
            esc(&o.openid),
            o.env,
            esc(&o.product_id),
            o.price,
            esc(&o.wx_order_id),
            esc(no),
            esc(status_name(o)),
        ));
    }
    out.push_str("</table>");
    out
}

#[derive(Debug, Deserialize)]
pub struct OrderForm {
    out_trade_no: String,
    #[serde(default)]
    csrf: String,
}

async fn pay(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<OrderForm>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(&req, &form.csrf) {
        return refused;
    }
    let faults = sandbox.current_faults();
    match xpay::pay_pending(&sandbox, &form.out_trade_no, &faults) {
        Ok(_) => back(&format!(
            "{}: paid; xpay_goods_deliver_notify sent",
            form.out_trade_no
        )),
        Err(e) => back(&e),
    }
}

async fn fail(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    form: web::Form<OrderForm>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_site(&req, &form.csrf) {
        return refused;
    }
    match xpay::fail_pending(&sandbox, &form.out_trade_no) {
        Ok(_) => back(&format!(
            "{}: payment failed; nothing paid",
            form.out_trade_no
        )),
        Err(e) => back(&e),
    }
}
