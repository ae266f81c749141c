//! Pay v2 paths fed hand-written XML samples signed with independent MD5 / HMAC-SHA256 code,
//! answers checked field by field against the unifiedorder / orderquery / closeorder documents.

use std::collections::BTreeMap;

use crate::helpers::*;
use sandbox::{DEV_APP_ID, DEV_MCH_ID, DEV_PAY_KEY};
use serde_json::json;

const NOTIFY_URL: &str = "http://127.0.0.1:9/pay/notify";
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

fn keys(fields: &BTreeMap<String, String>) -> Vec<&str> {
    fields.keys().map(String::as_str).collect()
}

#[tokio::test]
async fn unifiedorder_md5_sample() {
    let sb = start().await;
    // A literal request as a client would send it (field order and CDATA as in the document).
    let mut fields = order_fields("20150806125346", "88", OPENID, NOTIFY_URL);
    fields.insert("attach".into(), "深圳分店".into());
    let sign = md5_sign(&fields, DEV_PAY_KEY);
    let xml = format!(
        "<xml>\n<appid>{DEV_APP_ID}</appid>\n<attach><![CDATA[深圳分店]]></attach>\n<body><![CDATA[wxmp-测试商品]]></body>\n<mch_id>{DEV_MCH_ID}</mch_id>\n\
         <nonce_str>5K8264ILTKCH16CQ2502SI8ZNMTM67VS</nonce_str>\n<notify_url>{NOTIFY_URL}</notify_url>\n<openid>{OPENID}</openid>\n\
         <out_trade_no>20150806125346</out_trade_no>\n<spbill_create_ip>123.12.12.123</spbill_create_ip>\n<total_fee>88</total_fee>\n\
         <trade_type>JSAPI</trade_type>\n<sign>{sign}</sign>\n</xml>"
    );
    let res = http()
        .post(sb.url("/pay/unifiedorder"))
        .body(xml.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer = xml_fields(&res.text().await.unwrap());
    assert_eq!(
        keys(&answer),
        [
            "appid",
            "mch_id",
            "nonce_str",
            "prepay_id",
            "result_code",
            "return_code",
            "return_msg",
            "sign",
            "trade_type"
        ],
        "{answer:?}"
    );
    assert_eq!(answer["return_code"], "SUCCESS");
    assert_eq!(answer["return_msg"], "OK");
    assert_eq!(answer["result_code"], "SUCCESS");
    assert_eq!(answer["appid"], DEV_APP_ID);
    assert_eq!(answer["mch_id"], DEV_MCH_ID);
    assert_eq!(answer["trade_type"], "JSAPI");
    assert!(answer["nonce_str"].len() <= 32 && !answer["nonce_str"].is_empty());
    assert!(answer["prepay_id"].starts_with("wx") && answer["prepay_id"].len() <= 64);
    assert!(
        signature_ok(&answer, DEV_PAY_KEY, false),
        "answer signed with MD5"
    );

    // The identical request again (even with another nonce): the same prepay_id.
    let again = pay_call(&sb, "/pay/unifiedorder", xml).await;
    assert_eq!(again["prepay_id"], answer["prepay_id"]);
    let mut renonced = fields.clone();
    renonced.insert("nonce_str".into(), "OTHERNONCE".into());
    let again = pay_call(&sb, "/pay/unifiedorder", signed_xml(renonced, DEV_PAY_KEY)).await;
    assert_eq!(again["prepay_id"], answer["prepay_id"]);

    // Same out_trade_no, another amount: INVALID_REQUEST "201 商户订单号重复", signed.
    let mut changed = fields.clone();
    changed.insert("total_fee".into(), "89".into());
    let dup = pay_call(&sb, "/pay/unifiedorder", signed_xml(changed, DEV_PAY_KEY)).await;
    assert_eq!(dup["return_code"], "SUCCESS");
    assert_eq!(dup["result_code"], "FAIL");
    assert_eq!(dup["err_code"], "INVALID_REQUEST");
    assert_eq!(dup["err_code_des"], "201 商户订单号重复");
    assert!(!dup.contains_key("prepay_id"));
    assert!(signature_ok(&dup, DEV_PAY_KEY, false));

    // The developer API counts every call naming the order, answered or refused.
    let (_, order) = get_json(&sb, &format!("/sandbox/orders/{}", fields["out_trade_no"])).await;
    assert_eq!(order["unifiedorder_calls"], 4, "{order}");
}

#[tokio::test]
async fn unifiedorder_hmac_sha256_sample() {
    let sb = start().await;
    let mut fields = order_fields("HMAC-0001", "1", OPENID, NOTIFY_URL);
    fields.insert("sign_type".into(), "HMAC-SHA256".into());
    let xml = signed_xml(fields.clone(), DEV_PAY_KEY);
    assert_eq!(xml_fields(&xml)["sign"].len(), 64);
    let answer = pay_call(&sb, "/pay/unifiedorder", xml).await;
    assert_eq!(answer["result_code"], "SUCCESS", "{answer:?}");
    assert!(!answer.contains_key("sign_type"));
    assert!(
        signature_ok(&answer, DEV_PAY_KEY, true),
        "answer signed with HMAC-SHA256 like the request"
    );
    assert!(!signature_ok(&answer, DEV_PAY_KEY, false));

    // An HMAC signature sent without sign_type is checked as MD5: 签名失败.
    let mut no_type = fields.clone();
    no_type.remove("sign_type");
    no_type.insert("sign".into(), hmac_sign(&fields, DEV_PAY_KEY));
    let answer = pay_call(&sb, "/pay/unifiedorder", raw_xml(&no_type)).await;
    assert_eq!(keys(&answer), ["return_code", "return_msg"]);
    assert_eq!(
        (
            answer["return_code"].as_str(),
            answer["return_msg"].as_str()
        ),
        ("FAIL", "签名失败")
    );
}

#[tokio::test]
async fn refused_requests_get_return_code_fail() {
    let sb = start().await;
    let good = order_fields("REFUSED-1", "1", OPENID, NOTIFY_URL);
    let mut tampered = xml_fields(&signed_xml(good.clone(), DEV_PAY_KEY));
    tampered.insert("total_fee".into(), "100".into());
    let mut unknown_mch = good.clone();
    unknown_mch.insert("mch_id".into(), "1230000109".into());
    let mut unbound_app = good.clone();
    unbound_app.insert("appid".into(), "wxd678efh567hg6787".into());
    let mut bad_type = good.clone();
    bad_type.insert("sign_type".into(), "SHA1".into());
    let mut no_nonce = good.clone();
    no_nonce.remove("nonce_str");
    let cases = [
        (raw_xml(&tampered), "签名失败"),
        (
            signed_xml(good.clone(), "another-key-00000000000000000000"),
            "签名失败",
        ),
        (
            signed_xml(unknown_mch, DEV_PAY_KEY),
            "商户号mch_id或sub_mch_id不存在",
        ),
        (
            signed_xml(unbound_app, DEV_PAY_KEY),
            "商户号mch_id与appid不匹配",
        ),
        (signed_xml(bad_type, DEV_PAY_KEY), "sign_type参数格式错误"),
        (signed_xml(no_nonce, DEV_PAY_KEY), "缺少参数nonce_str"),
        ("<xml><appid>".to_owned(), "XML格式错误"),
        ("{\"appid\":\"wx\"}".to_owned(), "XML格式错误"),
        (String::new(), "post数据为空"),
    ];
    for (xml, msg) in cases {
        let answer = pay_call(&sb, "/pay/unifiedorder", xml.clone()).await;
        assert_eq!(keys(&answer), ["return_code", "return_msg"], "{xml}");
        assert_eq!(answer["return_code"], "FAIL");
        assert_eq!(answer["return_msg"], msg, "{xml}");
    }
    // None of them created an order.
    let (_, orders) = get_json(&sb, "/sandbox/orders").await;
    assert_eq!(orders, json!([]));

    let res = http()
        .get(sb.url("/pay/unifiedorder"))
        .send()
        .await
        .unwrap();
    let answer = xml_fields(&res.text().await.unwrap());
    assert_eq!(answer["return_msg"], "请使用post方法");
}

#[tokio::test]
async fn business_errors_are_signed_result_code_fail() {
    let sb = start().await;
    let base = order_fields("BIZ-0001", "1", OPENID, NOTIFY_URL);
    let with = |k: &str, v: &str| {
        let mut f = base.clone();
        f.insert(k.into(), v.into());
        f
    };
    let without = |k: &str| {
        let mut f = base.clone();
        f.remove(k);
        f
    };
    let cases = [
        (without("body"), "LACK_PARAMS"),
        (without("out_trade_no"), "LACK_PARAMS"),
        (without("total_fee"), "LACK_PARAMS"),
        (without("spbill_create_ip"), "LACK_PARAMS"),
        (without("notify_url"), "LACK_PARAMS"),
        (without("trade_type"), "LACK_PARAMS"),
        (without("openid"), "PARAM_ERROR"),
        (with("trade_type", "NATIVE"), "PARAM_ERROR"),
        (with("total_fee", "0"), "PARAM_ERROR"),
        (with("total_fee", "-1"), "PARAM_ERROR"),
        (with("total_fee", "1.50"), "PARAM_ERROR"),
        (with("fee_type", "USD"), "PARAM_ERROR"),
        (with("out_trade_no", "has space"), "PARAM_ERROR"),
        (with("spbill_create_ip", "not-an-ip"), "PARAM_ERROR"),
        (
            with("notify_url", "http://example.com/notify?order=1"),
            "PARAM_ERROR",
        ),
        (with("body", &"长".repeat(50)), "PARAM_ERROR"),
    ];
    for (fields, err_code) in cases {
        let answer = pay_call(
            &sb,
            "/pay/unifiedorder",
            signed_xml(fields.clone(), DEV_PAY_KEY),
        )
        .await;
        assert_eq!(answer["return_code"], "SUCCESS", "{fields:?}");
        assert_eq!(answer["result_code"], "FAIL", "{fields:?}");
        assert_eq!(answer["err_code"], err_code, "{fields:?} → {answer:?}");
        assert!(!answer["err_code_des"].is_empty());
        assert!(signature_ok(&answer, DEV_PAY_KEY, false));
    }

    // An openid of another app is refused for this app.
    let (other_openid, _, _) = login(&sb, APP2_ID, APP2_SECRET, None).await;
    let answer = pay_call(
        &sb,
        "/pay/unifiedorder",
        signed_xml(with("openid", &other_openid), DEV_PAY_KEY),
    )
    .await;
    assert_eq!(answer["err_code"], "PARAM_ERROR");
    assert_eq!(answer["err_code_des"], "appid和openid不匹配");
}

fn query(out_trade_no: &str) -> String {
    signed_xml(
        map(&[
            ("appid", DEV_APP_ID),
            ("mch_id", DEV_MCH_ID),
            ("nonce_str", "ec2316275641faa3aacf3cc599e8730f"),
            ("out_trade_no", out_trade_no),
        ]),
        DEV_PAY_KEY,
    )
}

#[tokio::test]
async fn orderquery_and_closeorder_lifecycle() {
    let sb = start().await;
    let unknown = pay_call(&sb, "/pay/orderquery", query("NOPE-0001")).await;
    assert_eq!(
        (
            unknown["result_code"].as_str(),
            unknown["err_code"].as_str()
        ),
        ("FAIL", "ORDERNOTEXIST")
    );
    assert_eq!(unknown["err_code_des"], "order not exist");
    assert!(signature_ok(&unknown, DEV_PAY_KEY, false));

    let mut order = order_fields("LIFE-0001", "1", OPENID, NOTIFY_URL);
    order.insert("attach".into(), "a=1".into());
    let placed = pay_call(
        &sb,
        "/pay/unifiedorder",
        signed_xml(order.clone(), DEV_PAY_KEY),
    )
    .await;
    assert_eq!(placed["result_code"], "SUCCESS");

    let notpay = pay_call(&sb, "/pay/orderquery", query("LIFE-0001")).await;
    assert_eq!(
        keys(&notpay),
        [
            "appid",
            "attach",
            "mch_id",
            "nonce_str",
            "out_trade_no",
            "result_code",
            "return_code",
            "return_msg",
            "sign",
            "total_fee",
            "trade_state",
            "trade_state_desc"
        ]
    );
    assert_eq!(notpay["trade_state"], "NOTPAY");
    assert_eq!(notpay["trade_state_desc"], "订单未支付");
    assert_eq!(notpay["attach"], "a=1");
    assert!(signature_ok(&notpay, DEV_PAY_KEY, false));

    // orderquery needs out_trade_no or transaction_id.
    let bare = signed_xml(
        map(&[
            ("appid", DEV_APP_ID),
            ("mch_id", DEV_MCH_ID),
            ("nonce_str", "n1"),
        ]),
        DEV_PAY_KEY,
    );
    assert_eq!(
        pay_call(&sb, "/pay/orderquery", bare).await["err_code"],
        "LACK_PARAMS"
    );

    let close = |no: &str| {
        signed_xml(
            map(&[
                ("appid", DEV_APP_ID),
                ("mch_id", DEV_MCH_ID),
                ("nonce_str", "n2"),
                ("out_trade_no", no),
            ]),
            DEV_PAY_KEY,
        )
    };
    let closed = pay_call(&sb, "/pay/closeorder", close("LIFE-0001")).await;
    assert_eq!(
        (
            closed["return_code"].as_str(),
            closed["result_code"].as_str()
        ),
        ("SUCCESS", "SUCCESS"),
        "{closed:?}"
    );
    assert_eq!(closed["result_msg"], "OK");
    assert!(signature_ok(&closed, DEV_PAY_KEY, false));
    let again = pay_call(&sb, "/pay/closeorder", close("LIFE-0001")).await;
    assert_eq!(again["err_code"], "ORDERCLOSED");
    assert_eq!(
        pay_call(&sb, "/pay/closeorder", close("NOPE-0002")).await["err_code"],
        "ORDERNOTEXIST"
    );
    let q = pay_call(&sb, "/pay/orderquery", query("LIFE-0001")).await;
    assert_eq!(q["trade_state"], "CLOSED");
    // A closed order cannot be placed again.
    let reorder = pay_call(&sb, "/pay/unifiedorder", signed_xml(order, DEV_PAY_KEY)).await;
    assert_eq!(reorder["err_code"], "ORDERCLOSED");
    // A closed prepay_id cannot be paid.
    let (status, v) = post_json(
        &sb,
        "/sandbox/pay",
        request_payment(&placed["prepay_id"], DEV_PAY_KEY, false, json!({})),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (409, Some("conflict")));
}

#[tokio::test]
async fn paid_orders_refuse_reorder_and_close() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    let fields = order_fields("PAID-0001", "250", OPENID, &receiver.url);
    let placed = pay_call(
        &sb,
        "/pay/unifiedorder",
        signed_xml(fields.clone(), DEV_PAY_KEY),
    )
    .await;
    let (status, order) = post_json(
        &sb,
        "/sandbox/pay",
        request_payment(&placed["prepay_id"], DEV_PAY_KEY, false, json!({})),
    )
    .await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["trade_state"], "SUCCESS");

    let q = pay_call(&sb, "/pay/orderquery", query("PAID-0001")).await;
    assert_eq!(
        keys(&q),
        [
            "appid",
            "bank_type",
            "cash_fee",
            "fee_type",
            "is_subscribe",
            "mch_id",
            "nonce_str",
            "openid",
            "out_trade_no",
            "result_code",
            "return_code",
            "return_msg",
            "sign",
            "time_end",
            "total_fee",
            "trade_state",
            "trade_state_desc",
            "trade_type",
            "transaction_id"
        ]
    );
    assert_eq!(q["trade_state"], "SUCCESS");
    assert_eq!(q["trade_state_desc"], "支付成功");
    assert_eq!(q["total_fee"], "250");
    assert_eq!(q["cash_fee"], "250");
    assert_eq!(q["openid"], OPENID);
    assert_eq!(
        q["transaction_id"],
        order["transaction_id"].as_str().unwrap()
    );
    assert_eq!(q["time_end"].len(), 14);
    assert!(q["time_end"].bytes().all(|b| b.is_ascii_digit()));
    assert!(signature_ok(&q, DEV_PAY_KEY, false));

    // Query by transaction_id works too.
    let by_tid = signed_xml(
        map(&[
            ("appid", DEV_APP_ID),
            ("mch_id", DEV_MCH_ID),
            ("nonce_str", "n3"),
            ("transaction_id", &q["transaction_id"]),
        ]),
        DEV_PAY_KEY,
    );
    assert_eq!(
        pay_call(&sb, "/pay/orderquery", by_tid).await["out_trade_no"],
        "PAID-0001"
    );

    let reorder = pay_call(&sb, "/pay/unifiedorder", signed_xml(fields, DEV_PAY_KEY)).await;
    assert_eq!(reorder["err_code"], "ORDERPAID");
    let close = signed_xml(
        map(&[
            ("appid", DEV_APP_ID),
            ("mch_id", DEV_MCH_ID),
            ("nonce_str", "n4"),
            ("out_trade_no", "PAID-0001"),
        ]),
        DEV_PAY_KEY,
    );
    assert_eq!(
        pay_call(&sb, "/pay/closeorder", close).await["err_code"],
        "ORDERPAID"
    );
}

#[tokio::test]
async fn system_error_and_http_faults_on_pay_paths() {
    let sb = start().await;
    let fields = order_fields("FAULT-0001", "1", OPENID, NOTIFY_URL);
    post_json(
        &sb,
        "/sandbox/faults",
        json!({ "pay_system_error": true, "times": 1 }),
    )
    .await;
    let answer = pay_call(
        &sb,
        "/pay/unifiedorder",
        signed_xml(fields.clone(), DEV_PAY_KEY),
    )
    .await;
    assert_eq!(
        (answer["result_code"].as_str(), answer["err_code"].as_str()),
        ("FAIL", "SYSTEMERROR")
    );
    assert!(signature_ok(&answer, DEV_PAY_KEY, false));
    // Nothing was created, and the fault cleared itself.
    assert_eq!(
        pay_call(&sb, "/pay/orderquery", query("FAULT-0001")).await["err_code"],
        "ORDERNOTEXIST"
    );
    assert_eq!(
        pay_call(
            &sb,
            "/pay/unifiedorder",
            signed_xml(fields.clone(), DEV_PAY_KEY)
        )
        .await["result_code"],
        "SUCCESS"
    );

    // Only /pay/orderquery answers 503, twice.
    post_json(
        &sb,
        "/sandbox/faults",
        json!({ "http_status": 503, "times": 2, "path_prefix": "/pay/orderquery" }),
    )
    .await;
    let status = |path: &'static str, xml: String| {
        let url = sb.url(path);
        async move {
            http()
                .post(url)
                .body(xml)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status("/pay/unifiedorder", signed_xml(fields.clone(), DEV_PAY_KEY)).await,
        200
    );
    assert_eq!(status("/pay/orderquery", query("FAULT-0001")).await, 503);
    assert_eq!(status("/pay/orderquery", query("FAULT-0001")).await, 503);
    assert_eq!(status("/pay/orderquery", query("FAULT-0001")).await, 200);

    // The header applies to one request.
    let res = http()
        .post(sb.url("/pay/closeorder"))
        .header("x-sandbox-faults", r#"{"pay_system_error":true}"#)
        .body(signed_xml(
            map(&[
                ("appid", DEV_APP_ID),
                ("mch_id", DEV_MCH_ID),
                ("nonce_str", "n"),
                ("out_trade_no", "FAULT-0001"),
            ]),
            DEV_PAY_KEY,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        xml_fields(&res.text().await.unwrap())["err_code"],
        "SYSTEMERROR"
    );
    assert_eq!(
        pay_call(&sb, "/pay/orderquery", query("FAULT-0001")).await["trade_state"],
        "NOTPAY"
    );

    // Bad fault JSON is refused.
    let (status, v) = post_json(&sb, "/sandbox/faults", json!({ "http_status": 200 })).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = post_json(&sb, "/sandbox/faults", json!({ "unknown_knob": true })).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn orders_are_per_app() {
    let sb = start().await;
    let (openid2, _, _) = login(&sb, APP2_ID, APP2_SECRET, None).await;
    let mut fields = order_fields("APP2-0001", "5", &openid2, NOTIFY_URL);
    fields.insert("appid".into(), APP2_ID.into());
    assert_eq!(
        pay_call(&sb, "/pay/unifiedorder", signed_xml(fields, DEV_PAY_KEY)).await["result_code"],
        "SUCCESS"
    );
    // The dev app does not see app 2's order.
    assert_eq!(
        pay_call(&sb, "/pay/orderquery", query("APP2-0001")).await["err_code"],
        "ORDERNOTEXIST"
    );
    let (status, order) = get_json(&sb, "/sandbox/orders/APP2-0001").await;
    assert_eq!(status, 200);
    assert_eq!(order["appid"], APP2_ID);
    assert_eq!(order["trade_state"], "NOTPAY");
    let (status, v) = get_json(&sb, "/sandbox/orders/NOPE").await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown_order")));
}

#[tokio::test]
async fn time_expire_rules() {
    let sb = start().await;
    let beijing = |minutes: i64| {
        let t =
            chrono::Utc::now() + chrono::Duration::minutes(minutes) + chrono::Duration::hours(8);
        t.format("%Y%m%d%H%M%S").to_string()
    };
    let with_expire = |no: &str, t: &str| {
        let mut f = order_fields(no, "1", OPENID, NOTIFY_URL);
        f.insert("time_expire".into(), t.into());
        signed_xml(f, DEV_PAY_KEY)
    };
    let bad = pay_call(
        &sb,
        "/pay/unifiedorder",
        with_expire("EXP-0001", "2024-01-01"),
    )
    .await;
    assert_eq!(bad["err_code"], "PARAM_ERROR");
    let short = pay_call(
        &sb,
        "/pay/unifiedorder",
        with_expire("EXP-0002", &beijing(2)),
    )
    .await;
    assert_eq!(
        short["err_code"], "PARAM_ERROR",
        "WeChat wants more than 5 minutes"
    );
    let expire = beijing(30);
    let ok = pay_call(&sb, "/pay/unifiedorder", with_expire("EXP-0003", &expire)).await;
    assert_eq!(ok["result_code"], "SUCCESS", "{ok:?}");
    let (_, order) = get_json(&sb, "/sandbox/orders/EXP-0003").await;
    assert_eq!(order["time_expire"], expire.as_str());
}
