//! `camgate bench mqtt`: the sink against a bare rumqttc client in the same run, same broker,
//! same payloads, same inflight.
//!
//! 1. Sink: N events stored in a fresh outbox, then the sink forwards them; events/s from its
//!    start until the last PubAck (commits and cursor fsyncs included).
//! 2. Raw: one rumqttc client publishes the same N payloads QoS 1 to the same topics and counts
//!    PubAcks; no outbox, no tracking.
//! 3. Latency: events appended at a fixed rate while the sink runs; time from the start of the
//!    `append` call (so the outbox fsync is included) to the PubAck, p50/p99.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::event::{Envelope, EventView, Source};
use crate::outbox::{Offset, Outbox, OutboxConfig};
use crate::sinks::mqtt::{
    run_observed, topic::Topics, AckObserver, MqttConfig, MqttError, CONSUMER,
};
use crate::sinks::SinkStatus;

#[derive(Debug, Clone, clap::Args)]
pub struct MqttBenchArgs {
    /// Broker host; without it the bench starts its own mosquitto on a free port.
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Events per throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Publishes awaiting PubAck at once, for both the sink and the raw client.
    #[arg(long, default_value_t = 64)]
    pub inflight: u16,
    /// Events per second in the latency phase.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of the latency phase (and of the end-to-end phase).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Events/s of the simulated camera in the end-to-end phase (camera PUBLISH -> broker).
    #[arg(long, default_value_t = 200.0)]
    pub e2e_rate: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MqttBenchError {
    #[error("bench mqtt: {0}")]
    Io(#[from] std::io::Error),
    #[error("bench mqtt: {0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> MqttBenchError {
    MqttBenchError::Other(e.to_string())
}

/// A stored envelope around the spec's face event, as the intake would write it.
pub fn sample_envelope(camera: &str, event_id: i64, received_at_ms: u64) -> Vec<u8> {
    let raw = crate::dev::bench::FACE_EVENT.replacen(
        "\"event_id\":2",
        &format!("\"event_id\":{event_id}"),
        1,
    );
    let view = EventView::parse(raw.as_bytes()).expect("the sample event parses");
    Envelope::encode(
        camera,
        Source::Channel,
        received_at_ms,
        &view,
        raw.as_bytes(),
    )
    .expect("the sample envelope encodes")
}

/// A scratch directory removed on drop (tempfile is a dev-dependency only).
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Result<Self, MqttBenchError> {
        let d = std::env::temp_dir().join(format!(
            "camgate-bench-mqtt-{tag}-{}-{}",
            std::process::id(),
            crate::clock::unix_now_ms()
        ));
        std::fs::create_dir_all(&d)?;
        Ok(ScratchDir(d))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A mosquitto child on a free local port, killed on drop.
pub struct BenchBroker {
    child: Child,
    pub port: u16,
    _dir: ScratchDir,
}

impl BenchBroker {
    pub fn start() -> Result<Self, MqttBenchError> {
        let dir = ScratchDir::new("broker")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nlog_dest none\n"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                other(format!(
                    "cannot start mosquitto (Debian package mosquitto): {e}"
                ))
            })?;
        let b = BenchBroker {
            child,
            port,
            _dir: dir,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(other(format!(
                    "mosquitto did not listen on {port} within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CAMERAS: [&str; 4] = ["door-1", "door-2", "hall", "yard"];

async fn fresh_outbox(dir: &Path) -> Result<Outbox, MqttBenchError> {
    let cfg = OutboxConfig {
        dir: dir.to_owned(),
        max_bytes: 1 << 30,
        ..OutboxConfig::default()
    };
    Outbox::open(&cfg).await.map_err(other)
}

/// Appends `n` envelopes with up to 256 appends in flight (group commit), ids from `first_id`.
async fn fill(outbox: &Outbox, n: usize, first_id: i64) -> Result<(), MqttBenchError> {
    let mut set: tokio::task::JoinSet<Result<Offset, crate::outbox::OutboxError>> =
        tokio::task::JoinSet::new();
    for i in 0..n {
        if set.len() >= 256 {
            set.join_next()
                .await
                .expect("non-empty")
                .map_err(other)?
                .map_err(other)?;
        }
        let ob = outbox.clone();
        let data = Bytes::from(sample_envelope(
            CAMERAS[i % CAMERAS.len()],
            first_id + i as i64,
            crate::clock::unix_now_ms(),
        ));
        set.spawn(async move { ob.append(data).await });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(other)?.map_err(other)?;
    }
    Ok(())
}

struct SinkRun {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<u64, MqttError>>,
    acks: Arc<Mutex<Vec<(Offset, Instant)>>>,
}

fn start_sink(outbox: &Outbox, host: &str, port: u16, inflight: u16, gateway: &str) -> SinkRun {
    let acks: Arc<Mutex<Vec<(Offset, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let a2 = acks.clone();
    let observer: AckObserver = Arc::new(move |o| {
        a2.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((o, Instant::now()))
    });
    let mut cfg = MqttConfig::new(host, port, gateway);
    cfg.max_inflight = inflight;
    cfg.backoff_min_ms = 100;
    cfg.backoff_max_ms = 1000;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_observed(
        outbox.clone(),
        cfg,
        gateway.into(),
        Arc::new(SinkStatus::default()),
        stop.clone(),
        Some(observer),
    ));
    SinkRun { stop, task, acks }
}

async fn wait_acks(
    acks: &Mutex<Vec<(Offset, Instant)>>,
    n: usize,
    limit: Duration,
) -> Result<Instant, MqttBenchError> {
    let t0 = Instant::now();
    loop {
        {
            let a = acks.lock().unwrap_or_else(|p| p.into_inner());
            if a.len() >= n {
                return Ok(a.iter().map(|x| x.1).max().unwrap_or_else(Instant::now));
            }
            if t0.elapsed() > limit {
                return Err(other(format!(
                    "only {} of {n} events acknowledged within {limit:?}",
                    a.len()
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The reference: publish every payload QoS 1 and count PubAcks, nothing else.
async fn raw(
    host: &str,
    port: u16,
    inflight: u16,
    payloads: &[(String, Vec<u8>)],
) -> Result<Duration, MqttBenchError> {
    let mut o = MqttOptions::new("camgate-bench-raw", host, port);
    o.set_inflight(inflight)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, usize::from(inflight) + 4);
    // Connect before the clock starts, like the sink (whose start-up is inside its figure; it
    // is one round trip).
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.map_err(other)? {
            break;
        }
    }
    let n = payloads.len();
    let t0 = Instant::now();
    let owned: Vec<(String, Vec<u8>)> = payloads.to_vec();
    let publisher = tokio::spawn(async move {
        for (t, p) in owned {
            if client.publish(t, QoS::AtLeastOnce, false, p).await.is_err() {
                break;
            }
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match el.poll().await.map_err(other)? {
            Event::Incoming(Packet::PubAck(_)) => acked += 1,
            Event::Outgoing(Outgoing::Disconnect) => break,
            _ => {}
        }
    }
    let elapsed = t0.elapsed();
    let client = publisher.await.map_err(other)?;
    let _ = client.try_disconnect();
    Ok(elapsed)
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

pub async fn run(args: MqttBenchArgs) -> Result<(), MqttBenchError> {
    let broker = match args.host {
        Some(_) => None,
        None => Some(BenchBroker::start()?),
    };
    let host = args.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    let port = broker.as_ref().map_or(args.port, |b| b.port);
    let n = args.events.max(1);
    println!(
        "mqtt bench: broker {host}:{port}, {n} events of ~{} B, inflight {}",
        sample_envelope("door-1", 1, 0).len(),
        args.inflight
    );

    // 1. Sink throughput, from a full outbox.
    let dir = ScratchDir::new("outbox")?;
    let outbox = fresh_outbox(&dir.path().join("outbox")).await?;
    outbox.consumer(CONSUMER).map_err(other)?; // registered before filling: it holds retention
    fill(&outbox, n, 1).await?;
    let t0 = Instant::now();
    let sink = start_sink(&outbox, &host, port, args.inflight, "bench-sink");
    let last = wait_acks(&sink.acks, n, Duration::from_secs(600)).await?;
    let sink_secs = (last - t0).as_secs_f64();
    let sink_rate = n as f64 / sink_secs;

    // 2. Raw client, same payloads and topics.
    let topics = Topics::new("camgate", "bench-raw");
    let payloads: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                topics.event(CAMERAS[i % CAMERAS.len()], "face_recog_event"),
                sample_envelope(CAMERAS[i % CAMERAS.len()], 1 + i as i64, 0),
            )
        })
        .collect();
    let raw_secs = raw(&host, port, args.inflight, &payloads)
        .await?
        .as_secs_f64();
    let raw_rate = n as f64 / raw_secs;

    // 3. Latency at a fixed rate, append start -> PubAck, through the running sink.
    sink.acks.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let starts: Arc<Mutex<Vec<(Offset, Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let every = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let total = (args.rate * args.seconds as f64) as usize;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let (ob, st) = (outbox.clone(), starts.clone());
        let data = Bytes::from(sample_envelope(
            CAMERAS[i % CAMERAS.len()],
            1_000_000 + i as i64,
            crate::clock::unix_now_ms(),
        ));
        set.spawn(async move {
            let t = Instant::now();
            if let Ok(o) = ob.append(data).await {
                st.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((o, t, Instant::now()));
            }
        });
        while set.len() > 1024 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    wait_acks(&sink.acks, total, Duration::from_secs(60)).await?;
    let acks: std::collections::HashMap<Offset, Instant> = sink
        .acks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    let starts = starts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut lat: Vec<Duration> = starts
        .iter()
        .filter_map(|(o, t, _)| acks.get(o).map(|a| a.saturating_duration_since(*t)))
        .collect();
    lat.sort_unstable();
    // The outbox part alone (append until durable), to tell fsync stalls from forwarding ones.
    let mut append: Vec<Duration> = starts
        .iter()
        .map(|(_, t, d)| d.saturating_duration_since(*t))
        .collect();
    append.sort_unstable();
    let mut forward: Vec<Duration> = starts
        .iter()
        .filter_map(|(o, _, d)| acks.get(o).map(|a| a.saturating_duration_since(*d)))
        .collect();
    forward.sort_unstable();
    sink.stop.cancel();
    let delivered = sink.task.await.map_err(other)?.map_err(other)?;
    outbox.shutdown().await.map_err(other)?;

    println!("  sink (outbox -> mqtt, PubAck-tracked commits): {sink_rate:>9.0} events/s  ({n} in {sink_secs:.2} s)");
    println!("  raw rumqttc QoS 1 client (reference):          {raw_rate:>9.0} events/s  ({n} in {raw_secs:.2} s)");
    println!("  ratio sink/raw: {:.2}", sink_rate / raw_rate);
    println!(
        "  latency append -> PubAck at {:.0} events/s for {} s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        args.rate,
        args.seconds,
        percentile_ms(&lat, 0.5),
        percentile_ms(&lat, 0.99),
        lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        lat.len()
    );
    println!(
        "    of which append (outbox fsync): p50 {:.2} ms, p99 {:.2} ms; durable -> PubAck: p50 {:.2} ms, p99 {:.2} ms",
        percentile_ms(&append, 0.5),
        percentile_ms(&append, 0.99),
        percentile_ms(&forward, 0.5),
        percentile_ms(&forward, 0.99)
    );
    println!("  sink delivered (committed) {delivered} events in total");
    let e2e = camera_to_mqtt(&host, port, &args).await?;
    println!("  {e2e}");
    drop(broker);
    Ok(())
}

/// A simulated camera -> `camgate run` (channel session, outbox, this sink) -> the broker, timed
/// by an independent QoS 1 subscriber.
async fn camera_to_mqtt(
    host: &str,
    port: u16,
    args: &MqttBenchArgs,
) -> Result<crate::dev::bench::EndToEnd, MqttBenchError> {
    let gateway = format!("bench-e2e-{}", std::process::id());
    let mut o = MqttOptions::new(format!("{gateway}-sub"), host, port);
    o.set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 16);
    client
        .subscribe(format!("camgate/{gateway}/events/#"), QoS::AtLeastOnce)
        .await
        .map_err(other)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (suback_tx, suback) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut suback_tx = Some(suback_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = suback_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(e) =
                        serde_json::from_slice::<crate::event::StoredEnvelope>(&p.payload)
                    {
                        if tx
                            .send((e.event_id.0, tokio::time::Instant::now()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), suback)
        .await
        .map_err(|_| other("the end-to-end subscriber got no SUBACK"))?
        .map_err(other)?;
    let sink = format!("[mqtt]\nhost = {host:?}\nport = {port}\ngateway_id = {gateway:?}\n");
    let r = crate::dev::bench::camera_to_broker(&sink, args.e2e_rate, args.seconds, rx)
        .await
        .map_err(other);
    reader.abort();
    r
}
