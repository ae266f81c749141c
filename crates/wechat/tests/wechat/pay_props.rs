//! Property tests of the XML codec and the signature.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wechat::pay::sign::{SignType, sign};
use wechat::pay::xml;

/// Characters XML 1.0 can carry (no other control characters, no surrogates, no U+FFFE/FFFF).
fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('\t'),
        Just('\n'),
        Just('\r'),
        Just(']'),
        Just('>'),
        Just('<'),
        Just('&'),
        prop::char::range('\u{20}', '\u{D7FF}'),
        prop::char::range('\u{E000}', '\u{FFFD}'),
        prop::char::range('\u{10000}', '\u{10FFFF}'),
    ]
}

fn xml_string() -> impl Strategy<Value = String> {
    prop::collection::vec(xml_char(), 0..40).prop_map(|v| v.into_iter().collect())
}

fn sign_type() -> impl Strategy<Value = SignType> {
    prop_oneof![Just(SignType::Md5), Just(SignType::HmacSha256)]
}

proptest! {
    #[test]
    fn xml_round_trip(m in prop::collection::btree_map("[a-z_]{1,20}", xml_string(), 0..12)) {
        let doc = xml::to_xml(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        prop_assert_eq!(xml::parse(doc.as_bytes()).unwrap(), m);
    }

    #[test]
    fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = xml::parse(&bytes);
    }

    #[test]
    fn parse_never_panics_on_xmlish(s in "[<>/a-z!\\[\\]CDATA&;#x0-9 ?=\"]{0,120}") {
        let _ = xml::parse(format!("<xml>{s}</xml>").as_bytes());
    }

    #[test]
    fn sign_ignores_order_empty_values_and_sign(
        m in prop::collection::btree_map("[a-z_]{1,20}", "[ -~]{1,20}", 1..10),
        empties in prop::collection::btree_set("[a-z_]{1,20}", 0..4),
        seed in any::<u64>(),
        st in sign_type(),
        key in "[A-Za-z0-9]{32}",
    ) {
        let m: BTreeMap<String, String> = m.into_iter().filter(|(k, _)| k != "sign").collect();
        let expected = sign(m.iter().map(|(k, v)| (k.as_str(), v.as_str())), &key, st);

        let mut shuffled: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for e in &empties {
            if !m.contains_key(e) {
                shuffled.push((e.as_str(), ""));
            }
        }
        shuffled.push(("sign", "FORGED"));
        // A deterministic Fisher-Yates shuffle driven by `seed`.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(sign(shuffled, &key, st), expected);
    }

    #[test]
    fn sign_depends_on_values_and_key(
        m in prop::collection::btree_map("[a-z_]{1,20}", "[ -~]{1,20}", 1..10),
        st in sign_type(),
    ) {
        let pairs = || m.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let a = sign(pairs(), "key-a", st);
        prop_assert_ne!(&a, &sign(pairs(), "key-b", st));
        let changed = pairs().map(|(k, v)| (k, if k == m.keys().next().unwrap() { "changed!" } else { v }));
        if m.values().next().unwrap() != "changed!" && m.keys().next().unwrap() != "sign" {
            prop_assert_ne!(&a, &sign(changed, "key-a", st));
        }
    }
}
