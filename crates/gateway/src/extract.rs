//! Request input: strict JSON bodies, the session token, the client's address.

use std::net::IpAddr;

use actix_web::{
    FromRequest, HttpRequest,
    dev::Payload,
    error::{JsonPayloadError, PayloadError},
    http::header,
    web,
};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::{
    config::TrustedProxies,
    envelope::{ApiError, Code},
};

/// A JSON body: `Content-Type: application/json` (parameters such as charset allowed, nothing
/// else), at most the configured size, and the expected shape. Unknown fields are ignored.
/// Every failure is an [`ApiError`] (203, or 204 for size).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if !is_json(req) {
            return Box::pin(async {
                Err(ApiError::invalid("content type must be application/json").into())
            });
        }
        // The body limit and the error mapping come from the app's JsonConfig.
        let json = web::Json::<T>::from_request(req, payload);
        Box::pin(async move { json.await.map(|j| Self(j.into_inner())) })
    }
}

pub(crate) fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// `JsonConfig::error_handler`: body errors in the envelope.
pub fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match &error {
        JsonPayloadError::OverflowKnownLength { .. }
        | JsonPayloadError::Overflow { .. }
        | JsonPayloadError::Payload(PayloadError::Overflow) => ApiError::from(Code::BodyTooLarge),
        JsonPayloadError::ContentType => ApiError::invalid("content type must be application/json"),
        // serde's message could echo a value (say a token sent as the wrong type): say less.
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::invalid("invalid request: a field has the wrong type")
        }
        JsonPayloadError::Deserialize(_) => ApiError::invalid("malformed JSON"),
        _ => ApiError::invalid("invalid request body"),
    };
    api.into()
}

/// The token of an authenticated call: `Authorization: Bearer <t>` first, else the `token`
/// field of the body (what the seed's clients send). Empty counts as missing.
pub fn token(req: &HttpRequest, body_token: Option<&str>) -> Result<String, ApiError> {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty());
    from_header
        .or(body_token.map(str::trim).filter(|t| !t.is_empty()))
        .map(str::to_owned)
        .ok_or_else(|| ApiError::missing("token"))
}

/// The client's address (for the rate limits and WeChat's `spbill_create_ip`).
///
/// Without a trusted peer it is the socket peer. When the peer is a trusted proxy, the
/// `X-Forwarded-For` chain (every such header, in order, comma-separated) is walked from the
/// right: each trusted hop is a proxy of ours that appended the address it saw, so the first
/// untrusted hop is the client (CDN → load balancer → gateway gives the user's address).
/// Anything left of it was written by the client and may be forged, so it is never read. A
/// hop that is not an address stops the walk at the last trusted address; a chain of trusted
/// hops only answers its left-most one.
pub fn client_ip(req: &HttpRequest, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip().to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`1.2.3.4:5`,
/// `[2001:db8::1]:5`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// Validates an id that goes into a path or an upstream lookup: 1..=`max` of `[0-9A-Za-z_-]`.
pub fn checked_id<'a>(value: &'a str, what: &str, max: usize) -> Result<&'a str, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid(format!("invalid {what}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn bearer_header_wins_over_the_body() {
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer  abc "))
            .to_http_request();
        assert_eq!(token(&req, Some("body")).unwrap(), "abc");
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Basic abc"))
            .to_http_request();
        assert_eq!(token(&req, Some("body")).unwrap(), "body");
        let req = TestRequest::default().to_http_request();
        assert_eq!(
            token(&req, Some("  ")).unwrap_err().code,
            Code::MissingParameter
        );
        assert_eq!(token(&req, None).unwrap_err().code, Code::MissingParameter);
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let req = |peer: &str, xff: &str| {
            TestRequest::default()
                .peer_addr(peer.parse().unwrap())
                .insert_header(("x-forwarded-for", xff))
                .to_http_request()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_ip(&req("10.1.1.1:5", "6.6.6.6, 1.2.3.4"), &trusted),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            client_ip(&req("8.8.8.8:5", "1.2.3.4"), &trusted),
            Some(ip("8.8.8.8"))
        );
        assert_eq!(
            client_ip(&req("10.1.1.1:5", "garbage"), &trusted),
            Some(ip("10.1.1.1"))
        );
        assert_eq!(
            client_ip(&req("10.1.1.1:5", "1.2.3.4"), &TrustedProxies::default()),
            Some(ip("10.1.1.1"))
        );
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        // The CDN (198.18.0.0/15 here) and the load balancer (10.0.0.0/8) are ours.
        let trusted: TrustedProxies = "10.0.0.0/8, 198.18.0.0/15, fd00::/8".parse().unwrap();
        let req = |peer: &str, xffs: &[&str]| {
            let mut r = TestRequest::default().peer_addr(peer.parse().unwrap());
            for xff in xffs {
                r = r.append_header(("x-forwarded-for", *xff));
            }
            r.to_http_request()
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // user → CDN → LB → gateway: the LB appended the CDN, the CDN appended the user.
        assert_eq!(
            client_ip(&req("10.0.0.5:1", &["203.0.113.7, 198.18.0.9"]), &trusted),
            ip("203.0.113.7")
        );
        // The user's own spoofed entries on the left are never read.
        assert_eq!(
            client_ip(
                &req(
                    "10.0.0.5:1",
                    &["1.1.1.1, 10.9.9.9, 203.0.113.7, 198.18.0.9"]
                ),
                &trusted
            ),
            ip("203.0.113.7")
        );
        // A spoofed trusted-looking entry left of the real client does not help either.
        assert_eq!(
            client_ip(&req("10.0.0.5:1", &["10.0.0.1, 203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
        // Several headers are one list, in order.
        assert_eq!(
            client_ip(
                &req("10.0.0.5:1", &["6.6.6.6, 203.0.113.7", "198.18.0.9"]),
                &trusted
            ),
            ip("203.0.113.7")
        );
        // Ports and IPv6 hops; v4-mapped hops count as v4.
        assert_eq!(
            client_ip(
                &req("[fd00::2]:1", &["[2001:db8::7]:443, ::ffff:198.18.0.9"]),
                &trusted
            ),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(&req("10.0.0.5:1", &["203.0.113.7:5555"]), &trusted),
            ip("203.0.113.7")
        );
        // Garbage stops the walk at the last trusted address seen.
        assert_eq!(
            client_ip(
                &req("10.0.0.5:1", &["203.0.113.7, bogus, 198.18.0.9"]),
                &trusted
            ),
            ip("198.18.0.9")
        );
        // Only proxies of ours: the left-most one.
        assert_eq!(
            client_ip(&req("10.0.0.5:1", &["10.1.1.1, 198.18.0.9"]), &trusted),
            ip("10.1.1.1")
        );
        // No header: the trusted peer itself.
        assert_eq!(client_ip(&req("10.0.0.5:1", &[]), &trusted), ip("10.0.0.5"));
        // An untrusted peer's header is ignored whatever it says.
        assert_eq!(
            client_ip(&req("203.0.113.50:1", &["198.18.0.9"]), &trusted),
            ip("203.0.113.50")
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(checked_id("ORD_1-a", "order_no", 32).is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "%2e%2e",
            &"a".repeat(33),
            "\u{4f60}",
        ] {
            assert!(checked_id(bad, "order_no", 32).is_err(), "{bad:?}");
        }
    }
}
