//! `camgate bench channel`: figures printed next to a reference measured in the same run.
//!
//! 1. Codec: frame decode + typed, borrowed event decoding of a ~410 B face event, against the
//!    same frames decoded into a `serde_json::Value` (the usual way).
//! 2. Cameras: N simulated cameras (TLS) feeding a real `camgate run` child process whose outbox
//!    fsyncs every event before PUBACK; events/s, PUBACK latency p50/p99, idle and peak RSS of
//!    the child. Reference: the same cameras acked at once by a bare in-process client (no
//!    outbox), i.e. what the network and TLS alone cost.

#[cfg(all(feature = "vision", feature = "kafka"))]
pub mod ekyc;
#[cfg(feature = "vision")]
pub mod faces;
#[cfg(feature = "vision")]
pub mod gbds;
pub mod hook;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod outbox;
#[cfg(feature = "vision")]
pub mod profile;
#[cfg(feature = "vision")]
pub mod quality;
#[cfg(feature = "vision")]
pub mod vision;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::channel::frame::{self, CrcScope, FrameCodec, PacketType, Role};
use crate::channel::session::{Session, SessionConfig, SessionEvent};
use crate::dev::sim::{SimCamera, SimConfig};
use crate::event::EventView;
use crate::net::tls::{self, TlsConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct ChannelBenchArgs {
    /// Simulated cameras.
    #[arg(long, default_value_t = 256)]
    pub cameras: usize,
    /// Events per second per camera.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Frames decoded per codec measurement.
    #[arg(long, default_value_t = 2_000_000)]
    pub frames: usize,
    /// Skip the camera phase (codec only).
    #[arg(long)]
    pub codec_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench: {0}")]
    Io(#[from] std::io::Error),
    #[error("bench: {0}")]
    Other(String),
}

/// The repo's face photos (`tests/fixtures/faces/*.{jpg,png}`), sorted: the vision benches' default set.
pub fn fixture_images() -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("tests/fixtures/faces")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .collect();
    v.sort();
    Ok(v)
}

/// The median of `v` (the upper one of an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The spec's face event with its extra attributes (~410 bytes).
pub const FACE_EVENT: &str = r#"{"event_id":2,"event_type":"face_recog_event","sn":"FS101D8BS00106","report_time":15930292837,"group_name":"vip","faceid":"00000001","cloud_faceid":"8798765433","age":10,"gender":2,"arrive_times":4,"pic_url":"https://192.168.103.117/mnt/sd-card/sunmi_image/snap/1597894624456_7.jpg?auth_key=1597894624-f88c2f9a6e69834430648c2f4931ffae","vip_level":"1","hobby":"tennis","weight":"60","height":"180"}"#;

pub struct CodecFigures {
    pub typed_per_sec: f64,
    pub value_per_sec: f64,
    pub payload_bytes: usize,
}

/// Decodes `n` copies of one face-event frame both ways on this thread.
pub fn codec(n: usize) -> CodecFigures {
    let mut one = Vec::new();
    frame::encode(
        PacketType::Publish,
        FACE_EVENT.as_bytes(),
        CrcScope::Payload,
        &mut one,
    )
    .expect("fits");
    // A buffer of many frames, decoded in a loop like a socket buffer.
    let per_buf = 1000;
    let mut buf = Vec::with_capacity(one.len() * per_buf);
    for _ in 0..per_buf {
        buf.extend_from_slice(&one);
    }
    let codec = FrameCodec::new(Role::Client);
    let rounds = n.div_ceil(per_buf);
    let run = |typed: bool| {
        let t0 = Instant::now();
        let mut checksum = 0i64;
        for _ in 0..rounds {
            let mut pos = 0;
            while let Some((f, used)) = codec.decode(&buf[pos..]).expect("valid frames") {
                if typed {
                    let v = EventView::parse(f.payload).expect("valid event");
                    checksum += v.event_id.0 + v.sn.len() as i64;
                } else {
                    let v: serde_json::Value =
                        serde_json::from_slice(f.payload).expect("valid json");
                    checksum += v["event_id"].as_i64().unwrap_or(0)
                        + v["sn"].as_str().map_or(0, |s| s.len() as i64);
                }
                pos += used;
            }
        }
        std::hint::black_box(checksum);
        (rounds * per_buf) as f64 / t0.elapsed().as_secs_f64()
    };
    // Warm up, then measure each twice and keep the better (the machine is shared).
    run(true);
    let typed = run(true).max(run(true));
    let value = run(false).max(run(false));
    CodecFigures {
        typed_per_sec: typed,
        value_per_sec: value,
        payload_bytes: FACE_EVENT.len(),
    }
}

fn rss_kb(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

struct LoadFigures {
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    acked: u64,
}

async fn start_sims(n: usize, rate: f64, secret: &str) -> Result<Vec<SimCamera>, BenchError> {
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        let mut sc = SimConfig::new("bench-app", secret);
        sc.serial = format!("BENCH{i:05}");
        sc.rate_per_sec = rate;
        sc.serve_media = false;
        let sim = SimCamera::start(sc).await?;
        sim.set_paused(true);
        sims.push(sim);
    }
    Ok(sims)
}

async fn load_phase(sims: &[SimCamera], seconds: u64) -> LoadFigures {
    for s in sims {
        s.take_latencies();
    }
    let acked0: u64 = sims.iter().map(|s| s.totals().acked).sum();
    let t0 = Instant::now();
    for s in sims {
        s.set_paused(false);
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for s in sims {
        s.set_paused(true);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Let in-flight acks land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked: u64 = sims.iter().map(|s| s.totals().acked).sum::<u64>() - acked0;
    let mut lat: Vec<u32> = sims.iter().flat_map(|s| s.take_latencies()).collect();
    lat.sort_unstable();
    LoadFigures {
        events_per_sec: acked as f64 / elapsed,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        acked,
    }
}

/// A bare client that acks every PUBLISH at once: the reference for the camera phase.
async fn bare_client(
    addr: std::net::SocketAddr,
    fingerprint: String,
    secret: String,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), BenchError> {
    let tlsc = tls::client_config(
        &TlsConfig {
            fingerprint_sha256: Some(fingerprint),
            ..Default::default()
        },
        "127.0.0.1",
    )
    .map_err(|e| BenchError::Other(e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tlsc.config)
        .connect(tlsc.server_name, tcp)
        .await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let cfg = SessionConfig {
        app_id: "bench-app".into(),
        secret,
        keep_alive: Duration::from_secs(30),
        events: vec!["face_recog_event".into(), "dynamic_detect_event".into()],
        connect_timeout: Duration::from_secs(10),
        subscribe_timeout: Duration::from_secs(10),
        max_missed_pings: 3,
        crc_scope: CrcScope::Payload,
    };
    let mut s = Session::new(
        cfg,
        tokio::time::Instant::now().into_std(),
        crate::clock::unix_now(),
        crate::sign::random_token(),
    );
    wr.write_all(&s.take_transmit()).await?;
    let codec = FrameCodec::new(Role::Client);
    let mut buf = BytesMut::with_capacity(16384);
    loop {
        let n = tokio::select! { r = rd.read_buf(&mut buf) => r?, _ = stop.cancelled() => return Ok(()) };
        if n == 0 {
            return Ok(());
        }
        while let Some((f, used)) = codec
            .decode(&buf)
            .map_err(|e| BenchError::Other(e.to_string()))?
        {
            let ev = s
                .handle_frame(f, tokio::time::Instant::now().into_std())
                .map_err(|e| BenchError::Other(e.to_string()))?;
            if let SessionEvent::Publish(p) = ev {
                let v = EventView::parse(p).map_err(|e| BenchError::Other(e.to_string()))?;
                s.puback(v.event_id);
            }
            let _ = buf.split_to(used);
        }
        if s.has_transmit() {
            wr.write_all(&s.take_transmit()).await?;
        }
    }
}

/// A `camgate run` config for `sims`, plus `extra` (sink sections) as written.
fn write_config(
    dir: &Path,
    sims: &[SimCamera],
    secret: &str,
    extra: &str,
) -> Result<PathBuf, BenchError> {
    let mut text = format!(
        "[outbox]\ndir = {:?}\nmax_bytes = 1073741824\n[sinks.jsonl]\nenabled = false\n[health]\nfile = {:?}\n{extra}\n",
        dir.join("outbox"),
        dir.join("health.json")
    );
    for (i, s) in sims.iter().enumerate() {
        text.push_str(&format!(
            "[[cameras]]\nname = \"cam-{i}\"\naddress = \"{}\"\napp_id = \"bench-app\"\nsecret = \"{secret}\"\ntls = {{ fingerprint_sha256 = \"{}\" }}\n",
            s.addr,
            s.fingerprint()
        ));
    }
    let path = dir.join("camgate.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn wait_subscribed(sims: &[SimCamera], want: u64, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if sims.iter().all(|s| {
            s.state
                .subscribes
                .load(std::sync::atomic::Ordering::Relaxed)
                >= want
        }) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub async fn channel(args: ChannelBenchArgs) -> Result<(), BenchError> {
    println!(
        "== codec: decode + typed event, {} B face-event payload, 1 thread",
        FACE_EVENT.len()
    );
    let c = tokio::task::spawn_blocking(move || codec(args.frames))
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    println!(
        "  camgate (frame + borrowed typed event): {:>10.0} frames/s",
        c.typed_per_sec
    );
    println!(
        "  reference (frame + serde_json::Value):  {:>10.0} frames/s",
        c.value_per_sec
    );
    println!(
        "  ratio camgate/reference: {:.2}x   (target >= 500k frames/s)",
        c.typed_per_sec / c.value_per_sec
    );
    let _ = c.payload_bytes;
    if args.codec_only {
        return Ok(());
    }

    println!("\n== outbox: durable appends of 500 B events (fsync before the append resolves)");
    for conc in [64usize, 256] {
        let d1 = tempdir()?;
        let grouped = crate::dev::bench::outbox::bench_append(&d1, 20_000, conc, 500, true)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let d2 = tempdir()?;
        let single = crate::dev::bench::outbox::bench_append(&d2, 2_000, conc, 500, false)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        println!("  concurrency {conc:>3}: group commit {:>9.0} events/s (p99 {:.1} ms) | reference, one fsync per event {:>7.0} events/s | ratio {:.1}x   (target >= 20k/s)",
            grouped.events_per_sec, grouped.p99_us as f64 / 1000.0, single.events_per_sec, grouped.events_per_sec / single.events_per_sec);
        let _ = std::fs::remove_dir_all(&d1);
        let _ = std::fs::remove_dir_all(&d2);
    }

    let n = args.cameras;
    let secret = crate::sign::random_token();
    println!(
        "\n== {n} cameras x {} events/s through TLS, {} s per phase",
        args.rate, args.seconds
    );
    let dir = tempdir()?;

    // Reference: bare clients that ack at once.
    let sims = start_sims(n, args.rate, &secret).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    for s in &sims {
        tokio::spawn(bare_client(
            s.addr,
            s.fingerprint(),
            secret.clone(),
            stop.clone(),
        ));
    }
    if !wait_subscribed(&sims, 1, Duration::from_secs(60)).await {
        return Err(BenchError::Other(
            "reference clients did not all subscribe".into(),
        ));
    }
    let reference = load_phase(&sims, args.seconds).await;
    stop.cancel();
    drop(sims);

    // camgate: a child `camgate run` process with a durable outbox.
    let sims = start_sims(n, args.rate, &secret).await?;
    let cfg_path = write_config(&dir, &sims, &secret, "")?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    if !wait_subscribed(&sims, 1, Duration::from_secs(120)).await {
        let _ = child.kill().await;
        return Err(BenchError::Other(
            "camgate did not subscribe to every camera".into(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = rss_kb(pid);
    let figures = load_phase(&sims, args.seconds).await;
    let (_, peak_rss) = rss_kb(pid);
    let t_stop = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let stop_secs = t_stop.elapsed().as_secs_f64();
    let stored = crate::outbox::Outbox::dump(&dir.join("outbox"))
        .map(|r| r.len())
        .unwrap_or(0);

    println!(
        "  {:<36} {:>12} {:>10} {:>10}",
        "", "events/s", "p50 ms", "p99 ms"
    );
    println!(
        "  {:<36} {:>12.0} {:>10.2} {:>10.2}",
        "camgate (fsync before PUBACK)", figures.events_per_sec, figures.p50_ms, figures.p99_ms
    );
    println!(
        "  {:<36} {:>12.0} {:>10.2} {:>10.2}",
        "reference (bare client, ack at once)",
        reference.events_per_sec,
        reference.p50_ms,
        reference.p99_ms
    );
    println!(
        "  offered load: {:.0} events/s; camgate acked {} events, outbox holds {}",
        n as f64 * args.rate,
        figures.acked,
        stored
    );
    println!(
        "  camgate RSS: idle {:.1} MB with {n} sessions, peak {:.1} MB   (target idle <= 40 MB)",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!(
        "  SIGTERM to exit: {:.2} s ({:?})",
        stop_secs,
        status.map(|s| s.map(|s| s.code()))
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `camgate run --config cfg` as a child of this process, killed if the bench ends early.
pub(crate) fn run_child(cfg: &Path) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(std::env::current_exe()?)
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

pub(crate) fn tempdir() -> Result<PathBuf, BenchError> {
    let d = std::env::temp_dir().join(format!(
        "camgate-bench-{}-{}",
        std::process::id(),
        crate::clock::unix_now_ms()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Camera PUBLISH to broker, end to end.
#[derive(Debug, Clone, Copy)]
pub struct EndToEnd {
    pub rate: f64,
    pub seconds: u64,
    pub published: usize,
    pub received: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for EndToEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "end to end, 1 camera at {:.0} events/s for {} s through `camgate run`: camera PUBLISH -> consumer receipt: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} of {} events received)",
            self.rate, self.seconds, self.p50_ms, self.p99_ms, self.max_ms, self.received, self.published
        )
    }
}

/// Serial number of the end-to-end phase's camera: consumers tell its events by it.
pub const E2E_SERIAL: &str = "E2EBENCH00001";

/// One simulated camera publishing `rate` events/s for `seconds` to a child `camgate run` whose
/// only sink is `sink_toml`; `received` carries (event id, receipt time) from an independent
/// consumer of the broker. A consumer sees an event only once the broker has stored it, so the
/// figure is an upper bound of PUBLISH -> broker ack, and it includes the outbox fsync, the
/// camera's PUBACK and the sink's read.
pub async fn camera_to_broker(
    sink_toml: &str,
    rate: f64,
    seconds: u64,
    mut received: tokio::sync::mpsc::UnboundedReceiver<(i64, tokio::time::Instant)>,
) -> Result<EndToEnd, BenchError> {
    let total = (rate * seconds as f64).max(1.0) as u64;
    let secret = crate::sign::random_token();
    let mut sc = SimConfig::new("bench-app", &secret);
    sc.serial = E2E_SERIAL.into();
    sc.rate_per_sec = rate;
    sc.serve_media = false;
    sc.max_events = Some(total);
    sc.record_send_times = true;
    let sim = SimCamera::start(sc).await?;
    sim.set_paused(true);
    let dir = tempdir()?;
    let cfg_path = write_config(&dir, std::slice::from_ref(&sim), &secret, sink_toml)?;
    let mut child = run_child(&cfg_path)?;
    let result = async {
        if !wait_subscribed(std::slice::from_ref(&sim), 1, Duration::from_secs(120)).await {
            return Err(BenchError::Other(
                "camgate did not subscribe to the camera".into(),
            ));
        }
        // The sink connects to its broker in the meantime.
        tokio::time::sleep(Duration::from_secs(2)).await;
        sim.set_paused(false);
        let mut first: std::collections::HashMap<i64, tokio::time::Instant> =
            std::collections::HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 60);
        while (first.len() as u64) < total {
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some((id, at))) => {
                    first.entry(id).or_insert(at);
                }
                Ok(None) => return Err(BenchError::Other("the consumer stopped".into())),
                Err(_) => break,
            }
        }
        Ok(first)
    }
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap_or(0) as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
    let first = result?;
    let sent = sim.take_send_times();
    let mut lat_us: Vec<u32> = first
        .iter()
        .filter_map(|(id, at)| {
            sent.get(id).map(|s| {
                at.saturating_duration_since(*s)
                    .as_micros()
                    .min(u32::MAX as u128) as u32
            })
        })
        .collect();
    lat_us.sort_unstable();
    Ok(EndToEnd {
        rate,
        seconds,
        published: sent.len(),
        received: first.len(),
        p50_ms: percentile(&lat_us, 0.5),
        p99_ms: percentile(&lat_us, 0.99),
        max_ms: lat_us.last().map_or(f64::NAN, |u| *u as f64 / 1000.0),
    })
}
