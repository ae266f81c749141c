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
    assert_eq!(orders["orders"][0]["status"], 4);
}

/// A paid 990-fen order `out_trade_no` of a logged-in user on `sb`, and an access_token.
async fn paid_order(sb: &sandbox::SandboxHandle, out_trade_no: &str) -> Option<(String, String)> {
    let (openid, session_key, _) = login(sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let data = sign_data(out_trade_no);
    let pay_sig = openssl_hmac(
        DEV_XPAY_SANDBOX_APP_KEY,
        &format!("requestVirtualPayment&{data}"),
    )?;
    let signature = openssl_hmac(&session_key, &data).unwrap();
    let (_, r) = post_json(
        sb,
        "/sandbox/xpay/pay",
        json!({"openid": openid, "mode": "short_series_goods", "signData": data,
            "paySig": pay_sig, "signature": signature}),
    )
    .await;
    assert_eq!(r["errcode"], 0, "{r}");
    let (_, token) = post_json(
        sb,
        "/cgi-bin/stable_token",
        json!({"grant_type": "client_credential", "appid": DEV_APP_ID, "secret": DEV_APP_SECRET}),
    )
    .await;
    Some((openid, token["access_token"].as_str().unwrap().to_owned()))
}

/// POSTs `body` to the xpay API `uri`, pay_sig by openssl with `key`.
async fn xpay_call(
    sb: &sandbox::SandboxHandle,
    token: &str,
    uri: &str,
    body: &Value,
    key: &str,
) -> Value {
    let body = body.to_string();
    let sig = openssl_hmac(key, &format!("{uri}&{body}")).unwrap();
    http()
        .post(sb.url(uri))
        .query(&[("access_token", token), ("pay_sig", sig.as_str())])
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
}

#[tokio::test]
async fn refund_order_refuses_like_wechat_and_refunds_once() {
    use crate::helpers::{Answer, Receiver};
    // The push channel in plaintext JSON to a receiver that fails twice, then takes it.
    let fail = Answer {
        status: 500,
        body: "busy",
        delay_ms: 0,
    };
    let success = Answer {
        status: 200,
        body: "success",
        delay_ms: 0,
    };
    // The delivery push of the payment is taken at once; the next two tries fail.
    let receiver = Receiver::start(vec![success.clone(), fail.clone(), fail, success]).await;
    let mut config = crate::helpers::config();
    config.shipping.push_url = Some(receiver.url.clone());
    config.shipping.push_token = "push-token".into();
    config.shipping.push_mode = "plaintext".into();
    let sb = sandbox::spawn(config).await.unwrap();
    let Some((openid, token)) = paid_order(&sb, "xpayrefund0001").await else {
        return;
    };
    // Pushes of `event` seen so far, once there are at least `n` (or a panic after a while).
    let pushes = |event: &'static str, n: usize| {
        let receiver = &receiver;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let bodies: Vec<Value> = receiver
                    .received()
                    .iter()
                    .filter_map(|b| serde_json::from_str::<Value>(b).ok())
                    .filter(|b| b["Event"] == event)
                    .collect();
                if bodies.len() >= n {
                    return bodies;
                }
                assert!(std::time::Instant::now() < deadline, "{event}: {bodies:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    pushes("xpay_goods_deliver_notify", 1).await;
    let key = DEV_XPAY_SANDBOX_APP_KEY;
    let refund = |id: &str, left: i64, fee: i64, openid: &str| {
        json!({"openid": openid, "order_id": "xpayrefund0001", "refund_order_id": id,
            "left_fee": left, "refund_fee": fee, "biz_meta": "why", "refund_reason": "0",
            "req_from": "1", "env": 1})
    };
    let call = |body: Value, key: &'static str| {
        let (sb, token) = (&sb, token.clone());
        async move { xpay_call(sb, &token, "/xpay/refund_order", &body, key).await }
    };
    // Refusals, each with WeChat's code; none refunds anything.
    let cases = [
        (
            refund("xr-r0001", 990, 300, &openid),
            "wrong-app-key",
            -15005,
        ),
        (refund("short", 990, 300, &openid), key, 268_490_002),
        (refund("xr-r0001", 100, 100, &openid), key, 268_490_016),
        (refund("xr-r0001", 990, 991, &openid), key, 268_490_002),
        (refund("xr-r0001", 990, 0, &openid), key, 268_490_002),
        (
            refund("xr-r0001", 990, 300, "o-someone-else"),
            key,
            268_490_001,
        ),
        (
            refund("xr-r0001", 990, 300, &openid)
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .map(|(k, v)| {
                    if k == "order_id" {
                        (k, json!("xpay-unknown"))
                    } else {
                        (k, v)
                    }
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
            key,
            268_490_002,
        ),
    ];
    for (i, (body, key, want)) in cases.into_iter().enumerate() {
        let r = call(body, key).await;
        assert_eq!(r["errcode"], want, "case {i}: {r}");
    }
    let (_, listed) = get_json(&sb, "/sandbox/xpay/orders").await;
    assert_eq!(
        listed["refunds"],
        json!([]),
        "nothing refunded by refused calls"
    );
    // A part: refunded; the same refund_order_id again answers the same refund.
    let r = call(refund("xr-r0001", 990, 300, &openid), key).await;
    assert_eq!(r["errcode"], 0, "{r}");
    assert_eq!(r["pay_order_id"], "xpayrefund0001");
    let again = call(refund("xr-r0001", 990, 300, &openid), key).await;
    assert_eq!(
        again["refund_wx_order_id"], r["refund_wx_order_id"],
        "{again}"
    );
    let r = call(refund("xr-r0001", 690, 100, &openid), key).await;
    assert_eq!(
        r["errcode"], 268_490_002,
        "another refund under the same id: {r}"
    );
    // query_order answers the refund order by its id, and the order's left_fee.
    let q = |id: &str| json!({"openid": openid, "env": 1, "order_id": id});
    let r = xpay_call(&sb, &token, "/xpay/query_order", &q("xr-r0001"), key).await;
    assert_eq!(
        (
            &r["order"]["order_type"],
            &r["order"]["status"],
            &r["order"]["refund_fee"]
        ),
        (&json!(1), &json!(5), &json!(300)),
        "{r}"
    );
    let r = xpay_call(&sb, &token, "/xpay/query_order", &q("xpayrefund0001"), key).await;
    assert_eq!(r["order"]["left_fee"], 690, "{r}");
    // Its push, retried by the channel until taken: two failed tries, then the third.
    let first = pushes("xpay_refund_notify", 3).await;
    assert!(first.iter().all(|b| b == &first[0]), "{first:?}");
    assert_eq!(
        (
            &first[0]["MchRefundId"],
            &first[0]["MchOrderId"],
            &first[0]["RefundFee"]
        ),
        (&json!("xr-r0001"), &json!("xpayrefund0001"), &json!(300))
    );
    assert_eq!(
        (&first[0]["RetCode"], &first[0]["OpenId"]),
        (&json!(0), &json!(openid))
    );
    // The rest; then nothing is left.
    let r = call(refund("xr-r0002", 690, 690, &openid), key).await;
    assert_eq!(r["errcode"], 0, "{r}");
    let r = call(refund("xr-r0003", 0, 1, &openid), key).await;
    assert_eq!(r["errcode"], 268_490_002, "{r}");
    let (_, listed) = get_json(&sb, "/sandbox/xpay/orders").await;
    assert_eq!(listed["refunds"].as_array().unwrap().len(), 2);
    assert_eq!(listed["orders"][0]["status"], 5);
    let all = pushes("xpay_refund_notify", 4).await;
    assert_eq!(all[3]["MchRefundId"], "xr-r0002");
}
