//! `camgate face ...` and `camgate bench vision`. main.rs wires these in; everything prints JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::embed::cosine;
use super::models::ModelVariant;
use super::pipeline::{Face, FaceEngine, StageTimes, VisionConfig};
use super::VisionError;

/// Decision threshold on cosine similarity for `face compare`. On the test photos same-person pairs
/// score 0.78–0.99 and different people at most 0.18 (see the vision tests); 0.45 sits in that gap.
pub const DEFAULT_THRESHOLD: f32 = 0.45;

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

fn read(path: &Path) -> Result<Vec<u8>, VisionError> {
    std::fs::read(path).map_err(|source| VisionError::Io { path: path.to_owned(), source })
}

fn print_json(v: &serde_json::Value) -> Result<(), VisionError> {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let _ = serde_json::to_writer(&mut out, v).and_then(|_| writeln!(out).map_err(serde_json::Error::io));
    Ok(())
}

/// The face with the largest box, the one a single-person photo is about.
fn largest(faces: &[Face]) -> Option<&Face> {
    faces.iter().filter(|f| f.embedding.is_some()).max_by(|a, b| a.quality.box_size.total_cmp(&b.quality.box_size))
}

fn embed_image(engine: &FaceEngine, path: &Path) -> Result<Vec<Face>, VisionError> {
    Ok(engine.process(&read(path)?, true)?.0)
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                s.push(T[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Base64 of the embedding as little-endian float32.
pub fn embedding_base64(e: &[f32]) -> String {
    let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
    b64(&bytes)
}

/// Runs one `camgate face` command, printing JSON to stdout.
pub fn run(cmd: FaceCommand) -> Result<(), VisionError> {
    match cmd {
        FaceCommand::Detect { engine, images } => {
            let engine = engine.engine()?;
            let mut results = Vec::new();
            for path in &images {
                // One bad file is reported in its entry; the others still run.
                let entry = match read(path).and_then(|b| engine.process(&b, false)) {
                    Ok((faces, times)) => serde_json::json!({
                        "image": path, "faces": faces, "timings_ms": times,
                    }),
                    Err(e) => serde_json::json!({ "image": path, "error": e.to_string() }),
                };
                results.push(entry);
            }
            print_json(&serde_json::Value::Array(results))
        }
        FaceCommand::Embed { engine, image, format, all } => {
            let engine = engine.engine()?;
            let faces = embed_image(&engine, &image)?;
            let chosen: Vec<&Face> = if all {
                faces.iter().filter(|f| f.embedding.is_some()).collect()
            } else {
                largest(&faces).into_iter().collect()
            };
            if chosen.is_empty() {
                return Err(VisionError::NoFace(format!("{}: no face found", image.display())));
            }
            match format {
                EmbedFormat::Base64 => {
                    let mut out = std::io::stdout().lock();
                    for f in chosen {
                        let _ = writeln!(out, "{}", embedding_base64(f.embedding.as_deref().unwrap_or(&[])));
                    }
                    Ok(())
                }
                EmbedFormat::Json => {
                    let v: Vec<_> = chosen
                        .iter()
                        .map(|f| {
                            serde_json::json!({
                                "bbox": f.detection.bbox, "score": f.detection.score,
                                "dim": engine.embedding_dim(), "embedding": f.embedding,
                            })
                        })
                        .collect();
                    print_json(&serde_json::json!({ "image": image, "faces": v }))
                }
            }
        }
        FaceCommand::Compare { engine, a, b, threshold } => {
            let engine = engine.engine()?;
            let fa = embed_image(&engine, &a)?;
            let fb = embed_image(&engine, &b)?;
            let ea = largest(&fa).and_then(|f| f.embedding.clone());
            let eb = largest(&fb).and_then(|f| f.embedding.clone());
            let (Some(ea), Some(eb)) = (ea, eb) else {
                let which = if largest(&fa).is_none() { &a } else { &b };
                return Err(VisionError::NoFace(format!("{}: no face found", which.display())));
            };
            let sim = cosine(&ea, &eb);
            print_json(&serde_json::json!({
                "a": a, "b": b, "similarity": sim, "threshold": threshold, "same_person": sim >= threshold,
            }))
        }
    }
}

/// `camgate bench vision`: per-stage timings of camgate and of the onnxruntime reference, side by side.
#[derive(clap::Args, Debug, Clone)]
pub struct VisionBenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Images to run [default: tests/fixtures/faces/*.{jpg,png}].
    pub images: Vec<PathBuf>,
    /// Timed repetitions per image, before and again after the reference (after one untimed
    /// warm-up that builds the plans); medians over both passes are shown.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Which weights to bench: float, f16, int8, or a comma-separated list.
    #[arg(long, default_value = "float,f16,int8")]
    pub variants: String,
    /// Python with onnxruntime for the reference half [default: models/.venv/bin/python, then python3].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the reference half.
    #[arg(long)]
    pub no_reference: bool,
    /// Run the reference at its package defaults (min face 20, full resolution) instead of camgate's
    /// settings: compares camgate's chosen configuration against the reference as shipped.
    #[arg(long)]
    pub reference_defaults: bool,
}

/// Wall-clock milliseconds per stage, the wall-clock total, then the process CPU time of the image.
const STAGES: [&str; 8] = ["decode", "pnet", "rnet", "onet", "align", "embed", "total", "cpu"];

fn stage_values(t: &StageTimes, cpu_ms: f64) -> [f64; 8] {
    // The working-resolution shrink belongs to the detector's front end; it is counted with P-Net.
    [t.decode_ms, t.resize_ms + t.pnet_ms, t.rnet_ms, t.onet_ms, t.align_ms, t.embed_ms, t.total_ms, cpu_ms]
}

/// CPU time used by this process so far, ms. Unlike wall time it does not grow while other
/// processes hold the CPU, so a ratio of CPU times holds on a loaded machine (both halves of the
/// bench are single-threaded, and the reference reports the same clock: Python's `process_time`).
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn default_images() -> Result<Vec<PathBuf>, VisionError> {
    let dir = PathBuf::from("tests/fixtures/faces");
    let rd = std::fs::read_dir(&dir).map_err(|source| VisionError::Io { path: dir.clone(), source })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .collect();
    v.sort();
    Ok(v)
}

/// Runs the Python reference (`models/reference.py bench`) as a subprocess and parses its JSON.
fn run_reference(args: &VisionBenchArgs, models_dir: &Path, variant: ModelVariant, images: &[PathBuf]) -> Result<serde_json::Value, VisionError> {
    let script = models_dir.join("reference.py");
    let python = args.python.clone().unwrap_or_else(|| {
        let venv = models_dir.join(".venv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&script).arg("bench").arg("--reps").arg(args.reps.to_string());
    cmd.arg("--variant").arg(variant.to_string());
    // Same detector settings as camgate's half, so the comparison is like for like.
    if !args.reference_defaults {
        cmd.arg("--min-face").arg((args.engine.min_face.round() as i64).to_string());
        cmd.arg("--max-side").arg(args.engine.max_side.to_string());
    }
    cmd.args(images);
    // The reference must be single-threaded too for a like-for-like comparison.
    cmd.env("OMP_NUM_THREADS", "1");
    let out = cmd.output().map_err(|e| VisionError::Reference(format!("{}: {e}", python.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        return Err(VisionError::Reference(format!("{} exited with {}: {tail}", python.display(), out.status)));
    }
    // The package prints a banner on import; the JSON is the last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(line).map_err(|e| VisionError::Reference(format!("unparsable output: {e}")))
}

/// Runs the benchmark and prints a table (stdout) and a JSON summary (last line).
pub fn bench(args: VisionBenchArgs) -> Result<(), VisionError> {
    let images = if args.images.is_empty() { default_images()? } else { args.images.clone() };
    if images.is_empty() {
        return Err(VisionError::Config("no images to bench".into()));
    }
    let variants = args.variants.split(',').map(|v| v.trim().parse()).collect::<Result<Vec<ModelVariant>, _>>()?;
    let reps = args.reps.max(1);
    let mut out = std::io::stdout().lock();
    let mut summary = serde_json::Map::new();
    for variant in variants {
        let cfg = args.engine.config(variant);
        let t = Instant::now();
        let engine = FaceEngine::new(cfg.clone())?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let models_dir = cfg.model_set().dir;
        let _ = writeln!(
            out,
            "\n== {variant:?}: camgate (tract, 1 thread; min_face {}, max_side {}) — model load + plan {load_ms:.0} ms",
            args.engine.min_face,
            if args.engine.max_side == 0 { "off".to_string() } else { args.engine.max_side.to_string() }
        );
        // camgate runs `reps` times per image before the reference and `reps` times after it, and
        // the medians pool both passes: the machine's speed drifts (other VMs, clocks), and a
        // drift during the reference's half then weighs on both sides alike.
        let mut files = Vec::new();
        for path in &images {
            let bytes = read(path)?;
            // Warm-up builds this image's pyramid plans (cached from then on, as for a camera stream).
            let t = Instant::now();
            engine.process(&bytes, true)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let _ = writeln!(out, "   {name}: first run (plans built) {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
            files.push((name, bytes));
        }
        let mut runs: BTreeMap<String, (Vec<[f64; 8]>, usize)> = BTreeMap::new();
        let pass = |runs: &mut BTreeMap<String, (Vec<[f64; 8]>, usize)>| -> Result<(), VisionError> {
            for (name, bytes) in &files {
                for _ in 0..reps {
                    let cpu = process_cpu_ms();
                    let (faces, times) = engine.process(bytes, true)?;
                    let cpu = process_cpu_ms() - cpu;
                    let entry = runs.entry(name.clone()).or_default();
                    entry.0.push(stage_values(&times, cpu));
                    entry.1 = faces.len();
                }
            }
            Ok(())
        };
        pass(&mut runs)?;
        let reference = if args.no_reference {
            Err(VisionError::Reference("skipped (--no-reference)".into()))
        } else {
            let r = run_reference(&args, &models_dir, variant, &images);
            pass(&mut runs)?;
            r
        };
        let ours: BTreeMap<String, ([f64; 8], usize)> = runs
            .into_iter()
            .map(|(name, (r, n))| (name, (std::array::from_fn(|k| median(r.iter().map(|x| x[k]).collect())), n)))
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:>5} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} | side",
            "image", "faces", STAGES[0], STAGES[1], STAGES[2], STAGES[3], STAGES[4], STAGES[5], STAGES[6], STAGES[7]
        );
        // (camgate wall, reference wall, camgate cpu, reference cpu)
        let mut tot = (0.0, 0.0, 0.0, 0.0);
        let mut rows = serde_json::Map::new();
        for (name, (med, n)) in &ours {
            let _ = writeln!(
                out,
                "{name:<12} {n:>5} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} | camgate",
                med[0], med[1], med[2], med[3], med[4], med[5], med[6], med[7]
            );
            tot.0 += med[6];
            tot.2 += med[7];
            let mut row = serde_json::json!({ "camgate": STAGES.iter().zip(med).map(|(s, v)| (s.to_string(), v)).collect::<BTreeMap<_, _>>(), "faces": n });
            if let Ok(r) = &reference {
                if let Some(rr) = r["images"].get(name) {
                    let v: Vec<f64> = STAGES.iter().map(|s| rr[*s].as_f64().unwrap_or(0.0)).collect();
                    let _ = writeln!(
                        out,
                        "{:<12} {:>5} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} | reference (ratio wall {:.2}, cpu {:.2})",
                        "",
                        rr["faces"].as_u64().unwrap_or(0),
                        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7],
                        med[6] / v[6].max(1e-9),
                        med[7] / v[7].max(1e-9)
                    );
                    tot.1 += v[6];
                    tot.3 += v[7];
                    row["reference"] = rr.clone();
                    row["ratio"] = serde_json::json!(med[6] / v[6].max(1e-9));
                }
            }
            rows.insert(name.clone(), row);
        }
        match &reference {
            Ok(r) => {
                let ratio = tot.0 / tot.1.max(1e-9);
                let cpu_ratio = tot.2 / tot.3.max(1e-9);
                let _ = writeln!(
                    out,
                    "TOTAL camgate {:.1} ms wall / {:.1} ms cpu, reference {:.1} ms wall / {:.1} ms cpu ({}; {}), camgate/reference = {ratio:.2} wall, {cpu_ratio:.2} cpu (goal <= 0.80)",
                    tot.0,
                    tot.2,
                    tot.1,
                    tot.3,
                    r["engine"].as_str().unwrap_or("onnxruntime"),
                    if args.reference_defaults { "reference at its defaults" } else { "same detector settings" }
                );
                summary.insert(variant.to_string(), serde_json::json!({ "images": rows, "camgate_total_ms": tot.0, "reference_total_ms": tot.1, "ratio": ratio, "camgate_cpu_ms": tot.2, "reference_cpu_ms": tot.3, "cpu_ratio": cpu_ratio, "load_ms": load_ms }));
            }
            Err(e) => {
                let _ = writeln!(out, "TOTAL camgate {:.1} ms; reference not run: {e}", tot.0);
                summary.insert(variant.to_string(), serde_json::json!({ "images": rows, "camgate_total_ms": tot.0, "reference": e.to_string(), "load_ms": load_ms }));
            }
        }
    }
    let _ = writeln!(out, "{}", serde_json::Value::Object(summary));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    }
}
