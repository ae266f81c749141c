//! An offline WeChat simulator: WeChat's own paths and formats, so the stack runs and is tested
//! with no WeChat account, plus `/sandbox/*` developer endpoints that play the phone.
//!
//! Start it with [`serve`] on a listener you bound, or [`spawn`] in tests:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sandbox = sandbox::spawn(sandbox::Config::dev()).await?;
//! // point WXMP_WECHAT_API_BASE and WXMP_WECHAT_PAY_BASE at sandbox.base_url
//! # Ok(()) }
//! ```
//!
//! # WeChat paths
//!
//! | path | answers |
//! |---|---|
//! | `GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code` | `{"session_key","openid","unionid"}`; errcodes 41002 appid missing, 41004 appsecret missing, 40013 invalid appid, 40125 invalid appsecret, 40002 invalid grant_type, 41008 missing code, 40029 invalid code (unknown, expired after `SANDBOX_CODE_TTL_SECS`, or of another app), 40163 code been used, 45011 minute quota (`SANDBOX_CODE_RATE_PER_MIN` per code, `SANDBOX_APP_RATE_PER_MIN` per appid). Each success rotates the user's session_key. |
//! | `GET /cgi-bin/token?grant_type=client_credential&appid&secret` | `{"access_token","expires_in":7200}`, a new token per call |
//! | `POST /cgi-bin/stable_token` `{grant_type, appid, secret, force_refresh}` | the same token while it has more than 5 minutes left (`expires_in` = what is left); `force_refresh` renews it, at most 20 a day and 30 s apart (else 45009); 47001 for a body that is not JSON |
//! | `POST /pay/unifiedorder` | JSAPI only: `trade_type`, `prepay_id`; the same prepay_id for an identical repeat (all fields but nonce_str/sign/sign_type) within 2 h |
//! | `POST /pay/orderquery` | by `transaction_id` or `out_trade_no`; SUCCESS orders carry openid, is_subscribe, trade_type, bank_type, total_fee, fee_type, cash_fee, transaction_id, out_trade_no, attach, time_end; other states total_fee, out_trade_no, attach; always trade_state + trade_state_desc |
//! | `POST /pay/closeorder` | `result_msg` OK; ORDERPAID, ORDERCLOSED, ORDERNOTEXIST |
//!
//! Errors of the login and token paths are HTTP 200 `{"errcode": n, "errmsg": "<text>, rid: <id>"}`
//! (WeChat appends a request id: match on errcode). Pay answers are XML. A request that cannot be
//! read or authenticated gets the documented `return_code=FAIL` with `return_msg` ("post数据为空",
//! "XML格式错误", "缺少参数{field}", "sign_type参数格式错误", "商户号mch_id或sub_mch_id不存在",
//! "商户号mch_id与appid不匹配", "签名失败"), unsigned. Everything else is signed with the merchant
//! key and the request's `sign_type` (MD5 by default, or HMAC-SHA256) and carries `appid`,
//! `mch_id`, `nonce_str`, `sign`, `result_code`; failures add `err_code` + `err_code_des`:
//! `LACK_PARAMS` (a required field missing), `PARAM_ERROR` (trade_type not JSAPI, openid missing,
//! total_fee not a positive integer, fee_type not CNY, bad out_trade_no/body/attach/ip/notify_url,
//! openid of another app), `INVALID_REQUEST` ("201 商户订单号重复": same out_trade_no, other
//! fields), `ORDERPAID`, `ORDERCLOSED`, `ORDERNOTEXIST` ("order not exist"), `SYSTEMERROR`
//! (injected).
//!
//! # Developer endpoints (JSON)
//!
//! Errors are `{"error": "<kind>", "message": "..."}` with HTTP 400/404/409.
//!
//! - `POST /sandbox/login-code` `{"appid"?, "openid"?, "unionid"?}` → `{"code","appid","openid","unionid"}`.
//!   No openid: a new user (`o` + 27 characters). `unionid` logs the same person into another app.
//! - `POST /sandbox/user-data` `{"appid"?, "openid", "kind"?: "userinfo"|"phone", "profile"?:
//!   {"nickName","gender","language","city","province","country","avatarUrl"}, "phone"?,
//!   "countryCode"?}` → `{"encryptedData","iv","rawData","signature"}` encrypted with the user's
//!   current session_key (404 `not_logged_in` before the first jscode2session). userinfo decrypts
//!   to `{openId, nickName, gender, language, city, province, country, avatarUrl, unionId,
//!   watermark: {timestamp, appid}}`, rawData is the profile alone and
//!   `signature = sha1(rawData + session_key)`. phone decrypts to `{phoneNumber, purePhoneNumber,
//!   countryCode, watermark}` and has no rawData/signature (as in WeChat).
//! - `POST /sandbox/pay` `{"prepay_id", "outcome"?: "success"|"fail"|"cancel"|"paying",
//!   "faults"?: {...}}` → the order view. success: SUCCESS + transaction_id + time_end, and a signed
//!   notify to notify_url, retried after 15s, 15s, 30s, 3m, 10m, 20m, 30m, 30m, 30m, 60m, 3h, 3h, 3h,
//!   6h, 6h (times `SANDBOX_NOTIFY_TIME_SCALE`) until an answer is HTTP 200 with XML return_code
//!   SUCCESS; fail: PAYERROR, no notify; cancel: stays NOTPAY; paying: USERPAYING. `faults` (or
//!   the `X-Sandbox-Faults` header) fixes the notify faults of this order; without it the global
//!   faults are read at each attempt.
//! - `GET /sandbox/notifies?out_trade_no=&mch_id=` → `[{"mch_id","out_trade_no","attempt","copy",
//!   "at_ms","url","request","status","response","error","accepted","faults"}]`.
//! - `GET /sandbox/orders/{out_trade_no}` → `{"appid","mch_id","out_trade_no","prepay_id","body",
//!   "attach","total_fee","openid","notify_url","trade_type","sign_type","trade_state",
//!   "trade_state_desc","transaction_id","time_end","created_at_ms","notify_state"
//!   (none|pending|accepted|dropped|gave_up),"notify_attempts"}`;
//!   `GET /sandbox/orders?trade_state=SUCCESS` lists them.
//! - `GET /sandbox/faults`, `POST /sandbox/faults` (replaces the set), `DELETE /sandbox/faults`.
//! - `GET /healthz` → `ok`.
//!
//! # Faults
//!
//! One JSON shape everywhere; every field is optional and absent means off:
//!
//! ```json
//! {
//!   "latency_ms": 300,              // WeChat paths answer this much later
//!   "http_status": 503,             // WeChat paths answer this 5xx (HTML body, no WeChat data)
//!   "pay_system_error": true,       // pay calls: result_code FAIL, err_code SYSTEMERROR, no change
//!   "quota_exceeded": true,         // jscode2session / token calls: errcode 45011
//!   "drop_notify": true,            // payments succeed, no notify is ever sent
//!   "duplicate_notify": 3,          // each notify attempt is sent 3 times at once
//!   "notify_wrong_total_fee": true, // notifies say total_fee + 1 (validly signed)
//!   "notify_bad_signature": true,   // notifies are signed with a wrong key
//!   "times": 2,                     // only for the next 2 WeChat-path requests, then all clear
//!   "path_prefix": "/pay/"          // only WeChat paths starting with this (and only they count)
//! }
//! ```
//!
//! - At start: `SANDBOX_FAULT_LATENCY_MS`, `SANDBOX_FAULT_HTTP_STATUS`,
//!   `SANDBOX_FAULT_PAY_SYSTEM_ERROR`, `SANDBOX_FAULT_QUOTA_EXCEEDED`, `SANDBOX_FAULT_DROP_NOTIFY`,
//!   `SANDBOX_FAULT_DUPLICATE_NOTIFY`, `SANDBOX_FAULT_NOTIFY_WRONG_TOTAL_FEE`,
//!   `SANDBOX_FAULT_NOTIFY_BAD_SIGNATURE` (`true`/`false`, numbers).
//! - At run time: `POST /sandbox/faults` with the JSON (replaces the whole set; `{}` or
//!   `DELETE /sandbox/faults` clears it).
//! - Per request: header `X-Sandbox-Faults: <the JSON>` on a WeChat path (used instead of the
//!   global set for that request), or on `/sandbox/pay` (fixes that order's notify faults).
//!
//! # Configuration
//!
//! [`Config`]: `WXMP_APPS` (`appid:secret[,...]`, first = default app), `WXMP_PAY_MCH_ID`,
//! `WXMP_PAY_KEY` (the merchant is bound to every app), `SANDBOX_LISTEN_ADDR` (0.0.0.0:9000),
//! `SANDBOX_NOTIFY_TIME_SCALE` (1.0), `SANDBOX_NOTIFY_TIMEOUT_MS` (5000),
//! `SANDBOX_CODE_TTL_SECS` (300), `SANDBOX_CODE_RATE_PER_MIN` (10), `SANDBOX_APP_RATE_PER_MIN`
//! (10000), `SANDBOX_WORKERS` (2). Unset, it is the dev app [`DEV_APP_ID`] and the dev merchant
//! [`DEV_MCH_ID`].

mod clock;
pub mod config;
mod dev_error;
pub mod faults;
mod ids;
mod login;
pub mod notify;
pub mod order;
mod pay;
mod rate;
mod server;
mod state;
mod token;
pub mod user_data;
pub mod v3;
mod wx;
mod wx_error;

pub use config::{App, AppList, Config};
pub use faults::{FAULT_HEADER, Faults};
pub use login::{LoginCode, LoginCodeRequest};
pub use notify::{NotifyRecord, PayOutcome, PayRequest, RETRY_SCHEDULE_SECS};
pub use order::{NotifyState, OrderView, TradeState};
pub use server::{SandboxHandle, serve, spawn};
pub use user_data::{Profile, UserData, UserDataKind, UserDataRequest};
pub use v3::{V3Config, V3Faults, V3NotifyRecord};

/// The default app's appid (18 characters like a real one).
pub const DEV_APP_ID: &str = "wx00000000000dev01";
/// The default app's AppSecret (32 characters).
pub const DEV_APP_SECRET: &str = "devsecret000000000000000000000ff";
/// The default merchant (mch_id).
pub const DEV_MCH_ID: &str = "1900000109";
/// The default merchant's API v2 key (32 characters).
pub const DEV_PAY_KEY: &str = "devpaykey00000000000000000000key";
