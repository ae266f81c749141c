//! Fault injection: set at start (env), at run time (`/sandbox/faults`) or per request (header).

use actix_web::{
    Error, HttpMessage, HttpResponse,
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::StatusCode,
    middleware::Next,
    web,
};
use serde::{Deserialize, Serialize};

use crate::{
    dev_error::{DevError, parse_body},
    state::Sandbox,
};

/// The header that carries a [`Faults`] JSON for one request.
pub const FAULT_HEADER: &str = "x-sandbox-faults";

/// Every fault knob. The JSON shape is the one documented in the crate docs.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Delay before answering a WeChat path.
    #[arg(
        long = "fault-latency-ms",
        env = "SANDBOX_FAULT_LATENCY_MS",
        value_name = "SANDBOX_FAULT_LATENCY_MS",
        default_value_t = 0
    )]
    pub latency_ms: u64,
    /// Answer WeChat paths with this HTTP status (500..=599) and no WeChat body.
    #[arg(
        long = "fault-http-status",
        env = "SANDBOX_FAULT_HTTP_STATUS",
        value_name = "SANDBOX_FAULT_HTTP_STATUS"
    )]
    pub http_status: Option<u16>,
    /// Pay calls answer result_code FAIL, err_code SYSTEMERROR (nothing changes).
    #[arg(long = "fault-pay-system-error", env = "SANDBOX_FAULT_PAY_SYSTEM_ERROR", value_name = "SANDBOX_FAULT_PAY_SYSTEM_ERROR", default_value_t = false, action = clap::ArgAction::Set)]
    pub pay_system_error: bool,
    /// jscode2session and the token calls answer errcode 45011.
    #[arg(long = "fault-quota-exceeded", env = "SANDBOX_FAULT_QUOTA_EXCEEDED", value_name = "SANDBOX_FAULT_QUOTA_EXCEEDED", default_value_t = false, action = clap::ArgAction::Set)]
    pub quota_exceeded: bool,
    /// A payment succeeds but no notify is ever sent.
    #[arg(long = "fault-drop-notify", env = "SANDBOX_FAULT_DROP_NOTIFY", value_name = "SANDBOX_FAULT_DROP_NOTIFY", default_value_t = false, action = clap::ArgAction::Set)]
    pub drop_notify: bool,
    /// Each notify attempt is sent this many times at once (0 and 1 mean once).
    #[arg(
        long = "fault-duplicate-notify",
        env = "SANDBOX_FAULT_DUPLICATE_NOTIFY",
        value_name = "SANDBOX_FAULT_DUPLICATE_NOTIFY",
        default_value_t = 0
    )]
    pub duplicate_notify: u32,
    /// Notifies carry total_fee + 1 (correctly signed).
    #[arg(long = "fault-notify-wrong-total-fee", env = "SANDBOX_FAULT_NOTIFY_WRONG_TOTAL_FEE", value_name = "SANDBOX_FAULT_NOTIFY_WRONG_TOTAL_FEE", default_value_t = false, action = clap::ArgAction::Set)]
    pub notify_wrong_total_fee: bool,
    /// Notifies carry a signature made with the wrong key.
    #[arg(long = "fault-notify-bad-signature", env = "SANDBOX_FAULT_NOTIFY_BAD_SIGNATURE", value_name = "SANDBOX_FAULT_NOTIFY_BAD_SIGNATURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub notify_bad_signature: bool,
    /// Refunds (v2 and v3) stay PROCESSING until the console settles, fails or closes them
    /// (as real WeChat refunds stay PROCESSING for minutes or days), instead of settling after
    /// SANDBOX_REFUND_DELAY_MS (v2) or SANDBOX_PAY_V3_REFUND_AFTER_MS (v3).
    #[arg(long = "fault-refund-hold", env = "SANDBOX_FAULT_REFUND_HOLD", value_name = "SANDBOX_FAULT_REFUND_HOLD", default_value_t = false, action = clap::ArgAction::Set)]
    pub refund_hold: bool,
    /// Run time only: refunds are accepted, then end CHANGE (v2) / ABNORMAL (v3): the money is
    /// held by WeChat until re-routed (`POST /sandbox/refunds/{no}/finish` or the console then
    /// settles or closes it).
    #[arg(skip)]
    pub refund_change: bool,
    /// Run time only: refunds are accepted, then closed without refunding (v2 REFUNDCLOSE,
    /// v3 CLOSED).
    #[arg(skip)]
    pub refund_close: bool,
    /// Run time only: refunds are refused with err_code NOTENOUGH (balance too low).
    #[arg(skip)]
    pub refund_not_enough: bool,
    /// Run time only: a refund is recorded, then its answer is held back this long (plays an
    /// answer lost to a crash or a timeout).
    #[arg(skip)]
    pub refund_reply_delay_ms: u64,
    /// Run time only: a refund is recorded (or found) as asked, then answered v2 SYSTEMERROR /
    /// v3 500 SYSTEM_ERROR instead of the refund: accepted, its answer lost. WeChat answers
    /// SYSTEMERROR (系统超时) on refunds and says to repeat the same out_refund_no
    /// (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_4>, error codes; v3: 500
    /// SYSTEM_ERROR "请用相同参数重新调用"), and merchants report such answers for refunds that
    /// went through (<https://developers.weixin.qq.com/community/develop/doc/0002a2ab414970c1d04a70ee956400>).
    #[arg(skip)]
    pub refund_answer_lost: bool,
    /// Run time only: a refund request is refused before WeChat looks at the refund: v2
    /// `return_code=FAIL` (unsigned, "签名错误", as for a request signed with a rotated key),
    /// v3 401 SIGN_ERROR. Nothing is recorded, and nothing said about a refund made earlier.
    #[arg(skip)]
    pub refund_refused: bool,
    /// Virtual payment: the `xpay_goods_deliver_notify` push waits this long before its first
    /// try (a late push: merchants report callbacks that arrive after they polled
    /// `query_order`). Read when the push is sent (global set, or the header of the payment).
    #[arg(
        long = "fault-xpay-push-late-ms",
        env = "SANDBOX_FAULT_XPAY_PUSH_LATE_MS",
        value_name = "SANDBOX_FAULT_XPAY_PUSH_LATE_MS",
        default_value_t = 0
    )]
    pub xpay_push_late_ms: u64,
    /// Virtual payment: the delivery push is sent this many times at once (0 and 1 mean
    /// once), each copy with WeChat's own retries (duplicated delivery on retries is a pain
    /// point merchants report).
    #[arg(
        long = "fault-xpay-push-duplicated",
        env = "SANDBOX_FAULT_XPAY_PUSH_DUPLICATED",
        value_name = "SANDBOX_FAULT_XPAY_PUSH_DUPLICATED",
        default_value_t = 0
    )]
    pub xpay_push_duplicated: u32,
    /// Virtual payment: the order is paid but its delivery push is never sent (the
    /// merchant's `query_order` must find it).
    #[arg(long = "fault-xpay-push-lost", env = "SANDBOX_FAULT_XPAY_PUSH_LOST", value_name = "SANDBOX_FAULT_XPAY_PUSH_LOST", default_value_t = false, action = clap::ArgAction::Set)]
    pub xpay_push_lost: bool,
    /// Run time only: the set applies to the next N WeChat-path requests, then clears itself.
    #[arg(skip)]
    pub times: Option<u32>,
    /// Run time only: only WeChat paths starting with this prefix are affected (and counted).
    #[arg(skip)]
    pub path_prefix: Option<String>,
}

/// Upper bound for `duplicate_notify`: enough for any race test, small enough to stay polite.
const MAX_DUPLICATES: u32 = 32;

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(status) = self.http_status
            && !(500..=599).contains(&status)
        {
            return Err(format!("http_status {status} is not a 5xx status"));
        }
        if self.duplicate_notify > MAX_DUPLICATES {
            return Err(format!("duplicate_notify is at most {MAX_DUPLICATES}"));
        }
        if self.latency_ms > 120_000 {
            return Err("latency_ms is at most 120000".into());
        }
        if self.xpay_push_duplicated > MAX_DUPLICATES {
            return Err(format!("xpay_push_duplicated is at most {MAX_DUPLICATES}"));
        }
        if self.xpay_push_late_ms > 120_000 {
            return Err("xpay_push_late_ms is at most 120000".into());
        }
        if self.refund_reply_delay_ms > 120_000 {
            return Err("refund_reply_delay_ms is at most 120000".into());
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// How many copies of each notify attempt to send.
    pub fn copies(&self) -> u32 {
        self.duplicate_notify.max(1)
    }

    /// How many copies of a virtual-payment delivery push to send (0 when it is lost).
    pub fn xpay_push_copies(&self) -> u32 {
        if self.xpay_push_lost {
            0
        } else {
            self.xpay_push_duplicated.max(1)
        }
    }

    fn applies_to(&self, path: &str) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p))
    }
}

/// Parses the per-request header, if any.
pub fn from_header(req: &actix_web::HttpRequest) -> Result<Option<Faults>, DevError> {
    let Some(value) = req.headers().get(FAULT_HEADER) else {
        return Ok(None);
    };
    let faults: Faults = value
        .to_str()
        .ok()
        .and_then(|v| serde_json::from_str(v).ok())
        .ok_or_else(|| {
            DevError::BadRequest(format!("{FAULT_HEADER} is not a faults JSON object"))
        })?;
    faults.validate().map_err(DevError::BadRequest)?;
    Ok(Some(faults))
}

impl Sandbox {
    /// The faults for one WeChat-path request: the header's, else the global set (consuming
    /// one of its `times`).
    pub(crate) fn faults_for_request(&self, path: &str, header: Option<Faults>) -> Faults {
        if let Some(faults) = header {
            return faults;
        }
        let mut global = self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if global.is_empty() || !global.applies_to(path) {
            return Faults::default();
        }
        let effective = global.clone();
        if let Some(times) = global.times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                *global = Faults::default();
            }
        }
        effective
    }

    /// The faults a notify attempt uses now (global ones are read at each attempt).
    pub fn current_faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Middleware for the WeChat paths: latency and HTTP 5xx here, the rest left in the request's
/// extensions (a [`Faults`]) for the handlers.
pub async fn wechat_paths(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let header = match from_header(req.request()) {
        Ok(h) => h,
        Err(e) => return Ok(req.error_response(e).map_into_right_body()),
    };
    let sandbox = req
        .app_data::<web::Data<Sandbox>>()
        .expect("sandbox state is registered")
        .clone();
    let faults = sandbox.faults_for_request(req.path(), header);
    if faults.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.latency_ms)).await;
    }
    if let Some(status) = faults.http_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        tracing::debug!(path = req.path(), %status, "injected HTTP fault");
        let response = HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(format!(
                "<html><body><h1>{status}</h1>sandbox fault</body></html>"
            ));
        return Ok(req.into_response(response).map_into_right_body());
    }
    req.extensions_mut().insert(faults);
    Ok(next.call(req).await?.map_into_left_body())
}

/// The faults the middleware chose for this request (none outside the WeChat paths).
pub fn of_request(req: &actix_web::HttpRequest) -> Faults {
    req.extensions()
        .get::<Faults>()
        .cloned()
        .unwrap_or_default()
}

/// `POST /sandbox/faults`: replaces the whole set (absent fields are off).
pub async fn set(sandbox: web::Data<Sandbox>, body: web::Bytes) -> Result<HttpResponse, DevError> {
    let faults: Faults = parse_body(&body)?;
    faults.validate().map_err(DevError::BadRequest)?;
    if faults.times == Some(0) {
        return Err(DevError::BadRequest("times must be at least 1".into()));
    }
    tracing::info!(?faults, "faults set");
    *sandbox
        .faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = faults.clone();
    Ok(HttpResponse::Ok().json(faults))
}

/// `GET /sandbox/faults`: the current set.
pub async fn get(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.current_faults())
}

/// `DELETE /sandbox/faults`: clears every fault.
pub async fn clear(sandbox: web::Data<Sandbox>) -> HttpResponse {
    *sandbox
        .faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Faults::default();
    HttpResponse::Ok().json(Faults::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_validation() {
        let f: Faults = serde_json::from_str(r#"{"http_status":503,"times":2}"#).unwrap();
        assert_eq!(f.http_status, Some(503));
        assert_eq!(f.times, Some(2));
        assert!(f.validate().is_ok());
        assert!(serde_json::from_str::<Faults>(r#"{"http_staus":503}"#).is_err());
        let bad = Faults {
            http_status: Some(404),
            ..Faults::default()
        };
        assert!(bad.validate().is_err());
        assert_eq!(Faults::default().copies(), 1);
    }

    #[test]
    fn xpay_push_faults_parse_validate_and_count_copies() {
        let f: Faults = serde_json::from_str(
            r#"{"xpay_push_late_ms":1500,"xpay_push_duplicated":3,"xpay_push_lost":false}"#,
        )
        .unwrap();
        assert!(f.validate().is_ok());
        assert_eq!(f.xpay_push_late_ms, 1500);
        assert_eq!(f.xpay_push_copies(), 3);
        assert_eq!(Faults::default().xpay_push_copies(), 1);
        let lost = Faults {
            xpay_push_lost: true,
            xpay_push_duplicated: 3,
            ..Faults::default()
        };
        assert_eq!(lost.xpay_push_copies(), 0);
        let too_many = Faults {
            xpay_push_duplicated: MAX_DUPLICATES + 1,
            ..Faults::default()
        };
        assert!(too_many.validate().is_err());
        let too_late = Faults {
            xpay_push_late_ms: 120_001,
            ..Faults::default()
        };
        assert!(too_late.validate().is_err());
    }
}
