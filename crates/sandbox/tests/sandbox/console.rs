//! The console's page and buttons over HTTP: every button changes what WeChat's own paths and
//! the developer endpoints then answer, a post without the page's token (or from another
//! origin) changes nothing, and every value on the page is escaped.

use std::time::Duration;

use crate::helpers::*;
use aes::cipher::{BlockDecryptMut, KeyInit, block_padding::Pkcs7};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use sandbox::{DEV_APP_ID, DEV_APP_SECRET, DEV_MCH_ID, DEV_PAY_KEY, SandboxHandle};
use serde_json::json;

/// A paid v2 order of a logged-in user, its notify accepted by `receiver`: (out_trade_no,
/// openid).
async fn paid_order(sb: &SandboxHandle, no: &str, fee: u64, receiver: &Receiver) -> String {
    let (openid, _, _) = login(sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let prepay = place_order(sb, no, fee, &openid, &receiver.url).await;
    let (status, view) = post_json(
        sb,
        "/sandbox/pay",
        request_payment(&prepay, DEV_PAY_KEY, false, json!({})),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    wait_notify_state(sb, no, "accepted").await;
    openid
}

/// The mutual-TLS client of `/secapi/pay/refund` (the merchant certificate of the dev PKI).
fn secapi(sb: &SandboxHandle) -> reqwest::Client {
    let pem = format!("{}\n{}", sb.pki.client_cert_pem, sb.pki.client_key_pem);
    let identity = reqwest::Identity::from_pem(pem.as_bytes()).unwrap();
    let roots = reqwest::Certificate::from_pem_bundle(sb.pki.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .identity(identity)
        .tls_certs_only(roots)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Applies for a refund of `fee` fen of order `no` (total `total`): the answer's fields.
async fn apply_refund(
    sb: &SandboxHandle,
    no: &str,
    out_refund_no: &str,
    total: u64,
    fee: u64,
    notify_url: &str,
) -> std::collections::BTreeMap<String, String> {
    let (total, fee) = (total.to_string(), fee.to_string());
    let xml = signed_xml(
        map(&[
            ("appid", DEV_APP_ID),
            ("mch_id", DEV_MCH_ID),
            ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
            ("out_trade_no", no),
            ("out_refund_no", out_refund_no),
            ("total_fee", &total),
            ("refund_fee", &fee),
            ("notify_url", notify_url),
        ]),
        DEV_PAY_KEY,
    );
    let res = secapi(sb)
        .post(format!("{}/secapi/pay/refund", sb.secapi_url))
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer = xml_fields(&res.text().await.unwrap());
    assert_eq!(answer["result_code"], "SUCCESS", "{answer:?}");
    answer
}

/// `/pay/refundquery` by out_refund_no: refund_status_0 (and the success time, if any).
async fn refund_status(sb: &SandboxHandle, out_refund_no: &str) -> (String, Option<String>) {
    let answer = pay_call(
        sb,
        "/pay/refundquery",
        signed_xml(
            map(&[
                ("appid", DEV_APP_ID),
                ("mch_id", DEV_MCH_ID),
                ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
                ("out_refund_no", out_refund_no),
            ]),
            DEV_PAY_KEY,
        ),
    )
    .await;
    assert_eq!(answer["result_code"], "SUCCESS", "{answer:?}");
    (
        answer["refund_status_0"].clone(),
        answer.get("refund_success_time_0").cloned(),
    )
}

/// req_info of a refund notify, decrypted as WeChat's document says (base64 → AES-256-ECB
/// with the lower-case hex md5 of the API key, PKCS#7), written here independently.
fn req_info(notify: &str) -> std::collections::BTreeMap<String, String> {
    let fields = xml_fields(notify);
    assert_eq!(fields["return_code"], "SUCCESS");
    assert!(
        !fields.contains_key("sign"),
        "refund notifies are not signed"
    );
    let key = hex::encode(Md5::digest(DEV_PAY_KEY.as_bytes()));
    let cipher = base64::engine::general_purpose::STANDARD
        .decode(&fields["req_info"])
        .unwrap();
    let plain = ecb::Decryptor::<aes::Aes256>::new_from_slice(key.as_bytes())
        .unwrap()
        .decrypt_padded_vec_mut::<Pkcs7>(&cipher)
        .unwrap();
    let root = String::from_utf8(plain).unwrap();
    xml_fields(&root.replace("<root>", "<xml>").replace("</root>", "</xml>"))
}

#[tokio::test]
async fn page_shows_every_section_and_escapes_what_it_shows() {
    let sb = start().await;
    let res = http().get(sb.url("/")).send().await.unwrap();
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = page(&sb).await;
    for section in [
        "Apps and merchant",
        "Users",
        "Orders",
        "Refunds",
        "Pay v3 keys",
        "Access tokens",
        "Sent subscribe messages",
    ] {
        assert!(html.contains(&format!("<h2>{section}</h2>")), "{section}");
    }
    assert!(!html.contains("<script"), "no script on the page");
    assert!(
        html.contains(r#"<b class="v3-mode">public-key</b>"#),
        "{html}"
    );
    assert!(!html.contains(DEV_PAY_KEY) && !html.contains(DEV_APP_SECRET));

    // A subscribe message whose data is markup: listed, and only as text.
    let (openid, session_key, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let (_, token) = post_json(
        &sb,
        "/cgi-bin/stable_token",
        json!({"grant_type": "client_credential", "appid": DEV_APP_ID, "secret": DEV_APP_SECRET}),
    )
    .await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    let (status, _) = post_json(
        &sb,
        "/sandbox/subscribe",
        json!({"openid": openid, "template_id": "tpl-<paid>"}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, sent) = post_json(
        &sb,
        &format!("/cgi-bin/message/subscribe/send?access_token={token}"),
        json!({
            "touser": openid, "template_id": "tpl-<paid>", "page": "pages/order?no=1&x=\"y\"",
            "data": {"thing1": {"value": "<img src=x onerror=alert(1)>"}, "amount2": {"value": "18.00"}}
        }),
    )
    .await;
    assert_eq!(sent["errcode"], 0, "{sent}");
    let html = page(&sb).await;
    assert!(html.contains(&openid));
    assert!(!html.contains(&session_key), "never the session_key");
    assert!(!html.contains(&token), "never a whole access_token");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains("<img"));
    assert!(html.contains("tpl-&lt;paid&gt;"));
    assert!(html.contains("pages/order?no=1&amp;x=&quot;y&quot;"));
    assert!(html.contains("<code>amount2</code>: 18.00"));
    assert!(html.contains(&format!(r#"class="msgid">{}<"#, sent["msgid"])));
}

#[tokio::test]
async fn a_post_without_the_page_token_or_from_another_origin_changes_nothing() {
    let sb = start().await;
    let receiver = Receiver::start(vec![ok()]).await;
    let (openid, _, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let prepay = place_order(&sb, "CSRF0001", 100, &openid, &receiver.url).await;
    let token = csrf(&sb).await;
    let fields = |csrf: &str| {
        vec![
            ("prepay_id", prepay.clone()),
            ("outcome", "success".to_owned()),
            ("csrf", csrf.to_owned()),
        ]
    };
    let attempts = [
        // No token: what a form on another site posts.
        (fields(""), None, None),
        (fields("0123456789abcdef0123456789abcdef"), None, None),
        // The right token from another origin, or a cross-site fetch.
        (fields(&token), Some("http://evil.example"), None),
        (fields(&token), None, Some("cross-site")),
        (fields(&token), Some("null"), None),
    ];
    for (form, origin, site) in attempts {
        let mut req = no_redirect().post(sb.url("/console/pay")).form(&form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403, "{origin:?} {site:?}");
        let (_, order) = get_json(&sb, "/sandbox/orders/CSRF0001").await;
        assert_eq!(order["trade_state"], "NOTPAY", "nothing changed");
    }
    // The same post from the console itself pays.
    let msg = click(
        &sb,
        "/console/pay",
        &[("prepay_id", &prepay), ("outcome", "success")],
    )
    .await;
    assert_eq!(msg, format!("paid {prepay}"));
    wait_notify_state(&sb, "CSRF0001", "accepted").await;
}

#[tokio::test]
async fn pay_fail_resend_and_drop_buttons_act_like_wechat() {
    let sb = start().await;
    // The merchant refuses every notify of the second order (so it stays pending).
    let receiver = Receiver::start(vec![ok()]).await;
    let refusing = Receiver::start(vec![Answer {
        status: 500,
        body: FAIL_XML,
        delay_ms: 0,
    }])
    .await;
    let (openid, _, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let failing = place_order(&sb, "CONS0001", 100, &openid, &receiver.url).await;
    let msg = click(
        &sb,
        "/console/pay",
        &[("prepay_id", &failing), ("outcome", "fail")],
    )
    .await;
    assert_eq!(msg, format!("payment failed for {failing}"));
    let (_, order) = get_json(&sb, "/sandbox/orders/CONS0001").await;
    assert_eq!(
        (
            order["trade_state"].as_str(),
            order["notify_state"].as_str()
        ),
        (Some("PAYERROR"), Some("none"))
    );
    // A failed payment can still be paid (the user tries again).
    click(
        &sb,
        "/console/pay",
        &[("prepay_id", &failing), ("outcome", "success")],
    )
    .await;
    wait_notify_state(&sb, "CONS0001", "accepted").await;
    assert_eq!(receiver.wait_for(1).await.len(), 1);
    // Paying it again is refused and changes nothing.
    let msg = click(
        &sb,
        "/console/pay",
        &[("prepay_id", &failing), ("outcome", "success")],
    )
    .await;
    assert!(msg.starts_with("refused: "), "{msg}");

    // Resend: the accepted notify arrives a second time, signed like the first.
    let msg = click(
        &sb,
        "/console/notify/resend",
        &[("mch_id", DEV_MCH_ID), ("out_trade_no", "CONS0001")],
    )
    .await;
    assert_eq!(msg, "notify of CONS0001 sent again");
    let bodies = receiver.wait_for(2).await;
    let second = xml_fields(&bodies[1]);
    assert_eq!(second["out_trade_no"], "CONS0001");
    assert!(signature_ok(&second, DEV_PAY_KEY, false));
    wait_notify_state(&sb, "CONS0001", "accepted").await;

    // Drop: a notify the merchant keeps refusing stops being retried.
    let prepay = place_order(&sb, "CONS0002", 100, &openid, &refusing.url).await;
    click(
        &sb,
        "/console/pay",
        &[("prepay_id", &prepay), ("outcome", "success")],
    )
    .await;
    refusing.wait_for(1).await;
    let msg = click(
        &sb,
        "/console/notify/drop",
        &[("mch_id", DEV_MCH_ID), ("out_trade_no", "CONS0002")],
    )
    .await;
    assert_eq!(msg, "notify of CONS0002 dropped");
    let (_, order) = get_json(&sb, "/sandbox/orders/CONS0002").await;
    assert_eq!(order["notify_state"], "dropped");
    let msg = click(
        &sb,
        "/console/notify/drop",
        &[("mch_id", DEV_MCH_ID), ("out_trade_no", "CONS0002")],
    )
    .await;
    assert_eq!(msg, "order CONS0002 has no pending notify");
    // Unknown orders are named, not a panic.
    let msg = click(
        &sb,
        "/console/notify/resend",
        &[("mch_id", DEV_MCH_ID), ("out_trade_no", "NOSUCH")],
    )
    .await;
    assert_eq!(msg, "unknown order NOSUCH");
}

#[tokio::test]
async fn expire_token_button_makes_the_stable_token_answer_42001() {
    let sb = start().await;
    let stable = || {
        post_json(
            &sb,
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": DEV_APP_ID, "secret": DEV_APP_SECRET}),
        )
    };
    let (_, first) = stable().await;
    let token = first["access_token"].as_str().unwrap().to_owned();
    let (_, ips) = get_json(&sb, &format!("/cgi-bin/getcallbackip?access_token={token}")).await;
    assert!(ips["ip_list"].is_array(), "{ips}");
    let msg = click(&sb, "/console/token/expire", &[("appid", DEV_APP_ID)]).await;
    assert_eq!(msg, format!("access_token of {DEV_APP_ID} expired"));
    let (_, expired) = get_json(&sb, &format!("/cgi-bin/getcallbackip?access_token={token}")).await;
    assert_eq!(expired["errcode"], 42001, "{expired}");
    let (_, next) = stable().await;
    assert_ne!(next["access_token"], first["access_token"]);
}

#[tokio::test]
async fn settle_fail_and_close_finish_held_refunds_and_notify_the_merchant() {
    const REFUND_DELAY_MS: u64 = 20;
    let sb = sandbox::spawn(sandbox::Config {
        refund_delay_ms: REFUND_DELAY_MS,
        ..config()
    })
    .await
    .unwrap();
    let payments = Receiver::start(vec![ok()]).await;
    let refunds = Receiver::start(vec![ok()]).await;
    paid_order(&sb, "RFND0001", 300, &payments).await;
    // Refunds stay PROCESSING, as WeChat's do for minutes, until the console finishes them.
    let (status, _) = post_json(&sb, "/sandbox/faults", json!({"refund_hold": true})).await;
    assert_eq!(status, 200);
    for no in ["RF-OK", "RF-CHANGE", "RF-CLOSE"] {
        let answer = apply_refund(&sb, "RFND0001", no, 300, 100, &refunds.url).await;
        assert_eq!(answer["out_refund_no"], no);
    }
    post_json(&sb, "/sandbox/faults", json!({})).await;
    // Held: a refund accepted after them without the hold settles (and is notified), so
    // their own delay has passed too, and they are still PROCESSING with no notify.
    let witness = Receiver::start(vec![ok()]).await;
    paid_order(&sb, "RFND0002", 300, &payments).await;
    apply_refund(&sb, "RFND0002", "RF-WITNESS", 300, 100, &witness.url).await;
    witness.wait_for(1).await;
    assert_eq!(refund_status(&sb, "RF-WITNESS").await.0, "SUCCESS");
    for no in ["RF-OK", "RF-CHANGE", "RF-CLOSE"] {
        assert_eq!(refund_status(&sb, no).await.0, "PROCESSING", "{no}");
    }
    assert!(refunds.received().is_empty(), "no refund notify yet");
    let html = page(&sb).await;
    assert!(
        html.contains(r#"data-refund="RF-OK">PROCESSING<"#),
        "{html}"
    );
    assert!(html.contains(r#"data-action="settle" data-key="RF-OK""#));

    let msg = click(
        &sb,
        "/console/refund/finish",
        &[
            ("mch_id", DEV_MCH_ID),
            ("out_refund_no", "RF-OK"),
            ("outcome", "success"),
        ],
    )
    .await;
    assert_eq!(msg, "refund RF-OK is SUCCESS, notify sent");
    let notify = req_info(&refunds.wait_for(1).await[0]);
    assert_eq!(notify["out_refund_no"], "RF-OK");
    assert_eq!(notify["out_trade_no"], "RFND0001");
    assert_eq!(notify["refund_status"], "SUCCESS");
    assert_eq!(notify["refund_fee"], "100");
    assert!(!notify["success_time"].is_empty());
    let (status, success_time) = refund_status(&sb, "RF-OK").await;
    assert_eq!(status, "SUCCESS");
    assert!(success_time.is_some());
    assert_eq!(refund_status(&sb, "RF-CHANGE").await.0, "PROCESSING");

    for (no, outcome, want) in [
        ("RF-CHANGE", "change", "CHANGE"),
        ("RF-CLOSE", "close", "REFUNDCLOSE"),
    ] {
        let msg = click(
            &sb,
            "/console/refund/finish",
            &[
                ("mch_id", DEV_MCH_ID),
                ("out_refund_no", no),
                ("outcome", outcome),
            ],
        )
        .await;
        assert_eq!(msg, format!("refund {no} is {want}, notify sent"));
        let (status, success_time) = refund_status(&sb, no).await;
        assert_eq!((status.as_str(), success_time), (want, None));
    }
    let notifies: Vec<_> = refunds
        .wait_for(3)
        .await
        .iter()
        .map(|n| req_info(n))
        .collect();
    let status_of = |no: &str| {
        notifies
            .iter()
            .find(|n| n["out_refund_no"] == no)
            .map(|n| n["refund_status"].clone())
    };
    assert_eq!(status_of("RF-CHANGE").as_deref(), Some("CHANGE"));
    assert_eq!(status_of("RF-CLOSE").as_deref(), Some("REFUNDCLOSE"));
    let (_, listed) = get_json(&sb, "/sandbox/refunds/RF-CLOSE").await;
    assert_eq!(listed["refund_status"], "REFUNDCLOSE");

    // A finished refund cannot be finished again: refused, no change, no new notify.
    let msg = click(
        &sb,
        "/console/refund/finish",
        &[
            ("mch_id", DEV_MCH_ID),
            ("out_refund_no", "RF-OK"),
            ("outcome", "change"),
        ],
    )
    .await;
    assert_eq!(msg, "refused: refund RF-OK is SUCCESS, not PROCESSING");
    assert_eq!(refund_status(&sb, "RF-OK").await.0, "SUCCESS");
    let msg = click(
        &sb,
        "/console/refund/finish",
        &[
            ("mch_id", DEV_MCH_ID),
            ("out_refund_no", "NOSUCH"),
            ("outcome", "success"),
        ],
    )
    .await;
    assert_eq!(msg, "refused: unknown refund NOSUCH");
    // Every notify was answered: the page shows them accepted and no button is left.
    for no in ["RF-OK", "RF-CHANGE", "RF-CLOSE"] {
        let mut accepted = false;
        for _ in 0..500 {
            let (_, r) = get_json(&sb, &format!("/sandbox/refunds/{no}")).await;
            if r["notify_state"] == "accepted" {
                accepted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(accepted, "{no}");
    }
    assert_eq!(refunds.received().len(), 3);
    // CHANGE is not final (issue 23: the money waits at WeChat until re-routed): its refund
    // alone keeps buttons, settle and close, not fail; settled, no button is left.
    let html = page(&sb).await;
    assert!(
        html.contains(r#"data-action="settle" data-key="RF-CHANGE""#),
        "{html}"
    );
    assert!(!html.contains(r#"data-action="fail" data-key="RF-CHANGE""#));
    assert!(!html.contains(r#"data-action="settle" data-key="RF-OK""#));
    let msg = click(
        &sb,
        "/console/refund/finish",
        &[
            ("mch_id", DEV_MCH_ID),
            ("out_refund_no", "RF-CHANGE"),
            ("outcome", "success"),
        ],
    )
    .await;
    assert_eq!(msg, "refund RF-CHANGE is SUCCESS, notify sent");
    let html = page(&sb).await;
    assert!(!html.contains(r#"data-action="settle""#), "{html}");
}

#[tokio::test]
async fn without_the_hold_refunds_still_settle_by_themselves() {
    let sb = start().await;
    let payments = Receiver::start(vec![ok()]).await;
    let refunds = Receiver::start(vec![ok()]).await;
    paid_order(&sb, "RFND0002", 200, &payments).await;
    apply_refund(&sb, "RFND0002", "RF-AUTO", 200, 200, &refunds.url).await;
    let notify = req_info(&refunds.wait_for(1).await[0]);
    assert_eq!(notify["refund_status"], "SUCCESS");
    // The console then has nothing to finish.
    let msg = click(
        &sb,
        "/console/refund/finish",
        &[
            ("mch_id", DEV_MCH_ID),
            ("out_refund_no", "RF-AUTO"),
            ("outcome", "close"),
        ],
    )
    .await;
    assert_eq!(msg, "refused: refund RF-AUTO is SUCCESS, not PROCESSING");
}

/// In migration mode the page says so, with the public-key share, and counts which key signed
/// what (as `GET /sandbox/v3/keys` does).
#[tokio::test]
async fn migration_mode_shows_the_share_and_the_key_counts() {
    let mut config = config();
    config.pay_v3.mode = sandbox::v3::Mode::Migration;
    config.pay_v3.public_key_share = 20;
    let sb = sandbox::spawn(config).await.unwrap();
    let html = page(&sb).await;
    assert!(
        html.contains("migration: 20 % of callbacks signed with the public key"),
        "{html}"
    );
    assert!(html.contains("by the public key"), "{html}");
    assert!(html.contains(sandbox::v3::dev::PLATFORM_A_SERIAL), "{html}");
    assert!(html.contains("certificate downloads: 0"), "{html}");
    let keys: serde_json::Value = http()
        .get(sb.url("/sandbox/v3/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["public_key_share"], 20);
}
