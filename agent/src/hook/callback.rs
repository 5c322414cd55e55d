//! Pure parsing of a camera callback (DECISIONS §4): `multipart/form-data` with the fields
//! `app_id, random, timestamp, sign, payload` → a typed [`Callback`]. No I/O, so it is unit
//! tested and fuzzed (`agent/fuzz/fuzz_targets/hook_multipart.rs`) without a server.
//!
//! The body is already bounded by the receiver (`hook.max_body_bytes`), so it is parsed whole.
//! Strict where ambiguity could be abused (a field given twice is refused: which copy was
//! signed?), tolerant where firmware varies (unknown fields and part headers are ignored).

use bytes::Bytes;

use crate::event::{EventError, EventView};

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
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(ParseError::ContentType(ct.chars().take(100).collect()));
    }
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            // RFC 2046: 1..=70 characters; control characters would break the line structure.
            if v.is_empty() || v.len() > 70 || v.bytes().any(|b| b.is_ascii_control()) {
                return Err(ParseError::Boundary);
            }
            return Ok(v.to_owned());
        }
    }
    Err(ParseError::Boundary)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `name` parameter of a `Content-Disposition: form-data; name="..."` value.
fn disposition_name(value: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        let (param, tail) = split_param(rest);
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case("name") {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                return Some(v.to_owned());
            }
        }
        rest = tail?;
    }
}

/// Splits off one `;`-separated parameter, honouring double quotes (a quoted `filename` may
/// hold `;`).
fn split_param(s: &str) -> (&str, Option<&str>) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return (&s[..i], Some(&s[i + 1..])),
            _ => {}
        }
    }
    (s, None)
}

/// Parses a whole multipart body with `boundary` into a [`Callback`].
pub fn parse_callback(body: &[u8], boundary: &str) -> Result<Callback, ParseError> {
    if boundary.is_empty() {
        return Err(ParseError::Boundary);
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut crlf_delim = Vec::with_capacity(delim.len() + 2);
    crlf_delim.extend_from_slice(b"\r\n");
    crlf_delim.extend_from_slice(delim);

    // The first delimiter opens the body, or follows a preamble and a CRLF.
    let mut pos = if body.starts_with(delim) {
        delim.len()
    } else {
        find(body, &crlf_delim).ok_or(ParseError::Truncated)? + crlf_delim.len()
    };
    let mut fields: [Option<&[u8]>; 5] = [None; 5];
    const NAMES: [&str; 5] = ["app_id", "random", "timestamp", "sign", "payload"];
    let mut parts = 0usize;
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            break; // close delimiter; the epilogue is ignored
        }
        // Transport padding (RFC 2046) then the CRLF ending the delimiter line.
        let pad = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        let rest = &rest[pad..];
        if rest.len() < 2 {
            return Err(ParseError::Truncated);
        }
        if !rest.starts_with(b"\r\n") {
            return Err(ParseError::Malformed("delimiter line not ended by CRLF"));
        }
        let part_start = pos + pad + 2;
        let part = &body[part_start..];
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ParseError::TooManyParts);
        }
        // Headers end at the first empty line (a part with no headers starts with CRLF).
        let (headers, content_start) = if part.starts_with(b"\r\n") {
            (&part[..0], 2)
        } else {
            let end = find(part, b"\r\n\r\n").ok_or(ParseError::Truncated)?;
            (&part[..end], end + 4)
        };
        let content_end = find(&part[content_start..], &crlf_delim).ok_or(ParseError::Truncated)?;
        let content = &part[content_start..content_start + content_end];
        pos = part_start + content_start + content_end + crlf_delim.len();

        let headers = std::str::from_utf8(headers)
            .map_err(|_| ParseError::Malformed("part headers are not UTF-8"))?;
        let mut name = None;
        for line in headers.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                return Err(ParseError::Malformed("part header without ':'"));
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                let v = v.trim();
                let kind = v.split(';').next().unwrap_or("").trim();
                if !kind.eq_ignore_ascii_case("form-data") {
                    return Err(ParseError::Malformed("part is not form-data"));
                }
                name =
                    Some(disposition_name(v).ok_or(ParseError::Malformed("part without a name"))?);
            }
        }
        let name = name.ok_or(ParseError::Malformed("part without Content-Disposition"))?;
        if let Some(i) = NAMES.iter().position(|n| *n == name) {
            if fields[i].is_some() {
                return Err(ParseError::DuplicateField(NAMES[i]));
            }
            fields[i] = Some(content);
        }
        // Unknown fields are ignored: firmware may add some, and they are not signed.
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

/// Encodes `fields` as a multipart/form-data body (the simulator and tests post with it).
pub fn encode_multipart(fields: &[(&str, &str)], boundary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
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
