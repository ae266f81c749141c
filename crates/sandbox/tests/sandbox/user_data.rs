//! `/sandbox/user-data`, decrypted with independent AES code and checked against the payload
//! shapes of WeChat's "开放数据校验与解密" document.

use crate::helpers::*;
use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::{Engine, engine::general_purpose::STANDARD};
use sandbox::{DEV_APP_ID, DEV_APP_SECRET};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

fn decrypt(session_key: &str, encrypted: &str, iv: &str) -> Result<Value, String> {
    let key = STANDARD.decode(session_key).unwrap();
    let iv = STANDARD.decode(iv).unwrap();
    assert_eq!((key.len(), iv.len()), (16, 16));
    let data = STANDARD.decode(encrypted).unwrap();
    let plain = Aes128CbcDec::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt_padded_vec_mut::<Pkcs7>(&data)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&plain).map_err(|e| e.to_string())
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn userinfo_is_encrypted_with_the_current_session_key() {
    let sb = start().await;
    let (openid, old_key, unionid) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let (_, key, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, Some(&openid)).await;
    let profile = json!({
        "nickName": "Band", "gender": 1, "language": "zh_CN", "city": "Guangzhou",
        "province": "Guangdong", "country": "CN", "avatarUrl": "http://wx.qlogo.cn/mmopen/vi_32/x/0"
    });
    let (status, data) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": openid, "profile": profile }),
    )
    .await;
    assert_eq!(status, 200, "{data}");
    assert_eq!(
        sorted_keys(&data),
        ["encryptedData", "iv", "rawData", "signature"]
    );

    let plain = decrypt(
        &key,
        data["encryptedData"].as_str().unwrap(),
        data["iv"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        sorted_keys(&plain),
        [
            "avatarUrl",
            "city",
            "country",
            "gender",
            "language",
            "nickName",
            "openId",
            "province",
            "unionId",
            "watermark"
        ]
    );
    assert_eq!(plain["openId"], openid.as_str());
    assert_eq!(plain["unionId"], unionid.as_str());
    assert_eq!(plain["nickName"], "Band");
    assert_eq!(plain["gender"], 1);
    assert_eq!(plain["watermark"]["appid"], DEV_APP_ID);
    let ts = plain["watermark"]["timestamp"].as_i64().unwrap();
    assert!((ts - chrono_now()).abs() < 60);

    // rawData is the profile alone, in WeChat's field order; signature = sha1(rawData + session_key).
    let raw = data["rawData"].as_str().unwrap();
    assert_eq!(
        raw,
        r#"{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/x/0"}"#
    );
    let sig = hex::encode(Sha1::digest(format!("{raw}{key}").as_bytes()));
    assert_eq!(data["signature"], sig.as_str());

    // The previous session_key no longer decrypts it.
    let stale = decrypt(
        &old_key,
        data["encryptedData"].as_str().unwrap(),
        data["iv"].as_str().unwrap(),
    );
    assert!(stale.is_err() || stale.unwrap()["openId"] != openid.as_str());
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn default_profile_and_fresh_iv() {
    let sb = start().await;
    let (openid, key, _) = login(&sb, APP2_ID, APP2_SECRET, None).await;
    let body = json!({ "appid": APP2_ID, "openid": openid });
    let (_, a) = post_json(&sb, "/sandbox/user-data", body.clone()).await;
    let (_, b) = post_json(&sb, "/sandbox/user-data", body).await;
    assert_ne!(a["iv"], b["iv"], "a random iv per call");
    let plain = decrypt(
        &key,
        a["encryptedData"].as_str().unwrap(),
        a["iv"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(plain["nickName"], "微信用户");
    assert_eq!(plain["gender"], 0);
    assert_eq!(plain["watermark"]["appid"], APP2_ID);
}

#[tokio::test]
async fn phone_number_payload() {
    let sb = start().await;
    let (openid, key, _) = login(&sb, DEV_APP_ID, DEV_APP_SECRET, None).await;
    let (status, data) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": openid, "kind": "phone", "phone": "13580006666" }),
    )
    .await;
    assert_eq!(status, 200, "{data}");
    assert_eq!(
        sorted_keys(&data),
        ["encryptedData", "iv"],
        "getPhoneNumber has no rawData/signature"
    );
    let plain = decrypt(
        &key,
        data["encryptedData"].as_str().unwrap(),
        data["iv"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        sorted_keys(&plain),
        ["countryCode", "phoneNumber", "purePhoneNumber", "watermark"]
    );
    assert_eq!(plain["phoneNumber"], "13580006666");
    assert_eq!(plain["purePhoneNumber"], "13580006666");
    assert_eq!(plain["countryCode"], "86");
    assert_eq!(plain["watermark"]["appid"], DEV_APP_ID);

    let (_, data) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": openid, "kind": "phone", "phone": "2025550123", "countryCode": "1" }),
    )
    .await;
    let plain = decrypt(
        &key,
        data["encryptedData"].as_str().unwrap(),
        data["iv"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(plain["phoneNumber"], "+1 2025550123");
    assert_eq!(plain["countryCode"], "1");
}

#[tokio::test]
async fn user_data_errors() {
    let sb = start().await;
    // Never logged in: the user exists (a code was issued) but has no session_key yet.
    let (_, code) = post_json(&sb, "/sandbox/login-code", json!({})).await;
    let (status, v) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": code["openid"] }),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("not_logged_in")),
        "{v}"
    );
    let (status, v) = post_json(&sb, "/sandbox/user-data", json!({ "openid": "oNobody" })).await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown_user")));
    let (status, v) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": code["openid"], "appid": APP2_ID }),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("unknown_user")),
        "openids are per app"
    );
    let (status, v) = post_json(&sb, "/sandbox/user-data", json!({})).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": "o", "profile": { "nickname": "typo" } }),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post_json(
        &sb,
        "/sandbox/user-data",
        json!({ "openid": "o", "kind": "email" }),
    )
    .await;
    assert_eq!(status, 400);
}
