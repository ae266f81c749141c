//! `GET/POST /wechat/push/{appid}`: WeChat's message push, in front of a fake pay-service that
//! records what reaches it. Verification refuses with nothing forwarded; owned events reach
//! pay-service with their dedup key; unknown events are acknowledged and not forwarded.

use wechat::push::{Mode, PushApp, signature};

use crate::helpers::{Options, Stack, start};

const SAFE_APP: &str = "wxsafe0000000001";
const PLAIN_APP: &str = "wxplain000000001";
const TOKEN: &str = "pushToken123";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn apps() -> String {
    format!("{SAFE_APP}|{TOKEN}|{KEY}|safe;{PLAIN_APP}|{TOKEN}||plaintext")
}

async fn stack(fail_limit: Option<u32>) -> Stack {
    start(Options {
        push_apps: Some(apps()),
        notify_fail_limit: fail_limit,
        ..Default::default()
    })
    .await
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn settlement(transaction_id: &str, at: i64) -> serde_json::Value {
    serde_json::json!({
        "ToUserName": "gh_1", "FromUserName": "o_1", "CreateTime": at, "MsgType": "event",
        "Event": "trade_manage_order_settlement", "transaction_id": transaction_id,
        "merchant_trade_no": "N1", "confirm_receive_time": at,
    })
}

/// The query of a plaintext push signed with `token` at `ts`.
fn plain_query(token: &str, ts: i64) -> String {
    let nonce = "12345";
    format!(
        "signature={}&timestamp={ts}&nonce={nonce}",
        signature(&[token, &ts.to_string(), nonce])
    )
}

/// A safe-mode push of `message` (JSON or XML body) encrypted for `appid`.
fn safe_push(appid: &str, message: &str, ts: i64, xml: bool) -> (String, String) {
    let app = PushApp::new(appid, TOKEN, KEY, Mode::Safe).unwrap();
    let encrypt = app.encrypt(message.as_bytes(), [9; 16]).unwrap();
    let nonce = "777";
    let ts = ts.to_string();
    let query = format!(
        "signature={}&timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={}",
        signature(&[TOKEN, &ts, nonce]),
        signature(&[TOKEN, &ts, nonce, &encrypt])
    );
    let body = if xml {
        format!(
            "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        )
    } else {
        serde_json::json!({"ToUserName": "gh_1", "Encrypt": encrypt}).to_string()
    };
    (query, body)
}

async fn post(s: &Stack, appid: &str, query: &str, body: String) -> (u16, String) {
    let res = s
        .http
        .post(s.url(&format!("/wechat/push/{appid}?{query}")))
        .body(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn pushes(s: &Stack) -> Vec<String> {
    s.calls
        .of("handle_message_push")
        .into_iter()
        .map(|c| c.detail)
        .collect()
}

#[tokio::test]
async fn the_get_check_answers_echostr_only_when_signed() {
    let s = stack(None).await;
    let ts = now();
    let good = format!("{}&echostr=e123", plain_query(TOKEN, ts));
    let res = s
        .http
        .get(s.url(&format!("/wechat/push/{SAFE_APP}?{good}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.text().await.unwrap(), "e123");
    let bad = format!("{}&echostr=e123", plain_query("wrongtoken", ts));
    let res = s
        .http
        .get(s.url(&format!("/wechat/push/{SAFE_APP}?{bad}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_ne!(res.text().await.unwrap(), "e123");
    let res = s
        .http
        .get(s.url(&format!("/wechat/push/wxunknown?{good}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    s.stop().await;
}

#[tokio::test]
async fn plaintext_and_safe_json_and_xml_reach_pay_service() {
    let s = stack(None).await;
    let ts = now();
    // Plaintext JSON.
    let msg = settlement("4200000001", ts).to_string();
    assert_eq!(
        post(&s, PLAIN_APP, &plain_query(TOKEN, ts), msg).await,
        (200, "success".into())
    );
    // Plaintext XML.
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o_1]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[trade_manage_remind_shipping]]></Event><transaction_id><![CDATA[4200000002]]></transaction_id></xml>"
    );
    assert_eq!(
        post(&s, PLAIN_APP, &plain_query(TOKEN, ts), xml).await,
        (200, "success".into())
    );
    // Safe mode, JSON envelope around a JSON message, and XML around XML.
    let (q, body) = safe_push(
        SAFE_APP,
        &settlement("4200000003", ts).to_string(),
        ts,
        false,
    );
    assert_eq!(post(&s, SAFE_APP, &q, body).await, (200, "success".into()));
    let inner = format!(
        "<xml><FromUserName><![CDATA[o_2]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[trade_manage_order_settlement]]></Event><transaction_id>4200000004</transaction_id><settlement_time>{ts}</settlement_time></xml>"
    );
    let (q, body) = safe_push(SAFE_APP, &inner, ts, true);
    assert_eq!(post(&s, SAFE_APP, &q, body).await, (200, "success".into()));

    let got = pushes(&s);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got[0].starts_with(&format!(
            "{PLAIN_APP}|trade_manage_order_settlement|o_1|{ts}|trade_manage_order_settlement|"
        )),
        "{}",
        got[0]
    );
    assert!(
        got[1].starts_with(&format!("{PLAIN_APP}|trade_manage_remind_shipping|")),
        "{}",
        got[1]
    );
    assert!(
        got[2].starts_with(&format!("{SAFE_APP}|trade_manage_order_settlement|")),
        "{}",
        got[2]
    );
    assert!(
        got[3].contains(r#""settlement_time":""#),
        "XML values arrive as strings: {}",
        got[3]
    );
    s.stop().await;
}

#[tokio::test]
async fn a_retried_push_carries_the_same_dedup_key() {
    let s = stack(None).await;
    let ts = now();
    let msg = settlement("4200000009", ts).to_string();
    // WeChat's retry: the same message, encrypted and signed afresh.
    let (q1, b1) = safe_push(SAFE_APP, &msg, ts, false);
    let (q2, b2) = safe_push(SAFE_APP, &msg, ts + 5, false);
    assert_eq!(post(&s, SAFE_APP, &q1, b1).await.0, 200);
    assert_eq!(post(&s, SAFE_APP, &q2, b2).await.0, 200);
    let keys: Vec<String> = pushes(&s)
        .iter()
        .map(|d| d.split('|').skip(2).take(4).collect::<Vec<_>>().join("|"))
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "pay-service deduplicates by this key");
    s.stop().await;
}

#[tokio::test]
async fn forged_replayed_or_foreign_pushes_are_refused_and_forward_nothing() {
    let s = stack(None).await;
    let ts = now();
    let msg = settlement("4200000005", ts).to_string();
    // Wrong signature (another token).
    assert_eq!(
        post(&s, PLAIN_APP, &plain_query("wrongtoken", ts), msg.clone())
            .await
            .0,
        401
    );
    // Replay: a genuine signature ten minutes old.
    assert_eq!(
        post(&s, PLAIN_APP, &plain_query(TOKEN, ts - 600), msg.clone())
            .await
            .0,
        401
    );
    // Encrypted for another app (the appid inside differs), correctly signed.
    let (q, body) = safe_push("wxsomeoneelse0001", &msg, ts, false);
    assert_eq!(post(&s, SAFE_APP, &q, body).await.0, 401);
    // Bad padding: a signed Encrypt that is not WeChat's frame.
    // 48 zero bytes in base64: whole blocks whose decryption ends in no valid padding.
    let garbage = "A".repeat(64);
    let q = format!(
        "timestamp={ts}&nonce=1&encrypt_type=aes&msg_signature={}",
        signature(&[TOKEN, &ts.to_string(), "1", &garbage])
    );
    let body = serde_json::json!({"ToUserName": "gh_1", "Encrypt": garbage}).to_string();
    assert_eq!(post(&s, SAFE_APP, &q, body).await.0, 401);
    // Safe mode without Encrypt (a plaintext body).
    let (q, _) = safe_push(SAFE_APP, &msg, ts, false);
    assert_eq!(post(&s, SAFE_APP, &q, msg.clone()).await.0, 401);
    // Unknown app.
    assert_eq!(
        post(&s, "wxunknown", &plain_query(TOKEN, ts), msg).await.0,
        404
    );
    assert!(
        pushes(&s).is_empty(),
        "nothing reached pay-service: {:?}",
        pushes(&s)
    );
    s.stop().await;
}

#[tokio::test]
async fn unknown_events_are_acknowledged_and_not_forwarded() {
    let s = stack(None).await;
    let ts = now();
    let msg = serde_json::json!({
        "ToUserName": "gh_1", "FromUserName": "o_1", "CreateTime": ts, "MsgType": "event",
        "Event": "some_future_event"
    })
    .to_string();
    assert_eq!(
        post(&s, PLAIN_APP, &plain_query(TOKEN, ts), msg).await,
        (200, "success".into())
    );
    assert!(pushes(&s).is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_sender_of_forged_pushes_is_throttled_but_wechat_is_not() {
    let s = stack(Some(2)).await;
    let ts = now();
    let msg = settlement("4200000006", ts).to_string();
    for _ in 0..2 {
        assert_eq!(
            post(&s, PLAIN_APP, &plain_query("wrongtoken", ts), msg.clone())
                .await
                .0,
            401
        );
    }
    // Over the limit: refused with 429.
    assert_eq!(
        post(&s, PLAIN_APP, &plain_query("wrongtoken", ts), msg.clone())
            .await
            .0,
        429
    );
    // A genuine push from the same address still gets through.
    assert_eq!(
        post(&s, PLAIN_APP, &plain_query(TOKEN, ts), msg).await,
        (200, "success".into())
    );
    assert_eq!(pushes(&s).len(), 1);
    s.stop().await;
}
