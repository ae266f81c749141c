//! Virtual payment, coin mode (代币): PrepareJsapiPayment of a coin product answers
//! `requestVirtualPayment` in mode `short_series_coin` (the number of coins, the catalog
//! price); the `xpay_coin_pay_notify` push pays the order once, retried and handled by two
//! replicas at once; pushes that do not match change nothing; a lost push is repaired by
//! `query_order` against the sandbox, which really sold the coins.

use sandbox::{
    DEV_APP_ID, DEV_APP_SECRET,
    xpay::{DEV_XPAY_OFFER_ID, coins::DEV_XPAY_COIN_PRICE_FEN},
};
use wxmp_proto::pay::v1::{self as pb, prepare_jsapi_payment_request::Target};

use crate::helpers::{Backend, Env, on_both_backends, principal};
use crate::xpay::{APP_KEY, SESSION_KEY, Stand, auth_url, log_in_at_sandbox, paid_events};

const EVENT: &str = "xpay_coin_pay_notify";

/// The catalog's "coins" (100 fen) sold as 10 coins at the sandbox's 10 fen a coin; "vip"
/// stays a 道具直购 product.
async fn env_with(backend: Backend, stand: Stand) -> Env {
    let url = auth_url(stand).await;
    Env::with(backend, move |c| {
        c.xpay.xpay_products = "vip:vip_month".into();
        c.xpay.xpay_coin_products = "coins:10".into();
        c.xpay.xpay_coin_price_fen = DEV_XPAY_COIN_PRICE_FEN;
        c.xpay.xpay_offer_id = DEV_XPAY_OFFER_ID.into();
        c.xpay.xpay_sandbox_app_key = service_kit::Secret::new(APP_KEY);
        c.xpay.xpay_env = 1;
        c.paid_message.auth_service_url = url;
    })
    .await
}

async fn env(backend: Backend) -> Env {
    let stand = Stand::default();
    stand
        .keys
        .lock()
        .unwrap()
        .insert(principal(1).openid, SESSION_KEY.to_owned());
    env_with(backend, stand).await
}

/// The coin push of `order_no` as WeChat sends it (JSON mode, after decryption).
fn coin_push(order_no: &str, openid: &str, coins: i64, price: i64) -> String {
    serde_json::json!({
        "ToUserName": "gh_sandbox", "FromUserName": openid, "CreateTime": 1_765_000_000,
        "MsgType": "event", "Event": EVENT,
        "OpenId": openid, "OutTradeNo": order_no, "Env": 1,
        "WeChatPayInfo": {"MchOrderNo": "mch-1", "TransactionId": "4200000coin01", "PaidTime": 1_765_000_000},
        "CoinInfo": {"Quantity": coins, "OrigPrice": price, "ActualPrice": price, "Attach": ""}
    })
    .to_string()
}

async fn prepare_coins(env: &Env) -> (pb::Order, pb::VirtualPaymentParams) {
    let r = env
        .prepare(&principal(1), Target::ProductId("coins".into()))
        .await
        .unwrap();
    assert!(r.params.is_none(), "no JSAPI params for a coin product");
    (r.order.unwrap(), r.virtual_payment.unwrap())
}

async fn prepare_answers_coin_mode(backend: Backend) {
    let env = env(backend).await;
    let (order, p) = prepare_coins(&env).await;
    assert_eq!(order.state, pb::OrderState::Paying as i32);
    assert_eq!(order.amount_fen, 100);
    let sign_data: serde_json::Value = serde_json::from_str(&p.sign_data).unwrap();
    assert_eq!(
        sign_data,
        serde_json::json!({"offerId": DEV_XPAY_OFFER_ID, "buyQuantity": 10, "env": 1,
            "currencyType": "CNY", "platform": "android", "outTradeNo": order.order_no,
            "attach": ""})
    );
    assert_eq!(p.mode, "short_series_coin");
    assert!(wechat::xpay::verify_pay_sig_for_request(
        APP_KEY,
        &p.sign_data,
        &p.pay_sig
    ));
    assert!(wechat::xpay::verify_user_signature(
        SESSION_KEY,
        &p.sign_data,
        &p.signature
    ));
    // The goods product is still sold as goods.
    let vip = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap();
    assert_eq!(vip.virtual_payment.unwrap().mode, "short_series_goods");
}
on_both_backends!(prepare_answers_coin_mode);

async fn coin_push_retried_and_on_two_replicas_pays_once(backend: Backend) {
    let env = env(backend).await;
    let (order, _) = prepare_coins(&env).await;
    let no = order.order_no.clone();
    let other = env.replica();
    let message = coin_push(&no, &principal(1).openid, 10, 100);
    let mut verdicts = Vec::new();
    for retry in 0..3 {
        let (ka, kb) = (format!("a{retry}"), format!("b{retry}"));
        let (a, b) = tokio::join!(
            env.pay
                .handle_message_push(DEV_APP_ID, EVENT, &message, &ka),
            other.handle_message_push(DEV_APP_ID, EVENT, &message, &kb),
        );
        verdicts.push(a.unwrap());
        verdicts.push(b.unwrap());
    }
    assert_eq!(
        verdicts.iter().filter(|v| **v == "handled").count(),
        1,
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts.iter().filter(|v| **v == "duplicate").count(),
        5,
        "{verdicts:?}"
    );
    let paid = env.get(&no, 1).await.unwrap();
    assert_eq!(paid.state, pb::OrderState::Paid as i32);
    assert_eq!(paid.transaction_id, "4200000coin01");
    assert_eq!(paid_events(&env, &no).await, 1);
}
on_both_backends!(coin_push_retried_and_on_two_replicas_pays_once);

async fn coin_pushes_that_do_not_match_change_nothing(backend: Backend) {
    let env = env(backend).await;
    let (order, _) = prepare_coins(&env).await;
    let no = order.order_no.clone();
    let openid = principal(1).openid;
    let cases = [
        (EVENT, coin_push(&no, &openid, 100, 100), "mismatch"),
        (EVENT, coin_push(&no, &openid, 10, 1), "mismatch"),
        (EVENT, coin_push(&no, &principal(9).openid, 10, 100), "mismatch"),
        (
            EVENT,
            coin_push(&no, &openid, 10, 100).replace("\"Env\":1", "\"Env\":0"),
            "mismatch",
        ),
        (EVENT, coin_push("N-none", &openid, 10, 100), "unknown_order"),
        (EVENT, "[1]".to_owned(), "malformed"),
        // A goods push for a coin order: no xpay product of that order.
        (
            "xpay_goods_deliver_notify",
            serde_json::json!({"Event": "xpay_goods_deliver_notify", "OpenId": openid,
                "OutTradeNo": no, "Env": 1,
                "GoodsInfo": {"ProductId": "vip_month", "Quantity": 1, "OrigPrice": 100, "ActualPrice": 100}})
            .to_string(),
            "mismatch",
        ),
    ];
    for (i, (event, message, want)) in cases.iter().enumerate() {
        let verdict = env
            .pay
            .handle_message_push(DEV_APP_ID, event, message, &format!("k{i}"))
            .await
            .unwrap();
        assert_eq!(verdict, *want, "case {i}");
    }
    // A coin push for a goods order.
    let vip = env
        .prepare(&principal(1), Target::ProductId("vip".into()))
        .await
        .unwrap()
        .order
        .unwrap();
    let verdict = env
        .pay
        .handle_message_push(
            DEV_APP_ID,
            EVENT,
            &coin_push(&vip.order_no, &openid, 10, 990),
            "kv",
        )
        .await
        .unwrap();
    assert_eq!(verdict, "mismatch");
    for n in [&no, &vip.order_no] {
        assert_eq!(
            env.get(n, 1).await.unwrap().state,
            pb::OrderState::Paying as i32
        );
        assert_eq!(paid_events(&env, n).await, 0);
    }
}
on_both_backends!(coin_pushes_that_do_not_match_change_nothing);

async fn a_lost_coin_push_is_repaired_by_query_order(backend: Backend) {
    let stand = Stand::default();
    let env = env_with(backend, stand.clone()).await;
    let base = env.sandbox.base_url.clone();
    *stand.wechat.lock().unwrap() = Some(
        wechat::WechatClient::new(wechat::WechatConfig {
            api_base: base.clone(),
            ..wechat::WechatConfig::default()
        })
        .unwrap(),
    );
    // The user logs in at the sandbox: its session_key is the one auth-service holds.
    let openid = principal(1).openid;
    let code: serde_json::Value = env
        .http
        .post(env.sandbox.url("/sandbox/login-code"))
        .json(&serde_json::json!({"appid": DEV_APP_ID, "openid": openid}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session: serde_json::Value = env
        .http
        .get(env.sandbox.url("/sns/jscode2session"))
        .query(&[
            ("appid", DEV_APP_ID),
            ("secret", DEV_APP_SECRET),
            ("js_code", code["code"].as_str().unwrap()),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stand.keys.lock().unwrap().insert(
        openid.clone(),
        session["session_key"].as_str().unwrap().to_owned(),
    );
    let (order, p) = prepare_coins(&env).await;
    let no = order.order_no.clone();
    // The phone buys the coins; no push URL is configured: the push is lost.
    let paid: serde_json::Value = env
        .http
        .post(env.sandbox.url("/sandbox/xpay/pay"))
        .json(
            &serde_json::json!({"openid": openid, "mode": p.mode, "signData": p.sign_data,
            "paySig": p.pay_sig, "signature": p.signature}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (paid["errcode"].clone(), paid["balance"].clone()),
        (serde_json::json!(0), serde_json::json!(10)),
        "{paid}"
    );
    let pay = env.replica_with(|c| {
        c.wechat = service_kit::settings::WechatApi::new(&base);
    });
    let report = pay.reconcile_once().await.unwrap();
    assert_eq!(report.paid, 1, "{report:?}");
    let repaired = env.get(&no, 1).await.unwrap();
    assert_eq!(repaired.state, pb::OrderState::Paid as i32);
    let wx_order_id = paid["wx_order_id"].as_str().unwrap();
    assert_eq!(repaired.transaction_id, wx_order_id);
    // The late push changes nothing.
    let late = coin_push(&no, &openid, 10, 100).replace("4200000coin01", wx_order_id);
    let verdict = pay
        .handle_message_push(DEV_APP_ID, EVENT, &late, "late")
        .await
        .unwrap();
    assert_eq!(verdict, "duplicate");
    assert_eq!(paid_events(&env, &no).await, 1);
}
on_both_backends!(a_lost_coin_push_is_repaired_by_query_order);

/// [`crate::xpay::logged_in`] on this suite's coin catalog.
async fn logged_in(backend: Backend) -> (Env, pay_service::Payments) {
    let stand = Stand::default();
    log_in_at_sandbox(env_with(backend, stand.clone()).await, stand).await
}

/// The user's coins as the sandbox (WeChat) holds them.
async fn sandbox_balance(env: &Env) -> i64 {
    let v: serde_json::Value = env
        .http
        .get(env.sandbox.url(&format!(
            "/sandbox/xpay/coins?env=1&openid={}",
            principal(1).openid
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["balance"].as_i64().unwrap()
}

fn payer(n: i64) -> pay_service::orders::Payer {
    let p = principal(n);
    pay_service::orders::Payer {
        user_id: p.user_id,
        app_id: p.app_id,
        openid: p.openid,
    }
}

async fn coins_are_spent_once_per_key_and_cancelled_once(backend: Backend) {
    let (env, pay) = logged_in(backend).await;
    // Buy 10 coins on the phone.
    let (_, p) = prepare_coins(&env).await;
    let bought: serde_json::Value = env
        .http
        .post(env.sandbox.url("/sandbox/xpay/pay"))
        .json(
            &serde_json::json!({"openid": principal(1).openid, "mode": p.mode,
            "signData": p.sign_data, "paySig": p.pay_sig, "signature": p.signature}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bought["errcode"], 0, "{bought}");
    let other = env.replica_with(|c| c.wechat = pay_config_wechat(&env));
    let me = payer(1);
    assert_eq!(
        pay.coin_balance(&me, "203.0.113.7").await.unwrap().balance,
        10
    );

    // The same key on two replicas at once: one spend at WeChat, one row.
    let (a, b) = tokio::join!(
        pay.spend_coins(&me, "203.0.113.7", 4, "buy-sword-1", "sword"),
        other.spend_coins(&me, "203.0.113.7", 4, "buy-sword-1", "sword"),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.spend_no, b.spend_no);
    assert_eq!((a.state.as_str(), b.state.as_str()), ("SPENT", "SPENT"));
    assert_eq!(sandbox_balance(&env).await, 6);
    // A retry answers the same spend and spends nothing.
    let again = pay
        .spend_coins(&me, "203.0.113.7", 4, "buy-sword-1", "sword")
        .await
        .unwrap();
    assert_eq!(again.spend_no, a.spend_no);
    assert_eq!(sandbox_balance(&env).await, 6);
    // The key with another amount: refused.
    let e = pay
        .spend_coins(&me, "203.0.113.7", 5, "buy-sword-1", "sword")
        .await
        .unwrap_err();
    assert!(
        matches!(e, pay_service::error::Error::IdempotencyConflict),
        "{e:?}"
    );
    // More than the balance: refused, and a retry of that key stays refused.
    for _ in 0..2 {
        let e = pay
            .spend_coins(&me, "203.0.113.7", 7, "buy-shield-1", "")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not enough coins"), "{e:?}");
    }
    assert_eq!(sandbox_balance(&env).await, 6);
    // Bad input changes nothing.
    for (amount, key) in [(0, "k"), (-1, "k"), (1, "")] {
        assert!(
            pay.spend_coins(&me, "203.0.113.7", amount, key, "")
                .await
                .is_err()
        );
    }
    assert!(
        pay.spend_coins(&me, "not-an-ip", 1, "k-ip", "")
            .await
            .is_err()
    );
    // Another user's spend is not found; the owner's cancel gives the coins back once.
    assert!(
        pay.cancel_coin_spend(&payer(2), "", &a.spend_no)
            .await
            .is_err()
    );
    let (c1, c2) = tokio::join!(
        pay.cancel_coin_spend(&me, "203.0.113.7", &a.spend_no),
        other.cancel_coin_spend(&me, "203.0.113.7", &a.spend_no),
    );
    assert_eq!(c1.unwrap().state, "CANCELLED");
    assert_eq!(c2.unwrap().state, "CANCELLED");
    assert_eq!(sandbox_balance(&env).await, 10);
    let c3 = pay.cancel_coin_spend(&me, "", &a.spend_no).await.unwrap();
    assert_eq!(c3.state, "CANCELLED");
    assert_eq!(sandbox_balance(&env).await, 10);
    // A user without a live session: refused before anything is recorded.
    let e = pay
        .spend_coins(&payer(2), "203.0.113.7", 1, "k2", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("log in again"), "{e:?}");
    assert!(
        pay.spend_coins(&payer(2), "203.0.113.7", 1, "k2", "")
            .await
            .is_err()
    );
}
on_both_backends!(coins_are_spent_once_per_key_and_cancelled_once);

fn pay_config_wechat(env: &Env) -> service_kit::settings::WechatApi {
    service_kit::settings::WechatApi::new(&env.sandbox.base_url)
}
