//! On-device face pipeline: decode → MTCNN detection → 5-point alignment → MobileFaceNet embedding.
//!
//! Everything runs on the gateway's CPU with [tract](https://github.com/sonos/tract) on ONNX files
//! committed under `models/` (see `models/manifest.json` for provenance); nothing is fetched at run time.
//!
//! Layers, each usable on its own:
//! - [`image`]: bounded decoding (typed errors, no unbounded allocation) and the resamplers the
//!   detector needs (OpenCV-compatible area resize, bilinear warp).
//! - [`models`]: loads each network once and keeps optimised tract plans per input shape.
//! - [`mtcnn`]: the P-Net/R-Net/O-Net cascade (boxes, scores, 5 landmarks).
//! - [`align`]: Umeyama similarity transform onto the ArcFace 112×112 template and the warp.
//! - [`embed`]: MobileFaceNet embeddings, L2-normalised; the dimension comes from the model.
//! - [`quality`]: per-face measures for later gating (size, score, blur, pose).
//! - [`graph_rewrite`]: ONNX patterns that spell a known op the long way (MobileFaceNet's PReLU),
//!   rewritten before tract parses the file.
//! - [`tract_ops`]: the ONNX ops tract runs slowly here (PReLU, row softmax, 2-D max pool, small 1×1
//!   convs), replaced at parse time by one-pass kernels.
//! - [`pool`]: a bounded pool of blocking threads so inference never runs on the async runtime.

pub mod align;
pub mod embed;
pub mod graph_rewrite;
pub mod image;
pub mod models;
pub mod mtcnn;
pub mod pipeline;
pub mod pool;
pub mod quality;
pub mod tract_ops;

pub use self::image::{decode, RgbImage};
pub use self::models::{ModelSet, ModelVariant, Models};
pub use self::mtcnn::{Detection, DetectorConfig};
pub use self::pipeline::{Face, FaceEngine, StageTimes, VisionConfig};
pub use self::pool::VisionPool;

use std::path::PathBuf;

/// Everything that can go wrong in the vision module. Bad input is always one of these, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// The bytes are not an image in a supported format (JPEG, PNG), or the file is truncated/corrupt.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The image's declared size is beyond the configured limits; rejected before allocating pixels.
    #[error("image {width}x{height} exceeds the limit of {max_side} pixels per side / {max_pixels} pixels")]
    TooLarge {
        width: u64,
        height: u64,
        max_side: u32,
        max_pixels: u64,
    },
    /// A zero-sized image.
    #[error("image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    /// A model file is missing, unreadable or not what the pipeline expects.
    #[error("model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    /// tract failed while planning or running a network.
    #[error("inference in {net}: {reason}")]
    Inference { net: &'static str, reason: String },
    /// Reading an input file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid vision configuration: {0}")]
    Config(String),
    /// A request asked for something the image does not have (e.g. no face to embed).
    #[error("{0}")]
    NoFace(String),
    /// The blocking pool is shut down or a worker panicked.
    #[error("vision worker pool: {0}")]
    Pool(String),
}

impl VisionError {
    pub(crate) fn inference(net: &'static str, e: impl std::fmt::Display) -> Self {
        // tract errors carry a context chain; `{:#}` keeps it on one line.
        VisionError::Inference {
            net,
            reason: format!("{e:#}"),
        }
    }
}
