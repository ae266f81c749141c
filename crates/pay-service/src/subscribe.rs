//! The "order paid" subscribe message (`subscribeMessage.send`).
//!
//! When an order becomes PAID (by a notify or by the reconciler's orderquery), [`on_paid`]
//! makes the order's row in `paid_messages` (`INSERT … ON CONFLICT DO NOTHING`: one row per
//! order however often the payment is seen) and wakes the sender. The sender, a background
//! task of every replica, claims due rows with a conditional UPDATE (`PENDING → SENDING`), so
//! each message goes to WeChat at most once even with several replicas; the payment itself
//! never waits for or fails because of the message.
//!
//! Outcomes: SENT; REFUSED for 43101 (the user did not accept the subscription: recorded,
//! never retried); PENDING again with backoff when WeChat answered that it did not send
//! (-1 busy, HTTP 5xx, a connection refused, no access_token), FAILED after
//! `PAY_PAID_MESSAGE_MAX_ATTEMPTS` or for a request WeChat rejects; UNKNOWN when the call timed
//! out mid-way (WeChat may have sent it: not resent, at most once wins). A token WeChat
//! rejects (40001/42001/40014) is force-refreshed through auth-service once and the send
//! retried once. A row left SENDING by a replica that died mid-send stays so (not resent).
//!
//! A repair scan (each `PAY_RECONCILE_INTERVAL_SECS`) makes the rows of orders paid in the
//! last day that have none (the insert after the state change failed), so a message is not
//! lost to a database blip at the wrong moment.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use diesel::{ExpressionMethods, Insertable, QueryDsl};
use diesel_async::RunQueryDsl;
use service_kit::{
    Shutdown,
    db::{Database, DbError},
    grpc::AttachToken,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use wechat::{ApiError, SubscribeMessage, WechatClient};
use wxmp_proto::auth::v1::{GetAccessTokenRequest, auth_service_client::AuthServiceClient};

use crate::{
    config::Config,
    orders::{Order, PaidOutcome},
    payments::Payments,
    schema::{orders, paid_messages},
};

pub use crate::config::subscribe::PaidMessageConfig;

/// How often the sender looks for due rows when nothing woke it.
const POLL: Duration = Duration::from_secs(1);
/// Rows claimed per round.
const BATCH: i64 = 20;
/// The repair scan looks this far back.
const REPAIR_WINDOW_SECS: i64 = 86_400;
/// Longest stored error text.
const MAX_ERROR_LEN: usize = 200;

/// The placeholders a template value may use.
const PLACEHOLDERS: [&str; 6] = [
    "order_no",
    "amount",
    "amount_fen",
    "description",
    "paid_at",
    "transaction_id",
];

/// One `key=value` of the template, the value with placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    key: String,
    value: String,
}

fn parse_data(spec: &str) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("PAY_PAID_TEMPLATE_DATA: {part:?} is not key=value"))?;
        check_placeholders(value).map_err(|e| format!("PAY_PAID_TEMPLATE_DATA: {e}"))?;
        fields.push(Field {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    if fields.is_empty() {
        return Err("PAY_PAID_TEMPLATE_DATA must name the template's keywords when PAY_PAID_TEMPLATE_ID is set".into());
    }
    Ok(fields)
}

fn check_placeholders(value: &str) -> Result<(), String> {
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {value:?}"))?;
        let name = &rest[start + 1..start + end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} (known: {PLACEHOLDERS:?})"
            ));
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

fn render(template: &str, order: &Order) -> String {
    let paid_at = order.paid_at.unwrap_or(order.updated_at);
    let beijing = chrono::DateTime::from_timestamp(paid_at, 0)
        .map(|t| {
            t.with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8"))
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default();
    template
        .replace("{order_no}", &order.order_no)
        .replace(
            "{amount}",
            &format!("{}.{:02}", order.amount_fen / 100, order.amount_fen % 100),
        )
        .replace("{amount_fen}", &order.amount_fen.to_string())
        .replace("{description}", &order.description)
        .replace("{paid_at}", &beijing)
        .replace("{transaction_id}", &order.transaction_id)
}

type AuthClient = AuthServiceClient<InterceptedService<Channel, AttachToken>>;

/// The configured message and what sends it.
#[derive(Debug)]
pub struct PaidMessages {
    template_id: String,
    fields: Vec<Field>,
    page: Option<String>,
    max_attempts: i32,
    retry: Duration,
    auth: AuthClient,
    wechat: WechatClient,
    wake: tokio::sync::Notify,
}

impl PaidMessages {
    /// `None` when `PAY_PAID_TEMPLATE_ID` is unset.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Self>>, String> {
        let c = &config.paid_message;
        let Some(template_id) = c.paid_template_id.clone().filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        let fields = parse_data(&c.paid_template_data)?;
        if let Some(page) = &c.paid_template_page {
            check_placeholders(page).map_err(|e| format!("PAY_PAID_TEMPLATE_PAGE: {e}"))?;
        }
        let timeout = config.wechat_timeout();
        let channel = service_kit::grpc::channel(&c.auth_service_url, timeout, timeout)
            .map_err(|e| format!("PAY_AUTH_SERVICE_URL: {e}"))?;
        let wechat = config.wechat.client()?;
        Ok(Some(Arc::new(Self {
            template_id: template_id.trim().to_owned(),
            fields,
            page: c.paid_template_page.clone(),
            max_attempts: i32::try_from(c.paid_message_max_attempts).unwrap_or(i32::MAX),
            retry: Duration::from_millis(c.paid_message_retry_ms),
            auth: AuthServiceClient::with_interceptor(
                channel,
                AttachToken::new(config.internal.internal_token.as_ref()),
            ),
            wechat,
            wake: tokio::sync::Notify::new(),
        })))
    }

    fn row(&self, order: &Order, now: i64) -> NewPaidMessage {
        let data: BTreeMap<&str, String> = self
            .fields
            .iter()
            .map(|f| (f.key.as_str(), render(&f.value, order)))
            .collect();
        NewPaidMessage {
            order_no: order.order_no.clone(),
            app_id: order.app_id.clone(),
            openid: order.openid.clone(),
            template_id: self.template_id.clone(),
            data: serde_json::to_string(&data).unwrap_or_else(|_| "{}".into()),
            page: self
                .page
                .as_deref()
                .map(|p| render(p, order))
                .unwrap_or_default(),
            state: PENDING.into(),
            next_attempt_at: now,
            created_at: now,
            updated_at: now,
        }
    }
}

const PENDING: &str = "PENDING";
const SENDING: &str = "SENDING";

#[derive(Insertable)]
#[diesel(table_name = paid_messages)]
struct NewPaidMessage {
    order_no: String,
    app_id: String,
    openid: String,
    template_id: String,
    data: String,
    page: String,
    state: String,
    next_attempt_at: i64,
    created_at: i64,
    updated_at: i64,
}

/// The PAID hook: makes the order's message row (once) and wakes the sender. Never fails the
/// payment: a database error is logged and the repair scan makes the row later.
pub async fn on_paid(payments: &Payments, outcome: &PaidOutcome) {
    let Some(messages) = payments.inner.paid_messages.as_ref() else {
        return;
    };
    // A duplicate still enqueues: it repairs a row whose insert failed the first time.
    let (PaidOutcome::Applied(order) | PaidOutcome::Duplicate(order)) = outcome else {
        return;
    };
    if order.openid.is_empty() {
        return;
    }
    match enqueue(payments.database(), &messages.row(order, payments.now())).await {
        Ok(true) => messages.wake.notify_one(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(order_no = %order.order_no, error = %e, "could not queue the paid message; the repair scan will");
        }
    }
}

async fn enqueue(db: &Database, row: &NewPaidMessage) -> Result<bool, DbError> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::insert_into(paid_messages::table)
            .values(row)
            .on_conflict(paid_messages::order_no)
            .do_nothing()
            .execute(conn)
            .await
    })?;
    Ok(n > 0)
}

/// Makes the missing rows of orders paid in the last day.
async fn repair(payments: &Payments, messages: &PaidMessages) -> Result<usize, DbError> {
    let db = payments.database();
    let since = payments.now() - REPAIR_WINDOW_SECS;
    let paid: Vec<Order> = service_kit::with_conn!(db, |conn| {
        orders::table
            .filter(orders::state.eq_any(["PAID", "REFUNDING", "REFUNDED"]))
            .filter(orders::paid_at.ge(since))
            .filter(orders::openid.ne(""))
            .order(orders::paid_at.desc())
            .limit(500)
            .select(<Order as diesel::SelectableHelper<_>>::as_select())
            .load(conn)
            .await
    })?;
    if paid.is_empty() {
        return Ok(0);
    }
    let numbers: Vec<&str> = paid.iter().map(|o| o.order_no.as_str()).collect();
    let known: Vec<String> = service_kit::with_conn!(db, |conn| {
        paid_messages::table
            .filter(paid_messages::order_no.eq_any(&numbers))
            .select(paid_messages::order_no)
            .load(conn)
            .await
    })?;
    let mut made = 0;
    for order in paid.iter().filter(|o| !known.contains(&o.order_no)) {
        if enqueue(db, &messages.row(order, payments.now())).await? {
            made += 1;
        }
    }
    if made > 0 {
        tracing::warn!(
            made,
            "repair scan queued paid messages the PAID hook missed"
        );
    }
    Ok(made)
}

/// A claimed row, ready to send.
#[derive(diesel::Queryable)]
struct Claimed {
    order_no: String,
    app_id: String,
    openid: String,
    template_id: String,
    data: String,
    page: String,
    attempts: i32,
}

/// Claims up to BATCH due rows: PENDING → SENDING, each by its own conditional UPDATE.
async fn claim(db: &Database, now: i64) -> Result<Vec<Claimed>, DbError> {
    let due: Vec<String> = service_kit::with_conn!(db, |conn| {
        paid_messages::table
            .filter(paid_messages::state.eq(PENDING))
            .filter(paid_messages::next_attempt_at.le(now))
            .order(paid_messages::next_attempt_at.asc())
            .limit(BATCH)
            .select(paid_messages::order_no)
            .load(conn)
            .await
    })?;
    let mut claimed = Vec::new();
    for order_no in due {
        let row: Option<Claimed> = service_kit::with_conn!(db, |conn| {
            diesel::OptionalExtension::optional(
                diesel::update(
                    paid_messages::table
                        .filter(paid_messages::order_no.eq(&order_no))
                        .filter(paid_messages::state.eq(PENDING))
                        .filter(paid_messages::next_attempt_at.le(now)),
                )
                .set((
                    paid_messages::state.eq(SENDING),
                    paid_messages::attempts.eq(paid_messages::attempts + 1),
                    paid_messages::updated_at.eq(now),
                ))
                .returning((
                    paid_messages::order_no,
                    paid_messages::app_id,
                    paid_messages::openid,
                    paid_messages::template_id,
                    paid_messages::data,
                    paid_messages::page,
                    paid_messages::attempts,
                ))
                .get_result(conn)
                .await,
            )
        })?;
        claimed.extend(row);
    }
    Ok(claimed)
}

/// What became of one send.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Sent,
    Refused,
    Retry(String),
    Failed(String),
    Unknown(String),
}

fn verdict_of(result: Result<(), SendError>) -> Verdict {
    match result {
        Ok(()) => Verdict::Sent,
        Err(SendError::Token(msg)) => Verdict::Retry(msg),
        Err(SendError::Wechat(e)) => match &e {
            _ if e.errcode() == Some(43101) => Verdict::Refused,
            ApiError::SystemBusy => Verdict::Retry(e.to_string()),
            // The request never reached WeChat, or WeChat's front answered 5xx: not sent.
            ApiError::Transport(t) if t.starts_with("connect") || t.starts_with("HTTP 5") => {
                Verdict::Retry(e.to_string())
            }
            ApiError::Transport(_) => Verdict::Unknown(e.to_string()),
            _ => Verdict::Failed(e.to_string()),
        },
    }
}

enum SendError {
    /// No access_token (auth-service down, WeChat's token quota): nothing was sent.
    Token(String),
    Wechat(ApiError),
}

impl PaidMessages {
    async fn token(&self, app_id: &str, stale: Option<i64>) -> Result<(String, i64), SendError> {
        let t = self
            .auth
            .clone()
            .get_access_token(GetAccessTokenRequest {
                app_id: app_id.to_owned(),
                force_refresh: stale.is_some(),
                stale_generation: stale.unwrap_or(0),
            })
            .await
            .map_err(|s| {
                SendError::Token(format!(
                    "GetAccessToken: {}",
                    service_kit::reason::reason_of(&s).as_str_name()
                ))
            })?
            .into_inner();
        Ok((t.access_token, t.generation))
    }

    async fn send(&self, row: &Claimed) -> Result<(), SendError> {
        let data: BTreeMap<String, String> = serde_json::from_str(&row.data).unwrap_or_default();
        let message = SubscribeMessage {
            touser: row.openid.clone(),
            template_id: row.template_id.clone(),
            page: (!row.page.is_empty()).then(|| row.page.clone()),
            miniprogram_state: None,
            data,
        };
        let (token, generation) = self.token(&row.app_id, None).await?;
        match self.wechat.send_subscribe_message(&token, &message).await {
            Err(e) if e.is_token_rejected() => {
                tracing::info!(errcode = ?e.errcode(), "access_token rejected; refreshing once");
                let (token, _) = self.token(&row.app_id, Some(generation)).await?;
                self.wechat
                    .send_subscribe_message(&token, &message)
                    .await
                    .map_err(SendError::Wechat)
            }
            other => other.map_err(SendError::Wechat),
        }
    }

    fn backoff(&self, attempts: i32) -> i64 {
        let factor = 1u32 << attempts.clamp(1, 16).saturating_sub(1);
        i64::try_from((self.retry * factor).as_millis().div_ceil(1000)).unwrap_or(i64::MAX)
    }
}

/// Records a send's verdict: SENDING → the next state, conditionally.
async fn finish(
    db: &Database,
    messages: &PaidMessages,
    row: &Claimed,
    verdict: &Verdict,
    now: i64,
) -> Result<(), DbError> {
    let (state, error, next) = match verdict {
        Verdict::Sent => ("SENT", String::new(), now),
        Verdict::Refused => ("REFUSED", "43101 user did not subscribe".to_owned(), now),
        Verdict::Retry(e) if row.attempts < messages.max_attempts => {
            (PENDING, e.clone(), now + messages.backoff(row.attempts))
        }
        Verdict::Retry(e) | Verdict::Failed(e) => ("FAILED", e.clone(), now),
        Verdict::Unknown(e) => ("UNKNOWN", e.clone(), now),
    };
    let error: String = error.chars().take(MAX_ERROR_LEN).collect();
    service_kit::with_conn!(db, |conn| {
        diesel::update(
            paid_messages::table
                .filter(paid_messages::order_no.eq(&row.order_no))
                .filter(paid_messages::state.eq(SENDING)),
        )
        .set((
            paid_messages::state.eq(state),
            paid_messages::last_error.eq(&error),
            paid_messages::next_attempt_at.eq(next),
            paid_messages::updated_at.eq(now),
        ))
        .execute(conn)
        .await
    })?;
    metrics::counter!("wxmp_pay_paid_messages_total", "result" => state.to_ascii_lowercase())
        .increment(1);
    tracing::info!(order_no = %row.order_no, state, attempts = row.attempts, "paid message");
    Ok(())
}

/// The sender: runs until `shutdown` in every replica (rows are claimed, never shared).
pub async fn run(payments: Payments, shutdown: Shutdown) {
    let Some(messages) = payments.inner.paid_messages.clone() else {
        return;
    };
    let repair_every = payments.inner.settings.reconcile_interval;
    let mut last_repair: Option<tokio::time::Instant> = None;
    loop {
        if last_repair.is_none_or(|t| t.elapsed() >= repair_every) {
            last_repair = Some(tokio::time::Instant::now());
            if let Err(e) = repair(&payments, &messages).await {
                tracing::warn!(error = %e, "paid message repair scan failed");
            }
        }
        match claim(payments.database(), payments.now()).await {
            Ok(rows) => {
                for row in &rows {
                    let verdict = verdict_of(messages.send(row).await);
                    if let Err(e) = finish(
                        payments.database(),
                        &messages,
                        row,
                        &verdict,
                        payments.now(),
                    )
                    .await
                    {
                        tracing::error!(order_no = %row.order_no, error = %e, "could not record a paid message's outcome");
                    }
                }
                if i64::try_from(rows.len()) == Ok(BATCH) {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "paid message claim failed"),
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = messages.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_data_parses_and_names_the_variable() {
        let f = parse_data("amount1={amount}; character_string2={order_no};thing3=Paid").unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[2].value, "Paid");
        for bad in ["", "x", "=v", "a={nope}", "a={order_no"] {
            let e = parse_data(bad).unwrap_err();
            assert!(e.starts_with("PAY_PAID_TEMPLATE_DATA"), "{bad}: {e}");
        }
    }

    #[test]
    fn verdicts_follow_wechat_answers() {
        let w = |e| verdict_of(Err(SendError::Wechat(e)));
        assert_eq!(
            w(ApiError::Other {
                errcode: 43101,
                errmsg: "x".into()
            }),
            Verdict::Refused
        );
        assert!(matches!(w(ApiError::SystemBusy), Verdict::Retry(_)));
        assert!(matches!(
            w(ApiError::Transport("HTTP 503".into())),
            Verdict::Retry(_)
        ));
        assert!(matches!(
            w(ApiError::Transport("connect error: refused".into())),
            Verdict::Retry(_)
        ));
        assert!(matches!(
            w(ApiError::Transport("timeout: x".into())),
            Verdict::Unknown(_)
        ));
        assert!(matches!(
            w(ApiError::Other {
                errcode: 40003,
                errmsg: "x".into()
            }),
            Verdict::Failed(_)
        ));
        assert_eq!(verdict_of(Ok(())), Verdict::Sent);
    }
}
