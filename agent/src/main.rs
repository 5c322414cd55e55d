//! The `camgate` binary: the only place that uses `anyhow`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use tracing::info;

use camgate::config::Config;
use camgate::daemon::Daemon;
#[cfg(feature = "dev-tools")]
use camgate::dev::{demo, sim};
use camgate::outbox::Outbox;
use camgate::{logging, ops};

const DEFAULT_CONFIG: &str = "/etc/camgate/camgate.toml";

#[derive(Parser)]
#[command(
    name = "camgate",
    version,
    about = "Camera gateway: Sunmi Message Channel sessions, durable outbox, on-device vision, forwarding"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (what systemd starts).
    Run(ConfigArg),
    /// Validate the configuration and print every problem.
    CheckConfig(ConfigArg),
    /// Inspect the outbox.
    Outbox {
        #[command(subcommand)]
        cmd: OutboxCmd,
    },
    /// Simulated cameras + the real agent on loopback; prints events and a summary.
    #[cfg(feature = "dev-tools")]
    Demo(DemoArgs),
    /// Run a simulated camera (TLS Message Channel server) until interrupted.
    #[cfg(feature = "dev-tools")]
    SimCamera(SimArgs),
    /// Exit 0 if the running daemon is healthy (for OTA commit).
    Health(ConfigArg),
    /// Print the running daemon's status (cameras, outbox) as JSON.
    Status(ConfigArg),
    /// On-device face detection, embedding and comparison (shipped models, no network).
    #[cfg(feature = "vision")]
    Face {
        #[command(subcommand)]
        cmd: camgate::cli::face::FaceCommand,
    },
    /// The gateway's gallery: enroll, list, show, delete, search, unknowns (JSON output).
    #[cfg(feature = "vision")]
    Gallery {
        #[command(subcommand)]
        cmd: camgate::cli::gallery::GalleryCommand,
    },
    /// GBDS transactions through the running daemon's local API (JSON output).
    Tx(camgate::cli::tx::TxArgs),
    /// Benchmarks; each prints its figures next to a reference measured in the same run.
    #[cfg(feature = "dev-tools")]
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Developer tools (demo, sim-camera, bench) are not in this build.
    #[cfg(not(feature = "dev-tools"))]
    #[command(external_subcommand)]
    Other(Vec<String>),
}

/// The verbs only a build with the `dev-tools` feature has.
#[cfg(not(feature = "dev-tools"))]
const DEV_VERBS: [&str; 3] = ["demo", "sim-camera", "bench"];

#[derive(Args)]
struct ConfigArg {
    /// Configuration file; `conf.d/*.toml` beside it are merged in.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum OutboxCmd {
    /// Print every stored event as a JSON line.
    Dump {
        #[arg(long, short, conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// The outbox directory (instead of --config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Unregister a consumer whose sink was removed from the config (`camgate status` lists it
    /// under outbox.idle_consumers): the records only it held are released. Stop camgate first.
    Forget {
        #[arg(long, short, conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// The outbox directory (instead of --config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The consumer, e.g. `notifier-hr.example`.
        name: String,
    },
}

#[cfg(feature = "dev-tools")]
#[derive(Args)]
struct DemoArgs {
    /// How the simulated cameras deliver events: Message Channel sessions, or HTTP callbacks.
    #[arg(long, value_enum, default_value = "channel")]
    mode: demo::DemoMode,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 2)]
    cameras: usize,
    /// Events per second per camera.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Where to keep the outbox and the JSON-lines file (default: a new temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Do not inject faults (channel: the occasional bad CRC on the last camera; hook: one
    /// forged and one replayed callback).
    #[arg(long)]
    no_faults: bool,
    /// Channel mode: leave the vision stage out (no photos, no face results).
    #[arg(long)]
    no_faces: bool,
}

#[cfg(feature = "dev-tools")]
#[derive(Args)]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:10021")]
    listen: std::net::SocketAddr,
    #[arg(long)]
    app_id: String,
    #[arg(long)]
    secret: String,
    #[arg(long, default_value = "FS101D8BS00106")]
    serial: String,
    /// Events per second per connection.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Write the generated certificate (PEM) here, for `tls.ca_file`.
    #[arg(long)]
    cert_out: Option<PathBuf>,
    /// Corrupt the CRC of every Nth PUBLISH.
    #[arg(long)]
    bad_crc_every: Option<u64>,
    /// Never answer PINGREQ.
    #[arg(long)]
    drop_pings: bool,
    /// Close in the middle of a frame after N events per connection.
    #[arg(long)]
    close_mid_frame_after: Option<u64>,
    /// Send DISCONNECT as 0x11 after N events per connection.
    #[arg(long)]
    disconnect_0x11_after: Option<u64>,
    /// Refuse CONNECT with this code.
    #[arg(long)]
    refuse_connect: Option<i64>,
}

#[cfg(feature = "dev-tools")]
#[derive(Subcommand)]
enum BenchCmd {
    /// Codec decode rate, outbox group commit, and N cameras through TLS into the outbox.
    Channel(camgate::dev::bench::ChannelBenchArgs),
    /// Signed multipart callbacks from N concurrent posters into the receiver and the outbox.
    Hook(camgate::dev::bench::hook::HookBenchArgs),
    /// Outbox to Kafka through the sink (mock cluster; a real broker with --brokers), next to a
    /// raw rdkafka producer, plus append-to-delivery latency.
    #[cfg(feature = "kafka")]
    Kafka(camgate::dev::bench::kafka::KafkaBenchArgs),
    /// Outbox -> MQTT sink (PubAck-tracked) next to a raw rumqttc QoS 1 client; latency to PubAck.
    #[cfg(feature = "mqtt")]
    Mqtt(camgate::dev::bench::mqtt::MqttBenchArgs),
    /// `face detect` in the shipped build (min-size, no dev tools) next to this build, same images.
    #[cfg(feature = "vision")]
    Profile(camgate::dev::bench::profile::ProfileBenchArgs),
    /// The face pipeline per stage, next to the onnxruntime reference (Python) when available.
    #[cfg(feature = "vision")]
    Vision(camgate::dev::bench::vision::VisionBenchArgs),
    /// The vision stage (events/s, latency) next to the bare pipeline; 1:N search at 1k-100k
    /// templates next to a plain loop; enroll rate next to bare fsyncs; gallery memory.
    #[cfg(feature = "vision")]
    Faces(camgate::dev::bench::faces::FacesBenchArgs),
    /// GBDS transactions (enroll, 1:N search) through the local API of a `camgate run` child
    /// next to the bare face pipeline; notifications/s next to a bare hyper client.
    #[cfg(feature = "vision")]
    Gbds(camgate::dev::bench::gbds::GbdsBenchArgs),
    /// The [gbds] enrolment bars on labelled photos: genuine and impostor similarity as faces
    /// are scaled down or blurred, next to the same photos as they are; pose and score per pair.
    #[cfg(feature = "vision")]
    Quality(camgate::dev::bench::quality::QualityBenchArgs),
    /// One EKYC worker (mock cluster; a real broker with --brokers): requests/s and request ->
    /// result latency next to the face pipeline alone; its reply production next to a raw producer.
    #[cfg(all(feature = "vision", feature = "kafka"))]
    Ekyc(camgate::dev::bench::ekyc::EkycBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("camgate: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `context: cause: cause`, like anyhow's `{:#}`, but a cause is left out when the message so far
/// already ends with it: the library's errors (`#[error("{path}: {source}")]`) print their source
/// themselves and also hand it on as `source()`, which `{:#}` would print a second time.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::CheckConfig(a) => check_config(&a.config),
        Cmd::Outbox {
            cmd: OutboxCmd::Dump { config, dir },
        } => dump_outbox(config, dir),
        Cmd::Outbox {
            cmd: OutboxCmd::Forget { config, dir, name },
        } => forget_consumer(config, dir, &name),
        Cmd::Health(a) => health(&a.config),
        Cmd::Status(a) => {
            let cfg = Config::load(&a.config)?;
            let text = std::fs::read_to_string(&cfg.health.file)
                .with_context(|| format!("reading {}", cfg.health.file.display()))?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(a) => {
            let cfg = Config::load_valid(&a.config)
                .with_context(|| format!("configuration {}", a.config.display()))?;
            logging::init("info", false);
            runtime()?.block_on(run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "vision")]
        Cmd::Face { cmd } => {
            logging::init("warn", true);
            camgate::cli::face::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "vision")]
        Cmd::Gallery { cmd } => {
            logging::init("warn", true);
            camgate::cli::gallery::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tx(a) => Ok(ExitCode::from(camgate::cli::tx::run(a))),
        #[cfg(feature = "dev-tools")]
        Cmd::Demo(a) => demo(a),
        #[cfg(feature = "dev-tools")]
        Cmd::SimCamera(a) => {
            logging::init("info", true);
            runtime()?.block_on(sim_camera(a))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev-tools")]
        Cmd::Bench { cmd } => bench(cmd),
        #[cfg(not(feature = "dev-tools"))]
        Cmd::Other(args) => not_built(&args),
    }
}

/// A verb of the developer tools in a build without them: exit 2, naming the feature.
#[cfg(not(feature = "dev-tools"))]
fn not_built(args: &[String]) -> Result<ExitCode> {
    let verb = args.first().map_or("", String::as_str);
    if DEV_VERBS.contains(&verb) {
        eprintln!("camgate: `{verb}` is a developer tool, not in this build: build with `--features dev-tools`");
    } else {
        eprintln!("camgate: unknown command {verb:?} (see `camgate --help`)");
    }
    Ok(ExitCode::from(2))
}

fn check_config(path: &std::path::Path) -> Result<ExitCode> {
    let cfg = Config::load(path).with_context(|| format!("loading {}", path.display()))?;
    match cfg.validate() {
        Ok(()) if cfg.vision.is_some() => match camgate::gallery::Gallery::check(&cfg.gallery) {
            Ok(found) => {
                println!(
                    "{}: OK ({} camera(s), outbox {}, gallery {}: {})",
                    path.display(),
                    cfg.cameras.len(),
                    cfg.outbox.dir.display(),
                    cfg.gallery.dir.display(),
                    found.map_or("none yet".to_string(), |(p, u)| format!(
                        "{p} person(s), {u} unsolved"
                    ))
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: gallery: {e}", path.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Ok(()) => {
            println!(
                "{}: OK ({} camera(s), outbox {})",
                path.display(),
                cfg.cameras.len(),
                cfg.outbox.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The outbox directory: `--dir`, else the config's.
fn outbox_dir(config: Option<PathBuf>, dir: Option<PathBuf>) -> Result<PathBuf> {
    Ok(match (dir, config) {
        (Some(d), _) => d,
        (None, c) => {
            Config::load(&c.unwrap_or_else(|| DEFAULT_CONFIG.into()))?
                .outbox
                .dir
        }
    })
}

fn forget_consumer(config: Option<PathBuf>, dir: Option<PathBuf>, name: &str) -> Result<ExitCode> {
    let dir = outbox_dir(config, dir)?;
    let oc = camgate::outbox::OutboxConfig {
        dir: dir.clone(),
        ..Default::default()
    };
    let forgotten = runtime()?.block_on(async {
        let outbox = Outbox::open(&oc).await?;
        let r = outbox.forget_consumer(name).await;
        outbox.shutdown().await?;
        r
    });
    let forgotten = forgotten.with_context(|| format!("outbox {}", dir.display()))?;
    if forgotten {
        println!("consumer {name} forgotten; the records only it held are released");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("camgate: outbox {} has no consumer {name}", dir.display());
        Ok(ExitCode::FAILURE)
    }
}

fn dump_outbox(config: Option<PathBuf>, dir: Option<PathBuf>) -> Result<ExitCode> {
    use std::io::Write;
    let dir = outbox_dir(config, dir)?;
    let mut out = std::io::stdout().lock();
    for r in Outbox::dump(&dir).with_context(|| format!("reading outbox {}", dir.display()))? {
        out.write_all(&r.data)?;
        out.write_all(b"\n")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn health(path: &std::path::Path) -> Result<ExitCode> {
    let cfg = Config::load(path)?;
    match ops::check_health(&cfg.health.file, camgate::clock::unix_now_ms()) {
        Ok(r) => {
            println!(
                "healthy: pid {} version {}, {} camera(s)",
                r.pid,
                r.version,
                r.cameras.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(feature = "dev-tools")]
fn demo(a: DemoArgs) -> Result<ExitCode> {
    logging::init("warn", true);
    let dir = a.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("camgate-demo-{}", camgate::clock::unix_now_ms()))
    });
    let opts = demo::DemoOptions {
        mode: a.mode,
        duration: Duration::from_secs(a.duration),
        cameras: a.cameras,
        rate_per_sec: a.rate,
        dir,
        faults: !a.no_faults,
        quiet: false,
        faces: !a.no_faces,
    };
    runtime()?.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            s2.cancel();
        });
        demo::run(opts, stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "dev-tools")]
fn bench(cmd: BenchCmd) -> Result<ExitCode> {
    use camgate::dev::bench;
    match cmd {
        #[cfg(feature = "vision")]
        BenchCmd::Profile(args) => bench::profile::run(args)?,
        #[cfg(feature = "vision")]
        BenchCmd::Vision(args) => {
            logging::init("warn", true);
            bench::vision::run(args)?;
        }
        #[cfg(feature = "vision")]
        BenchCmd::Faces(args) => {
            logging::init("error", true);
            runtime()?.block_on(bench::faces::run(args))?;
        }
        #[cfg(feature = "vision")]
        BenchCmd::Quality(args) => {
            logging::init("error", true);
            bench::quality::run(args)?;
        }
        #[cfg(all(feature = "vision", feature = "kafka"))]
        BenchCmd::Ekyc(args) => {
            logging::init("error", true);
            runtime()?.block_on(bench::ekyc::run(args))?;
        }
        #[cfg(feature = "vision")]
        BenchCmd::Gbds(args) => {
            logging::init("error", true);
            runtime()?.block_on(bench::gbds::run(args))?;
        }
        #[cfg(feature = "mqtt")]
        BenchCmd::Mqtt(args) => {
            logging::init("warn", true);
            runtime()?.block_on(bench::mqtt::run(args))?;
        }
        BenchCmd::Channel(args) => {
            logging::init("warn", true);
            runtime()?.block_on(bench::channel(args))?;
        }
        BenchCmd::Hook(args) => {
            logging::init("error", true);
            runtime()?.block_on(bench::hook::run(args))?;
        }
        #[cfg(feature = "kafka")]
        BenchCmd::Kafka(args) => {
            logging::init("warn", true);
            runtime()?.block_on(bench::kafka::run(args))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run(cfg: Config) -> Result<()> {
    // Installed before start-up so that a SIGTERM during start-up still means a clean stop.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let daemon = Daemon::start(&cfg).await?;
    ops::notify_ready();
    if let Some(every) = ops::watchdog_interval() {
        // Pinging from a runtime task proves the runtime still schedules work.
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every / 2);
            loop {
                t.tick().await;
                ops::notify_watchdog();
            }
        });
    }
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
    ops::notify_stopping();
    daemon
        .shutdown(Duration::from_secs(cfg.shutdown.grace_secs))
        .await?;
    Ok(())
}

#[cfg(feature = "dev-tools")]
async fn sim_camera(a: SimArgs) -> Result<()> {
    if a.secret.is_empty() {
        anyhow::bail!("--secret must not be empty");
    }
    let mut cfg = sim::SimConfig::new(&a.app_id, &a.secret);
    cfg.listen = a.listen;
    cfg.serial = a.serial;
    cfg.rate_per_sec = a.rate;
    cfg.faults = sim::Faults {
        bad_crc_every: a.bad_crc_every,
        drop_pings: a.drop_pings,
        close_mid_frame_after: a.close_mid_frame_after,
        disconnect_0x11_after: a.disconnect_0x11_after,
        refuse_connect: a.refuse_connect,
        ..sim::Faults::default()
    };
    let cam = sim::SimCamera::start(cfg).await?;
    if let Some(p) = &a.cert_out {
        std::fs::write(p, &cam.cert.cert_pem)?;
    }
    println!(
        "sim-camera listening on {} (media on {:?})",
        cam.addr, cam.media_addr
    );
    println!("fingerprint_sha256 = \"{}\"", cam.fingerprint());
    tokio::signal::ctrl_c().await?;
    let t = cam.totals();
    println!(
        "published {} acked {} unacked {} connects {}",
        t.published, t.acked, t.unacked, t.connects
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct ReadError {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn error_chain_prints_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        // A library error that prints its source and also returns it from source().
        let e = anyhow::Error::new(ReadError {
            path: "/x.toml".into(),
            source: io(),
        })
        .context("configuration /x.toml");
        assert_eq!(
            format!("{e:#}"),
            "configuration /x.toml: /x.toml: No such file or directory: No such file or directory"
        );
        assert_eq!(
            error_chain(&e),
            "configuration /x.toml: /x.toml: No such file or directory"
        );
        // Causes that do not repeat are all kept, in order.
        let e = anyhow::Error::new(io())
            .context("reading /y")
            .context("loading");
        assert_eq!(
            error_chain(&e),
            "loading: reading /y: No such file or directory"
        );
    }
}
