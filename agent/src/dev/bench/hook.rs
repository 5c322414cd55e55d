//! `camgate bench hook`: N concurrent posters send signed multipart callbacks over keep-alive
//! HTTP/1.1 on loopback to the real receiver, whose events go through the intake into a real
//! outbox (fsync before 200) in a temporary directory. Reference, measured in the same run with
//! the same posters: a bare hyper server that reads each body and answers 200 at once (no
//! parsing, no sign check, no outbox), i.e. what HTTP on loopback alone costs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::hook::callback::encode_multipart;
use crate::hook::{HookCamera, Receiver, ReceiverConfig, ReceiverError};
use crate::intake::Intake;
use crate::outbox::{Outbox, OutboxConfig, OutboxError};
use crate::sign;

#[derive(Debug, Clone, clap::Args)]
pub struct HookBenchArgs {
    /// Concurrent posters (cameras), each on its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    pub posters: usize,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Where the outbox goes (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookBenchError {
    #[error("bench hook: {0}")]
    Io(#[from] std::io::Error),
    #[error("bench hook: {0}")]
    Outbox(#[from] OutboxError),
    #[error("bench hook: {0}")]
    Receiver(#[from] ReceiverError),
    #[error("bench hook: {0}")]
    Failed(String),
}

const APP_ID: &str = "bench-app";
const BOUNDARY: &str = "------------------------c83c36cd4ee4082f";

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct PhaseFigures {
    pub ok: u64,
    pub not_ok: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// One signed callback for event `id` of camera `serial`, as firmware sends it.
fn callback_body(serial: &str, id: u64, secret: &str) -> Bytes {
    let payload = format!(
        r#"{{"event_id":{id},"detect_type":3,"video_url":"https://127.0.0.1/v/{id}.flv?auth_key=1","event_type":"dynamic_detect_event","sn":"{serial}","report_time":{}}}"#,
        crate::clock::unix_now()
    );
    let ts = crate::clock::unix_now().to_string();
    let random = sign::random_token();
    let base = [
        ("app_id", APP_ID),
        ("random", random.as_str()),
        ("timestamp", ts.as_str()),
        ("payload", payload.as_str()),
    ];
    let signature = sign::sign(&base, secret);
    let fields = [
        ("app_id", APP_ID),
        ("random", random.as_str()),
        ("timestamp", ts.as_str()),
        ("sign", signature.as_str()),
        ("payload", payload.as_str()),
    ];
    Bytes::from(encode_multipart(&fields, BOUNDARY))
}

/// One poster: posts back to back until `until`; returns (200s, others, latencies in µs).
async fn poster(
    addr: SocketAddr,
    serial: String,
    secret: Arc<str>,
    until: Instant,
) -> Result<(u64, u64, Vec<u32>), HookBenchError> {
    let mut lat = Vec::new();
    let (mut ok, mut not_ok) = (0u64, 0u64);
    let mut id = 0u64;
    'connection: while Instant::now() < until {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| HookBenchError::Failed(e.to_string()))?;
        let driver = tokio::spawn(conn);
        while Instant::now() < until {
            if tx.ready().await.is_err() {
                driver.abort();
                continue 'connection;
            }
            id += 1;
            let req = Request::post("/camgate/hook")
                .header(hyper::header::HOST, addr.to_string())
                .header(
                    hyper::header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(Full::new(callback_body(&serial, id, &secret)))
                .map_err(|e| HookBenchError::Failed(e.to_string()))?;
            let t0 = Instant::now();
            let resp = match tx.send_request(req).await {
                Ok(r) => r,
                Err(_) => {
                    // The server closed the connection: open another.
                    driver.abort();
                    continue 'connection;
                }
            };
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            if status == 200 {
                ok += 1;
            } else {
                not_ok += 1;
            }
        }
        driver.abort();
    }
    Ok((ok, not_ok, lat))
}

/// Runs `posters` posters against `addr` for `seconds`.
pub async fn load(
    addr: SocketAddr,
    posters: usize,
    seconds: u64,
    secret: &str,
    serial_prefix: &str,
) -> Result<PhaseFigures, HookBenchError> {
    let secret: Arc<str> = Arc::from(secret);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..posters.max(1) {
        let serial = format!("{serial_prefix}{i:05}");
        tasks.spawn(poster(addr, serial, secret.clone(), until));
    }
    let (mut ok, mut not_ok, mut lat) = (0, 0, Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (o, n, l) = r.map_err(|e| HookBenchError::Failed(e.to_string()))??;
        ok += o;
        not_ok += n;
        lat.extend(l);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(PhaseFigures {
        ok,
        not_ok,
        per_sec: ok as f64 / elapsed,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    })
}

/// The reference: reads each request's body and answers 200 at once; `count` counts the requests.
pub(super) async fn bare_server(
    stop: CancellationToken,
    count: Arc<AtomicU64>,
) -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop.cancelled() => break,
            };
            let _ = tcp.set_nodelay(true);
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(br#"{"code":0}"#),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

pub async fn run(args: HookBenchArgs) -> Result<(), HookBenchError> {
    let secret = sign::random_token();
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "camgate-bench-hook-{}-{}",
                std::process::id(),
                crate::clock::unix_now_ms()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let body_len = callback_body("BENCH00000", 1, &secret).len();
    println!(
        "== hook: {} posters, keep-alive HTTP/1.1 on loopback, signed multipart callbacks of {body_len} B, {} s per phase",
        args.posters, args.seconds
    );

    let stop = CancellationToken::new();
    let reference_addr = bare_server(stop.clone(), Arc::default()).await?;
    let reference = load(reference_addr, args.posters, args.seconds, &secret, "REF").await?;
    stop.cancel();

    let oc = OutboxConfig {
        dir: dir.join("outbox"),
        max_bytes: 1 << 30,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(&oc).await?;
    let intake = Intake::new(outbox.clone(), Duration::from_secs(86_400), 2_000_000);
    let rstop = CancellationToken::new();
    let rcfg = ReceiverConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        // Every callback is new: the replay cache must hold a whole run (it fails closed).
        replay_max_entries: 2_000_000,
        ..ReceiverConfig::default()
    };
    let max_concurrency = rcfg.max_concurrency;
    let cams = (0..args.posters.max(1))
        .map(|i| HookCamera {
            name: Arc::from(format!("cam-{i}")),
            app_id: APP_ID.into(),
            secret: secret.clone(),
            sn: Some(format!("BENCH{i:05}")),
        })
        .collect();
    let recv = Receiver::start(rcfg, cams, intake, rstop.clone()).await?;
    let counters = recv.counters().clone();
    let camgate = load(
        recv.local_addr(),
        args.posters,
        args.seconds,
        &secret,
        "BENCH",
    )
    .await?;
    rstop.cancel();
    recv.join().await;
    outbox.shutdown().await?;
    let stored = Outbox::dump(&oc.dir)?.len();
    let c = counters.snapshot();

    println!(
        "  {:<44} {:>12} {:>9} {:>9} {:>8}",
        "", "callbacks/s", "p50 ms", "p99 ms", "not 200"
    );
    println!(
        "  {:<44} {:>12.0} {:>9.2} {:>9.2} {:>8}",
        "camgate (sign check, parse, fsync'd outbox)",
        camgate.per_sec,
        camgate.p50_ms,
        camgate.p99_ms,
        camgate.not_ok
    );
    println!(
        "  {:<44} {:>12.0} {:>9.2} {:>9.2} {:>8}",
        "reference (bare hyper, body read, 200 at once)",
        reference.per_sec,
        reference.p50_ms,
        reference.p99_ms,
        reference.not_ok
    );
    println!(
        "  ratio camgate/reference: {:.2}   (receiver max_concurrency {max_concurrency})",
        camgate.per_sec / reference.per_sec
    );
    println!(
        "  answered 200: {}; receiver counted accepted {}, rejected {:?}; outbox holds {stored} records",
        camgate.ok, c.accepted, c.rejected
    );
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if stored as u64 != camgate.ok {
        return Err(HookBenchError::Failed(format!(
            "{} callbacks answered 200 but {stored} records stored",
            camgate.ok
        )));
    }
    Ok(())
}
