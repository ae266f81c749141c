//! Coin mode (代币) and `download_bill` as the sandbox plays them: a coin purchase on the
//! phone credits coins once; the user-state APIs refuse a wrong AppKey (-15005) and a wrong
//! session_key (268490003); a spend retried spends once (268490004), more than the balance is
//! refused (268490006); a cancel gives the coins back once (268490005 after); a present
//! counts once; the bill url serves the orders. Signatures from the openssl CLI.

use sandbox::{
    DEV_APP_ID, DEV_APP_SECRET,
    xpay::{DEV_XPAY_APP_KEY, DEV_XPAY_OFFER_ID, DEV_XPAY_SANDBOX_APP_KEY},
};
use serde_json::{Value, json};

use crate::helpers::{get_json, http, login, post_json, start};
use crate::xpay::openssl_hmac;

fn coin_sign_data(out_trade_no: &str, coins: i64) -> String {
    json!({"offerId": DEV_XPAY_OFFER_ID, "buyQuantity": coins, "env": 1, "currencyType": "CNY",
        "platform": "android", "outTradeNo": out_trade_no, "attach": ""})
    .to_string()
}

async fn balance_of(sb: &sandbox::SandboxHandle, openid: &str) -> i64 {
    let (_, v) = get_json(sb, &format!("/sandbox/xpay/coins?env=1&openid={openid}")).await;
    v["balance"].as_i64().unwrap()
}

#[tokio::test]
async fn a_coin_purchase_checks_both_signatures_and_credits_once() {
    let sb = start().await;
    let (openid, session_key, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let data = coin_sign_data("coinbuy0001", 60);
    let Some(pay_sig) = openssl_hmac(
        DEV_XPAY_SANDBOX_APP_KEY,
        &format!("requestVirtualPayment&{data}"),
    ) else {
        return;
    };
    let signature = openssl_hmac(&session_key, &data).unwrap();
    let pay = |pay_sig: String, signature: String| {
        let sb = &sb;
        let body = json!({"openid": openid, "mode": "short_series_coin", "signData": data,
            "paySig": pay_sig, "signature": signature});
        async move { post_json(sb, "/sandbox/xpay/pay", body).await.1 }
    };
    let wrong = openssl_hmac(DEV_XPAY_APP_KEY, &format!("requestVirtualPayment&{data}")).unwrap();
    assert_eq!(pay(wrong, signature.clone()).await["errcode"], -15005);
    let wrong = openssl_hmac("c2Vzc2lvbmtleTEyMzQ1Ng==", &data).unwrap();
    assert_eq!(pay(pay_sig.clone(), wrong).await["errcode"], 268_490_003);
    assert_eq!(
        balance_of(&sb, &openid).await,
        0,
        "refused calls credit nothing"
    );
    let r = pay(pay_sig.clone(), signature.clone()).await;
    assert_eq!(
        (r["errcode"].clone(), r["balance"].clone()),
        (json!(0), json!(60)),
        "{r}"
    );
    assert_ne!(
        pay(pay_sig, signature).await["errcode"],
        0,
        "an outTradeNo pays once"
    );
    assert_eq!(balance_of(&sb, &openid).await, 60);
    let (_, orders) = get_json(&sb, "/sandbox/xpay/orders").await;
    assert_eq!(orders["orders"][0]["price"], 600, "60 coins at 10 fen");
}

#[tokio::test]
async fn coin_apis_check_both_signatures_and_move_coins_once() {
    let sb = start().await;
    let (openid, session_key, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let data = coin_sign_data("coinbuy0002", 60);
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
        json!({"openid": openid, "mode": "short_series_coin", "signData": data,
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
    // (uri, body, AppKey, session_key or None for a pay_sig-only call)
    let call = |uri: &'static str, body: Value, key: &'static str, sk: Option<String>| {
        let sb = &sb;
        let token = token.clone();
        async move {
            let body = body.to_string();
            let sig = openssl_hmac(key, &format!("{uri}&{body}")).unwrap();
            let mut q = vec![("access_token", token), ("pay_sig", sig)];
            if let Some(sk) = sk {
                q.push(("signature", openssl_hmac(&sk, &body).unwrap()));
            }
            let res = http()
                .post(sb.url(uri))
                .query(&q)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            res.json::<Value>().await.unwrap()
        }
    };
    let sk = Some(session_key.clone());
    let key = DEV_XPAY_SANDBOX_APP_KEY;
    let who = json!({"openid": openid, "env": 1, "user_ip": "1.1.1.1"});
    let r = call("/xpay/query_user_balance", who.clone(), key, sk.clone()).await;
    assert_eq!(
        (r["errcode"].clone(), r["balance"].clone()),
        (json!(0), json!(60)),
        "{r}"
    );
    let r = call(
        "/xpay/query_user_balance",
        who.clone(),
        DEV_XPAY_APP_KEY,
        sk.clone(),
    )
    .await;
    assert_eq!(r["errcode"], -15005, "the live AppKey for env 1: {r}");
    let r = call(
        "/xpay/query_user_balance",
        who.clone(),
        key,
        Some("c3RhbGU=".into()),
    )
    .await;
    assert_eq!(r["errcode"], 268_490_003, "{r}");
    let r = call("/xpay/query_user_balance", who, key, None).await;
    assert_eq!(r["errcode"], 268_490_003, "no signature: {r}");

    let spend = |order_id: &str, amount: i64| {
        json!({"openid": openid, "env": 1, "user_ip": "1.1.1.1", "amount": amount,
            "order_id": order_id, "payitem": "", "remark": ""})
    };
    let r = call(
        "/xpay/currency_pay",
        spend("spend-0001", 25),
        key,
        sk.clone(),
    )
    .await;
    assert_eq!(
        (r["errcode"].clone(), r["balance"].clone()),
        (json!(0), json!(35)),
        "{r}"
    );
    let r = call(
        "/xpay/currency_pay",
        spend("spend-0001", 25),
        key,
        sk.clone(),
    )
    .await;
    assert_eq!(r["errcode"], 268_490_004, "a retry spends nothing: {r}");
    let r = call(
        "/xpay/currency_pay",
        spend("spend-0002", 36),
        key,
        sk.clone(),
    )
    .await;
    assert_eq!(r["errcode"], 268_490_006, "{r}");
    let r = call(
        "/xpay/currency_pay",
        spend("spend-0003", 5),
        key,
        Some("c3RhbGU=".into()),
    )
    .await;
    assert_eq!(r["errcode"], 268_490_003, "{r}");
    assert_eq!(
        balance_of(&sb, &openid).await,
        35,
        "refused and repeated spends changed nothing"
    );

    let cancel = |order_id: &str| {
        json!({"openid": openid, "env": 1, "user_ip": "1.1.1.1", "pay_order_id": "spend-0001",
            "order_id": order_id, "amount": 25})
    };
    let r = call(
        "/xpay/cancel_currency_pay",
        cancel("undo-0001"),
        key,
        sk.clone(),
    )
    .await;
    assert_eq!(r["errcode"], 0, "{r}");
    assert_eq!(balance_of(&sb, &openid).await, 60);
    let r = call(
        "/xpay/cancel_currency_pay",
        cancel("undo-0001"),
        key,
        sk.clone(),
    )
    .await;
    assert_eq!(r["errcode"], 268_490_004, "{r}");
    let r = call(
        "/xpay/cancel_currency_pay",
        cancel("undo-0002"),
        key,
        sk.clone(),
    )
    .await;
    assert_eq!(r["errcode"], 268_490_005, "{r}");
    assert_eq!(balance_of(&sb, &openid).await, 60, "a spend is undone once");

    let gift = json!({"openid": openid, "env": 1, "order_id": "gift-0001", "amount": 10});
    let r = call("/xpay/present_currency", gift.clone(), key, None).await;
    assert_eq!(
        (r["errcode"].clone(), r["balance"].clone()),
        (json!(0), json!(70)),
        "{r}"
    );
    let r = call("/xpay/present_currency", gift, key, None).await;
    assert_eq!(r["errcode"], 268_490_004, "{r}");
    assert_eq!(balance_of(&sb, &openid).await, 70);

    // download_bill: no env in the body, so the live AppKey.
    let today: i64 = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .format("%Y%m%d")
        .to_string()
        .parse()
        .unwrap();
    let days = json!({"begin_ds": today, "end_ds": today});
    let r = call("/xpay/download_bill", days.clone(), key, None).await;
    assert_eq!(r["errcode"], -15005, "{r}");
    let r = call("/xpay/download_bill", days, DEV_XPAY_APP_KEY, None).await;
    assert_eq!(r["errcode"], 0, "{r}");
    let bill = http()
        .get(r["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(bill.contains("coinbuy0002,"), "{bill}");
    assert_eq!(bill.lines().count(), 2, "{bill}");
    let r = call(
        "/xpay/download_bill",
        json!({"begin_ds": today, "end_ds": 20_230_801}),
        DEV_XPAY_APP_KEY,
        None,
    )
    .await;
    assert_eq!(r["errcode"], 268_490_002, "{r}");
}
