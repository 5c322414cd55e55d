//! Pure parsing of a camera callback (DECISIONS §4): `multipart/form-data` with the fields
//! `app_id, random, timestamp, sign, payload` → a typed [`Callback`]; the multipart syntax itself
//! is [`crate::net::multipart`]'s (shared with the local API). No I/O, so it is unit
//! tested and fuzzed (`agent/fuzz/fuzz_targets/hook_multipart.rs`) without a server.
//!
//! The body is already bounded by the receiver (`hook.max_body_bytes`), so it is parsed whole.
//! Strict where ambiguity could be abused (a field given twice is refused: which copy was
//! signed?), tolerant where firmware varies (unknown fields and part headers are ignored).

use bytes::Bytes;

use crate::event::{EventError, EventView};
pub use crate::net::multipart::encode_multipart;
use crate::net::multipart::{self, MultipartError};

/// Parts beyond this many are refused: five are expected, a few extra are tolerated.
pub const MAX_PARTS: usize = 32;

/// One parsed callback. `sign` is `None` when the field is absent or empty (unsigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub app_id: String,
    pub random: String,
    pub timestamp: String,
    pub sign: Option<String>,
    /// The event JSON exactly as received (it is what the sign covers and what is stored).
    pub payload: String,
}

impl Callback {
    /// The parameters the sign covers, plus `sign` itself (DECISIONS §4).
    pub fn sign_params(&self) -> Vec<(&str, &str)> {
        let mut p = vec![
            ("app_id", self.app_id.as_str()),
            ("payload", self.payload.as_str()),
            ("random", self.random.as_str()),
            ("timestamp", self.timestamp.as_str()),
        ];
        if let Some(s) = &self.sign {
            p.push(("sign", s.as_str()));
        }
        p
    }

    /// Checks that the payload is an event (typed view; unknown fields are fine).
    pub fn event(&self) -> Result<EventView<'_>, EventError> {
        EventView::parse(self.payload.as_bytes())
    }

    pub fn payload_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.payload.as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("content type is not multipart/form-data: {0:?}")]
    ContentType(String),
    #[error("multipart boundary missing or invalid")]
    Boundary,
    #[error("multipart body is truncated")]
    Truncated,
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("too many parts (more than {MAX_PARTS})")]
    TooManyParts,
    #[error("field `{0}` given more than once")]
    DuplicateField(&'static str),
    #[error("field `{0}` is not UTF-8")]
    NotUtf8(&'static str),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
}

impl From<MultipartError> for ParseError {
    fn from(e: MultipartError) -> Self {
        match e {
            MultipartError::ContentType(ct) => ParseError::ContentType(ct),
            MultipartError::Boundary => ParseError::Boundary,
            MultipartError::Truncated => ParseError::Truncated,
            MultipartError::Malformed(m) => ParseError::Malformed(m),
            MultipartError::TooManyParts(_) => ParseError::TooManyParts,
        }
    }
}

impl ParseError {
    /// Stable label for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::ContentType(_) => "content_type",
            ParseError::Boundary => "boundary",
            ParseError::Truncated => "truncated",
            ParseError::Malformed(_) => "malformed",
            ParseError::TooManyParts => "too_many_parts",
            ParseError::DuplicateField(_) => "duplicate_field",
            ParseError::NotUtf8(_) => "not_utf8",
            ParseError::MissingField(_) => "missing_field",
        }
    }
}

/// The boundary of a `Content-Type: multipart/form-data; boundary=...` header value.
pub fn boundary_from_content_type(ct: &str) -> Result<String, ParseError> {
    Ok(multipart::boundary_from_content_type(ct)?)
}

/// Parses a whole multipart body with `boundary` into a [`Callback`].
pub fn parse_callback(body: &[u8], boundary: &str) -> Result<Callback, ParseError> {
    const NAMES: [&str; 5] = ["app_id", "random", "timestamp", "sign", "payload"];
    let mut fields: [Option<&[u8]>; 5] = [None; 5];
    for part in multipart::parse_parts(body, boundary, MAX_PARTS)? {
        // Unknown fields are ignored: firmware may add some, and they are not signed.
        if let Some(i) = NAMES.iter().position(|n| *n == part.name) {
            if fields[i].is_some() {
                return Err(ParseError::DuplicateField(NAMES[i]));
            }
            fields[i] = Some(part.content);
        }
    }
    let text = |i: usize| -> Result<Option<String>, ParseError> {
        fields[i]
            .map(|b| {
                std::str::from_utf8(b)
                    .map(str::to_owned)
                    .map_err(|_| ParseError::NotUtf8(NAMES[i]))
            })
            .transpose()
    };
    let required = |i: usize| -> Result<String, ParseError> {
        text(i)?.ok_or(ParseError::MissingField(NAMES[i]))
    };
    Ok(Callback {
        app_id: required(0)?,
        random: required(1)?,
        timestamp: required(2)?,
        payload: required(4)?,
        sign: text(3)?.filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "------------------------c83c36cd4ee4082f";
    const EVENT: &str = r#"{"event_id":1,"detect_type":2,"video_url":"https://10.10.63.19/a.flv?auth_key=1","event_type":"dynamic_detect_event","sn":"SS101D8BS00080","report_time":1579158765}"#;

    fn fields() -> Vec<(&'static str, &'static str)> {
        vec![
            ("app_id", "123"),
            ("random", "692777"),
            ("timestamp", "1579158766"),
            ("sign", "372F669601E8347737744FFC88B74665"),
            ("payload", EVENT),
        ]
    }

    #[test]
    fn the_spec_example_parses() {
        let body = encode_multipart(&fields(), B);
        let cb = parse_callback(&body, B).unwrap();
        assert_eq!(cb.app_id, "123");
        assert_eq!(cb.random, "692777");
        assert_eq!(cb.timestamp, "1579158766");
        assert_eq!(cb.sign.as_deref(), Some("372F669601E8347737744FFC88B74665"));
        assert_eq!(cb.payload, EVENT);
        assert_eq!(cb.event().unwrap().sn, "SS101D8BS00080");
        assert_eq!(cb.sign_params().len(), 5);
    }

    #[test]
    fn curl_style_headers_preamble_and_extra_fields_are_tolerated() {
        let mut body = b"preamble\r\n".to_vec();
        for (k, v) in fields() {
            body.extend_from_slice(
                format!("--{B}  \r\ncontent-disposition: form-data; name={k}\r\nContent-Type: text/plain\r\n\r\n{v}\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{B}\r\nContent-Disposition: form-data; name=\"extra\"; filename=\"a;b\"\r\n\r\nx\r\n--{B}--\r\nepilogue").as_bytes());
        let cb = parse_callback(&body, B).unwrap();
        assert_eq!(cb.payload, EVENT);
    }

    #[test]
    fn content_type_and_boundary() {
        assert_eq!(
            boundary_from_content_type("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary_from_content_type("Multipart/Form-Data; charset=x; boundary=\"a b\"").unwrap(),
            "a b"
        );
        assert!(matches!(
            boundary_from_content_type("application/json"),
            Err(ParseError::ContentType(_))
        ));
        assert_eq!(
            boundary_from_content_type("multipart/form-data"),
            Err(ParseError::Boundary)
        );
        assert_eq!(
            boundary_from_content_type("multipart/form-data; boundary="),
            Err(ParseError::Boundary)
        );
    }

    #[test]
    fn truncated_bodies_are_truncated() {
        let body = encode_multipart(&fields(), B);
        // Every strict prefix is an error, never a panic nor a success.
        for n in 0..body.len() - 4 {
            let r = parse_callback(&body[..n], B);
            assert!(r.is_err(), "prefix {n} parsed: {r:?}");
        }
        assert_eq!(
            parse_callback(&body[..body.len() / 2], B),
            Err(ParseError::Truncated)
        );
    }

    #[test]
    fn missing_duplicate_unsigned() {
        let mut f = fields();
        f.retain(|(k, _)| *k != "payload");
        assert_eq!(
            parse_callback(&encode_multipart(&f, B), B),
            Err(ParseError::MissingField("payload"))
        );
        let mut f = fields();
        f.retain(|(k, _)| *k != "sign");
        assert_eq!(
            parse_callback(&encode_multipart(&f, B), B).unwrap().sign,
            None
        );
        let mut f = fields();
        f[3].1 = "";
        assert_eq!(
            parse_callback(&encode_multipart(&f, B), B).unwrap().sign,
            None
        );
        let mut f = fields();
        f.push(("app_id", "other"));
        assert_eq!(
            parse_callback(&encode_multipart(&f, B), B),
            Err(ParseError::DuplicateField("app_id"))
        );
    }

    #[test]
    fn malformed_parts() {
        let body = format!("--{B}\r\nX-Nothing: 1\r\n\r\nv\r\n--{B}--\r\n");
        assert!(matches!(
            parse_callback(body.as_bytes(), B),
            Err(ParseError::Malformed(_))
        ));
        let body = format!("--{B}garbage\r\n\r\nv\r\n--{B}--");
        assert!(matches!(
            parse_callback(body.as_bytes(), B),
            Err(ParseError::Malformed(_))
        ));
        let mut raw = Vec::new();
        for (k, v) in fields() {
            raw.extend_from_slice(
                format!("--{B}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n").as_bytes(),
            );
            raw.extend_from_slice(if k == "payload" {
                b"\xff\xfe"
            } else {
                v.as_bytes()
            });
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(format!("--{B}--").as_bytes());
        assert_eq!(parse_callback(&raw, B), Err(ParseError::NotUtf8("payload")));
        let mut many = Vec::new();
        for _ in 0..=MAX_PARTS {
            many.push(("x", "y"));
        }
        assert_eq!(
            parse_callback(&encode_multipart(&many, B), B),
            Err(ParseError::TooManyParts)
        );
        assert_eq!(parse_callback(b"", ""), Err(ParseError::Boundary));
    }

    #[test]
    fn payload_not_an_event() {
        let mut f = fields();
        f[4].1 = "not json";
        let cb = parse_callback(&encode_multipart(&f, B), B).unwrap();
        assert!(cb.event().is_err());
    }
}
