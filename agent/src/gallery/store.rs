//! [`Gallery`]: the handle the vision stage and the CLI use. Every change is one log append
//! (durable when the call returns); changes by other processes are picked up by
//! [`Gallery::refresh`], which the stage calls before each search (one `stat` when nothing
//! changed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::log::{create_dir_adopted, write_file_atomic, Delta, Log};
use super::matching::{decide, Candidate, Decision, Index};
use super::ops::{JsonText, Op, Place, TemplateData};
use super::state::{Person, State, Unknown, MAX_EXEMPLARS};
use super::{GalleryConfig, GalleryError};
use crate::clock::SharedClock;

/// Side of the aligned crops kept with templates (the ArcFace template size).
pub const CROP_SIDE: u32 = 112;

/// A template to add: an embedding and what it came from.
#[derive(Debug, Clone)]
pub struct NewTemplate {
    pub model: String,
    pub embedding: Vec<f32>,
    pub quality: Option<serde_json::Value>,
    /// The aligned crop, `CROP_SIDE`² RGB bytes.
    pub crop: Option<Vec<u8>>,
}

/// The event an unknown face was seen in.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub camera: String,
    pub sn: String,
    pub event_id: i64,
}

/// What an enroll did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrolled {
    pub key: String,
    pub pguid: String,
    pub created: bool,
    pub templates_added: Vec<String>,
    pub templates: usize,
}

pub struct Gallery {
    cfg: GalleryConfig,
    log: Log,
    state: State,
    /// The search index of one embedding space, rebuilt after a change of persons.
    index: Option<Index>,
    clock: SharedClock,
    /// Operations of a later format version skipped so far.
    pub skipped_ops: usize,
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gallery")
            .field("dir", &self.cfg.dir)
            .field("persons", &self.state.persons.len())
            .field("unknowns", &self.state.unknowns.len())
            .finish()
    }
}

impl Gallery {
    /// Opens `cfg.dir` (creating an empty gallery there if there is none) and reads it whole.
    /// A damaged record before the end is an error naming the file and the record.
    pub fn open(cfg: &GalleryConfig, clock: SharedClock) -> Result<Gallery, GalleryError> {
        let mut state = State::default();
        let (log, delta) = Log::open(&cfg.dir, &mut |op| state.apply(op))?;
        Ok(Gallery {
            cfg: cfg.clone(),
            log,
            state,
            index: None,
            clock,
            skipped_ops: delta.skipped,
        })
    }

    /// Reads the gallery of `cfg.dir` if there is one (creates nothing): persons and unsolved
    /// entries, or the error that would stop the daemon.
    pub fn check(cfg: &GalleryConfig) -> Result<Option<(usize, usize)>, GalleryError> {
        if !Log::path(&cfg.dir).exists() {
            return Ok(None);
        }
        let g = Gallery::open(cfg, crate::clock::system())?;
        Ok(Some((g.persons().count(), g.unknowns().count())))
    }

    pub fn config(&self) -> &GalleryConfig {
        &self.cfg
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    fn apply(&mut self, delta: Delta) {
        if delta.reset {
            self.state = State::default();
        }
        if delta.reset || delta.ops.iter().any(Op::touches_persons) {
            self.index = None;
        }
        self.skipped_ops += delta.skipped;
        for op in delta.ops {
            self.state.apply(op);
        }
    }

    /// Picks up what other processes wrote; `true` when something changed.
    pub fn refresh(&mut self) -> Result<bool, GalleryError> {
        let delta = self.log.read_new()?;
        let changed = delta.reset || !delta.ops.is_empty();
        self.apply(delta);
        Ok(changed)
    }

    /// Appends `ops` durably and applies them (after whatever others appended first).
    pub(super) fn commit(&mut self, ops: Vec<Op>) -> Result<(), GalleryError> {
        if !ops.iter().all(Op::is_finite) {
            return Err(GalleryError::Invalid(
                "an embedding value is not a finite number".into(),
            ));
        }
        let delta = self.log.append(&ops)?;
        self.apply(delta);
        self.apply(Delta {
            ops,
            ..Delta::default()
        });
        Ok(())
    }

    pub(super) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Writes a crop file (before the operation that names it, so a named crop always exists).
    fn save_crop(&self, id: &str, crop: &Option<Vec<u8>>) -> Result<Option<String>, GalleryError> {
        let Some(bytes) = crop else {
            return Ok(None);
        };
        if bytes.len() != (CROP_SIDE * CROP_SIDE * 3) as usize {
            return Err(GalleryError::Invalid(format!(
                "a crop must be {CROP_SIDE}x{CROP_SIDE} RGB ({} bytes), got {}",
                CROP_SIDE * CROP_SIDE * 3,
                bytes.len()
            )));
        }
        let rel = format!("crops/{id}.rgb");
        let path = self.cfg.dir.join(&rel);
        let dir = self.cfg.dir.join("crops");
        create_dir_adopted(&dir, &self.cfg.dir)?;
        write_file_atomic(&path, bytes)?;
        Ok(Some(rel))
    }

    /// The bytes of a kept crop.
    pub fn crop(&self, rel: &str) -> Result<Vec<u8>, GalleryError> {
        let path = self.cfg.dir.join(rel);
        std::fs::read(&path).map_err(GalleryError::io(&path))
    }

    pub(super) fn template_data(
        &self,
        id: &str,
        t: NewTemplate,
    ) -> Result<TemplateData, GalleryError> {
        Ok(TemplateData {
            crop: self.save_crop(id, &t.crop)?,
            model: t.model,
            embedding: t.embedding.into(),
            quality: t.quality.map(JsonText::from),
            at_ms: self.now(),
            from: None,
        })
    }

    /// Adds `templates` to the person `key` (created with a new `pguid` if there is none);
    /// `attrs`, when given, replace the person's attributes.
    pub fn enroll(
        &mut self,
        key: &str,
        attrs: Option<BTreeMap<String, String>>,
        templates: Vec<NewTemplate>,
    ) -> Result<Enrolled, GalleryError> {
        self.refresh()?;
        if key.is_empty() {
            return Err(GalleryError::Invalid(
                "a person's key must not be empty".into(),
            ));
        }
        let existing = self.state.person_by_key(key).cloned();
        let created = existing.is_none();
        let pguid = existing
            .as_ref()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |p| p.pguid.to_string());
        let mut ops = Vec::new();
        if created || attrs.is_some() {
            ops.push(Op::Person {
                pguid: pguid.clone(),
                key: key.to_owned(),
                attrs: attrs.unwrap_or_else(|| existing.map(|p| p.attrs()).unwrap_or_default()),
                at_ms: self.now(),
            });
        }
        let mut added = Vec::new();
        for t in templates {
            let tid = uuid::Uuid::new_v4().to_string();
            let template = self.template_data(&tid, t)?;
            ops.push(Op::Template {
                pguid: pguid.clone(),
                tid: tid.clone(),
                template,
            });
            added.push(tid);
        }
        self.commit(ops)?;
        let templates = self
            .state
            .persons
            .get(pguid.as_str())
            .map_or(0, |p| p.templates.len());
        Ok(Enrolled {
            key: key.to_owned(),
            pguid,
            created,
            templates_added: added,
            templates,
        })
    }

    /// Removes the person `key` with its templates (their crop files too).
    pub fn delete(&mut self, key: &str) -> Result<Person, GalleryError> {
        self.refresh()?;
        let p = self
            .state
            .person_by_key(key)
            .cloned()
            .ok_or_else(|| GalleryError::NoPerson(key.to_owned()))?;
        self.commit(vec![Op::Delete {
            pguid: p.pguid.to_string(),
            at_ms: self.now(),
        }])?;
        let crops: Vec<&str> = p
            .templates
            .iter()
            .filter_map(|t| t.data.crop.as_deref())
            .collect();
        self.remove_crops(&crops);
        Ok(p)
    }

    /// Records that a face with `embedding` is not the person `key`.
    pub fn reject(
        &mut self,
        key: &str,
        model: &str,
        embedding: Vec<f32>,
    ) -> Result<(), GalleryError> {
        self.refresh()?;
        let pguid = self
            .state
            .person_by_key(key)
            .map(|p| p.pguid.to_string())
            .ok_or_else(|| GalleryError::NoPerson(key.to_owned()))?;
        self.commit(vec![Op::Reject {
            pguid,
            model: model.to_owned(),
            embedding: embedding.into(),
            at_ms: self.now(),
        }])
    }

    pub fn persons(&self) -> impl Iterator<Item = &Person> {
        self.state.persons.values()
    }

    pub fn person(&self, key: &str) -> Option<&Person> {
        self.state.person_by_key(key)
    }

    pub fn unknowns(&self) -> impl Iterator<Item = &Unknown> {
        self.state.unknowns.values()
    }

    pub fn unknown(&self, uguid: &str) -> Option<&Unknown> {
        self.state.unknowns.get(uguid)
    }

    fn index(&mut self, model: &str) -> &Index {
        if self.index.as_ref().is_none_or(|i| i.model() != model) {
            self.index = Some(Index::build(&self.state, model));
        }
        self.index.as_ref().expect("just built")
    }

    /// Builds the search index of `model` now rather than at the first search (the daemon does
    /// this at start-up: the first face is not slowed, and the memory figure is the real one).
    pub fn warm(&mut self, model: &str) -> usize {
        self.index(model).templates()
    }

    /// The `k` persons closest to `probe`, best first (scores of the embedding space `model`;
    /// `usize::MAX` ranks everyone).
    pub fn search(&mut self, probe: &[f32], model: &str, k: usize) -> Vec<Candidate> {
        let margin = self.cfg.margin;
        self.index(model).search(probe, margin, k)
    }

    /// The open-set decision for `probe`, with the two best candidates it came from.
    pub fn identify(&mut self, probe: &[f32], model: &str) -> (Decision, Vec<Candidate>) {
        let ranked = self.search(probe, model, 2);
        let d = decide(&ranked, self.cfg.match_threshold, self.cfg.margin);
        (d, ranked)
    }

    /// Files an unknown face: the unsolved entry it resembles gets a sighting (and, while it
    /// has few, a new exemplar), or a new entry is made (the one seen longest ago is forgotten
    /// when `max_unknowns` are kept). Returns the entry's `uguid`.
    pub fn file_unknown(&mut self, mut t: NewTemplate, seen: Seen) -> Result<String, GalleryError> {
        self.refresh()?;
        let now = self.now();
        let place = Place {
            camera: seen.camera,
            sn: seen.sn,
            event_id: seen.event_id,
        };
        let mut ops = self.expiry_ops(now);
        let nearest = self.nearest_unknown(&t.embedding, &t.model);
        let uguid = match nearest {
            Some((uguid, n)) if n >= MAX_EXEMPLARS => {
                ops.push(Op::Sighting {
                    uguid: uguid.clone(),
                    at_ms: now,
                    place,
                    times: 1,
                });
                uguid
            }
            found => {
                let fresh = found.is_none();
                let uguid = found.map_or_else(|| uuid::Uuid::new_v4().to_string(), |f| f.0);
                if fresh {
                    ops.extend(self.eviction_ops(now));
                } else {
                    // One crop per stranger (the first face): enough to re-embed after a model
                    // change, and the gallery's disk use stays one crop per unsolved entry.
                    t.crop = None;
                }
                let template = self.template_data(&format!("u-{}", uuid::Uuid::new_v4()), t)?;
                ops.push(Op::Unknown {
                    uguid: uguid.clone(),
                    template,
                    place,
                });
                uguid
            }
        };
        let gone = self.crops_of_forgotten(&ops);
        self.commit(ops)?;
        self.remove_crops(&gone);
        Ok(uguid)
    }

    /// The crop files of the unsolved entries that `ops` forget.
    fn crops_of_forgotten(&self, ops: &[Op]) -> Vec<String> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Forget { uguid, .. } => self.state.unknowns.get(uguid),
                _ => None,
            })
            .flat_map(|u| u.exemplars.iter().filter_map(|t| t.crop.clone()))
            .collect()
    }

    /// Deletes crop files no operation names any more (after the operation that dropped them
    /// is durable: a crash in between leaves a stray file, never a missing one).
    pub(super) fn remove_crops<S: AsRef<str>>(&self, rels: &[S]) {
        for rel in rels {
            let _ = std::fs::remove_file(self.cfg.dir.join(rel.as_ref()));
        }
    }

    /// An unsolved entry, after catching up with other processes.
    fn unknown_now(&mut self, uguid: &str) -> Result<Unknown, GalleryError> {
        self.refresh()?;
        self.state
            .unknowns
            .get(uguid)
            .cloned()
            .ok_or_else(|| GalleryError::NoUnknown(uguid.to_owned()))
    }

    /// The entry whose exemplars come closest to `probe` at ≥ `cluster_threshold`, and how
    /// many exemplars it has.
    fn nearest_unknown(&self, probe: &[f32], model: &str) -> Option<(String, usize)> {
        let mut best: Option<(f32, &Unknown)> = None;
        for u in self.state.unknowns.values() {
            let s = u
                .exemplars
                .iter()
                .filter(|e| e.model == model && e.embedding.len() == probe.len())
                .map(|e| super::matching::dot(probe, &e.embedding))
                .fold(f32::MIN, f32::max);
            if s >= self.cfg.cluster_threshold && best.is_none_or(|b| s > b.0) {
                best = Some((s, u));
            }
        }
        best.map(|(_, u)| (u.uguid.clone(), u.exemplars.len()))
    }

    fn expiry_ops(&self, now: u64) -> Vec<Op> {
        let ttl = self.cfg.unknown_ttl_hours.saturating_mul(3_600_000);
        self.state
            .unknowns
            .values()
            .filter(|u| now.saturating_sub(u.last_ms) > ttl)
            .map(|u| Op::Forget {
                uguid: u.uguid.clone(),
                at_ms: now,
            })
            .collect()
    }

    /// Makes room for one more entry (the expired ones are already going).
    fn eviction_ops(&self, now: u64) -> Vec<Op> {
        let ttl = self.cfg.unknown_ttl_hours.saturating_mul(3_600_000);
        let mut live: Vec<&Unknown> = self
            .state
            .unknowns
            .values()
            .filter(|u| now.saturating_sub(u.last_ms) <= ttl)
            .collect();
        if live.len() < self.cfg.max_unknowns {
            return Vec::new();
        }
        live.sort_by_key(|u| u.last_ms);
        live[..=live.len() - self.cfg.max_unknowns]
            .iter()
            .map(|u| Op::Forget {
                uguid: u.uguid.clone(),
                at_ms: now,
            })
            .collect()
    }

    /// Removes an unsolved entry (and its crops).
    pub fn forget(&mut self, uguid: &str) -> Result<Unknown, GalleryError> {
        let u = self.unknown_now(uguid)?;
        self.commit(vec![Op::Forget {
            uguid: uguid.to_owned(),
            at_ms: self.now(),
        }])?;
        let crops: Vec<&str> = u
            .exemplars
            .iter()
            .filter_map(|t| t.crop.as_deref())
            .collect();
        self.remove_crops(&crops);
        Ok(u)
    }

    /// Enrolls the unsolved entry `uguid` as the person `key` (its exemplars become templates,
    /// their crops copied) and forgets the entry.
    pub fn promote(&mut self, uguid: &str, key: &str) -> Result<Enrolled, GalleryError> {
        let u = self.unknown_now(uguid)?;
        let templates = u
            .exemplars
            .iter()
            .map(|t| NewTemplate {
                model: t.model.clone(),
                embedding: t.embedding.to_vec(),
                quality: t.quality.as_ref().map(JsonText::value),
                crop: t.crop.as_deref().and_then(|c| self.crop(c).ok()),
            })
            .collect();
        let e = self.enroll(key, None, templates)?;
        self.forget(uguid)?;
        Ok(e)
    }

    /// Embeds every kept crop whose template is of another embedding space than `model` and has
    /// no `model` template made from it yet (after a model change: no re-enrolling). Returns the
    /// templates added and the ones that have no crop to embed from.
    pub fn reembed(
        &mut self,
        model: &str,
        mut embed: impl FnMut(Vec<u8>) -> Result<Vec<f32>, String>,
    ) -> Result<(usize, usize), GalleryError> {
        self.refresh()?;
        let (mut ops, mut no_crop) = (Vec::new(), 0);
        for p in self.state.persons.values() {
            let done: Vec<&str> = p
                .templates
                .iter()
                .filter(|t| t.data.model == model)
                .filter_map(|t| t.data.from.as_deref())
                .collect();
            for t in p.templates.iter().filter(|t| t.data.model != model) {
                if done.contains(&t.tid.as_str()) {
                    continue;
                }
                let Some(crop) = t.data.crop.as_deref().and_then(|c| self.crop(c).ok()) else {
                    no_crop += 1;
                    continue;
                };
                let embedding = embed(crop).map_err(GalleryError::Invalid)?;
                ops.push(Op::Template {
                    pguid: p.pguid.to_string(),
                    tid: uuid::Uuid::new_v4().to_string(),
                    template: TemplateData {
                        model: model.to_owned(),
                        embedding: embedding.into(),
                        quality: t.data.quality.clone(),
                        crop: t.data.crop.clone(),
                        at_ms: self.clock.now_ms(),
                        from: Some(t.tid.clone()),
                    },
                });
            }
        }
        let added = ops.len();
        self.commit(ops)?;
        Ok((added, no_crop))
    }

    /// Rewrites the log as the live state when it has grown past twice that (and 1000 lines);
    /// `true` when it did.
    pub fn maybe_compact(&mut self) -> Result<bool, GalleryError> {
        let ops = self.state.to_ops();
        if self.log.lines() < 1000 || self.log.lines() < 2 * ops.len() as u64 + 1 {
            return Ok(false);
        }
        self.log.compact(&ops)
    }

    /// The log file's path (for messages).
    pub fn log_path(&self) -> PathBuf {
        Log::path(&self.cfg.dir)
    }
}
