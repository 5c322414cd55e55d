//! The MI EKYC Kafka messages (DECISIONS §5), sans-IO: a record's key and value in, a typed
//! request or a [`Poison`] out; replies built as the bytes to produce. Nothing here touches Kafka
//! or the models, so the web service's shapes are checked byte for byte in unit tests and fuzzed.
//!
//! The text writes `image_shape` as a Python tuple, `(948, 1616, 3)`; on the wire that is a JSON
//! array, `[948, 1616, 3]`. `client_id` is echoed as it came (a number in the text; a string is
//! kept a string).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{Map, Value};

/// Side of the aligned faces the text's `idface` / `face` carry: 112×112×3 BGR.
pub const ALIGNED_SIDE: usize = 112;
const ALIGNED_BYTES: usize = ALIGNED_SIDE * ALIGNED_SIDE * 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    RegisterLicense,
    RegisterFace,
    CompareFace,
}

impl ApiType {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiType::RegisterLicense => "register_license",
            ApiType::RegisterFace => "register_face",
            ApiType::CompareFace => "compare_face",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "register_license" => Some(ApiType::RegisterLicense),
            "register_face" => Some(ApiType::RegisterFace),
            "compare_face" => Some(ApiType::CompareFace),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("value of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("value is not a JSON object: {0}")]
    NotJson(String),
    #[error("field {0:?} is missing")]
    Missing(&'static str),
    #[error("field {0:?}: {1}")]
    Invalid(&'static str, String),
    #[error("request_api_type {0:?} is not register_license, register_face or compare_face")]
    UnknownApi(String),
}

/// A message that cannot be served, with whatever of it could be read, so that the reply can
/// still carry the request id and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Poison {
    pub request_id: Option<String>,
    pub api: Option<ApiType>,
    pub client_id: Option<Value>,
    pub error: MessageError,
}

/// The picture of an `MTCNN_REQUEST`, its bytes checked against `image_shape` as far as that
/// can be done without decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picture {
    /// Raw 8-bit BGR rows, length h·w·3.
    Bgr {
        height: u32,
        width: u32,
        data: Vec<u8>,
    },
    /// A JPEG or PNG (by magic bytes); its decoded size must equal `height` × `width`.
    Encoded {
        height: u32,
        width: u32,
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MtcnnRequest {
    pub request_id: String,
    pub api: ApiType,
    pub client_id: Value,
    pub picture: Picture,
}

/// An aligned face of an `INSIGHTFACE_REQUEST`: 112×112 BGR rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlignedBgr(pub Vec<u8>);

#[derive(Debug, Clone, PartialEq)]
pub struct InsightfaceRequest {
    pub request_id: String,
    pub api: ApiType,
    pub client_id: Value,
    pub idface: Option<AlignedBgr>,
    pub face: Option<AlignedBgr>,
}

/// The request id is the record key (UUID text); a key that is not UTF-8 has none.
fn request_id(key: Option<&[u8]>) -> Option<String> {
    key.and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_owned)
}

/// The envelope every message shares: the object, its id, type and client, or what of them exists.
struct Envelope {
    obj: Map<String, Value>,
    request_id: String,
    api: ApiType,
    client_id: Value,
}

fn envelope(key: Option<&[u8]>, value: &[u8], max_bytes: usize) -> Result<Envelope, Poison> {
    let mut poison = Poison {
        request_id: request_id(key),
        api: None,
        client_id: None,
        error: MessageError::Missing("key"),
    };
    let fail = |mut p: Poison, e| {
        p.error = e;
        Err(p)
    };
    if value.len() > max_bytes {
        return fail(poison, MessageError::TooLarge(value.len(), max_bytes));
    }
    let obj = match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(m)) => m,
        Ok(other) => return fail(poison, MessageError::NotJson(kind_of(&other).into())),
        Err(e) => return fail(poison, MessageError::NotJson(e.to_string())),
    };
    poison.client_id = obj.get("client_id").filter(|v| !v.is_null()).cloned();
    let api = match obj.get("request_api_type") {
        None | Some(Value::Null) => return fail(poison, MessageError::Missing("request_api_type")),
        Some(Value::String(s)) => match ApiType::parse(s) {
            Some(a) => a,
            None => return fail(poison, MessageError::UnknownApi(s.clone())),
        },
        Some(v) => return fail(poison, invalid("request_api_type", v, "a string")),
    };
    poison.api = Some(api);
    let Some(request_id) = poison.request_id.clone().filter(|k| !k.is_empty()) else {
        return fail(poison, MessageError::Missing("key"));
    };
    let Some(client_id) = poison.client_id.clone() else {
        return fail(poison, MessageError::Missing("client_id"));
    };
    Ok(Envelope {
        obj,
        request_id,
        api,
        client_id,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(field: &'static str, v: &Value, want: &str) -> MessageError {
    MessageError::Invalid(field, format!("{} where {want} was expected", kind_of(v)))
}

fn base64_field(obj: &Map<String, Value>, field: &'static str) -> Result<Vec<u8>, MessageError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(MessageError::Missing(field)),
        Some(Value::String(s)) => B64
            .decode(s.trim_end_matches(['\n', '\r']))
            .map_err(|e| MessageError::Invalid(field, format!("bad base64: {e}"))),
        Some(v) => Err(invalid(field, v, "a base64 string")),
    }
}

/// `image_shape` = `[h, w, 3]`, both sides at least 1 and h·w at most `max_pixels`.
fn shape(obj: &Map<String, Value>, max_pixels: u64) -> Result<(u32, u32), MessageError> {
    let v = obj
        .get("image_shape")
        .ok_or(MessageError::Missing("image_shape"))?;
    let dims: Option<Vec<u64>> = v
        .as_array()
        .map(|a| a.iter().map(Value::as_u64).collect::<Option<_>>())
        .unwrap_or_default();
    let bad = |why: String| MessageError::Invalid("image_shape", why);
    match dims.as_deref() {
        Some(&[h, w, 3]) if h >= 1 && w >= 1 => {
            let px = h.saturating_mul(w);
            if px > max_pixels || h > u64::from(u32::MAX) || w > u64::from(u32::MAX) {
                return Err(bad(format!(
                    "{h}x{w} is over the limit of {max_pixels} pixels"
                )));
            }
            Ok((h as u32, w as u32))
        }
        Some(&[_, _, c]) if c != 3 => Err(bad(format!("{c} channels; only 3 (BGR) are served"))),
        _ => Err(bad(format!("{v} is not [height, width, 3]"))),
    }
}

fn is_encoded(data: &[u8]) -> bool {
    data.starts_with(&[0xff, 0xd8, 0xff]) || data.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Parses an `MTCNN_REQUEST` record. `max_pixels` bounds `image_shape` before anything is
/// decoded, so a message cannot make the worker allocate more than its limit.
pub fn mtcnn_request(
    key: Option<&[u8]>,
    value: &[u8],
    max_bytes: usize,
    max_pixels: u64,
) -> Result<MtcnnRequest, Poison> {
    let env = envelope(key, value, max_bytes)?;
    let picture = picture(&env.obj, max_pixels);
    let picture = picture.map_err(|error| Poison {
        request_id: Some(env.request_id.clone()),
        api: Some(env.api),
        client_id: Some(env.client_id.clone()),
        error,
    })?;
    Ok(MtcnnRequest {
        request_id: env.request_id,
        api: env.api,
        client_id: env.client_id,
        picture,
    })
}

fn picture(obj: &Map<String, Value>, max_pixels: u64) -> Result<Picture, MessageError> {
    let (height, width) = shape(obj, max_pixels)?;
    let data = base64_field(obj, "image")?;
    if is_encoded(&data) {
        return Ok(Picture::Encoded {
            height,
            width,
            data,
        });
    }
    let want = u64::from(height) * u64::from(width) * 3;
    if data.len() as u64 != want {
        return Err(MessageError::Invalid(
            "image",
            format!(
                "{} bytes of raw BGR, but image_shape [{height}, {width}, 3] needs {want} (and it is no JPEG or PNG)",
                data.len()
            ),
        ));
    }
    Ok(Picture::Bgr {
        height,
        width,
        data,
    })
}

/// Parses an `INSIGHTFACE_REQUEST` record: the faces its type needs, each 112×112×3 BGR.
pub fn insightface_request(
    key: Option<&[u8]>,
    value: &[u8],
    max_bytes: usize,
) -> Result<InsightfaceRequest, Poison> {
    let env = envelope(key, value, max_bytes)?;
    let (need_id, need_face) = faces_of(env.api);
    let aligned = |field: &'static str| -> Result<AlignedBgr, MessageError> {
        let data = base64_field(&env.obj, field)?;
        if data.len() != ALIGNED_BYTES {
            return Err(MessageError::Invalid(
                field,
                format!(
                    "{} bytes; an aligned face is 112x112x3 = {ALIGNED_BYTES}",
                    data.len()
                ),
            ));
        }
        Ok(AlignedBgr(data))
    };
    let faces = (|| {
        let idface = need_id.then(|| aligned("idface")).transpose()?;
        let face = need_face.then(|| aligned("face")).transpose()?;
        Ok((idface, face))
    })();
    match faces {
        Ok((idface, face)) => Ok(InsightfaceRequest {
            request_id: env.request_id,
            api: env.api,
            client_id: env.client_id,
            idface,
            face,
        }),
        Err(error) => Err(Poison {
            request_id: Some(env.request_id),
            api: Some(env.api),
            client_id: Some(env.client_id),
            error,
        }),
    }
}

/// Which faces a request type carries: (`idface`, `face`).
pub fn faces_of(api: ApiType) -> (bool, bool) {
    match api {
        ApiType::RegisterLicense => (true, false),
        ApiType::RegisterFace => (false, true),
        ApiType::CompareFace => (true, true),
    }
}

fn head(api: ApiType, client_id: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("request_api_type".into(), api.as_str().into());
    m.insert("client_id".into(), client_id.clone());
    m
}

fn bytes(m: Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&Value::Object(m)).expect("a JSON map always serialises")
}

/// `INSIGHTFACE_REQUEST` from the detector side: the aligned faces its type carries.
pub fn insightface_request_value(
    api: ApiType,
    client_id: &Value,
    idface: Option<&AlignedBgr>,
    face: Option<&AlignedBgr>,
) -> Vec<u8> {
    let mut m = head(api, client_id);
    for (name, f) in [("idface", idface), ("face", face)] {
        if let Some(f) = f {
            m.insert(name.into(), B64.encode(&f.0).into());
        }
    }
    bytes(m)
}

/// The base64 of an L2-normalised embedding as little-endian float32.
pub fn feature_base64(embedding: &[f32]) -> String {
    let raw: Vec<u8> = embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
    B64.encode(raw)
}

/// `INSIGHTFACE_REPLY` from the embedding side: each feature the type carries, `null` where it
/// could not be made (the text's error messages).
pub fn insightface_reply_value(
    api: ApiType,
    client_id: &Value,
    idface_feature: Option<&[f32]>,
    face_feature: Option<&[f32]>,
) -> Vec<u8> {
    let (need_id, need_face) = faces_of(api);
    let mut m = head(api, client_id);
    let feature = |f: Option<&[f32]>| f.map_or(Value::Null, |e| feature_base64(e).into());
    if need_id {
        m.insert("idface_feature".into(), feature(idface_feature));
    }
    if need_face {
        m.insert("face_feature".into(), feature(face_feature));
    }
    bytes(m)
}

/// `INSIGHTFACE_REPLY` from the detector side when it found no usable face: only the type and
/// the client.
pub fn detector_reply_value(api: ApiType, client_id: &Value) -> Vec<u8> {
    bytes(head(api, client_id))
}

/// The web side's result (`EKYC_SEVER_ROOM` shape) for `EKYC_RESULT`: status 0 success, 1
/// failure; `rate` only for `compare_face`: the similarity clamped to [0, 1], 0 on a failure. A request whose
/// type could not be read has `request_api_type: null`.
pub fn result_value(
    request_id: &str,
    api: Option<ApiType>,
    success: bool,
    rate: Option<f32>,
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("request_id".into(), request_id.into());
    m.insert(
        "request_api_type".into(),
        api.map_or(Value::Null, |a| a.as_str().into()),
    );
    m.insert("status".into(), u8::from(!success).into());
    if api == Some(ApiType::CompareFace) {
        // 0 on a failure rather than absent or null: a web side that reads `rate` of every
        // compare gets a number, and `status` says whether it means anything.
        let r = rate.filter(|_| success).unwrap_or(0.0).clamp(0.0, 1.0);
        m.insert("rate".into(), f64::from(r).into());
    }
    bytes(m)
}

/// Raw BGR rows to RGB (the pipeline's order), in place.
pub fn swap_bgr_rgb(data: &mut [u8]) {
    for px in data.chunks_exact_mut(3) {
        px.swap(0, 2);
    }
}

#[cfg(test)]
mod tests;
