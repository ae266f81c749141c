//! Authenticating what WeChat Pay sends us: responses and notifies carry `Wechatpay-Timestamp`,
//! `Wechatpay-Nonce`, `Wechatpay-Signature` and `Wechatpay-Serial`, the signature being
//! SHA256withRSA over `TIMESTAMP\nNONCE\nBODY\n` with the key that `Wechatpay-Serial` names
//! (签名验证, <https://wechatpay-api.gitbook.io/wechatpay-api-v3/qian-ming-zhi-nan-1/qian-ming-yan-zheng>).
//!
//! The serial is either the id of WeChat Pay's public key (`PUB_KEY_ID_…`, public-key mode, the
//! only mode for merchants since 2024) or the serial of a platform certificate (certificate mode:
//! downloaded from `/v3/certificates`, rotated by WeChat with an overlap during which both the old
//! and the new certificate sign). [`PlatformKeys`] holds both kinds, so a merchant moving from
//! certificates to the public key keeps verifying during the switch.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::pay::v3::keys::PublicKey;
use crate::pay::v3::sign::response_message;

/// How far `Wechatpay-Timestamp` may be from our clock: WeChat's SDKs reject replays older than
/// five minutes (and so do we, both ways).
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// Refresh downloaded certificates at least this often (WeChat's SDKs poll about twice a day).
pub const CERT_REFRESH_SECS: i64 = 12 * 3600;
/// Refresh early when every certificate we hold expires within this margin.
pub const CERT_EXPIRY_MARGIN_SECS: i64 = 24 * 3600;
/// An unknown serial triggers a download at most this often, so forged serials cannot make us
/// hammer `/v3/certificates`.
pub const DEFAULT_FORCED_REFRESH_SECS: i64 = 60;

/// The names of the four headers.
pub mod header {
    pub const TIMESTAMP: &str = "Wechatpay-Timestamp";
    pub const NONCE: &str = "Wechatpay-Nonce";
    pub const SIGNATURE: &str = "Wechatpay-Signature";
    pub const SERIAL: &str = "Wechatpay-Serial";
}

/// Why a response or notify was not accepted as WeChat's. Names the failed check, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("Wechatpay-Timestamp is not a unix time")]
    BadTimestamp,
    #[error("clock: Wechatpay-Timestamp is {skew_secs} s from ours (allowed ±300 s)")]
    Clock { skew_secs: i64 },
    #[error("serial unknown: no WeChat Pay key or certificate {0}")]
    UnknownSerial(String),
    #[error("signature: Wechatpay-Signature does not verify with key {0}")]
    Signature(String),
}

/// The four `Wechatpay-*` headers of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
    pub serial: String,
}

impl SignatureHeaders {
    /// Reads the headers through `get` (case-insensitive lookup is the caller's).
    pub fn from_lookup<'a>(
        get: impl Fn(&'static str) -> Option<&'a str>,
    ) -> Result<Self, VerifyError> {
        let one = |name| {
            get(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or(VerifyError::MissingHeader(name))
        };
        Ok(Self {
            timestamp: one(header::TIMESTAMP)?,
            nonce: one(header::NONCE)?,
            signature: one(header::SIGNATURE)?,
            serial: one(header::SERIAL)?,
        })
    }

    /// Reads them from a reqwest/http header map.
    pub fn from_header_map(map: &reqwest::header::HeaderMap) -> Result<Self, VerifyError> {
        Self::from_lookup(|name| map.get(name).and_then(|v| v.to_str().ok()))
    }
}

/// One downloaded platform certificate.
#[derive(Debug, Clone)]
pub struct PlatformCertificate {
    /// Upper-case hex serial, as in `Wechatpay-Serial`.
    pub serial_no: String,
    pub key: PublicKey,
    /// Unix seconds of `expire_time`.
    pub expires_at: i64,
}

#[derive(Debug, Default)]
struct CertState {
    certs: HashMap<String, PlatformCertificate>,
    fetched_at: Option<i64>,
    last_forced: Option<i64>,
}

/// The keys WeChat Pay signs with, as far as we know them. Shared between requests.
///
/// During WeChat's move of a merchant from platform certificates to the public key (about seven
/// days, the share of public-key-signed callbacks rising 0.1 % → 1 % → 5 % → 10 % → 20 % → 50 % →
/// 100 %), both kinds sign: each message is verified with the key its `Wechatpay-Serial` names.
/// Several public keys may be held by id, for WeChat's own public-key rotation.
#[derive(Debug)]
pub struct PlatformKeys {
    /// `(PUB_KEY_ID_…, key)`; the first is the one requests name (see [`Self::request_serial`]).
    public_keys: Vec<(String, PublicKey)>,
    certificate_mode: bool,
    forced_refresh_secs: i64,
    state: RwLock<CertState>,
}

impl PlatformKeys {
    /// Public-key mode: `id` is the `PUB_KEY_ID_…` WeChat shows with the key.
    pub fn public_key_mode(id: impl Into<String>, key: PublicKey) -> Self {
        Self::new(vec![(id.into(), key)], false)
    }

    /// Certificate mode: keys come from `/v3/certificates` (see
    /// [`V3Client::refresh_certificates`](crate::pay::v3::V3Client::refresh_certificates)).
    pub fn certificate_mode() -> Self {
        Self::new(Vec::new(), true)
    }

    /// Both: the public key and downloaded certificates (while WeChat switches a merchant).
    pub fn public_key_and_certificates(id: impl Into<String>, key: PublicKey) -> Self {
        Self::new(vec![(id.into(), key)], true)
    }

    /// Another public key WeChat may sign with (its own key rotation: the old and the new id are
    /// both trusted until the old one is retired). The first key stays the one requests name.
    pub fn with_public_key(mut self, id: impl Into<String>, key: PublicKey) -> Self {
        let id = id.into();
        self.public_keys.retain(|(held, _)| *held != id);
        self.public_keys.push((id, key));
        self
    }

    fn new(public_keys: Vec<(String, PublicKey)>, certificate_mode: bool) -> Self {
        Self {
            public_keys,
            certificate_mode,
            forced_refresh_secs: DEFAULT_FORCED_REFRESH_SECS,
            state: RwLock::default(),
        }
    }

    /// Changes how often an unknown serial may trigger a download (tests run on a fast clock).
    pub fn with_forced_refresh_secs(mut self, secs: i64) -> Self {
        self.forced_refresh_secs = secs;
        self
    }

    /// Whether certificates are downloaded at all.
    pub fn uses_certificates(&self) -> bool {
        self.certificate_mode
    }

    /// The ids of the public keys held, in the order given.
    pub fn public_key_ids(&self) -> Vec<String> {
        self.public_keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// What our requests send as `Wechatpay-Serial`: the key we want WeChat to answer with (and
    /// the key a request's encrypted fields are sealed for). The public key id when one is held:
    /// during the move to the public key WeChat signs an answer with the key the request named
    /// ("应答场景是跟商户请求时的wechatpay-serial保持一致"; without it, answers stay on the platform
    /// certificate and the answer share never reaches 100 %). Otherwise the newest valid platform
    /// certificate's serial; `None` before any certificate is downloaded.
    pub fn request_serial(&self, now: i64) -> Option<String> {
        if let Some((id, _)) = self.public_keys.first() {
            return Some(id.clone());
        }
        self.read()
            .certs
            .values()
            .filter(|c| c.expires_at > now)
            .max_by(|a, b| (a.expires_at, &a.serial_no).cmp(&(b.expires_at, &b.serial_no)))
            .map(|c| c.serial_no.clone())
    }

    /// The key request fields are sealed for, with its serial: the one
    /// [`Self::request_serial`] names (a request names one key for both).
    pub fn encryption_key(&self, now: i64) -> Option<(String, PublicKey)> {
        let serial = self.request_serial(now)?;
        let key = self.key_for(&serial, now)?;
        Some((serial, key))
    }

    /// Why no key of `serial` is held, in an operator's words (for the log): during a move
    /// between certificates and the public key, a message signed with the key not configured
    /// is refused, and this names which one it was.
    pub fn unknown_serial_hint(&self, serial: &str) -> &'static str {
        match (
            serial.starts_with("PUB_KEY_ID_"),
            self.public_keys.is_empty(),
        ) {
            (true, true) => {
                "signed with a WeChat Pay public key, but none is configured: is WeChat moving this merchant to the public key?"
            }
            (true, false) => {
                "signed with a WeChat Pay public key whose id is not configured: did WeChat rotate its public key?"
            }
            (false, _) if !self.certificate_mode => {
                "signed with a platform certificate, but certificates are not downloaded: during the move to the public key both must be configured"
            }
            (false, _) => "a platform certificate serial that /v3/certificates does not list",
        }
    }

    /// Whether a certificate valid at `now` is held.
    pub fn has_valid_certificate(&self, now: i64) -> bool {
        self.read().certs.values().any(|c| c.expires_at > now)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CertState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CertState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key for `serial` that is valid at `now`.
    pub fn key_for(&self, serial: &str, now: i64) -> Option<PublicKey> {
        if let Some((_, key)) = self.public_keys.iter().find(|(id, _)| id == serial) {
            return Some(key.clone());
        }
        self.read()
            .certs
            .get(serial)
            .filter(|c| c.expires_at > now)
            .map(|c| c.key.clone())
    }

    /// Serials of the certificates held, sorted.
    pub fn certificate_serials(&self) -> Vec<String> {
        let mut serials: Vec<_> = self.read().certs.keys().cloned().collect();
        serials.sort();
        serials
    }

    /// Adds freshly downloaded certificates. Older ones stay until they expire: during a
    /// rotation WeChat may still sign with the previous certificate.
    pub fn install_certificates(&self, certs: Vec<PlatformCertificate>, now: i64) {
        let mut state = self.write();
        state.certs.retain(|_, c| c.expires_at > now);
        for cert in certs {
            state.certs.insert(cert.serial_no.clone(), cert);
        }
        state.fetched_at = Some(now);
    }

    /// True when certificates should be downloaded now: never fetched, fetched long ago, or all
    /// of them expiring soon.
    pub fn refresh_due(&self, now: i64) -> bool {
        if !self.certificate_mode {
            return false;
        }
        let state = self.read();
        let Some(fetched_at) = state.fetched_at else {
            return true;
        };
        now - fetched_at >= CERT_REFRESH_SECS
            || !state
                .certs
                .values()
                .any(|c| c.expires_at - now > CERT_EXPIRY_MARGIN_SECS)
    }

    /// Claims the right to download because of an unknown serial (at most once per interval).
    pub fn claim_forced_refresh(&self, now: i64) -> bool {
        if !self.certificate_mode {
            return false;
        }
        let mut state = self.write();
        match state.last_forced {
            Some(last) if now - last < self.forced_refresh_secs => false,
            _ => {
                state.last_forced = Some(now);
                true
            }
        }
    }

    /// Checks the clock, finds the key of `headers.serial`, verifies the signature of `body`.
    pub fn verify(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        check_clock(&headers.timestamp, now)?;
        let key = self
            .key_for(&headers.serial, now)
            .ok_or_else(|| VerifyError::UnknownSerial(headers.serial.clone()))?;
        let message = response_message(&headers.timestamp, &headers.nonce, body);
        if key.verify(&message, &headers.signature) {
            Ok(())
        } else {
            Err(VerifyError::Signature(headers.serial.clone()))
        }
    }
}

/// `timestamp` is within [`MAX_CLOCK_SKEW_SECS`] of `now`.
pub fn check_clock(timestamp: &str, now: i64) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    // `abs_diff` cannot overflow: `(ts - now).abs()` did for `i64::MIN` (a panic in debug
    // builds, and in release `i64::MIN.abs()` wraps to a negative skew that passed the check).
    if ts.abs_diff(now) > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
        return Err(VerifyError::Clock {
            skew_secs: ts.saturating_sub(now),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn clock_accepts_the_window_and_its_edges() {
        for skew in [-MAX_CLOCK_SKEW_SECS, 0, MAX_CLOCK_SKEW_SECS] {
            assert_eq!(check_clock(&(NOW + skew).to_string(), NOW), Ok(()));
        }
        assert_eq!(
            check_clock(&(NOW + MAX_CLOCK_SKEW_SECS + 1).to_string(), NOW),
            Err(VerifyError::Clock { skew_secs: 301 })
        );
        assert_eq!(
            check_clock(&(NOW - MAX_CLOCK_SKEW_SECS - 1).to_string(), NOW),
            Err(VerifyError::Clock { skew_secs: -301 })
        );
    }

    /// Issue 24: `-9223372036854775808` overflowed the skew (found again by the `v3_notify` fuzz
    /// target, whose seeds keep the value).
    #[test]
    fn clock_refuses_the_extremes_of_i64_without_overflow() {
        assert_eq!(
            check_clock("-9223372036854775808", NOW),
            Err(VerifyError::Clock {
                skew_secs: i64::MIN
            })
        );
        assert_eq!(
            check_clock("9223372036854775807", NOW),
            Err(VerifyError::Clock {
                skew_secs: i64::MAX - NOW
            })
        );
        assert_eq!(
            check_clock("-9223372036854775808", i64::MAX),
            Err(VerifyError::Clock {
                skew_secs: i64::MIN
            })
        );
        assert_eq!(
            check_clock("-9223372036854775809", NOW),
            Err(VerifyError::BadTimestamp)
        );
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    // Test-only keys made with openssl (crates/wechat/testdata/pay_v3/README.md).
    const PLATFORM_PUB: &str = include_str!("../../../testdata/pay_v3/platform_pub.pem");
    const OTHER_PUB: &str = include_str!("../../../testdata/pay_v3/merchant_pub.pem");
    const CURRENT_ID: &str = "PUB_KEY_ID_0112345678902026120100000000000002";
    const OLD_ID: &str = "PUB_KEY_ID_0112345678902026120100000000000001";
    const NOW: i64 = 1_800_000_000;

    fn key(pem: &str) -> PublicKey {
        PublicKey::from_spki_pem(pem).unwrap()
    }

    fn cert(serial: &str, expires_at: i64) -> PlatformCertificate {
        PlatformCertificate {
            serial_no: serial.into(),
            key: key(OTHER_PUB),
            expires_at,
        }
    }

    #[test]
    fn during_the_move_both_kinds_of_key_are_found_by_serial() {
        let keys = PlatformKeys::public_key_and_certificates(CURRENT_ID, key(PLATFORM_PUB));
        keys.install_certificates(vec![cert("5157F09E", NOW + 86_400 * 30)], NOW);
        assert!(keys.key_for(CURRENT_ID, NOW).is_some());
        assert!(keys.key_for("5157F09E", NOW).is_some());
        assert!(keys.key_for("PUB_KEY_ID_unknown", NOW).is_none());
        assert!(keys.uses_certificates());
        assert!(
            keys.unknown_serial_hint("PUB_KEY_ID_unknown")
                .contains("whose id is not configured")
        );
        assert!(keys.unknown_serial_hint("7E57").contains("does not list"));
        let public_only = PlatformKeys::public_key_mode(CURRENT_ID, key(PLATFORM_PUB));
        assert!(
            public_only
                .unknown_serial_hint("5157F09E")
                .contains("certificates are not downloaded")
        );
        let certificates_only = PlatformKeys::certificate_mode();
        assert!(
            certificates_only
                .unknown_serial_hint(CURRENT_ID)
                .contains("none is configured")
        );
        // Requests name the public key, so WeChat answers with it once the switch is on.
        assert_eq!(keys.request_serial(NOW).as_deref(), Some(CURRENT_ID));
    }

    #[test]
    fn several_public_keys_by_id_the_first_one_named_on_requests() {
        let keys = PlatformKeys::public_key_mode(CURRENT_ID, key(PLATFORM_PUB))
            .with_public_key(OLD_ID, key(OTHER_PUB));
        assert_eq!(keys.public_key_ids(), vec![CURRENT_ID, OLD_ID]);
        assert!(keys.key_for(OLD_ID, NOW).is_some());
        assert_eq!(keys.request_serial(NOW).as_deref(), Some(CURRENT_ID));
        // Adding an id again replaces its key instead of holding two.
        let keys = keys.with_public_key(OLD_ID, key(PLATFORM_PUB));
        assert_eq!(keys.public_key_ids(), vec![CURRENT_ID, OLD_ID]);
        assert!(!keys.uses_certificates());
    }

    #[test]
    fn certificate_mode_names_the_newest_valid_certificate() {
        let keys = PlatformKeys::certificate_mode();
        assert_eq!(keys.request_serial(NOW), None, "nothing downloaded yet");
        assert!(!keys.has_valid_certificate(NOW));
        keys.install_certificates(
            vec![cert("OLD", NOW + 86_400), cert("NEW", NOW + 86_400 * 365)],
            NOW,
        );
        assert_eq!(keys.request_serial(NOW).as_deref(), Some("NEW"));
        assert!(keys.has_valid_certificate(NOW));
        // Past NEW's expiry nothing valid is left to name.
        assert_eq!(keys.request_serial(NOW + 86_400 * 366), None);
    }
}
