//! The gallery in memory, rebuilt by applying the log's operations in order. Applying is total:
//! an operation about a person or entry that does not exist (deleted meanwhile by another
//! process) is ignored, so replay never fails on content, only on damage.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::ops::{Embedding, Op, Place, TemplateData};

/// Exemplar embeddings kept per unsolved entry (the first ones seen; enough to recognise the
/// stranger from a few angles without letting one entry drift into another).
pub const MAX_EXEMPLARS: usize = 5;
/// Sightings remembered per unsolved entry (the count keeps going).
pub const MAX_SIGHTINGS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub tid: String,
    pub data: TemplateData,
}

/// A person. The `pguid` and `key` are shared (`Arc`) with the maps and the search index that
/// name the person, not copied into each.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub pguid: Arc<str>,
    pub key: Arc<str>,
    /// Sorted by name (a map's node costs ~0.5 KB even for one attribute).
    attrs: Box<[(String, String)]>,
    pub templates: Vec<Template>,
    /// Negative examples ("not this person"): model and embedding.
    pub negatives: Vec<(String, Embedding)>,
    pub created_ms: u64,
    /// Times cameras saw this person before they were enrolled (unsolved entries linked to
    /// them), and the latest of those sightings, oldest first.
    pub seen_before: u64,
    pub history: VecDeque<(u64, Place)>,
}

impl Person {
    /// The person's attributes.
    pub fn attrs(&self) -> BTreeMap<String, String> {
        self.attrs.iter().cloned().collect()
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        let i = self
            .attrs
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()?;
        Some(&self.attrs[i].1)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unknown {
    pub uguid: String,
    pub exemplars: Vec<TemplateData>,
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// The latest sightings, oldest first.
    pub sightings: VecDeque<(u64, Place)>,
}

#[derive(Debug, Default)]
pub struct State {
    pub persons: BTreeMap<Arc<str>, Person>,
    /// key → pguid
    pub keys: HashMap<Arc<str>, Arc<str>>,
    pub unknowns: BTreeMap<String, Unknown>,
}

impl State {
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Person {
                pguid,
                key,
                attrs,
                at_ms,
            } => self.upsert_person(pguid, key, attrs, at_ms),
            Op::Template {
                pguid,
                tid,
                template,
            } => {
                if let Some(p) = self.persons.get_mut(pguid.as_str()) {
                    // Room for this one only: most persons have one or two templates, and the
                    // default growth would reserve four.
                    p.templates.reserve_exact(1);
                    p.templates.push(Template {
                        tid,
                        data: template,
                    });
                }
            }
            Op::Delete { pguid, .. } => {
                if let Some(p) = self.persons.remove(pguid.as_str()) {
                    self.keys.remove(&p.key);
                }
            }
            Op::Reject {
                pguid,
                model,
                embedding,
                ..
            } => {
                if let Some(p) = self.persons.get_mut(pguid.as_str()) {
                    p.negatives.push((model, embedding));
                }
            }
            Op::Unknown {
                uguid,
                template,
                place,
            } => self.see(uguid, template.at_ms, place, Some(template), 1),
            Op::Sighting {
                uguid,
                at_ms,
                place,
                times,
            } => self.see(uguid, at_ms, place, None, times.max(1)),
            Op::History {
                pguid,
                at_ms,
                place,
                times,
            } => {
                if let Some(p) = self.persons.get_mut(pguid.as_str()) {
                    p.seen_before += times;
                    if p.history.len() == MAX_SIGHTINGS {
                        p.history.pop_front();
                    }
                    p.history.push_back((at_ms, place));
                }
            }
            Op::Forget { uguid, .. } => {
                self.unknowns.remove(&uguid);
            }
        }
    }

    fn upsert_person(
        &mut self,
        pguid: String,
        key: String,
        attrs: BTreeMap<String, String>,
        at_ms: u64,
    ) {
        // A key names one person: a second pguid under the same key replaces the first (only a
        // concurrent enroll of one key from two processes can do this; the later one wins).
        if let Some(old) = self
            .keys
            .get(key.as_str())
            .filter(|g| ***g != *pguid)
            .cloned()
        {
            self.persons.remove(&old);
        }
        let pguid: Arc<str> = match self.persons.get_key_value(pguid.as_str()) {
            Some((shared, _)) => shared.clone(),
            None => pguid.into(),
        };
        let key: Arc<str> = match self.persons.get(&pguid) {
            Some(p) if *p.key == *key => p.key.clone(),
            Some(p) => {
                // The person's key changed: its old name no longer leads to it.
                if self.keys.get(&p.key) == Some(&pguid) {
                    self.keys.remove(&p.key);
                }
                key.into()
            }
            None => key.into(),
        };
        self.keys.insert(key.clone(), pguid.clone());
        let p = self.persons.entry(pguid.clone()).or_insert_with(|| Person {
            pguid,
            key: key.clone(),
            attrs: Box::default(),
            templates: Vec::new(),
            negatives: Vec::new(),
            created_ms: at_ms,
            seen_before: 0,
            history: VecDeque::new(),
        });
        p.key = key;
        p.attrs = attrs.into_iter().collect();
    }

    fn see(
        &mut self,
        uguid: String,
        at_ms: u64,
        place: Place,
        exemplar: Option<TemplateData>,
        times: u64,
    ) {
        let u = match self.unknowns.get_mut(&uguid) {
            Some(u) => u,
            // A sighting of an entry forgotten meanwhile is dropped; a new exemplar starts one.
            None if exemplar.is_none() => return,
            None => self.unknowns.entry(uguid.clone()).or_insert(Unknown {
                uguid,
                exemplars: Vec::new(),
                count: 0,
                first_ms: at_ms,
                last_ms: at_ms,
                sightings: VecDeque::new(),
            }),
        };
        if let Some(t) = exemplar {
            if u.exemplars.len() < MAX_EXEMPLARS {
                u.exemplars.push(t);
            }
        }
        u.count += times;
        u.first_ms = u.first_ms.min(at_ms);
        u.last_ms = u.last_ms.max(at_ms);
        if u.sightings.len() == MAX_SIGHTINGS {
            u.sightings.pop_front();
        }
        u.sightings.push_back((at_ms, place));
    }

    pub fn person_by_key(&self, key: &str) -> Option<&Person> {
        self.persons.get(self.keys.get(key)?)
    }

    /// The live state as operations (what compaction writes). Sightings beyond the remembered
    /// ones are folded into the count by repeating the last one's place.
    pub fn to_ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for p in self.persons.values() {
            ops.push(Op::Person {
                pguid: p.pguid.to_string(),
                key: p.key.to_string(),
                attrs: p.attrs(),
                at_ms: p.created_ms,
            });
            for t in &p.templates {
                ops.push(Op::Template {
                    pguid: p.pguid.to_string(),
                    tid: t.tid.clone(),
                    template: t.data.clone(),
                });
            }
            ops.extend(history_ops(p));
            for (model, e) in &p.negatives {
                ops.push(Op::Reject {
                    pguid: p.pguid.to_string(),
                    model: model.clone(),
                    embedding: e.clone(),
                    at_ms: p.created_ms,
                });
            }
        }
        for u in self.unknowns.values() {
            ops.extend(unknown_ops(u));
        }
        ops
    }
}

/// A person's history as operations: the remembered sightings, the first carrying the count
/// of the forgotten ones.
pub fn history_ops(p: &Person) -> impl Iterator<Item = Op> + '_ {
    let extra = p.seen_before.saturating_sub(p.history.len() as u64);
    p.history
        .iter()
        .enumerate()
        .map(move |(i, (at_ms, place))| Op::History {
            pguid: p.pguid.to_string(),
            at_ms: *at_ms,
            place: place.clone(),
            times: if i == 0 { 1 + extra } else { 1 },
        })
}

/// One unsolved entry as operations that rebuild it: its exemplars, count, first and last
/// seen exactly; of the sightings, the remembered ones.
fn unknown_ops(u: &Unknown) -> Vec<Op> {
    let mut ops = Vec::new();
    let first_place = u.sightings.front().map(|s| s.1.clone()).unwrap_or_default();
    for (i, t) in u.exemplars.iter().enumerate() {
        let mut t = t.clone();
        if i == 0 {
            t.at_ms = u.first_ms;
        }
        ops.push(Op::Unknown {
            uguid: u.uguid.clone(),
            template: t,
            place: first_place.clone(),
        });
    }
    let rest = u.count.saturating_sub(u.exemplars.len() as u64);
    let kept: Vec<&(u64, Place)> = u.sightings.iter().rev().take(rest as usize).collect();
    let folded = rest - kept.len() as u64;
    if folded > 0 {
        ops.push(Op::Sighting {
            uguid: u.uguid.clone(),
            at_ms: u.first_ms,
            place: first_place,
            times: folded,
        });
    }
    for (at_ms, place) in kept.into_iter().rev() {
        ops.push(Op::Sighting {
            uguid: u.uguid.clone(),
            at_ms: *at_ms,
            place: place.clone(),
            times: 1,
        });
    }
    ops
}
