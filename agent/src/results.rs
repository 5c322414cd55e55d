//! Face result records: what the vision stage appends to the outbox for each face event, and
//! what the sinks forward (Kafka `faces_topic`, MQTT `faces/<camera>` and `matches/<key>`).
//!
//! Plain data, no vision code: the sinks read these without linking the face pipeline. An outbox
//! record is either a stored camera event ([`crate::event::StoredEnvelope`]) or one of these;
//! [`Stored::parse`] tells them apart by the top-level `kind`, which envelopes never carry.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::event::StoredEnvelope;
use crate::notice::{NoticeRecord, GBDS_NOTICE};

/// The `kind` of a face result record.
pub const FACE_RESULT: &str = "face_result";

/// One face event's result (field names fixed by issue 14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceResult {
    /// Always [`FACE_RESULT`].
    pub kind: String,
    pub camera: String,
    pub sn: String,
    pub event_id: i64,
    /// When camgate stored the event (the envelope's `received_at_ms`).
    pub received_at_ms: u64,
    /// When the result was made, just before it is stored.
    pub processed_at_ms: u64,
    /// `mtcnn+mobilefacenet-<variant>`.
    pub model: String,
    pub faces: Vec<ResultFace>,
    pub timings_ms: Timings,
    /// Set when no picture could be fetched or decoded; `faces` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResultError>,
}

impl FaceResult {
    /// The Kafka key and the de-duplication key of a result: `<sn>/<event_id>`, the same key as
    /// the event it answers.
    pub fn key(&self) -> String {
        format!("{}/{}", self.sn, self.event_id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultFace {
    /// `[x, y, w, h]`, source pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
    pub quality: ResultQuality,
    /// The enrolled person this face is, or `null` (open-set rule of the gallery).
    pub identity: Option<Identity>,
    /// The unsolved entry an unknown face was filed under (`null` when identified, or when the
    /// face was not good enough to file).
    pub uguid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResultQuality {
    /// Shorter side of the face box, source pixels.
    pub size: f32,
    /// 0 sharp … 1 blurred.
    pub blur: f32,
    /// 0 frontal … 1 profile or worse.
    pub pose: f32,
    /// Whether the face passes the quality bars for matching and filing.
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub key: String,
    pub pguid: String,
    pub score: f32,
}

/// Milliseconds per step of the stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub fetch: f64,
    pub detect: f64,
    pub embed: f64,
    pub search: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultError {
    /// `url`, `fetch`, `http_status`, `too_large`, `decode`, `vision`.
    pub kind: String,
    pub detail: String,
}

/// What a sink needs of a face result to route it.
#[derive(Debug, Deserialize)]
pub struct ResultHead<'a> {
    #[serde(borrow)]
    pub camera: Cow<'a, str>,
    #[serde(borrow)]
    pub sn: Cow<'a, str>,
    pub event_id: i64,
    pub received_at_ms: u64,
    #[serde(default)]
    pub faces: Vec<HeadFace<'a>>,
}

impl ResultHead<'_> {
    pub fn key(&self) -> String {
        format!("{}/{}", self.sn, self.event_id)
    }

    /// Keys of the identified faces, each once, in order.
    pub fn matched_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for k in self
            .faces
            .iter()
            .filter_map(|f| f.identity.as_ref().map(|i| &*i.key))
        {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }
}

#[derive(Debug, Deserialize)]
pub struct HeadFace<'a> {
    #[serde(default, borrow)]
    pub identity: Option<HeadIdentity<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct HeadIdentity<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
}

/// An outbox record, read back.
#[derive(Debug)]
pub enum Stored<'a> {
    Event(StoredEnvelope<'a>),
    FaceResult(ResultHead<'a>),
    /// A transaction's status change, for the notifier (the other sinks pass over it).
    Notice(NoticeRecord),
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
}

impl<'a> Stored<'a> {
    /// Parses a record as an envelope, or (with `kind = "face_result"`) as a result.
    pub fn parse(data: &'a [u8]) -> Result<Stored<'a>, String> {
        let kind: Kind = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
        match kind.kind.as_deref() {
            None => serde_json::from_slice(data)
                .map(Stored::Event)
                .map_err(|e| format!("not a stored event envelope: {e}")),
            Some(FACE_RESULT) => serde_json::from_slice(data)
                .map(Stored::FaceResult)
                .map_err(|e| format!("not a face result: {e}")),
            Some(GBDS_NOTICE) => serde_json::from_slice(data)
                .map(Stored::Notice)
                .map_err(|e| format!("not a notification: {e}")),
            Some(other) => Err(format!("unknown record kind {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FaceResult {
        FaceResult {
            kind: FACE_RESULT.into(),
            camera: "door-1".into(),
            sn: "FS101D8BS00100".into(),
            event_id: 42,
            received_at_ms: 1_796_280_000_000,
            processed_at_ms: 1_796_280_000_400,
            model: "mtcnn+mobilefacenet-f16".into(),
            faces: vec![ResultFace {
                bbox: [10.0, 20.0, 112.0, 130.0],
                score: 0.998,
                landmarks: [[1.0, 2.0]; 5],
                quality: ResultQuality {
                    size: 112.0,
                    blur: 0.1,
                    pose: 0.2,
                    ok: true,
                },
                identity: Some(Identity {
                    key: "alice".into(),
                    pguid: "p".into(),
                    score: 0.71,
                }),
                uguid: None,
            }],
            timings_ms: Timings {
                fetch: 12.0,
                detect: 180.0,
                embed: 9.0,
                search: 0.3,
            },
            error: None,
        }
    }

    /// The names of issue 14's record, byte for byte.
    #[test]
    fn the_record_has_the_contract_names() {
        let v = serde_json::to_value(sample()).unwrap();
        let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "kind",
            "camera",
            "sn",
            "event_id",
            "received_at_ms",
            "processed_at_ms",
            "model",
            "faces",
            "timings_ms",
        ] {
            assert!(top.contains(&k), "{k}");
        }
        assert!(v.get("error").is_none(), "no error key on success");
        let f = &v["faces"][0];
        for k in ["box", "score", "landmarks", "quality", "identity", "uguid"] {
            assert!(f.get(k).is_some(), "{k}");
        }
        assert_eq!(f["uguid"], serde_json::Value::Null);
        assert_eq!(f["identity"]["key"], "alice");
        for k in ["size", "blur", "pose", "ok"] {
            assert!(f["quality"].get(k).is_some(), "{k}");
        }
        for k in ["fetch", "detect", "embed", "search"] {
            assert!(v["timings_ms"].get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn records_are_told_apart() {
        let bytes = serde_json::to_vec(&sample()).unwrap();
        match Stored::parse(&bytes).unwrap() {
            Stored::FaceResult(h) => {
                assert_eq!(h.key(), "FS101D8BS00100/42");
                assert_eq!(h.matched_keys(), ["alice"]);
            }
            other => panic!("{other:?}"),
        }
        let env = br#"{"camera":"c","source":"channel","received_at_ms":1,"sn":"S","event_id":3,"event_type":"face_recog_event","event":{"event_id":3}}"#;
        assert!(matches!(Stored::parse(env), Ok(Stored::Event(_))));
        for bad in [
            &b"{"[..],
            br#"{"kind":"other"}"#,
            br#"{"kind":"face_result","camera":"c"}"#,
            br#"{"camera":"c"}"#,
        ] {
            assert!(
                Stored::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
