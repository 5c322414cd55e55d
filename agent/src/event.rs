//! Camera events (DECISIONS §4), decoded as typed, borrowed views of the raw JSON.
//!
//! The raw JSON is what camgate stores and forwards, so unknown fields (`vip_level`, `item1`,
//! ...) survive untouched; the typed view reads only what routing and de-duplication need and
//! borrows strings from the input instead of building a `serde_json::Value` tree.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// `event_id` is "long" in the text; some firmware sends it as a string. Both are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientInt).map(EventId)
    }
}

/// Integer fields the firmware may send as numbers or numeric strings.
struct LenientInt;

impl<'de> Visitor<'de> for LenientInt {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer or a string holding one")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("integer out of range"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.trim()
            .parse()
            .map_err(|_| E::custom(format!("not an integer: {v:?}")))
    }
}

fn lenient_opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer, a numeric string, an empty string or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            LenientInt.visit_u64(v).map(Some)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v as i64))
        }
        // "age: if it's blank, the age has not been set yet" — blank means absent.
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.trim().is_empty() {
                Ok(None)
            } else {
                LenientInt.visit_str(v).map(Some)
            }
        }
    }
    d.deserialize_any(V)
}

/// Strings the firmware may send as numbers (`faceid`, `vip_level`, ...).
fn lenient_opt_str<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
    }
    d.deserialize_any(V)
}

/// The fields of both event types, borrowed from the payload. Unknown fields are skipped here
/// (they stay in the raw JSON).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventView<'a> {
    pub event_id: EventId,
    /// Empty when the camera left it out: the event is still stored (tolerant intake).
    #[serde(default, borrow)]
    pub event_type: Cow<'a, str>,
    /// Empty when the camera left it out; de-duplication then keys on the camera's name.
    #[serde(default, borrow)]
    pub sn: Cow<'a, str>,
    #[serde(default, deserialize_with = "lenient_opt_int")]
    pub report_time: Option<i64>,
    // dynamic_detect_event
    #[serde(default, deserialize_with = "lenient_opt_int")]
    pub detect_type: Option<i64>,
    #[serde(default, borrow, deserialize_with = "lenient_opt_str")]
    pub video_url: Option<Cow<'a, str>>,
    // face_recog_event
    #[serde(default, borrow, deserialize_with = "lenient_opt_str")]
    pub faceid: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "lenient_opt_str")]
    pub cloud_faceid: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "lenient_opt_str")]
    pub group_name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt_int")]
    pub age: Option<i64>,
    #[serde(default, deserialize_with = "lenient_opt_int")]
    pub age_range: Option<i64>,
    #[serde(default, deserialize_with = "lenient_opt_int")]
    pub gender: Option<i64>,
    #[serde(default, deserialize_with = "lenient_opt_int")]
    pub arrive_times: Option<i64>,
    #[serde(default, borrow, deserialize_with = "lenient_opt_str")]
    pub pic_url: Option<Cow<'a, str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event is not a JSON object with an event_id: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event field `sn` is empty")]
    EmptySn,
}

/// Known event types; others are stored and forwarded as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    DynamicDetect,
    FaceRecog,
    Other,
}

pub const DYNAMIC_DETECT_EVENT: &str = "dynamic_detect_event";
pub const FACE_RECOG_EVENT: &str = "face_recog_event";
pub const KNOWN_EVENTS: &[&str] = &[DYNAMIC_DETECT_EVENT, FACE_RECOG_EVENT];

/// The path an event came by; the `detect_type` tables differ between them (DECISIONS §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Channel,
    Hook,
}

impl<'a> EventView<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Self, EventError> {
        // Only event_id is required: without it the event cannot be acknowledged. A missing
        // sn or event_type must not turn one odd event into a reconnect loop.
        Ok(serde_json::from_slice(raw)?)
    }

    pub fn kind(&self) -> EventKind {
        match &*self.event_type {
            DYNAMIC_DETECT_EVENT => EventKind::DynamicDetect,
            FACE_RECOG_EVENT => EventKind::FaceRecog,
            _ => EventKind::Other,
        }
    }

    /// A label for `detect_type`, from the table of the path the event came by.
    pub fn detect_label(&self, source: Source) -> Option<&'static str> {
        let t = self.detect_type?;
        Some(match (source, t) {
            (Source::Channel, 1) => "picture changed",
            (Source::Channel, 2) => "voice changed",
            (Source::Channel, 3) => "picture and voice changed",
            (Source::Hook, 0) => "motion detected",
            (Source::Hook, 1) => "audio detected",
            (Source::Hook, 2) => "motion and audio detected",
            (Source::Hook, 3) => "human detected",
            _ => "unknown",
        })
    }
}

/// What the outbox stores for each accepted event: where it came from, when, and the event's
/// own JSON exactly as the camera sent it.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    pub camera: &'a str,
    pub source: Source,
    /// Unix milliseconds at which camgate accepted the event.
    pub received_at_ms: u64,
    pub sn: &'a str,
    pub event_id: EventId,
    pub event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_label: Option<&'static str>,
    pub event: &'a serde_json::value::RawValue,
}

impl<'a> Envelope<'a> {
    /// Serialises the envelope around `raw` (which must be the bytes `view` was parsed from).
    pub fn encode(
        camera: &str,
        source: Source,
        received_at_ms: u64,
        view: &EventView<'_>,
        raw: &[u8],
    ) -> Result<Vec<u8>, EventError> {
        let text = std::str::from_utf8(raw).map_err(|e| {
            EventError::Json(serde_json::Error::io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        })?;
        let event: &serde_json::value::RawValue = serde_json::from_str(text.trim())?;
        let env = Envelope {
            camera,
            source,
            received_at_ms,
            sn: &view.sn,
            event_id: view.event_id,
            event_type: &view.event_type,
            detect_label: view.detect_label(source),
            event,
        };
        Ok(serde_json::to_vec(&env)?)
    }
}

/// The stored envelope read back (`outbox dump`, sinks).
#[derive(Debug, Deserialize)]
pub struct StoredEnvelope<'a> {
    #[serde(borrow)]
    pub camera: Cow<'a, str>,
    pub received_at_ms: u64,
    #[serde(borrow)]
    pub sn: Cow<'a, str>,
    pub event_id: EventId,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(borrow)]
    pub event: &'a serde_json::value::RawValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The face event of the spec's Message Channel section, with its extra attributes.
    pub const FACE: &str = r#"{"event_id":2,"event_type":"face_recog_event","sn":"FS101D8BS00106","report_time":15930292837,"group_name":"vip","faceid":"00000001","cloud_faceid":"8798765433","age":10,"gender":2,"arrive_times":4,"pic_url":"https://192.168.103.117/mnt/sd-card/sunmi_image/snap/1597894624456_7.jpg?auth_key=1597894624-f88c2f9a6e69834430648c2f4931ffae","vip_level":"1","hobby":"tennis","weight":"60","height":"180"}"#;

    #[test]
    fn face_event_typed_and_borrowed() {
        let v = EventView::parse(FACE.as_bytes()).unwrap();
        assert_eq!(v.event_id, EventId(2));
        assert_eq!(v.kind(), EventKind::FaceRecog);
        assert!(matches!(v.sn, Cow::Borrowed("FS101D8BS00106")));
        assert_eq!(v.age, Some(10));
        assert_eq!(v.faceid.as_deref(), Some("00000001"));
    }

    #[test]
    fn dynamic_event_labels_depend_on_the_path() {
        let raw = br#"{"event_id":1,"event_type":"dynamic_detect_event","sn":"FS1","report_time":1,"detect_type":3,"video_url":"https://x/a.flv"}"#;
        let v = EventView::parse(raw).unwrap();
        assert_eq!(
            v.detect_label(Source::Channel),
            Some("picture and voice changed")
        );
        assert_eq!(v.detect_label(Source::Hook), Some("human detected"));
    }

    #[test]
    fn lenient_fields() {
        let raw = br#"{"event_id":"17","event_type":"face_recog_event","sn":"S","age":"","faceid":358526,"gender":null}"#;
        let v = EventView::parse(raw).unwrap();
        assert_eq!(v.event_id, EventId(17));
        assert_eq!(v.age, None);
        assert_eq!(v.faceid.as_deref(), Some("358526"));
    }

    #[test]
    fn bad_events_are_typed_errors() {
        for raw in [
            &b"{"[..],
            b"[]",
            br#"{"event_type":"x","sn":"S"}"#,
            br#"{"event_id":"x"}"#,
            b"\xff",
        ] {
            assert!(
                EventView::parse(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn missing_sn_and_type_are_tolerated() {
        let v = EventView::parse(br#"{"event_id":3}"#).unwrap();
        assert_eq!(
            (v.event_id, &*v.sn, v.kind()),
            (EventId(3), "", EventKind::Other)
        );
    }

    #[test]
    fn envelope_keeps_unknown_fields_verbatim() {
        let v = EventView::parse(FACE.as_bytes()).unwrap();
        let bytes = Envelope::encode("door-1", Source::Channel, 123, &v, FACE.as_bytes()).unwrap();
        let back: StoredEnvelope = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.event.get(), FACE);
        assert_eq!(back.camera, "door-1");
        assert_eq!(back.event_id, EventId(2));
    }
}
