//! Virtual payment's delivery push (`xpay_goods_deliver_notify`) as pay-service reads it after
//! the message-push layer: `wechat::xpay::GoodsDeliverNotify` from arbitrary JSON, and the
//! signature checks (`paySig`, user-state `signature`) on arbitrary strings. Must never panic;
//! a parsed push re-serialises and parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat::xpay::{self, GoodsDeliverNotify};

fuzz_target!(|data: &[u8]| {
    if let Ok(push) = serde_json::from_slice::<GoodsDeliverNotify>(data) {
        let again = serde_json::to_vec(&push).expect("serialise");
        let back: GoodsDeliverNotify = serde_json::from_slice(&again).expect("round trip");
        assert_eq!(back, push);
    }
    let text = String::from_utf8_lossy(data);
    // Halves at a char boundary (the lossy text may hold multi-byte characters).
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (key, rest) = text.split_at(mid);
    assert!(!xpay::verify_pay_sig_for_request(key, rest, "not hex"));
    let sig = xpay::user_signature(key, rest);
    assert!(xpay::verify_user_signature(key, rest, &sig));
});
