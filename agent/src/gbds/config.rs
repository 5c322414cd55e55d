//! `[gbds]`: the transactions' quality bars, search and queue settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GbdsConfig {
    /// Where accepted transactions are kept (`tx/<tguid>.json` and their pictures until they
    /// are processed). Default `/var/lib/camgate/gbds`.
    pub dir: PathBuf,
    /// An enrolment face whose shorter side is below this many pixels goes to manual review
    /// (`PENDING`). Default 80: enrolment photos are taken close up, and a reference under
    /// 80 px is upsampled into MobileFaceNet's 112 px input.
    pub quality_min_face_px: f32,
    /// Lowest detection (O-Net) score for an enrolment face. Default 0.95.
    pub quality_min_score: f32,
    /// Highest blur (0 sharp … 1 blurred, the face results' `blur`). Default 0.6.
    pub quality_max_blur: f32,
    /// Highest pose (0 frontal … 1 profile, the face results' `pose`). Default 0.5.
    pub quality_max_pose: f32,
    /// Candidates kept with a 1:N search. Default 5.
    pub top_k: usize,
    /// Transactions (and treatments, reviews) accepted and not yet started; a submission
    /// beyond this is refused with 503 and nothing is kept. Default 64.
    pub queue_capacity: usize,
    /// Finished transactions kept for `GET /v1/transactions/{tguid}`; the oldest go first.
    /// Default 10000.
    pub keep_finished: usize,
    /// Also notify each camera face result as a `SEARCH` `MATCH` / `NOT_MATCH`. Default false.
    pub notify_camera_matches: bool,
}

impl Default for GbdsConfig {
    fn default() -> Self {
        GbdsConfig {
            dir: PathBuf::from("/var/lib/camgate/gbds"),
            quality_min_face_px: 80.0,
            quality_min_score: 0.95,
            quality_max_blur: 0.6,
            quality_max_pose: 0.5,
            top_k: 5,
            queue_capacity: 64,
            keep_finished: 10_000,
            notify_camera_matches: false,
        }
    }
}

impl GbdsConfig {
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.dir.as_os_str().is_empty() {
            errs.push("gbds.dir: must not be empty".into());
        }
        if self.quality_min_face_px.is_nan() || self.quality_min_face_px < 12.0 {
            errs.push(format!(
                "gbds.quality_min_face_px: {} is below 12 (the smallest face MTCNN finds)",
                self.quality_min_face_px
            ));
        }
        for (name, v) in [
            ("quality_min_score", self.quality_min_score),
            ("quality_max_blur", self.quality_max_blur),
            ("quality_max_pose", self.quality_max_pose),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(format!("gbds.{name}: {v} is outside 0..=1"));
            }
        }
        for (name, v) in [
            ("top_k", self.top_k),
            ("queue_capacity", self.queue_capacity),
            ("keep_finished", self.keep_finished),
        ] {
            if v == 0 {
                errs.push(format!("gbds.{name}: must be at least 1"));
            }
        }
    }
}
