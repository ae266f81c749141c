//! Opaque session tokens: 32 random bytes shown to the client, only their SHA-256 stored.
//!
//! Storing the hash means a leaked Redis dump holds no usable token; the token itself carries
//! nothing (no user id, no expiry), so it reveals nothing either.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};

/// Random bytes in a token: 256 bits, beyond any guessing.
const TOKEN_BYTES: usize = 32;
/// Length of a token's text: unpadded base64 of 32 bytes.
pub const TOKEN_LEN: usize = 43;

/// A fresh token from the operating system's CSPRNG. Fails only if the OS cannot give
/// randomness, in which case no token must be issued at all.
pub fn generate() -> Result<String, rand::rand_core::OsError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// True when `token` has the shape of one we issue: checked before any store lookup, so junk
/// costs no round trip.
pub fn is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && URL_SAFE_NO_PAD
            .decode(token)
            .is_ok_and(|bytes| bytes.len() == TOKEN_BYTES)
}

/// The key a token is stored under: lowercase hex SHA-256 of its text.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(is_well_formed(&a));
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let good = generate().unwrap();
        assert!(!is_well_formed(""));
        assert!(!is_well_formed(&good[..42]));
        assert!(!is_well_formed(&format!("{good}A")));
        assert!(!is_well_formed(&format!("{}+", &good[..42])));
        assert!(!is_well_formed(&format!("{}=", &good[..42])));
        // 43 characters whose last one carries non-zero padding bits: not canonical.
        let mut odd = good[..42].to_owned();
        odd.push('B');
        if !good.ends_with('B') {
            // 'B' = 1 sets a trailing bit; only canonical encodings are ours.
            assert!(!is_well_formed(&odd));
        }
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
