//! `camgate bench profile --shipped BIN`: the face pipeline in the shipped build (the `min-size`
//! profile, no dev tools) against this binary (normally the `release` build) on the same images,
//! in one run. Each round runs `face detect` on every image once with each binary, the order
//! alternating by round (ABBA), so a machine that changes speed mid-run moves both sides alike;
//! the figure is the median of the per-round ratios, shipped / this. Each round also runs the
//! images several times in one process, which splits the time into per picture and model load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{fixture_images, median, BenchError};

#[derive(Debug, Clone, clap::Args)]
pub struct ProfileBenchArgs {
    /// The shipped binary, e.g. `target/min-size/camgate` from
    /// `cargo build --profile min-size --no-default-features --features vision,kafka,mqtt`.
    #[arg(long)]
    pub shipped: PathBuf,
    /// The binary to compare against [default: this one].
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Directory with the ONNX models.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Images [default: tests/fixtures/faces/*.{jpg,png}].
    pub images: Vec<PathBuf>,
    /// Timed rounds (one untimed warm-up round first).
    #[arg(long, default_value_t = 6)]
    pub reps: usize,
}

/// Wall time of one `face detect` over `images` (a fresh process: model load included, as a
/// gateway's first picture after start pays it too; the same for both sides).
fn detect_once(bin: &Path, models: &Path, images: &[PathBuf]) -> Result<f64, BenchError> {
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["face", "detect", "--models"])
        .arg(models)
        .args(images)
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(BenchError::Other(format!(
            "{} face detect: {} {err}",
            bin.display(),
            out.status
        )));
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// One round's figures for one binary: `face detect` over the images once and over them
/// [`REPEAT`] times in one process. The difference is pictures only (the models load once in
/// both), which splits the time into what a running gateway pays per picture and what it pays
/// once at start.
#[derive(Debug, Clone, Copy)]
struct Split {
    once_ms: f64,
    per_image_ms: f64,
    load_ms: f64,
}

const REPEAT: usize = 4;

fn split(bin: &Path, models: &Path, images: &[PathBuf]) -> Result<Split, BenchError> {
    let n = images.len();
    let many: Vec<PathBuf> = images.iter().cycle().take(n * REPEAT).cloned().collect();
    let once_ms = detect_once(bin, models, images)?;
    let many_ms = detect_once(bin, models, &many)?;
    let per_image_ms = (many_ms - once_ms).max(0.0) / ((REPEAT - 1) * n) as f64;
    Ok(Split {
        once_ms,
        per_image_ms,
        load_ms: (once_ms - per_image_ms * n as f64).max(0.0),
    })
}

pub fn run(args: ProfileBenchArgs) -> Result<(), BenchError> {
    let images = if args.images.is_empty() {
        fixture_images()?
    } else {
        args.images.clone()
    };
    if images.is_empty() {
        return Err(BenchError::Other("no images".into()));
    }
    let reference = match &args.reference {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let (s, r) = (args.shipped.as_path(), reference.as_path());
    detect_once(s, &args.models, &images)?;
    detect_once(r, &args.models, &images)?;
    let mut rounds: Vec<(Split, Split)> = Vec::new();
    for round in 0..args.reps.max(1) {
        let (a, b) = if round % 2 == 0 {
            let a = split(s, &args.models, &images)?;
            (a, split(r, &args.models, &images)?)
        } else {
            let b = split(r, &args.models, &images)?;
            (split(s, &args.models, &images)?, b)
        };
        println!(
            "round {round}: shipped {:.0} ms, reference {:.0} ms, ratio {:.3}; per picture {:.3}, model load {:.3}",
            a.once_ms,
            b.once_ms,
            a.once_ms / b.once_ms,
            a.per_image_ms / b.per_image_ms,
            a.load_ms / b.load_ms
        );
        rounds.push((a, b));
    }
    report(&images, s, r, &rounds);
    Ok(())
}

fn report(images: &[PathBuf], s: &Path, r: &Path, rounds: &[(Split, Split)]) {
    // A round whose split came out degenerate (noise: the repeated run no slower than the single
    // one, so no load is left to divide by) has no ratio; the median is over the others.
    let med = |f: &dyn Fn(&(Split, Split)) -> f64| {
        median(rounds.iter().map(f).filter(|v| v.is_finite()).collect())
    };
    println!(
        "face detect over {} image(s), median of {} rounds: shipped {} {:.0} ms, reference {} {:.0} ms",
        images.len(),
        rounds.len(),
        s.display(),
        med(&|x| x.0.once_ms),
        r.display(),
        med(&|x| x.1.once_ms)
    );
    println!(
        "  per picture (what a running gateway pays for each): shipped {:.1} ms, reference {:.1} ms, ratio {:.3}",
        med(&|x| x.0.per_image_ms),
        med(&|x| x.1.per_image_ms),
        med(&|x| x.0.per_image_ms / x.1.per_image_ms)
    );
    println!(
        "  model load (once per start): shipped {:.0} ms, reference {:.0} ms, ratio {:.3}",
        med(&|x| x.0.load_ms),
        med(&|x| x.1.load_ms),
        med(&|x| x.0.load_ms / x.1.load_ms)
    );
    println!(
        "shipped / reference = {:.3} for one `face detect` over the images (target <= 1.15)",
        med(&|x| x.0.once_ms / x.1.once_ms)
    );
}
