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

use super::state::State;

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

/// A flat copy of one embedding space's templates, rows grouped by person: one pass of dot
/// products per search, no pointer chasing (10k templates of 128 floats is 5 MB).
#[derive(Debug, Default)]
pub struct Index {
    model: String,
    dim: usize,
    rows: Vec<f32>,
    persons: Vec<Rows>,
}

/// One person's rows of the index.
#[derive(Debug)]
struct Rows {
    pguid: String,
    key: String,
    first: usize,
    n: usize,
    negatives: Vec<Vec<f32>>,
}

impl Index {
    pub fn build(state: &State, model: &str) -> Index {
        let mut idx = Index {
            model: model.to_owned(),
            ..Index::default()
        };
        for p in state.persons.values() {
            let first = idx.rows.len() / idx.dim.max(1);
            let mut n = 0;
            for t in p.templates.iter().filter(|t| t.data.model == model) {
                if idx.dim == 0 {
                    idx.dim = t.data.embedding.len();
                }
                if t.data.embedding.len() == idx.dim {
                    idx.rows.extend_from_slice(&t.data.embedding);
                    n += 1;
                }
            }
            let negatives = p
                .negatives
                .iter()
                .filter(|(m, e)| m == model && e.len() == idx.dim)
                .map(|(_, e)| e.clone())
                .collect();
            if n > 0 {
                idx.persons.push(Rows {
                    pguid: p.pguid.clone(),
                    key: p.key.clone(),
                    first,
                    n,
                    negatives,
                });
            }
        }
        idx
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn templates(&self) -> usize {
        self.rows.len() / self.dim.max(1)
    }

    /// The `k` best persons' scores, best first. One pass of dot products over the rows, no
    /// allocation per person; only the `k` returned are built (and their trimmed means taken).
    pub fn search(&self, probe: &[f32], margin: f32, k: usize) -> Vec<Candidate> {
        if probe.len() != self.dim || self.dim == 0 || k == 0 {
            return Vec::new();
        }
        let row = |r: usize| &self.rows[r * self.dim..(r + 1) * self.dim];
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
        let by_score = |a: &(f32, f32, usize), b: &(f32, f32, usize)| b.0.total_cmp(&a.0);
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
                    key: p.key.clone(),
                    pguid: p.pguid.clone(),
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
    // Four lanes: the compiler vectorises this; a plain fold would be summed in order.
    let mut acc = [0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
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
