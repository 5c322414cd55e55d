//! 1:N search and the open-set rule.
//!
//! Per person two scores are computed from the cosines of the probe with each template: the best
//! template and a trimmed mean (the lowest and highest fifth dropped). The **best template
//! decides**: a person's templates are deliberately different looks (glasses, light, angle), and
//! a probe that matches one look well is that person; the trimmed mean would punish exactly the
//! varied galleries that recognise best. The trimmed mean is reported beside it (search output,
//! calibration) as the evidence of how consistent the match is.
//!
//! Negative examples (`gallery reject KEY IMG`): a probe closer to one of the person's negatives
//! than to any of the person's templates is never that person (its score becomes -1); one almost
//! as close (within `margin`) is pushed down by the shortfall. A look-alike once confused for the
//! person no longer takes their identity, while the person's own faces (closer to their templates
//! than to the look-alike) still match.
//!
//! Open set: the top person is the identity only if its score ≥ `match_threshold` and beats the
//! second-best *person* by `margin`; otherwise the face is unknown.

use std::sync::Arc;

use super::ops::Embedding;
use super::state::{Person, State};

/// One person's scores against a probe.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Candidate {
    pub key: String,
    pub pguid: String,
    /// The deciding score (best template, lowered by negative examples).
    pub score: f32,
    pub best: f32,
    pub trimmed_mean: f32,
    pub templates: usize,
}

/// The open-set outcome for one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Match(Candidate),
    /// Not good enough, or too close to the runner-up (the best candidate, if any).
    Unknown(Option<Candidate>),
}

/// One embedding space's templates, rows grouped by person. The rows are the state's own
/// embeddings (shared, not copied: the gallery's memory is mostly embeddings: a contiguous copy
/// would cost a 10k-person gallery another 7.7 MB); one pass of dot products per search.
#[derive(Debug, Default)]
pub struct Index {
    model: String,
    dim: usize,
    rows: Vec<Embedding>,
    persons: Vec<Rows>,
}

/// One person's rows of the index.
#[derive(Debug)]
struct Rows {
    pguid: Arc<str>,
    key: Arc<str>,
    first: usize,
    n: usize,
    negatives: Vec<Embedding>,
}

impl Index {
    pub fn build<'a>(state: &'a State, model: &str) -> Index {
        let dim = state
            .persons
            .values()
            .flat_map(|p| &p.templates)
            .find(|t| t.data.model == model)
            .map_or(0, |t| t.data.embedding.len());
        let rows_of = |p: &'a Person| {
            p.templates
                .iter()
                .filter(move |t| t.data.model == model && t.data.embedding.len() == dim)
                .map(|t| &t.data.embedding)
        };
        // Persons in the order their embeddings lie in memory (the order they were loaded),
        // not by pguid: a search then reads memory forwards, which the CPU prefetches.
        let mut persons: Vec<(usize, &Person)> = state
            .persons
            .values()
            .filter_map(|p| Some((rows_of(p).next()?.as_ptr() as usize, p)))
            .collect();
        persons.sort_unstable_by_key(|(at, _)| *at);
        let mut idx = Index {
            model: model.to_owned(),
            dim,
            rows: Vec::new(),
            persons: Vec::with_capacity(persons.len()),
        };
        for (_, p) in persons {
            let first = idx.rows.len();
            idx.rows.extend(rows_of(p).cloned());
            idx.persons.push(Rows {
                pguid: p.pguid.clone(),
                key: p.key.clone(),
                first,
                n: idx.rows.len() - first,
                negatives: p
                    .negatives
                    .iter()
                    .filter(|(m, e)| m == model && e.len() == dim)
                    .map(|(_, e)| e.clone())
                    .collect(),
            });
        }
        idx
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn templates(&self) -> usize {
        self.rows.len()
    }

    /// The `k` best persons' scores, best first. One pass of dot products over the rows, no
    /// allocation per person; only the `k` returned are built (and their trimmed means taken).
    pub fn search(&self, probe: &[f32], margin: f32, k: usize) -> Vec<Candidate> {
        if probe.len() != self.dim || self.dim == 0 || k == 0 {
            return Vec::new();
        }
        let row = |r: usize| &self.rows[r][..];
        let mut scored: Vec<(f32, f32, usize)> = self
            .persons
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let best = (p.first..p.first + p.n)
                    .map(|r| dot(probe, row(r)))
                    .fold(f32::MIN, f32::max);
                let neg = p
                    .negatives
                    .iter()
                    .map(|e| dot(probe, e))
                    .fold(f32::MIN, f32::max);
                (lowered(best, neg, margin), best, i)
            })
            .collect();
        // Equal scores in pguid order: the rows' order is the memory's, which varies by run.
        let by_score = |a: &(f32, f32, usize), b: &(f32, f32, usize)| {
            b.0.total_cmp(&a.0)
                .then_with(|| self.persons[a.2].pguid.cmp(&self.persons[b.2].pguid))
        };
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        scored
            .into_iter()
            .map(|(score, best, i)| {
                let p = &self.persons[i];
                let scores = (p.first..p.first + p.n)
                    .map(|r| dot(probe, row(r)))
                    .collect();
                Candidate {
                    key: p.key.to_string(),
                    pguid: p.pguid.to_string(),
                    score,
                    best,
                    trimmed_mean: trimmed_mean(scores),
                    templates: p.n,
                }
            })
            .collect()
    }
}

/// The best score after the person's negative examples (the closest at `negative`).
pub fn lowered(best: f32, negative: f32, margin: f32) -> f32 {
    if negative >= best {
        -1.0
    } else if negative + margin > best {
        best - (negative + margin - best)
    } else {
        best
    }
}

/// The open-set rule on ranked candidates.
pub fn decide(ranked: &[Candidate], threshold: f32, margin: f32) -> Decision {
    let Some(top) = ranked.first() else {
        return Decision::Unknown(None);
    };
    let second = ranked.get(1).map_or(f32::MIN, |c| c.score);
    if top.score >= threshold && top.score - second >= margin {
        Decision::Match(top.clone())
    } else {
        Decision::Unknown(Some(top.clone()))
    }
}

/// Mean with the lowest and highest fifth dropped (all of them when fewer than five).
pub fn trimmed_mean(mut scores: Vec<f32>) -> f32 {
    if scores.is_empty() {
        return f32::MIN;
    }
    scores.sort_by(f32::total_cmp);
    let cut = scores.len() / 5;
    let kept = &scores[cut..scores.len() - cut];
    kept.iter().sum::<f32>() / kept.len() as f32
}

/// Cosine of two L2-normalised vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes: the compiler vectorises this (two independent 4-wide sums on SSE/NEON); a
    // plain fold would be summed in order, one add after another.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: &str, score: f32) -> Candidate {
        Candidate {
            key: key.into(),
            pguid: key.into(),
            score,
            best: score,
            trimmed_mean: score,
            templates: 1,
        }
    }

    #[test]
    fn open_set_needs_the_threshold_and_the_margin() {
        let d = |r: &[Candidate]| decide(r, 0.45, 0.05);
        assert!(matches!(d(&[]), Decision::Unknown(None)));
        assert!(matches!(d(&[cand("a", 0.7)]), Decision::Match(c) if c.key == "a"));
        assert!(matches!(d(&[cand("a", 0.44)]), Decision::Unknown(Some(_))));
        // Two people both above the bar and too close: neither.
        assert!(matches!(
            d(&[cand("a", 0.70), cand("b", 0.68)]),
            Decision::Unknown(Some(c)) if c.key == "a"
        ));
        assert!(matches!(
            d(&[cand("a", 0.70), cand("b", 0.64)]),
            Decision::Match(_)
        ));
        assert!(matches!(d(&[cand("a", 0.45)]), Decision::Match(_)));
    }

    #[test]
    fn negatives_lower_only_look_alikes() {
        assert_eq!(lowered(0.8, 0.2, 0.05), 0.8);
        assert_eq!(lowered(0.8, f32::MIN, 0.05), 0.8, "no negatives");
        // Almost as close to the negative as to the person: pushed down by the shortfall.
        let l = lowered(0.6, 0.58, 0.05);
        assert!((l - 0.57).abs() < 1e-6, "{l}");
        // Closer to the negative: never that person.
        assert_eq!(lowered(0.6, 0.6, 0.05), -1.0);
        assert_eq!(lowered(0.6, 0.9, 0.05), -1.0);
    }

    #[test]
    fn trimmed_mean_drops_the_extremes() {
        assert_eq!(trimmed_mean(vec![0.5]), 0.5);
        assert_eq!(trimmed_mean(vec![0.2, 0.4]), 0.3);
        let t = trimmed_mean(vec![-1.0, 0.5, 0.5, 0.5, 1.0]);
        assert!((t - 0.5).abs() < 1e-6);
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }
}
