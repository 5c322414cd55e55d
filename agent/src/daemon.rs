//! The running gateway: outbox, intake, one task per camera, sinks, health file — and the
//! fixed shutdown order: stop intake (camera tasks drain their pending acks and send
//! DISCONNECT) → drain outbox writes → let sinks take what is stored → exit.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::channel::driver::CameraTask;
use crate::config::Config;
use crate::intake::Intake;
use crate::ops::{self, HealthReport, NamedCamera};
use crate::outbox::{Outbox, OutboxError};
use crate::sinks;
use crate::status::CameraStatus;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

pub struct Daemon {
    pub outbox: Outbox,
    pub intake: Arc<Intake>,
    pub cameras: Vec<(String, Arc<CameraStatus>)>,
    cfg: Config,
    intake_stop: CancellationToken,
    sink_stop: CancellationToken,
    camera_tasks: JoinSet<()>,
    sink_tasks: JoinSet<()>,
    health_task: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Opens the outbox (recovering it) and starts every camera and sink.
    pub async fn start(cfg: &Config) -> Result<Daemon, DaemonError> {
        let outbox = Outbox::open(&cfg.outbox).await?;
        let intake = Intake::new(outbox.clone(), Duration::from_secs(cfg.intake.dedupe_window_secs), cfg.intake.dedupe_max_entries);
        // De-duplication survives restarts (and kill -9): re-learn what the outbox still holds.
        let seeded = intake.seed(Outbox::dump(&cfg.outbox.dir)?.iter().filter_map(|r| {
            let e: crate::event::StoredEnvelope = serde_json::from_slice(&r.data).ok()?;
            Some((e.sn.into_owned(), e.event_id, e.received_at_ms))
        }));
        let intake_stop = CancellationToken::new();
        let sink_stop = CancellationToken::new();
        let mut camera_tasks = JoinSet::new();
        let mut cameras = Vec::new();
        for cam in &cfg.cameras {
            let status = Arc::new(CameraStatus::default());
            cameras.push((cam.name.clone(), status.clone()));
            let task = CameraTask { cfg: cam.clone(), intake: intake.clone(), status, shutdown: intake_stop.clone() };
            camera_tasks.spawn(async move {
                let _ = task.run().await;
            });
        }
        let mut sink_tasks = JoinSet::new();
        if cfg.sinks.jsonl.enabled {
            let (ob, jc, stop) = (outbox.clone(), cfg.sinks.jsonl.clone(), sink_stop.clone());
            sink_tasks.spawn(async move {
                match sinks::jsonl::run(ob, jc, stop).await {
                    Ok(n) => info!(written = n, "jsonl sink finished"),
                    Err(e) => warn!(error = %e, "jsonl sink stopped"),
                }
            });
        }
        let mut d = Daemon { outbox, intake, cameras, cfg: cfg.clone(), intake_stop, sink_stop, camera_tasks, sink_tasks, health_task: None };
        d.health_task = Some(d.spawn_health());
        info!(cameras = d.cameras.len(), outbox = %cfg.outbox.dir.display(), dedupe_seeded = seeded, "camgate started");
        Ok(d)
    }

    pub fn health(&self, state: &str) -> HealthReport {
        HealthReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: state.to_string(),
            updated_ms: crate::sign::unix_now_ms(),
            interval_secs: self.cfg.health.interval_secs,
            cameras: self.cameras.iter().map(|(n, s)| NamedCamera::new(n, &s.snapshot())).collect(),
            outbox: serde_json::to_value(self.outbox.stats()).unwrap_or_default(),
        }
    }

    fn spawn_health(&self) -> tokio::task::JoinHandle<()> {
        let path = self.cfg.health.file.clone();
        let every = Duration::from_secs(self.cfg.health.interval_secs.max(1));
        let cameras = self.cameras.clone();
        let outbox = self.outbox.clone();
        let interval_secs = self.cfg.health.interval_secs;
        let stop = self.intake_stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut warned = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                let report = HealthReport {
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    state: "running".into(),
                    updated_ms: crate::sign::unix_now_ms(),
                    interval_secs,
                    cameras: cameras.iter().map(|(n, s)| NamedCamera::new(n, &s.snapshot())).collect(),
                    outbox: serde_json::to_value(outbox.stats()).unwrap_or_default(),
                };
                if let Err(e) = ops::write_health(&path, &report) {
                    if !warned {
                        warn!(path = %path.display(), error = %e, "cannot write health file");
                        warned = true;
                    }
                }
            }
        })
    }

    /// Ordered shutdown inside `grace`.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), DaemonError> {
        let deadline = tokio::time::Instant::now() + grace;
        info!("shutting down: stopping intake");
        self.intake_stop.cancel();
        if let Some(h) = self.health_task.take() {
            let _ = h.await;
        }
        let _ = ops::write_health(&self.cfg.health.file, &self.health("stopping"));
        let cams = async { while self.camera_tasks.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, cams).await.is_err() {
            warn!("camera tasks did not stop in time; aborting them");
            self.camera_tasks.abort_all();
        }
        info!("draining outbox writes");
        let flushed = tokio::time::timeout_at(deadline, self.outbox.shutdown()).await;
        self.sink_stop.cancel();
        let sinks = async { while self.sink_tasks.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, sinks).await.is_err() {
            self.sink_tasks.abort_all();
        }
        match flushed {
            Ok(r) => r?,
            Err(_) => return Err(DaemonError::ShutdownTimeout(grace)),
        }
        info!("shutdown complete");
        Ok(())
    }
}
