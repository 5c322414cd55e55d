//! The whole pipeline behind one handle: decode → detect → align → quality → embed.

use std::path::PathBuf;
use std::time::Instant;

use super::align::align_face;
use super::embed::embed;
use super::image::{decode_with_limits, DecodeLimits, RgbImage};
use super::models::{ModelSet, ModelVariant, Models};
use super::mtcnn::{detect, Detection, DetectorConfig};
use super::quality::{measure, Quality};
use super::VisionError;

/// Vision settings (the `[vision]` section of the daemon's configuration).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// Directory holding the ONNX files; `None` means `$CAMGATE_MODELS` or `./models`.
    pub models_dir: Option<PathBuf>,
    /// Weights of the three MTCNN nets.
    pub detector_variant: ModelVariant,
    /// Weights of MobileFaceNet.
    pub embedder_variant: ModelVariant,
    pub detector: DetectorConfig,
    /// Largest accepted image side, pixels.
    pub max_image_side: u32,
    /// Largest accepted image area, pixels.
    pub max_image_pixels: u64,
    /// Blocking threads doing inference at once (each runs single-threaded tract).
    pub workers: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            models_dir: None,
            detector_variant: ModelVariant::Float,
            embedder_variant: ModelVariant::Float,
            detector: DetectorConfig::default(),
            max_image_side: super::image::DEFAULT_MAX_SIDE,
            max_image_pixels: super::image::DEFAULT_MAX_PIXELS,
            workers: 1,
        }
    }
}

impl VisionConfig {
    /// Collects every problem rather than stopping at the first.
    pub fn validate(&self) -> Result<(), VisionError> {
        let mut errs = Vec::new();
        if let Err(VisionError::Config(e)) = self.detector.validate() {
            errs.push(e);
        }
        if self.workers == 0 || self.workers > 64 {
            errs.push(format!("workers must be in 1..=64, got {}", self.workers));
        }
        if self.max_image_side < 12 {
            errs.push("max_image_side must be >= 12".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(VisionError::Config(errs.join("; ")))
        }
    }

    pub fn model_set(&self) -> ModelSet {
        ModelSet {
            dir: self
                .models_dir
                .clone()
                .unwrap_or_else(ModelSet::default_dir),
            detector: self.detector_variant,
            embedder: self.embedder_variant,
        }
    }
}

/// One face: where it is, how good it is, and (if asked) its embedding.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Face {
    #[serde(flatten)]
    pub detection: Detection,
    pub quality: Quality,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// The aligned 112×112 crop the embedding was made from (kept by the gallery with each
    /// template, so that a model change can re-embed without the original picture).
    #[serde(skip)]
    pub aligned: Option<RgbImage>,
}

/// Milliseconds per stage for one image.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StageTimes {
    pub decode_ms: f64,
    /// Working-resolution shrink (0 when the image is within the cap).
    pub resize_ms: f64,
    /// Pyramid resizes + P-Net + NMS.
    pub pnet_ms: f64,
    pub rnet_ms: f64,
    pub onet_ms: f64,
    /// Alignment warps and quality measures.
    pub align_ms: f64,
    pub embed_ms: f64,
    pub total_ms: f64,
}

/// Loaded models + settings. `Send + Sync`: share it in an `Arc` between workers.
#[derive(Debug)]
pub struct FaceEngine {
    pub models: Models,
    pub config: VisionConfig,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl FaceEngine {
    /// Loads and plans every model; do this once at start-up.
    pub fn new(config: VisionConfig) -> Result<Self, VisionError> {
        config.validate()?;
        let models = Models::load(&config.model_set())?;
        Ok(FaceEngine { models, config })
    }

    pub fn embedding_dim(&self) -> usize {
        self.models.embedding_dim
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, VisionError> {
        decode_with_limits(
            bytes,
            DecodeLimits {
                max_side: self.config.max_image_side,
                max_pixels: self.config.max_image_pixels,
            },
        )
    }

    /// Detection only (boxes, landmarks, scores) with quality measures.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>, VisionError> {
        Ok(self.run(img, false)?.0)
    }

    /// Full pipeline on a decoded image.
    pub fn run(
        &self,
        img: &RgbImage,
        with_embeddings: bool,
    ) -> Result<(Vec<Face>, StageTimes), VisionError> {
        let t0 = Instant::now();
        let mut times = StageTimes::default();
        let (dets, dt) = detect(&self.models, &self.config.detector, img)?;
        times.resize_ms = dt.resize_ms;
        times.pnet_ms = dt.pnet_ms;
        times.rnet_ms = dt.rnet_ms;
        times.onet_ms = dt.onet_ms;
        let t = Instant::now();
        let crops: Vec<Option<RgbImage>> =
            dets.iter().map(|d| align_face(img, &d.landmarks)).collect();
        let mut faces: Vec<Face> = dets
            .into_iter()
            .zip(&crops)
            .map(|(d, c)| Face {
                quality: measure(&d, c.as_ref(), Some((img.width, img.height))),
                detection: d,
                embedding: None,
                aligned: None,
            })
            .collect();
        times.align_ms = ms(t);
        if with_embeddings {
            let t = Instant::now();
            let present: Vec<(usize, &RgbImage)> = crops
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
                .collect();
            let refs: Vec<&RgbImage> = present.iter().map(|p| p.1).collect();
            let embs = embed(&self.models, &refs)?;
            for ((i, _), e) in present.into_iter().zip(embs) {
                faces[i].embedding = Some(e);
            }
            times.embed_ms = ms(t);
        }
        for (f, c) in faces.iter_mut().zip(crops) {
            f.aligned = c;
        }
        times.total_ms = ms(t0);
        Ok((faces, times))
    }

    /// Decode + full pipeline; `decode_ms` and `total_ms` include decoding.
    pub fn process(
        &self,
        bytes: &[u8],
        with_embeddings: bool,
    ) -> Result<(Vec<Face>, StageTimes), VisionError> {
        let t = Instant::now();
        let img = self.decode(bytes)?;
        let decode_ms = ms(t);
        let (faces, mut times) = self.run(&img, with_embeddings)?;
        times.decode_ms = decode_ms;
        times.total_ms += decode_ms;
        Ok((faces, times))
    }

    /// Embeds an already aligned 112×112 crop.
    pub fn embed_aligned(&self, crop: &RgbImage) -> Result<Vec<f32>, VisionError> {
        embed(&self.models, &[crop])?
            .pop()
            .ok_or_else(|| VisionError::inference("mobilefacenet", "no output"))
    }
}
