//! The order shipping APIs against a local server answering WeChat's documented shapes: each
//! call's path, `access_token` query and JSON body, and its errcodes (10060001, 45009, 40001).

use crate::helpers::{Reply, serve};
use wechat::ApiError;
use wechat::shipping::{
    DeliveryMode, ERR_ORDER_NOT_FOUND, ERR_QUOTA, LogisticsType, OrderKey, OrderListQuery, Parcel,
    Payer, ShippingInfo, TimeRange,
};

fn json(body: &str) -> Reply {
    Reply::new("application/json; charset=utf-8", body.to_owned())
}

fn info() -> ShippingInfo {
    ShippingInfo {
        order_key: OrderKey::transaction("4200000000000001"),
        logistics_type: LogisticsType::Express,
        delivery_mode: DeliveryMode::Split,
        is_all_delivered: Some(true),
        shipping_list: vec![Parcel {
            tracking_no: "SF0001".into(),
            express_company: "SF".into(),
            item_desc: "微信红包抱枕*1个".into(),
            contact: Some(wechat::shipping::Contact {
                receiver_contact: "189****1234".into(),
                ..Default::default()
            }),
        }],
        upload_time: "2022-12-15T13:29:35.120+08:00".into(),
        payer: Payer {
            openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
        },
    }
}

fn path_and_token(target: &str) -> (String, String) {
    let url = url::Url::parse(&format!("http://x{target}")).unwrap();
    let token = url
        .query_pairs()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    (url.path().to_owned(), token)
}

#[tokio::test]
async fn upload_sends_wechats_shape_and_maps_its_errcodes() {
    let server = serve(|r| {
        let body: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        match body["shipping_list"][0]["tracking_no"].as_str() {
            Some("SF0001") => json(r#"{"errcode":0,"errmsg":"ok"}"#),
            Some("NOTYET") => json(r#"{"errcode":10060001,"errmsg":"支付单不存在"}"#),
            Some("QUOTA") => {
                json(r#"{"errcode":45009,"errmsg":"reach max api daily quota limit"}"#)
            }
            _ => json(r#"{"errcode":40001,"errmsg":"invalid credential"}"#),
        }
    })
    .await;
    let client = server.client();
    client
        .upload_shipping_info("TOKEN1", &info())
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(
        path_and_token(&r.target),
        (
            "/wxa/sec/order/upload_shipping_info".into(),
            "TOKEN1".into()
        )
    );
    let sent: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        sent["order_key"],
        serde_json::json!({"order_number_type": 2, "transaction_id": "4200000000000001"})
    );
    assert_eq!(
        (
            sent["logistics_type"].clone(),
            sent["delivery_mode"].clone()
        ),
        (1.into(), 2.into())
    );
    assert_eq!(sent["is_all_delivered"], true);
    assert_eq!(
        sent["shipping_list"][0]["contact"]["receiver_contact"],
        "189****1234"
    );
    assert_eq!(sent["payer"]["openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");

    let mut later = info();
    later.shipping_list[0].tracking_no = "NOTYET".into();
    let e = client
        .upload_shipping_info("TOKEN1", &later)
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(ERR_ORDER_NOT_FOUND));
    later.shipping_list[0].tracking_no = "QUOTA".into();
    let e = client
        .upload_shipping_info("TOKEN1", &later)
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(ERR_QUOTA));
    later.shipping_list[0].tracking_no = "STALE".into();
    let e = client
        .upload_shipping_info("TOKEN1", &later)
        .await
        .unwrap_err();
    assert!(e.is_token_rejected(), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("TOKEN1"));
}

#[tokio::test]
async fn the_other_shipping_calls() {
    let server = serve(|r| match path_and_token(&r.target).0.as_str() {
        "/wxa/sec/order/get_order" => json(
            r#"{"errcode":0,"errmsg":"ok","order":{"transaction_id":"42","merchant_id":"1900000109","merchant_trade_no":"N1","openid":"o1","paid_amount":990,"pay_time":1700000000,"order_state":2,"in_complaint":false,"shipping":{"delivery_mode":1,"logistics_type":3,"finish_shipping":true,"goods_desc":"VIP","finish_shipping_count":0,"shipping_list":[]}}}"#,
        ),
        "/wxa/sec/order/get_order_list" => json(
            r#"{"errcode":0,"errmsg":"ok","last_index":"abc","has_more":true,"order_list":[{"transaction_id":"42","order_state":1}]}"#,
        ),
        "/wxa/sec/order/is_trade_managed" => json(r#"{"errcode":0,"errmsg":"ok","is_trade_managed":true}"#),
        "/cgi-bin/express/delivery/open_msg/get_delivery_list" => json(
            r#"{"errcode":0,"errmsg":"ok","delivery_list":[{"delivery_id":"SF","delivery_name":"顺丰速运"}],"count":1}"#,
        ),
        "/wxa/sec/order/notify_confirm_receive" | "/wxa/sec/order/set_msg_jump_path" => {
            json(r#"{"errcode":0,"errmsg":"ok"}"#)
        }
        _ => json(r#"{"errcode":47001,"errmsg":"data format error"}"#),
    })
    .await;
    let c = server.client();
    let order = c.get_shipping_order("T", Some("42"), None).await.unwrap();
    assert_eq!((order.order_state, order.paid_amount), (2, 990));
    assert_eq!(order.shipping.unwrap().logistics_type, 3);
    let list = c
        .get_shipping_order_list(
            "T",
            &OrderListQuery {
                pay_time_range: Some(TimeRange {
                    begin_time: 1,
                    end_time: 2,
                }),
                page_size: Some(50),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(list.has_more);
    assert_eq!(list.last_index, "abc");
    assert_eq!(list.order_list[0].order_state, 1);
    assert!(c.is_trade_managed("T", "wx1").await.unwrap());
    assert_eq!(c.get_delivery_list("T").await.unwrap()[0].delivery_id, "SF");
    c.notify_confirm_receive("T", "42", 1_700_000_000)
        .await
        .unwrap();
    c.set_msg_jump_path("T", "pages/order/detail")
        .await
        .unwrap();
    let bodies: Vec<(String, serde_json::Value)> = server
        .requests()
        .iter()
        .map(|r| {
            (
                path_and_token(&r.target).0,
                serde_json::from_str(&r.text()).unwrap(),
            )
        })
        .collect();
    assert_eq!(bodies[0].1, serde_json::json!({"transaction_id": "42"}));
    assert_eq!(
        bodies[1].1["pay_time_range"],
        serde_json::json!({"begin_time": 1, "end_time": 2})
    );
    assert_eq!(bodies[2].1, serde_json::json!({"appid": "wx1"}));
    assert_eq!(
        bodies[4].1,
        serde_json::json!({"transaction_id": "42", "received_time": 1_700_000_000})
    );
    assert_eq!(
        bodies[5].1,
        serde_json::json!({"path": "pages/order/detail"})
    );
    let e = c
        .upload_combined_shipping_info(
            "T",
            &wechat::shipping::CombinedShippingInfo {
                order_key: OrderKey::transaction("42"),
                sub_orders: vec![],
                upload_time: "2022-12-15T13:29:35+08:00".into(),
                payer: Payer {
                    openid: "o1".into(),
                },
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Other { errcode: 47001, .. }), "{e:?}");
}
