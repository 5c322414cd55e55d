//! `[vision]`: the face pipeline on the live path. Absent: no face work, events are forwarded as
//! they are.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Model weights (`models/README.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Float,
    /// float16 weights, float32 compute: half the files at float speed and parity.
    #[default]
    F16,
    Int8,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Float => "float",
            Variant::F16 => "f16",
            Variant::Int8 => "int8",
        }
    }
}

/// The bars a face must pass to be matched and filed (its `quality.ok`). Defaults are set for
/// 1080p door cameras: faces under 40 px carry too little for MobileFaceNet (its input is 112).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityBars {
    /// Shorter side of the face box, pixels. Default 40.
    pub min_size: f32,
    /// O-Net score. Default 0.9.
    pub min_score: f32,
    /// Highest `blur` (0 sharp … 1 blurred). Default 0.85.
    pub max_blur: f32,
    /// Highest `pose` (0 frontal … 1 profile). Default 0.8.
    pub max_pose: f32,
}

impl Default for QualityBars {
    fn default() -> Self {
        QualityBars {
            min_size: 40.0,
            min_score: 0.9,
            max_blur: 0.85,
            max_pose: 0.8,
        }
    }
}

/// `[vision]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    /// Where the ONNX files are. Default `/usr/share/camgate/models`.
    pub models_dir: PathBuf,
    /// `float`, `f16` or `int8`. Default `f16`.
    pub variant: Variant,
    /// Pictures in inference at once (one core each). Default 1.
    pub workers: usize,
    /// Largest picture fetched, bytes; a larger answer is an error result. Default 4 MiB.
    pub max_picture_bytes: usize,
    /// Time allowed for one picture fetch (connect, TLS, answer), ms. Default 5000.
    pub fetch_timeout_ms: u64,
    /// Fetch attempts per event before an error result is recorded. Default 3. A camera whose
    /// last event used up its attempts gets one attempt per event until a fetch succeeds again,
    /// so a dead picture server costs one timeout per event, never a queue of retries.
    pub fetch_attempts: u32,
    /// Backoff between attempts (exponential with jitter), ms. Defaults 500 and 5000.
    pub fetch_backoff_min_ms: u64,
    pub fetch_backoff_max_ms: u64,
    /// Smallest face looked for, pixels. Default 20.
    pub min_face: f64,
    /// Events read ahead of the cursor (being fetched, in inference or waiting for an older one
    /// to finish); reading pauses at this many. Default 64.
    pub max_in_flight: usize,
    pub quality: QualityBars,
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            models_dir: PathBuf::from("/usr/share/camgate/models"),
            variant: Variant::F16,
            workers: 1,
            max_picture_bytes: 4 * 1024 * 1024,
            fetch_timeout_ms: 5000,
            fetch_attempts: 3,
            fetch_backoff_min_ms: 500,
            fetch_backoff_max_ms: 5000,
            min_face: 20.0,
            max_in_flight: 64,
            quality: QualityBars::default(),
        }
    }
}

impl StageConfig {
    pub fn validate(&self, errs: &mut Vec<String>) {
        if !cfg!(feature = "vision") {
            errs.push(
                "vision: this camgate was built without the `vision` feature; remove [vision] or use a build with it"
                    .into(),
            );
        }
        if !(1..=64).contains(&self.workers) {
            errs.push(format!(
                "vision.workers: {} is outside 1..=64",
                self.workers
            ));
        }
        if self.max_picture_bytes < 1024 {
            errs.push("vision.max_picture_bytes: must be at least 1024".into());
        }
        if self.fetch_timeout_ms < 100 {
            errs.push("vision.fetch_timeout_ms: must be at least 100".into());
        }
        if !(1..=20).contains(&self.fetch_attempts) {
            errs.push(format!(
                "vision.fetch_attempts: {} is outside 1..=20",
                self.fetch_attempts
            ));
        }
        if self.fetch_backoff_min_ms == 0 || self.fetch_backoff_max_ms < self.fetch_backoff_min_ms {
            errs.push("vision: need 1 <= fetch_backoff_min_ms <= fetch_backoff_max_ms".into());
        }
        if !(self.min_face.is_finite() && self.min_face >= 12.0) {
            errs.push(format!("vision.min_face: {} must be >= 12", self.min_face));
        }
        if !(1..=4096).contains(&self.max_in_flight) {
            errs.push(format!(
                "vision.max_in_flight: {} is outside 1..=4096",
                self.max_in_flight
            ));
        }
    }

    /// `mtcnn+mobilefacenet-<variant>`, the `model` of every face result.
    pub fn model_label(&self) -> String {
        format!("mtcnn+mobilefacenet-{}", self.variant.name())
    }
}
