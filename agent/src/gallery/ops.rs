//! The operations of the gallery log (format version 1). Fields are never removed or renamed
//! within a version; new optional fields and new operations may be added (older readers ignore
//! them), so no `deny_unknown_fields` here.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Operation names this version knows; a line with another `op` is skipped, not an error.
pub const KNOWN: &[&str] = &[
    "person", "template", "delete", "reject", "unknown", "sighting", "forget",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// A person is created (first time its `pguid` is seen) or its attributes are replaced.
    Person {
        pguid: String,
        key: String,
        #[serde(default)]
        attrs: BTreeMap<String, String>,
        at_ms: u64,
    },
    /// A template added to a person.
    Template {
        pguid: String,
        tid: String,
        #[serde(flatten)]
        template: TemplateData,
    },
    /// A person and its templates are removed.
    Delete { pguid: String, at_ms: u64 },
    /// "This face is not that person": lowers the person's matches to look-alikes of it.
    Reject {
        pguid: String,
        model: String,
        #[serde(with = "shared")]
        embedding: Embedding,
        at_ms: u64,
    },
    /// An unknown face: a new unsolved entry, or one more exemplar of an existing one.
    Unknown {
        uguid: String,
        #[serde(flatten)]
        template: TemplateData,
        #[serde(flatten)]
        place: Place,
    },
    /// An unsolved entry seen again (no new exemplar); `times` > 1 only in a compacted log,
    /// standing for sightings no longer remembered one by one.
    Sighting {
        uguid: String,
        at_ms: u64,
        #[serde(flatten)]
        place: Place,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        times: u64,
    },
    /// An unsolved entry removed (expired, evicted, promoted to a person).
    Forget { uguid: String, at_ms: u64 },
}

/// What a template (of a person or of an unsolved entry) keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateData {
    /// The embedding space (`mobilefacenet`): only templates of the probe's space are compared.
    pub model: String,
    /// L2-normalised embedding.
    #[serde(with = "shared")]
    pub embedding: Embedding,
    /// Quality of the face it came from (as in the face result).
    #[serde(default)]
    pub quality: Option<JsonText>,
    /// The aligned 112×112 crop, relative to the gallery directory (`crops/<id>.rgb`), kept so a
    /// model change can re-embed without re-enrolling.
    #[serde(default)]
    pub crop: Option<String>,
    pub at_ms: u64,
    /// Set by `gallery reembed`: the template whose crop this one was embedded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// An embedding, shared between the gallery's state and its search index (held once: a
/// 10k-person gallery's embeddings are 5 MB of a gateway's 64 MB).
pub type Embedding = Arc<[f32]>;

/// Serde for [`Embedding`] as a plain JSON array.
mod shared {
    use super::*;

    pub fn serialize<S: Serializer>(e: &Embedding, s: S) -> Result<S::Ok, S::Error> {
        e[..].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Embedding, D::Error> {
        Vec::<f32>::deserialize(d).map(Embedding::from)
    }
}

/// A JSON value the gallery keeps but never reads (a template's quality), held as its compact
/// text: a parsed map costs ~20 small allocations per template, the text one.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonText(Box<str>);

impl JsonText {
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(v: serde_json::Value) -> JsonText {
        JsonText(v.to_string().into_boxed_str())
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Through a value, not raw text: raw JSON does not survive serde's `flatten`.
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonText, D::Error> {
        serde_json::Value::deserialize(d).map(JsonText::from)
    }
}

/// Which event an unsolved entry was seen in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Place {
    #[serde(default)]
    pub camera: String,
    #[serde(default)]
    pub sn: String,
    #[serde(default)]
    pub event_id: i64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

impl Op {
    /// Whether every embedding value is a finite number (JSON cannot hold the others, and one
    /// would poison every score it enters).
    pub fn is_finite(&self) -> bool {
        let e: &[f32] = match self {
            Op::Template { template, .. } | Op::Unknown { template, .. } => &template.embedding,
            Op::Reject { embedding, .. } => embedding,
            _ => &[],
        };
        e.iter().all(|v| v.is_finite())
    }
}
