//! `multipart/form-data` (RFC 7578) as camgate receives it: camera callbacks (`hook::callback`)
//! and pictures posted to the local API (`api`). Pure and whole-body: the servers bound a body's
//! size before it gets here. Tolerant where clients vary (preamble, epilogue, transport padding,
//! extra part headers); each caller decides which part names it accepts and whether one may repeat.

/// One part: its form field name and its content, borrowed from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    /// The `filename` parameter, when the part is a file.
    pub filename: Option<String>,
    pub content: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("content type is not multipart/form-data: {0:?}")]
    ContentType(String),
    #[error("multipart boundary missing or invalid")]
    Boundary,
    #[error("multipart body is truncated")]
    Truncated,
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("too many parts (more than {0})")]
    TooManyParts(usize),
}

/// The boundary of a `Content-Type: multipart/form-data; boundary=...` header value.
pub fn boundary_from_content_type(ct: &str) -> Result<String, MultipartError> {
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::ContentType(ct.chars().take(100).collect()));
    }
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = unquote(v.trim());
            // RFC 2046: 1..=70 characters; control characters would break the line structure.
            if v.is_empty() || v.len() > 70 || v.bytes().any(|b| b.is_ascii_control()) {
                return Err(MultipartError::Boundary);
            }
            return Ok(v.to_owned());
        }
    }
    Err(MultipartError::Boundary)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The parameter `want` of a `Content-Disposition: form-data; name="..."` value.
fn disposition_param(value: &str, want: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        let (param, tail) = split_param(rest);
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case(want) {
                return Some(unquote(v.trim()).to_owned());
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

/// Every part of a whole multipart body delimited by `boundary`, in order; more than
/// `max_parts` is an error (checked as they are found, so a flood of parts costs little).
pub fn parse_parts<'a>(
    body: &'a [u8],
    boundary: &str,
    max_parts: usize,
) -> Result<Vec<Part<'a>>, MultipartError> {
    if boundary.is_empty() {
        return Err(MultipartError::Boundary);
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let crlf_delim = [b"\r\n", delim].concat();

    // The first delimiter opens the body, or follows a preamble and a CRLF.
    let mut pos = if body.starts_with(delim) {
        delim.len()
    } else {
        find(body, &crlf_delim).ok_or(MultipartError::Truncated)? + crlf_delim.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(parts); // close delimiter; the epilogue is ignored
        }
        // Transport padding (RFC 2046) then the CRLF ending the delimiter line.
        let pad = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        let rest = &rest[pad..];
        if rest.len() < 2 {
            return Err(MultipartError::Truncated);
        }
        if !rest.starts_with(b"\r\n") {
            return Err(MultipartError::Malformed(
                "delimiter line not ended by CRLF",
            ));
        }
        if parts.len() == max_parts {
            return Err(MultipartError::TooManyParts(max_parts));
        }
        let part_start = pos + pad + 2;
        let (part, used) = one_part(&body[part_start..], &crlf_delim)?;
        parts.push(part);
        pos = part_start + used;
    }
}

/// The part at the start of `part` (after its delimiter line) and the bytes it used up to and
/// including the next delimiter.
fn one_part<'a>(part: &'a [u8], crlf_delim: &[u8]) -> Result<(Part<'a>, usize), MultipartError> {
    // Headers end at the first empty line (a part with no headers starts with CRLF).
    let (headers, content_start) = if part.starts_with(b"\r\n") {
        (&part[..0], 2)
    } else {
        let end = find(part, b"\r\n\r\n").ok_or(MultipartError::Truncated)?;
        (&part[..end], end + 4)
    };
    let content_end = find(&part[content_start..], crlf_delim).ok_or(MultipartError::Truncated)?;
    let content = &part[content_start..content_start + content_end];
    let headers = std::str::from_utf8(headers)
        .map_err(|_| MultipartError::Malformed("part headers are not UTF-8"))?;
    let mut disposition = None;
    for line in headers.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            return Err(MultipartError::Malformed("part header without ':'"));
        };
        if k.trim().eq_ignore_ascii_case("content-disposition") {
            let v = v.trim();
            let kind = v.split(';').next().unwrap_or("").trim();
            if !kind.eq_ignore_ascii_case("form-data") {
                return Err(MultipartError::Malformed("part is not form-data"));
            }
            disposition = Some(v);
        }
    }
    let disposition = disposition.ok_or(MultipartError::Malformed(
        "part without Content-Disposition",
    ))?;
    let name = disposition_param(disposition, "name")
        .ok_or(MultipartError::Malformed("part without a name"))?;
    let part = Part {
        name,
        filename: disposition_param(disposition, "filename"),
        content,
    };
    Ok((part, content_start + content_end + crlf_delim.len()))
}

/// Encodes text `fields` as a multipart/form-data body (the simulator and tests post with it).
pub fn encode_multipart(fields: &[(&str, &str)], boundary: &str) -> Vec<u8> {
    let parts: Vec<(&str, Option<&str>, &[u8])> = fields
        .iter()
        .map(|(k, v)| (*k, None, v.as_bytes()))
        .collect();
    encode_parts(&parts, boundary)
}

/// Encodes `(name, filename, content)` parts (files are sent as `application/octet-stream`).
pub fn encode_parts(parts: &[(&str, Option<&str>, &[u8])], boundary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, filename, content) in parts {
        let head = match filename {
            None => format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
            Some(f) => format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"),
        };
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "xYz-boundary";

    #[test]
    fn binary_parts_with_filenames_round_trip() {
        let jpeg: &[u8] = b"\xff\xd8\xff\xe0\r\n--not-the-boundary\r\n\x00\xff\xd9";
        let body = encode_parts(
            &[
                ("key", None, b"alice"),
                ("image", Some("a;1.jpg"), jpeg),
                ("image", Some("b.jpg"), b""),
            ],
            B,
        );
        let parts = parse_parts(&body, B, 8).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].content),
            ("key", &b"alice"[..])
        );
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[1].filename.as_deref(), Some("a;1.jpg"));
        assert_eq!(parts[1].content, jpeg);
        assert_eq!(parts[2].content, b"");
    }

    #[test]
    fn part_count_is_bounded() {
        let body = encode_multipart(&[("a", "1"), ("b", "2"), ("c", "3")], B);
        assert_eq!(parse_parts(&body, B, 3).unwrap().len(), 3);
        assert_eq!(
            parse_parts(&body, B, 2),
            Err(MultipartError::TooManyParts(2))
        );
    }

    #[test]
    fn no_parts_and_truncation() {
        assert_eq!(parse_parts(format!("--{B}--").as_bytes(), B, 4), Ok(vec![]));
        let body = encode_multipart(&[("a", "1")], B);
        for n in 0..body.len() - 4 {
            assert!(parse_parts(&body[..n], B, 4).is_err(), "prefix {n}");
        }
    }
}
