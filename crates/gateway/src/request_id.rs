//! One id per request: the caller's `X-Request-Id` when it is sane, else a fresh uuid. It is
//! echoed in the response, recorded in the request's tracing span and sent to every upstream.

use std::{
    convert::Infallible,
    future::{Ready, ready},
};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload};

pub use service_kit::grpc::REQUEST_ID as HEADER;

const MAX_LEN: usize = 64;

/// The id of the request being handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The incoming id when it is 1..=64 characters of `[A-Za-z0-9_-]` (so it is safe in logs
    /// and metadata), otherwise a new uuid v4.
    pub fn from_incoming(incoming: Option<&[u8]>) -> Self {
        match incoming {
            Some(id) if is_sane(id) => Self(String::from_utf8_lossy(id).into_owned()),
            _ => Self::generate(),
        }
    }

    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// Handlers take the id the middleware stored; outside the middleware (unit tests) a new one.
impl FromRequest for RequestId {
    type Error = Infallible;
    type Future = Ready<Result<Self, Infallible>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(Self::generate)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_others_replaced() {
        assert_eq!(
            RequestId::from_incoming(Some(b"abc-DEF_123")).as_str(),
            "abc-DEF_123"
        );
        for bad in [
            &b""[..],
            b"has space",
            b"new\nline",
            b"../etc",
            "\u{4f60}".as_bytes(),
            &[b'a'; 65],
        ] {
            let id = RequestId::from_incoming(Some(bad));
            assert_ne!(id.as_str().as_bytes(), bad);
            assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
        }
        assert_eq!(
            RequestId::from_incoming(Some(&[b'a'; 64])).as_str().len(),
            64
        );
    }
}
