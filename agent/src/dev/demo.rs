//! `camgate demo`: simulated cameras and the real agent in one process on loopback. Events are
//! printed as they are stored and acknowledged; at the end a summary checks that every event a
//! camera saw acknowledged is in the outbox. With the face pipeline (feature `vision`, models in
//! `./models` or `$CAMGATE_MODELS`), the cameras serve real photos, one person is enrolled
//! first, each face event's result is printed (`obama 0.78`, `unknown → uguid …`) and the
//! summary also checks that every face event has exactly one result (`dev::demo_faces`).
//!
//! `--mode channel` (default): camgate keeps a Message Channel session to each camera.
//! `--mode hook`: each simulated camera serves the hook API over HTTPS; camgate subscribes its
//! receiver there, and the cameras post signed callbacks to it (plus, with faults, one forged
//! and one replayed callback, which must be refused with 401).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::camera::CameraConfig;
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError};
use crate::dev::sim::{Faults, SimCamera, SimConfig, SimTotals};
use crate::event::StoredEnvelope;
use crate::net::tls::TlsConfig;
use crate::outbox::{Outbox, OutboxError};

/// How the simulated cameras deliver their events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoMode {
    /// camgate keeps a Message Channel session to each camera.
    #[default]
    Channel,
    /// The cameras post HTTP callbacks to camgate's receiver.
    Hook,
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub mode: DemoMode,
    pub duration: Duration,
    pub cameras: usize,
    pub rate_per_sec: f64,
    /// Where the outbox, the JSON-lines file and the health file go (kept after exit).
    pub dir: PathBuf,
    /// Channel: make the last camera send a bad CRC now and then, to show recovery.
    /// Hook: make the first camera post one forged and one replayed callback.
    pub faults: bool,
    pub quiet: bool,
    /// Channel mode: run the vision stage on the live path (when built with `vision` and the
    /// models are found).
    pub faces: bool,
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
    #[error("demo: simulated camera: {0}")]
    Sim(#[from] crate::dev::sim::hook::SimHookError),
    #[error("demo: {0}")]
    Unexpected(String),
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
    #[cfg(feature = "vision")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces: Option<crate::dev::demo_faces::FaceSummary>,
}

pub async fn run(opts: DemoOptions, stop: CancellationToken) -> Result<DemoSummary, DemoError> {
    if opts.mode == DemoMode::Hook {
        return run_hook(opts, stop).await;
    }
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
            sc.faults = Faults {
                bad_crc_every: Some(10),
                ..Faults::default()
            };
        }
        let sim = SimCamera::start(sc).await?;
        let tls = TlsConfig {
            fingerprint_sha256: Some(sim.fingerprint()),
            ..TlsConfig::default()
        };
        let mut cam = CameraConfig::new(
            &format!("door-{}", i + 1),
            &sim.addr.to_string(),
            "demo-app",
            &secret,
            tls,
        );
        cam.keep_alive = 5;
        cfg.cameras.push(cam);
        sims.push(sim);
    }
    if !opts.quiet {
        println!("camgate demo: {} simulated camera(s) on loopback (TLS, pinned fingerprints), {} event(s)/s each, for {:?}", sims.len(), opts.rate_per_sec, opts.duration);
        for (c, s) in cfg.cameras.iter().zip(&sims) {
            println!(
                "  {} at {} fingerprint {}…",
                c.name,
                c.address,
                &s.fingerprint()[..23]
            );
        }
        println!("  outbox: {}", cfg.outbox.dir.display());
    }
    #[cfg(feature = "vision")]
    let faces = opts.faces && enable_faces(&mut cfg, &opts, &sims).await?;
    let daemon = Daemon::start(&cfg).await?;
    let printer = spawn_printer(&daemon, "stored+acked", opts.quiet)?;

    tokio::select! {
        _ = tokio::time::sleep(opts.duration) => {}
        _ = stop.cancelled() => {}
    }
    #[cfg(feature = "vision")]
    if faces {
        // Let the stage finish the face events already stored before stopping.
        for s in &sims {
            s.set_paused(true);
        }
        crate::dev::demo_faces::settle(&cfg.outbox.dir, Duration::from_secs(30)).await;
    }
    let protocol_errors: u64 = daemon
        .cameras
        .iter()
        .map(|(_, s)| {
            let snap = s.snapshot();
            snap.errors
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        **k,
                        "bad_crc"
                            | "bad_flag"
                            | "unknown_type"
                            | "oversize"
                            | "bad_event"
                            | "unexpected_packet"
                            | "bad_payload"
                    )
                })
                .map(|(_, v)| *v)
                .sum::<u64>()
        })
        .sum();
    let duplicates: u64 = daemon
        .cameras
        .iter()
        .map(|(_, s)| s.snapshot().duplicates)
        .sum();
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
        #[cfg(feature = "vision")]
        faces: faces.then(|| crate::dev::demo_faces::summarise(&records)),
    };
    if !opts.quiet {
        println!("\nsummary");
        for (name, t) in &summary.cameras {
            println!("  {name}: published {} (re-sent {}), acknowledged {}, still unacknowledged {}, connections {}", t.published, t.resent, t.acked, t.unacked, t.connects);
        }
        #[cfg(feature = "vision")]
        if let Some(f) = &summary.faces {
            println!("  faces: {} face event(s), {} result(s): {} face(s) identified, {} unknown face(s) in {} unsolved entr(ies), {} error result(s)", f.face_events, f.results, f.identified, f.unknown_faces, f.unsolved_entries, f.error_results);
        }
        println!("  outbox: {} records, {} distinct events; protocol errors survived: {}; duplicates acked again: {}", summary.stored_records, summary.unique_events, protocol_errors, duplicates);
        println!(
            "  events as JSON lines: {}",
            opts.dir.join("events.jsonl").display()
        );
        println!(
            "  inspect: camgate outbox dump --dir {}",
            outbox_dir.display()
        );
        if missing == 0 {
            println!("  OK: every acknowledged event is in the outbox");
        }
    }
    if missing > 0 {
        return Err(DemoError::Lost(missing));
    }
    #[cfg(feature = "vision")]
    check_faces(&summary, opts.quiet)?;
    Ok(summary)
}

/// Sets the face part up (enrolment, `[vision]`, the photos the cameras serve); `false` with a
/// note when the models are not found.
#[cfg(feature = "vision")]
async fn enable_faces(
    cfg: &mut Config,
    opts: &DemoOptions,
    sims: &[SimCamera],
) -> Result<bool, DemoError> {
    let (mut c, dir) = (cfg.clone(), opts.dir.clone());
    let prepared = tokio::task::spawn_blocking(move || {
        crate::dev::demo_faces::prepare(&mut c, &dir).map(|p| (p, c))
    })
    .await
    .map_err(|e| DemoError::Unexpected(e.to_string()))?
    .map_err(DemoError::Unexpected)?;
    let (Some(pguid), c) = prepared else {
        if !opts.quiet {
            println!("  faces: off (no models in ./models or $CAMGATE_MODELS)");
        }
        return Ok(false);
    };
    *cfg = c;
    for s in sims {
        s.set_pictures(crate::dev::demo_faces::pictures());
    }
    if !opts.quiet {
        println!(
            "  faces: enrolled {:?} (pguid {pguid}) from another photo; the cameras serve real photos over HTTPS; gallery {}",
            crate::dev::demo_faces::ENROLLED_KEY,
            cfg.gallery.dir.display()
        );
    }
    Ok(true)
}

#[cfg(feature = "vision")]
fn check_faces(summary: &DemoSummary, quiet: bool) -> Result<(), DemoError> {
    let Some(f) = &summary.faces else {
        return Ok(());
    };
    if f.missing > 0 || f.repeated > 0 {
        return Err(DemoError::Unexpected(format!(
            "{} face event(s) without a result, {} with more than one",
            f.missing, f.repeated
        )));
    }
    if !quiet {
        println!("  OK: every face event has a result");
    }
    Ok(())
}

/// How a face result reads on screen: `obama 0.78`, `unknown → uguid 1a2b3c4d…`, or the error.
fn describe(r: &crate::results::FaceResult) -> String {
    if let Some(e) = &r.error {
        return format!("error {}: {}", e.kind, e.detail);
    }
    if r.faces.is_empty() {
        return "no face".into();
    }
    let faces: Vec<String> = r
        .faces
        .iter()
        .map(|f| match (&f.identity, &f.uguid) {
            (Some(i), _) => format!("{} {:.2}", i.key, i.score),
            (None, Some(u)) => format!("unknown → uguid {}…", &u[..8.min(u.len())]),
            (None, None) => format!("face below the quality bars (size {:.0})", f.quality.size),
        })
        .collect();
    format!(
        "{} ({:.0} ms: fetch {:.0}, detect {:.0}, embed {:.0})",
        faces.join(", "),
        r.processed_at_ms.saturating_sub(r.received_at_ms),
        r.timings_ms.fetch,
        r.timings_ms.detect,
        r.timings_ms.embed
    )
}

/// Shows each event once it is durable, i.e. once camgate has acknowledged it.
fn spawn_printer(
    daemon: &Daemon,
    label: &'static str,
    quiet: bool,
) -> Result<tokio::task::JoinHandle<()>, DemoError> {
    let mut consumer = daemon.outbox.consumer("demo-screen")?;
    Ok(tokio::spawn(async move {
        while let Ok(batch) = consumer.next_batch(64).await {
            for r in batch.iter().filter(|_| !quiet) {
                if let Ok(e) = serde_json::from_slice::<StoredEnvelope>(&r.data) {
                    println!(
                        "  {label} #{:<5} {:<7} sn={} event_id={:<5} {}",
                        r.offset, e.camera, e.sn, e.event_id, e.event_type
                    );
                } else if let Ok(f) = serde_json::from_slice::<crate::results::FaceResult>(&r.data)
                {
                    println!(
                        "  face result  #{:<5} {:<7} sn={} event_id={:<5} {}",
                        r.offset,
                        f.camera,
                        f.sn,
                        f.event_id,
                        describe(&f)
                    );
                }
            }
            if let Some(last) = batch.last() {
                let _ = consumer.commit(last.offset).await;
            }
        }
    }))
}

/// A loopback port free right now, for the receiver: the callback URL the cameras are told
/// must name it before camgate starts.
fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn run_hook(opts: DemoOptions, stop: CancellationToken) -> Result<DemoSummary, DemoError> {
    use crate::config::CameraMode;
    use crate::dev::sim::hook::{PostKind, SimHookApi};

    std::fs::create_dir_all(&opts.dir)?;
    let secret = crate::sign::random_token();
    let sim_stop = CancellationToken::new();
    let mut cfg = Config::default();
    cfg.outbox.dir = opts.dir.join("outbox");
    cfg.sinks.jsonl.path = opts.dir.join("events.jsonl");
    cfg.health.file = opts.dir.join("health.json");
    cfg.health.interval_secs = 1;
    cfg.hook.listen = format!("127.0.0.1:{}", free_loopback_port()?);
    let callback = format!("http://{}/camgate/hook", cfg.hook.listen);
    cfg.hook.callback_url = Some(callback.clone());
    let mut apis = Vec::new();
    let serial = |i: usize| format!("FS101D8BS{:05}", 200 + i);
    for i in 0..opts.cameras.max(1) {
        let api = SimHookApi::start("demo-app", &secret, sim_stop.clone()).await?;
        let tls = TlsConfig {
            fingerprint_sha256: Some(api.fingerprint()),
            ..TlsConfig::default()
        };
        let mut cam = CameraConfig::new(
            &format!("gate-{}", i + 1),
            &api.addr.to_string(),
            "demo-app",
            &secret,
            tls,
        );
        cam.mode = CameraMode::Hook;
        cam.sn = Some(serial(i));
        cam.events = vec!["dynamic_detect_event".into()];
        cam.backoff_min = 1;
        cam.backoff_max = 2;
        cfg.cameras.push(cam);
        apis.push(api);
    }
    if !opts.quiet {
        println!("camgate demo (hook): {} simulated camera(s) serving the hook API on loopback (HTTPS, pinned fingerprints), {} callback(s)/s each, for {:?}", apis.len(), opts.rate_per_sec, opts.duration);
        for (c, a) in cfg.cameras.iter().zip(&apis) {
            println!(
                "  {} (sn {}) hook API at {} fingerprint {}…",
                c.name,
                c.sn.as_deref().unwrap_or("?"),
                c.address,
                &a.fingerprint()[..23]
            );
        }
        println!("  camgate receiver: {callback}");
        println!("  outbox: {}", cfg.outbox.dir.display());
    }
    let daemon = Daemon::start(&cfg).await?;
    let printer = spawn_printer(&daemon, "stored+200", opts.quiet)?;

    // camgate subscribes itself on each camera (hook/query + hook/add); the cameras then post
    // to what they hold, as firmware does.
    let t0 = std::time::Instant::now();
    let mut posters = Vec::new();
    for (c, api) in cfg.cameras.iter().zip(&apis) {
        let poster = loop {
            if let Some(p) = api.poster("dynamic_detect_event", c.sn.as_deref().unwrap_or("")) {
                break p?;
            }
            if t0.elapsed() > Duration::from_secs(15) {
                return Err(DemoError::Unexpected(format!(
                    "camgate did not subscribe on {} within 15 s",
                    c.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !opts.quiet {
            println!(
                "  {} subscriptions after camgate's reconcile: {:?}",
                c.name,
                api.subscriptions()
            );
        }
        posters.push(std::sync::Arc::new(poster));
    }

    // Each camera posts at the rate for the duration; half-way, the first one (with faults)
    // posts a forged callback and replays its last good one.
    let every = Duration::from_secs_f64(1.0 / opts.rate_per_sec.max(0.1));
    let ticks = ((opts.duration.as_secs_f64() * opts.rate_per_sec).ceil() as u64).max(2);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, p) in posters.iter().enumerate() {
        let (p, name, stop) = (p.clone(), cfg.cameras[i].name.clone(), stop.clone());
        let (faults, quiet) = (opts.faults && i == 0, opts.quiet);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            for n in 0..ticks {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                let status = p.post(PostKind::Valid).await?;
                if status != 200 && !quiet {
                    println!("  {name}: callback answered {status}");
                }
                if faults && n == ticks / 2 {
                    for kind in [PostKind::Forged, PostKind::Replay] {
                        let status = p.post(kind.clone()).await?;
                        if !quiet {
                            println!(
                                "  {name}: posted a {} callback -> HTTP {status}",
                                if kind == PostKind::Forged {
                                    "forged (wrong secret)"
                                } else {
                                    "replayed (same bytes again)"
                                }
                            );
                        }
                    }
                }
            }
            Ok::<_, crate::dev::sim::hook::SimHookError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| DemoError::Unexpected(e.to_string()))??;
    }
    let counters = daemon
        .hook_counters()
        .map(|c| c.snapshot())
        .unwrap_or_default();
    let outbox_dir = cfg.outbox.dir.clone();
    daemon
        .shutdown(Duration::from_secs(cfg.shutdown.grace_secs))
        .await?;
    printer.abort();
    sim_stop.cancel();

    let records = Outbox::dump(&outbox_dir)?;
    let mut stored: HashSet<(String, i64)> = HashSet::new();
    for r in &records {
        if let Ok(e) = serde_json::from_slice::<StoredEnvelope>(&r.data) {
            stored.insert((e.sn.into_owned(), e.event_id.0));
        }
    }
    let mut missing = 0;
    let mut answered_200 = 0u64;
    let mut refused: Vec<(PostKind, u16)> = Vec::new();
    let mut cams = Vec::new();
    for (i, (c, p)) in cfg.cameras.iter().zip(&posters).enumerate() {
        let ids = p.stored_ids();
        answered_200 += ids.len() as u64;
        missing += ids
            .iter()
            .filter(|id| !stored.contains(&(serial(i), **id)))
            .count();
        let statuses = p.statuses();
        let posted = statuses
            .iter()
            .filter(|(k, _)| *k == PostKind::Valid)
            .count() as u64;
        refused.extend(statuses.into_iter().filter(|(k, _)| *k != PostKind::Valid));
        let t = SimTotals {
            published: posted,
            acked: ids.len() as u64,
            unacked: posted - ids.len() as u64,
            ..SimTotals::default()
        };
        cams.push((c.name.clone(), t));
    }
    let summary = DemoSummary {
        cameras: cams,
        stored_records: records.len(),
        unique_events: stored.len(),
        acked_by_cameras: answered_200,
        protocol_errors: counters.rejected.values().sum(),
        duplicates_acked_again: counters.duplicates,
        dir: opts.dir.clone(),
        #[cfg(feature = "vision")]
        faces: None,
    };
    let refused_ok =
        refused.iter().all(|(_, s)| *s == 401) && refused.len() == if opts.faults { 2 } else { 0 };
    if !opts.quiet {
        println!("\nsummary");
        for (name, t) in &summary.cameras {
            println!(
                "  {name}: posted {} valid callback(s), answered 200: {}, not 200: {}",
                t.published, t.acked, t.unacked
            );
        }
        println!(
            "  receiver: accepted {}, duplicates {}, rejected {:?}",
            counters.accepted, counters.duplicates, counters.rejected
        );
        println!(
            "  outbox: {} records, {} distinct events",
            summary.stored_records, summary.unique_events
        );
        println!(
            "  events as JSON lines: {}",
            opts.dir.join("events.jsonl").display()
        );
        println!(
            "  inspect: camgate outbox dump --dir {}",
            outbox_dir.display()
        );
        if missing == 0 {
            println!("  OK: every callback answered 200 is in the outbox");
        }
        if opts.faults && refused_ok {
            println!(
                "  OK: the forged and the replayed callback were refused with 401 and not stored"
            );
        }
    }
    if missing > 0 {
        return Err(DemoError::Lost(missing));
    }
    if !refused_ok {
        return Err(DemoError::Unexpected(format!(
            "bad callbacks were not all refused with 401: {refused:?}"
        )));
    }
    if summary.stored_records as u64 != answered_200 {
        return Err(DemoError::Unexpected(format!(
            "{} records stored for {answered_200} callbacks answered 200",
            summary.stored_records
        )));
    }
    Ok(summary)
}
