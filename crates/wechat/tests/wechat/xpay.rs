//! Virtual payment: the signatures against vectors computed by openssl (fixtures/xpay/vectors.sh,
//! an independent HMAC-SHA256), and the server calls against a canned WeChat (path, query with
//! `access_token` and `pay_sig`, the body signed being the body sent, errcodes).

use crate::helpers::{Reply, serve};
use wechat::xpay::{
    self, ERR_PAY_SIG, RefundOrder, SignData, XpayEnv, pay_sig_for_api, pay_sig_for_request,
    request_params, user_signature,
};

const APPKEY: &str = "xpayAppKeyForTests0123456789abcd";
const SESSION_KEY: &str = "c2Vzc2lvbmtleTEyMzQ1Ng==";
const SIGN_DATA: &str = r#"{"offerId":"1450000000","buyQuantity":1,"env":0,"currencyType":"CNY","platform":"android","productId":"vip_month","goodsPrice":990,"outTradeNo":"wxmp20261206xpay0001","attach":"o-1"}"#;
const QUERY_BODY: &str =
    r#"{"openid":"o_nN816_S2uN94viQe-pzZTb_efc","env":0,"order_id":"VIP202605301756083777"}"#;

fn vector(name: &str) -> String {
    include_str!("fixtures/xpay/vectors.txt")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .to_owned()
}

#[test]
fn signatures_match_openssl() {
    assert_eq!(
        pay_sig_for_request(APPKEY, SIGN_DATA),
        vector("pay_sig_request")
    );
    assert_eq!(
        user_signature(SESSION_KEY, SIGN_DATA),
        vector("signature_request")
    );
    assert_eq!(
        pay_sig_for_api(APPKEY, "/xpay/query_order", QUERY_BODY),
        vector("pay_sig_query_order")
    );
    assert_eq!(
        user_signature(SESSION_KEY, QUERY_BODY),
        vector("signature_query_order")
    );
    // a different key or a missing '&' gives another signature
    assert_ne!(
        pay_sig_for_request("other", SIGN_DATA),
        vector("pay_sig_request")
    );
    assert_ne!(
        xpay::user_signature(SESSION_KEY, &format!("requestVirtualPayment{SIGN_DATA}")),
        vector("pay_sig_request")
    );
}

#[test]
fn request_params_build_the_vector_sign_data() {
    let p = request_params(
        &SignData {
            offer_id: "1450000000".into(),
            buy_quantity: 1,
            env: XpayEnv::Live,
            currency_type: "CNY".into(),
            platform: "android".into(),
            product_id: "vip_month".into(),
            goods_price: 990,
            out_trade_no: "wxmp20261206xpay0001".into(),
            attach: "o-1".into(),
        },
        APPKEY,
        SESSION_KEY,
    )
    .unwrap();
    assert_eq!(p.sign_data, SIGN_DATA);
    assert_eq!(p.pay_sig, vector("pay_sig_request"));
    assert_eq!(p.signature, vector("signature_request"));
    assert_eq!(p.mode, "short_series_goods");
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
    (url.path().to_owned(), get("access_token"), get("pay_sig"))
}

#[tokio::test]
async fn server_calls_sign_the_body_they_send() {
    let server = serve(|r| {
        let (path, _, sig) = query(&r.target);
        if sig != pay_sig_for_api(APPKEY, &path, &r.text()) {
            return json(r#"{"errcode":-15005,"errmsg":"pay_sig invalid"}"#);
        }
        match path.as_str() {
            "/xpay/query_order" => json(
                r#"{"errcode":0,"errmsg":"ok","order":{"order_id":"N1","status":2,"order_fee":990,"paid_fee":990,"openid":"o1","wx_order_id":"wx1","env_type":1}}"#,
            ),
            "/xpay/refund_order" => json(
                r#"{"errcode":0,"errmsg":"ok","refund_order_id":"R1","refund_wx_order_id":"wr1","pay_order_id":"N1","pay_wx_order_id":"wx1"}"#,
            ),
            _ => json(r#"{"errcode":0,"errmsg":"ok"}"#),
        }
    })
    .await;
    let client = server.client();
    let order = client
        .xpay_query_order("TOK", APPKEY, "o1", XpayEnv::Sandbox, "N1")
        .await
        .unwrap();
    assert_eq!((order.status, order.paid_fee), (2, 990));
    client
        .xpay_notify_provide_goods("TOK", APPKEY, XpayEnv::Sandbox, "N1")
        .await
        .unwrap();
    let refund = client
        .xpay_refund_order(
            "TOK",
            APPKEY,
            &RefundOrder {
                openid: "o1".into(),
                order_id: "N1".into(),
                refund_order_id: "R1".into(),
                left_fee: 990,
                refund_fee: 990,
                biz_meta: String::new(),
                refund_reason: "1".into(),
                req_from: "2".into(),
                env: XpayEnv::Sandbox,
            },
        )
        .await
        .unwrap();
    assert_eq!(refund.refund_wx_order_id, "wr1");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let (path, token, _) = query(&reqs[0].target);
    assert_eq!(
        (path.as_str(), token.as_str()),
        ("/xpay/query_order", "TOK")
    );
    let sent: serde_json::Value = serde_json::from_str(&reqs[0].text()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"openid":"o1","env":1,"order_id":"N1"})
    );

    // a wrong AppKey: WeChat's -15005 comes back as that errcode, the key nowhere in it
    let e = client
        .xpay_query_order("TOK", "wrong-key", "o1", XpayEnv::Sandbox, "N1")
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(ERR_PAY_SIG));
    assert!(!format!("{e} {e:?}").contains("wrong-key"));
}
