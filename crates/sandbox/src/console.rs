//! The sandbox console: `GET /`, one server-rendered HTML page (no CDN, no script) showing
//! what WeChat knows — apps, users and their session keys' age, orders (Pay v2 and v3) with
//! their trade state and notify attempts, refunds, Pay v3's keys (the mode, the public-key share
//! of a migration and which key signed what), access tokens, sent subscribe messages —
//! with buttons (plain HTML forms, see [`crate::console_actions`]) that play the phone and
//! WeChat.
//!
//! Extension point: each section is a function in [`SECTIONS`]; a new part of the sandbox
//! adds its own `fn(&View) -> String` there, and its buttons as routes in `console_actions`.
//! Every value is escaped ([`esc`]). Nothing secret is rendered: no AppSecret, no session_key,
//! no pay key, only a prefix of access tokens.

use std::{fmt::Write, time::Instant};

use actix_web::{HttpResponse, http::header, web};
use serde::Deserialize;

use crate::{
    console_actions,
    notify::NotifyRecord,
    order::{NotifyState, Order},
    refund::{Refund, RefundNotifyRecord, RefundStatus},
    state::{Sandbox, State},
    v3::{KeyUse, Mode, V3NotifyRecord, V3Order, V3Refund},
};

/// What a section renders from: the sandbox (config) and its state, locked once per page.
pub struct View<'a> {
    pub sandbox: &'a Sandbox,
    pub state: &'a State,
    /// A copy of the Pay v3 world, taken before `state` is locked (never both locks at once).
    pub v3: &'a V3Snapshot,
    pub now: Instant,
}

/// The v3 orders, refunds and notifies at page time, and which keys signed what.
pub struct V3Snapshot {
    pub orders: Vec<V3Order>,
    pub refunds: Vec<V3Refund>,
    pub notifies: Vec<V3NotifyRecord>,
    pub key_use: KeyUse,
    pub rotated: bool,
}

impl V3Snapshot {
    fn take(sandbox: &Sandbox) -> Self {
        let v3 = sandbox.v3.state();
        Self {
            orders: v3.orders.values().cloned().collect(),
            refunds: v3.refunds.values().cloned().collect(),
            notifies: v3.notifies.clone(),
            key_use: v3.key_use.clone(),
            rotated: v3.rotated,
        }
    }
}

/// Most rows a section shows (the newest first); the developer endpoints list everything.
const MAX_ROWS: usize = 200;

/// Renders one section's body from the state.
type Section = fn(&View) -> String;

/// The page's sections, in order. Add new ones here.
const SECTIONS: &[(&str, Section)] = &[
    ("Apps and merchant", apps),
    ("Users", users),
    ("Orders", orders),
    ("Refunds", refunds),
    ("Pay v3 keys", v3_keys),
    ("Access tokens", access_tokens),
    ("Sent subscribe messages", messages),
    (
        "Shipping (发货信息管理) and message push",
        crate::shipping_console::section,
    ),
    ("Virtual payment (虚拟支付)", crate::xpay_console::section),
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
    let v3 = V3Snapshot::take(&sandbox);
    let state = sandbox.state();
    let view = View {
        sandbox: &sandbox,
        state: &state,
        v3: &v3,
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
        // Another site must not frame the page (a framed button click would carry the token)
        // nor run script in it; forms post only here.
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(html)
}

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'";

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
    table_of(head, rows, 0)
}

/// [`table`], noting `hidden` older rows left out.
fn table_of(head: &[&str], rows: Vec<Vec<String>>, hidden: usize) -> String {
    if rows.is_empty() {
        return r#"<p class="empty">none yet</p>"#.to_owned();
    }
    let mut out = String::new();
    if hidden > 0 {
        let _ = write!(
            out,
            r#"<p class="empty">the newest {} shown, {hidden} older not shown</p>"#,
            rows.len()
        );
    }
    out.push_str("<table><tr>");
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

/// The first [`MAX_ROWS`] of `items` (sorted newest first by the caller), and how many more.
fn newest<T>(mut items: Vec<T>) -> (Vec<T>, usize) {
    let hidden = items.len().saturating_sub(MAX_ROWS);
    items.truncate(MAX_ROWS);
    (items, hidden)
}

/// A button posting `fields` (and the csrf token) to `action` (a console_actions route).
pub fn button(action: &str, label: &str, fields: &[(&str, &str)], data: &str) -> String {
    let mut out = format!(r#"<form method="post" action="{}">"#, esc(action));
    let csrf = [(console_actions::CSRF_FIELD, console_actions::csrf_token())];
    for (name, value) in fields.iter().chain(&csrf) {
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

/// How WeChat Pay signs v3 for the merchant: the mode (in migration mode the share of callbacks
/// signed with the public key) and the counts of `GET /sandbox/v3/keys`.
fn v3_keys(view: &View) -> String {
    let v3 = &view.sandbox.v3;
    let (serial, _) = v3.signers.current(v3.mode, view.v3.rotated);
    let mode = match v3.mode {
        Mode::PublicKey => "public-key".to_owned(),
        Mode::Certificate => "certificate".to_owned(),
        Mode::Migration => format!(
            "migration: {} % of callbacks signed with the public key, the rest with the platform certificate; answers with the key the request's Wechatpay-Serial names",
            v3.public_key_share
        ),
    };
    let k = &view.v3.key_use;
    let share = |part: u64, all: u64| match all {
        0 => "–".to_owned(),
        _ => format!("{} %", part * 100 / all),
    };
    let rows = vec![
        vec![
            "callbacks".to_owned(),
            k.notifies.to_string(),
            k.notifies_public_key.to_string(),
            share(k.notifies_public_key, k.notifies),
        ],
        vec![
            "answers".to_owned(),
            k.answers.to_string(),
            k.answers_public_key.to_string(),
            share(k.answers_public_key, k.answers),
        ],
    ];
    format!(
        r#"<p>mode <b class="v3-mode">{}</b>; signing now: <code>{}</code>; certificate downloads: {} (at most {} at once)</p>{}"#,
        esc(&mode),
        esc(serial),
        k.certificate_requests,
        k.certificate_requests_max_in_flight,
        table(&["signed", "total", "by the public key", "share"], rows)
    )
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

/// One notify request, as a line of a notify cell.
struct Attempt<'a> {
    attempt: u32,
    copy: u32,
    status: Option<u16>,
    error: Option<&'a str>,
    accepted: bool,
}

impl<'a> From<&'a NotifyRecord> for Attempt<'a> {
    fn from(r: &'a NotifyRecord) -> Self {
        Self {
            attempt: r.attempt,
            copy: r.copy,
            status: r.status,
            error: r.error.as_deref(),
            accepted: r.accepted,
        }
    }
}

impl<'a> From<&'a V3NotifyRecord> for Attempt<'a> {
    fn from(r: &'a V3NotifyRecord) -> Self {
        Self {
            attempt: r.attempt,
            copy: 1,
            status: r.status,
            error: r.error.as_deref(),
            accepted: r.accepted,
        }
    }
}

impl<'a> From<&'a RefundNotifyRecord> for Attempt<'a> {
    fn from(r: &'a RefundNotifyRecord) -> Self {
        Self {
            attempt: r.attempt,
            copy: 1,
            status: r.status,
            error: r.error.as_deref(),
            accepted: r.accepted,
        }
    }
}

/// A notify's state, its attempt count and its last three requests, in one cell.
fn notify_cell(state: &str, attempts: u32, records: &[Attempt]) -> String {
    let mut out = format!(
        "{} ({} attempt{})",
        esc(state),
        attempts,
        if attempts == 1 { "" } else { "s" }
    );
    for r in records.iter().rev().take(3) {
        let outcome = match (r.status, r.error) {
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

fn notify_state_name(state: NotifyState) -> &'static str {
    match state {
        NotifyState::None => "none",
        NotifyState::Pending => "pending",
        NotifyState::Accepted => "accepted",
        NotifyState::Dropped => "dropped",
        NotifyState::GaveUp => "gave_up",
    }
}

/// One row of the Orders section, v2 or v3.
struct OrderRow {
    api: &'static str,
    mch_id: String,
    out_trade_no: String,
    openid: String,
    total_fen: i64,
    body: String,
    trade_state: String,
    prepay_id: String,
    notify_state: String,
    notify_attempts: u32,
    created_at_ms: i64,
}

impl OrderRow {
    fn v2(o: &Order) -> Self {
        Self {
            api: "v2",
            mch_id: o.mch_id.clone(),
            out_trade_no: o.out_trade_no.clone(),
            openid: o.openid.clone(),
            total_fen: i64::try_from(o.total_fee).unwrap_or(i64::MAX),
            body: o.body.clone(),
            trade_state: o.trade_state.as_str().to_owned(),
            prepay_id: o.prepay_id.clone(),
            notify_state: notify_state_name(o.notify_state).to_owned(),
            notify_attempts: o.notify_attempts,
            created_at_ms: o.created_at_ms,
        }
    }

    fn v3(o: &V3Order) -> Self {
        Self {
            api: "v3",
            mch_id: o.mchid.clone(),
            out_trade_no: o.out_trade_no.clone(),
            openid: o.openid.clone(),
            total_fen: o.total,
            body: o.description.clone(),
            trade_state: o.trade_state.clone(),
            prepay_id: o.prepay_id.clone(),
            notify_state: o.notify_state.clone(),
            notify_attempts: o.notify_attempts,
            created_at_ms: o.created_at_ms,
        }
    }

    /// The notify's state and its last requests (computed for the rows shown only).
    fn notify(&self, view: &View) -> String {
        let records: Vec<Attempt> = if self.api == "v2" {
            view.state
                .notifies
                .iter()
                .filter(|r| r.mch_id == self.mch_id && r.out_trade_no == self.out_trade_no)
                .map(Attempt::from)
                .collect()
        } else {
            view.v3
                .notifies
                .iter()
                .filter(|r| {
                    r.out_trade_no == self.out_trade_no && r.event_type.starts_with("TRANSACTION")
                })
                .map(Attempt::from)
                .collect()
        };
        notify_cell(&self.notify_state, self.notify_attempts, &records)
    }

    /// The phone's and WeChat's buttons for the order's state.
    fn actions(&self) -> String {
        let mut actions = String::new();
        let key = self.out_trade_no.as_str();
        if matches!(
            self.trade_state.as_str(),
            "NOTPAY" | "USERPAYING" | "PAYERROR"
        ) {
            let pay = [
                ("prepay_id", self.prepay_id.as_str()),
                ("outcome", "success"),
            ];
            actions.push_str(&button(console_actions::PAY, "pay", &pay, key));
            if self.trade_state != "PAYERROR" {
                let fail = [("prepay_id", self.prepay_id.as_str()), ("outcome", "fail")];
                actions.push_str(&button(console_actions::PAY, "fail payment", &fail, key));
            }
        }
        if matches!(self.trade_state.as_str(), "SUCCESS" | "REFUND") {
            let order = [
                ("api", self.api),
                ("mch_id", self.mch_id.as_str()),
                ("out_trade_no", key),
            ];
            actions.push_str(&button(
                console_actions::RESEND_NOTIFY,
                "resend notify",
                &order,
                key,
            ));
            if self.notify_state == "pending" {
                actions.push_str(&button(
                    console_actions::DROP_NOTIFY,
                    "drop notify",
                    &order,
                    key,
                ));
            }
        }
        actions
    }
}

fn orders(view: &View) -> String {
    let mut rows: Vec<OrderRow> = view
        .state
        .orders
        .values()
        .map(OrderRow::v2)
        .chain(view.v3.orders.iter().map(OrderRow::v3))
        .collect();
    rows.sort_by(|a, b| {
        (b.created_at_ms, &b.out_trade_no).cmp(&(a.created_at_ms, &a.out_trade_no))
    });
    let (rows, hidden) = newest(rows);
    let rows = rows
        .into_iter()
        .map(|o| {
            vec![
                format!(r#"<code data-order="{0}">{0}</code>"#, esc(&o.out_trade_no)),
                o.api.to_owned(),
                format!("<code>{}</code>", esc(&o.openid)),
                format!("{} fen", o.total_fen),
                esc(&o.body),
                format!(
                    r#"<span class="trade-state" data-order="{}">{}</span>"#,
                    esc(&o.out_trade_no),
                    esc(&o.trade_state)
                ),
                o.notify(view),
                o.actions(),
            ]
        })
        .collect();
    table_of(
        &[
            "out_trade_no",
            "api",
            "openid",
            "total_fee",
            "body",
            "trade_state",
            "notify",
            "play",
        ],
        rows,
        hidden,
    )
}

fn refund_status_cell(out_refund_no: &str, status: &str) -> String {
    format!(
        r#"<span class="refund-status" data-refund="{}">{}</span>"#,
        esc(out_refund_no),
        esc(status)
    )
}

/// One refund, v2 or v3.
enum RefundRef<'a> {
    V2(&'a Refund),
    V3(&'a V3Refund),
}

impl RefundRef<'_> {
    fn created_at_ms(&self) -> i64 {
        match self {
            Self::V2(r) => r.created_at_ms,
            Self::V3(r) => r.created_at_ms,
        }
    }

    fn cells(&self, view: &View) -> Vec<String> {
        match self {
            Self::V2(r) => v2_refund_cells(view, r),
            Self::V3(r) => v3_refund_cells(view, r),
        }
    }
}

fn v2_refund_cells(view: &View, r: &Refund) -> Vec<String> {
    let notify = if r.notify_url.is_none() {
        r#"<span class="empty">no notify_url</span>"#.to_owned()
    } else {
        let records: Vec<Attempt> = view
            .state
            .refunds
            .notifies
            .iter()
            .filter(|n| n.mch_id == r.mch_id && n.out_refund_no == r.out_refund_no)
            .map(Attempt::from)
            .collect();
        notify_cell(
            notify_state_name(r.notify_state),
            r.notify_attempts,
            &records,
        )
    };
    let actions = if matches!(
        r.refund_status,
        RefundStatus::Processing | RefundStatus::Change
    ) {
        finish_buttons(
            "v2",
            &r.mch_id,
            &r.out_refund_no,
            r.refund_status == RefundStatus::Change,
        )
    } else {
        String::new()
    };
    vec![
        format!(
            r#"<code data-refund="{0}">{0}</code>"#,
            esc(&r.out_refund_no)
        ),
        "v2".to_owned(),
        format!("<code>{}</code>", esc(&r.out_trade_no)),
        format!("{} of {} fen", r.refund_fee, r.total_fee),
        refund_status_cell(&r.out_refund_no, r.refund_status.as_str()),
        notify,
        actions,
    ]
}

fn v3_refund_cells(view: &View, r: &V3Refund) -> Vec<String> {
    let records: Vec<Attempt> = view
        .v3
        .notifies
        .iter()
        .filter(|n| n.out_refund_no.as_deref() == Some(r.out_refund_no.as_str()))
        .map(Attempt::from)
        .collect();
    vec![
        format!(
            r#"<code data-refund="{0}">{0}</code>"#,
            esc(&r.out_refund_no)
        ),
        "v3".to_owned(),
        format!("<code>{}</code>", esc(&r.out_trade_no)),
        format!("{} of {} fen", r.refund, r.total),
        refund_status_cell(&r.out_refund_no, &r.status),
        notify_cell(&r.notify_state, r.notify_attempts, &records),
        if matches!(r.status.as_str(), "PROCESSING" | "ABNORMAL") {
            finish_buttons("v3", &r.mchid, &r.out_refund_no, r.status == "ABNORMAL")
        } else {
            String::new()
        },
    ]
}

/// The settle / fail / close buttons of a PROCESSING refund (v2: SUCCESS / CHANGE /
/// REFUNDCLOSE; v3: SUCCESS / ABNORMAL / CLOSED); an `abnormal` one (its money held by
/// WeChat) can still be settled (re-routed) or closed.
fn finish_buttons(api: &str, mch_id: &str, out_refund_no: &str, abnormal: bool) -> String {
    let mut out = String::new();
    for (label, outcome) in [
        ("settle", "success"),
        ("fail", "change"),
        ("close", "close"),
    ] {
        if abnormal && outcome == "change" {
            continue;
        }
        let fields = [
            ("api", api),
            ("mch_id", mch_id),
            ("out_refund_no", out_refund_no),
            ("outcome", outcome),
        ];
        out.push_str(&button(
            console_actions::FINISH_REFUND,
            label,
            &fields,
            out_refund_no,
        ));
    }
    out
}

fn refunds(view: &View) -> String {
    let mut all: Vec<RefundRef> = view
        .state
        .refunds
        .by_key
        .values()
        .map(RefundRef::V2)
        .chain(view.v3.refunds.iter().map(RefundRef::V3))
        .collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms()));
    let (shown, hidden) = newest(all);
    table_of(
        &[
            "out_refund_no",
            "api",
            "order",
            "amount",
            "refund_status",
            "notify",
            "play",
        ],
        shown.iter().map(|r| r.cells(view)).collect(),
        hidden,
    )
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time, as WeChat shows times.
fn beijing_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8"))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn messages(view: &View) -> String {
    let rows = view
        .state
        .openapi
        .messages()
        .iter()
        .rev()
        .take(MAX_ROWS)
        .map(|m| {
            let mut data = String::new();
            for (k, v) in &m.data {
                if !data.is_empty() {
                    data.push_str("<br>");
                }
                let _ = write!(data, "<code>{}</code>: {}", esc(k), esc(v));
            }
            vec![
                format!(r#"<span class="msgid">{}</span>"#, m.msgid),
                format!("<code>{}</code>", esc(&m.appid)),
                format!("<code>{}</code>", esc(&m.touser)),
                format!("<code>{}</code>", esc(&m.template_id)),
                m.page
                    .as_deref()
                    .map(|p| format!("<code>{}</code>", esc(p)))
                    .unwrap_or_default(),
                data,
                beijing_time(m.at_ms),
            ]
        })
        .collect();
    table_of(
        &[
            "msgid",
            "appid",
            "touser",
            "template_id",
            "page",
            "data",
            "time (UTC+8)",
        ],
        rows,
        view.state.openapi.messages().len().saturating_sub(MAX_ROWS),
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
    fn long_lists_show_the_newest_rows_and_say_how_many_are_left_out() {
        let (rows, hidden) = newest((0..MAX_ROWS + 50).collect::<Vec<_>>());
        assert_eq!((rows.len(), hidden, rows[0]), (MAX_ROWS, 50, 0));
        let html = table_of(&["n"], vec![vec!["1".into()]], 50);
        assert!(
            html.contains("the newest 1 shown, 50 older not shown"),
            "{html}"
        );
        assert!(!table(&["n"], vec![vec!["1".into()]]).contains("not shown"));
    }

    #[test]
    fn buttons_carry_the_csrf_token() {
        let html = button("/console/pay", "pay", &[], "o1");
        let field = format!(r#"name="csrf" value="{}""#, console_actions::csrf_token());
        assert!(html.contains(&field), "{html}");
    }

    #[test]
    fn buttons_escape_their_fields() {
        let html = button("/console/pay", "pay", &[("prepay_id", "\"><x>")], "o1");
        assert!(html.contains("value=\"&quot;&gt;&lt;x&gt;\""), "{html}");
        assert!(!html.contains("<x>"));
    }
}
