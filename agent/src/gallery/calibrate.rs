//! Score distributions from the gallery's own templates: genuine pairs (two templates of one
//! person) and impostor pairs (templates of two persons), the false-match and false-non-match
//! rates at candidate thresholds, and the lowest threshold whose false-match rate is at most a
//! target. Labelled extra photos count as templates of their person.

use super::matching::dot;

/// One labelled embedding.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub person: String,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Rates {
    pub threshold: f32,
    /// Impostor pairs scoring ≥ the threshold / impostor pairs.
    pub fmr: f64,
    /// Genuine pairs scoring < the threshold / genuine pairs.
    pub fnmr: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Calibration {
    pub genuine_pairs: usize,
    pub impostor_pairs: usize,
    pub genuine: Summary,
    pub impostor: Summary,
    pub rates: Vec<Rates>,
    pub target_fmr: f64,
    /// The lowest candidate threshold with FMR ≤ target; `None` without impostor pairs.
    pub threshold: Option<f32>,
    /// With fewer impostor pairs than 1 / target the FMR cannot be told apart from 0 at the
    /// target: the threshold is then a bound from too little evidence.
    pub enough_impostors: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub min: f32,
    pub p50: f32,
    pub max: f32,
}

fn summary(mut v: Vec<f32>) -> Summary {
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_by(f32::total_cmp);
    Summary {
        min: v[0],
        p50: v[v.len() / 2],
        max: v[v.len() - 1],
    }
}

/// Every pair of `items` scored (n² / 2: a gallery of 2000 templates is 2 M dot products).
pub fn calibrate(items: &[Labelled], target_fmr: f64) -> Calibration {
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            if a.embedding.len() != b.embedding.len() {
                continue;
            }
            let s = dot(&a.embedding, &b.embedding);
            if a.person == b.person {
                genuine.push(s);
            } else {
                impostor.push(s);
            }
        }
    }
    let rate = |v: &[f32], f: &dyn Fn(f32) -> bool| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().filter(|s| f(**s)).count() as f64 / v.len() as f64
        }
    };
    let rates: Vec<Rates> = (4..=18)
        .map(|i| {
            let t = i as f32 * 0.05;
            Rates {
                threshold: t,
                fmr: rate(&impostor, &|s| s >= t),
                fnmr: rate(&genuine, &|s| s < t),
            }
        })
        .collect();
    let threshold = (!impostor.is_empty())
        .then(|| {
            rates
                .iter()
                .find(|r| r.fmr <= target_fmr)
                .map(|r| r.threshold)
        })
        .flatten();
    Calibration {
        genuine_pairs: genuine.len(),
        impostor_pairs: impostor.len(),
        enough_impostors: impostor.len() as f64 * target_fmr >= 1.0,
        genuine: summary(genuine),
        impostor: summary(impostor),
        rates,
        target_fmr,
        threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn genuine_and_impostor_pairs_give_the_threshold() {
        let items = vec![
            Labelled {
                person: "a".into(),
                embedding: unit(&[1.0, 0.1, 0.0]),
            },
            Labelled {
                person: "a".into(),
                embedding: unit(&[1.0, 0.0, 0.1]),
            },
            Labelled {
                person: "b".into(),
                embedding: unit(&[0.0, 1.0, 0.2]),
            },
            Labelled {
                person: "b".into(),
                embedding: unit(&[0.1, 1.0, 0.0]),
            },
        ];
        let c = calibrate(&items, 1e-3);
        assert_eq!((c.genuine_pairs, c.impostor_pairs), (2, 4));
        assert!(c.genuine.min > 0.9 && c.impostor.max < 0.3, "{c:?}");
        let t = c.threshold.unwrap();
        assert!((0.2..=0.35).contains(&t), "{t}");
        let at = c.rates.iter().find(|r| r.threshold == t).unwrap();
        assert_eq!((at.fmr, at.fnmr), (0.0, 0.0));
        assert!(!c.enough_impostors, "4 impostor pairs cannot show 1e-3");
    }
}
