//! `camgate demo`: simulated cameras and the real agent in one process on loopback. Events are
//! printed as they are stored and acknowledged; at the end a summary checks that every event a
//! camera saw acknowledged is in the outbox.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::channel::tls::TlsConfig;
use crate::config::{CameraConfig, Config};
use crate::daemon::{Daemon, DaemonError};
use crate::event::StoredEnvelope;
use crate::outbox::{Outbox, OutboxError};
use crate::sim::{Faults, SimCamera, SimConfig, SimTotals};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Duration,
    pub cameras: usize,
    pub rate_per_sec: f64,
    /// Where the outbox, the JSON-lines file and the health file go (kept after exit).
    pub dir: PathBuf,
    /// Make the last camera send a bad CRC now and then, to show recovery.
    pub faults: bool,
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("demo: {0} acknowledged events are missing from the outbox")]
    Lost(usize),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    pub cameras: Vec<(String, SimTotals)>,
    pub stored_records: usize,
    pub unique_events: usize,
    pub acked_by_cameras: u64,
    pub protocol_errors: u64,
    pub duplicates_acked_again: u64,
    pub dir: PathBuf,
}

pub async fn run(opts: DemoOptions, stop: CancellationToken) -> Result<DemoSummary, DemoError> {
    std::fs::create_dir_all(&opts.dir)?;
    let secret = crate::sign::random_token();
    let mut sims = Vec::new();
    let mut cfg = Config::default();
    cfg.outbox.dir = opts.dir.join("outbox");
    cfg.sinks.jsonl.path = opts.dir.join("events.jsonl");
    cfg.health.file = opts.dir.join("health.json");
    cfg.health.interval_secs = 1;
    for i in 0..opts.cameras.max(1) {
        let mut sc = SimConfig::new("demo-app", &secret);
        sc.serial = format!("FS101D8BS{:05}", 100 + i);
        sc.rate_per_sec = opts.rate_per_sec;
        if opts.faults && i + 1 == opts.cameras.max(1) {
            sc.faults = Faults { bad_crc_every: Some(25), ..Faults::default() };
        }
        let sim = SimCamera::start(sc).await?;
        let tls = TlsConfig { fingerprint_sha256: Some(sim.fingerprint()), ..TlsConfig::default() };
        let mut cam = CameraConfig::new(&format!("door-{}", i + 1), &sim.addr.to_string(), "demo-app", &secret, tls);
        cam.keep_alive = 5;
        cfg.cameras.push(cam);
        sims.push(sim);
    }
    if !opts.quiet {
        println!("camgate demo: {} simulated camera(s) on loopback (TLS, pinned fingerprints), {} event(s)/s each, for {:?}", sims.len(), opts.rate_per_sec, opts.duration);
        for (c, s) in cfg.cameras.iter().zip(&sims) {
            println!("  {} at {} fingerprint {}…", c.name, c.address, &s.fingerprint()[..23]);
        }
        println!("  outbox: {}", cfg.outbox.dir.display());
    }
    let daemon = Daemon::start(&cfg).await?;

    // Show each event once it is durable, i.e. once camgate has acknowledged it.
    let printer = {
        let mut consumer = daemon.outbox.consumer("demo-screen")?;
        let quiet = opts.quiet;
        tokio::spawn(async move {
            while let Ok(batch) = consumer.next_batch(64).await {
                for r in &batch {
                    if let (false, Ok(e)) = (quiet, serde_json::from_slice::<StoredEnvelope>(&r.data)) {
                        println!("  stored+acked #{:<5} {:<7} sn={} event_id={:<5} {}", r.offset, e.camera, e.sn, e.event_id, e.event_type);
                    }
                }
                if let Some(last) = batch.last() {
                    let _ = consumer.commit(last.offset).await;
                }
            }
        })
    };

    tokio::select! {
        _ = tokio::time::sleep(opts.duration) => {}
        _ = stop.cancelled() => {}
    }
    let protocol_errors: u64 = daemon.cameras.iter().map(|(_, s)| {
        let snap = s.snapshot();
        snap.errors.iter().filter(|(k, _)| matches!(**k, "bad_crc" | "bad_flag" | "unknown_type" | "oversize" | "bad_event" | "unexpected_packet" | "bad_payload")).map(|(_, v)| *v).sum::<u64>()
    }).sum();
    let duplicates: u64 = daemon.cameras.iter().map(|(_, s)| s.snapshot().duplicates).sum();
    let outbox_dir = cfg.outbox.dir.clone();
    let grace = Duration::from_secs(cfg.shutdown.grace_secs);
    daemon.shutdown(grace).await?;
    printer.abort();
    for s in &sims {
        s.stop();
    }

    let records = Outbox::dump(&outbox_dir)?;
    let mut stored: HashSet<(String, i64)> = HashSet::new();
    for r in &records {
        if let Ok(e) = serde_json::from_slice::<StoredEnvelope>(&r.data) {
            stored.insert((e.sn.into_owned(), e.event_id.0));
        }
    }
    let mut acked_total = 0;
    let mut missing = 0;
    let mut cams = Vec::new();
    for (c, s) in cfg.cameras.iter().zip(&sims) {
        let t = s.totals();
        acked_total += t.acked;
        let serial = format!("FS101D8BS{:05}", 100 + cams.len());
        // Every id below the next one was published; those no longer unacked were acked.
        let unacked: HashSet<i64> = s.unacked_ids().into_iter().collect();
        for id in 1..=(t.published as i64) {
            if !unacked.contains(&id) && !stored.contains(&(serial.clone(), id)) {
                missing += 1;
            }
        }
        cams.push((c.name.clone(), t));
    }
    let summary = DemoSummary {
        cameras: cams,
        stored_records: records.len(),
        unique_events: stored.len(),
        acked_by_cameras: acked_total,
        protocol_errors,
        duplicates_acked_again: duplicates,
        dir: opts.dir.clone(),
    };
    if !opts.quiet {
        println!("\nsummary");
        for (name, t) in &summary.cameras {
            println!("  {name}: published {} (re-sent {}), acknowledged {}, still unacknowledged {}, connections {}", t.published, t.resent, t.acked, t.unacked, t.connects);
        }
        println!("  outbox: {} records, {} distinct events; protocol errors survived: {}; duplicates acked again: {}", summary.stored_records, summary.unique_events, protocol_errors, duplicates);
        println!("  events as JSON lines: {}", opts.dir.join("events.jsonl").display());
        println!("  inspect: camgate outbox dump --dir {}", outbox_dir.display());
        if missing == 0 {
            println!("  OK: every acknowledged event is in the outbox");
        }
    }
    if missing > 0 {
        return Err(DemoError::Lost(missing));
    }
    Ok(summary)
}

