//! Transport helpers shared by the JSON and the XML APIs.

use std::error::Error as _;

/// Largest response body we read from WeChat; real answers are a few hundred bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

pub(crate) enum BodyError {
    /// Timeouts, connection failures, 5xx: worth retrying.
    Transport(String),
    /// A non-2xx, non-5xx status: retrying will not help.
    Status(u16),
    TooLarge,
}

/// Describes a reqwest error without the URL: query strings carry the app secret.
pub(crate) fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else if err.is_body() || err.is_decode() {
        "error reading the response body"
    } else if err.is_request() {
        "error sending the request"
    } else {
        "HTTP error"
    };
    // The source chain (io / hyper errors) names no URL; the top-level Display would.
    match err.source() {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

/// Checks the status and reads at most `MAX_BODY_BYTES` of the body.
pub(crate) async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let status = resp.status();
    if status.is_server_error() {
        return Err(BodyError::Transport(format!("HTTP {}", status.as_u16())));
    }
    if !status.is_success() {
        return Err(BodyError::Status(status.as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
