//! `camgate bench vision`: camgate's pipeline and the onnxruntime reference over the same images,
//! per stage, single thread, interleaved pass by pass.
//!
//! Why interleaved: this class of machine (a shared VM) changes speed by 1.5× within a minute. When
//! each side ran all its passes in one block, the ratio between them moved between 0.7 and 1.0 for the
//! same code. Now every camgate pass of an image sits next to a reference pass of the same image, in
//! alternating order (ABBA), and each round's ratio is a paired measurement.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use super::median;
use crate::cli::face::{read, EngineArgs};
use crate::vision::models::ModelVariant;
use crate::vision::pipeline::{FaceEngine, StageTimes};
use crate::vision::VisionError;

#[derive(Debug, thiserror::Error)]
pub enum VisionBenchError {
    #[error(transparent)]
    Vision(#[from] VisionError),
    /// The reference subprocess failed or printed something unexpected.
    #[error("reference benchmark: {0}")]
    Reference(String),
}

#[derive(clap::Args, Debug, Clone)]
pub struct VisionBenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Images to run [default: tests/fixtures/faces/*.{jpg,png}].
    pub images: Vec<PathBuf>,
    /// Timed rounds. A round runs every image once on each side, the two passes of an image back to
    /// back (order alternating by round); one untimed warm-up round first builds the plans.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Which weights to bench: float, f16, int8, or a comma-separated list. int8 is left out by
    /// default: tract runs it 4–35x slower than float, so it would take most of the bench's time.
    #[arg(long, default_value = "float,f16")]
    pub variants: String,
    /// Python with onnxruntime for the reference side [default: models/.venv/bin/python, then python3].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the reference side.
    #[arg(long)]
    pub no_reference: bool,
    /// Run the reference at its package defaults (min face 20, full resolution) instead of camgate's
    /// settings: compares camgate's chosen configuration against the reference as shipped.
    #[arg(long)]
    pub reference_defaults: bool,
}

/// Wall-clock milliseconds per stage, the wall-clock total, then the process CPU time of the pass.
const STAGES: [&str; 8] = [
    "decode", "pnet", "rnet", "onet", "align", "embed", "total", "cpu",
];
const TOTAL: usize = 6;
const CPU: usize = 7;

type Row = [f64; 8];

fn stage_values(t: &StageTimes, cpu_ms: f64) -> Row {
    // The working-resolution shrink belongs to the detector's front end; it is counted with P-Net.
    [
        t.decode_ms,
        t.resize_ms + t.pnet_ms,
        t.rnet_ms,
        t.onet_ms,
        t.align_ms,
        t.embed_ms,
        t.total_ms,
        cpu_ms,
    ]
}

/// CPU time used by this process so far, ms. Unlike wall time it does not grow while other
/// processes hold the CPU (both sides are single-threaded; the reference reports the same clock,
/// Python's `process_time`).
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn medians(rows: &[Row]) -> Row {
    std::array::from_fn(|k| median(rows.iter().map(|r| r[k]).collect()))
}

fn default_images() -> Result<Vec<PathBuf>, VisionError> {
    super::fixture_images().map_err(|source| VisionError::Io {
        path: PathBuf::from("tests/fixtures/faces"),
        source,
    })
}

/// The reference (`models/reference.py bench --serve`) as a child process: one image path per line
/// in, one JSON line of stage timings out. Closing its stdin ends it.
struct ReferencePeer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    engine: String,
}

impl ReferencePeer {
    fn spawn(
        args: &VisionBenchArgs,
        models_dir: &Path,
        variant: ModelVariant,
    ) -> Result<Self, VisionBenchError> {
        let python = args.python.clone().unwrap_or_else(|| {
            let venv = models_dir.join(".venv/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
        let mut cmd = Command::new(&python);
        cmd.arg(models_dir.join("reference.py"))
            .args(["bench", "--serve", "--variant"])
            .arg(variant.to_string());
        // Same detector settings as camgate's side, so the comparison is like for like.
        if !args.reference_defaults {
            cmd.arg("--min-face")
                .arg((args.engine.min_face.round() as i64).to_string());
            cmd.arg("--max-side").arg(args.engine.max_side.to_string());
        }
        // The reference must be single-threaded too.
        cmd.env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| VisionBenchError::Reference(format!("{}: {e}", python.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(VisionBenchError::Reference(
                "no pipes to the reference process".into(),
            ));
        };
        let mut peer = ReferencePeer {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            engine: String::new(),
        };
        let hello = peer.next_json()?;
        peer.engine = hello["engine"]
            .as_str()
            .unwrap_or("onnxruntime")
            .to_string();
        Ok(peer)
    }

    /// The next JSON line; the package prints a banner on import, which is skipped.
    fn next_json(&mut self) -> Result<serde_json::Value, VisionBenchError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| VisionBenchError::Reference(format!("reading its output: {e}")))?;
            if n == 0 {
                let status = self
                    .child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(VisionBenchError::Reference(format!(
                    "the reference process ended ({status}); its stderr is above"
                )));
            }
            if line.starts_with('{') {
                return serde_json::from_str(&line)
                    .map_err(|e| VisionBenchError::Reference(format!("unparsable output: {e}")));
            }
        }
    }

    /// One timed pass over `path`: stage timings and the number of faces found.
    fn pass(&mut self, path: &Path) -> Result<(Row, usize), VisionBenchError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| VisionBenchError::Reference("stdin closed".into()))?;
        writeln!(stdin, "{}", path.display())
            .and_then(|_| stdin.flush())
            .map_err(|e| VisionBenchError::Reference(format!("writing to it: {e}")))?;
        let v = self.next_json()?;
        let row = std::array::from_fn(|k| v[STAGES[k]].as_f64().unwrap_or(f64::NAN));
        Ok((row, v["faces"].as_u64().unwrap_or(0) as usize))
    }
}

impl Drop for ReferencePeer {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: the script's read loop ends
        let _ = self.child.wait();
    }
}

/// One reference pass over `path`. The first failure replaces the peer by its error, which the
/// summary reports; the camgate side carries on.
fn reference_pass(
    peer: &mut Result<ReferencePeer, VisionBenchError>,
    path: &Path,
) -> Option<(Row, usize)> {
    let result = peer.as_mut().ok()?.pass(path);
    result.map_err(|e| *peer = Err(e)).ok()
}

/// Per image: the timed rows of one side and the faces it found.
#[derive(Default)]
struct Side {
    rows: Vec<Row>,
    faces: usize,
}

fn print_row(out: &mut impl Write, name: &str, faces: usize, v: &Row, tail: &str) {
    let _ = writeln!(
        out,
        "{name:<12} {faces:>5} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} | {tail}",
        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
    );
}

/// Runs the benchmark and prints a table (stdout) and a JSON summary (last line).
pub fn run(args: VisionBenchArgs) -> Result<(), VisionBenchError> {
    let images = if args.images.is_empty() {
        default_images()?
    } else {
        args.images.clone()
    };
    if images.is_empty() {
        return Err(VisionError::Config("no images to bench".into()).into());
    }
    let variants = args
        .variants
        .split(',')
        .map(|v| v.trim().parse())
        .collect::<Result<Vec<ModelVariant>, _>>()?;
    let reps = args.reps.max(1);
    let files = images
        .iter()
        .map(|p| {
            Ok((
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                p.clone(),
                read(p)?,
            ))
        })
        .collect::<Result<Vec<_>, VisionError>>()?;
    let mut out = std::io::stdout().lock();
    let mut summary = serde_json::Map::new();
    for variant in variants {
        let cfg = args.engine.config(variant);
        let t = Instant::now();
        let engine = FaceEngine::new(cfg.clone())?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let _ = writeln!(
            out,
            "\n== {variant}: camgate (tract, 1 thread; min_face {}, max_side {}) — model load + plan {load_ms:.0} ms",
            args.engine.min_face,
            if args.engine.max_side == 0 { "off".to_string() } else { args.engine.max_side.to_string() }
        );
        let mut peer = if args.no_reference {
            Err(VisionBenchError::Reference(
                "skipped (--no-reference)".into(),
            ))
        } else {
            ReferencePeer::spawn(&args, &cfg.model_set().dir, variant)
        };
        let ours_pass = |bytes: &[u8]| -> Result<(Row, usize), VisionBenchError> {
            let cpu = process_cpu_ms();
            let (faces, times) = engine.process(bytes, true)?;
            Ok((stage_values(&times, process_cpu_ms() - cpu), faces.len()))
        };
        // Warm-up round: builds each image's pyramid plans (cached from then on, as for a camera stream).
        for (name, path, bytes) in &files {
            let t = Instant::now();
            ours_pass(bytes)?;
            let _ = writeln!(
                out,
                "   {name}: first run (plans built) {:.0} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
            reference_pass(&mut peer, path);
        }
        let mut ours: BTreeMap<&str, Side> = BTreeMap::new();
        let mut theirs: BTreeMap<&str, Side> = BTreeMap::new();
        // Per round: (camgate wall, reference wall, camgate cpu, reference cpu) summed over the images.
        let mut rounds: Vec<[f64; 4]> = Vec::new();
        for round in 0..reps {
            let mut sums = [0.0; 4];
            for (name, path, bytes) in &files {
                let (a, b) = if round % 2 == 0 {
                    let a = ours_pass(bytes)?;
                    (a, reference_pass(&mut peer, path))
                } else {
                    let b = reference_pass(&mut peer, path);
                    (ours_pass(bytes)?, b)
                };
                sums[0] += a.0[TOTAL];
                sums[2] += a.0[CPU];
                let side = ours.entry(name).or_default();
                side.rows.push(a.0);
                side.faces = a.1;
                if let Some((row, faces)) = b {
                    sums[1] += row[TOTAL];
                    sums[3] += row[CPU];
                    let side = theirs.entry(name).or_default();
                    side.rows.push(row);
                    side.faces = faces;
                }
            }
            rounds.push(sums);
        }
        let peer = peer.map(|p| p.engine.clone());

        let _ = writeln!(
            out,
            "{:<12} {:>5} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} | side (medians over {reps} rounds)",
            "image", "faces", STAGES[0], STAGES[1], STAGES[2], STAGES[3], STAGES[4], STAGES[5], STAGES[6], STAGES[7]
        );
        // (camgate wall, reference wall, camgate cpu, reference cpu), sums of per-image medians.
        let mut tot = [0.0; 4];
        let mut rows = serde_json::Map::new();
        for (name, side) in &ours {
            let med = medians(&side.rows);
            print_row(&mut out, name, side.faces, &med, "camgate");
            tot[0] += med[TOTAL];
            tot[2] += med[CPU];
            let mut row = serde_json::json!({ "camgate": STAGES.iter().zip(med).map(|(s, v)| (s.to_string(), v)).collect::<BTreeMap<_, _>>(), "faces": side.faces });
            if let Some(r) = theirs.get(name).filter(|r| r.rows.len() == side.rows.len()) {
                let rm = medians(&r.rows);
                let (wall, cpu) = (
                    med[TOTAL] / rm[TOTAL].max(1e-9),
                    med[CPU] / rm[CPU].max(1e-9),
                );
                print_row(
                    &mut out,
                    "",
                    r.faces,
                    &rm,
                    &format!("reference (ratio wall {wall:.2}, cpu {cpu:.2})"),
                );
                tot[1] += rm[TOTAL];
                tot[3] += rm[CPU];
                row["reference"] = serde_json::json!(STAGES
                    .iter()
                    .zip(rm)
                    .map(|(s, v)| (s.to_string(), v))
                    .collect::<BTreeMap<_, _>>());
                row["reference_faces"] = serde_json::json!(r.faces);
                row["ratio"] = serde_json::json!(wall);
            }
            rows.insert(name.to_string(), row);
        }
        let complete = theirs.len() == ours.len() && theirs.values().all(|r| r.rows.len() == reps);
        match (&peer, complete) {
            (Ok(engine), true) => {
                let (ratio, cpu_ratio) = (tot[0] / tot[1].max(1e-9), tot[2] / tot[3].max(1e-9));
                let paired: Vec<f64> = rounds.iter().map(|r| r[0] / r[1].max(1e-9)).collect();
                let paired_cpu: Vec<f64> = rounds.iter().map(|r| r[2] / r[3].max(1e-9)).collect();
                let spread = |v: &[f64]| {
                    let (lo, hi) = v
                        .iter()
                        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
                    format!("{:.2} (rounds {lo:.2}–{hi:.2})", median(v.to_vec()))
                };
                let _ = writeln!(
                    out,
                    "TOTAL camgate {:.1} ms wall / {:.1} ms cpu, reference {:.1} ms wall / {:.1} ms cpu ({engine}; {}), camgate/reference = {ratio:.2} wall, {cpu_ratio:.2} cpu (goal <= 0.80)",
                    tot[0],
                    tot[2],
                    tot[1],
                    tot[3],
                    if args.reference_defaults { "reference at its defaults" } else { "same detector settings" }
                );
                let _ = writeln!(
                    out,
                    "PAIRED per-round ratio: wall {}, cpu {}",
                    spread(&paired),
                    spread(&paired_cpu)
                );
                summary.insert(
                    variant.to_string(),
                    serde_json::json!({ "images": rows, "camgate_total_ms": tot[0], "reference_total_ms": tot[1], "ratio": ratio,
                        "camgate_cpu_ms": tot[2], "reference_cpu_ms": tot[3], "cpu_ratio": cpu_ratio,
                        "round_ratios": paired, "round_cpu_ratios": paired_cpu, "load_ms": load_ms }),
                );
            }
            (peer, _) => {
                let why = match peer {
                    Err(e) => e.to_string(),
                    Ok(_) => "the reference stopped answering part-way".to_string(),
                };
                let _ = writeln!(
                    out,
                    "TOTAL camgate {:.1} ms; reference not run: {why}",
                    tot[0]
                );
                summary.insert(variant.to_string(), serde_json::json!({ "images": rows, "camgate_total_ms": tot[0], "reference": why, "load_ms": load_ms }));
            }
        }
    }
    let _ = writeln!(out, "{}", serde_json::Value::Object(summary));
    Ok(())
}
