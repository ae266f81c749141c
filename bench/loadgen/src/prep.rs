//! Everything made before a timed window: users and their tokens, login codes, encrypted
//! profiles, signed notifies. Made through the same public endpoints a phone and WeChat use
//! (the sandbox's `/sandbox/*` plays the phone), never by writing to a database.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use wechat::pay::{sign::SignType, xml};

/// How many setup requests are in flight at once.
const SETUP_CONCURRENCY: usize = 32;

pub struct Setup {
    http: reqwest::Client,
    gateway: String,
    sandbox: String,
}

/// A logged-in bench user.
#[derive(Clone, Debug)]
pub struct User {
    pub openid: String,
    pub token: String,
}

/// What a notify is built from: an order created by `POST /pay/`.
#[derive(Clone, Debug)]
pub struct PaidOrder {
    pub order_no: String,
    pub openid: String,
}

/// The merchant the stack runs with (the sandbox's dev merchant unless overridden).
#[derive(Clone, Debug)]
pub struct Merchant {
    pub appid: String,
    pub mch_id: String,
    pub key: String,
}

impl Setup {
    pub fn new(gateway: &str, sandbox: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(SETUP_CONCURRENCY)
            // Shorter than the servers' keep-alive (actix: 5 s), so a connection left idle
            // while the floors run is dropped here rather than closed under a request.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            gateway: gateway.trim_end_matches('/').to_owned(),
            sandbox: sandbox.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(&self, url: String, body: Value) -> Result<Value, String> {
        // One retry when the request could not be sent at all (a pooled connection the
        // server had just closed): nothing reached the server, so nothing is repeated.
        let response = match self.http.post(&url).json(&body).send().await {
            Err(e) if e.is_connect() || e.is_request() => {
                self.http.post(&url).json(&body).send().await
            }
            other => other,
        }
        .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        let value: Value = response
            .json()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("POST {url}: HTTP {status} {value}"));
        }
        Ok(value)
    }

    /// A wx.login() code from the sandbox; `openid` None makes a new user.
    pub async fn login_code(&self, openid: Option<&str>) -> Result<(String, String), String> {
        let body = openid.map_or_else(|| json!({}), |o| json!({ "openid": o }));
        let answer = self
            .post(format!("{}/sandbox/login-code", self.sandbox), body)
            .await?;
        let text = |k: &str| answer[k].as_str().map(str::to_owned);
        text("code")
            .zip(text("openid"))
            .ok_or_else(|| format!("login-code answered {answer}"))
    }

    /// `count` new users, each logged in once through the gateway.
    pub async fn users(&self, count: usize) -> Result<Vec<User>, String> {
        stream::iter(0..count)
            .map(|_| async {
                let (code, openid) = self.login_code(None).await?;
                let answer = self
                    .post(format!("{}/login/", self.gateway), json!({ "code": code }))
                    .await?;
                let token = answer["data"]["token"]
                    .as_str()
                    .ok_or_else(|| format!("/login/ answered {answer}"))?
                    .to_owned();
                Ok::<_, String>(User { openid, token })
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// `count` unused login codes, for the given openids in turn (returning users).
    pub async fn codes(&self, openids: &[String], count: usize) -> Result<Vec<String>, String> {
        if openids.is_empty() {
            return Ok(Vec::new());
        }
        stream::iter(0..count)
            .map(|i| async move {
                self.login_code(Some(&openids[i % openids.len()]))
                    .await
                    .map(|(code, _)| code)
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Logs every user in once more, one login per user at a time: the login window's
    /// concurrent logins of one user can leave auth-service holding an older session_key than
    /// the one WeChat (the sandbox) considers current (auth stores each login's key as its
    /// code2Session answers, and two answers' writes can land in either order). Encrypted
    /// bodies made after this open with the key auth holds.
    pub async fn relogin(&self, users: &[User]) -> Result<(), String> {
        stream::iter(users)
            .map(|u| async move {
                let (code, _) = self.login_code(Some(&u.openid)).await?;
                self.post(format!("{}/login/", self.gateway), json!({ "code": code }))
                    .await
                    .map(drop)
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// A reconciler backlog: `count` orders of `product` (users in turn), each paid at the
    /// sandbox with its notify dropped, as WeChat charges orders while pay-service is down.
    /// Answers their order numbers.
    pub async fn lost_notifies(
        &self,
        users: &[User],
        product: &str,
        count: usize,
    ) -> Result<Vec<String>, String> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        stream::iter(0..count)
            .map(|i| async move {
                let user = &users[i % users.len()];
                let answer = self
                    .post(
                        format!("{}/pay/", self.gateway),
                        json!({ "token": user.token, "product_id": product }),
                    )
                    .await?;
                let data = &answer["data"];
                let order_no = data["order_no"]
                    .as_str()
                    .ok_or_else(|| format!("/pay/ answered {answer}"))?
                    .to_owned();
                let mut body = json!({});
                for k in [
                    "appId",
                    "timeStamp",
                    "nonceStr",
                    "package",
                    "signType",
                    "paySign",
                ] {
                    body[k] = data[k].clone();
                }
                body["faults"] = json!({ "drop_notify": true });
                self.post(format!("{}/sandbox/pay", self.sandbox), body)
                    .await?;
                Ok::<_, String>(order_no)
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// `count` unused login codes, each for a new user (openid) of the sandbox.
    pub async fn new_codes(&self, count: usize) -> Result<Vec<String>, String> {
        stream::iter(0..count)
            .map(|_| async { self.login_code(None).await.map(|(code, _)| code) })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The `/userinfo/` body of each user: a profile encrypted by the sandbox with the user's
    /// current session_key, exactly what `wx.getUserProfile` hands the mini program.
    pub async fn userinfo_bodies(&self, users: &[User]) -> Result<Vec<Vec<u8>>, String> {
        stream::iter(users.iter().enumerate())
            .map(|(i, user)| async move {
                let profile = json!({
                    "nickName": format!("bench user {i}"),
                    "gender": 1,
                    "language": "zh_CN",
                    "city": "Shenzhen",
                    "province": "Guangdong",
                    "country": "China",
                    "avatarUrl": "https://example.invalid/a.png",
                });
                let sealed = self
                    .post(
                        format!("{}/sandbox/user-data", self.sandbox),
                        json!({ "openid": user.openid, "profile": profile }),
                    )
                    .await?;
                serde_json::to_vec(&json!({
                    "token": user.token,
                    "encryptedData": sealed["encryptedData"],
                    "iv": sealed["iv"],
                    "rawData": sealed["rawData"],
                    "signature": sealed["signature"],
                }))
                .map_err(|e| e.to_string())
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The price of `product` in the catalog (`GET /products`).
    pub async fn price(&self, product: &str) -> Result<i64, String> {
        let url = format!("{}/products", self.gateway);
        let answer: Value = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        answer["data"]["products"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == product))
            .and_then(|p| p["price_fen"].as_i64())
            .ok_or_else(|| format!("product {product:?} not in {answer}"))
    }

    /// The app id the stack signs payments for (`appId` of a `/pay/` answer).
    pub async fn pay_appid(&self, user: &User, product: &str) -> Result<String, String> {
        let answer = self
            .post(
                format!("{}/pay/", self.gateway),
                json!({ "token": user.token, "product_id": product }),
            )
            .await?;
        answer["data"]["appId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("/pay/ answered {answer}"))
    }
}

/// The notify WeChat would send for `order` once paid, signed with the merchant key (MD5, as
/// the sandbox signs by default). Field for field what the sandbox sends.
pub fn notify_xml(merchant: &Merchant, order: &PaidOrder, total_fee: i64, n: usize) -> String {
    let total_fee = total_fee.to_string();
    let nonce = format!("bench{n:027}");
    // Unique across the whole run (WeChat's transaction_id is unique, and pay-service's index
    // says so): the out_trade_no is, so it is folded in.
    let transaction_id = format!("4200{:0>24}", fold(&order.order_no));
    let time_end = chrono::Local::now().format("%Y%m%d%H%M%S").to_string();
    let mut fields: Vec<(&str, &str)> = vec![
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", &merchant.appid),
        ("mch_id", &merchant.mch_id),
        ("nonce_str", &nonce),
        ("result_code", "SUCCESS"),
        ("openid", &order.openid),
        ("is_subscribe", "N"),
        ("trade_type", "JSAPI"),
        ("bank_type", "OTHERS"),
        ("total_fee", &total_fee),
        ("fee_type", "CNY"),
        ("cash_fee", &total_fee),
        ("transaction_id", &transaction_id),
        ("out_trade_no", &order.order_no),
        ("time_end", &time_end),
    ];
    let sign = wechat::pay::sign::sign(fields.iter().copied(), &merchant.key, SignType::Md5);
    fields.push(("sign", &sign));
    xml::to_xml(fields)
}

/// A 24-digit number from an order number (FNV-1a, 64 bits, zero-padded): distinct order
/// numbers give distinct transaction ids but for a 2^-64 chance.
fn fold(order_no: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in order_no.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat::pay::{PayConfig, verify_notify};

    #[test]
    fn notifies_verify_with_the_merchant_key() {
        let merchant = Merchant {
            appid: "wxapp".into(),
            mch_id: "1900000109".into(),
            key: "devpaykey00000000000000000000key".into(),
        };
        let order = PaidOrder {
            order_no: "W123".into(),
            openid: "o1".into(),
        };
        let body = notify_xml(&merchant, &order, 1800, 7);
        let other = PaidOrder {
            order_no: "W124".into(),
            ..order.clone()
        };
        assert_ne!(
            verify_notify(
                body.as_bytes(),
                &PayConfig::new(&merchant.appid, &merchant.mch_id, &merchant.key)
            )
            .unwrap()
            .transaction_id,
            verify_notify(
                notify_xml(&merchant, &other, 1800, 7).as_bytes(),
                &PayConfig::new(&merchant.appid, &merchant.mch_id, &merchant.key)
            )
            .unwrap()
            .transaction_id,
            "every order its own transaction_id, whatever n"
        );
        let config = PayConfig::new(&merchant.appid, &merchant.mch_id, &merchant.key);
        let notify = verify_notify(body.as_bytes(), &config).expect("verifies");
        assert_eq!(notify.total_fee, 1800);
        assert_eq!(notify.out_trade_no, "W123");
        let other = PayConfig::new(&merchant.appid, &merchant.mch_id, "another key");
        assert!(verify_notify(body.as_bytes(), &other).is_err());
    }
}
