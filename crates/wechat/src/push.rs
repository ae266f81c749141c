//! The mini program's message push (消息推送): how WeChat delivers events (shipping and
//! settlement, virtual payments, complaints...) to the developer's server.
//!
//! Written from WeChat's documents:
//! * the server check and the message format:
//!   <https://developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html>
//! * the safe-mode cipher (WeChat's `WXBizMsgCrypt` samples, the same scheme for official
//!   accounts and mini programs):
//!   <https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Message_encryption_and_decryption_instructions.html>
//!
//! The protocol:
//! * **GET check**: WeChat sends `signature`, `timestamp`, `nonce`, `echostr`; `signature` is the
//!   hex SHA-1 of the three strings `token`, `timestamp`, `nonce` sorted and concatenated. The
//!   server answers `echostr` verbatim when it matches.
//! * **Plaintext mode**: each POST carries the same `signature` query; the body is the message
//!   (JSON or XML, as chosen in the admin).
//! * **Safe mode**: the body is `{"ToUserName", "Encrypt"}` (or the XML equivalent) and the query
//!   adds `encrypt_type=aes` and `msg_signature`: the hex SHA-1 of `token`, `timestamp`, `nonce`
//!   and `Encrypt` sorted and concatenated. `Encrypt` is base64 of AES-256-CBC with
//!   key = base64decode(EncodingAESKey + "="), IV = the key's first 16 bytes, PKCS#7 padded to a
//!   multiple of 32 bytes, over `random(16) ‖ len(msg) as u32 big-endian ‖ msg ‖ appid`. The
//!   trailing appid must be ours.
//!
//! [`PushApp::open`] does all of it and also refuses a timestamp outside a window (a replayed
//! capture), so the caller gets either a [`PushMessage`] or a [`PushError`] and nothing else.
//!
//! ```
//! use wechat::push::{Mode, PushApp, PushQuery, signature};
//!
//! let app = PushApp::new("wx1", "token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", Mode::Plaintext).unwrap();
//! let query = PushQuery {
//!     signature: Some(signature(&["token", "1700000000", "n1"])),
//!     timestamp: Some("1700000000".into()),
//!     nonce: Some("n1".into()),
//!     ..PushQuery::default()
//! };
//! let body = br#"{"ToUserName":"gh_1","FromUserName":"o1","CreateTime":1700000000,"MsgType":"event","Event":"trade_manage_remind_access_api","msg":"hi"}"#;
//! let message = app.open(&query, body, 1_700_000_010, 300).unwrap();
//! assert_eq!(message.event, "trade_manage_remind_access_api");
//! assert_eq!(message.fields["msg"], "hi");
//! ```

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use quick_xml::events::Event as XmlEvent;
use quick_xml::reader::Reader;
use serde_json::{Map, Value};
use sha1::{Digest as _, Sha1};
use subtle::ConstantTimeEq as _;

/// Standard base64 that ignores the unused bits of the last character (see [`decode_aes_key`]).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// Largest push body accepted; WeChat's messages are about 1 KiB.
pub const MAX_PUSH_BYTES: usize = 64 * 1024;
/// Deepest XML nesting accepted in a message.
const MAX_XML_DEPTH: usize = 16;
/// WXBizMsgCrypt pads to a multiple of 32 bytes (not the AES block of 16).
const PAD_BLOCK: usize = 32;

/// How the app's push is configured in the mini-program admin (开发管理 → 消息推送).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 明文模式: the body is the message, authenticated by `signature` only.
    Plaintext,
    /// 安全模式: the body carries `Encrypt`, authenticated by `msg_signature`.
    Safe,
}

impl Mode {
    /// `plaintext` (or `plain`) and `safe` (or `aes`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plaintext" | "plain" => Some(Self::Plaintext),
            "safe" | "aes" => Some(Self::Safe),
            _ => None,
        }
    }
}

/// The format of a push body (JSON or XML, chosen in the admin; detected from the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// `<` first: XML; `{` first: JSON (after whitespace and a UTF-8 BOM).
    pub fn detect(body: &[u8]) -> Option<Self> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        match body.iter().find(|b| !b.is_ascii_whitespace())? {
            b'<' => Some(Self::Xml),
            b'{' => Some(Self::Json),
            _ => None,
        }
    }
}

/// Why a push was refused. Messages name no token or key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// The configured EncodingAESKey is not 43 base64 characters decoding to 32 bytes.
    #[error("the EncodingAESKey must be 43 characters of base64 (32 bytes)")]
    BadAesKey,
    /// The configured token is empty or not 3 to 32 letters and digits.
    #[error("the push token must be 3 to 32 letters or digits")]
    BadToken,
    /// `signature`, `timestamp` or `nonce` (or `msg_signature` in safe mode) is missing.
    #[error("missing query parameter {0}")]
    MissingParameter(&'static str),
    /// The signature does not match: not WeChat, or another token.
    #[error("signature mismatch")]
    BadSignature,
    /// The timestamp is not a number or lies outside the accepted window (a replay).
    #[error("timestamp outside the accepted window")]
    StaleTimestamp,
    /// The body is larger than [`MAX_PUSH_BYTES`].
    #[error("push body too large")]
    TooLarge,
    /// The body is neither JSON nor XML, or not the expected shape.
    #[error("malformed push body: {0}")]
    Malformed(String),
    /// Safe mode but no `Encrypt` in the body.
    #[error("safe mode push without Encrypt")]
    NotEncrypted,
    /// `Encrypt` is not base64 or not whole blocks.
    #[error("Encrypt is not valid base64 of whole AES blocks")]
    BadCiphertext,
    /// The PKCS#7 padding (to 32 bytes) is invalid: another key, or a corrupt message.
    #[error("bad padding")]
    BadPadding,
    /// The decrypted frame is too short or its length field runs past its end.
    #[error("bad message frame")]
    BadFrame,
    /// The appid at the end of the decrypted frame is not ours.
    #[error("appid does not match")]
    AppIdMismatch,
}

/// The query string WeChat adds to every push (GET check and POST).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct PushQuery {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    /// Only on the GET check.
    pub echostr: Option<String>,
    /// `aes` in safe mode.
    pub encrypt_type: Option<String>,
    /// Safe mode: the signature over the token, timestamp, nonce and `Encrypt`.
    pub msg_signature: Option<String>,
    /// Some pushes name the user.
    pub openid: Option<String>,
}

/// One opened push.
#[derive(Clone, Debug, PartialEq)]
pub struct PushMessage {
    /// `Event` for `MsgType=event`, else the `MsgType` (e.g. `text`); empty when neither.
    pub event: String,
    /// The message as JSON (XML is mapped: an element with children becomes an object, a
    /// repeated element an array, text a string).
    pub fields: Value,
    /// What identifies WeChat's retries of this push: `msgid|<MsgId>` when present, else
    /// `FromUserName|CreateTime|Event|<first 8 bytes of the SHA-256 of the message, hex>`.
    pub dedup_key: String,
}

/// The hex SHA-1 of `parts` sorted and concatenated: WeChat's `signature` (token, timestamp,
/// nonce) and `msg_signature` (the same plus `Encrypt`).
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for p in sorted {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

fn signature_matches(expected: &str, given: &str) -> bool {
    // Hex is case-insensitive; compare in constant time.
    let given = given.trim().to_ascii_lowercase();
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// One app's push configuration: the token and EncodingAESKey from the admin.
///
/// `Debug` shows neither.
#[derive(Clone)]
pub struct PushApp {
    appid: String,
    token: String,
    key: Option<[u8; 32]>,
    mode: Mode,
}

impl std::fmt::Debug for PushApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushApp")
            .field("appid", &self.appid)
            .field("token", &"<redacted>")
            .field("key", &"<redacted>")
            .field("mode", &self.mode)
            .finish()
    }
}

/// Decodes an EncodingAESKey (43 characters) to the 32-byte AES key.
pub fn decode_aes_key(encoding_aes_key: &str) -> Result<[u8; 32], PushError> {
    if encoding_aes_key.len() != 43 {
        return Err(PushError::BadAesKey);
    }
    let mut padded = String::with_capacity(44);
    padded.push_str(encoding_aes_key);
    padded.push('=');
    // WeChat's keys (its own sample's among them) leave non-zero bits after the 256th, which
    // a strict decoder refuses: WeChat's samples (Java, Python) ignore them.
    LENIENT
        .decode(padded)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(PushError::BadAesKey)
}

impl PushApp {
    /// `encoding_aes_key` may be empty in plaintext mode; it must be valid in safe mode.
    pub fn new(
        appid: &str,
        token: &str,
        encoding_aes_key: &str,
        mode: Mode,
    ) -> Result<Self, PushError> {
        // The admin allows 3 to 32 letters and digits.
        if !(3..=32).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(PushError::BadToken);
        }
        let key = match (mode, encoding_aes_key.is_empty()) {
            (Mode::Plaintext, true) => None,
            _ => Some(decode_aes_key(encoding_aes_key)?),
        };
        Ok(Self {
            appid: appid.to_owned(),
            token: token.to_owned(),
            key,
            mode,
        })
    }

    pub fn appid(&self) -> &str {
        &self.appid
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The GET check: `echostr` when `signature` matches (answer it verbatim), else an error.
    /// The timestamp window applies here too.
    pub fn check_url<'q>(
        &self,
        query: &'q PushQuery,
        now: i64,
        window_secs: i64,
    ) -> Result<&'q str, PushError> {
        self.check_signature(query, now, window_secs)?;
        query
            .echostr
            .as_deref()
            .ok_or(PushError::MissingParameter("echostr"))
    }

    /// `signature` over token, timestamp and nonce, and the timestamp within `window_secs` of
    /// `now`.
    fn check_signature(
        &self,
        query: &PushQuery,
        now: i64,
        window_secs: i64,
    ) -> Result<(), PushError> {
        let timestamp = query
            .timestamp
            .as_deref()
            .ok_or(PushError::MissingParameter("timestamp"))?;
        let nonce = query
            .nonce
            .as_deref()
            .ok_or(PushError::MissingParameter("nonce"))?;
        let given = query
            .signature
            .as_deref()
            .ok_or(PushError::MissingParameter("signature"))?;
        if !signature_matches(&signature(&[&self.token, timestamp, nonce]), given) {
            return Err(PushError::BadSignature);
        }
        // Checked after the signature: an unsigned caller learns nothing about our clock.
        let ts: i64 = timestamp.parse().map_err(|_| PushError::StaleTimestamp)?;
        if ts.abs_diff(now) > window_secs.unsigned_abs() {
            return Err(PushError::StaleTimestamp);
        }
        Ok(())
    }

    /// Verifies, decrypts (safe mode) and parses one POSTed push.
    ///
    /// Plaintext mode checks `signature`; safe mode checks `msg_signature` over the body's
    /// `Encrypt` (and `signature` too when WeChat sends it), decrypts and checks the appid.
    /// Both refuse a timestamp more than `window_secs` from `now`.
    pub fn open(
        &self,
        query: &PushQuery,
        body: &[u8],
        now: i64,
        window_secs: i64,
    ) -> Result<PushMessage, PushError> {
        if body.len() > MAX_PUSH_BYTES {
            return Err(PushError::TooLarge);
        }
        let format = Format::detect(body)
            .ok_or_else(|| PushError::Malformed("neither JSON nor XML".into()))?;
        match self.mode {
            Mode::Plaintext => {
                self.check_signature(query, now, window_secs)?;
                let fields = parse_body(body, format)?;
                Ok(message(fields))
            }
            Mode::Safe => {
                let outer = parse_body(body, format)?;
                let encrypt = outer
                    .get("Encrypt")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or(PushError::NotEncrypted)?;
                let timestamp = query
                    .timestamp
                    .as_deref()
                    .ok_or(PushError::MissingParameter("timestamp"))?;
                let nonce = query
                    .nonce
                    .as_deref()
                    .ok_or(PushError::MissingParameter("nonce"))?;
                let given = query
                    .msg_signature
                    .as_deref()
                    .ok_or(PushError::MissingParameter("msg_signature"))?;
                if !signature_matches(&signature(&[&self.token, timestamp, nonce, encrypt]), given)
                {
                    return Err(PushError::BadSignature);
                }
                if query.signature.is_some() {
                    self.check_signature(query, now, window_secs)?;
                }
                let ts: i64 = timestamp.parse().map_err(|_| PushError::StaleTimestamp)?;
                if ts.abs_diff(now) > window_secs.unsigned_abs() {
                    return Err(PushError::StaleTimestamp);
                }
                let plain = self.decrypt(encrypt)?;
                let inner_format = Format::detect(&plain)
                    .ok_or_else(|| PushError::Malformed("neither JSON nor XML".into()))?;
                Ok(message(parse_body(&plain, inner_format)?))
            }
        }
    }

    /// Decrypts a safe-mode `Encrypt` and checks its appid; answers the message bytes.
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<Vec<u8>, PushError> {
        let key = self.key.ok_or(PushError::BadAesKey)?;
        decrypt(&key, encrypt_b64, &self.appid)
    }

    /// Encrypts `msg` as WeChat does, with `random` as the 16 leading bytes. For tests and
    /// for answering WeChat with an encrypted reply.
    pub fn encrypt(&self, msg: &[u8], random: [u8; 16]) -> Result<String, PushError> {
        let key = self.key.ok_or(PushError::BadAesKey)?;
        Ok(encrypt(&key, msg, &self.appid, random))
    }
}

/// AES-256-CBC decryption of a safe-mode `Encrypt`, with the frame and the appid checked.
pub fn decrypt(key: &[u8; 32], encrypt_b64: &str, appid: &str) -> Result<Vec<u8>, PushError> {
    let mut buf = STANDARD
        .decode(encrypt_b64.trim())
        .map_err(|_| PushError::BadCiphertext)?;
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err(PushError::BadCiphertext);
    }
    let iv: [u8; 16] = key[..16].try_into().map_err(|_| PushError::BadAesKey)?;
    let plain = Aes256CbcDec::new(key.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| PushError::BadCiphertext)?;
    // PKCS#7 to 32 bytes: the last byte n in 1..=32, the last n bytes all n.
    let n = usize::from(*plain.last().ok_or(PushError::BadPadding)?);
    if n == 0 || n > PAD_BLOCK || n > plain.len() {
        return Err(PushError::BadPadding);
    }
    let (frame, pad) = plain.split_at(plain.len() - n);
    if pad.iter().any(|&b| usize::from(b) != n) {
        return Err(PushError::BadPadding);
    }
    // random(16) ‖ length (u32 BE) ‖ msg ‖ appid
    let header = frame.get(16..20).ok_or(PushError::BadFrame)?;
    let len = usize::try_from(u32::from_be_bytes(
        header.try_into().map_err(|_| PushError::BadFrame)?,
    ))
    .map_err(|_| PushError::BadFrame)?;
    let end = 20usize.checked_add(len).ok_or(PushError::BadFrame)?;
    let msg = frame.get(20..end).ok_or(PushError::BadFrame)?;
    let tail = frame.get(end..).ok_or(PushError::BadFrame)?;
    if !bool::from(tail.ct_eq(appid.as_bytes())) {
        return Err(PushError::AppIdMismatch);
    }
    Ok(msg.to_vec())
}

/// WeChat's encryption of a message (see the module documentation).
pub fn encrypt(key: &[u8; 32], msg: &[u8], appid: &str, random: [u8; 16]) -> String {
    let mut frame = Vec::with_capacity(20 + msg.len() + appid.len() + PAD_BLOCK);
    frame.extend_from_slice(&random);
    // A message is at most MAX_PUSH_BYTES in practice; saturate rather than wrap.
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    frame.extend_from_slice(appid.as_bytes());
    let n = PAD_BLOCK - frame.len() % PAD_BLOCK;
    let pad = u8::try_from(n).unwrap_or(32);
    frame.resize(frame.len() + n, pad);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let out = Aes256CbcEnc::new(key.into(), &iv.into()).encrypt_padded_vec_mut::<NoPadding>(&frame);
    STANDARD.encode(out)
}

fn message(fields: Value) -> PushMessage {
    let get = |name: &str| match fields.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let msg_type = get("MsgType");
    let event = match get("Event") {
        e if !e.is_empty() => e,
        _ => msg_type,
    };
    let msg_id = get("MsgId");
    let dedup_key = if msg_id.is_empty() {
        // Two different events can share the sender, second and name (WeChat pushes the
        // receipt and the settlement of an order at once when the user confirms): the digest
        // of the whole message tells them apart, and a retry (the same message) keeps it.
        let digest = sha2::Sha256::digest(fields.to_string().as_bytes());
        format!(
            "{}|{}|{}|{}",
            get("FromUserName"),
            get("CreateTime"),
            event,
            hex::encode(&digest[..8])
        )
    } else {
        format!("msgid|{msg_id}")
    };
    PushMessage {
        event,
        fields,
        dedup_key,
    }
}

/// Parses a push body (or a decrypted message) into JSON; the root must be an object.
pub fn parse_body(body: &[u8], format: Format) -> Result<Value, PushError> {
    if body.len() > MAX_PUSH_BYTES {
        return Err(PushError::TooLarge);
    }
    let value = match format {
        Format::Json => serde_json::from_slice::<Value>(body)
            .map_err(|e| PushError::Malformed(format!("JSON: {e}")))?,
        Format::Xml => xml_to_json(body)?,
    };
    if !value.is_object() {
        return Err(PushError::Malformed("not an object".into()));
    }
    Ok(value)
}

fn malformed(e: impl std::fmt::Display) -> PushError {
    PushError::Malformed(format!("XML: {e}"))
}

/// XML → JSON: the root's children become the object's fields; an element with children an
/// object; a repeated name an array; text (and CDATA) a string. No DTD, no entity but the
/// five predefined ones, at most [`MAX_XML_DEPTH`] levels.
pub fn xml_to_json(xml: &[u8]) -> Result<Value, PushError> {
    let text = std::str::from_utf8(xml).map_err(|_| malformed("not UTF-8"))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    // The open elements: name, children so far, text so far.
    let mut stack: Vec<(String, Map<String, Value>, String)> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        match reader.read_event().map_err(malformed)? {
            XmlEvent::DocType(_) => return Err(malformed("DOCTYPE is not allowed")),
            XmlEvent::PI(_) => return Err(malformed("processing instruction")),
            XmlEvent::Decl(_) | XmlEvent::Comment(_) => {}
            XmlEvent::Start(e) => {
                if root.is_some() {
                    return Err(malformed("content after the root"));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(malformed("nested too deep"));
                }
                let name = String::from_utf8(e.name().as_ref().to_vec())
                    .map_err(|_| malformed("name not UTF-8"))?;
                stack.push((name, Map::new(), String::new()));
            }
            XmlEvent::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec())
                    .map_err(|_| malformed("name not UTF-8"))?;
                match stack.last_mut() {
                    Some((_, children, _)) => insert(children, name, Value::String(String::new())),
                    None if root.is_none() => root = Some(Value::Object(Map::new())),
                    None => return Err(malformed("content after the root")),
                }
            }
            XmlEvent::Text(t) => {
                let s = t.decode().map_err(malformed)?;
                match stack.last_mut() {
                    Some((_, _, text)) => text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(malformed("text outside the root")),
                }
            }
            XmlEvent::GeneralRef(r) => {
                let Some((_, _, text)) = stack.last_mut() else {
                    return Err(malformed("reference outside the root"));
                };
                if let Some(ch) = r.resolve_char_ref().map_err(malformed)? {
                    text.push(ch);
                } else {
                    let name = r.decode().map_err(malformed)?;
                    text.push(match &*name {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        _ => return Err(malformed("unknown entity")),
                    });
                }
            }
            XmlEvent::CData(c) => {
                let Some((_, _, text)) = stack.last_mut() else {
                    return Err(malformed("CDATA outside the root"));
                };
                text.push_str(&c.decode().map_err(malformed)?);
            }
            XmlEvent::End(_) => {
                let Some((name, children, text)) = stack.pop() else {
                    return Err(malformed("unbalanced end"));
                };
                let value = if children.is_empty() {
                    Value::String(text)
                } else {
                    Value::Object(children)
                };
                match stack.last_mut() {
                    Some((_, parent, _)) => insert(parent, name, value),
                    None => {
                        root = Some(match value {
                            // `<xml></xml>`: an empty object.
                            Value::String(s) if s.trim().is_empty() => Value::Object(Map::new()),
                            v => v,
                        });
                    }
                }
            }
            XmlEvent::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(malformed("unclosed element"));
    }
    root.ok_or_else(|| malformed("no root element"))
}

fn insert(map: &mut Map<String, Value>, name: String, value: Value) {
    match map.get_mut(&name) {
        None => {
            map.insert(name, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn round_trip_and_tamper() {
        let app = PushApp::new("wx1", "tok", KEY, Mode::Safe).unwrap();
        let enc = app.encrypt(b"{\"a\":1}", [7; 16]).unwrap();
        assert_eq!(app.decrypt(&enc).unwrap(), b"{\"a\":1}");
        let other = PushApp::new("wx2", "tok", KEY, Mode::Safe).unwrap();
        assert_eq!(other.decrypt(&enc), Err(PushError::AppIdMismatch));
    }

    #[test]
    fn xml_nests_and_repeats() {
        let v = xml_to_json(
            b"<xml><A><![CDATA[x]]></A><B><C>1</C><C>2</C></B><D/><E>a &amp; b</E></xml>",
        )
        .unwrap();
        assert_eq!(v["A"], "x");
        assert_eq!(v["B"]["C"][1], "2");
        assert_eq!(v["D"], "");
        assert_eq!(v["E"], "a & b");
        assert!(xml_to_json(b"<!DOCTYPE x><xml/>").is_err());
        assert!(xml_to_json(b"<xml><a></xml>").is_err());
    }

    #[test]
    fn bad_keys_and_tokens_are_refused() {
        assert_eq!(
            PushApp::new("wx1", "tok", "short", Mode::Safe).unwrap_err(),
            PushError::BadAesKey
        );
        assert_eq!(
            PushApp::new("wx1", "", KEY, Mode::Safe).unwrap_err(),
            PushError::BadToken
        );
        assert!(PushApp::new("wx1", "tok", "", Mode::Plaintext).is_ok());
    }
}
