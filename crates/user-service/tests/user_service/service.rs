//! UserService cases, each run on PostgreSQL and on SQLite, calling the service directly with
//! session keys held in memory.

use std::{sync::Arc, time::Duration};

use crate::helpers::*;
use futures::future::join_all;
use service_kit::ErrorReason;
use tonic::Request;
use user_service::{DECRYPT_FAILED_MESSAGE, SessionAnswers};
use wxmp_proto::user::v1::{
    self as pb, EnsureUserRequest, GetUserRequest, UpdatePhoneNumberRequest, UpdateProfileRequest,
    user_service_server::UserService as _,
};

on_both_backends!(
    ensure_creates_once_then_reuses,
    concurrent_first_logins_make_one_user,
    unionid_is_stored_and_kept,
    ensure_requires_ids,
    get_unknown_user_is_not_found,
    profile_is_decrypted_stored_and_returned,
    unicode_nicknames_survive,
    every_decrypt_failure_is_one_answer_and_changes_nothing,
    bad_requests_are_refused_before_decrypting,
    principal_must_match_the_row,
    a_token_names_the_caller_instead_of_a_principal,
    cached_sessions_save_auth_calls_and_never_open_with_a_stale_key,
    phone_number_is_stored,
    phone_failures_change_nothing,
    official_wechat_vector_through_update_profile,
    migrations_run_twice,
);

async fn ensure(h: &Harness, app_id: &str, openid: &str, unionid: &str) -> (pb::User, bool) {
    let r = h
        .service
        .ensure_user(Request::new(EnsureUserRequest {
            app_id: app_id.into(),
            openid: openid.into(),
            unionid: unionid.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    (r.user.unwrap(), r.created)
}

async fn get(h: &Harness, user_id: i64) -> pb::User {
    h.service
        .get_user(Request::new(GetUserRequest { user_id }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
}

fn profile_request(user: &pb::User, encrypted_data: &str, iv: &str) -> UpdateProfileRequest {
    UpdateProfileRequest {
        principal: Some(principal_of(user)),
        encrypted_data: encrypted_data.into(),
        iv: iv.into(),
        raw_data: String::new(),
        signature: String::new(),
        token: String::new(),
    }
}

async fn update_profile(
    h: &Harness,
    request: UpdateProfileRequest,
) -> Result<pb::User, tonic::Status> {
    h.service
        .update_profile(Request::new(request))
        .await
        .map(|r| r.into_inner().user.unwrap())
}

/// A user who logged in once: row created, session key 1 current.
async fn logged_in(h: &Harness, openid: &str) -> pb::User {
    let (user, _) = ensure(h, APP, openid, "").await;
    h.keys.rotate(APP, openid, &key(1));
    user
}

async fn ensure_creates_once_then_reuses(backend: Backend) {
    let h = Harness::new(backend).await;
    let (first, created) = ensure(&h, APP, "o-alice", "").await;
    assert!(created);
    assert!(first.id > 0);
    assert_eq!(
        (first.app_id.as_str(), first.openid.as_str()),
        (APP, "o-alice")
    );
    assert!(first.created_at > 1_700_000_000);
    assert_eq!(first.nickname, "");

    let (again, created) = ensure(&h, APP, "o-alice", "").await;
    assert!(!created);
    assert_eq!(again, first);

    // Same openid in another app is another user; another openid is another user.
    let (other_app, created) = ensure(&h, OTHER_APP, "o-alice", "").await;
    assert!(created);
    assert_ne!(other_app.id, first.id);
    let (bob, created) = ensure(&h, APP, "o-bob", "").await;
    assert!(created);
    assert_ne!(bob.id, first.id);
    assert_eq!(get(&h, first.id).await, first);
}

async fn concurrent_first_logins_make_one_user(backend: Backend) {
    let h = Harness::new(backend).await;
    let calls = (0..8).map(|_| {
        let service = h.service.clone();
        tokio::spawn(async move {
            service
                .ensure_user(Request::new(EnsureUserRequest {
                    app_id: APP.into(),
                    openid: "o-racer".into(),
                    unionid: String::new(),
                }))
                .await
                .map(tonic::Response::into_inner)
        })
    });
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("every concurrent EnsureUser succeeds"))
        .collect();
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    let id = results[0].user.as_ref().unwrap().id;
    assert!(results.iter().all(|r| r.user.as_ref().unwrap().id == id));
    // The next user gets the next id: nothing else was inserted by the race.
    let (next, created) = ensure(&h, APP, "o-next", "").await;
    assert!(created);
    assert_ne!(next.id, id);
}

async fn unionid_is_stored_and_kept(backend: Backend) {
    let h = Harness::new(backend).await;
    let (user, _) = ensure(&h, APP, "o-u", "").await;
    assert_eq!(user.unionid, "");
    // The app got bound to an open platform account: the next login carries a unionid.
    let (user, created) = ensure(&h, APP, "o-u", "union-1").await;
    assert!(!created);
    assert_eq!(user.unionid, "union-1");
    // A later login without one does not erase it.
    let (user, _) = ensure(&h, APP, "o-u", "").await;
    assert_eq!(user.unionid, "union-1");
    assert_eq!(get(&h, user.id).await.unionid, "union-1");
    // Given at creation, it is stored at once.
    let (new, created) = ensure(&h, APP, "o-v", "union-2").await;
    assert!(created);
    assert_eq!(new.unionid, "union-2");
}

async fn ensure_requires_ids(backend: Backend) {
    let h = Harness::new(backend).await;
    for (app_id, openid, reason) in [
        ("", "o", ErrorReason::MissingParameter),
        (APP, "", ErrorReason::MissingParameter),
        (APP, &*"o".repeat(200), ErrorReason::InvalidArgument),
    ] {
        let err = h
            .service
            .ensure_user(Request::new(EnsureUserRequest {
                app_id: app_id.into(),
                openid: openid.into(),
                unionid: String::new(),
            }))
            .await
            .unwrap_err();
        assert_reason(&err, reason);
    }
}

async fn get_unknown_user_is_not_found(backend: Backend) {
    let h = Harness::new(backend).await;
    let err = h
        .service
        .get_user(Request::new(GetUserRequest { user_id: 424_242 }))
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::NotFound);
    assert_eq!(err.code(), tonic::Code::NotFound);
}

async fn profile_is_decrypted_stored_and_returned(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = logged_in(&h, "o-carol").await;
    let mut json = profile_json(APP, "o-carol", "Carol");
    json["unionId"] = "union-carol".into();
    let data = seal(&key(1), &iv(1), &json);
    let raw = r#"{"nickName":"Carol","gender":2}"#;
    let mut request = profile_request(&user, &data, &iv(1));
    request.raw_data = raw.into();
    request.signature = wechat::crypto::raw_data_signature(raw, &key(1));

    let stored = update_profile(&h, request).await.unwrap();
    assert_eq!(stored.id, user.id);
    assert_eq!(stored.nickname, "Carol");
    assert_eq!(stored.gender, 2);
    assert_eq!(stored.language, "zh_CN");
    assert_eq!(stored.city, "Hangzhou");
    assert_eq!(stored.province, "Zhejiang");
    assert_eq!(stored.country, "CN");
    assert_eq!(
        stored.avatar_url,
        "https://thirdwx.qlogo.cn/mmopen/vi_32/abc/132"
    );
    assert_eq!(stored.unionid, "union-carol");
    assert_eq!(stored.created_at, user.created_at);
    assert!(stored.updated_at >= user.updated_at);
    assert_eq!(get(&h, user.id).await, stored);

    // A payload without openId (newer profile APIs) and without a unionId keeps the unionid.
    let mut json = profile_json(APP, "o-carol", "Carol 2");
    json.as_object_mut().unwrap().remove("openId");
    let data = seal(&key(1), &iv(2), &json);
    let stored = update_profile(&h, profile_request(&user, &data, &iv(2)))
        .await
        .unwrap();
    assert_eq!(stored.nickname, "Carol 2");
    assert_eq!(stored.unionid, "union-carol");
}

async fn unicode_nicknames_survive(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = logged_in(&h, "o-panda").await;
    for (n, nickname) in [
        "测试🐼用户",
        "Zoë 👩‍👩‍👧‍👦",
        "ｆｕｌｌｗｉｄｔｈ　名前",
        "\u{202e}rtl",
    ]
    .into_iter()
    .enumerate()
    {
        let mut json = profile_json(APP, "o-panda", nickname);
        json["city"] = "深圳".into();
        let data = seal(&key(1), &iv(n as u32), &json);
        let stored = update_profile(&h, profile_request(&user, &data, &iv(n as u32)))
            .await
            .unwrap();
        assert_eq!(stored.nickname, nickname);
        assert_eq!(stored.city, "深圳");
        assert_eq!(get(&h, user.id).await.nickname, nickname);
    }
}

async fn every_decrypt_failure_is_one_answer_and_changes_nothing(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = logged_in(&h, "o-dave").await;
    // A stored profile first, so "unchanged" means more than empty strings.
    let good = seal(&key(1), &iv(1), &profile_json(APP, "o-dave", "Dave"));
    let before = update_profile(&h, profile_request(&user, &good, &iv(1)))
        .await
        .unwrap();

    let raw = r#"{"nickName":"Mallory"}"#;
    let evil = profile_json(APP, "o-dave", "Mallory");
    let signed = |sig: String| {
        let mut r = profile_request(&user, &seal(&key(1), &iv(1), &evil), &iv(1));
        r.raw_data = raw.into();
        r.signature = sig;
        r
    };
    // (A wrong iv is not on this list: in CBC it garbles only the first block, which may
    // still parse. Integrity is what the rawData signature and the openId check are for.)
    let mut cases: Vec<(&str, UpdateProfileRequest)> = vec![
        (
            "bad base64 data",
            profile_request(&user, "not*base64!", &iv(1)),
        ),
        ("bad base64 iv", profile_request(&user, &good, "%%%%")),
        ("short iv", profile_request(&user, &good, "AAAAAAAAAAA=")),
        (
            "not whole blocks",
            profile_request(&user, "AAAAAAAAAAAAAAAAAAAA", &iv(1)),
        ),
        (
            "wrong key",
            profile_request(&user, &seal(&key(9), &iv(1), &evil), &iv(1)),
        ),
        (
            "other app's watermark",
            profile_request(
                &user,
                &seal(&key(1), &iv(1), &profile_json(OTHER_APP, "o-dave", "M")),
                &iv(1),
            ),
        ),
        (
            "another user's openId",
            profile_request(
                &user,
                &seal(&key(1), &iv(1), &profile_json(APP, "o-eve", "M")),
                &iv(1),
            ),
        ),
        (
            "not json",
            profile_request(
                &user,
                &wechat::crypto::encrypt(&key(1), &iv(1), b"nickName=M").unwrap(),
                &iv(1),
            ),
        ),
        ("bad signature", signed("0".repeat(40))),
        (
            "signature with another key",
            signed(wechat::crypto::raw_data_signature(raw, &key(2))),
        ),
        (
            "uppercase signature",
            signed(wechat::crypto::raw_data_signature(raw, &key(1)).to_uppercase()),
        ),
    ];
    // Data sealed with the key of the previous login, after a new login rotated it.
    let stale = profile_request(&user, &seal(&key(1), &iv(3), &evil), &iv(3));
    for (name, request) in cases.drain(..) {
        let err = update_profile(&h, request).await.unwrap_err();
        assert_reason(&err, ErrorReason::DecryptFailed);
        assert_eq!(err.message(), DECRYPT_FAILED_MESSAGE, "case {name}");
        assert_eq!(
            get(&h, user.id).await,
            before,
            "case {name} changed the row"
        );
    }

    h.keys.rotate(APP, "o-dave", &key(2));
    let err = update_profile(&h, stale.clone()).await.unwrap_err();
    assert_reason(&err, ErrorReason::DecryptFailed);
    assert_eq!(err.message(), DECRYPT_FAILED_MESSAGE);
    assert_eq!(get(&h, user.id).await, before, "stale key changed the row");

    // No live session at all: the same answer (the remedy is the same: log in again).
    h.keys.forget(APP, "o-dave");
    let err = update_profile(&h, stale).await.unwrap_err();
    assert_reason(&err, ErrorReason::DecryptFailed);
    assert_eq!(err.message(), DECRYPT_FAILED_MESSAGE);
    assert_eq!(get(&h, user.id).await, before);
}

async fn bad_requests_are_refused_before_decrypting(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = logged_in(&h, "o-frank").await;
    let good = seal(&key(1), &iv(1), &profile_json(APP, "o-frank", "F"));
    let raw_only = UpdateProfileRequest {
        raw_data: "{}".into(),
        ..profile_request(&user, &good, &iv(1))
    };
    let sig_only = UpdateProfileRequest {
        signature: "ab".repeat(20),
        ..profile_request(&user, &good, &iv(1))
    };
    let no_principal = UpdateProfileRequest {
        principal: None,
        ..profile_request(&user, &good, &iv(1))
    };
    let cases = [
        (
            profile_request(&user, "", &iv(1)),
            ErrorReason::MissingParameter,
        ),
        (
            profile_request(&user, &good, ""),
            ErrorReason::MissingParameter,
        ),
        (raw_only, ErrorReason::MissingParameter),
        (sig_only, ErrorReason::MissingParameter),
        (no_principal, ErrorReason::MissingParameter),
        (
            profile_request(
                &user,
                &"A".repeat(user_service::MAX_ENCRYPTED_DATA + 4),
                &iv(1),
            ),
            ErrorReason::InvalidArgument,
        ),
        (
            profile_request(&user, &good, &"A".repeat(user_service::MAX_IV + 4)),
            ErrorReason::InvalidArgument,
        ),
    ];
    for (request, reason) in cases {
        let err = update_profile(&h, request).await.unwrap_err();
        assert_reason(&err, reason);
    }
    assert_eq!(get(&h, user.id).await, user);

    let err = h
        .service
        .update_phone_number(Request::new(UpdatePhoneNumberRequest {
            principal: Some(principal_of(&user)),
            encrypted_data: String::new(),
            iv: iv(1),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::MissingParameter);
}

async fn principal_must_match_the_row(backend: Backend) {
    let h = Harness::new(backend).await;
    let grace = logged_in(&h, "o-grace").await;
    let heidi = logged_in(&h, "o-heidi").await;
    // Heidi's openid with Grace's user id: decrypts with Heidi's key, but no row is both.
    let mut forged = principal_of(&grace);
    forged.openid = heidi.openid.clone();
    let data = seal(&key(1), &iv(1), &profile_json(APP, "o-heidi", "Heidi"));
    let request = UpdateProfileRequest {
        principal: Some(forged),
        ..profile_request(&heidi, &data, &iv(1))
    };
    let err = update_profile(&h, request).await.unwrap_err();
    assert_reason(&err, ErrorReason::NotFound);
    assert_eq!(get(&h, grace.id).await, grace);
    assert_eq!(get(&h, heidi.id).await, heidi);
}

/// With a session token the caller is the token's owner (the principal field is ignored, so a
/// forged one changes nothing), checked before the encrypted data; an unknown token is
/// INVALID_TOKEN.
async fn a_token_names_the_caller_instead_of_a_principal(backend: Backend) {
    let h = Harness::new(backend).await;
    let ivan = logged_in(&h, "o-ivan").await;
    let judy = logged_in(&h, "o-judy").await;
    h.keys.sign_in("tok-ivan", principal_of(&ivan));
    let data = seal(&key(1), &iv(1), &profile_json(APP, "o-ivan", "伊万"));
    let stored = update_profile(
        &h,
        UpdateProfileRequest {
            token: "tok-ivan".into(),
            principal: Some(principal_of(&judy)),
            ..profile_request(&ivan, &data, &iv(1))
        },
    )
    .await
    .unwrap();
    assert_eq!((stored.id, stored.nickname.as_str()), (ivan.id, "伊万"));
    assert_eq!(
        get(&h, judy.id).await,
        judy,
        "the principal field is ignored"
    );

    // An unknown token is refused before the data is looked at, and nothing changes.
    for body in [data.as_str(), "%%% not base64"] {
        let err = update_profile(
            &h,
            UpdateProfileRequest {
                token: "tok-unknown".into(),
                ..profile_request(&ivan, body, &iv(1))
            },
        )
        .await
        .unwrap_err();
        assert_reason(&err, ErrorReason::InvalidToken);
    }
    let err = h
        .service
        .update_phone_number(Request::new(UpdatePhoneNumberRequest {
            token: "x".repeat(200),
            encrypted_data: data.clone(),
            iv: iv(1),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::InvalidToken);
    assert_eq!(get(&h, ivan.id).await, stored);

    // The token's owner without a live key: the uniform decryption failure.
    h.keys.forget(APP, "o-ivan");
    let err = update_profile(
        &h,
        UpdateProfileRequest {
            token: "tok-ivan".into(),
            ..profile_request(&ivan, &data, &iv(1))
        },
    )
    .await
    .unwrap_err();
    assert_reason(&err, ErrorReason::DecryptFailed);
}

async fn cached_sessions_save_auth_calls_and_never_open_with_a_stale_key(backend: Backend) {
    let h = Harness::new(backend).await;
    let cache = Arc::new(SessionAnswers::new(Duration::from_secs(60), 100).unwrap());
    // The feed is what makes the cache serve; here the test plays it.
    cache.feed_connected();
    let service = h.service.clone().with_session_cache(cache.clone());
    let update = |request: UpdateProfileRequest| {
        let service = service.clone();
        async move {
            service
                .update_profile(Request::new(request))
                .await
                .map(|r| r.into_inner().user.unwrap())
        }
    };
    let ivan = logged_in(&h, "o-ivan").await;
    let judy = logged_in(&h, "o-judy").await;
    h.keys.sign_in("tok-ivan", principal_of(&ivan));
    h.keys.sign_in("tok-judy", principal_of(&judy));
    let by_token = |token: &str, data: &str, iv: &str| UpdateProfileRequest {
        token: token.into(),
        principal: None,
        ..profile_request(&ivan, data, iv)
    };

    // Three updates, one auth-service call; another token is asked for separately.
    for n in 1..=3 {
        let data = seal(
            &key(1),
            &iv(n),
            &profile_json(APP, "o-ivan", &format!("ivan {n}")),
        );
        let stored = update(by_token("tok-ivan", &data, &iv(n))).await.unwrap();
        assert_eq!((stored.id, stored.nickname), (ivan.id, format!("ivan {n}")));
    }
    assert_eq!(h.keys.asked(), 1, "answered from the cache after the first");
    let data = seal(&key(1), &iv(1), &profile_json(APP, "o-judy", "judy"));
    let stored = update(by_token("tok-judy", &data, &iv(1))).await.unwrap();
    assert_eq!((stored.id, stored.nickname.as_str()), (judy.id, "judy"));
    assert_eq!(h.keys.asked(), 2);

    // Ivan logs in again: key 2. The cached answer holds key 1; the payload sealed with key 2
    // opens after one fresh call, and the fresh answer is kept.
    h.keys.rotate(APP, "o-ivan", &key(2));
    let data = seal(&key(2), &iv(4), &profile_json(APP, "o-ivan", "ivan 4"));
    assert_eq!(
        update(by_token("tok-ivan", &data, &iv(4)))
            .await
            .unwrap()
            .nickname,
        "ivan 4"
    );
    assert_eq!(h.keys.asked(), 3, "one refresh");
    let data = seal(&key(2), &iv(5), &profile_json(APP, "o-ivan", "ivan 5"));
    update(by_token("tok-ivan", &data, &iv(5))).await.unwrap();
    assert_eq!(h.keys.asked(), 3, "the refreshed answer is served");

    // A payload no key opens: one refresh, the uniform failure, nothing stored.
    let data = seal(&key(9), &iv(6), &profile_json(APP, "o-ivan", "forged"));
    let err = update(by_token("tok-ivan", &data, &iv(6)))
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::DecryptFailed);
    assert_eq!(h.keys.asked(), 4, "exactly one refresh for a bad payload");
    assert_eq!(get(&h, ivan.id).await.nickname, "ivan 5");

    // A revoked session (the feed's eviction) is asked again, and refused.
    h.keys.sign_out("tok-ivan");
    cache.evict(&service_kit::session_cache::TokenKey::of("tok-ivan"));
    let data = seal(
        &key(2),
        &iv(7),
        &profile_json(APP, "o-ivan", "after logout"),
    );
    let err = update(by_token("tok-ivan", &data, &iv(7)))
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::InvalidToken);
    assert_eq!(get(&h, ivan.id).await.nickname, "ivan 5");

    // A session that ended without an announcement, met after its key failed: the refresh
    // learns it ended, answers INVALID_TOKEN and drops the entry.
    h.keys.sign_out("tok-judy");
    h.keys.rotate(APP, "o-judy", &key(3));
    let data = seal(&key(3), &iv(8), &profile_json(APP, "o-judy", "judy later"));
    let err = update(by_token("tok-judy", &data, &iv(8)))
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::InvalidToken);
    assert!(
        cache
            .get(&service_kit::session_cache::TokenKey::of("tok-judy"))
            .is_none()
    );
    assert_eq!(get(&h, judy.id).await.nickname, "judy");

    // A dark cache (feed lost) serves nothing: every call asks.
    cache.feed_lost();
    h.keys.sign_in("tok-ivan-2", principal_of(&ivan));
    let before = h.keys.asked();
    for n in 10..12 {
        let data = seal(&key(2), &iv(n), &profile_json(APP, "o-ivan", "dark"));
        update(by_token("tok-ivan-2", &data, &iv(n))).await.unwrap();
    }
    assert_eq!(h.keys.asked(), before + 2);
}

async fn phone_number_is_stored(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = logged_in(&h, "o-ivan").await;
    let data = seal(&key(1), &iv(4), &phone_json(APP, "13800138000", "86"));
    let stored = h
        .service
        .update_phone_number(Request::new(UpdatePhoneNumberRequest {
            principal: Some(principal_of(&user)),
            encrypted_data: data,
            iv: iv(4),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(stored.phone, "13800138000");
    assert_eq!(stored.phone_country_code, "86");
    assert_eq!(stored.nickname, "", "a phone update touches only the phone");
    assert_eq!(get(&h, user.id).await, stored);
}

async fn phone_failures_change_nothing(backend: Backend) {
    let h = Harness::new(backend).await;
    let user = logged_in(&h, "o-judy").await;
    let phone = |encrypted_data: String, iv: String| UpdatePhoneNumberRequest {
        principal: Some(principal_of(&user)),
        encrypted_data,
        iv,
        ..Default::default()
    };
    let cases = [
        phone(
            seal(&key(1), &iv(1), &phone_json(OTHER_APP, "1", "86")),
            iv(1),
        ),
        phone(seal(&key(7), &iv(1), &phone_json(APP, "1", "86")), iv(1)),
        phone(
            seal(&key(1), &iv(1), &profile_json(APP, "o-judy", "not a phone")),
            iv(1),
        ),
        phone("####".into(), iv(1)),
        phone(
            seal(&key(1), &iv(1), &phone_json(APP, "1", "86")),
            "AAAA".into(),
        ),
    ];
    for request in cases {
        let err = h
            .service
            .update_phone_number(Request::new(request))
            .await
            .unwrap_err();
        assert_reason(&err, ErrorReason::DecryptFailed);
        assert_eq!(err.message(), DECRYPT_FAILED_MESSAGE);
        assert_eq!(get(&h, user.id).await, user);
    }
}

/// WeChat's own example from the WXBizDataCrypt demo.
const VECTOR_APP: &str = "wx4f4bc4dec97d474b";
const VECTOR_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
const VECTOR_IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
const VECTOR_OPENID: &str = "oGZUI0egBJY1zhBYw2KhdUfwVJJE";
const VECTOR_DATA: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";

async fn official_wechat_vector_through_update_profile(backend: Backend) {
    let h = Harness::new(backend).await;
    let (user, _) = ensure(&h, VECTOR_APP, VECTOR_OPENID, "").await;
    h.keys.rotate(VECTOR_APP, VECTOR_OPENID, VECTOR_KEY);
    let stored = update_profile(&h, profile_request(&user, VECTOR_DATA, VECTOR_IV))
        .await
        .unwrap();
    assert_eq!(stored.nickname, "Band");
    assert_eq!(stored.gender, 1);
    assert_eq!(stored.language, "zh_CN");
    assert_eq!(stored.city, "Guangzhou");
    assert_eq!(stored.province, "Guangdong");
    assert_eq!(stored.country, "CN");
    assert_eq!(stored.unionid, "ocMvos6NjeKLIBqg5Mr9QjxrP1FA");
    assert!(stored.avatar_url.starts_with("http://wx.qlogo.cn/mmopen/vi_32/aSKcBBPpibyKNicHNTMM0qJVh8Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0"));

    // The same vector presented as another app's data is refused.
    let (other, _) = ensure(&h, APP, VECTOR_OPENID, "").await;
    h.keys.rotate(APP, VECTOR_OPENID, VECTOR_KEY);
    let err = update_profile(&h, profile_request(&other, VECTOR_DATA, VECTOR_IV))
        .await
        .unwrap_err();
    assert_reason(&err, ErrorReason::DecryptFailed);
    assert_eq!(get(&h, other.id).await, other);
}

async fn migrations_run_twice(backend: Backend) {
    let h = Harness::new(backend).await;
    // `wxmp migrate` on an up-to-date database is a no-op, and the data survives.
    let (user, _) = ensure(&h, APP, "o-kim", "").await;
    user_service::migrate(&h.db.url).await.unwrap();
    user_service::migrate(&h.db.url).await.unwrap();
    assert_eq!(get(&h, user.id).await, user);
}
