//! `/sandbox/v3/*` developer endpoints, and paying a v3 order through `/sandbox/pay`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::dev_error::{DevError, parse_body};
use crate::notify::PayOutcome;
use crate::state::Sandbox;
use crate::v3::api::{rfc3339_ms, transaction_of};
use crate::v3::notify::{self, Job};
use crate::v3::{V3Faults, dev};
use crate::{clock, ids};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v3/orders/{out_trade_no}", web::get().to(order))
        .route("/v3/refunds", web::get().to(refunds))
        .route("/v3/refunds/{out_refund_no}", web::get().to(refund))
        .route("/v3/notifies", web::get().to(notifies))
        .route("/v3/rotate", web::post().to(rotate))
        .route("/v3/keys", web::get().to(keys))
        .service(
            web::resource("/v3/faults")
                .route(web::get().to(get_faults))
                .route(web::post().to(set_faults))
                .route(web::delete().to(clear_faults)),
        );
}

/// `/sandbox/pay` for a v3 prepay_id: `None` when the prepay_id is not a v3 one. Like the
/// phone's `wx.requestPayment` on v3 (小程序调起支付, https://pay.weixin.qq.com/wiki/doc/apiv3/
/// apis/chapter3_5_4.shtml): `signType` "RSA", `appId` the order's, and `paySign` =
/// base64(SHA256withRSA(`appId\ntimeStamp\nnonceStr\npackage\n`)) by the merchant's key,
/// verified with the merchant public key the sandbox holds; else the fail callback.
pub(crate) fn pay_v3_order(
    sandbox: &web::Data<Sandbox>,
    req: &crate::notify::PayRequest,
    prepay_id: &str,
) -> Option<Result<HttpResponse, DevError>> {
    let fail = |reason: &str| {
        Some(Err(DevError::RequestPaymentFail(format!(
            "requestPayment:fail {reason}"
        ))))
    };
    let out_trade_no = {
        let state = sandbox.v3.state();
        let out_trade_no = state.prepay_ids.get(prepay_id)?.clone();
        let order = state.orders.get(&out_trade_no)?;
        if req.sign_type != "RSA" {
            return fail("signType与统一下单的签名类型不一致");
        }
        if req.app_id != order.appid {
            return fail("appId与下单的appid不一致");
        }
        out_trade_no
    };
    let message = crate::v3::crypto::signed_lines(&[
        req.app_id.as_bytes(),
        req.time_stamp.as_bytes(),
        req.nonce_str.as_bytes(),
        req.package.as_bytes(),
    ]);
    if !crate::v3::crypto::verify(&sandbox.v3.merchant_public_key, &message, &req.pay_sign) {
        return fail("支付验证签名失败");
    }
    Some(
        settle_v3_payment(sandbox, &out_trade_no, req.outcome, req.faults.as_ref())
            .map(|order| HttpResponse::Ok().json(view(&order))),
    )
}

/// What the user does with the payment sheet of v3 order `out_trade_no`, once WeChat has
/// checked the phone's request (or the console plays both), under that request's `faults`
/// (else the global set): success → SUCCESS and the
/// TRANSACTION.SUCCESS notify; fail → PAYERROR; paying → USERPAYING; cancel → no change.
pub(crate) fn settle_v3_payment(
    sandbox: &web::Data<Sandbox>,
    out_trade_no: &str,
    outcome: PayOutcome,
    faults: Option<&crate::faults::Faults>,
) -> Result<crate::v3::V3Order, DevError> {
    let mut state = sandbox.v3.state();
    let order = state
        .orders
        .get_mut(out_trade_no)
        .ok_or_else(|| DevError::UnknownOrder(out_trade_no.to_owned()))?;
    match order.trade_state.as_str() {
        "SUCCESS" | "REFUND" => {
            return Err(DevError::Conflict(format!(
                "order {out_trade_no} is already paid"
            )));
        }
        "CLOSED" => {
            return Err(DevError::Conflict(format!(
                "order {out_trade_no} is closed"
            )));
        }
        _ => {}
    }
    // This payment's faults, else the global set (as v2 reads them).
    let faults = faults.cloned().unwrap_or_else(|| sandbox.current_faults());
    let mut deliver = false;
    match outcome {
        PayOutcome::Success => {
            order.trade_state = "SUCCESS".into();
            order.transaction_id = Some(ids::transaction_id());
            order.success_time = Some(rfc3339_ms(clock::unix_ms()));
            sandbox.shipping.paid(crate::shipping::Paid {
                appid: order.appid.clone(),
                mchid: order.mchid.clone(),
                out_trade_no: order.out_trade_no.clone(),
                transaction_id: order.transaction_id.clone().unwrap_or_default(),
                openid: order.openid.clone(),
                amount_fen: 0,
                paid_at_ms: clock::unix_ms(),
                paid: std::time::Instant::now(),
            });
            // drop_notify: paid, never notified.
            let drop = faults.drop_notify;
            order.notify_state = if drop { "dropped" } else { "pending" }.into();
            deliver = !drop;
        }
        PayOutcome::Fail => order.trade_state = "PAYERROR".into(),
        PayOutcome::Cancel => {}
        PayOutcome::Paying => order.trade_state = "USERPAYING".into(),
    }
    let order = order.clone();
    drop(state);
    tracing::info!(out_trade_no, ?outcome, "sandbox v3 payment");
    if deliver {
        spawn_forged_transaction_notify(sandbox, &order, &faults);
    }
    Ok(order)
}

/// Sends the TRANSACTION.SUCCESS notify of a paid v3 order (again), from the first attempt.
pub(crate) fn spawn_transaction_notify(sandbox: &web::Data<Sandbox>, order: &crate::v3::V3Order) {
    spawn_forged_transaction_notify(sandbox, order, &crate::faults::Faults::default());
}

/// [`spawn_transaction_notify`] under a payment's notify faults, as on v2:
/// `notify_wrong_total_fee` says `amount.total` + 1 (validly signed and encrypted: what a
/// merchant must still refuse), `notify_bad_signature` signs with a key WeChat never published.
fn spawn_forged_transaction_notify(
    sandbox: &web::Data<Sandbox>,
    order: &crate::v3::V3Order,
    faults: &crate::faults::Faults,
) {
    let mut plaintext = transaction_of(order);
    if faults.notify_wrong_total_fee {
        let wrong = order.total + 1;
        plaintext["amount"]["total"] = json!(wrong);
        plaintext["amount"]["payer_total"] = json!(wrong);
    }
    notify::spawn(
        Arc::clone(&sandbox.clone().into_inner()),
        Job {
            key: order.out_trade_no.clone(),
            refund: None,
            url: order.notify_url.clone(),
            event_type: "TRANSACTION.SUCCESS",
            summary: "支付成功",
            original_type: "transaction",
            plaintext,
            delay: Duration::ZERO,
            bad_signature: faults.notify_bad_signature,
        },
    );
}

fn view(o: &crate::v3::V3Order) -> serde_json::Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("request");
        obj.insert("api".into(), json!("v3"));
    }
    v
}

async fn order(
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
) -> Result<HttpResponse, DevError> {
    let order = sandbox.v3.state().orders.get(path.as_str()).cloned();
    order
        .map(|o| HttpResponse::Ok().json(view(&o)))
        .ok_or_else(|| DevError::UnknownOrder(path.into_inner()))
}

#[derive(Deserialize)]
struct NotifiesQuery {
    out_trade_no: Option<String>,
    out_refund_no: Option<String>,
}

async fn notifies(sandbox: web::Data<Sandbox>, query: web::Query<NotifiesQuery>) -> HttpResponse {
    let state = sandbox.v3.state();
    let records: Vec<_> = state
        .notifies
        .iter()
        .filter(|r| {
            query
                .out_trade_no
                .as_ref()
                .is_none_or(|o| *o == r.out_trade_no)
        })
        .filter(|r| {
            query
                .out_refund_no
                .as_ref()
                .is_none_or(|o| Some(o) == r.out_refund_no.as_ref())
        })
        .collect();
    HttpResponse::Ok().json(records)
}

#[derive(Deserialize)]
struct RefundsQuery {
    out_trade_no: Option<String>,
}

/// `GET /sandbox/v3/refunds[?out_trade_no=]`: every v3 refund, oldest first.
async fn refunds(sandbox: web::Data<Sandbox>, query: web::Query<RefundsQuery>) -> HttpResponse {
    let state = sandbox.v3.state();
    let mut found: Vec<_> = state
        .refunds
        .values()
        .filter(|r| {
            query
                .out_trade_no
                .as_ref()
                .is_none_or(|o| *o == r.out_trade_no)
        })
        .collect();
    found.sort_by_key(|r| r.created_at_ms);
    HttpResponse::Ok().json(found)
}

/// `GET /sandbox/v3/refunds/{out_refund_no}`.
async fn refund(
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
) -> Result<HttpResponse, DevError> {
    let found = sandbox.v3.state().refunds.get(path.as_str()).cloned();
    found
        .map(|r| HttpResponse::Ok().json(r))
        .ok_or_else(|| DevError::UnknownOrder(path.into_inner()))
}

/// Certificate rotation mid-run: WeChat starts signing with certificate B and lists both.
async fn rotate(sandbox: web::Data<Sandbox>) -> Result<HttpResponse, DevError> {
    if !sandbox.v3.mode.lists_certificates() {
        return Err(DevError::Conflict(
            "rotation needs SANDBOX_PAY_V3_MODE=certificate or migration".into(),
        ));
    }
    sandbox.v3.state().rotated = true;
    tracing::info!("v3 platform certificate rotated to B");
    Ok(HttpResponse::Ok().json(json!({ "serial_no": dev::PLATFORM_B_SERIAL })))
}

/// What a merchant knows of WeChat's keys: the mode, the serial signing now (in migration mode
/// the certificate's; the public key signs `public_key_share` % of callbacks and the answers to
/// requests naming it), the public key id, and which key signed how many messages.
async fn keys(sandbox: web::Data<Sandbox>) -> HttpResponse {
    let v3 = &sandbox.v3;
    let (rotated, key_use) = {
        let s = v3.state();
        (s.rotated, s.key_use.clone())
    };
    let (serial, _) = v3.signers.current(v3.mode, rotated);
    HttpResponse::Ok().json(json!({
        "mode": v3.mode,
        "signing_serial": serial,
        "public_key_id": dev::PUBLIC_KEY_ID,
        "public_key": dev::WECHATPAY_PUBLIC_KEY,
        "public_key_share": v3.public_key_share,
        "key_use": key_use,
    }))
}

async fn get_faults(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.v3.state().faults.clone())
}

async fn set_faults(
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> Result<HttpResponse, DevError> {
    let faults: V3Faults = parse_body(&body)?;
    tracing::info!(?faults, "v3 faults set");
    sandbox.v3.state().faults = faults.clone();
    Ok(HttpResponse::Ok().json(faults))
}

async fn clear_faults(sandbox: web::Data<Sandbox>) -> HttpResponse {
    sandbox.v3.state().faults = V3Faults::default();
    HttpResponse::Ok().json(V3Faults::default())
}
