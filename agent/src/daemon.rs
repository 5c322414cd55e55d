//! The running gateway: outbox, intake, one task per channel-mode camera, the hook callback
//! receiver when a camera is in hook mode, sinks, health file — and the fixed shutdown order:
//! stop intake (camera tasks drain their pending acks and send DISCONNECT; the hook receiver
//! stops accepting and finishes the requests in flight) → let sinks take what is stored and
//! commit → drain outbox writes and close it → exit.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::ApiServer;
use crate::camera::CameraMode;
use crate::channel::driver::CameraTask;
use crate::config::Config;
use crate::hook::client::HookClient;
use crate::hook::{HookCamera, HookCounters, Receiver, ReceiverConfig, ReceiverError};
use crate::intake::Intake;
use crate::ops::{self, HealthReport, NamedCamera};
use crate::outbox::{Outbox, OutboxError};
use crate::sinks;
use crate::status::CameraStatus;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Hook(#[from] ReceiverError),
    #[error("hook.listen {0:?} is not an IP address and port")]
    HookListen(String),
    #[error("camera {camera}: {message}")]
    Secret { camera: String, message: String },
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    #[cfg(feature = "vision")]
    #[error(transparent)]
    Stage(#[from] crate::stage::run::StageError),
    #[error("gallery: {0}")]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error("transactions: {0}")]
    Gbds(#[from] crate::gbds::GbdsError),
    #[error("transactions API: {0}")]
    Api(#[from] crate::api::ApiError),
    #[cfg(all(feature = "vision", feature = "kafka"))]
    #[error("{0}")]
    Ekyc(#[from] crate::ekyc::worker::EkycError),
}

pub struct Daemon {
    pub outbox: Outbox,
    pub intake: Arc<Intake>,
    pub cameras: Vec<(String, Arc<CameraStatus>)>,
    cfg: Config,
    intake_stop: CancellationToken,
    sink_stop: CancellationToken,
    camera_tasks: JoinSet<()>,
    hook: Option<Receiver>,
    /// The local transactions API, when `[api]` is set.
    api: Option<ApiServer>,
    #[cfg(feature = "vision")]
    processor: Option<Arc<crate::gbds::run::Gbds>>,
    /// The hook cameras' subscription tasks, stopped first at shutdown (before unsubscribing).
    reconcilers: (CancellationToken, JoinSet<()>),
    sink_tasks: JoinSet<()>,
    /// Status of each forwarding sink, by name, for the health file and `camgate status`.
    pub sink_status: Vec<(String, Arc<sinks::SinkStatus>)>,
    /// The vision stage's counters, when it runs.
    pub stage_counters: Option<Arc<crate::stage::StageCounters>>,
    /// The EKYC services' counters, when `[ekyc]` is on.
    #[cfg(all(feature = "vision", feature = "kafka"))]
    pub ekyc_counters: Option<Arc<crate::ekyc::worker::EkycCounters>>,
    #[cfg(not(all(feature = "vision", feature = "kafka")))]
    pub ekyc_counters: Option<Arc<()>>,
    health_task: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Opens the outbox (recovering it) and starts every camera and sink.
    pub async fn start(cfg: &Config) -> Result<Daemon, DaemonError> {
        let mut outbox_cfg = cfg.outbox.clone();
        if cfg.vision.is_some() {
            // Room the camera events cannot take, so the results of the events already stored
            // are not lost to a backlog (the uplink down).
            outbox_cfg.derived_reserve_bytes = outbox_cfg.derived_reserve();
        }
        let outbox = Outbox::open(&outbox_cfg).await?;
        let stored = Outbox::dump(&cfg.outbox.dir)?;
        let (intake, seeded) = open_intake(cfg, &outbox, &stored);
        let intake_stop = CancellationToken::new();
        let sink_stop = CancellationToken::new();
        let (camera_tasks, cameras) = spawn_cameras(cfg, &intake, &intake_stop);
        let reconcilers = spawn_reconcilers(cfg);
        let hook = if cfg.hook_active() {
            Some(Self::start_hook(cfg, intake.clone(), intake_stop.clone()).await?)
        } else {
            None
        };
        #[cfg_attr(not(feature = "vision"), allow(unused_mut))]
        let (mut sink_tasks, mut sink_status) =
            spawn_sinks(cfg, &outbox, intake.clock(), &sink_stop);
        #[cfg_attr(not(feature = "vision"), allow(unused_mut))]
        let mut stage_counters = None;
        #[cfg_attr(not(feature = "vision"), allow(unused_mut))]
        let mut api = None;
        #[cfg(feature = "vision")]
        let mut processor = None;
        #[cfg_attr(not(all(feature = "vision", feature = "kafka")), allow(unused_mut))]
        let mut ekyc_counters = None;
        #[cfg(feature = "vision")]
        if let Some(v) = &cfg.vision {
            let notices = crate::gbds::run::notice_keys(&stored);
            let stage = start_stage(cfg, v, &outbox, &intake, stored).await?;
            stage_counters = Some(stage.counters.clone());
            if let Some(a) = &cfg.api {
                let gbds = start_gbds(cfg, &stage, &outbox, &intake, notices)?;
                let (g, stop) = (gbds.clone(), sink_stop.clone());
                // Not a sink: it reads no outbox cursor, so it has no lag to show.
                sink_tasks.spawn(async move {
                    match g.run(stop).await {
                        Ok(n) => info!(done = n, "transactions processor finished"),
                        Err(e) => warn!(error = %e, "transactions processor stopped"),
                    }
                });
                processor = Some(gbds.clone());
                api = Some(ApiServer::start(a, gbds, intake_stop.clone()).await?);
            }
            #[cfg(feature = "kafka")]
            if let Some(e) = &cfg.ekyc {
                let w = crate::ekyc::worker::Worker::new(e, cfg.gateway_id(), stage.pool())?;
                ekyc_counters = Some(w.counters.clone());
                let stop = sink_stop.clone();
                sink_tasks.spawn(async move {
                    match w.run(stop).await {
                        Ok(n) => info!(answered = n, "ekyc services finished"),
                        Err(e) => warn!(error = %e, "ekyc services stopped"),
                    }
                });
            }
            let stop = sink_stop.clone();
            spawn_sink(&mut sink_tasks, &mut sink_status, "vision", move |st| {
                stage.run(st, stop)
            });
        }
        #[cfg(not(feature = "vision"))]
        drop(stored);
        let mut d = Daemon {
            outbox,
            intake,
            cameras,
            cfg: cfg.clone(),
            intake_stop,
            sink_stop,
            camera_tasks,
            hook,
            api,
            #[cfg(feature = "vision")]
            processor,
            reconcilers,
            sink_tasks,
            sink_status,
            stage_counters,
            ekyc_counters,
            health_task: None,
        };
        d.health_task = Some(d.spawn_health());
        info!(cameras = d.cameras.len(), outbox = %cfg.outbox.dir.display(), dedupe_seeded = seeded, "camgate started");
        Ok(d)
    }

    async fn start_hook(
        cfg: &Config,
        intake: Arc<Intake>,
        stop: CancellationToken,
    ) -> Result<Receiver, DaemonError> {
        let h = &cfg.hook;
        let tls = match (&h.tls_cert_file, &h.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::hook::receiver::server_tls(cert, key)?),
            _ => None,
        };
        let mut rcfg = ReceiverConfig::from_hook(h, tls)
            .ok_or_else(|| DaemonError::HookListen(h.listen.clone()))?;
        rcfg.clock = intake.clock().clone();
        let mut cams = Vec::new();
        for c in cfg.cameras.iter().filter(|c| c.mode == CameraMode::Hook) {
            let secret = c.resolve_secret().map_err(|message| DaemonError::Secret {
                camera: c.name.clone(),
                message,
            })?;
            cams.push(HookCamera {
                name: c.name.as_str().into(),
                app_id: c.app_id.clone(),
                secret,
                sn: c.sn.clone(),
            });
        }
        Ok(Receiver::start(rcfg, cams, intake, stop).await?)
    }

    /// Where the hook receiver listens, when it runs.
    pub fn hook_addr(&self) -> Option<std::net::SocketAddr> {
        self.hook.as_ref().map(|h| h.local_addr())
    }

    /// The hook receiver's counters, when it runs.
    pub fn hook_counters(&self) -> Option<Arc<HookCounters>> {
        self.hook.as_ref().map(|h| h.counters().clone())
    }

    pub fn health(&self, state: &str) -> HealthReport {
        self.health_sources().report(state)
    }

    /// What the health file is read from, cloned once for the periodic writer.
    fn health_sources(&self) -> HealthSources {
        HealthSources {
            interval_secs: self.cfg.health.interval_secs,
            cameras: self.cameras.clone(),
            outbox: self.outbox.clone(),
            sink_status: self.sink_status.clone(),
            hook: self.hook_health(),
            stage: self.stage_counters.clone(),
            #[cfg(feature = "vision")]
            processor: self.processor.clone(),
            ekyc: self.ekyc_counters.clone(),
        }
    }

    fn hook_health(&self) -> Option<HookHealth> {
        let h = self.hook.as_ref()?;
        Some(HookHealth {
            listen: h.local_addr(),
            https: self.cfg.hook.tls_cert_file.is_some(),
            counters: h.counters().clone(),
        })
    }

    fn spawn_health(&self) -> tokio::task::JoinHandle<()> {
        let path = self.cfg.health.file.clone();
        let every = Duration::from_secs(self.cfg.health.interval_secs.max(1));
        let sources = self.health_sources();
        let stop = self.intake_stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut warned = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                if let Err(e) = ops::write_health(&path, &sources.report("running")) {
                    if !warned {
                        warn!(path = %path.display(), error = %e, "cannot write health file");
                        warned = true;
                    }
                }
            }
        })
    }

    /// Ordered shutdown inside `grace`. Hook subscriptions stay on the cameras (unless
    /// `hook.unsubscribe_on_shutdown`), so that callbacks posted while camgate restarts are
    /// retried by the camera rather than lost.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), DaemonError> {
        let deadline = tokio::time::Instant::now() + grace;
        self.stop_hook_subscriptions(deadline).await;
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
        // The receiver stopped accepting with the same token; wait for its requests in flight
        // (their appends are still queued ahead of the outbox drain).
        if let Some(h) = self.hook.take() {
            let abort = h.abort_handle();
            if tokio::time::timeout_at(deadline, h.join()).await.is_err() {
                warn!("hook receiver did not stop in time; aborting it");
                abort.abort();
            }
        }
        if let Some(a) = self.api.take() {
            let abort = a.abort_handle();
            if tokio::time::timeout_at(deadline, a.join()).await.is_err() {
                warn!("transactions API did not stop in time; aborting it");
                abort.abort();
            }
        }
        // Every accepted append has completed by now (camera tasks and hook requests await
        // theirs), so the sinks see everything stored; they stop before the outbox closes so
        // that their last commits land (a closed outbox refuses commits, which would only cost
        // re-sends after restart).
        self.sink_stop.cancel();
        let sinks = async { while self.sink_tasks.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, sinks).await.is_err() {
            self.sink_tasks.abort_all();
        }
        info!("draining outbox writes");
        let flushed = tokio::time::timeout_at(deadline, self.outbox.shutdown()).await;
        match flushed {
            Ok(r) => r?,
            Err(_) => return Err(DaemonError::ShutdownTimeout(grace)),
        }
        info!("shutdown complete");
        Ok(())
    }
}

/// Longest wait for the hook cameras' subscription calls at shutdown: a camera that does not
/// answer must not eat the whole grace period the outbox drain needs.
const HOOK_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

impl Daemon {
    /// Stops the subscription tasks; with `hook.unsubscribe_on_shutdown`, then deletes each hook
    /// camera's subscriptions to our URL. The receiver still runs meanwhile, so callbacks posted
    /// until the camera has unsubscribed are still stored.
    async fn stop_hook_subscriptions(&mut self, deadline: tokio::time::Instant) {
        let (stop, tasks) = &mut self.reconcilers;
        stop.cancel();
        if !self.cfg.hook.unsubscribe_on_shutdown {
            // Nothing depends on them: a reconcile cut short is repaired at the next start-up.
            tasks.abort_all();
            return;
        }
        // The loops drop a reconcile in flight on the token; once they have ended, none of
        // their hook/add calls can still be sent after our delete.
        if tokio::time::timeout(Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tasks.abort_all();
        }
        let limit = deadline.min(tokio::time::Instant::now() + HOOK_SHUTDOWN_LIMIT);
        let mut calls = JoinSet::new();
        for cam in self
            .cfg
            .cameras
            .iter()
            .filter(|c| c.mode == CameraMode::Hook)
        {
            let Some(url) = cam.effective_callback_url(self.cfg.hook.callback_url.as_deref())
            else {
                continue;
            };
            let (cam, url) = (cam.clone(), url.to_string());
            calls.spawn(async move {
                let call = async {
                    match HookClient::new(&cam) {
                        Ok(client) => client.unsubscribe(&url).await,
                        Err(e) => Err(e),
                    }
                };
                match tokio::time::timeout_at(limit, call).await {
                    Ok(Ok(events)) => info!(camera = %cam.name, deleted = ?events, callback = %url, "hook subscriptions removed on shutdown"),
                    Ok(Err(e)) => warn!(camera = %cam.name, error = %e, "could not remove hook subscriptions on shutdown; they stay on the camera"),
                    Err(_) => warn!(camera = %cam.name, limit = ?HOOK_SHUTDOWN_LIMIT, "hook unsubscribe got no answer in time; subscriptions may stay on the camera"),
                }
            });
        }
        // Each call is bounded by `limit` itself.
        while calls.join_next().await.is_some() {}
    }
}

/// What the health file shows of the hook receiver.
#[derive(Clone)]
struct HookHealth {
    listen: std::net::SocketAddr,
    https: bool,
    counters: Arc<HookCounters>,
}

impl HookHealth {
    fn value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.counters.snapshot()).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("listen".into(), self.listen.to_string().into());
            m.insert("https".into(), self.https.into());
        }
        v
    }
}

/// The parts of the daemon the health file reports on.
struct HealthSources {
    interval_secs: u64,
    cameras: Vec<(String, Arc<CameraStatus>)>,
    outbox: Outbox,
    sink_status: Vec<(String, Arc<sinks::SinkStatus>)>,
    hook: Option<HookHealth>,
    stage: Option<Arc<crate::stage::StageCounters>>,
    #[cfg(feature = "vision")]
    processor: Option<Arc<crate::gbds::run::Gbds>>,
    #[cfg(all(feature = "vision", feature = "kafka"))]
    ekyc: Option<Arc<crate::ekyc::worker::EkycCounters>>,
    #[cfg(not(all(feature = "vision", feature = "kafka")))]
    ekyc: Option<Arc<()>>,
}

/// A component's counters as its health section, when it runs.
fn section<T: serde::Serialize>(c: &Option<Arc<T>>) -> Option<serde_json::Value> {
    c.as_ref().and_then(|c| serde_json::to_value(&**c).ok())
}

impl HealthSources {
    fn report(&self, state: &str) -> HealthReport {
        let now = crate::clock::unix_now_ms();
        let stats = self.outbox.stats();
        #[cfg(feature = "vision")]
        let transactions = self
            .processor
            .as_ref()
            .map(|g| serde_json::json!({ "queued": g.queued() }));
        #[cfg(not(feature = "vision"))]
        let transactions = None;
        HealthReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: state.to_string(),
            updated_ms: now,
            interval_secs: self.interval_secs,
            cameras: self
                .cameras
                .iter()
                .map(|(n, s)| NamedCamera::new(n, &s.snapshot()))
                .collect(),
            hook: self.hook.as_ref().map(HookHealth::value),
            transactions,
            sinks: self
                .sink_status
                .iter()
                .map(|(n, s)| {
                    let snap = s.snapshot(&stats, now);
                    (n.clone(), serde_json::to_value(snap).unwrap_or_default())
                })
                .collect(),
            outbox: serde_json::to_value(stats).unwrap_or_default(),
            vision: section(&self.stage),
            ekyc: section(&self.ekyc),
        }
    }
}

/// Reconciles one hook camera's subscriptions at start-up (retrying with backoff until it
/// works) and every `every` after that, until `stop`.
/// The intake, its de-duplication re-learnt from what the outbox still holds (so it survives
/// restarts and kill -9); also returns how many events it learnt.
fn open_intake(
    cfg: &Config,
    outbox: &Outbox,
    stored: &[crate::outbox::Record],
) -> (Arc<Intake>, usize) {
    let intake = Intake::new(
        outbox.clone(),
        Duration::from_secs(cfg.intake.dedupe_window_secs),
        cfg.intake.dedupe_max_entries,
    );
    let seeded = intake.seed(stored.iter().filter_map(|r| {
        let e: crate::event::StoredEnvelope = serde_json::from_slice(&r.data).ok()?;
        Some((e.sn.into_owned(), e.event_id, e.received_at_ms))
    }));
    (intake, seeded)
}

/// The gallery and the vision stage (models loaded on a blocking thread); the results already
/// stored are remembered so that none is made twice.
#[cfg(feature = "vision")]
async fn start_stage(
    cfg: &Config,
    v: &crate::config::StageConfig,
    outbox: &Outbox,
    intake: &Arc<Intake>,
    stored: Vec<crate::outbox::Record>,
) -> Result<Arc<crate::stage::run::Stage>, DaemonError> {
    use crate::stage::run::{result_keys, Stage};
    let clock = intake.clock().clone();
    let mut gallery = crate::gallery::Gallery::open(&cfg.gallery, clock.clone())?;
    let templates = gallery.warm(crate::gallery::MOBILEFACENET);
    info!(dir = %cfg.gallery.dir.display(), persons = gallery.persons().count(), templates, unknowns = gallery.unknowns().count(), "gallery loaded");
    let gallery = Arc::new(std::sync::Mutex::new(gallery));
    let (v, cameras, outbox) = (v.clone(), cfg.cameras.clone(), outbox.clone());
    let stage = tokio::task::spawn_blocking(move || {
        let done = result_keys(&stored);
        Stage::new(&v, gallery, &cameras, outbox, clock, done)
    })
    .await
    .map_err(|e| crate::stage::run::StageError::Task(e.to_string()))??;
    release_freed_memory();
    Ok(Arc::new(stage))
}

/// The transaction processor over the stage's gallery and face pipeline (one copy of each).
#[cfg(feature = "vision")]
fn start_gbds(
    cfg: &Config,
    stage: &crate::stage::run::Stage,
    outbox: &Outbox,
    intake: &Arc<Intake>,
    notices: std::collections::HashSet<String>,
) -> Result<Arc<crate::gbds::run::Gbds>, DaemonError> {
    let g = crate::gbds::run::Gbds::open(
        &cfg.gbds,
        stage.gallery(),
        outbox.clone(),
        stage.pool(),
        intake.clock().clone(),
        notices,
    )?;
    info!(dir = %cfg.gbds.dir.display(), queued = g.queued(), "transactions ready");
    Ok(Arc::new(g))
}

/// Hands the memory freed while loading (parse buffers of the gallery and the models) back to
/// the system: glibc returns only the free top of a heap by itself, and loading leaves its free
/// space in holes between what stays (measured: 5 MB of a 10k-person gallery's 25 MB).
#[cfg(feature = "vision")]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

type CameraList = Vec<(String, Arc<CameraStatus>)>;

/// One task per channel-mode camera.
fn spawn_cameras(
    cfg: &Config,
    intake: &Arc<Intake>,
    stop: &CancellationToken,
) -> (JoinSet<()>, CameraList) {
    let mut tasks = JoinSet::new();
    let mut cameras = Vec::new();
    for cam in cfg.cameras.iter().filter(|c| c.mode == CameraMode::Channel) {
        let status = Arc::new(CameraStatus::default());
        cameras.push((cam.name.clone(), status.clone()));
        let task = CameraTask {
            cfg: cam.clone(),
            intake: intake.clone(),
            status,
            shutdown: stop.clone(),
            clock: intake.clock().clone(),
        };
        tasks.spawn(async move {
            let _ = task.run().await;
        });
    }
    (tasks, cameras)
}

/// Hook-mode cameras: keep what each has subscribed in line with the config.
fn spawn_reconcilers(cfg: &Config) -> (CancellationToken, JoinSet<()>) {
    let mut reconcilers = (CancellationToken::new(), JoinSet::new());
    for cam in cfg.cameras.iter().filter(|c| c.mode == CameraMode::Hook) {
        if let Some(url) = cam.effective_callback_url(cfg.hook.callback_url.as_deref()) {
            let (cam, url, stop) = (cam.clone(), url.to_string(), reconcilers.0.clone());
            let every = Duration::from_secs(cfg.hook.recheck_secs.max(10));
            reconcilers.1.spawn(reconcile_loop(cam, url, every, stop));
        }
    }
    reconcilers
}

type SinkList = Vec<(String, Arc<sinks::SinkStatus>)>;

/// Every configured sink, each a task reading the outbox with its own cursor.
fn spawn_sinks(
    cfg: &Config,
    outbox: &Outbox,
    clock: &crate::clock::SharedClock,
    stop: &CancellationToken,
) -> (JoinSet<()>, SinkList) {
    let mut tasks = JoinSet::new();
    #[cfg_attr(not(any(feature = "kafka", feature = "mqtt")), allow(unused_mut))]
    let mut statuses = Vec::new();
    if cfg.sinks.jsonl.enabled {
        let (ob, jc, stop) = (outbox.clone(), cfg.sinks.jsonl.clone(), stop.clone());
        tasks.spawn(async move {
            match sinks::jsonl::run(ob, jc, stop).await {
                Ok(n) => info!(written = n, "jsonl sink finished"),
                Err(e) => warn!(error = %e, "jsonl sink stopped"),
            }
        });
    }
    // Without the feature, validation has refused a config with the section.
    #[cfg(feature = "kafka")]
    if let Some(kc) = &cfg.kafka {
        let (ob, kc, gw, stop) = (outbox.clone(), kc.clone(), cfg.gateway_id(), stop.clone());
        spawn_sink(&mut tasks, &mut statuses, "kafka", move |st| {
            sinks::kafka::run(ob, kc, gw, st, stop)
        });
    }
    #[cfg(feature = "mqtt")]
    if let Some(mc) = &cfg.mqtt {
        let gw = mc.effective_gateway_id(&cfg.gateway_id());
        let (ob, mc, stop) = (outbox.clone(), mc.clone(), stop.clone());
        spawn_sink(&mut tasks, &mut statuses, "mqtt", move |st| {
            sinks::mqtt::run(ob, mc, gw, st, stop)
        });
    }
    // One task, cursor and status per endpoint: a dead endpoint delays no other.
    let matches = cfg.gbds.notify_camera_matches;
    for ep in cfg.notifier.iter().flat_map(|n| &n.endpoints) {
        let (ob, ep2, clock, stop) = (outbox.clone(), ep.clone(), clock.clone(), stop.clone());
        spawn_sink(
            &mut tasks,
            &mut statuses,
            sinks::notifier::status_name(ep),
            move |st| sinks::notifier::run(ob, ep2, matches, clock, st, stop),
        );
    }
    (tasks, statuses)
}

/// Starts one forwarding sink with a status of its own; its end (or error) is logged and kept
/// in the status for `camgate status`.
fn spawn_sink<F, E>(
    tasks: &mut JoinSet<()>,
    statuses: &mut SinkList,
    name: impl Into<String>,
    run: impl FnOnce(Arc<sinks::SinkStatus>) -> F,
) where
    F: std::future::Future<Output = Result<u64, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let name: String = name.into();
    let status = Arc::new(sinks::SinkStatus::default());
    statuses.push((name.clone(), status.clone()));
    let fut = run(status.clone());
    tasks.spawn(async move {
        match fut.await {
            Ok(n) => info!(sink = %name, delivered = n, "sink finished"),
            Err(e) => {
                status.set_error(&e);
                warn!(sink = %name, error = %e, "sink stopped");
            }
        }
    });
}

async fn reconcile_loop(
    cam: crate::camera::CameraConfig,
    callback: String,
    every: Duration,
    stop: CancellationToken,
) {
    let client = match HookClient::new(&cam) {
        Ok(c) => c,
        Err(e) => {
            warn!(camera = %cam.name, error = %e, "hook client cannot be built; subscriptions not managed");
            return;
        }
    };
    let mut backoff = crate::net::backoff::Backoff::new(
        Duration::from_secs(cam.backoff_min.max(1)),
        Duration::from_secs(cam.backoff_max.max(cam.backoff_min).max(1)),
    );
    loop {
        let result = tokio::select! {
            r = client.reconcile(&cam.events, &callback) => r,
            _ = stop.cancelled() => return,
        };
        let wait = match result {
            Ok(out) => {
                backoff.reset();
                if !out.added.is_empty() || !out.deleted.is_empty() {
                    info!(camera = %cam.name, added = ?out.added, deleted = ?out.deleted, callback = %callback, "hook subscriptions reconciled");
                }
                every
            }
            Err(e) => {
                let d = backoff.next_delay(&mut rand::rng());
                warn!(camera = %cam.name, error = %e, retry_in = ?d, "hook subscription reconcile failed");
                d
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
