//! Test helpers written from WeChat's documents, independent of `crates/wechat`: the sandbox
//! must not share a bug with the client it tests.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sandbox::{
    AppList, Config, DEV_APP_ID, DEV_APP_SECRET, DEV_MCH_ID, DEV_PAY_KEY, SandboxHandle,
};
use serde_json::{Value, json};
use sha2::Sha256;
pub use wxmp_testkit::http::TestServer;
use wxmp_testkit::http::{Request, Response};

pub const APP2_ID: &str = "wx00000000000dev02";
pub const APP2_SECRET: &str = "second0000000000000000000secret2";

/// Two apps (both bound to the dev merchant) and fast notifies.
pub fn config() -> Config {
    Config {
        apps: format!("{DEV_APP_ID}:{DEV_APP_SECRET},{APP2_ID}:{APP2_SECRET}")
            .parse::<AppList>()
            .unwrap(),
        notify_time_scale: 0.001,
        notify_timeout_ms: 2000,
        ..Config::dev()
    }
}

pub async fn start() -> SandboxHandle {
    sandbox::spawn(config()).await.expect("sandbox starts")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn post_json(sb: &SandboxHandle, path: &str, body: Value) -> (u16, Value) {
    let res = http().post(sb.url(path)).json(&body).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

pub async fn get_json(sb: &SandboxHandle, path: &str) -> (u16, Value) {
    let res = http().get(sb.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// `POST /sandbox/login-code` then jscode2session: (openid, session_key, unionid).
pub async fn login(
    sb: &SandboxHandle,
    appid: &str,
    secret: &str,
    openid: Option<&str>,
) -> (String, String, String) {
    let (status, code) = post_json(
        sb,
        "/sandbox/login-code",
        json!({ "appid": appid, "openid": openid }),
    )
    .await;
    assert_eq!(status, 200, "{code}");
    let session = jscode2session(sb, appid, secret, code["code"].as_str().unwrap()).await;
    assert_eq!(session["openid"], code["openid"], "{session}");
    (
        session["openid"].as_str().unwrap().to_owned(),
        session["session_key"].as_str().unwrap().to_owned(),
        session["unionid"].as_str().unwrap().to_owned(),
    )
}

pub async fn jscode2session(sb: &SandboxHandle, appid: &str, secret: &str, code: &str) -> Value {
    let res = http()
        .get(sb.url("/sns/jscode2session"))
        .query(&[
            ("appid", appid),
            ("secret", secret),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

// ---- WeChat Pay v2, from the "签名算法" document ----

/// `k1=v1&k2=v2...` over the non-empty fields except `sign`, sorted by name (ASCII).
pub fn string_to_sign(fields: &BTreeMap<String, String>) -> String {
    fields
        .iter()
        .filter(|(k, v)| !v.is_empty() && k.as_str() != "sign")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn md5_sign(fields: &BTreeMap<String, String>, key: &str) -> String {
    let s = format!("{}&key={key}", string_to_sign(fields));
    hex::encode_upper(Md5::digest(s.as_bytes()))
}

pub fn hmac_sign(fields: &BTreeMap<String, String>, key: &str) -> String {
    let s = format!("{}&key={key}", string_to_sign(fields));
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(s.as_bytes());
    hex::encode_upper(mac.finalize().into_bytes())
}

/// Checks an answer's `sign` with the method named by `sign_type` (MD5 by default).
pub fn signature_ok(fields: &BTreeMap<String, String>, key: &str, hmac: bool) -> bool {
    let expected = if hmac {
        hmac_sign(fields, key)
    } else {
        md5_sign(fields, key)
    };
    fields.get("sign") == Some(&expected)
}

/// A hand-rolled reader for WeChat's flat `<xml><a><![CDATA[x]]></a><b>1</b></xml>`.
pub fn xml_fields(xml: &str) -> BTreeMap<String, String> {
    let inner = xml
        .trim()
        .strip_prefix("<xml>")
        .and_then(|s| s.strip_suffix("</xml>"))
        .unwrap_or_else(|| panic!("not <xml>: {xml}"));
    let mut out = BTreeMap::new();
    let mut rest = inner.trim_start();
    while let Some(after_lt) = rest.strip_prefix('<') {
        let end = after_lt.find('>').unwrap();
        let name = &after_lt[..end];
        let close = format!("</{name}>");
        let body_and_rest = &after_lt[end + 1..];
        let close_at = body_and_rest
            .find(&close)
            .unwrap_or_else(|| panic!("no {close} in {xml}"));
        let raw = &body_and_rest[..close_at];
        let value = raw
            .strip_prefix("<![CDATA[")
            .and_then(|v| v.strip_suffix("]]>"))
            .unwrap_or(raw);
        out.insert(name.to_owned(), value.to_owned());
        rest = body_and_rest[close_at + close.len()..].trim_start();
    }
    out
}

/// A request XML written by hand, every value in CDATA, signed independently.
pub fn signed_xml(mut fields: BTreeMap<String, String>, key: &str) -> String {
    let hmac = fields.get("sign_type").is_some_and(|t| t == "HMAC-SHA256");
    let sign = if hmac {
        hmac_sign(&fields, key)
    } else {
        md5_sign(&fields, key)
    };
    fields.insert("sign".into(), sign);
    raw_xml(&fields)
}

pub fn raw_xml(fields: &BTreeMap<String, String>) -> String {
    let mut xml = String::from("<xml>");
    for (k, v) in fields {
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str("</xml>");
    xml
}

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A complete JSAPI unifiedorder for the dev app and merchant.
pub fn order_fields(
    out_trade_no: &str,
    total_fee: &str,
    openid: &str,
    notify_url: &str,
) -> BTreeMap<String, String> {
    map(&[
        ("appid", DEV_APP_ID),
        ("mch_id", DEV_MCH_ID),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
        ("body", "wxmp-测试商品"),
        ("out_trade_no", out_trade_no),
        ("total_fee", total_fee),
        ("spbill_create_ip", "123.12.12.123"),
        ("notify_url", notify_url),
        ("trade_type", "JSAPI"),
        ("openid", openid),
    ])
}

/// POSTs an XML body to a pay path; the answer's fields.
pub async fn pay_call(sb: &SandboxHandle, path: &str, xml: String) -> BTreeMap<String, String> {
    let res = http().post(sb.url(path)).body(xml).send().await.unwrap();
    assert_eq!(res.status(), 200);
    xml_fields(&res.text().await.unwrap())
}

/// Places an order for `openid` (MD5); returns the prepay_id.
pub async fn place_order(
    sb: &SandboxHandle,
    out_trade_no: &str,
    total_fee: u64,
    openid: &str,
    notify_url: &str,
) -> String {
    let fee = total_fee.to_string();
    let answer = pay_call(
        sb,
        "/pay/unifiedorder",
        signed_xml(
            order_fields(out_trade_no, &fee, openid, notify_url),
            DEV_PAY_KEY,
        ),
    )
    .await;
    assert_eq!(answer["result_code"], "SUCCESS", "{answer:?}");
    answer["prepay_id"].clone()
}

// ---- A tiny merchant notify endpoint ----

/// How the receiver answers, per request in order; the last one repeats.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub body: &'static str,
    pub delay_ms: u64,
}

pub const SUCCESS_XML: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";
pub const FAIL_XML: &str = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[busy]]></return_msg></xml>";

pub fn ok() -> Answer {
    Answer {
        status: 200,
        body: SUCCESS_XML,
        delay_ms: 0,
    }
}

pub struct Receiver {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<String>>>,
    /// (in flight now, most ever in flight at once).
    pub in_flight: Arc<Mutex<(usize, usize)>>,
}

impl Receiver {
    pub async fn start(answers: Vec<Answer>) -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(answers);
        let in_flight = Arc::new(Mutex::new((0, 0)));
        let (seen, flying) = (bodies.clone(), in_flight.clone());
        let server = TestServer::start(move |request: Request| {
            let (seen, flying, answers) = (seen.clone(), flying.clone(), answers.clone());
            async move {
                {
                    let mut f = flying.lock().unwrap();
                    f.0 += 1;
                    f.1 = f.1.max(f.0);
                }
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(request.text());
                    seen.len()
                };
                let answer = answers[(n - 1).min(answers.len() - 1)].clone();
                if answer.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(answer.delay_ms)).await;
                }
                flying.lock().unwrap().0 -= 1;
                Response::new("text/xml", answer.body).status(answer.status)
            }
        })
        .await;
        Self {
            url: server.url("/pay/notify"),
            bodies,
            in_flight,
        }
    }

    pub fn received(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits until at least `n` notifies arrived (or panics after a few seconds).
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..500 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} notifies, got {}", self.received().len());
    }
}

/// Polls `/sandbox/orders/{no}` until `notify_state` is `want`.
pub async fn wait_notify_state(sb: &SandboxHandle, out_trade_no: &str, want: &str) -> Value {
    for _ in 0..500 {
        let (_, order) = get_json(sb, &format!("/sandbox/orders/{out_trade_no}")).await;
        if order["notify_state"] == want {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("order {out_trade_no} never reached notify_state {want}");
}

// ---- The phone: wx.requestPayment's parameters, signed as the merchant's server does ----

/// The `POST /sandbox/pay` body for `prepay_id` of the dev app: appId, timeStamp, nonceStr,
/// package and signType signed with `key` (小程序调起支付API), plus `extra` (outcome, faults).
pub fn request_payment(prepay_id: &str, key: &str, hmac: bool, extra: Value) -> Value {
    let sign_type = if hmac { "HMAC-SHA256" } else { "MD5" };
    let package = format!("prepay_id={prepay_id}");
    let fields = map(&[
        ("appId", DEV_APP_ID),
        ("timeStamp", "1700000000"),
        ("nonceStr", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
        ("package", &package),
        ("signType", sign_type),
    ]);
    let pay_sign = if hmac {
        hmac_sign(&fields, key)
    } else {
        md5_sign(&fields, key)
    };
    let mut body = json!(fields);
    body["paySign"] = json!(pay_sign);
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    body
}

// ---- The console (GET /, its form posts) ----

/// The console page.
pub async fn page(sb: &SandboxHandle) -> String {
    let res = http().get(sb.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    res.text().await.unwrap()
}

/// The csrf token the page's forms carry.
pub async fn csrf(sb: &SandboxHandle) -> String {
    let html = page(sb).await;
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("the page's forms carry a csrf field");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A client that does not follow the console's 303, so the test sees it.
pub fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Posts a console form as the console page does (same origin, its token): the 303's
/// decoded `msg`.
pub async fn click(sb: &SandboxHandle, path: &str, fields: &[(&str, &str)]) -> String {
    let token = csrf(sb).await;
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    form.push(("csrf", &token));
    let res = no_redirect()
        .post(sb.url(path))
        .header("origin", sb.base_url.clone())
        .header("sec-fetch-site", "same-origin")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "{path}");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let msg = location
        .strip_prefix("/?msg=")
        .expect("back to the console");
    percent_decode(msg)
}

pub fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
