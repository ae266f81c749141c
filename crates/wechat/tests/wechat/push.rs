//! The message push protocol against WeChat's published WXBizMsgCrypt sample and against
//! vectors made with openssl + sha1sum (fixtures/push/make-vectors.sh holds the exact commands).

use wechat::push::{self, Mode, PushApp, PushError, PushQuery, signature};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wechat/fixtures/push/");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}{name}"))
        .unwrap()
        .trim()
        .to_owned()
}

// WeChat's official-account sample (WXBizMsgCrypt Sample.py / Sample.java, "测试解密接口"):
// the same cipher the mini program's safe mode uses.
const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const SAMPLE_TOKEN: &str = "spamtest";
const SAMPLE_APPID: &str = "wx2c2769f8efd9abc2";
const SAMPLE_TIMESTAMP: &str = "1409735669";
const SAMPLE_NONCE: &str = "1320562132";
const SAMPLE_MSG_SIGNATURE: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";
const SAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

// The sample's encryption vector (WXBizMsgCryptTest.java: random "aaaabbbbccccdddd").
const SAMPLE2_TOKEN: &str = "pamtest";
const SAMPLE2_APPID: &str = "wxb11529c136998cb6";
const SAMPLE2_ENCRYPTED: &str =
    "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";

fn sample_query() -> PushQuery {
    PushQuery {
        timestamp: Some(SAMPLE_TIMESTAMP.into()),
        nonce: Some(SAMPLE_NONCE.into()),
        encrypt_type: Some("aes".into()),
        msg_signature: Some(SAMPLE_MSG_SIGNATURE.into()),
        ..PushQuery::default()
    }
}

fn sample_now() -> i64 {
    SAMPLE_TIMESTAMP.parse().unwrap()
}

#[test]
fn wechat_sample_decrypts_and_verifies() {
    let app = PushApp::new(SAMPLE_APPID, SAMPLE_TOKEN, SAMPLE_KEY, Mode::Safe).unwrap();
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><Encrypt><![CDATA[{SAMPLE_ENCRYPT}]]></Encrypt></xml>"
    );
    let m = app
        .open(&sample_query(), body.as_bytes(), sample_now(), 300)
        .unwrap();
    assert_eq!(m.event, "text");
    assert_eq!(m.fields["Content"], "abcdteT");
    assert_eq!(m.fields["MsgId"], "6054768590064713728");
    assert_eq!(m.dedup_key, "msgid|6054768590064713728");
    // The same message, JSON envelope.
    let json = format!(r#"{{"ToUserName":"gh_10f6c3c3ac5a","Encrypt":"{SAMPLE_ENCRYPT}"}}"#);
    let m2 = app
        .open(&sample_query(), json.as_bytes(), sample_now(), 300)
        .unwrap();
    assert_eq!(m2, m);
}

#[test]
fn wechat_sample_encrypts_to_the_published_ciphertext() {
    let app = PushApp::new(SAMPLE2_APPID, SAMPLE2_TOKEN, SAMPLE_KEY, Mode::Safe).unwrap();
    let enc = app
        .encrypt("我是中文abcd123".as_bytes(), *b"aaaabbbbccccdddd")
        .unwrap();
    assert_eq!(enc, SAMPLE2_ENCRYPTED);
    assert_eq!(
        app.decrypt(SAMPLE2_ENCRYPTED).unwrap(),
        "我是中文abcd123".as_bytes()
    );
}

#[test]
fn wechat_sample_refused_for_another_app_token_or_time() {
    let body = format!(r#"{{"ToUserName":"gh","Encrypt":"{SAMPLE_ENCRYPT}"}}"#);
    let other_app =
        PushApp::new("wx0000000000000000", SAMPLE_TOKEN, SAMPLE_KEY, Mode::Safe).unwrap();
    assert_eq!(
        other_app.open(&sample_query(), body.as_bytes(), sample_now(), 300),
        Err(PushError::AppIdMismatch)
    );
    let other_token = PushApp::new(SAMPLE_APPID, "othertoken", SAMPLE_KEY, Mode::Safe).unwrap();
    assert_eq!(
        other_token.open(&sample_query(), body.as_bytes(), sample_now(), 300),
        Err(PushError::BadSignature)
    );
    let app = PushApp::new(SAMPLE_APPID, SAMPLE_TOKEN, SAMPLE_KEY, Mode::Safe).unwrap();
    // A capture replayed ten minutes later.
    assert_eq!(
        app.open(&sample_query(), body.as_bytes(), sample_now() + 600, 300),
        Err(PushError::StaleTimestamp)
    );
    // Plaintext mode configured: the body is not the message.
    let plain = PushApp::new(SAMPLE_APPID, SAMPLE_TOKEN, "", Mode::Plaintext).unwrap();
    assert_eq!(
        plain.open(&sample_query(), body.as_bytes(), sample_now(), 300),
        Err(PushError::MissingParameter("signature"))
    );
}

const TOKEN: &str = "wxmpPushToken1";
const AESKEY: &str = "kWxPfcbLMi4nK5oWXQhzfLFCeRj3dQWdUg1N2xk5fEP";
const APPID: &str = "wx0000000000shiptest";
const NOW: i64 = 1_700_000_000;

fn query(msg_signature: Option<String>) -> PushQuery {
    PushQuery {
        signature: Some(fixture("signature.txt")),
        timestamp: Some(NOW.to_string()),
        nonce: Some("38271653".into()),
        encrypt_type: msg_signature.as_ref().map(|_| "aes".into()),
        msg_signature,
        ..PushQuery::default()
    }
}

#[test]
fn openssl_vectors_json_and_xml() {
    let app = PushApp::new(APPID, TOKEN, AESKEY, Mode::Safe).unwrap();
    for (name, event) in [
        ("settlement.json", "trade_manage_order_settlement"),
        ("remind.xml", "trade_manage_remind_shipping"),
    ] {
        let enc = fixture(&format!("{name}.encrypt.txt"));
        let sig = fixture(&format!("{name}.msg_signature.txt"));
        let body = format!(r#"{{"ToUserName":"gh_0000shipping","Encrypt":"{enc}"}}"#);
        let m = app
            .open(&query(Some(sig)), body.as_bytes(), NOW, 300)
            .unwrap();
        assert_eq!(m.event, event, "{name}");
        assert_eq!(m.fields["transaction_id"], "4200000000000001");
        // Our encryption with the same random bytes gives openssl's ciphertext.
        let plain = std::fs::read(format!("{FIXTURES}{name}")).unwrap();
        assert_eq!(app.encrypt(&plain, *b"0123456789abcdef").unwrap(), enc);
    }
}

#[test]
fn plaintext_mode_json_and_xml() {
    let app = PushApp::new(APPID, TOKEN, "", Mode::Plaintext).unwrap();
    let json = fixture("settlement.json");
    let m = app.open(&query(None), json.as_bytes(), NOW, 300).unwrap();
    assert_eq!(m.event, "trade_manage_order_settlement");
    assert_eq!(m.fields["confirm_receive_method"], 2);
    assert!(
        m.dedup_key
            .starts_with("o_user_0001|1700000000|trade_manage_order_settlement|"),
        "{}",
        m.dedup_key
    );
    // The same message again (a retry) has the same key; a different event of the same
    // second (the settlement after the receipt) another one.
    assert_eq!(
        app.open(&query(None), json.as_bytes(), NOW, 300)
            .unwrap()
            .dedup_key,
        m.dedup_key
    );
    let settled = json.replace(
        r#""confirm_receive_time":1700000000"#,
        r#""confirm_receive_time":1700000000,"settlement_time":1700000000"#,
    );
    assert_ne!(settled, json);
    assert_ne!(
        app.open(&query(None), settled.as_bytes(), NOW, 300)
            .unwrap()
            .dedup_key,
        m.dedup_key
    );
    let xml = fixture("remind.xml");
    let m = app.open(&query(None), xml.as_bytes(), NOW, 300).unwrap();
    assert_eq!(m.event, "trade_manage_remind_shipping");
    assert_eq!(m.fields["msg"], "请尽快发货");
    // A forged signature.
    let mut q = query(None);
    q.signature = Some("0".repeat(40));
    assert_eq!(
        app.open(&q, json.as_bytes(), NOW, 300),
        Err(PushError::BadSignature)
    );
}

#[test]
fn get_check_answers_echostr_only_when_signed() {
    let app = PushApp::new(APPID, TOKEN, AESKEY, Mode::Safe).unwrap();
    let mut q = query(None);
    q.echostr = Some("7093573842910487".into());
    assert_eq!(app.check_url(&q, NOW, 300).unwrap(), "7093573842910487");
    assert_eq!(
        app.check_url(&q, NOW + 301, 300),
        Err(PushError::StaleTimestamp)
    );
    q.signature = Some(signature(&["another", "1700000000", "38271653"]));
    assert_eq!(app.check_url(&q, NOW, 300), Err(PushError::BadSignature));
}

#[test]
fn tampered_ciphertexts_are_refused() {
    let key = push::decode_aes_key(AESKEY).unwrap();
    // Bad padding: a frame whose last byte is 0 (encrypted without WeChat's padding).
    let mut frame = vec![0u8; 64];
    frame[19] = 1;
    let enc = {
        use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&key[..16]);
        let out = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
            .encrypt_padded_vec_mut::<NoPadding>(&frame);
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, out)
    };
    assert_eq!(push::decrypt(&key, &enc, APPID), Err(PushError::BadPadding));
    assert_eq!(
        push::decrypt(&key, "not base64!", APPID),
        Err(PushError::BadCiphertext)
    );
    assert_eq!(
        push::decrypt(&key, "AAAA", APPID),
        Err(PushError::BadCiphertext)
    );
    // A frame whose length runs past its end.
    let long = push::encrypt(&key, b"", APPID, [0; 16]);
    let mut raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &long).unwrap();
    raw.truncate(16);
    let cut = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
    assert!(push::decrypt(&key, &cut, APPID).is_err());
}
