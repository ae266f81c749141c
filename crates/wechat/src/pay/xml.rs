//! WeChat Pay v2's flat XML: `<xml><field><![CDATA[value]]></field>...</xml>`.
//!
//! The parser accepts exactly that shape and nothing that costs more than reading the input:
//! a size limit, no DTD (so no entity expansion), only the five predefined entities and
//! character references, no nesting below a field.
//!
//! ```
//! use wechat::pay::xml;
//!
//! let doc = xml::to_xml([("return_code", "SUCCESS"), ("body", "a]]>b")]);
//! let fields = xml::parse(doc.as_bytes()).unwrap();
//! assert_eq!(fields["return_code"], "SUCCESS");
//! assert_eq!(fields["body"], "a]]>b");
//!
//! let plain = xml::parse(b"<xml><total_fee>1</total_fee><body>a &amp; b</body></xml>").unwrap();
//! assert_eq!(plain["body"], "a & b");
//! ```

use std::collections::BTreeMap;

use quick_xml::events::{BytesRef, Event};
use quick_xml::reader::Reader;

/// Largest document [`parse`] accepts; WeChat's messages are about 1 KiB.
pub const MAX_XML_BYTES: usize = 64 * 1024;

/// The fields of a message, by name.
pub type Fields = BTreeMap<String, String>;

/// Why a document was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// Larger than [`MAX_XML_BYTES`].
    #[error("XML document larger than {MAX_XML_BYTES} bytes")]
    TooLarge,
    /// Not well-formed, or not a `<xml>` root.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// A `<!DOCTYPE>` (and with it any entity declaration).
    #[error("DOCTYPE is not allowed")]
    DoctypeNotAllowed,
    /// An element inside a field.
    #[error("nested elements are not allowed")]
    NotFlat,
    /// The same field twice: ambiguous, so refused rather than guessed.
    #[error("duplicate field {0}")]
    DuplicateField(String),
    /// The bytes are not UTF-8.
    #[error("XML is not UTF-8")]
    NotUtf8,
    /// An entity other than the five predefined ones.
    #[error("unknown entity &{0};")]
    UnknownEntity(String),
}

/// Writes a message, every value in CDATA (a `]]>` inside a value is split across two sections).
///
/// Names must be valid XML names; WeChat's are `[a-z_]+`.
pub fn to_xml<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("<xml>");
    for (name, value) in fields {
        out.push('<');
        out.push_str(name);
        out.push_str("><![CDATA[");
        let mut rest = value;
        while let Some(i) = rest.find("]]>") {
            // End the section after "]]" and start a new one for ">".
            out.push_str(&rest[..i + 2]);
            out.push_str("]]><![CDATA[");
            rest = &rest[i + 2..];
        }
        out.push_str(rest);
        out.push_str("]]></");
        out.push_str(name);
        out.push('>');
    }
    out.push_str("</xml>");
    out
}

fn malformed(e: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed(e.to_string())
}

fn resolve(reference: &BytesRef<'_>, into: &mut String) -> Result<(), XmlError> {
    if let Some(ch) = reference.resolve_char_ref().map_err(malformed)? {
        into.push(ch);
        return Ok(());
    }
    let name = reference.decode().map_err(malformed)?;
    into.push(match &*name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        other => return Err(XmlError::UnknownEntity(other.to_owned())),
    });
    Ok(())
}

fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Parses a flat message into its fields.
///
/// Work is linear in the input, which is at most [`MAX_XML_BYTES`].
pub fn parse(xml: &[u8]) -> Result<Fields, XmlError> {
    parse_root(xml, b"xml")
}

/// [`parse`] for a flat document whose root element is `root` (the decrypted `req_info` of a
/// refund notify is a `<root>` document).
pub fn parse_root(xml: &[u8], root: &[u8]) -> Result<Fields, XmlError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(xml).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;

    let mut fields = Fields::new();
    let mut root_seen = false;
    let mut root_closed = false;
    // The open field and its value; `None` between fields.
    let mut current: Option<(String, String)> = None;

    loop {
        let event = reader.read_event().map_err(malformed)?;
        match event {
            Event::DocType(_) => return Err(XmlError::DoctypeNotAllowed),
            Event::Decl(_) | Event::Comment(_) => {}
            Event::PI(_) => return Err(malformed("processing instruction")),
            Event::Start(_) | Event::Empty(_) if current.is_some() => {
                return Err(XmlError::NotFlat);
            }
            Event::Start(e) if !root_seen => {
                if e.name().as_ref() != root {
                    return Err(malformed("root element must be <xml>"));
                }
                root_seen = true;
            }
            Event::Empty(e) if !root_seen => {
                if e.name().as_ref() != root {
                    return Err(malformed("root element must be <xml>"));
                }
                root_seen = true;
                root_closed = true;
            }
            Event::Start(_) | Event::Empty(_) if root_closed => {
                return Err(malformed("content after the root element"));
            }
            Event::Start(e) => {
                let name = std::str::from_utf8(e.name().as_ref())
                    .map_err(|_| XmlError::NotUtf8)?
                    .to_owned();
                current = Some((name, String::new()));
            }
            Event::Empty(e) => {
                let name = std::str::from_utf8(e.name().as_ref())
                    .map_err(|_| XmlError::NotUtf8)?
                    .to_owned();
                insert(&mut fields, name, String::new())?;
            }
            Event::End(_) => match current.take() {
                Some((name, value)) => insert(&mut fields, name, value)?,
                None => root_closed = true,
            },
            Event::Text(t) => {
                let t = t.decode().map_err(malformed)?;
                match current.as_mut() {
                    Some((_, value)) => value.push_str(&t),
                    None if is_xml_whitespace(&t) => {}
                    None => return Err(malformed("text outside a field")),
                }
            }
            Event::CData(c) => match current.as_mut() {
                Some((_, value)) => value.push_str(&c.decode().map_err(malformed)?),
                None => return Err(malformed("CDATA outside a field")),
            },
            Event::GeneralRef(r) => match current.as_mut() {
                Some((_, value)) => resolve(&r, value)?,
                None => return Err(malformed("reference outside a field")),
            },
            Event::Eof => {
                return if root_closed {
                    Ok(fields)
                } else {
                    Err(malformed("unexpected end of document"))
                };
            }
        }
    }
}

fn insert(fields: &mut Fields, name: String, value: String) -> Result<(), XmlError> {
    use std::collections::btree_map::Entry;
    match fields.entry(name) {
        Entry::Occupied(e) => Err(XmlError::DuplicateField(e.key().clone())),
        Entry::Vacant(e) => {
            e.insert(value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Fields {
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn wechat_sample_with_whitespace_and_decl() {
        let f = ok(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xml>\n  <return_code><![CDATA[SUCCESS]]></return_code>\n  <total_fee>1</total_fee>\n  <!-- c -->\n</xml>\n",
        );
        assert_eq!(f.len(), 2);
        assert_eq!(f["return_code"], "SUCCESS");
        assert_eq!(f["total_fee"], "1");
    }

    #[test]
    fn cdata_split_round_trip() {
        let doc = to_xml([("a", "x]]>y]]>"), ("b", "]]]]>>")]);
        assert_eq!(
            doc,
            "<xml><a><![CDATA[x]]]]><![CDATA[>y]]]]><![CDATA[>]]></a><b><![CDATA[]]]]]]><![CDATA[>>]]></b></xml>"
        );
        let f = ok(&doc);
        assert_eq!(f["a"], "x]]>y]]>");
        assert_eq!(f["b"], "]]]]>>");
    }

    #[test]
    fn escapes_and_char_refs() {
        let f = ok("<xml><a>&lt;&gt;&amp;&quot;&apos;&#65;&#x42;</a><b/><c></c></xml>");
        assert_eq!(f["a"], "<>&\"'AB");
        assert_eq!(f["b"], "");
        assert_eq!(f["c"], "");
    }

    #[test]
    fn rejects() {
        let doctype =
            "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY e \"boom\">]><xml><a>&e;</a></xml>";
        assert_eq!(parse(doctype.as_bytes()), Err(XmlError::DoctypeNotAllowed));
        assert_eq!(
            parse(b"<xml><a>&e;</a></xml>"),
            Err(XmlError::UnknownEntity("e".into()))
        );
        assert_eq!(parse(b"<xml><a><b>1</b></a></xml>"), Err(XmlError::NotFlat));
        assert_eq!(parse(b"<xml><a><b/></a></xml>"), Err(XmlError::NotFlat));
        assert_eq!(
            parse(b"<xml><a>1</a><a>2</a></xml>"),
            Err(XmlError::DuplicateField("a".into()))
        );
        assert_eq!(parse(b"<xml><a>\xff</a></xml>"), Err(XmlError::NotUtf8));
        let big = format!("<xml><a>{}</a></xml>", "x".repeat(MAX_XML_BYTES));
        assert_eq!(parse(big.as_bytes()), Err(XmlError::TooLarge));
        for bad in [
            "",
            "<xml>",
            "<xml><a>1</b></xml>",
            "<root><a>1</a></root>",
            "<xml><a>1</a></xml><xml/>",
            "<xml>text<a>1</a></xml>",
            "<xml><a>1</a></xml>trailing",
            "<xml><a>1</xml>",
            "<xml><?pi x?></xml>",
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(XmlError::Malformed(_))),
                "{bad:?} -> {:?}",
                parse(bad.as_bytes())
            );
        }
    }

    #[test]
    fn empty_root() {
        assert!(ok("<xml/>").is_empty());
        assert!(ok("<xml></xml>").is_empty());
    }
}
