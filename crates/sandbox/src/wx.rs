//! WeChat's wire formats as WeChat itself writes and reads them: the Pay v2 signature, the Pay
//! XML, nonce strings, and the mini program's encrypted user data.
//!
//! Written from WeChat's documents and merchants' captures, never by calling `crates/wechat`:
//! the sandbox plays WeChat for that library's tests, so where the library misreads WeChat the
//! two must be able to disagree (issue 19: both once assumed HMAC notifies carry `sign_type`).
//! The sandbox's tests pin this code to the documents' own examples.

use std::{fmt, str::FromStr};

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use quick_xml::{events::Event, reader::Reader};
use rand::Rng;
use sha1::Sha1;
use sha2::Sha256;

/// Ordered key/value pairs: answers keep WeChat's documented field order.
pub type Pairs = Vec<(String, String)>;

/// The most a pay request body may hold (WeChat's messages are about 1 KiB).
pub const MAX_XML_BYTES: usize = 64 * 1024;

/// Pay v2's `sign_type`: "目前支持HMAC-SHA256和MD5，默认为MD5" (统一下单 request parameters,
/// https://pay.weixin.qq.com/wiki/doc/api/wxa/wxa_api.php?chapter=9_1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SignType {
    /// `MD5`, what an absent `sign_type` means in a request.
    #[default]
    Md5,
    /// `HMAC-SHA256`.
    HmacSha256,
}

impl SignType {
    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::HmacSha256 => "HMAC-SHA256",
        }
    }
}

impl fmt::Display for SignType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `sign_type` WeChat does not know ("sign_type参数格式错误").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sign_type参数格式错误")]
pub struct BadSignType;

impl FromStr for SignType {
    type Err = BadSignType;

    /// Exactly the documented spellings; WeChat refuses `md5` or `HMAC-SHA1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "MD5" => Ok(Self::Md5),
            "HMAC-SHA256" => Ok(Self::HmacSha256),
            _ => Err(BadSignType),
        }
    }
}

pub fn parse_sign_type(s: &str) -> Option<SignType> {
    s.parse().ok()
}

/// The string WeChat signs ("签名算法", 安全规范,
/// https://pay.weixin.qq.com/wiki/doc/api/wxa/wxa_api.php?chapter=4_3): every parameter with a
/// non-empty value except `sign`, ordered by parameter name in ASCII order, written
/// `name=value` and joined with `&`, then `&key=` and the merchant's API v2 key appended.
fn string_to_sign(pairs: &[(String, String)], key: &str) -> String {
    let mut kept: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(name, value)| name != "sign" && !value.is_empty())
        .collect();
    // Names are unique in a WeChat message; the value only keeps the order total.
    kept.sort();
    let mut s = String::with_capacity(512);
    for (name, value) in kept {
        s.push_str(name);
        s.push('=');
        s.push_str(value);
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(key);
    s
}

/// `sign` over `pairs` (the `sign` field and empty values are left out, so a parsed message can
/// be passed as is): MD5 of the string, or HMAC-SHA256 keyed with the API key
/// (`hash_hmac("sha256", stringSignTemp, key)`), both in upper-case hex, as in the document's
/// example (`9A0A8659F005D6984697E2CA0A9CF3B7` / `6A9AE165...DACD6`).
pub fn sign(pairs: &[(String, String)], key: &str, sign_type: SignType) -> String {
    let text = string_to_sign(pairs, key);
    match sign_type {
        SignType::Md5 => hex::encode_upper(Md5::digest(text.as_bytes())),
        SignType::HmacSha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
                .expect("HMAC takes a key of any length");
            mac.update(text.as_bytes());
            hex::encode_upper(mac.finalize().into_bytes())
        }
    }
}

/// Does `signature` match? Upper-case only, as WeChat writes it; compared without an early
/// exit so a caller cannot time its way to a valid signature.
pub fn verify(pairs: &[(String, String)], key: &str, sign_type: SignType, signature: &str) -> bool {
    let expected = sign(pairs, key, sign_type);
    expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Fields WeChat writes as plain text rather than CDATA. Its messages mix the two: the
/// payment notify sample of the 支付结果通知 document
/// (https://pay.weixin.qq.com/wiki/doc/api/wxa/wxa_api.php?chapter=9_7) and a notify captured
/// by a merchant (WxJava issue 1585, https://github.com/binarywang/WxJava/issues/1585) both
/// carry `<total_fee>1</total_fee>` among CDATA values such as `<cash_fee><![CDATA[1]]>`.
const PLAIN_FIELDS: [&str; 1] = ["total_fee"];

/// Writes a WeChat Pay message: `<xml>` with one element per field in the given order; the
/// [`PLAIN_FIELDS`] with numeric values as plain text, every other value in CDATA (a `]]>`
/// inside a value ends the section and opens another).
pub fn to_xml(pairs: &[(String, String)]) -> String {
    let mut xml = String::from("<xml>");
    for (name, value) in pairs {
        xml.push('<');
        xml.push_str(name);
        xml.push('>');
        let plain = PLAIN_FIELDS.contains(&name.as_str())
            && !value.is_empty()
            && value.bytes().all(|b| b.is_ascii_digit());
        if plain {
            xml.push_str(value);
        } else {
            xml.push_str("<![CDATA[");
            xml.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
            xml.push_str("]]>");
        }
        xml.push_str("</");
        xml.push_str(name);
        xml.push('>');
    }
    xml.push_str("</xml>");
    xml
}

/// The `<xml>` document as pairs (sorted by name), or why it is not one. Reads plain text,
/// character and predefined entity references and CDATA alike, refuses a DOCTYPE (WeChat's
/// "关于XML解析存在的安全问题指引" tells everyone to disable external entities), nesting,
/// a repeated field, and more than [`MAX_XML_BYTES`].
pub fn parse_xml(body: &[u8]) -> Result<Pairs, String> {
    if body.len() > MAX_XML_BYTES {
        return Err(format!("more than {MAX_XML_BYTES} bytes"));
    }
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_owned())?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let err = |e: &dyn fmt::Display| e.to_string();

    // depth 0: before <xml>; 1: inside <xml>; 2: inside a field; 3: after </xml>.
    let mut depth = 0u8;
    let mut field: Option<(String, String)> = None;
    let mut fields = std::collections::BTreeMap::new();
    loop {
        match reader.read_event().map_err(|e| err(&e))? {
            Event::Eof if depth == 3 => break,
            Event::Eof => return Err("unexpected end of document".into()),
            Event::DocType(_) => return Err("DOCTYPE is not accepted".into()),
            Event::PI(_) => return Err("processing instruction".into()),
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Start(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec())
                    .map_err(|_| "element name is not UTF-8".to_owned())?;
                match depth {
                    0 if name == "xml" => depth = 1,
                    0 => return Err("the root element must be <xml>".into()),
                    1 => {
                        field = Some((name, String::new()));
                        depth = 2;
                    }
                    2 => return Err(format!("element <{name}> inside a field")),
                    _ => return Err("content after </xml>".into()),
                }
            }
            Event::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec())
                    .map_err(|_| "element name is not UTF-8".to_owned())?;
                match depth {
                    0 if name == "xml" => depth = 3,
                    1 => {
                        if fields.insert(name.clone(), String::new()).is_some() {
                            return Err(format!("field {name} twice"));
                        }
                    }
                    _ => return Err(format!("unexpected <{name}/>")),
                }
            }
            Event::End(_) => match depth {
                2 => {
                    let (name, value) = field.take().unwrap_or_default();
                    if fields.insert(name.clone(), value).is_some() {
                        return Err(format!("field {name} twice"));
                    }
                    depth = 1;
                }
                1 => depth = 3,
                _ => return Err("unbalanced end tag".into()),
            },
            Event::Text(t) => {
                let t = t.decode().map_err(|e| err(&e))?;
                match field.as_mut() {
                    Some((_, value)) => value.push_str(&t),
                    None if t.trim_ascii().is_empty() => {}
                    None => return Err("text outside a field".into()),
                }
            }
            Event::CData(c) => match field.as_mut() {
                Some((_, value)) => value.push_str(&c.decode().map_err(|e| err(&e))?),
                None => return Err("CDATA outside a field".into()),
            },
            Event::GeneralRef(r) => {
                let Some((_, value)) = field.as_mut() else {
                    return Err("reference outside a field".into());
                };
                if let Some(ch) = r.resolve_char_ref().map_err(|e| err(&e))? {
                    value.push(ch);
                } else {
                    let name = r.decode().map_err(|e| err(&e))?;
                    let ch = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("unknown entity &{name};"))?;
                    value.push_str(ch);
                }
            }
        }
    }
    Ok(fields.into_iter().collect())
}

/// A nonce like WeChat's document example (`5K8264ILTKCH16CQ2502SI8ZNMTM67VS`): 32 characters
/// of upper-case letters and digits ("随机字符串，不长于32位").
pub fn nonce_str() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Why user data could not be encrypted (the key or IV is not 16 base64-encoded bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    #[error("session_key is not 16 base64-encoded bytes")]
    BadKey,
    #[error("iv is not 16 base64-encoded bytes")]
    BadIv,
}

fn sixteen_bytes(b64: &str) -> Option<[u8; 16]> {
    STANDARD.decode(b64).ok()?.try_into().ok()
}

/// encryptedData as the 加密数据解密算法 document describes it
/// (https://developers.weixin.qq.com/miniprogram/dev/framework/open-ability/signature.html and
/// its WXBizDataCrypt samples): AES-128-CBC with PKCS#7 padding, key =
/// Base64_Decode(session_key) (16 bytes), IV = Base64_Decode(iv), the ciphertext base64-encoded.
pub fn encrypt(session_key: &str, iv: &str, plain: &[u8]) -> Result<String, EncryptError> {
    let key = sixteen_bytes(session_key).ok_or(EncryptError::BadKey)?;
    let iv = sixteen_bytes(iv).ok_or(EncryptError::BadIv)?;
    let cipher = cbc::Encryptor::<aes::Aes128>::new(&key.into(), &iv.into());
    Ok(STANDARD.encode(cipher.encrypt_padded_vec_mut::<Pkcs7>(plain)))
}

/// The `signature` handed out with `rawData`: "signature = sha1( rawData + session_key )"
/// (数据签名校验, same document), lower-case hex.
pub fn raw_data_signature(raw_data: &str, session_key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(raw_data.as_bytes());
    sha1.update(session_key.as_bytes());
    hex::encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Pairs {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The example of the 安全规范 document.
    fn doc_example() -> Pairs {
        pairs(&[
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ])
    }
    const DOC_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    #[test]
    fn signs_the_document_example() {
        assert_eq!(
            string_to_sign(&doc_example(), DOC_KEY),
            "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100\
             &nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
        );
        assert_eq!(
            sign(&doc_example(), DOC_KEY, SignType::Md5),
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        );
        assert_eq!(
            sign(&doc_example(), DOC_KEY, SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn signs_the_request_payment_example() {
        // 小程序调起支付API (chapter=7_7): paySign = MD5(appId=wxd678efh567hg6787&nonceStr=
        // 5K8264ILTKCH16CQ2502SI8ZNMTM67VS&package=prepay_id=wx2017033010242291fcfe0db70013231072
        // &signType=MD5&timeStamp=1490840662&key=qazwsxedcrfvtgbyhnujmikolp111111).
        let params = pairs(&[
            ("appId", "wxd678efh567hg6787"),
            ("timeStamp", "1490840662"),
            ("nonceStr", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
            ("package", "prepay_id=wx2017033010242291fcfe0db70013231072"),
            ("signType", "MD5"),
        ]);
        assert_eq!(
            sign(&params, "qazwsxedcrfvtgbyhnujmikolp111111", SignType::Md5),
            "22D9B4E54AB1950F51E0649E8810ACD6"
        );
    }

    #[test]
    fn sign_skips_sign_and_empty_values_and_verify_is_exact() {
        let mut more = doc_example();
        more.push(("sign".into(), "ANYTHING".into()));
        more.push(("attach".into(), String::new()));
        let good = "9A0A8659F005D6984697E2CA0A9CF3B7";
        assert_eq!(sign(&more, DOC_KEY, SignType::Md5), good);
        assert!(verify(&more, DOC_KEY, SignType::Md5, good));
        assert!(!verify(&more, DOC_KEY, SignType::Md5, &good.to_lowercase()));
        assert!(!verify(&more, DOC_KEY, SignType::HmacSha256, good));
        assert!(!verify(&more, "another-key", SignType::Md5, good));
        assert!(!verify(&more, DOC_KEY, SignType::Md5, ""));
    }

    #[test]
    fn sign_types_are_spelled_as_documented() {
        assert_eq!(parse_sign_type("MD5"), Some(SignType::Md5));
        assert_eq!(parse_sign_type("HMAC-SHA256"), Some(SignType::HmacSha256));
        assert_eq!(parse_sign_type("md5"), None);
        assert_eq!(parse_sign_type("HMAC-SHA1"), None);
        assert_eq!(SignType::HmacSha256.to_string(), "HMAC-SHA256");
    }

    #[test]
    fn writes_xml_as_wechat_does() {
        let xml = to_xml(&pairs(&[
            ("return_code", "SUCCESS"),
            ("total_fee", "1"),
            ("cash_fee", "1"),
            ("attach", "a]]>b"),
        ]));
        assert_eq!(
            xml,
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><total_fee>1</total_fee>\
             <cash_fee><![CDATA[1]]></cash_fee><attach><![CDATA[a]]]]><![CDATA[>b]]></attach></xml>"
        );
        let back = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(
            back,
            pairs(&[
                ("attach", "a]]>b"),
                ("cash_fee", "1"),
                ("return_code", "SUCCESS"),
                ("total_fee", "1"),
            ])
        );
        // A total_fee that is not a number is never written bare.
        assert!(to_xml(&pairs(&[("total_fee", "1<2")])).contains("<![CDATA[1<2]]>"));
    }

    #[test]
    fn reads_the_document_notify_sample() {
        let sample = "<xml>\n<appid><![CDATA[wx2421b1c4370ec43b]]></appid>\n\
            <attach><![CDATA[支付测试]]></attach>\n<total_fee>1</total_fee>\n\
            <body>a &amp; b &#x4e2d;</body>\n<empty/><blank></blank></xml>";
        let fields = parse_xml(sample.as_bytes()).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                ("appid", "wx2421b1c4370ec43b"),
                ("attach", "支付测试"),
                ("blank", ""),
                ("body", "a & b 中"),
                ("empty", ""),
                ("total_fee", "1"),
            ])
        );
    }

    #[test]
    fn refuses_what_is_not_a_flat_message() {
        for bad in [
            "",
            "<xml>",
            "<root><a>1</a></root>",
            "<xml><a><b>1</b></a></xml>",
            "<xml><a>1</a><a>2</a></xml>",
            "<!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>",
            "<xml><a>&nbsp;</a></xml>",
            "<xml>text</xml>",
            "<xml><a>1</b></xml>",
            "<xml></xml><xml></xml>",
        ] {
            assert!(parse_xml(bad.as_bytes()).is_err(), "{bad}");
        }
        let big = format!("<xml><a>{}</a></xml>", "x".repeat(MAX_XML_BYTES));
        assert!(parse_xml(big.as_bytes()).is_err());
    }

    #[test]
    fn nonces_look_like_the_documents() {
        let n = nonce_str();
        assert_eq!(n.len(), 32);
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_ne!(n, nonce_str());
    }

    #[test]
    fn encrypts_as_wxbizdatacrypt_decrypts() {
        use aes::cipher::{BlockDecryptMut, KeyIvInit};
        // The session_key and iv of WeChat's WXBizDataCrypt demo.
        let key = "tiihtNczf5v6AKRyjwEUhQ==";
        let iv = "r7BXXKkLb8qrSNn05n0qiA==";
        let data = encrypt(key, iv, b"{\"openId\":\"o1\"}").unwrap();
        let raw = STANDARD.decode(&data).unwrap();
        assert_eq!(raw.len(), 16, "15 bytes pad to one block");
        let plain = cbc::Decryptor::<aes::Aes128>::new(
            &sixteen_bytes(key).unwrap().into(),
            &sixteen_bytes(iv).unwrap().into(),
        )
        .decrypt_padded_vec_mut::<Pkcs7>(&raw)
        .unwrap();
        assert_eq!(plain, b"{\"openId\":\"o1\"}");
        assert_eq!(encrypt("c2hvcnQ=", iv, b"x"), Err(EncryptError::BadKey));
        assert_eq!(encrypt(key, "not base64!", b"x"), Err(EncryptError::BadIv));
    }

    #[test]
    fn raw_data_signature_is_sha1_of_raw_data_and_key() {
        // sha1("abc") is the FIPS 180 test vector; here rawData "ab" + session_key "c".
        assert_eq!(
            raw_data_signature("ab", "c"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
