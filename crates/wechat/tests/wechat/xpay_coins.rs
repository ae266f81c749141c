//! Coin mode (代币) and `download_bill`: the signatures against openssl's vectors
//! (fixtures/xpay/vectors.sh), and the calls against a canned WeChat that checks both
//! signatures the way the vectors were made (path, `pay_sig`, user-state `signature`,
//! 268490004 answered as a duplicate, other errcodes as errors).

use crate::helpers::{Reply, serve};
use wechat::xpay::{
    XpayEnv,
    bill::ERR_DATA_GENERATING,
    coins::{
        CancelCurrencyPay, CoinPayNotify, CoinSignData, CurrencyPay, ERR_INSUFFICIENT_BALANCE,
        PresentCurrency, coin_request_params,
    },
    pay_sig_for_api, user_signature,
};

const APPKEY: &str = "xpayAppKeyForTests0123456789abcd";
const SESSION_KEY: &str = "c2Vzc2lvbmtleTEyMzQ1Ng==";
const COIN_SIGN_DATA: &str = r#"{"offerId":"1450000000","buyQuantity":60,"env":0,"currencyType":"CNY","platform":"android","outTradeNo":"wxmp20261206coin0001","attach":""}"#;
const CURRENCY_PAY: &str = r#"{"openid":"o_nN816_S2uN94viQe-pzZTb_efc","env":0,"user_ip":"1.1.1.1","amount":25,"order_id":"spend-20261206-0001","payitem":"","remark":""}"#;
const DOWNLOAD_BILL: &str = r#"{"begin_ds":20261201,"end_ds":20261206}"#;

fn vector(name: &str) -> String {
    include_str!("fixtures/xpay/vectors.txt")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .to_owned()
}

fn spend() -> CurrencyPay {
    CurrencyPay {
        openid: "o_nN816_S2uN94viQe-pzZTb_efc".into(),
        env: XpayEnv::Live,
        user_ip: "1.1.1.1".into(),
        amount: 25,
        order_id: "spend-20261206-0001".into(),
        payitem: String::new(),
        remark: String::new(),
    }
}

#[test]
fn coin_signatures_match_openssl() {
    let p = coin_request_params(
        &CoinSignData {
            offer_id: "1450000000".into(),
            buy_quantity: 60,
            env: XpayEnv::Live,
            currency_type: "CNY".into(),
            platform: "android".into(),
            out_trade_no: "wxmp20261206coin0001".into(),
            attach: String::new(),
        },
        APPKEY,
        SESSION_KEY,
    )
    .unwrap();
    assert_eq!(p.sign_data, COIN_SIGN_DATA);
    assert_eq!(p.pay_sig, vector("pay_sig_coin_request"));
    assert_eq!(p.signature, vector("signature_coin_request"));
    assert_eq!(p.mode, "short_series_coin");
    // The body the client serialises is the body the vectors signed.
    assert_eq!(serde_json::to_string(&spend()).unwrap(), CURRENCY_PAY);
    assert_eq!(
        pay_sig_for_api(APPKEY, "/xpay/currency_pay", CURRENCY_PAY),
        vector("pay_sig_currency_pay")
    );
    assert_eq!(
        user_signature(SESSION_KEY, CURRENCY_PAY),
        vector("signature_currency_pay")
    );
    assert_eq!(
        pay_sig_for_api(APPKEY, "/xpay/download_bill", DOWNLOAD_BILL),
        vector("pay_sig_download_bill")
    );
    assert_ne!(
        user_signature("another-session-key", CURRENCY_PAY),
        vector("signature_currency_pay")
    );
}

#[test]
fn the_coin_push_parses() {
    let n: CoinPayNotify = serde_json::from_str(
        r#"{"ToUserName":"gh_1","FromUserName":"o1","CreateTime":1,"MsgType":"event","Event":"xpay_coin_pay_notify","OpenId":"o1","OutTradeNo":"N1","Env":1,"WeChatPayInfo":{"MchOrderNo":"m","TransactionId":"42","PaidTime":7},"CoinInfo":{"Quantity":60,"OrigPrice":600,"ActualPrice":600,"Attach":""}}"#,
    )
    .unwrap();
    assert_eq!(
        (
            n.coin_info.quantity,
            n.coin_info.actual_price,
            n.wechat_pay_info.transaction_id.as_str()
        ),
        (60, 600, "42")
    );
}

fn json(body: &str) -> Reply {
    Reply::new("application/json", body.to_owned())
}

fn query(target: &str) -> (String, String, String) {
    let url = url::Url::parse(&format!("http://x{target}")).unwrap();
    let get = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    (url.path().to_owned(), get("pay_sig"), get("signature"))
}

#[tokio::test]
async fn coin_calls_carry_both_signatures_and_retries_are_duplicates() {
    let server = serve(|r| {
        let (path, pay_sig, signature) = query(&r.target);
        let body = r.text();
        if pay_sig != pay_sig_for_api(APPKEY, &path, &body) {
            return json(r#"{"errcode":-15005,"errmsg":"pay_sig invalid"}"#);
        }
        let user_state = matches!(
            path.as_str(),
            "/xpay/query_user_balance" | "/xpay/currency_pay" | "/xpay/cancel_currency_pay"
        );
        if user_state && signature != user_signature(SESSION_KEY, &body) {
            return json(r#"{"errcode":268490003,"errmsg":"signature invalid"}"#);
        }
        if !user_state && !signature.is_empty() {
            return json(r#"{"errcode":268490002,"errmsg":"unexpected signature"}"#);
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        match path.as_str() {
            "/xpay/query_user_balance" => json(
                r#"{"errcode":0,"errmsg":"ok","balance":60,"present_balance":5,"sum_save":55,"sum_present":5,"sum_balance":60,"sum_cost":0,"first_save_flag":false}"#,
            ),
            "/xpay/currency_pay" if v["amount"] == 1000 => {
                json(r#"{"errcode":268490006,"errmsg":"balance not enough"}"#)
            }
            "/xpay/currency_pay" if v["order_id"] == "again" => {
                json(r#"{"errcode":268490004,"errmsg":"duplicate"}"#)
            }
            "/xpay/currency_pay" => json(
                r#"{"errcode":0,"errmsg":"ok","order_id":"spend-20261206-0001","balance":35,"used_present_amount":5}"#,
            ),
            "/xpay/cancel_currency_pay" => {
                json(r#"{"errcode":0,"errmsg":"ok","order_id":"undo-1"}"#)
            }
            "/xpay/present_currency" => json(
                r#"{"errcode":0,"errmsg":"ok","order_id":"gift-1","balance":45,"present_balance":15}"#,
            ),
            "/xpay/download_bill" if v["begin_ds"] == 20_261_101 => {
                json(r#"{"errcode":268490011,"errmsg":"generating"}"#)
            }
            "/xpay/download_bill" => {
                json(r#"{"errcode":0,"errmsg":"ok","url":"https://bill.example/b.csv"}"#)
            }
            _ => json(r#"{"errcode":-1,"errmsg":"unknown"}"#),
        }
    })
    .await;
    let client = server.client();
    let balance = client
        .xpay_query_user_balance("TOK", APPKEY, SESSION_KEY, "o1", XpayEnv::Live, "1.1.1.1")
        .await
        .unwrap();
    assert_eq!((balance.balance, balance.present_balance), (60, 5));
    let paid = client
        .xpay_currency_pay("TOK", APPKEY, SESSION_KEY, &spend())
        .await
        .unwrap();
    assert_eq!((paid.balance, paid.duplicate), (35, false));
    assert_eq!(
        server.requests()[1].text(),
        CURRENCY_PAY,
        "the body signed is the body sent"
    );
    let again = client
        .xpay_currency_pay(
            "TOK",
            APPKEY,
            SESSION_KEY,
            &CurrencyPay {
                order_id: "again".into(),
                ..spend()
            },
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.order_id, "again");
    let e = client
        .xpay_currency_pay(
            "TOK",
            APPKEY,
            SESSION_KEY,
            &CurrencyPay {
                amount: 1000,
                ..spend()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(ERR_INSUFFICIENT_BALANCE));
    // A wrong session_key: WeChat's 268490003, the key nowhere in the error.
    let e = client
        .xpay_currency_pay("TOK", APPKEY, "stale-session-key", &spend())
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(268_490_003));
    assert!(!format!("{e} {e:?}").contains("stale-session-key"));
    let undo = client
        .xpay_cancel_currency_pay(
            "TOK",
            APPKEY,
            SESSION_KEY,
            &CancelCurrencyPay {
                openid: "o1".into(),
                env: XpayEnv::Live,
                user_ip: "1.1.1.1".into(),
                pay_order_id: "spend-20261206-0001".into(),
                order_id: "undo-1".into(),
                amount: 25,
            },
        )
        .await
        .unwrap();
    assert_eq!(undo.order_id, "undo-1");
    let gift = client
        .xpay_present_currency(
            "TOK",
            APPKEY,
            &PresentCurrency {
                openid: "o1".into(),
                env: XpayEnv::Live,
                order_id: "gift-1".into(),
                amount: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!((gift.balance, gift.present_balance), (45, 15));
    let url = client
        .xpay_download_bill("TOK", APPKEY, 20_261_201, 20_261_206)
        .await
        .unwrap();
    assert_eq!(url, "https://bill.example/b.csv");
    let sent = server.requests().last().unwrap().text();
    assert_eq!(sent, DOWNLOAD_BILL);
    let e = client
        .xpay_download_bill("TOK", APPKEY, 20_261_101, 20_261_102)
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(ERR_DATA_GENERATING));
    let calls = server.requests().len();
    assert!(
        client
            .xpay_download_bill("TOK", APPKEY, 20_261_206, 20_261_201)
            .await
            .is_err()
    );
    assert_eq!(
        server.requests().len(),
        calls,
        "a reversed range is never sent"
    );
}
