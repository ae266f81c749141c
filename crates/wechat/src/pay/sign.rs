//! WeChat Pay v2's parameter signature ("签名算法").
//!
//! Non-empty parameters except `sign`, sorted by name (ASCII), joined as `k=v&k=v`, then
//! `&key=<API key>` appended; MD5 of that, or HMAC-SHA256 keyed with the API key; uppercase hex.
//!
//! ```
//! use wechat::pay::{SignType, sign, verify};
//!
//! // The example of WeChat Pay's signature document.
//! let params = [
//!     ("appid", "wxd930ea5d5a258f4f"),
//!     ("mch_id", "10000100"),
//!     ("device_info", "1000"),
//!     ("body", "test"),
//!     ("nonce_str", "ibuaiVcKdpRxkhJA"),
//! ];
//! let key = "192006250b4c09247ec02edce69f6a2d";
//! assert_eq!(sign(params, key, SignType::Md5), "9A0A8659F005D6984697E2CA0A9CF3B7");
//! assert!(verify(params, key, SignType::Md5, "9A0A8659F005D6984697E2CA0A9CF3B7"));
//! ```

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// The signature algorithm (`sign_type` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SignType {
    /// `MD5`: WeChat's default when `sign_type` is absent.
    #[default]
    Md5,
    /// `HMAC-SHA256`.
    HmacSha256,
}

impl SignType {
    /// The wire name: `"MD5"` or `"HMAC-SHA256"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }
}

impl fmt::Display for SignType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `sign_type` other than `MD5` or `HMAC-SHA256`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported sign_type")]
pub struct UnsupportedSignType;

impl FromStr for SignType {
    type Err = UnsupportedSignType;

    /// Accepts exactly `"MD5"` and `"HMAC-SHA256"`, as WeChat spells them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "MD5" => Ok(SignType::Md5),
            "HMAC-SHA256" => Ok(SignType::HmacSha256),
            _ => Err(UnsupportedSignType),
        }
    }
}

/// Signs `params` with the merchant API `key`; returns uppercase hex.
///
/// Empty values and the `sign` field are skipped, so a parsed response can be passed as is.
pub fn sign<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &str,
    sign_type: SignType,
) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(k, v)| !v.is_empty() && *k != "sign")
        .collect();
    // Byte order of UTF-8 equals ASCII order for ASCII names; the value breaks ties so that
    // duplicate names (never sent by WeChat) still give an order-independent result.
    pairs.sort_unstable();
    match sign_type {
        SignType::Md5 => {
            let mut md5 = Md5::new();
            feed(&mut |b| md5.update(b), &pairs, key);
            hex::encode_upper(md5.finalize())
        }
        SignType::HmacSha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
                .expect("HMAC accepts keys of any length");
            feed(&mut |b| mac.update(b), &pairs, key);
            hex::encode_upper(mac.finalize().into_bytes())
        }
    }
}

/// Streams `k=v&...&key=KEY` into the hash without building the string.
fn feed(update: &mut dyn FnMut(&[u8]), pairs: &[(&str, &str)], key: &str) {
    for (k, v) in pairs {
        update(k.as_bytes());
        update(b"=");
        update(v.as_bytes());
        update(b"&");
    }
    update(b"key=");
    update(key.as_bytes());
}

/// Checks `signature` against [`sign`] in constant time.
///
/// The comparison is exact: WeChat signs in uppercase hex, so lowercase is rejected.
pub fn verify<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    key: &str,
    sign_type: SignType,
    signature: &str,
) -> bool {
    let expected = sign(params, key, sign_type);
    expected.as_bytes().ct_eq(signature.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_PARAMS: [(&str, &str); 5] = [
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("device_info", "1000"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ];
    const DOC_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    #[test]
    fn document_example_md5() {
        assert_eq!(
            sign(DOC_PARAMS, DOC_KEY, SignType::Md5),
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        );
    }

    #[test]
    fn document_example_hmac_sha256() {
        assert_eq!(
            sign(DOC_PARAMS, DOC_KEY, SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn verify_is_exact() {
        let good = "9A0A8659F005D6984697E2CA0A9CF3B7";
        assert!(verify(DOC_PARAMS, DOC_KEY, SignType::Md5, good));
        assert!(!verify(
            DOC_PARAMS,
            DOC_KEY,
            SignType::Md5,
            &good.to_lowercase()
        ));
        assert!(!verify(DOC_PARAMS, DOC_KEY, SignType::Md5, ""));
        assert!(!verify(DOC_PARAMS, DOC_KEY, SignType::HmacSha256, good));
        assert!(!verify(DOC_PARAMS, "wrong", SignType::Md5, good));
    }

    #[test]
    fn sign_field_and_empty_values_are_ignored() {
        let mut with_extra = DOC_PARAMS.to_vec();
        with_extra.push(("sign", "WHATEVER"));
        with_extra.push(("attach", ""));
        assert_eq!(
            sign(with_extra, DOC_KEY, SignType::Md5),
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        );
    }

    #[test]
    fn sign_type_round_trips() {
        for t in [SignType::Md5, SignType::HmacSha256] {
            assert_eq!(t.as_str().parse::<SignType>(), Ok(t));
        }
        assert!("md5".parse::<SignType>().is_err());
        assert!("HMAC-SHA1".parse::<SignType>().is_err());
        assert_eq!(SignType::default(), SignType::Md5);
    }
}
