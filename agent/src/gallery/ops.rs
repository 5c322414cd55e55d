//! The operations of the gallery log (format version 1). Fields are never removed or renamed
//! within a version; new optional fields and new operations may be added (older readers ignore
//! them), so no `deny_unknown_fields` here.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Operation names this version knows; a line with another `op` is skipped, not an error.
pub const KNOWN: &[&str] = &[
    "person", "template", "delete", "reject", "unknown", "sighting", "forget", "history",
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
    /// A sighting that became a person's history: an unsolved entry linked to the person by a
    /// reverse latent match (added in this version; older readers skip it).
    History {
        pguid: String,
        at_ms: u64,
        #[serde(flatten)]
        place: Place,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        times: u64,
    },
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

/// An L2-normalised embedding: a run of floats in a shared block. The operations read from the
/// log in one go (one read chunk) keep their embeddings in one block ([`pack`]): no allocation
/// per template, and a search over a loaded gallery reads memory forwards. The state and the
/// search index share the block (a 10k-person gallery's embeddings are 7.7 MB of a gateway's
/// 64 MB: held once).
#[derive(Clone)]
pub struct Embedding {
    block: Arc<[f32]>,
    at: u32,
    len: u32,
}

impl std::ops::Deref for Embedding {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.block[self.at as usize..(self.at + self.len) as usize]
    }
}

impl From<Vec<f32>> for Embedding {
    fn from(v: Vec<f32>) -> Embedding {
        let len = v.len() as u32;
        Embedding {
            block: v.into(),
            at: 0,
            len,
        }
    }
}

impl PartialEq for Embedding {
    fn eq(&self, other: &Embedding) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Moves the embeddings of `ops` into one block (their own allocations are freed when the
/// caller drops the originals, all at once: no holes left between what stays).
pub fn pack(ops: &mut [Op]) {
    let mut all: Vec<&mut Embedding> = ops
        .iter_mut()
        .filter_map(|op| match op {
            Op::Template { template, .. } | Op::Unknown { template, .. } => {
                Some(&mut template.embedding)
            }
            Op::Reject { embedding, .. } => Some(embedding),
            _ => None,
        })
        .collect();
    let total: usize = all.iter().map(|e| e.len()).sum();
    if all.len() < 2 || total > u32::MAX as usize {
        return;
    }
    let mut floats = Vec::with_capacity(total);
    for e in &all {
        floats.extend_from_slice(e);
    }
    let block: Arc<[f32]> = floats.into();
    let mut at = 0u32;
    for e in &mut all {
        let len = e.len;
        **e = Embedding {
            block: block.clone(),
            at,
            len,
        };
        at += len;
    }
}

/// Serde for [`Embedding`] as a plain JSON array.
mod shared {
    use super::*;

    pub fn serialize<S: Serializer>(e: &Embedding, s: S) -> Result<S::Ok, S::Error> {
        (**e).serialize(s)
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
    /// Whether the operation changes who is enrolled or how they match (the search index is
    /// rebuilt after these only: filing a stranger must not rebuild a 10k-person index).
    pub fn touches_persons(&self) -> bool {
        matches!(
            self,
            Op::Person { .. } | Op::Template { .. } | Op::Delete { .. } | Op::Reject { .. }
        )
    }

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
