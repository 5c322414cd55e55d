//! Request bodies → what the service is asked: pure, so every refusal is unit tested without a
//! server. A body is taken whole or refused whole (nothing is half-accepted: one bad picture
//! refuses the request before anything reaches the processor).

use std::collections::BTreeMap;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::Deserialize;

use super::Refusal;
use crate::gbds::service::Submission;
use crate::net::multipart::{self, MultipartError};

/// Standard alphabet; padding optional (some clients strip it).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The bounds a submission's pictures must keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_images: usize,
    /// Per picture, after base64 decoding.
    pub max_image_bytes: usize,
}

/// Which submission a body is for (the update's key comes from its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Enroll,
    Update(String),
    Search,
}

/// A submission's fields as either body format gives them.
#[derive(Default)]
struct Fields {
    key: Option<String>,
    images: Vec<Vec<u8>>,
    attributes: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSubmission {
    key: Option<String>,
    image: Option<String>,
    images: Option<Vec<String>>,
    attributes: Option<BTreeMap<String, String>>,
}

/// A JSON submission: `{"key", "images": [base64…] | "image": base64, "attributes": {…}}`.
pub fn submission_json(kind: Kind, body: &[u8], limits: Limits) -> Result<Submission, Refusal> {
    let j: JsonSubmission =
        serde_json::from_slice(body).map_err(|e| Refusal::invalid(format!("request body: {e}")))?;
    let encoded = match (j.image, j.images) {
        (Some(_), Some(_)) => return Err(Refusal::invalid("give `image` or `images`, not both")),
        (Some(one), None) => vec![one],
        (None, Some(many)) => many,
        (None, None) => Vec::new(),
    };
    if encoded.len() > limits.max_images {
        return Err(too_many(encoded.len(), limits));
    }
    let images = encoded
        .iter()
        .enumerate()
        .map(|(i, text)| decode_image(i, text, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let fields = Fields {
        key: j.key,
        images,
        attributes: j.attributes,
    };
    assemble(kind, fields, limits)
}

/// Picture `i` from base64 (line breaks allowed), refused before decoding when it cannot fit.
fn decode_image(i: usize, text: &str, limits: Limits) -> Result<Vec<u8>, Refusal> {
    let compact: String;
    let text = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = text.split_ascii_whitespace().collect();
        &compact
    } else {
        text
    };
    // The estimate exceeds the exact size by at most 2 bytes.
    if base64::decoded_len_estimate(text.len()) > limits.max_image_bytes + 2 {
        return Err(image_too_large(i, limits));
    }
    let bytes = B64
        .decode(text)
        .map_err(|e| Refusal::invalid(format!("images[{i}]: not base64: {e}")))?;
    if bytes.len() > limits.max_image_bytes {
        return Err(image_too_large(i, limits));
    }
    Ok(bytes)
}

fn image_too_large(i: usize, limits: Limits) -> Refusal {
    Refusal::too_large(format!(
        "images[{i}] is larger than {} bytes",
        limits.max_image_bytes
    ))
}

fn too_many(n: usize, limits: Limits) -> Refusal {
    Refusal::too_large(format!(
        "{n} images; at most {} per request",
        limits.max_images
    ))
}

/// A `multipart/form-data` submission: `image` parts (the files), optional `key` and
/// `attributes` (a JSON object of strings) parts.
pub fn submission_multipart(
    kind: Kind,
    body: &[u8],
    boundary: &str,
    limits: Limits,
) -> Result<Submission, Refusal> {
    let parts =
        multipart::parse_parts(body, boundary, limits.max_images + 2).map_err(|e| match e {
            MultipartError::TooManyParts(n) => Refusal::too_large(format!(
                "more than {n} parts (at most {} images, a key and attributes)",
                limits.max_images
            )),
            e => Refusal::invalid(e.to_string()),
        })?;
    let mut f = Fields::default();
    for p in parts {
        match p.name.as_str() {
            "image" => {
                if p.content.len() > limits.max_image_bytes {
                    return Err(image_too_large(f.images.len(), limits));
                }
                f.images.push(p.content.to_vec());
            }
            "key" if f.key.is_none() => f.key = Some(utf8("key", p.content)?.to_owned()),
            "attributes" if f.attributes.is_none() => {
                let a = serde_json::from_slice(p.content).map_err(|e| {
                    Refusal::invalid(format!("attributes: not a JSON object of strings: {e}"))
                })?;
                f.attributes = Some(a);
            }
            "key" | "attributes" => {
                return Err(Refusal::invalid(format!("part `{}` given twice", p.name)))
            }
            other => return Err(Refusal::invalid(format!("unknown part `{other}`"))),
        }
    }
    if f.images.len() > limits.max_images {
        return Err(too_many(f.images.len(), limits));
    }
    assemble(kind, f, limits)
}

fn utf8<'a>(what: &str, b: &'a [u8]) -> Result<&'a str, Refusal> {
    std::str::from_utf8(b).map_err(|_| Refusal::invalid(format!("{what}: not UTF-8")))
}

/// The submission of `kind` from its fields, or why they do not make one.
fn assemble(kind: Kind, f: Fields, limits: Limits) -> Result<Submission, Refusal> {
    if f.images.is_empty() {
        return Err(Refusal::invalid("no image"));
    }
    if f.images.len() > limits.max_images {
        return Err(too_many(f.images.len(), limits));
    }
    if let Some(i) = f.images.iter().position(Vec::is_empty) {
        return Err(Refusal::invalid(format!("images[{i}] is empty")));
    }
    if f.key.as_deref() == Some("") {
        return Err(Refusal::invalid("key is empty"));
    }
    let no_attributes = |op: &str| match f.attributes {
        Some(_) => Err(Refusal::invalid(format!("{op} takes no attributes"))),
        None => Ok(()),
    };
    match kind {
        Kind::Enroll => Ok(Submission::Enroll {
            key: f
                .key
                .ok_or_else(|| Refusal::invalid("enroll needs a key"))?,
            images: f.images,
            attributes: f.attributes.unwrap_or_default(),
        }),
        Kind::Update(key) => {
            no_attributes("update")?;
            if f.key.as_ref().is_some_and(|k| *k != key) {
                return Err(Refusal::invalid("the body's key is not the path's"));
            }
            Ok(Submission::Update {
                key,
                images: f.images,
            })
        }
        Kind::Search => {
            no_attributes("search")?;
            Ok(Submission::Search {
                key: f.key,
                images: f.images,
            })
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Treatment {
    treatment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Review {
    approve: bool,
}

/// `{"treatment": "…"}`.
pub fn treatment(body: &[u8]) -> Result<String, Refusal> {
    let t: Treatment =
        serde_json::from_slice(body).map_err(|e| Refusal::invalid(format!("request body: {e}")))?;
    if t.treatment.is_empty() {
        return Err(Refusal::invalid("treatment is empty"));
    }
    Ok(t.treatment)
}

/// `{"approve": true|false}`.
pub fn approval(body: &[u8]) -> Result<bool, Refusal> {
    let r: Review =
        serde_json::from_slice(body).map_err(|e| Refusal::invalid(format!("request body: {e}")))?;
    Ok(r.approve)
}

/// A percent-encoded path segment as text (`+` is a plus sign in a path); `None` when an escape
/// is broken or the bytes are not UTF-8.
pub fn percent_decode(seg: &str) -> Option<String> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_images: 2,
        max_image_bytes: 8,
    };

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn json_enroll_update_search() {
        let body = format!(
            r#"{{"key":"alice","images":["{}","{}"],"attributes":{{"dept":"R&D"}}}}"#,
            b64(b"\xff\xd8a"),
            b64(b"12345678")
        );
        let s = submission_json(Kind::Enroll, body.as_bytes(), L).unwrap();
        let Submission::Enroll {
            key,
            images,
            attributes,
        } = s
        else {
            panic!("{s:?}")
        };
        assert_eq!((key.as_str(), images.len()), ("alice", 2));
        assert_eq!(images[0], b"\xff\xd8a");
        assert_eq!(attributes["dept"], "R&D");
        let one = format!(r#"{{"image":"{}"}}"#, b64(b"x").trim_end_matches('='));
        assert_eq!(
            submission_json(Kind::Update("bob".into()), one.as_bytes(), L).unwrap(),
            Submission::Update {
                key: "bob".into(),
                images: vec![b"x".to_vec()]
            }
        );
        assert_eq!(
            submission_json(Kind::Search, one.as_bytes(), L).unwrap(),
            Submission::Search {
                key: None,
                images: vec![b"x".to_vec()]
            }
        );
    }

    #[test]
    fn json_refusals() {
        let img = b64(b"x");
        let cases: Vec<(Kind, String, u16)> = vec![
            (Kind::Enroll, format!(r#"{{"images":["{img}"]}}"#), 400),
            (Kind::Enroll, r#"{"key":"a","images":[]}"#.into(), 400),
            (Kind::Enroll, r#"{"key":"a","images":["%%%"]}"#.into(), 400),
            (
                Kind::Enroll,
                format!(r#"{{"key":"","image":"{img}"}}"#),
                400,
            ),
            (
                Kind::Enroll,
                format!(r#"{{"key":"a","image":"{img}","images":["{img}"]}}"#),
                400,
            ),
            (
                Kind::Enroll,
                format!(r#"{{"key":"a","image":"{img}","extra":1}}"#),
                400,
            ),
            (
                Kind::Enroll,
                format!(r#"{{"key":"a","image":"{img}","attributes":{{"n":1}}}}"#),
                400,
            ),
            (
                Kind::Update("b".into()),
                format!(r#"{{"key":"c","image":"{img}"}}"#),
                400,
            ),
            (
                Kind::Search,
                format!(r#"{{"image":"{img}","attributes":{{}}}}"#),
                400,
            ),
            (
                Kind::Search,
                format!(r#"{{"images":["{img}","{img}","{img}"]}}"#),
                413,
            ),
            (
                Kind::Search,
                format!(r#"{{"image":"{}"}}"#, b64(b"123456789")),
                413,
            ),
            (Kind::Search, "not json".into(), 400),
        ];
        for (kind, body, status) in cases {
            let r = submission_json(kind, body.as_bytes(), L).unwrap_err();
            assert_eq!(r.status, status, "{body}: {r:?}");
        }
    }

    #[test]
    fn multipart_submissions() {
        let jpeg: &[u8] = b"\xff\xd8\r\n--B\xff";
        let body = multipart::encode_parts(
            &[
                ("key", None, b"k 1"),
                ("image", Some("a.jpg"), jpeg),
                ("attributes", None, br#"{"a":"b"}"#),
            ],
            "B0",
        );
        let s = submission_multipart(Kind::Enroll, &body, "B0", L).unwrap();
        assert_eq!(
            s,
            Submission::Enroll {
                key: "k 1".into(),
                images: vec![jpeg.to_vec()],
                attributes: [("a".to_string(), "b".to_string())].into()
            }
        );
        fn refused(parts: &[(&str, Option<&str>, &[u8])]) -> u16 {
            let body = multipart::encode_parts(parts, "B0");
            submission_multipart(Kind::Search, &body, "B0", L)
                .unwrap_err()
                .status
        }
        assert_eq!(refused(&[("image", None, b"123456789")]), 413);
        assert_eq!(refused(&[("image", None, &b"1"[..]); 3]), 413);
        assert_eq!(
            refused(&[("image", None, b"1"), ("photo", None, b"1")]),
            400
        );
        assert_eq!(
            refused(&[("image", None, b"1"), ("key", None, b"\xff")]),
            400
        );
        assert_eq!(refused(&[("key", None, b"a")]), 400);
        assert_eq!(
            refused(&[("image", None, b"1"), ("attributes", None, b"[1]")]),
            400
        );
        let r = submission_multipart(Kind::Search, b"garbage", "B0", L).unwrap_err();
        assert_eq!(r.status, 400);
    }

    #[test]
    fn treatments_reviews_and_paths() {
        assert_eq!(
            treatment(br#"{"treatment":"RECOLLECT"}"#).unwrap(),
            "RECOLLECT"
        );
        assert_eq!(treatment(br#"{"treatment":""}"#).unwrap_err().status, 400);
        assert_eq!(treatment(br#"{}"#).unwrap_err().status, 400);
        assert!(approval(br#"{"approve":true}"#).unwrap());
        assert!(!approval(br#"{"approve":false}"#).unwrap());
        assert_eq!(approval(br#"{"approve":"yes"}"#).unwrap_err().status, 400);
        assert_eq!(
            percent_decode("J%C3%BCrgen%20M%2F1+x").unwrap(),
            "Jürgen M/1+x"
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
