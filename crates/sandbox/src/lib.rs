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
//! | `GET /cgi-bin/token?grant_type=client_credential&appid&secret` (legacy) | a new token per call; the previous one keeps working `SANDBOX_TOKEN_GRACE_MS` (5 min), then 40001; `SANDBOX_TOKEN_DAILY_QUOTA` calls a day (45009) |
//! | `POST /cgi-bin/stable_token` `{grant_type, appid, secret, force_refresh}` | the same token until its last `SANDBOX_TOKEN_GRACE_MS` (`expires_in` = what is left), then a new one (the old lives to its expiry); `force_refresh` kills the old one at once, at most 20 a day (45009), a second force within 30 s does not refresh; 47001 for a body that is not JSON. Semantics and sources: `src/token.rs` |
//! | `GET /cgi-bin/getcallbackip?access_token` | `{"ip_list"}`; 40001 replaced/unknown token, 42001 expired, 41001 missing (every access_token API checks alike) |
//! | `POST /wxa/business/getuserphonenumber?access_token` `{code}` | `phone_info` for a code from `/sandbox/phone-code`; 40029 invalid/used/expired code (5 min) |
//! | `POST /cgi-bin/message/subscribe/send?access_token` | records the message (`/sandbox/messages`); 43101 without an accepted subscription (`/sandbox/subscribe`), 40003 unknown openid, 47003 missing touser/template_id |
//! | `POST /pay/unifiedorder` | JSAPI only: `trade_type`, `prepay_id`; the same prepay_id for an identical repeat (all fields but nonce_str/sign/sign_type) within 2 h |
//! | `POST /pay/orderquery` | by `transaction_id` or `out_trade_no`; SUCCESS orders carry openid, is_subscribe, trade_type, bank_type, total_fee, fee_type, cash_fee, transaction_id, out_trade_no, attach, time_end; other states total_fee, out_trade_no, attach; always trade_state + trade_state_desc |
//! | `POST /pay/closeorder` | `result_msg` OK; ORDERPAID, ORDERCLOSED, ORDERNOTEXIST |
//! | `POST /secapi/pay/refund` | **HTTPS port `SANDBOX_SECAPI_LISTEN_ADDR` only, client certificate from the dev CA required** (the plain port answers return_code FAIL). transaction_id, out_trade_no, out_refund_no, refund_id, refund_fee, total_fee, cash_fee; the same out_refund_no answers the same refund (other amounts: ERROR); ERROR (unpaid order, more than paid), PARAM_ERROR (total_fee not the order's), NOTENOUGH (fault), SYSTEMERROR (fault, nothing recorded). Settles after `SANDBOX_REFUND_DELAY_MS` to SUCCESS (or CHANGE) and posts the refund notify to notify_url: `return_code, appid, mch_id, nonce_str, req_info` (no sign), req_info = base64(AES-256-ECB(md5hex(key), `<root>…</root>`)), retried on the pay notify schedule |
//! | `POST /pay/refundquery` | by out_refund_no, refund_id, out_trade_no or transaction_id: refund_count, `out_refund_no_$n`, `refund_id_$n`, `refund_fee_$n`, `refund_status_$n` (PROCESSING, SUCCESS, CHANGE, REFUNDCLOSE), `refund_success_time_$n`; REFUNDNOTEXIST. orderquery answers trade_state REFUND for a paid order with a refund |
//! | `POST /pay/downloadbill` | the day's trade bill of the merchant (every API's payments with time_end that China-time day and refunds accepted that day) in WeChat's backquoted CSV (ALL columns, summary rows), text or `tar_type=GZIP`; `bill_type` ALL / SUCCESS / REFUND; a day without trades answers XML `return_code` FAIL "No Bill Exist" (20002). Written from WeChat's documents in `src/bills.rs` |
//! | `GET /v3/bill/tradebill`, `GET /v3/billdownload/file?token=` | v3: the signed `{hash_type: SHA1, hash_value, download_url}` (SHA1 of the uncompressed bill; 400 NO_STATEMENT_EXIST without a bill), then the bill bytes, unsigned, for a signed GET of the url (5 min) |
//! | `POST /wxa/sec/order/upload_shipping_info?access_token` (and `upload_combined_shipping_info`, `get_order`, `get_order_list`, `notify_confirm_receive`, `set_msg_jump_path`, `is_trade_managed`; `POST /cgi-bin/express/delivery/open_msg/get_delivery_list`) | WeChat's order shipping service: 10060001 for `SANDBOX_SHIPPING_NOT_FOUND_SECS` after a payment (and for unknown payments), WeChat's rules (1 to 15 parcels, unified = 1, split = express with `is_all_delivered`, express needs tracking and a known company, SF a contact, RFC 3339 `upload_time`, the payer's openid), one re-upload (10060003 after). The user confirming receipt and WeChat settling (`POST /sandbox/shipping/confirm|settle {transaction_id}`, console buttons) push `trade_manage_order_settlement` to `SANDBOX_PUSH_URL` in `SANDBOX_PUSH_MODE` (safe: the sandbox's own AES-256-CBC) and `SANDBOX_PUSH_FORMAT`; `GET /sandbox/shipping` lists orders, pushes and calls; `POST /sandbox/shipping/fault {errcode, answers_lost}` answers every upload with the errcode (e.g. 45009), and takes the next `answers_lost` uploads but answers them 504. Sources: `src/shipping.rs` |
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
//! - `POST /sandbox/pay` `{"appId", "timeStamp", "nonceStr", "package", "signType", "paySign",
//!   "outcome"?: "success"|"fail"|"cancel"|"paying", "faults"?: {...}}` → the order view. The
//!   phone's `wx.requestPayment`: the five signed parameters exactly as the merchant's server
//!   handed them (`package` = `prepay_id=...`). As WeChat does before it shows the payment sheet,
//!   the sandbox checks that `signType` is the order's, `appId` the order's app and `paySign` the
//!   merchant-key signature of appId, nonceStr, package, signType and timeStamp; otherwise HTTP
//!   400 `{"error": "request_payment_fail", "message": "requestPayment:fail 支付验证签名失败"}`
//!   (the fail callback) and nothing changes. success: SUCCESS + transaction_id + time_end, and
//!   a signed notify to notify_url, retried after 15s, 15s, 30s, 3m, 10m, 20m, 30m, 30m, 30m,
//!   60m, 3h, 3h, 3h, 6h, 6h (times `SANDBOX_NOTIFY_TIME_SCALE`) until an answer is HTTP 200 with
//!   XML return_code SUCCESS; fail: PAYERROR, no notify; cancel: stays NOTPAY; paying:
//!   USERPAYING. `faults` (or the `X-Sandbox-Faults` header) fixes the notify faults of this
//!   order; without it the global faults are read at each attempt. The notify is signed with
//!   the order's sign type and, like WeChat's, carries no `sign_type` field even for
//!   HMAC-SHA256 (WxJava issue 1585, easy-swoole/pay issue 38).
//! - `GET /sandbox/notifies?out_trade_no=&mch_id=` → `[{"mch_id","out_trade_no","attempt","copy",
//!   "at_ms","url","request","status","response","error","accepted","faults"}]`.
//! - `GET /sandbox/orders/{out_trade_no}` → `{"appid","mch_id","out_trade_no","prepay_id","body",
//!   "attach","total_fee","openid","notify_url","trade_type","sign_type","trade_state",
//!   "trade_state_desc","transaction_id","time_end","created_at_ms","notify_state"
//!   (none|pending|accepted|dropped|gave_up),"notify_attempts","unifiedorder_calls"}`
//!   (`unifiedorder_calls`: authenticated unifiedorder calls naming the order, answered or not);
//!   `GET /sandbox/orders?trade_state=SUCCESS` lists them.
//! - `POST /sandbox/phone-code` `{"appid"?, "purePhoneNumber"?, "countryCode"?, "errcode"?}` →
//!   `{"code","appid","phoneNumber","purePhoneNumber","countryCode"}` (a getPhoneNumber code;
//!   `errcode` -1 makes getuserphonenumber answer busy once without using the code).
//! - `POST /sandbox/subscribe` `{"appid"?, "openid", "template_id", "times"?}`: the user accepts
//!   one-off subscriptions; `GET /sandbox/messages?touser=&template_id=` → the messages sent.
//! - `GET /sandbox/access-tokens?appid=` → fetch counters (`legacy_fetches`, `stable_fetches`,
//!   `stable_forced`, `tokens_issued`, `refused`, `rejected_uses`);
//!   `POST /sandbox/access-tokens/invalidate?appid=` makes the current tokens answer 40001.
//! - `GET /sandbox/calls?out_trade_no=` → `[{"out_trade_no","unifiedorder","orderquery",
//!   "closeorder","max_in_flight"}]`: WeChat Pay calls per order, and the most orderquery +
//!   closeorder about one order in progress at once (see [`calls`]).
//! - `GET|POST /sandbox/bills/faults` → the bill faults: `no_bill` (days), `bad_hash`,
//!   `drop_orders`, `amount_plus_one`, `drop_refunds`, `extra_payments`; `POST
//!   /sandbox/bills/outside-refund {out_trade_no, refund_fee}` → a refund made in the merchant
//!   platform (settled, no notify; in the bill and refundquery).
//! - `GET /sandbox/refunds[?out_trade_no=]`, `GET /sandbox/refunds/{out_refund_no}` → the
//!   refunds as WeChat holds them (refund_status, requests, notify_state, notify_attempts);
//!   `GET /sandbox/refund-notifies[?out_refund_no=]` → every refund notify request;
//!   `POST /sandbox/refunds/{out_refund_no}/finish` `{"outcome":"success"|"abnormal"|"close"}`
//!   ends a refund of either API as the console's buttons do (an abnormal one, its money held
//!   by WeChat, can still be settled or closed), then notifies.
//! - Pay v3 ([`v3`]): `GET /sandbox/v3/refunds[?out_trade_no=]`, `GET /sandbox/v3/refunds/
//!   {out_refund_no}` (status, requests, notify_state), `GET /sandbox/v3/notifies[?out_trade_no=
//!   |out_refund_no=]` (every v3 notify request with its four `Wechatpay-*` headers, so a test
//!   can replay one), `GET /sandbox/v3/orders/{out_trade_no}`, `/sandbox/v3/faults`,
//!   `POST /sandbox/v3/rotate`.
//! - `GET /sandbox/faults`, `POST /sandbox/faults` (replaces the set), `DELETE /sandbox/faults`.
//! - `GET /healthz` → `ok`.
//!
//! # Console
//!
//! `GET /` is a server-rendered page (no script, no CDN) of apps, users (session_key age),
//! orders v2 and v3 (trade state, notify attempts), refunds (status, notify attempts), access
//! tokens and sent subscribe messages, with form buttons posting to `/console/*` (see
//! `console_actions.rs`): pay / fail payment (v2 and v3), resend / drop a notify, settle / fail
//! / close a PROCESSING refund (v2: SUCCESS, CHANGE, REFUNDCLOSE; v3: SUCCESS, ABNORMAL,
//! CLOSED; then the refund notify), settle / close an abnormal one (CHANGE / ABNORMAL),
//! expire a token; pay / fail a virtual order whose payment sheet is open (`/console/xpay/*`,
//! `xpay_console.rs`). Each post must carry the page's csrf token and come from the console's own
//! origin (403 otherwise, nothing changed). Refunds accepted while the `refund_hold` fault is
//! on stay PROCESSING until the console finishes them.
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
//!   "notify_wrong_total_fee": true, // notifies say total_fee (v3 amount.total) + 1 (validly signed)
//!   "notify_bad_signature": true,   // notifies are signed with a wrong key (v3: not WeChat Pay's)
//!   "refund_change": true,          // refunds end CHANGE / v3 ABNORMAL (money held), not SUCCESS
//!   "refund_close": true,           // refunds settle as REFUNDCLOSE / v3 CLOSED
//!   "refund_not_enough": true,      // refunds are refused with NOTENOUGH / v3 403 NOT_ENOUGH
//!   "refund_reply_delay_ms": 2000,  // a refund is recorded, its answer held back this long
//!   "refund_hold": true,            // refunds stay PROCESSING until the console finishes them
//!   "refund_answer_lost": true,     // a refund is recorded, then answered SYSTEMERROR / v3 500
//!   "refund_refused": true,         // refund requests: return_code FAIL / v3 401 SIGN_ERROR
//!   "xpay_push_late_ms": 5000,      // virtual payment: the delivery push waits this long first
//!   "xpay_push_duplicated": 3,      // ... is sent 3 times at once (each copy retried on its own)
//!   "xpay_push_lost": true,         // ... is never sent (query_order still says paid)
//!   (all of these apply to v2 and v3 alike: drop_notify also drops refund notifies and v3
//!   notifies; pay_system_error also fails refunds, on v3 as 500 SYSTEM_ERROR)
//!   "times": 2,                     // only for the next 2 WeChat-path requests, then all clear
//!   "path_prefix": "/pay/"          // only WeChat paths starting with this (and only they count)
//! }
//! ```
//!
//! - At start: `SANDBOX_FAULT_LATENCY_MS`, `SANDBOX_FAULT_HTTP_STATUS`,
//!   `SANDBOX_FAULT_PAY_SYSTEM_ERROR`, `SANDBOX_FAULT_QUOTA_EXCEEDED`, `SANDBOX_FAULT_DROP_NOTIFY`,
//!   `SANDBOX_FAULT_DUPLICATE_NOTIFY`, `SANDBOX_FAULT_NOTIFY_WRONG_TOTAL_FEE`,
//!   `SANDBOX_FAULT_NOTIFY_BAD_SIGNATURE`, `SANDBOX_FAULT_REFUND_HOLD`,
//!   `SANDBOX_FAULT_XPAY_PUSH_LATE_MS`, `SANDBOX_FAULT_XPAY_PUSH_DUPLICATED`,
//!   `SANDBOX_FAULT_XPAY_PUSH_LOST` (`true`/`false`, numbers).
//! - At run time: `POST /sandbox/faults` with the JSON (replaces the whole set; `{}` or
//!   `DELETE /sandbox/faults` clears it).
//! - Per request: header `X-Sandbox-Faults: <the JSON>` on a WeChat path (used instead of the
//!   global set for that request), or on `/sandbox/pay` (fixes that order's notify faults), or
//!   on `/sandbox/xpay/pay` and `/sandbox/xpay/orders/{no}/pay` (that payment's push faults;
//!   without it the global `xpay_push_*` are read when the push is sent, `times` and
//!   `path_prefix` aside).
//!
//! # WeChat, not a mirror of `crates/wechat`
//!
//! The sandbox signs, verifies, writes and reads WeChat's formats with its own code ([`wx`]:
//! Pay v2 signatures, the Pay XML, nonces, user-data encryption and the rawData signature;
//! `clock`: yyyyMMddHHmmss China time), written from WeChat's documents and merchants' reports
//! (cited where they are used) on md-5, hmac, sha1, sha2, aes, cbc and quick-xml. It never
//! calls the `wechat` library it plays WeChat for (that is only a dev-dependency, for tests that
//! cross-check the two), so where the library misreads WeChat the end-to-end tests fail instead
//! of agreeing with it. Its XML is WeChat's: CDATA values with `total_fee` written plain.
//!
//! # Configuration
//!
//! [`Config`]: `WXMP_APPS` (`appid:secret[,...]`, first = default app), `WXMP_PAY_MCH_ID`,
//! `WXMP_PAY_KEY` (the merchant is bound to every app), `SANDBOX_LISTEN_ADDR` (0.0.0.0:9000),
//! `SANDBOX_NOTIFY_TIME_SCALE` (1.0), `SANDBOX_NOTIFY_TIMEOUT_MS` (5000),
//! `SANDBOX_SECAPI_LISTEN_ADDR` (0.0.0.0:9001), `SANDBOX_CERT_DIR` (unset: certificates only in
//! memory), `SANDBOX_SECAPI_HOSTS` (extra names for the secapi certificate),
//! `SANDBOX_REFUND_DELAY_MS` (2000),
//! `SANDBOX_CODE_TTL_SECS` (300), `SANDBOX_CODE_RATE_PER_MIN` (10), `SANDBOX_APP_RATE_PER_MIN`
//! (10000), `SANDBOX_WORKERS` (2). Unset, it is the dev app [`DEV_APP_ID`] and the dev merchant
//! [`DEV_MCH_ID`].

pub mod bills;
pub mod calls;
mod clock;
pub mod config;
mod console;
mod console_actions;
mod dev_error;
pub mod devca;
pub mod faults;
mod ids;
mod login;
pub mod notify;
mod openapi;
pub mod order;
mod pay;
mod prune;
mod rate;
pub mod refund;
mod server;
pub mod shipping;
mod shipping_console;
mod state;
mod token;
pub mod user_data;
pub mod v3;
pub mod wx;
mod wx_error;
pub mod xpay;
mod xpay_console;

pub use config::{App, AppList, Config};
pub use devca::DevPki;
pub use faults::{FAULT_HEADER, Faults};
pub use login::{LoginCode, LoginCodeRequest};
pub use notify::{NotifyRecord, PayOutcome, PayRequest, RETRY_SCHEDULE_SECS};
pub use openapi::SentMessage;
pub use order::{NotifyState, OrderView, TradeState};
pub use server::{SandboxHandle, serve, serve_with, spawn};
pub use token::TokenStats;
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
