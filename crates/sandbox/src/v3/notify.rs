//! v3 notifies: the resource encrypted with the APIv3 key, the envelope signed like an answer,
//! POSTed as JSON and retried on WeChat's schedule (the same 15s/15s/30s/3m/… as v2) until the
//! merchant answers HTTP 200 or 204 (支付通知: "接收成功：HTTP应答状态码需返回200或204，无需返回
//! 应答报文"; failure: 4XX/5XX with `{"code":"FAIL","message":"失败"}`,
//! <https://pay.weixin.qq.com/docs/partner/products/notification/decryption.html>).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock;
use crate::notify::RETRY_SCHEDULE_SECS;
use crate::state::Sandbox;
use crate::v3::api::{rfc3339_ms, signature_headers_forged};
use crate::v3::crypto;
use crate::v3::keys::Use;

const MAX_ANSWER_CHARS: usize = 4096;

/// One notify request (`GET /sandbox/v3/notifies`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct V3NotifyRecord {
    /// The order's out_trade_no.
    pub out_trade_no: String,
    /// The refund's out_refund_no (refund notifies only).
    #[serde(default)]
    pub out_refund_no: Option<String>,
    pub event_type: String,
    pub attempt: u32,
    pub at_ms: i64,
    pub url: String,
    /// The JSON body sent.
    pub request: String,
    /// The `Wechatpay-Serial` sent.
    pub serial: String,
    /// The `Wechatpay-Timestamp`, `-Nonce` and `-Signature` sent (with `serial`: what a
    /// replay of this request needs).
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub signature: String,
    pub status: Option<u16>,
    pub response: Option<String>,
    pub error: Option<String>,
    /// HTTP 200 or 204.
    pub accepted: bool,
    /// v3 faults applied (`bad_signature`, `unknown_serial`, `clock_skew`, `tamper_ciphertext`).
    pub faults: Vec<String>,
}

/// What to notify.
pub struct Job {
    /// out_trade_no the records are filed under.
    pub key: String,
    /// out_refund_no of a refund notify (its records carry it; its refund's notify state).
    pub refund: Option<String>,
    pub url: String,
    pub event_type: &'static str,
    pub summary: &'static str,
    /// `transaction` or `refund`: also the resource's `associated_data`.
    pub original_type: &'static str,
    pub plaintext: Value,
    /// Wait this long before the first attempt.
    pub delay: Duration,
    /// Sign with a key WeChat never published (the payment's `notify_bad_signature` fault).
    pub bad_signature: bool,
}

/// Delivers `job` in the background until accepted, given up, or shutdown.
pub fn spawn(sandbox: Arc<Sandbox>, job: Job) {
    let runtime = sandbox.runtime.clone();
    runtime.spawn(async move {
        let shutdown = sandbox.shutdown.clone();
        tokio::select! {
            _ = deliver(&sandbox, &job) => {}
            _ = shutdown.wait() => {}
        }
    });
}

fn envelope(sandbox: &Sandbox, job: &Job, applied: &mut Vec<String>) -> String {
    let v3 = &sandbox.v3;
    let nonce = crypto::resource_nonce();
    let mut ciphertext = crypto::seal(
        &v3.apiv3_key,
        &nonce,
        job.original_type.as_bytes(),
        job.plaintext.to_string().as_bytes(),
    );
    if v3.state().faults.tamper_ciphertext {
        applied.push("tamper_ciphertext".to_owned());
        // Flip one base64 character in the middle: still base64, no longer authentic.
        let mid = ciphertext.len() / 2;
        let flipped = if &ciphertext[mid..=mid] == "A" {
            "B"
        } else {
            "A"
        };
        ciphertext.replace_range(mid..=mid, flipped);
    }
    json!({
        "id": format!("EV-{}", hex::encode(rand::random::<[u8; 12]>())),
        "create_time": rfc3339_ms(clock::unix_ms()),
        "resource_type": "encrypt-resource",
        "event_type": job.event_type,
        "summary": job.summary,
        "resource": {
            "original_type": job.original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": job.original_type,
            "nonce": String::from_utf8_lossy(&nonce),
        }
    })
    .to_string()
}

fn set_order_notify(sandbox: &Sandbox, job: &Job, state: &str, attempted: bool) {
    if let Some(no) = &job.refund {
        if let Some(r) = sandbox.v3.state().refunds.get_mut(no) {
            r.notify_state = state.to_owned();
            if attempted {
                r.notify_attempts += 1;
            }
        }
        return;
    }
    if let Some(o) = sandbox.v3.state().orders.get_mut(&job.key) {
        // Dropped from the console: only a merchant's acceptance still counts.
        if o.notify_state == "dropped" && state != "accepted" {
            return;
        }
        o.notify_state = state.to_owned();
        if attempted {
            o.notify_attempts += 1;
        }
    }
}

/// The console's "drop notify" on a paid order: WeChat sends no further attempt.
fn dropped(sandbox: &Sandbox, job: &Job) -> bool {
    job.original_type == "transaction"
        && sandbox
            .v3
            .state()
            .orders
            .get(&job.key)
            .is_some_and(|o| o.notify_state == "dropped")
}

async fn deliver(sandbox: &Sandbox, job: &Job) {
    let scale = sandbox.v3.time_scale;
    if !job.delay.is_zero() {
        tokio::time::sleep(job.delay).await;
    }
    for attempt in 0..=RETRY_SCHEDULE_SECS.len() {
        if attempt > 0 {
            let delay = RETRY_SCHEDULE_SECS[attempt - 1] as f64 * scale;
            tokio::time::sleep(Duration::from_secs_f64(delay)).await;
        }
        if dropped(sandbox, job) {
            return;
        }
        let mut applied = Vec::new();
        let body = envelope(sandbox, job, &mut applied);
        let (headers, signed_faults) =
            signature_headers_forged(&sandbox.v3, body.as_bytes(), job.bad_signature, {
                // Migration mode: this callback is signed with the public key at the share.
                let share = u32::from(sandbox.v3.public_key_share);
                Use::Notify {
                    public_key_draw: rand::random_range(0..100u32) < share,
                }
            });
        applied.extend(signed_faults);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut record = V3NotifyRecord {
            out_trade_no: job.key.clone(),
            out_refund_no: job.refund.clone(),
            timestamp: header("Wechatpay-Timestamp"),
            nonce: header("Wechatpay-Nonce"),
            signature: header("Wechatpay-Signature"),
            event_type: job.event_type.to_owned(),
            attempt: u32::try_from(attempt + 1).unwrap_or(u32::MAX),
            at_ms: clock::unix_ms(),
            url: job.url.clone(),
            request: body.clone(),
            serial: header("Wechatpay-Serial"),
            status: None,
            response: None,
            error: None,
            accepted: false,
            faults: applied,
        };
        let mut request = sandbox
            .http
            .post(&job.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (k, v) in &headers {
            request = request.header(*k, v);
        }
        match request.body(body).send().await {
            Err(e) => record.error = Some(e.to_string()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                record.status = Some(status);
                record.accepted = status == 200 || status == 204;
                match resp.text().await {
                    Ok(text) => {
                        record.response = Some(text.chars().take(MAX_ANSWER_CHARS).collect());
                    }
                    Err(e) => record.error = Some(e.to_string()),
                }
            }
        }
        let accepted = record.accepted;
        tracing::debug!(
            out_trade_no = record.out_trade_no,
            attempt,
            status = record.status,
            accepted,
            "v3 notify sent"
        );
        sandbox.v3.state().notifies.push(record);
        if accepted {
            set_order_notify(sandbox, job, "accepted", true);
            return;
        }
        set_order_notify(sandbox, job, "pending", true);
    }
    set_order_notify(sandbox, job, "gave_up", false);
    tracing::warn!(out_trade_no = job.key, "v3 notify never accepted; gave up");
}
