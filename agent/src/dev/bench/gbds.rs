//! `camgate bench gbds`: transactions and their notifications, each next to a reference measured
//! in the same run.
//!
//! 1. Notifications: N GBDS notices stored in an outbox, POSTed by the notifier sink (progress
//!    marks, periodic durable commits, one kept-alive connection) to a local hyper server that
//!    answers 200; reference: a bare hyper client POSTing the same bodies one after the other
//!    over one kept-alive connection to the same server (target: camgate >= 0.8x).
//! 2. Transactions: a `camgate run` child with `[vision]`, a gallery of 10k synthetic persons,
//!    `[gbds]`, `[api]` and a notifier; enrolls and 1:N searches of the repo's fixture photos
//!    submitted through the local API, timed from the first submission to the last final
//!    notification at the endpoint. Reference: the bare face pipeline (decode, detect, align,
//!    embed) over the same photos in this process, before and after.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::{faces, hook::bare_server, median, BenchError};
use crate::net::https::HttpsClient;
use crate::notice::{NoticeRecord, Notification};
use crate::outbox::{Outbox, OutboxConfig};
use crate::sinks::notifier::{self, EndpointConfig, NOTIFICATION_HEADER};
use crate::sinks::SinkStatus;

#[derive(Debug, Clone, clap::Args)]
pub struct GbdsBenchArgs {
    /// Notifications POSTed per phase.
    #[arg(long, default_value_t = 5000)]
    pub notifications: usize,
    /// Transactions of each kind (enroll, 1:N search).
    #[arg(long, default_value_t = 21)]
    pub transactions: usize,
    /// Synthetic persons in the gallery.
    #[arg(long, default_value_t = 10000)]
    pub persons: usize,
    /// Leave out the transactions (no models needed).
    #[arg(long)]
    pub notifications_only: bool,
}

const TOKEN: &str = "bench-token-0123456789";

fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

pub async fn run(args: GbdsBenchArgs) -> Result<(), BenchError> {
    let dir = super::tempdir()?;
    let result = async {
        notifications(&args, &dir).await?;
        if !args.notifications_only {
            transactions(&args, &dir).await?;
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn notice(i: usize) -> NoticeRecord {
    let tguid = uuid::Uuid::new_v4().to_string();
    let status = if i % 2 == 0 { "ENROLLED" } else { "MATCH" };
    NoticeRecord::new(
        1,
        crate::clock::unix_now_ms(),
        Notification {
            operation: if i % 2 == 0 { "ENROLL" } else { "SEARCH" }.into(),
            tguid,
            status: status.into(),
            treatment: None,
            uguid: None,
        },
    )
}

async fn notifications(args: &GbdsBenchArgs, dir: &Path) -> Result<(), BenchError> {
    let n = args.notifications;
    let notices: Vec<NoticeRecord> = (0..n).map(notice).collect();
    println!(
        "== notifications: {n} GBDS bodies of ~{} B, one endpoint on loopback answering 200, {ROUNDS} rounds (reference, then camgate)",
        notices[0].body(false).len()
    );
    let stop = CancellationToken::new();
    let count = Arc::new(AtomicU64::new(0));
    let addr = bare_server(stop.clone(), count.clone()).await?;
    let oc = OutboxConfig {
        dir: dir.join("outbox"),
        max_bytes: 1 << 30,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(&oc).await.map_err(other)?;
    for r in &notices {
        outbox
            .append(serde_json::to_vec(r).map_err(other)?.into())
            .await
            .map_err(other)?;
    }
    let (mut ours, mut reference, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let r = bare_posts(addr, &notices).await?;
        // A new endpoint name each round: a new cursor, from the first record.
        let o = notifier_pass(&outbox, addr, &format!("bench-{round}"), n).await?;
        println!(
            "  round {round}: camgate {o:>8.0}/s, reference {r:>8.0}/s, ratio {:.2}",
            o / r
        );
        ours.push(o);
        reference.push(r);
        ratios.push(o / r);
    }
    outbox.shutdown().await.map_err(other)?;
    stop.cancel();
    println!(
        "  camgate notifier (outbox -> POST -> 200 -> progress mark): {:>8.0} notifications/s (median)",
        median(ours)
    );
    println!(
        "  reference (bare hyper client, same bodies, keep-alive):  {:>8.0} POSTs/s (median)",
        median(reference)
    );
    println!(
        "  ratio camgate/reference, median of the rounds: {:.2}   (target >= 0.80); endpoint counted {} requests",
        median(ratios),
        count.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Rounds of the notification phase: the machine is shared, so one pair of runs can mislead.
const ROUNDS: usize = 5;

/// The notifier sink delivering the outbox's `n` notices as endpoint `name`: notifications/s.
async fn notifier_pass(
    outbox: &Outbox,
    addr: std::net::SocketAddr,
    name: &str,
    n: usize,
) -> Result<f64, BenchError> {
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let cfg = EndpointConfig {
        url: format!("http://{addr}/gbds/notify"),
        name: Some(name.into()),
        ..EndpointConfig::default()
    };
    let t0 = Instant::now();
    let task = tokio::spawn(notifier::run(
        outbox.clone(),
        cfg,
        false,
        crate::clock::system(),
        status.clone(),
        stop.clone(),
    ));
    while status.delivered.load(Ordering::Relaxed) < n as u64 {
        if task.is_finished() || t0.elapsed() > Duration::from_secs(600) {
            return Err(other("the notifier did not deliver everything"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    Ok(rate)
}

/// POSTs every body in turn over one kept-alive hyper connection, from a task of the runtime
/// like the notifier's; POSTs/s.
async fn bare_posts(
    addr: std::net::SocketAddr,
    notices: &[NoticeRecord],
) -> Result<f64, BenchError> {
    let bodies: Vec<(String, Bytes)> = notices
        .iter()
        .map(|r| (r.key(), Bytes::from(r.body(false))))
        .collect();
    tokio::spawn(post_all(addr, bodies)).await.map_err(other)?
}

async fn post_all(
    addr: std::net::SocketAddr,
    bodies: Vec<(String, Bytes)>,
) -> Result<f64, BenchError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(other)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("reference connection: {e}");
        }
    });
    let host = HeaderValue::from_str(&addr.to_string()).map_err(other)?;
    let t0 = Instant::now();
    for (key, body) in &bodies {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/gbds/notify")
            .header(HOST, host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(NOTIFICATION_HEADER, key.as_str())
            .body(Full::new(body.clone()))
            .map_err(other)?;
        tx.ready().await.map_err(other)?;
        let resp = tx.send_request(req).await.map_err(other)?;
        let status = resp.status();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(other)?;
        if status != 200 {
            return Err(other(format!("reference answered {status}")));
        }
    }
    let rate = bodies.len() as f64 / t0.elapsed().as_secs_f64();
    driver.abort();
    Ok(rate)
}

/// The bare pipeline over the fixture photos: photos/s (median of per-photo times).
fn reference_rate(photos: &[Vec<u8>]) -> Result<f64, BenchError> {
    let engine = faces::engine().ok_or_else(|| other("no models"))?;
    let mut times = Vec::new();
    for p in photos.iter().chain(photos) {
        let t = Instant::now();
        engine.process(p, true).map_err(other)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(1.0 / median(times))
}

async fn transactions(args: &GbdsBenchArgs, dir: &Path) -> Result<(), BenchError> {
    if faces::engine().is_none() {
        println!("== transactions: skipped (no models in ./models or $CAMGATE_MODELS)");
        return Ok(());
    }
    let photos: Vec<Vec<u8>> = super::fixture_images()?
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    println!(
        "== transactions: {} enrolls, then {} 1:N searches, of the {} fixture photos, gallery of {} synthetic persons, `camgate run` child",
        args.transactions,
        args.transactions,
        photos.len(),
        args.persons
    );
    let before = tokio::task::block_in_place(|| reference_rate(&photos))?;
    let stop = CancellationToken::new();
    let count = Arc::new(AtomicU64::new(0));
    let endpoint = bare_server(stop.clone(), count.clone()).await?;
    let base = dir.join("tx");
    faces::write_gallery(&base.join("gallery"), args.persons)?;
    let port = free_port()?;
    let cfg = write_config(&base, port, endpoint)?;
    let mut child = super::run_child(&cfg)?;
    let api = Api::new(port);
    api.wait_up(&mut child).await?;
    let b64 = |p: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(p);
    let mut rates = Vec::new();
    for kind in ["enroll", "search"] {
        let sent0 = count.load(Ordering::Relaxed);
        let t0 = Instant::now();
        for i in 0..args.transactions {
            let image = b64(&photos[i % photos.len()]);
            let (path, body) = match kind {
                "enroll" => (
                    "/v1/people",
                    serde_json::json!({"key": format!("bench-{i}"), "image": image}),
                ),
                _ => ("/v1/searches", serde_json::json!({"image": image})),
            };
            api.submit(path, body).await?;
        }
        // One final notification per transaction (no unsolved entries: no reverse match).
        let want = sent0 + args.transactions as u64;
        while count.load(Ordering::Relaxed) < want {
            if t0.elapsed() > Duration::from_secs(600) {
                return Err(other(format!("{kind}: not every transaction was notified")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rates.push((kind, args.transactions as f64 / t0.elapsed().as_secs_f64()));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap_or(0) as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    stop.cancel();
    let after = tokio::task::block_in_place(|| reference_rate(&photos))?;
    let reference = before.max(after);
    for (kind, r) in rates {
        println!(
            "  {kind:<7} {r:>7.2} transactions/s (202 after fsync -> quality gate -> gallery -> notification 200)   ratio to the bare pipeline {:.2}",
            r / reference
        );
    }
    println!("  reference: bare pipeline (decode, detect, align, embed) {reference:.2} photos/s, median (runs {before:.2} and {after:.2})");
    Ok(())
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_config(
    base: &Path,
    port: u16,
    endpoint: std::net::SocketAddr,
) -> Result<std::path::PathBuf, BenchError> {
    let models = std::fs::canonicalize(crate::vision::models::ModelSet::default_dir())?;
    std::fs::write(base.join("api.token"), TOKEN)?;
    let text = format!(
        "[outbox]\ndir = \"{b}/outbox\"\n[sinks.jsonl]\nenabled = false\n[health]\nfile = \"{b}/health.json\"\n\
         [vision]\nmodels_dir = \"{m}\"\n[gallery]\ndir = \"{b}/gallery\"\n[gbds]\ndir = \"{b}/gbds\"\n\
         [api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{b}/api.token\"\n\
         [[notifier.endpoints]]\nurl = \"http://{endpoint}/gbds/notify\"\nname = \"bench\"\n",
        b = base.display(),
        m = models.display()
    );
    let path = base.join("camgate.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The child's local API.
struct Api {
    client: HttpsClient,
    auth: String,
}

impl Api {
    fn new(port: u16) -> Self {
        Api {
            client: HttpsClient::new(&format!("127.0.0.1:{port}"), None, Duration::from_secs(30)),
            auth: format!("Bearer {TOKEN}"),
        }
    }

    async fn wait_up(&self, child: &mut tokio::process::Child) -> Result<(), BenchError> {
        let t0 = Instant::now();
        loop {
            let probe = self
                .client
                .request_with(
                    Method::GET,
                    "/v1/transactions/00000000-0000-4000-8000-000000000000",
                    &[("authorization", &self.auth)],
                    None,
                    4096,
                )
                .await;
            if probe.is_ok_and(|a| a.status == 404) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(180) || child.try_wait()?.is_some() {
                return Err(other("camgate run did not bring the API up"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn submit(&self, path: &str, body: serde_json::Value) -> Result<(), BenchError> {
        let a = self
            .client
            .request_with(
                Method::POST,
                path,
                &[("authorization", &self.auth)],
                Some(("application/json", Bytes::from(body.to_string()))),
                4096,
            )
            .await
            .map_err(other)?;
        if a.status != 202 {
            return Err(other(format!(
                "{path} answered {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            )));
        }
        Ok(())
    }
}
