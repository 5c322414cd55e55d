//! What transactions need of the gallery beyond enrolling: the unsolved entry a face matches
//! (reverse latent match), linking that entry to a person, and replacing a person's templates.

use super::matching::dot;
use super::ops::Op;
use super::state::history_ops;
use super::store::{Gallery, NewTemplate};
use super::GalleryError;

impl Gallery {
    /// The unsolved entry whose best exemplar of `model` is closest to `probe`, if at
    /// `cluster_threshold` or above: the stranger this face is.
    pub fn best_unknown(
        &mut self,
        probe: &[f32],
        model: &str,
    ) -> Result<Option<(String, f32)>, GalleryError> {
        self.refresh()?;
        let bar = self.config().cluster_threshold;
        let best = self
            .unknowns()
            .filter_map(|u| {
                u.exemplars
                    .iter()
                    .filter(|t| t.model == model && t.embedding.len() == probe.len())
                    .map(|t| dot(&t.embedding, probe))
                    .max_by(f32::total_cmp)
                    .map(|s| (u.uguid.clone(), s))
            })
            .filter(|(_, s)| *s >= bar)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        Ok(best)
    }

    /// Makes the unsolved entry `uguid` part of the person `key`: its sightings become the
    /// person's history, and the entry is forgotten. An entry already gone (expired, or linked
    /// before a crash) is not an error: returns `false`.
    pub fn link_unknown(&mut self, uguid: &str, key: &str) -> Result<bool, GalleryError> {
        self.refresh()?;
        let pguid = self
            .person(key)
            .map(|p| p.pguid.to_string())
            .ok_or_else(|| GalleryError::NoPerson(key.to_owned()))?;
        let Some(u) = self.unknown(uguid).cloned() else {
            return Ok(false);
        };
        let crops: Vec<String> = u.exemplars.iter().filter_map(|t| t.crop.clone()).collect();
        let extra = u.count.saturating_sub(u.sightings.len() as u64);
        let mut ops: Vec<Op> = u
            .sightings
            .iter()
            .enumerate()
            .map(|(i, (at_ms, place))| Op::History {
                pguid: pguid.clone(),
                at_ms: *at_ms,
                place: place.clone(),
                times: if i == 0 { 1 + extra } else { 1 },
            })
            .collect();
        ops.push(Op::Forget {
            uguid: uguid.to_owned(),
            at_ms: self.now(),
        });
        self.commit(ops)?;
        self.remove_crops(&crops);
        Ok(true)
    }

    /// Replaces every template of the person `key` by `templates` (an update exception treated
    /// as "incorrect enroll"): the person keeps its `pguid`, attributes and history.
    pub fn replace_templates(
        &mut self,
        key: &str,
        templates: Vec<NewTemplate>,
    ) -> Result<(), GalleryError> {
        self.refresh()?;
        let p = self
            .person(key)
            .cloned()
            .ok_or_else(|| GalleryError::NoPerson(key.to_owned()))?;
        let pguid = p.pguid.to_string();
        let mut ops = vec![
            Op::Delete {
                pguid: pguid.clone(),
                at_ms: self.now(),
            },
            Op::Person {
                pguid: pguid.clone(),
                key: key.to_owned(),
                attrs: p.attrs(),
                at_ms: p.created_ms,
            },
        ];
        ops.extend(history_ops(&p));
        for t in templates {
            let tid = uuid::Uuid::new_v4().to_string();
            let template = self.template_data(&tid, t)?;
            ops.push(Op::Template {
                pguid: pguid.clone(),
                tid,
                template,
            });
        }
        self.commit(ops)?;
        let crops: Vec<String> = p
            .templates
            .iter()
            .filter_map(|t| t.data.crop.clone())
            .collect();
        self.remove_crops(&crops);
        Ok(())
    }
}
