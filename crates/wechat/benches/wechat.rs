//! Micro-benchmarks of the pure (no network) parts of `wechat`.
//!
//! ```text
//! cargo bench -p wechat                                   # full run
//! cargo bench -p wechat -- --warm-up-time 1 --measurement-time 2   # quick run
//! cargo bench -p wechat -- pay/sign                       # one group
//! ```
//!
//! Inputs are realistic sizes: WeChat's own demo vector and a ~400-byte profile for user data,
//! the documented `unifiedorder` / notify field sets for Pay.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wechat::crypto;
use wechat::pay::{self, Fields, PayConfig, SignType, notify, sign, xml};

// --- user data -------------------------------------------------------------------------------

/// The official WXBizDataCrypt demo vector (`appid`, `session_key`, `iv`, `encryptedData`).
const DEMO_APPID: &str = "wx4f4bc4dec97d474b";
const DEMO_SESSION_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
const DEMO_IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
const DEMO_ENCRYPTED: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";

const PROFILE_APPID: &str = "wx1234567890abcdef";
const PROFILE_SESSION_KEY: &str = "HyVFkGl5F5OQWJZZaNzBBg==";
const PROFILE_IV: &str = "5r8tQ1f0m0wGJ4yQ2B3xAg==";

/// A typical `wx.getUserInfo` payload of about 400 bytes (Chinese names, long avatar URL).
fn profile_json() -> String {
    format!(
        r#"{{"openId":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","nickName":"小程序用户","gender":0,"language":"zh_CN","city":"广州","province":"广东","country":"中国","avatarUrl":"https://thirdwx.qlogo.cn/mmopen/vi_32/POgEwh4mIHO4nibH0KlMECNjjGxQUq24ZEaGT4poC6icRiccVGKSyXwibcPq4BWmiaIGuG1icwxaQX6grC9VemZoJ8rg/132","unionId":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA","watermark":{{"timestamp":1767225600,"appid":"{PROFILE_APPID}"}}}}"#
    )
}

fn bench_user_data(c: &mut Criterion) {
    let profile = profile_json();
    let profile_encrypted =
        crypto::encrypt(PROFILE_SESSION_KEY, PROFILE_IV, profile.as_bytes()).expect("encrypt");
    // Sanity: both vectors decrypt before we time them.
    crypto::decrypt_user_data(DEMO_SESSION_KEY, DEMO_ENCRYPTED, DEMO_IV, DEMO_APPID)
        .expect("demo vector");
    crypto::decrypt_user_data(
        PROFILE_SESSION_KEY,
        &profile_encrypted,
        PROFILE_IV,
        PROFILE_APPID,
    )
    .expect("profile");

    let cases = [
        (
            "demo_vector",
            DEMO_SESSION_KEY,
            DEMO_ENCRYPTED,
            DEMO_IV,
            DEMO_APPID,
        ),
        (
            "profile_400B",
            PROFILE_SESSION_KEY,
            profile_encrypted.as_str(),
            PROFILE_IV,
            PROFILE_APPID,
        ),
    ];

    let mut g = c.benchmark_group("crypto/decrypt");
    for (name, key, data, iv, _) in cases {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| crypto::decrypt(black_box(key), black_box(data), black_box(iv)));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("crypto/decrypt_user_data");
    for (name, key, data, iv, appid) in cases {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                crypto::decrypt_user_data(
                    black_box(key),
                    black_box(data),
                    black_box(iv),
                    black_box(appid),
                )
            });
        });
    }
    g.finish();
}

// --- WeChat Pay ------------------------------------------------------------------------------

const PAY_APPID: &str = "wx2421b1c4370ec43b";
const PAY_MCH_ID: &str = "10000100";
const PAY_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn pay_config(sign_type: SignType) -> PayConfig {
    PayConfig {
        sign_type,
        ..PayConfig::new(PAY_APPID, PAY_MCH_ID, PAY_KEY)
    }
}

/// What `WechatClient::unified_order` signs and sends, minus `sign` (13 fields).
fn unifiedorder_request_fields(sign_type: SignType) -> Fields {
    let mut f = Fields::new();
    for (k, v) in [
        ("appid", PAY_APPID),
        ("mch_id", PAY_MCH_ID),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
        ("body", "wxmp-T恤 白色 XL"),
        ("out_trade_no", "20260101120000123456"),
        ("total_fee", "8800"),
        ("spbill_create_ip", "123.12.12.123"),
        ("notify_url", "https://api.example.com/pay/notify"),
        ("trade_type", "JSAPI"),
        ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
        ("attach", "order:9f1c2d3e"),
        ("time_expire", "20260101123000"),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    if sign_type != SignType::Md5 {
        f.insert("sign_type".to_owned(), sign_type.as_str().to_owned());
    }
    f
}

fn pairs(fields: &Fields) -> impl Iterator<Item = (&str, &str)> + Clone {
    fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Signs `fields` and lays them out as WeChat does on the wire (one field per line, CDATA).
fn wechat_style_xml(mut fields: Vec<(&str, String)>, sign_type: SignType) -> String {
    let signature = sign(
        fields.iter().map(|(k, v)| (*k, v.as_str())),
        PAY_KEY,
        sign_type,
    );
    fields.push(("sign", signature));
    let mut out = String::from("<xml>\n");
    for (k, v) in &fields {
        out.push_str(&format!("  <{k}><![CDATA[{v}]]></{k}>\n"));
    }
    out.push_str("</xml>");
    out
}

/// The `unifiedorder` success response of WeChat Pay's document, signed with [`PAY_KEY`].
fn unifiedorder_response_xml() -> String {
    let fields = [
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", PAY_APPID),
        ("mch_id", PAY_MCH_ID),
        ("nonce_str", "IITRi8Iabbblz1Jc"),
        ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
        ("result_code", "SUCCESS"),
        ("prepay_id", "wx201411101639507cbf6ffd8b0779950874"),
        ("trade_type", "JSAPI"),
    ];
    wechat_style_xml(
        fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        SignType::Md5,
    )
}

/// The notify sample of WeChat Pay's "支付结果通知" document, signed with [`PAY_KEY`].
fn notify_xml(sign_type: SignType) -> String {
    let mut fields: Vec<(&str, String)> = [
        ("appid", PAY_APPID),
        ("attach", "支付测试"),
        ("bank_type", "CFT"),
        ("fee_type", "CNY"),
        ("is_subscribe", "Y"),
        ("mch_id", PAY_MCH_ID),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("out_trade_no", "1409811653"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("time_end", "20140903131540"),
        ("total_fee", "1"),
        ("coupon_fee", "10"),
        ("coupon_count", "1"),
        ("coupon_type", "CASH"),
        ("coupon_id", "10000"),
        ("coupon_fee_0", "100"),
        ("trade_type", "JSAPI"),
        ("transaction_id", "1004400740201409030005092168"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    if sign_type != SignType::Md5 {
        fields.push(("sign_type", sign_type.as_str().to_owned()));
    }
    wechat_style_xml(fields, sign_type)
}

fn bench_sign(c: &mut Criterion) {
    let mut g = c.benchmark_group("pay/sign");
    for (name, st) in [
        ("md5", SignType::Md5),
        ("hmac_sha256", SignType::HmacSha256),
    ] {
        let fields = unifiedorder_request_fields(st);
        g.bench_function(name, |b| {
            b.iter(|| sign(pairs(black_box(&fields)), black_box(PAY_KEY), st));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pay/verify");
    for (name, st) in [
        ("md5", SignType::Md5),
        ("hmac_sha256", SignType::HmacSha256),
    ] {
        let fields = unifiedorder_request_fields(st);
        let signature = sign(pairs(&fields), PAY_KEY, st);
        assert!(pay::verify(pairs(&fields), PAY_KEY, st, &signature));
        g.bench_function(name, |b| {
            b.iter(|| {
                pay::verify(
                    pairs(black_box(&fields)),
                    black_box(PAY_KEY),
                    st,
                    black_box(&signature),
                )
            });
        });
    }
    g.finish();
}

fn bench_xml(c: &mut Criterion) {
    let mut g = c.benchmark_group("pay/xml");

    let mut request = unifiedorder_request_fields(SignType::Md5);
    let signature = sign(pairs(&request), PAY_KEY, SignType::Md5);
    request.insert("sign".to_owned(), signature);
    g.bench_function("encode_unifiedorder_request", |b| {
        b.iter(|| xml::to_xml(pairs(black_box(&request))));
    });

    let response = unifiedorder_response_xml();
    assert_eq!(
        xml::parse(response.as_bytes()).expect("response")["prepay_id"],
        "wx201411101639507cbf6ffd8b0779950874"
    );
    g.throughput(Throughput::Bytes(response.len() as u64));
    g.bench_function("parse_unifiedorder_response", |b| {
        b.iter(|| xml::parse(black_box(response.as_bytes())));
    });

    let notify_body = notify_xml(SignType::Md5);
    g.throughput(Throughput::Bytes(notify_body.len() as u64));
    g.bench_function("parse_notify", |b| {
        b.iter(|| xml::parse(black_box(notify_body.as_bytes())));
    });
    g.finish();
}

fn bench_notify(c: &mut Criterion) {
    let mut g = c.benchmark_group("pay/verify_notify");
    for (name, st) in [
        ("md5", SignType::Md5),
        ("hmac_sha256", SignType::HmacSha256),
    ] {
        // The notify carries its own sign_type; the merchant config's is irrelevant here.
        let pay = pay_config(SignType::Md5);
        let body = notify_xml(st);
        let paid = notify::verify_notify(body.as_bytes(), &pay).expect("valid notify");
        assert_eq!(paid.total_fee, 1);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| notify::verify_notify(black_box(body.as_bytes()), black_box(&pay)));
        });
    }
    g.finish();
}

fn bench_request_payment(c: &mut Criterion) {
    let mut g = c.benchmark_group("pay/request_payment_params");
    for (name, st) in [
        ("md5", SignType::Md5),
        ("hmac_sha256", SignType::HmacSha256),
    ] {
        let pay = pay_config(st);
        g.bench_function(name, |b| {
            b.iter(|| {
                pay::request_payment_params(
                    black_box(&pay),
                    black_box("wx201411101639507cbf6ffd8b0779950874"),
                    black_box(1_767_225_600),
                    black_box("5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
                )
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_user_data,
    bench_sign,
    bench_xml,
    bench_notify,
    bench_request_payment
);
criterion_main!(benches);
