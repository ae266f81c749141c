//! Virtual payment as the sandbox plays it: the phone's `wx.requestVirtualPayment` checks of
//! paySig (-15005) and the user-state signature (268490003), the server APIs' pay_sig, and
//! `query_order` / `notify_provide_goods`. Expected signatures come from the openssl CLI
//! (`openssl dgst -sha256 -hmac KEY`), not from the sandbox's code.

use std::io::Write as _;

use sandbox::{
    DEV_APP_ID, DEV_APP_SECRET,
    xpay::{DEV_XPAY_OFFER_ID, DEV_XPAY_SANDBOX_APP_KEY},
};
use serde_json::{Value, json};

use crate::helpers::{get_json, http, login, post_json, start};

/// hex(HMAC-SHA256(key, msg)) by openssl; None when openssl is missing (the test skips).
pub(crate) fn openssl_hmac(key: &str, msg: &str) -> Option<String> {
    // `openssl version`, not `--version` (which openssl refuses), so not tool_or_skip.
    let found = std::process::Command::new("openssl")
        .arg("version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        // As `tool_or_skip`: CI must run it (openssl is on every machine of ours).
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is required in CI (xpay signatures from an independent tool)"
        );
        eprintln!("SKIPPED: openssl not found (xpay signatures from an independent tool)");
        return None;
    }
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(msg.as_bytes())
        .unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    Some(out.trim().rsplit(' ').next().unwrap().to_owned())
}

fn sign_data(out_trade_no: &str) -> String {
    json!({"offerId": DEV_XPAY_OFFER_ID, "buyQuantity": 1, "env": 1, "currencyType": "CNY",
        "platform": "android", "productId": "vip_month", "goodsPrice": 990,
        "outTradeNo": out_trade_no, "attach": ""})
    .to_string()
}

#[tokio::test]
async fn the_phone_checks_both_signatures_and_pays_once() {
    let sb = start().await;
    let (openid, session_key, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let data = sign_data("xpaytest0001");
    let Some(pay_sig) = openssl_hmac(
        DEV_XPAY_SANDBOX_APP_KEY,
        &format!("requestVirtualPayment&{data}"),
    ) else {
        return;
    };
    let signature = openssl_hmac(&session_key, &data).unwrap();
    let pay = |pay_sig: String, signature: String, data: String| {
        let sb = &sb;
        let openid = openid.clone();
        async move {
            post_json(
                sb,
                "/sandbox/xpay/pay",
                json!({"openid": openid, "mode": "short_series_goods", "signData": data,
                    "paySig": pay_sig, "signature": signature}),
            )
            .await
            .1
        }
    };
    // A wrong AppKey: -15005.
    let wrong = openssl_hmac("not-the-app-key", &format!("requestVirtualPayment&{data}")).unwrap();
    let r = pay(wrong, signature.clone(), data.clone()).await;
    assert_eq!(r["errcode"], -15005, "{r}");
    // A wrong session_key (e.g. one rotated by a later login): 268490003.
    let wrong = openssl_hmac("c2Vzc2lvbmtleTEyMzQ1Ng==", &data).unwrap();
    let r = pay(pay_sig.clone(), wrong, data.clone()).await;
    assert_eq!(r["errcode"], 268_490_003, "{r}");
    // signData changed after signing: -15005.
    let r = pay(pay_sig.clone(), signature.clone(), data.replace("990", "1")).await;
    assert_eq!(r["errcode"], -15005, "{r}");
    let (_, orders) = get_json(&sb, "/sandbox/xpay/orders").await;
    assert_eq!(orders["orders"], json!([]), "nothing paid by refused calls");
    // Right: paid; the same outTradeNo again is refused.
    let r = pay(pay_sig.clone(), signature.clone(), data.clone()).await;
    assert_eq!(r["errcode"], 0, "{r}");
    let r = pay(pay_sig, signature, data).await;
    assert_ne!(r["errcode"], 0, "{r}");
    let (_, orders) = get_json(&sb, "/sandbox/xpay/orders").await;
    assert_eq!(orders["orders"].as_array().unwrap().len(), 1);
    assert_eq!(orders["orders"][0]["status"], 2);
}

#[tokio::test]
async fn server_apis_check_pay_sig_over_the_body() {
    let sb = start().await;
    let (openid, session_key, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let data = sign_data("xpaytest0002");
    let Some(pay_sig) = openssl_hmac(
        DEV_XPAY_SANDBOX_APP_KEY,
        &format!("requestVirtualPayment&{data}"),
    ) else {
        return;
    };
    let signature = openssl_hmac(&session_key, &data).unwrap();
    let (_, r) = post_json(
        &sb,
        "/sandbox/xpay/pay",
        json!({"openid": openid, "mode": "short_series_goods", "signData": data,
            "paySig": pay_sig, "signature": signature}),
    )
    .await;
    assert_eq!(r["errcode"], 0, "{r}");
    let (_, token) = post_json(
        &sb,
        "/cgi-bin/stable_token",
        json!({"grant_type": "client_credential", "appid": DEV_APP_ID, "secret": DEV_APP_SECRET}),
    )
    .await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    let call = |uri: &'static str, body: String, key: &'static str| {
        let sb = &sb;
        let token = token.clone();
        async move {
            let sig = openssl_hmac(key, &format!("{uri}&{body}")).unwrap();
            let res = http()
                .post(sb.url(uri))
                .query(&[("access_token", token.as_str()), ("pay_sig", sig.as_str())])
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            res.json::<Value>().await.unwrap()
        }
    };
    let body = json!({"openid": openid, "env": 1, "order_id": "xpaytest0002"}).to_string();
    let r = call("/xpay/query_order", body.clone(), DEV_XPAY_SANDBOX_APP_KEY).await;
    assert_eq!(r["errcode"], 0, "{r}");
    assert_eq!(
        (r["order"]["status"].clone(), r["order"]["paid_fee"].clone()),
        (json!(2), json!(990))
    );
    let r = call("/xpay/query_order", body, "wrong-app-key").await;
    assert_eq!(r["errcode"], -15005, "{r}");
    let body = json!({"order_id": "xpaytest0002", "env": 1}).to_string();
    let r = call("/xpay/notify_provide_goods", body, DEV_XPAY_SANDBOX_APP_KEY).await;
    assert_eq!(r["errcode"], 0, "{r}");
    let (_, orders) = get_json(&sb, "/sandbox/xpay/orders").await;
    assert_eq!(orders["orders"][0]["status"], 3);
}
