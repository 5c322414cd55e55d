//! Stand-in for `camgate face ...` / `camgate bench vision` until main.rs wires them:
//! `cargo run --release --example face -- detect tests/fixtures/faces/obama.jpg`
//! `cargo run --release --example face -- bench --reps 3`
use camgate::vision::cli::{self, FaceCommand, VisionBenchArgs};
use clap::Parser;

#[derive(clap::Parser)]
enum Cmd {
    #[command(flatten)]
    Face(FaceCommand),
    /// The vision benchmark (camgate vs the onnxruntime reference).
    Bench(VisionBenchArgs),
}

fn main() -> std::process::ExitCode {
    let r = match Cmd::parse() {
        Cmd::Face(c) => cli::run(c),
        Cmd::Bench(a) => cli::bench(a),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
