//! `camgate face ...`. main.rs wires these in; everything prints JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::vision::embed::cosine;
use crate::vision::models::ModelVariant;
use crate::vision::pipeline::{Face, FaceEngine, StageTimes, VisionConfig};
use crate::vision::VisionError;

/// Decision threshold on cosine similarity for `face compare`: the gallery's measured
/// `match_threshold` (different people scored at most 0.48, the same person at least 0.57).
pub const DEFAULT_THRESHOLD: f32 = 0.52;

/// Options shared by every face command.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Directory with the ONNX models [default: $CAMGATE_MODELS or ./models].
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Model weights: float, f16 or int8 (both detector and embedder).
    #[arg(long, default_value = "float")]
    pub variant: ModelVariant,
    /// Smallest face to find, pixels.
    #[arg(long, default_value_t = 20.0)]
    pub min_face: f64,
    /// Shrink images whose longer side exceeds this before detection (0 = never).
    #[arg(long, default_value_t = 0)]
    pub max_side: u32,
}

impl EngineArgs {
    pub fn config(&self, variant: ModelVariant) -> VisionConfig {
        let mut c = VisionConfig {
            models_dir: self.models.clone(),
            detector_variant: variant,
            embedder_variant: variant,
            ..VisionConfig::default()
        };
        c.detector.min_face_size = self.min_face;
        c.detector.max_working_side = (self.max_side > 0).then_some(self.max_side);
        c
    }

    fn engine(&self) -> Result<FaceEngine, VisionError> {
        FaceEngine::new(self.config(self.variant))
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedFormat {
    /// `{"dim": D, "embedding": [...]}`
    Json,
    /// Base64 of D little-endian float32 values, one line.
    Base64,
}

#[derive(clap::Subcommand, Debug)]
pub enum FaceCommand {
    /// Detect faces: boxes, landmarks, scores and quality per image (JSON).
    Detect {
        #[command(flatten)]
        engine: EngineArgs,
        /// Images (JPEG or PNG).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Embed the largest face of an image (or every face with --all).
    Embed {
        #[command(flatten)]
        engine: EngineArgs,
        image: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        format: EmbedFormat,
        /// Embed every face, not only the largest.
        #[arg(long)]
        all: bool,
    },
    /// Compare the largest faces of two images: cosine similarity and same/different decision.
    Compare {
        #[command(flatten)]
        engine: EngineArgs,
        a: PathBuf,
        b: PathBuf,
        #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
        threshold: f32,
    },
}

pub fn read(path: &Path) -> Result<Vec<u8>, VisionError> {
    std::fs::read(path).map_err(|source| VisionError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Serialises `v` straight to stdout. Typed (not through `serde_json::Value`, which widens f32 to
/// f64) so that an f32 prints as its shortest decimal: a threshold of 0.45 prints `0.45`, not
/// `0.44999998807907104`.
fn print_json(v: &impl serde::Serialize) -> Result<(), VisionError> {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let _ = serde_json::to_writer(&mut out, v)
        .and_then(|_| writeln!(out).map_err(serde_json::Error::io));
    Ok(())
}

/// The face with the largest box, the one a single-person photo is about.
fn largest(faces: &[Face]) -> Option<&Face> {
    faces
        .iter()
        .filter(|f| f.embedding.is_some())
        .max_by(|a, b| a.quality.box_size.total_cmp(&b.quality.box_size))
}

fn embed_image(engine: &FaceEngine, path: &Path) -> Result<Vec<Face>, VisionError> {
    Ok(engine.process(&read(path)?, true)?.0)
}

/// Base64 of the embedding as little-endian float32.
pub fn embedding_base64(e: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A path as text for the JSON output. `Display`, not serde's `Path` impl: that one fails on a
/// non-UTF-8 name, and the output would then be cut short.
fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// One image of `face detect`: its faces and stage timings, or why it could not be read.
#[derive(serde::Serialize)]
struct DetectEntry {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    faces: Option<Vec<Face>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings_ms: Option<StageTimes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct EmbedOutput<'a> {
    image: String,
    faces: Vec<EmbedFace<'a>>,
}

#[derive(serde::Serialize)]
struct EmbedFace<'a> {
    bbox: &'a [f32; 4],
    score: f32,
    dim: usize,
    embedding: &'a [f32],
}

#[derive(serde::Serialize)]
struct CompareOutput {
    a: String,
    b: String,
    similarity: f32,
    threshold: f32,
    same_person: bool,
}

/// Runs one `camgate face` command, printing JSON to stdout.
pub fn run(cmd: FaceCommand) -> Result<(), VisionError> {
    match cmd {
        FaceCommand::Detect { engine, images } => {
            let engine = engine.engine()?;
            let mut results = Vec::new();
            for path in &images {
                // One bad file is reported in its entry; the others still run.
                results.push(match read(path).and_then(|b| engine.process(&b, false)) {
                    Ok((faces, times)) => DetectEntry {
                        image: shown(path),
                        faces: Some(faces),
                        timings_ms: Some(times),
                        error: None,
                    },
                    Err(e) => DetectEntry {
                        image: shown(path),
                        faces: None,
                        timings_ms: None,
                        error: Some(e.to_string()),
                    },
                });
            }
            print_json(&results)
        }
        FaceCommand::Embed {
            engine,
            image,
            format,
            all,
        } => {
            let engine = engine.engine()?;
            let faces = embed_image(&engine, &image)?;
            let chosen: Vec<&Face> = if all {
                faces.iter().filter(|f| f.embedding.is_some()).collect()
            } else {
                largest(&faces).into_iter().collect()
            };
            if chosen.is_empty() {
                return Err(VisionError::NoFace(format!(
                    "{}: no face found",
                    image.display()
                )));
            }
            match format {
                EmbedFormat::Base64 => {
                    let mut out = std::io::stdout().lock();
                    for f in chosen {
                        let _ = writeln!(
                            out,
                            "{}",
                            embedding_base64(f.embedding.as_deref().unwrap_or(&[]))
                        );
                    }
                    Ok(())
                }
                EmbedFormat::Json => {
                    let faces = chosen
                        .iter()
                        .map(|f| EmbedFace {
                            bbox: &f.detection.bbox,
                            score: f.detection.score,
                            dim: engine.embedding_dim(),
                            embedding: f.embedding.as_deref().unwrap_or(&[]),
                        })
                        .collect();
                    print_json(&EmbedOutput {
                        image: shown(&image),
                        faces,
                    })
                }
            }
        }
        FaceCommand::Compare {
            engine,
            a,
            b,
            threshold,
        } => {
            let engine = engine.engine()?;
            let fa = embed_image(&engine, &a)?;
            let fb = embed_image(&engine, &b)?;
            let ea = largest(&fa).and_then(|f| f.embedding.clone());
            let eb = largest(&fb).and_then(|f| f.embedding.clone());
            let (Some(ea), Some(eb)) = (ea, eb) else {
                let which = if largest(&fa).is_none() { &a } else { &b };
                return Err(VisionError::NoFace(format!(
                    "{}: no face found",
                    which.display()
                )));
            };
            let sim = cosine(&ea, &eb);
            print_json(&CompareOutput {
                a: shown(&a),
                b: shown(&b),
                similarity: sim,
                threshold,
                same_person: sim >= threshold,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_base64_is_little_endian_f32() {
        // 1.0f32 = 00 00 80 3F, -2.0f32 = 00 00 00 C0.
        assert_eq!(embedding_base64(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(embedding_base64(&[]), "");
    }
}
