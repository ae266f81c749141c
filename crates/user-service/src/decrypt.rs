//! Opening the mini program's encrypted payloads: input checks, decryption with the user's
//! newest session_key, and every check on the plaintext. Pure functions, no I/O.

use service_kit::Secret;
use wechat::crypto::{self, PhoneNumber, UserInfo};

use crate::{
    Error,
    error::DecryptCause,
    store::{PhoneChanges, ProfileChanges},
};

/// Largest accepted base64 `encryptedData` (a profile is well under 2 KiB).
pub const MAX_ENCRYPTED_DATA: usize = 64 * 1024;
/// Largest accepted base64 `iv` (a valid one is 24 characters).
pub const MAX_IV: usize = 64;
/// Largest accepted `rawData`.
pub const MAX_RAW_DATA: usize = 16 * 1024;
/// Largest accepted `signature` (a valid one is 40 hex digits).
pub const MAX_SIGNATURE: usize = 128;

/// The encrypted part of a request, checked for presence and size before any work is done.
#[derive(Clone, Copy, Debug)]
pub struct Sealed<'a> {
    pub encrypted_data: &'a str,
    pub iv: &'a str,
}

impl<'a> Sealed<'a> {
    pub fn new(encrypted_data: &'a str, iv: &'a str) -> Result<Self, Error> {
        if encrypted_data.is_empty() {
            return Err(Error::MissingParameter("encrypted_data"));
        }
        if iv.is_empty() {
            return Err(Error::MissingParameter("iv"));
        }
        too_long("encrypted_data", encrypted_data, MAX_ENCRYPTED_DATA)?;
        too_long("iv", iv, MAX_IV)?;
        Ok(Self { encrypted_data, iv })
    }
}

/// `rawData` + `signature`: both or neither.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    pub raw_data: &'a str,
    pub signature: &'a str,
}

impl<'a> Signed<'a> {
    pub fn new(raw_data: &'a str, signature: &'a str) -> Result<Option<Self>, Error> {
        match (raw_data.is_empty(), signature.is_empty()) {
            (true, true) => Ok(None),
            (false, true) => Err(Error::MissingParameter("signature")),
            (true, false) => Err(Error::MissingParameter("raw_data")),
            (false, false) => {
                too_long("raw_data", raw_data, MAX_RAW_DATA)?;
                too_long("signature", signature, MAX_SIGNATURE)?;
                Ok(Some(Self {
                    raw_data,
                    signature,
                }))
            }
        }
    }
}

fn too_long(name: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{name} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// Decrypts a `wx.getUserInfo` payload for the caller (`app_id`, `openid`) and checks it:
/// the watermark names our app, the openId (when the payload has one) is the caller's, and
/// the rawData signature (when sent) was made with the same key.
pub fn open_profile(
    session_key: &Secret,
    sealed: Sealed<'_>,
    signed: Option<Signed<'_>>,
    app_id: &str,
    openid: &str,
) -> Result<ProfileChanges, DecryptCause> {
    let key = session_key.expose();
    let info: UserInfo = crypto::decrypt_typed(key, sealed.encrypted_data, sealed.iv, app_id)?;
    if let Some(open_id) = &info.open_id
        && open_id != openid
    {
        return Err(DecryptCause::OpenIdMismatch);
    }
    if let Some(signed) = signed {
        crypto::verify_raw_data_signature(signed.raw_data, key, signed.signature)?;
    }
    Ok(ProfileChanges {
        nickname: info.nick_name,
        avatar_url: info.avatar_url,
        gender: info.gender,
        language: info.language,
        city: info.city,
        province: info.province,
        country: info.country,
        unionid: info.union_id.filter(|u| !u.is_empty()),
    })
}

/// Decrypts a `getPhoneNumber` payload for `app_id` (watermark checked).
pub fn open_phone(
    session_key: &Secret,
    sealed: Sealed<'_>,
    app_id: &str,
) -> Result<PhoneChanges, DecryptCause> {
    let phone: PhoneNumber = crypto::decrypt_typed(
        session_key.expose(),
        sealed.encrypted_data,
        sealed.iv,
        app_id,
    )?;
    Ok(PhoneChanges {
        phone: phone.pure_phone_number,
        phone_country_code: phone.country_code,
        phone_number: phone.phone_number,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat::DecryptError;

    const KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
    const IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";

    fn seal(json: &str) -> String {
        crypto::encrypt(KEY, IV, json.as_bytes()).unwrap()
    }

    #[test]
    fn inputs_are_checked_before_decrypting() {
        assert!(matches!(
            Sealed::new("", IV),
            Err(Error::MissingParameter("encrypted_data"))
        ));
        assert!(matches!(
            Sealed::new("abc", ""),
            Err(Error::MissingParameter("iv"))
        ));
        let huge = "A".repeat(MAX_ENCRYPTED_DATA + 1);
        assert!(matches!(
            Sealed::new(&huge, IV),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Signed::new("{}", ""),
            Err(Error::MissingParameter("signature"))
        ));
        assert!(matches!(
            Signed::new("", "ab"),
            Err(Error::MissingParameter("raw_data"))
        ));
        assert!(matches!(Signed::new("", ""), Ok(None)));
    }

    #[test]
    fn profile_openid_must_be_the_callers() {
        let data = seal(
            r#"{"openId":"o-other","nickName":"x","watermark":{"appid":"wx1","timestamp":1}}"#,
        );
        let sealed = Sealed::new(&data, IV).unwrap();
        let key = Secret::new(KEY);
        assert_eq!(
            open_profile(&key, sealed, None, "wx1", "o-me"),
            Err(DecryptCause::OpenIdMismatch)
        );
        let ok = open_profile(&key, sealed, None, "wx1", "o-other").unwrap();
        assert_eq!(ok.nickname, "x");
        assert_eq!(ok.unionid, None);
    }

    #[test]
    fn profile_without_openid_is_accepted_and_signature_checked() {
        let data =
            seal(r#"{"nickName":"n","unionId":"u1","watermark":{"appid":"wx1","timestamp":1}}"#);
        let sealed = Sealed::new(&data, IV).unwrap();
        let key = Secret::new(KEY);
        let raw = r#"{"nickName":"n"}"#;
        let good = crypto::raw_data_signature(raw, KEY);
        let ok = open_profile(&key, sealed, Signed::new(raw, &good).unwrap(), "wx1", "o").unwrap();
        assert_eq!(ok.unionid.as_deref(), Some("u1"));
        assert_eq!(
            open_profile(&key, sealed, Signed::new(raw, "00").unwrap(), "wx1", "o"),
            Err(DecryptCause::Crypto(DecryptError::SignatureMismatch))
        );
    }

    #[test]
    fn phone_payload_is_opened() {
        let data = seal(
            r#"{"phoneNumber":"+86 13800000000","purePhoneNumber":"13800000000","countryCode":"86","watermark":{"appid":"wx1","timestamp":1}}"#,
        );
        let sealed = Sealed::new(&data, IV).unwrap();
        let phone = open_phone(&Secret::new(KEY), sealed, "wx1").unwrap();
        assert_eq!(phone.phone, "13800000000");
        assert_eq!(phone.phone_country_code, "86");
        assert_eq!(
            open_phone(&Secret::new(KEY), sealed, "wx2"),
            Err(DecryptCause::Crypto(DecryptError::WatermarkMismatch))
        );
    }
}
