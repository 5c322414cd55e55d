//! `camgate bench profile --shipped BIN`: the face pipeline in the shipped build (the `min-size`
//! profile, no dev tools) against this binary (normally the `release` build) on the same images,
//! in one run. Each round runs `face detect` on every image once with each binary, the order
//! alternating by round (ABBA), so a machine that changes speed mid-run moves both sides alike;
//! the figure is the median of the per-round ratios, shipped / this.

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
    let (mut ship_ms, mut ref_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.reps.max(1) {
        let (a, b) = if round % 2 == 0 {
            let a = detect_once(s, &args.models, &images)?;
            (a, detect_once(r, &args.models, &images)?)
        } else {
            let b = detect_once(r, &args.models, &images)?;
            (detect_once(s, &args.models, &images)?, b)
        };
        println!(
            "round {round}: shipped {a:.0} ms, reference {b:.0} ms, ratio {:.3}",
            a / b
        );
        ship_ms.push(a);
        ref_ms.push(b);
        ratios.push(a / b);
    }
    println!(
        "face detect over {} image(s), median of {} rounds: shipped {} {:.0} ms, reference {} {:.0} ms",
        images.len(),
        ratios.len(),
        s.display(),
        median(ship_ms),
        r.display(),
        median(ref_ms)
    );
    println!(
        "shipped / reference = {:.3} (target <= 1.15)",
        median(ratios)
    );
    Ok(())
}
