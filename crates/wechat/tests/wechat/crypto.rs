//! User-data crypto against the official WXBizDataCrypt demo vector, and tampered inputs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use wechat::crypto::{self, DecryptError, UserInfo};

const APPID: &str = "wx4f4bc4dec97d474b";
const SESSION_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
const IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
const ENCRYPTED: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";

#[test]
fn official_demo_vector_decrypts() {
    let json = crypto::decrypt_user_data(SESSION_KEY, ENCRYPTED, IV, APPID).unwrap();
    assert_eq!(json["openId"], "oGZUI0egBJY1zhBYw2KhdUfwVJJE");
    assert_eq!(json["nickName"], "Band");
    assert_eq!(json["unionId"], "ocMvos6NjeKLIBqg5Mr9QjxrP1FA");
    assert_eq!(json["watermark"]["appid"], APPID);
    assert_eq!(json["watermark"]["timestamp"], 1477314187);

    let info: UserInfo = crypto::decrypt_typed(SESSION_KEY, ENCRYPTED, IV, APPID).unwrap();
    assert_eq!(
        info.open_id.as_deref(),
        Some("oGZUI0egBJY1zhBYw2KhdUfwVJJE")
    );
    assert_eq!(info.nick_name, "Band");
    assert_eq!(info.gender, 1);
    assert_eq!(info.city, "Guangzhou");
    assert_eq!(
        info.union_id.as_deref(),
        Some("ocMvos6NjeKLIBqg5Mr9QjxrP1FA")
    );
    assert_eq!(info.watermark.timestamp, 1477314187);
}

#[test]
fn encrypt_reproduces_the_demo_ciphertext() {
    let plain = crypto::decrypt(SESSION_KEY, ENCRYPTED, IV).unwrap();
    assert_eq!(crypto::encrypt(SESSION_KEY, IV, &plain).unwrap(), ENCRYPTED);
}

fn with_bytes(b64: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = STANDARD.decode(b64).unwrap();
    f(&mut bytes);
    STANDARD.encode(bytes)
}

#[test]
fn other_appid_is_a_watermark_mismatch() {
    assert_eq!(
        crypto::decrypt_user_data(SESSION_KEY, ENCRYPTED, IV, "wx0000000000000000"),
        Err(DecryptError::WatermarkMismatch)
    );
    let no_watermark = crypto::encrypt(SESSION_KEY, IV, br#"{"openId":"x"}"#).unwrap();
    assert_eq!(
        crypto::decrypt_user_data(SESSION_KEY, &no_watermark, IV, APPID),
        Err(DecryptError::WatermarkMismatch)
    );
}

#[test]
fn flipped_last_block_byte_breaks_the_padding() {
    // Flipping a byte of the second-to-last block flips the same byte of the last plaintext
    // block: the padding byte.
    let tampered = with_bytes(ENCRYPTED, |b| {
        let i = b.len() - 17;
        b[i] ^= 0x01;
    });
    assert_eq!(
        crypto::decrypt(SESSION_KEY, &tampered, IV),
        Err(DecryptError::BadPadding)
    );
}

#[test]
fn flipped_first_byte_garbles_the_json() {
    let tampered = with_bytes(ENCRYPTED, |b| b[0] ^= 0x80);
    assert_eq!(
        crypto::decrypt_user_data(SESSION_KEY, &tampered, IV, APPID),
        Err(DecryptError::BadJson)
    );
}

#[test]
fn wrong_iv_garbles_the_first_block() {
    // With CBC the IV only affects the first block: `{` becomes something else.
    let iv = with_bytes(IV, |b| b[0] ^= 0x01);
    assert_eq!(
        crypto::decrypt_user_data(SESSION_KEY, ENCRYPTED, &iv, APPID),
        Err(DecryptError::BadJson)
    );
}

#[test]
fn wrong_key_is_rejected() {
    let key = with_bytes(SESSION_KEY, |b| b[0] ^= 0x01);
    assert_eq!(
        crypto::decrypt(&key, ENCRYPTED, IV),
        Err(DecryptError::BadPadding)
    );
    // Whatever the key, it never yields the user's data.
    for k in 0..=255u8 {
        let key = STANDARD.encode([k; 16]);
        assert!(crypto::decrypt_user_data(&key, ENCRYPTED, IV, APPID).is_err());
    }
}

#[test]
fn bad_base64_and_lengths() {
    assert_eq!(
        crypto::decrypt("not base64!", ENCRYPTED, IV),
        Err(DecryptError::BadBase64)
    );
    assert_eq!(
        crypto::decrypt(SESSION_KEY, "%%%", IV),
        Err(DecryptError::BadBase64)
    );
    assert_eq!(
        crypto::decrypt(SESSION_KEY, ENCRYPTED, "r7BXXKkLb8qrSNn05n0qiA"),
        Err(DecryptError::BadBase64)
    );
    // Spaces where a form decoder turned '+' into ' '.
    assert_eq!(
        crypto::decrypt(SESSION_KEY, &ENCRYPTED.replace('+', " "), IV),
        Err(DecryptError::BadBase64)
    );
    let key15 = STANDARD.encode([0u8; 15]);
    let key32 = STANDARD.encode([0u8; 32]);
    assert_eq!(
        crypto::decrypt(&key15, ENCRYPTED, IV),
        Err(DecryptError::BadKeyLength)
    );
    assert_eq!(
        crypto::decrypt(&key32, ENCRYPTED, IV),
        Err(DecryptError::BadKeyLength)
    );
    assert_eq!(
        crypto::decrypt("", ENCRYPTED, IV),
        Err(DecryptError::BadKeyLength)
    );
    let iv8 = STANDARD.encode([0u8; 8]);
    assert_eq!(
        crypto::decrypt(SESSION_KEY, ENCRYPTED, &iv8),
        Err(DecryptError::BadIvLength)
    );
    assert_eq!(
        crypto::encrypt(SESSION_KEY, &iv8, b"x"),
        Err(DecryptError::BadIvLength)
    );
    assert_eq!(
        crypto::encrypt(&key15, IV, b"x"),
        Err(DecryptError::BadKeyLength)
    );
    // Not a whole number of blocks, or nothing at all.
    let short = with_bytes(ENCRYPTED, |b| {
        b.pop();
    });
    assert_eq!(
        crypto::decrypt(SESSION_KEY, &short, IV),
        Err(DecryptError::BadPadding)
    );
    assert_eq!(
        crypto::decrypt(SESSION_KEY, "", IV),
        Err(DecryptError::BadPadding)
    );
}

#[test]
fn padding_is_strict() {
    use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
    let key = STANDARD.decode(SESSION_KEY).unwrap();
    let iv = STANDARD.decode(IV).unwrap();
    let raw = |block: [u8; 16]| {
        let ct = cbc::Encryptor::<aes::Aes128>::new_from_slices(&key, &iv)
            .unwrap()
            .encrypt_padded_vec_mut::<NoPadding>(&block);
        STANDARD.encode(ct)
    };
    let mut ok = [b'a'; 16];
    ok[13..].copy_from_slice(&[3, 3, 3]);
    assert_eq!(
        crypto::decrypt(SESSION_KEY, &raw(ok), IV).unwrap(),
        vec![b'a'; 13]
    );
    let mut inconsistent = ok;
    inconsistent[13] = 2;
    assert_eq!(
        crypto::decrypt(SESSION_KEY, &raw(inconsistent), IV),
        Err(DecryptError::BadPadding)
    );
    let mut zero = [b'a'; 16];
    zero[15] = 0;
    assert_eq!(
        crypto::decrypt(SESSION_KEY, &raw(zero), IV),
        Err(DecryptError::BadPadding)
    );
    let mut too_big = [17u8; 16];
    too_big[0] = b'a';
    assert_eq!(
        crypto::decrypt(SESSION_KEY, &raw(too_big), IV),
        Err(DecryptError::BadPadding)
    );
}

#[test]
fn phone_number_payload() {
    let json = br#"{"phoneNumber":"13580006666","purePhoneNumber":"13580006666","countryCode":"86","watermark":{"appid":"wx4f4bc4dec97d474b","timestamp":1637744274}}"#;
    let data = crypto::encrypt(SESSION_KEY, IV, json).unwrap();
    let phone: crypto::PhoneNumber = crypto::decrypt_typed(SESSION_KEY, &data, IV, APPID).unwrap();
    assert_eq!(phone.phone_number, "13580006666");
    assert_eq!(phone.country_code, "86");
    assert_eq!(phone.watermark.appid, APPID);
    // Valid JSON of the wrong shape is BadJson for the typed view.
    let other = crypto::encrypt(
        SESSION_KEY,
        IV,
        br#"{"watermark":{"appid":"wx4f4bc4dec97d474b"}}"#,
    )
    .unwrap();
    assert_eq!(
        crypto::decrypt_typed::<crypto::PhoneNumber>(SESSION_KEY, &other, IV, APPID),
        Err(DecryptError::BadJson)
    );
}

#[test]
fn raw_data_signature_official_example() {
    let raw = r#"{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/1vZvI39NWFQ9XM4LtQpFrQJ1xlgZxx3w7bQxKARol6503Iuswjjn6nIGBiaycAjAtpujxyzYsrztuuICqIM5ibXQ/0"}"#;
    let key = "HyVFkGl5F5OQWJZZaNzBBg==";
    let sig = "75e81ceda165f4ffa64f4068af58c64b8f54b88c";
    assert_eq!(crypto::raw_data_signature(raw, key), sig);
    assert_eq!(crypto::verify_raw_data_signature(raw, key, sig), Ok(()));
    let tampered = raw.replace("Band", "Bond");
    assert_eq!(
        crypto::verify_raw_data_signature(&tampered, key, sig),
        Err(DecryptError::SignatureMismatch)
    );
    assert_eq!(
        crypto::verify_raw_data_signature(raw, SESSION_KEY, sig),
        Err(DecryptError::SignatureMismatch)
    );
    assert_eq!(
        crypto::verify_raw_data_signature(raw, key, ""),
        Err(DecryptError::SignatureMismatch)
    );
}

#[test]
fn errors_do_not_leak_the_key() {
    let key = with_bytes(SESSION_KEY, |b| b[0] ^= 0x01);
    let err = crypto::decrypt_user_data(&key, ENCRYPTED, IV, APPID).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(&key) && !shown.contains(SESSION_KEY));
}
