//! The service's Prometheus metrics (exported by service-kit's recorder when configured).

use std::time::Duration;

use service_kit::ErrorReason;

/// Logins by outcome: `ok` or the lower-case reason, e.g. `invalid_code`.
pub const LOGINS: &str = "wxmp_auth_logins_total";
/// WeChat API calls by API and outcome.
pub const WECHAT_REQUESTS: &str = "wxmp_wechat_requests_total";
/// code2Session latency, successful or not.
pub const WECHAT_LATENCY: &str = "wxmp_wechat_request_duration_seconds";

fn label(reason: ErrorReason) -> String {
    reason.as_str_name().to_ascii_lowercase()
}

pub fn login(result: Result<(), ErrorReason>) {
    let result = result.map_or_else(label, |()| "ok".to_owned());
    metrics::counter!(LOGINS, "result" => result).increment(1);
}

/// Records one code2Session call. The result label is WeChat's outcome, finer than the
/// reason the caller gets (e.g. `code_used` vs `invalid_code`).
pub fn code2session(outcome: Result<(), &wechat::ApiError>, took: Duration) {
    use wechat::ApiError as W;
    let result = match outcome {
        Ok(()) => "ok",
        Err(W::InvalidCode) => "invalid_code",
        Err(W::CodeUsed) => "code_used",
        Err(W::RateLimited) => "rate_limited",
        Err(W::HighRiskUser) => "high_risk_user",
        Err(W::InvalidAppSecret) => "invalid_appsecret",
        Err(W::InvalidAppId) => "invalid_appid",
        Err(W::SystemBusy) => "system_busy",
        Err(W::Other { .. }) => "other_errcode",
        Err(W::Transport(_)) => "transport",
        Err(W::BadResponse(_)) => "bad_response",
    };
    metrics::counter!(WECHAT_REQUESTS, "api" => "code2session", "result" => result).increment(1);
    metrics::histogram!(WECHAT_LATENCY, "api" => "code2session").record(took.as_secs_f64());
}

/// access_token fetches from WeChat by API (`stable`, `legacy`, `stable_force`) and result.
pub const ACCESS_TOKEN_FETCHES: &str = "wxmp_access_token_fetches_total";
/// Tokens stored by reason: `missing` (none or expired), `ahead` (refresh window), `forced`.
pub const ACCESS_TOKEN_REFRESHES: &str = "wxmp_access_token_refreshes_total";
/// Callers that waited for another replica's refresh (the lock was taken).
pub const ACCESS_TOKEN_LOCK_WAITS: &str = "wxmp_access_token_lock_waits_total";
/// Forced-refresh requests by outcome: `refreshed`, `already_newer`, `rate_limited`.
pub const ACCESS_TOKEN_FORCED: &str = "wxmp_access_token_forced_refreshes_total";
/// GetAccessToken answers by source: `cache`, `waited`.
pub const ACCESS_TOKEN_SERVED: &str = "wxmp_access_token_served_total";

pub fn access_token_fetch(api: &'static str, outcome: Result<(), &wechat::ApiError>) {
    let result = match outcome {
        Ok(()) => "ok".to_owned(),
        Err(e) => e
            .errcode()
            .map_or_else(|| "transport".to_owned(), |c| c.to_string()),
    };
    metrics::counter!(ACCESS_TOKEN_FETCHES, "api" => api, "result" => result).increment(1);
}

pub fn access_token_refresh(reason: &'static str) {
    metrics::counter!(ACCESS_TOKEN_REFRESHES, "reason" => reason).increment(1);
}

pub fn access_token_lock_wait() {
    metrics::counter!(ACCESS_TOKEN_LOCK_WAITS).increment(1);
}

pub fn access_token_forced(outcome: &'static str) {
    metrics::counter!(ACCESS_TOKEN_FORCED, "outcome" => outcome).increment(1);
}

pub fn access_token_served(source: &'static str) {
    metrics::counter!(ACCESS_TOKEN_SERVED, "source" => source).increment(1);
}
