//! Spending a user's coins for a shop service (coin mode, 代币): `SpendCoins`,
//! `CancelCoinSpend` and `GetCoinBalance` over WeChat's user-state APIs `currency_pay`,
//! `cancel_currency_pay` and `query_user_balance`, signed with the AppKey and the user's
//! session_key (from auth-service; it never leaves pay-service):
//! <https://developers.weixin.qq.com/miniprogram/dev/server/API/VirtualPayment/api_currency_pay.html>
//!
//! Exactly once: the spend is a `coin_spends` row (unique per user and idempotency key)
//! written PENDING *before* WeChat is asked, and its `spend_no` is the `order_id` WeChat
//! dedups on (a repeat answers 268490004). A retry, or a second replica racing the first,
//! finds the same row and sends the same `spend_no`, so at most one spend happens at WeChat;
//! the row then moves PENDING → SPENT (or REFUSED for 268490006) by a conditional UPDATE. A
//! call whose answer was lost leaves the row PENDING, and the caller's retry completes it.
//! The undo is `cancel_currency_pay` under `cancel_no`, SPENT → CANCELLED, once (268490004 /
//! 268490005 for a repeat).

use diesel::{
    ExpressionMethods, Insertable, OptionalExtension, QueryDsl, Queryable, Selectable,
    SelectableHelper,
};
use diesel_async::RunQueryDsl;
use service_kit::db::Database;
use wechat::{
    auth::ApiError,
    xpay::coins::{
        CancelCurrencyPay, CurrencyPay, ERR_ALREADY_CANCELLED, ERR_INSUFFICIENT_BALANCE,
        ERR_SESSION_EXPIRED, UserBalance,
    },
};
use wxmp_proto::pay::v1 as pb;

use super::flow::Xpay;
use crate::{
    error::Error,
    orders::{Payer, rules::check_client_ip, rules::new_order_no},
    payments::Payments,
    schema::coin_spends,
};

pub const PENDING: &str = "PENDING";
pub const SPENT: &str = "SPENT";
pub const REFUSED: &str = "REFUSED";
pub const CANCELLED: &str = "CANCELLED";

/// The longest idempotency key.
const MAX_KEY_LEN: usize = 64;
/// The most coins one spend may take (a guard against a caller's unit mistake).
const MAX_AMOUNT: i64 = 100_000_000;

/// A `coin_spends` row.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = coin_spends)]
pub struct CoinSpend {
    pub spend_no: String,
    pub user_id: i64,
    pub app_id: String,
    pub openid: String,
    pub env: i32,
    pub idempotency_key: String,
    pub amount: i64,
    pub state: String,
    pub balance_after: i64,
    pub cancel_no: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl CoinSpend {
    pub fn to_proto(&self) -> pb::CoinSpend {
        pb::CoinSpend {
            spend_no: self.spend_no.clone(),
            user_id: self.user_id,
            amount: self.amount,
            state: self.state.clone(),
            balance_after: self.balance_after,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

async fn find_keyed(db: &Database, user_id: i64, key: &str) -> Result<Option<CoinSpend>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        coin_spends::table
            .filter(coin_spends::user_id.eq(user_id))
            .filter(coin_spends::idempotency_key.eq(key))
            .select(CoinSpend::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

pub async fn find(db: &Database, spend_no: &str) -> Result<Option<CoinSpend>, Error> {
    Ok(service_kit::with_conn!(db, |conn| {
        coin_spends::table
            .filter(coin_spends::spend_no.eq(spend_no))
            .select(CoinSpend::as_select())
            .first(conn)
            .await
            .optional()
    })?)
}

/// Inserts the row unless the user already has one under the key; answers the row that holds
/// the key (this one or the earlier).
async fn insert_or_find(db: &Database, new: &CoinSpend) -> Result<CoinSpend, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        diesel::insert_into(coin_spends::table)
            .values(new)
            .on_conflict((coin_spends::user_id, coin_spends::idempotency_key))
            .do_nothing()
            .execute(conn)
            .await
    })?;
    if n > 0 {
        return Ok(new.clone());
    }
    find_keyed(db, new.user_id, &new.idempotency_key)
        .await?
        .ok_or_else(|| Error::Internal("coin spend vanished".into()))
}

/// `from` → `to` (with the balance WeChat answered); None when the row had left `from`.
async fn transition(
    db: &Database,
    spend_no: &str,
    from: &str,
    to: &str,
    balance_after: Option<i64>,
    cancel_no: Option<&str>,
    now: i64,
) -> Result<Option<CoinSpend>, Error> {
    let n = service_kit::with_conn!(db, |conn| {
        let target = coin_spends::table
            .filter(coin_spends::spend_no.eq(spend_no))
            .filter(coin_spends::state.eq(from));
        match (balance_after, cancel_no) {
            (Some(b), _) => {
                diesel::update(target)
                    .set((
                        coin_spends::state.eq(to),
                        coin_spends::balance_after.eq(b),
                        coin_spends::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await
            }
            (None, Some(c)) => {
                diesel::update(target)
                    .set((
                        coin_spends::state.eq(to),
                        coin_spends::cancel_no.eq(c),
                        coin_spends::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await
            }
            (None, None) => {
                diesel::update(target)
                    .set((coin_spends::state.eq(to), coin_spends::updated_at.eq(now)))
                    .execute(conn)
                    .await
            }
        }
    })?;
    if n == 0 {
        return Ok(None);
    }
    find(db, spend_no).await
}

/// A WeChat error of a coin call as the service's error.
fn coin_error(e: &ApiError, what: &str) -> Error {
    match e.errcode() {
        Some(ERR_SESSION_EXPIRED | wechat::xpay::ERR_SIGNATURE) => {
            Error::OrderState("no live session for the coin account; log in again".into())
        }
        Some(code) if code != -1 => Error::Wechat(format!("{what}: errcode {code}")),
        _ => Error::WechatUnavailable(format!("{what}: {e}")),
    }
}

fn check_payer(payer: &Payer) -> Result<(), Error> {
    if payer.user_id <= 0 {
        return Err(Error::MissingParameter("principal.user_id"));
    }
    if payer.app_id.is_empty() {
        return Err(Error::MissingParameter("principal.app_id"));
    }
    if payer.openid.is_empty() {
        return Err(Error::MissingParameter("principal.openid"));
    }
    Ok(())
}

impl Payments {
    fn coin_xpay(&self) -> Result<&Xpay, Error> {
        self.xpay()
            .filter(|x| !x.settings.coin_products.is_empty())
            .ok_or(Error::NotFound("coin mode (PAY_XPAY_COIN_PRODUCTS)"))
    }

    /// The user's coins at WeChat.
    pub async fn coin_balance(&self, payer: &Payer, client_ip: &str) -> Result<UserBalance, Error> {
        let xpay = self.coin_xpay()?;
        check_payer(payer)?;
        let ip = check_client_ip(client_ip)?;
        let session_key = xpay.session_key(&payer.app_id, &payer.openid).await?;
        let token = xpay.access_token(&payer.app_id).await?;
        xpay.wechat
            .xpay_query_user_balance(
                &token,
                xpay.settings.app_key.expose(),
                &session_key,
                &payer.openid,
                xpay.settings.env,
                &ip,
            )
            .await
            .map_err(|e| coin_error(&e, "query_user_balance"))
    }

    /// Spends `amount` coins of the payer once per `idempotency_key` (see the module doc).
    pub async fn spend_coins(
        &self,
        payer: &Payer,
        client_ip: &str,
        amount: i64,
        idempotency_key: &str,
        remark: &str,
    ) -> Result<CoinSpend, Error> {
        let xpay = self.coin_xpay()?;
        check_payer(payer)?;
        let ip = check_client_ip(client_ip)?;
        if !(1..=MAX_AMOUNT).contains(&amount) {
            return Err(Error::InvalidArgument(format!(
                "amount must be 1..={MAX_AMOUNT} coins"
            )));
        }
        let key = idempotency_key.trim();
        if key.is_empty() {
            return Err(Error::MissingParameter("idempotency_key"));
        }
        if key.len() > MAX_KEY_LEN || remark.chars().count() > 256 {
            return Err(Error::InvalidArgument(
                "idempotency_key is 1..=64 characters, remark at most 256".into(),
            ));
        }
        // The session first: a user without one changes nothing.
        let session_key = xpay.session_key(&payer.app_id, &payer.openid).await?;
        let now = self.now();
        let env = i32::from(u8::from(xpay.settings.env));
        let spend = insert_or_find(
            self.database(),
            &CoinSpend {
                spend_no: format!("CS{}", new_order_no(now)),
                user_id: payer.user_id,
                app_id: payer.app_id.clone(),
                openid: payer.openid.clone(),
                env,
                idempotency_key: key.to_owned(),
                amount,
                state: PENDING.into(),
                balance_after: 0,
                cancel_no: String::new(),
                created_at: now,
                updated_at: now,
            },
        )
        .await?;
        if spend.amount != amount || spend.app_id != payer.app_id || spend.openid != payer.openid {
            return Err(Error::IdempotencyConflict);
        }
        if spend.state == REFUSED {
            return Err(Error::OrderState("not enough coins".into()));
        }
        if spend.state != PENDING {
            return Ok(spend);
        }
        let token = xpay.access_token(&payer.app_id).await?;
        let answer = xpay
            .wechat
            .xpay_currency_pay(
                &token,
                xpay.settings.app_key.expose(),
                &session_key,
                &CurrencyPay {
                    openid: payer.openid.clone(),
                    env: xpay.settings.env,
                    user_ip: ip,
                    amount,
                    order_id: spend.spend_no.clone(),
                    payitem: String::new(),
                    remark: remark.to_owned(),
                },
            )
            .await;
        let now = self.now();
        let moved = match answer {
            Ok(a) => {
                // A duplicate carries no balance: keep 0 (unknown).
                let balance = if a.duplicate { 0 } else { a.balance };
                transition(
                    self.database(),
                    &spend.spend_no,
                    PENDING,
                    SPENT,
                    Some(balance),
                    None,
                    now,
                )
                .await?
            }
            Err(e) if e.errcode() == Some(ERR_INSUFFICIENT_BALANCE) => {
                transition(
                    self.database(),
                    &spend.spend_no,
                    PENDING,
                    REFUSED,
                    None,
                    None,
                    now,
                )
                .await?
            }
            Err(e) => return Err(coin_error(&e, "currency_pay")),
        };
        // None: another replica moved it first; answer what it wrote.
        let spend = match moved {
            Some(s) => s,
            None => find(self.database(), &spend.spend_no)
                .await?
                .ok_or_else(|| Error::Internal("coin spend vanished".into()))?,
        };
        if spend.state == REFUSED {
            return Err(Error::OrderState("not enough coins".into()));
        }
        tracing::info!(spend_no = %spend.spend_no, state = %spend.state, "coin spend");
        Ok(spend)
    }

    /// Gives back the coins of a SPENT spend of the payer, once.
    pub async fn cancel_coin_spend(
        &self,
        payer: &Payer,
        client_ip: &str,
        spend_no: &str,
    ) -> Result<CoinSpend, Error> {
        let xpay = self.coin_xpay()?;
        check_payer(payer)?;
        let ip = check_client_ip(client_ip)?;
        let spend = find(self.database(), spend_no)
            .await?
            .filter(|s| s.user_id == payer.user_id)
            .ok_or(Error::NotFound("coin spend"))?;
        match spend.state.as_str() {
            CANCELLED => return Ok(spend),
            SPENT => {}
            PENDING => {
                return Err(Error::OrderState(
                    "the spend is not complete; retry SpendCoins with its key first".into(),
                ));
            }
            _ => return Err(Error::OrderState("the spend spent nothing".into())),
        }
        let session_key = xpay.session_key(&spend.app_id, &spend.openid).await?;
        let token = xpay.access_token(&spend.app_id).await?;
        let cancel_no = format!("CC{}", spend.spend_no.trim_start_matches("CS"));
        let answer = xpay
            .wechat
            .xpay_cancel_currency_pay(
                &token,
                xpay.settings.app_key.expose(),
                &session_key,
                &CancelCurrencyPay {
                    openid: spend.openid.clone(),
                    env: xpay.settings.env,
                    user_ip: ip,
                    pay_order_id: spend.spend_no.clone(),
                    order_id: cancel_no.clone(),
                    amount: spend.amount,
                },
            )
            .await;
        match answer {
            Ok(_) => {}
            // Cancelled before (this cancel_no, or the spend already undone).
            Err(e) if e.errcode() == Some(ERR_ALREADY_CANCELLED) => {}
            Err(e) => return Err(coin_error(&e, "cancel_currency_pay")),
        }
        let now = self.now();
        match transition(
            self.database(),
            &spend.spend_no,
            SPENT,
            CANCELLED,
            None,
            Some(&cancel_no),
            now,
        )
        .await?
        {
            Some(s) => Ok(s),
            None => find(self.database(), &spend.spend_no)
                .await?
                .ok_or_else(|| Error::Internal("coin spend vanished".into())),
        }
    }
}
