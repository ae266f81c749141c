//! The sandbox console: `GET /`, one server-rendered HTML page (no CDN, no script) showing
//! what WeChat knows — apps, users and their session keys' age, orders with their trade state
//! and notify attempts, access tokens — with buttons (plain HTML forms, see
//! [`crate::console_actions`]) that play the phone and WeChat.
//!
//! Extension point: each section is a function in [`SECTIONS`]; a new part of the sandbox
//! (refunds, subscribe messages, ...) adds its own `fn(&View) -> String` there, and its
//! buttons as routes in `console_actions`. Nothing secret is rendered: no AppSecret, no
//! session_key, only a prefix of access tokens.

use std::{fmt::Write, time::Instant};

use actix_web::{HttpResponse, http::header, web};
use serde::Deserialize;

use crate::{
    console_actions,
    notify::NotifyRecord,
    order::{Order, TradeState},
    state::{Sandbox, State},
};

/// What a section renders from: the sandbox (config) and its state, locked once per page.
pub struct View<'a> {
    pub sandbox: &'a Sandbox,
    pub state: &'a State,
    pub now: Instant,
}

/// Renders one section's body from the state.
type Section = fn(&View) -> String;

/// The page's sections, in order. Add new ones here.
const SECTIONS: &[(&str, Section)] = &[
    ("Apps and merchant", apps),
    ("Users", users),
    ("Orders", orders),
    ("Access tokens", access_tokens),
    ("Refunds", refunds),
];

/// Registers `GET /` and the console's buttons.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page))
        .configure(console_actions::routes);
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// The outcome of the last button, shown once at the top.
    msg: Option<String>,
}

/// `GET /`.
pub async fn page(sandbox: web::Data<Sandbox>, query: web::Query<PageQuery>) -> HttpResponse {
    let state = sandbox.state();
    let view = View {
        sandbox: &sandbox,
        state: &state,
        now: Instant::now(),
    };
    let mut body = String::new();
    for (title, render) in SECTIONS {
        let _ = write!(
            body,
            "<section><h2>{}</h2>{}</section>",
            esc(title),
            render(&view)
        );
    }
    drop(state);
    let flash = query
        .msg
        .as_deref()
        .map(|m| format!(r#"<p class="flash" id="flash">{}</p>"#, esc(m)))
        .unwrap_or_default();
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wxmp sandbox</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body><h1>wxmp sandbox <small>an offline WeChat</small> <a href="/">refresh</a></h1>{flash}{body}
<footer>Developer endpoints: <code>/sandbox/*</code> (see the sandbox crate docs).</footer>
</body></html>"#
    );
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(html)
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1 small{font-weight:normal;color:#777;font-size:60%}h1 a{font-size:50%}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}code{font-size:90%}.flash{background:#fff6d5;padding:.5em;border:1px solid #e5c76b}\
form{display:inline}button{margin:1px}.empty{color:#888}.ok{color:#17803d}.bad{color:#b42318}";

/// HTML-escapes text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table from a header row and rows of already-escaped HTML cells.
fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return r#"<p class="empty">none yet</p>"#.to_owned();
    }
    let mut out = String::from("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// A button posting `fields` to `action` (a console_actions route).
pub fn button(action: &str, label: &str, fields: &[(&str, &str)], data: &str) -> String {
    let mut out = format!(r#"<form method="post" action="{}">"#, esc(action));
    for (name, value) in fields {
        let _ = write!(
            out,
            r#"<input type="hidden" name="{}" value="{}">"#,
            esc(name),
            esc(value)
        );
    }
    let _ = write!(
        out,
        r#"<button type="submit" data-action="{}" data-key="{}">{}</button></form>"#,
        esc(label),
        esc(data),
        esc(label)
    );
    out
}

fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

fn apps(view: &View) -> String {
    let rows = view
        .sandbox
        .apps
        .iter()
        .map(|app| {
            let merchants: Vec<&str> = view
                .sandbox
                .merchants
                .iter()
                .filter(|m| m.appids.contains(&app.appid))
                .map(|m| m.mch_id.as_str())
                .collect();
            vec![
                format!("<code>{}</code>", esc(&app.appid)),
                esc(&merchants.join(", ")),
            ]
        })
        .collect();
    table(&["appid", "merchant (mch_id)"], rows)
}

fn users(view: &View) -> String {
    let mut keys: Vec<_> = view.state.users.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let rows = keys
        .into_iter()
        .map(|((appid, openid), user)| {
            let key_age = match (
                &user.session_key,
                view.state
                    .session_key_issued
                    .get(&(appid.clone(), openid.clone())),
            ) {
                (Some(_), Some(at)) => age(view.now.saturating_duration_since(*at).as_secs()),
                (Some(_), None) => "set".to_owned(),
                (None, _) => r#"<span class="empty">never logged in</span>"#.to_owned(),
            };
            vec![
                format!("<code>{}</code>", esc(appid)),
                format!("<code>{}</code>", esc(openid)),
                format!("<code>{}</code>", esc(&user.unionid)),
                key_age,
            ]
        })
        .collect();
    table(&["appid", "openid", "unionid", "session_key age"], rows)
}

/// The notify attempts of one order, in one cell.
fn notify_cell(order: &Order, records: &[&NotifyRecord]) -> String {
    let mut out = format!(
        "{} ({} attempt{})",
        esc(&format!("{:?}", order.notify_state).to_lowercase()),
        order.notify_attempts,
        if order.notify_attempts == 1 { "" } else { "s" }
    );
    for r in records.iter().rev().take(3) {
        let outcome = match (r.status, &r.error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => esc(&e.chars().take(60).collect::<String>()),
            (None, None) => "no answer".to_owned(),
        };
        let class = if r.accepted { "ok" } else { "bad" };
        let _ = write!(
            out,
            r#"<br><span class="{class}">#{}.{} {}{}</span>"#,
            r.attempt,
            r.copy,
            outcome,
            if r.accepted { " accepted" } else { "" }
        );
    }
    out
}

fn orders(view: &View) -> String {
    let mut orders: Vec<&Order> = view.state.orders.values().collect();
    orders.sort_by(|a, b| {
        (b.created_at_ms, &b.out_trade_no).cmp(&(a.created_at_ms, &a.out_trade_no))
    });
    let rows = orders
        .into_iter()
        .map(|o| {
            let records: Vec<&NotifyRecord> = view
                .state
                .notifies
                .iter()
                .filter(|r| r.mch_id == o.mch_id && r.out_trade_no == o.out_trade_no)
                .collect();
            let order_fields = [
                ("mch_id", o.mch_id.as_str()),
                ("out_trade_no", o.out_trade_no.as_str()),
            ];
            let mut actions = String::new();
            if matches!(
                o.trade_state,
                TradeState::NotPay | TradeState::UserPaying | TradeState::PayError
            ) {
                let pay = [("prepay_id", o.prepay_id.as_str()), ("outcome", "success")];
                actions.push_str(&button(console_actions::PAY, "pay", &pay, &o.out_trade_no));
                if o.trade_state != TradeState::PayError {
                    let fail = [("prepay_id", o.prepay_id.as_str()), ("outcome", "fail")];
                    actions.push_str(&button(
                        console_actions::PAY,
                        "fail payment",
                        &fail,
                        &o.out_trade_no,
                    ));
                }
            }
            if o.trade_state == TradeState::Success {
                actions.push_str(&button(
                    console_actions::RESEND_NOTIFY,
                    "resend notify",
                    &order_fields,
                    &o.out_trade_no,
                ));
                if o.notify_state == crate::order::NotifyState::Pending {
                    actions.push_str(&button(
                        console_actions::DROP_NOTIFY,
                        "drop notify",
                        &order_fields,
                        &o.out_trade_no,
                    ));
                }
            }
            vec![
                format!(r#"<code data-order="{0}">{0}</code>"#, esc(&o.out_trade_no)),
                format!("<code>{}</code>", esc(&o.openid)),
                format!("{} fen", o.total_fee),
                esc(&o.body),
                format!(
                    r#"<span class="trade-state" data-order="{}">{}</span>"#,
                    esc(&o.out_trade_no),
                    o.trade_state.as_str()
                ),
                notify_cell(o, &records),
                actions,
            ]
        })
        .collect();
    table(
        &[
            "out_trade_no",
            "openid",
            "total_fee",
            "body",
            "trade_state",
            "notify",
            "play",
        ],
        rows,
    )
}

fn access_tokens(view: &View) -> String {
    let rows = view
        .state
        .tokens
        .stable_for_console(view.now)
        .into_iter()
        .map(|(appid, prefix, left)| {
            vec![
                format!("<code>{}</code>", esc(&appid)),
                format!("<code>{}…</code>", esc(&prefix)),
                if left == 0 {
                    r#"<span class="bad">expired</span>"#.to_owned()
                } else {
                    age(left)
                },
                button(
                    console_actions::EXPIRE_TOKEN,
                    "expire token",
                    &[("appid", appid.as_str())],
                    &appid,
                ),
            ]
        })
        .collect();
    table(&["appid", "stable token", "left", "play"], rows)
}

/// Every refund WeChat holds, v2 and v3, newest first (read-only: they settle on their own).
fn refunds(view: &View) -> String {
    let mut all: Vec<(i64, Vec<String>)> = view
        .state
        .refunds
        .by_key
        .values()
        .map(|r| {
            (
                r.created_at_ms,
                vec![
                    "v2".to_owned(),
                    format!("<code>{}</code>", esc(&r.out_refund_no)),
                    format!("<code>{}</code>", esc(&r.out_trade_no)),
                    r.refund_fee.to_string(),
                    esc(r.refund_status.as_str()),
                    esc(&format!("{:?}", r.notify_state).to_lowercase()),
                    r.requests.to_string(),
                ],
            )
        })
        .collect();
    // The v3 state has its own lock, taken after the main one (never the other way round).
    all.extend(view.sandbox.v3.state().refunds.values().map(|r| {
        (
            r.created_at_ms,
            vec![
                "v3".to_owned(),
                format!("<code>{}</code>", esc(&r.out_refund_no)),
                format!("<code>{}</code>", esc(&r.out_trade_no)),
                r.refund.to_string(),
                esc(&r.status),
                esc(&r.notify_state),
                r.requests.to_string(),
            ],
        )
    }));
    all.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    table(
        &[
            "api",
            "out_refund_no",
            "out_trade_no",
            "fen",
            "status",
            "notify",
            "requests",
        ],
        all.into_iter().map(|(_, row)| row).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn buttons_escape_their_fields() {
        let html = button("/console/pay", "pay", &[("prepay_id", "\"><x>")], "o1");
        assert!(html.contains("value=\"&quot;&gt;&lt;x&gt;\""), "{html}");
        assert!(!html.contains("<x>"));
    }
}
