//! The `/v3` refund paths as WeChat answers them: 申请退款 (`POST /v3/refund/domestic/refunds`),
//! 查询单笔退款, 发起异常退款, and the refund's end (success, abnormal, closed) with its
//! notify.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::state::Sandbox;
use crate::v3::V3Refund;
use crate::v3::api::{
    authenticate, error, param_error, request_serial, rfc3339_ms, signed, str_field,
};
use crate::v3::crypto;
use crate::v3::notify::{self, Job};
use crate::{clock, faults, ids};

/// A refund as 申请退款 and 查询单笔退款 answer it (`GET /v3/refund/domestic/refunds/
/// {out_refund_no}`, e.g. <https://pay.wechatpay.cn/doc/v3/partner/4012760530>: `status`
/// SUCCESS, CLOSED, PROCESSING, ABNORMAL; `success_time` once SUCCESS; the money usually
/// arrives within minutes, so a refund is PROCESSING first).
fn refund_json(r: &V3Refund) -> Value {
    let mut out = json!({
        "refund_id": r.refund_id, "out_refund_no": r.out_refund_no,
        "transaction_id": r.transaction_id, "out_trade_no": r.out_trade_no,
        "channel": "ORIGINAL", "user_received_account": r.received_account(),
        "create_time": rfc3339_ms(r.created_at_ms),
        "status": r.status,
        "funds_account": "AVAILABLE",
        "amount": { "total": r.total, "refund": r.refund, "payer_total": r.total,
                    "payer_refund": r.refund, "settlement_total": r.total,
                    "settlement_refund": r.refund, "discount_refund": 0, "currency": "CNY" },
    });
    if let Some(t) = &r.success_time {
        out["success_time"] = json!(t);
    }
    out
}

/// The decrypted resource of a refund notify (退款结果通知,
/// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>): `mchid`, the four ids,
/// `refund_status` (not `status`), `success_time` once SUCCESS, `user_received_account`, and
/// `amount` {total, refund, payer_total, payer_refund}.
fn refund_notice(r: &V3Refund) -> Value {
    let mut out = json!({
        "mchid": r.mchid, "out_trade_no": r.out_trade_no, "transaction_id": r.transaction_id,
        "out_refund_no": r.out_refund_no, "refund_id": r.refund_id,
        "refund_status": r.status, "user_received_account": r.received_account(),
        "amount": { "total": r.total, "refund": r.refund, "payer_total": r.total,
                    "payer_refund": r.refund },
    });
    if let Some(t) = &r.success_time {
        out["success_time"] = json!(t);
    }
    out
}

pub(super) async fn refund(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let faults = faults::of_request(&req);
    if faults.refund_refused {
        return error(&sandbox.v3, 401, "SIGN_ERROR", "签名错误");
    }
    let mut answer = create_refund(&sandbox, mchid, &body, &faults);
    if faults.refund_answer_lost && answer.status().is_success() {
        // Recorded (and settled later), but the merchant only hears SYSTEM_ERROR.
        answer = error(&sandbox.v3, 500, "SYSTEM_ERROR", "系统超时");
    }
    if faults.refund_reply_delay_ms > 0 {
        // Recorded, then the answer is lost (a crash, a timeout): the merchant must ask again
        // with the same out_refund_no.
        tokio::time::sleep(Duration::from_millis(faults.refund_reply_delay_ms)).await;
    }
    answer
}

/// 申请退款: validates, records (or finds) the refund and schedules its settlement.
fn create_refund(
    sandbox: &web::Data<Sandbox>,
    mchid: String,
    body: &[u8],
    faults: &crate::faults::Faults,
) -> HttpResponse {
    let v3 = &sandbox.v3;
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return param_error(v3, "输入源“/body”映射到值失败");
    };
    let (Some(out_trade_no), Some(out_refund_no)) = (
        str_field(&request, "out_trade_no"),
        str_field(&request, "out_refund_no"),
    ) else {
        return param_error(v3, "out_trade_no 与 out_refund_no 为必填");
    };
    if out_refund_no.len() > 64
        || !out_refund_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
    {
        return param_error(v3, "out_refund_no 格式错误");
    }
    if str_field(&request, "reason").is_some_and(|r| r.chars().count() > 80) {
        return param_error(v3, "reason 长度超过80");
    }
    let notify_url = str_field(&request, "notify_url");
    if notify_url.is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://"))) {
        return param_error(v3, "notify_url 格式错误");
    }
    let amount = |name: &str| {
        request
            .pointer(&format!("/amount/{name}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let (refund_fen, total) = (amount("refund"), amount("total"));
    if refund_fen <= 0 || total <= 0 {
        return param_error(v3, "amount.refund 与 amount.total 须为正整数(分)");
    }
    let mut state = v3.state();
    if let Some(existing) = state.refunds.get_mut(out_refund_no) {
        // The merchant's key: the same request answers the same refund.
        if existing.out_trade_no != out_trade_no
            || existing.refund != refund_fen
            || existing.total != total
        {
            drop(state);
            return error(v3, 400, "INVALID_REQUEST", "退款单号已用于其他退款");
        }
        existing.requests += 1;
        let answer = refund_json(existing);
        drop(state);
        return signed(v3, StatusCode::OK, answer.to_string());
    }
    let Some(order) = state.orders.get(out_trade_no).cloned() else {
        drop(state);
        return error(v3, 404, "RESOURCE_NOT_EXISTS", "订单不存在");
    };
    if order.mchid != mchid {
        drop(state);
        return error(v3, 404, "RESOURCE_NOT_EXISTS", "订单不存在");
    }
    if !matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND") {
        drop(state);
        return error(v3, 400, "INVALID_REQUEST", "订单未支付，不能发起退款");
    }
    if total != order.total {
        drop(state);
        return param_error(v3, "amount.total 须等于订单金额");
    }
    let held: i64 = state
        .refunds
        .values()
        .filter(|r| r.out_trade_no == out_trade_no && r.holds_money())
        .map(|r| r.refund)
        .sum();
    if held + refund_fen > order.total {
        drop(state);
        return error(v3, 400, "INVALID_REQUEST", "申请退款金额超过订单可退金额");
    }
    if faults.refund_not_enough || state.faults.refund_not_enough {
        drop(state);
        return error(v3, 403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起");
    }
    let record = V3Refund {
        refund_id: ids::refund_id(),
        out_refund_no: out_refund_no.to_owned(),
        out_trade_no: out_trade_no.to_owned(),
        transaction_id: order.transaction_id.clone().unwrap_or_default(),
        mchid,
        refund: refund_fen,
        total,
        reason: str_field(&request, "reason").map(str::to_owned),
        created_at_ms: clock::unix_ms(),
        notify_url: notify_url.map(str::to_owned),
        status: "PROCESSING".into(),
        success_time: None,
        requests: 1,
        notify_state: "none".into(),
        notify_attempts: 0,
        received_account: None,
        reroute: None,
        faults: faults.clone(),
    };
    let answer = refund_json(&record);
    state
        .refunds
        .insert(out_refund_no.to_owned(), record.clone());
    if let Some(o) = state.orders.get_mut(out_trade_no) {
        o.trade_state = "REFUND".into();
    }
    drop(state);
    let sandbox = Arc::clone(&sandbox.clone().into_inner());
    let runtime = sandbox.runtime.clone();
    runtime.spawn(async move {
        let shutdown = sandbox.shutdown.clone();
        tokio::select! {
            _ = settle(&sandbox, &record.out_refund_no) => {}
            _ = shutdown.wait() => {}
        }
    });
    signed(v3, StatusCode::OK, answer.to_string())
}

/// After `refund_after_ms` × the time scale: SUCCESS (ABNORMAL with `refund_change`, CLOSED
/// with `refund_close`), then the refund notify to its `notify_url` (none with
/// `drop_notify`, from the creating request or set now). With `refund_hold` the refund stays
/// PROCESSING until the console concludes it.
async fn settle(sandbox: &Arc<Sandbox>, out_refund_no: &str) {
    let v3 = &sandbox.v3;
    let delay = Duration::from_secs_f64(v3.refund_after_ms as f64 * v3.time_scale / 1000.0);
    tokio::time::sleep(delay).await;
    let status = {
        let state = v3.state();
        let Some(r) = state.refunds.get(out_refund_no) else {
            return;
        };
        if r.faults.refund_hold {
            tracing::info!(out_refund_no, "sandbox v3 refund held PROCESSING");
            return;
        }
        if r.faults.refund_change {
            V3RefundEnd::Abnormal
        } else if r.faults.refund_close {
            V3RefundEnd::Closed
        } else {
            V3RefundEnd::Success
        }
    };
    // Already concluded from the console meanwhile: nothing more to do.
    let _ = conclude_refund(sandbox, out_refund_no, status);
}

/// How a v3 refund ends (`status`, as [`refund_json`] cites): SUCCESS, ABNORMAL (the payer's
/// account cannot take it; the money is held by WeChat until re-routed, then SUCCESS) or
/// CLOSED. Each is followed by
/// its REFUND.* notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V3RefundEnd {
    Success,
    Abnormal,
    Closed,
}

impl V3RefundEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Abnormal => "ABNORMAL",
            Self::Closed => "CLOSED",
        }
    }

    fn event(self) -> (&'static str, &'static str) {
        match self {
            Self::Success => ("REFUND.SUCCESS", "退款成功"),
            Self::Abnormal => ("REFUND.ABNORMAL", "退款异常"),
            Self::Closed => ("REFUND.CLOSED", "退款关闭"),
        }
    }
}

/// WeChat finishes a PROCESSING v3 refund as `end` and sends its notify. One change under the
/// lock, so the settle timer and the console cannot both conclude it. `Ok(true)` when a notify
/// was sent (a notify_url, and no drop_notify fault).
pub fn conclude_refund(
    sandbox: &Arc<Sandbox>,
    out_refund_no: &str,
    end: V3RefundEnd,
) -> Result<bool, crate::refund::ConcludeError> {
    let drop_now = sandbox.current_faults().drop_notify;
    let notice = {
        let mut state = sandbox.v3.state();
        let Some(r) = state.refunds.get_mut(out_refund_no) else {
            return Err(crate::refund::ConcludeError::Unknown(
                out_refund_no.to_owned(),
            ));
        };
        // PROCESSING ends any way; ABNORMAL (money held) is later re-routed (SUCCESS) or
        // closed.
        let may = match r.status.as_str() {
            "PROCESSING" => true,
            "ABNORMAL" => end != V3RefundEnd::Abnormal,
            _ => false,
        };
        if !may {
            return Err(crate::refund::ConcludeError::NotProcessing(
                out_refund_no.to_owned(),
                r.status.clone(),
            ));
        }
        r.status = end.as_str().into();
        if end == V3RefundEnd::Success {
            r.success_time = Some(rfc3339_ms(clock::unix_ms()));
            // A re-routed abnormal refund lands where 发起异常退款 sent it.
            if let Some((_, account)) = &r.reroute {
                r.received_account = Some(account.clone());
            }
        }
        match &r.notify_url {
            None => None,
            Some(_) if r.faults.drop_notify || drop_now => {
                r.notify_state = "dropped".into();
                None
            }
            Some(url) => {
                r.notify_state = "pending".into();
                Some((url.clone(), r.clone()))
            }
        }
    };
    tracing::info!(
        out_refund_no,
        status = end.as_str(),
        "sandbox v3 refund settled"
    );
    let Some((url, r)) = notice else {
        return Ok(false);
    };
    let (event_type, summary) = end.event();
    notify::spawn(
        Arc::clone(sandbox),
        Job {
            key: r.out_trade_no.clone(),
            refund: Some(r.out_refund_no.clone()),
            url,
            event_type,
            summary,
            original_type: "refund",
            plaintext: refund_notice(&r),
            delay: Duration::ZERO,
            bad_signature: false,
        },
    );
    Ok(true)
}

pub(super) async fn refund_query(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let v3 = &sandbox.v3;
    let found = v3
        .state()
        .refunds
        .get(path.as_str())
        .filter(|r| r.mchid == mchid)
        .map(refund_json);
    match found {
        Some(r) => signed(v3, StatusCode::OK, r.to_string()),
        None => error(v3, 404, "RESOURCE_NOT_EXISTS", "退款单不存在"),
    }
}

/// A bank's name in `user_received_account` ("退回银行卡: {银行名称}{卡类型}{卡尾号}", 退款结果通知
/// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>), by 发起异常退款's `bank_type`.
fn bank_name(bank_type: &str) -> Option<&'static str> {
    Some(match bank_type {
        "CMB_DEBIT" => "招商银行",
        "COMM_DEBIT" => "交通银行",
        "ABC_DEBIT" => "农业银行",
        "CCB_DEBIT" => "建设银行",
        "ICBC_DEBIT" => "工商银行",
        "BOC_DEBIT" => "中国银行",
        "PAB_DEBIT" => "平安银行",
        "SPDB_DEBIT" => "浦发银行",
        "CITIC_DEBIT" => "中信银行",
        "CEB_DEBIT" => "光大银行",
        "CMBC_DEBIT" => "民生银行",
        "CIB_DEBIT" => "兴业银行",
        "GDB_DEBIT" => "广发银行",
        "PSBC_DEBIT" => "邮储银行",
        "NBCB_DEBIT" => "宁波银行",
        _ => return None,
    })
}

/// 发起异常退款 (`POST /v3/refund/domestic/refunds/{refund_id}/apply-abnormal-refund`,
/// <https://pay.weixin.qq.com/docs/merchant/apis/refund/refunds/create-abnormal-refund.html>):
/// for a refund whose status is ABNORMAL, `out_refund_no` and `type` USER_BANK_CARD (with
/// `bank_type` of one of the 15 banks' debit cards, and `bank_account` / `real_name` sealed for
/// the key the request's `Wechatpay-Serial` names) or MERCHANT_BANK_CARD. Answers the refund,
/// processed anew (PROCESSING); after `refund_after_ms` × the time scale it is SUCCESS with
/// `user_received_account` the payer's card ("{银行名称}借记卡{卡尾号}") or, re-routed to the
/// merchant, 商户结算银行账户 ("退还商户: 商户基本账户、商户结算银行账户", 退款结果通知
/// <https://pay.weixin.qq.com/doc/v3/merchant/4012082022>), and its REFUND.SUCCESS notify
/// follows.
pub(super) async fn apply_abnormal_refund(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mchid = match authenticate(&sandbox, &req, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let v3 = &sandbox.v3;
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return param_error(v3, "输入源“/body”映射到值失败");
    };
    let (Some(out_refund_no), Some(kind)) = (
        str_field(&request, "out_refund_no"),
        str_field(&request, "type"),
    ) else {
        return param_error(v3, "out_refund_no 与 type 为必填");
    };
    let account = match kind {
        "MERCHANT_BANK_CARD" => "商户结算银行账户".to_owned(),
        "USER_BANK_CARD" => {
            let serial = request_serial().unwrap_or_default();
            let open = |name: &str| {
                str_field(&request, name).and_then(|v| crypto::open_sensitive(&serial, v))
            };
            let Some(bank) = str_field(&request, "bank_type").and_then(bank_name) else {
                return param_error(v3, "bank_type 不支持: 仅支持15家银行的借记卡");
            };
            let (Some(card), Some(_name)) = (open("bank_account"), open("real_name")) else {
                return param_error(
                    v3,
                    "bank_account 与 real_name 须用 Wechatpay-Serial 所指的微信支付公钥加密",
                );
            };
            if card.len() < 4 || !card.bytes().all(|b| b.is_ascii_digit()) {
                return param_error(v3, "bank_account 格式错误");
            }
            format!("{bank}借记卡{}", &card[card.len() - 4..])
        }
        _ => return param_error(v3, "type 须为 USER_BANK_CARD 或 MERCHANT_BANK_CARD"),
    };
    let answer = {
        let mut state = v3.state();
        let Some(r) = state
            .refunds
            .values_mut()
            .find(|r| r.refund_id == path.as_str() && r.mchid == mchid)
        else {
            drop(state);
            return error(v3, 404, "RESOURCE_NOT_EXISTS", "退款单不存在");
        };
        if r.out_refund_no != out_refund_no {
            drop(state);
            return param_error(v3, "out_refund_no 与 refund_id 不匹配");
        }
        if r.status != "ABNORMAL" {
            drop(state);
            return error(
                v3,
                400,
                "INVALID_REQUEST",
                "退款单状态不是退款异常，不能发起异常退款",
            );
        }
        r.status = "PROCESSING".into();
        r.reroute = Some((kind.to_owned(), account));
        refund_json(r)
    };
    let sandbox = Arc::clone(&sandbox.clone().into_inner());
    let no = out_refund_no.to_owned();
    let runtime = sandbox.runtime.clone();
    runtime.spawn(async move {
        let shutdown = sandbox.shutdown.clone();
        let delay = Duration::from_secs_f64(
            sandbox.v3.refund_after_ms as f64 * sandbox.v3.time_scale / 1000.0,
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                // Re-routed money settles (the faults of the first request made it abnormal;
                // they do not apply again).
                let _ = conclude_refund(&sandbox, &no, V3RefundEnd::Success);
            }
            _ = shutdown.wait() => {}
        }
    });
    signed(v3, StatusCode::OK, answer.to_string())
}
