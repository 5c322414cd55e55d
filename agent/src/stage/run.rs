//! The vision stage at run time. One loop owns the window of events read ahead of the cursor;
//! each face event is a task (fetch → vision pool → gallery → append the result); the cursor is
//! committed over the prefix of events whose results are durable (or that need none).
//!
//! At most one result per `(sn, event_id)` is stored: the keys of the results already in the
//! outbox are learnt at start-up, so an event processed again after a crash (its result written,
//! the cursor not yet moved) is skipped. The sinks may still re-send a result after their own
//! crash, always with the same key (`<sn>/<event_id>`), which makes the re-send harmless.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::config::{QualityBars, StageConfig, Variant};
use super::StageCounters;
use crate::camera::CameraConfig;
use crate::clock::SharedClock;
use crate::event::{EventView, FACE_RECOG_EVENT};
use crate::gallery::{Decision, Gallery, GalleryError, NewTemplate, Seen, MOBILEFACENET};
use crate::net::backoff::Backoff;
use crate::net::https::{camera_url, HttpsClient, HttpsError};
use crate::net::tls::{client_config, ClientTls};
use crate::outbox::{Offset, Outbox, OutboxError, Record};
use crate::results::{
    FaceResult, Identity, ResultError, ResultFace, ResultQuality, Stored, Timings, FACE_RESULT,
};
use crate::sinks::reader::{read_and_commit, Acked, Batch};
use crate::sinks::SinkStatus;
use crate::vision::pipeline::{Face, StageTimes};
use crate::vision::{FaceEngine, ModelVariant, VisionConfig, VisionError, VisionPool};

pub const CONSUMER: &str = "vision";
const READ_BATCH: usize = 32;
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How long a result waits for room in a full outbox (or a full disk) before it is given up,
/// logged and counted. Results have a reserve the camera events cannot take
/// (`OutboxConfig::derived_reserve`), so this is rare; it cannot be forever, because the
/// stage's own unfinished events may be what keeps the outbox full (segments are released whole).
const FULL_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("vision models: {0}")]
    Vision(#[from] VisionError),
    #[error("gallery: {0}")]
    Gallery(#[from] GalleryError),
    #[error("vision stage task: {0}")]
    Task(String),
}

/// One camera as the picture fetch sees it.
struct CameraSide {
    host: String,
    tls: Result<ClientTls, String>,
    /// Its last event used up every attempt: one attempt per event until a fetch works.
    failing: AtomicBool,
    /// One fetch at a time per camera.
    serial: tokio::sync::Mutex<()>,
}

/// A face event to handle.
#[derive(Debug, Clone)]
struct Job {
    camera: String,
    sn: String,
    event_id: i64,
    received_at_ms: u64,
    pic_url: String,
}

impl Job {
    fn key(&self) -> String {
        format!("{}/{}", self.sn, self.event_id)
    }
}

/// A fetch or vision failure, as recorded in the result.
struct Failure {
    kind: &'static str,
    detail: String,
}

fn fail(kind: &'static str, detail: impl ToString) -> Failure {
    Failure {
        kind,
        detail: detail.to_string(),
    }
}

pub struct Stage {
    cfg: StageConfig,
    pool: VisionPool,
    gallery: Arc<Mutex<Gallery>>,
    cameras: HashMap<String, Arc<CameraSide>>,
    outbox: Outbox,
    clock: SharedClock,
    model: String,
    done: Mutex<HashSet<String>>,
    pub counters: Arc<StageCounters>,
}

/// The face pipeline's settings for the stage's `[vision]`.
pub fn vision_config(cfg: &StageConfig) -> VisionConfig {
    let variant = match cfg.variant {
        Variant::Float => ModelVariant::Float,
        Variant::F16 => ModelVariant::F16,
        Variant::Int8 => ModelVariant::Int8,
    };
    let mut v = VisionConfig {
        models_dir: Some(cfg.models_dir.clone()),
        detector_variant: variant,
        embedder_variant: variant,
        workers: cfg.workers,
        ..VisionConfig::default()
    };
    v.detector.min_face_size = cfg.min_face;
    v
}

/// Keys (`<sn>/<event_id>`) of the face results stored in `records`.
pub fn result_keys<'a>(records: impl IntoIterator<Item = &'a Record>) -> HashSet<String> {
    records
        .into_iter()
        .filter_map(|r| match Stored::parse(&r.data) {
            Ok(Stored::FaceResult(h)) => Some(h.key()),
            _ => None,
        })
        .collect()
}

impl Stage {
    /// Loads the models (blocking: call it off the async threads) and sets up each camera's
    /// picture client. `done` holds the keys of results already stored.
    pub fn new(
        cfg: &StageConfig,
        gallery: Arc<Mutex<Gallery>>,
        cameras: &[CameraConfig],
        outbox: Outbox,
        clock: SharedClock,
        done: HashSet<String>,
    ) -> Result<Stage, StageError> {
        let engine = FaceEngine::new(vision_config(cfg))?;
        let cameras = cameras
            .iter()
            .map(|c| {
                let side = CameraSide {
                    host: c.host().to_owned(),
                    tls: client_config(&c.tls, c.host()).map_err(|e| e.to_string()),
                    failing: AtomicBool::new(false),
                    serial: tokio::sync::Mutex::new(()),
                };
                (c.name.clone(), Arc::new(side))
            })
            .collect();
        Ok(Stage {
            cfg: cfg.clone(),
            pool: VisionPool::new(Arc::new(engine)),
            gallery,
            cameras,
            outbox,
            clock,
            model: cfg.model_label(),
            done: Mutex::new(done),
            counters: Arc::default(),
        })
    }

    /// The face pipeline's pool (the transaction processor shares it: one copy of the models).
    pub fn pool(&self) -> VisionPool {
        self.pool.clone()
    }

    /// The gallery the stage files into and identifies against.
    pub fn gallery(&self) -> Arc<Mutex<Gallery>> {
        self.gallery.clone()
    }

    /// Runs until `stop` (or the outbox closes); returns the events committed. Events in
    /// flight at `stop` are not committed: they are handled again at the next start.
    pub async fn run(
        self: Arc<Self>,
        status: Arc<SinkStatus>,
        stop: CancellationToken,
    ) -> Result<u64, StageError> {
        let consumer = self.outbox.consumer(CONSUMER)?;
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        let (acked_tx, acked_rx) = watch::channel(Acked::default());
        let reader_stop = CancellationToken::new();
        let reader = tokio::spawn(read_and_commit(
            consumer,
            READ_BATCH,
            COMMIT_EVERY,
            tx,
            acked_rx,
            status,
            reader_stop.clone(),
        ));
        let mut w = Window::default();
        let mut ahead: VecDeque<Record> = VecDeque::new();
        let mut jobs: JoinSet<Offset> = JoinSet::new();
        let outcome = loop {
            while w.open.len() < self.cfg.max_in_flight {
                let Some(r) = ahead.pop_front() else { break };
                match self.job_for(&r) {
                    Some(job) => {
                        w.open.insert(r.offset, false);
                        let (me, offset) = (self.clone(), r.offset);
                        jobs.spawn(async move {
                            me.handle(job).await;
                            offset
                        });
                    }
                    None => {
                        w.open.insert(r.offset, true);
                    }
                }
            }
            w.advance(&acked_tx);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(()),
                Some(done) = jobs.join_next(), if !jobs.is_empty() => match done {
                    Ok(offset) => { w.open.insert(offset, true); }
                    Err(e) => break Err(StageError::Task(e.to_string())),
                },
                b = rx.recv(), if ahead.is_empty() => match b {
                    Some(Ok(records)) => ahead.extend(records),
                    Some(Err(e)) => break Err(e.into()),
                    None => break Ok(()),
                },
            }
        };
        jobs.abort_all();
        drop(rx);
        reader_stop.cancel();
        let committed = reader
            .await
            .map_err(|e| StageError::Task(e.to_string()))??;
        outcome.map(|()| committed)
    }

    /// The job for a stored face event with a picture whose result is not stored yet.
    fn job_for(&self, r: &Record) -> Option<Job> {
        let Ok(Stored::Event(env)) = Stored::parse(&r.data) else {
            return None;
        };
        if env.event_type != FACE_RECOG_EVENT {
            return None;
        }
        let view = EventView::parse(env.event.get().as_bytes()).ok()?;
        let pic_url = view.pic_url.filter(|u| !u.is_empty())?.into_owned();
        let job = Job {
            camera: env.camera.into_owned(),
            sn: env.sn.into_owned(),
            event_id: env.event_id.0,
            received_at_ms: env.received_at_ms,
            pic_url,
        };
        self.counters.face_events.fetch_add(1, Ordering::Relaxed);
        if self.done.lock().expect("not poisoned").contains(&job.key()) {
            self.counters.already_done.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(job)
    }

    /// Makes the event's result and stores it (waiting while the outbox is full, bounded).
    async fn handle(&self, job: Job) {
        let result = self.process(&job).await;
        let counted = if result.error.is_some() {
            &self.counters.error_results
        } else {
            &self.counters.results
        };
        let data = Bytes::from(serde_json::to_vec(&result).expect("results serialise"));
        let since = tokio::time::Instant::now();
        loop {
            match self.outbox.append_derived(data.clone()).await {
                Ok(_) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                    self.done.lock().expect("not poisoned").insert(job.key());
                    return;
                }
                Err(OutboxError::Full { .. } | OutboxError::Io { .. })
                    if since.elapsed() < FULL_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    self.counters
                        .results_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    error!(camera = %job.camera, key = %job.key(), error = %e, "face result not stored; the event itself stays stored and forwarded");
                    return;
                }
            }
        }
    }

    async fn process(&self, job: &Job) -> FaceResult {
        let mut timings = Timings::default();
        let t = Instant::now();
        let picture = self.fetch(job).await;
        timings.fetch = ms(t);
        let outcome = match picture.and_then(complete) {
            Ok(bytes) => match self.pool.process(bytes.to_vec(), true).await {
                Ok((faces, times)) => {
                    timings.detect = detect_ms(&times);
                    timings.embed = times.embed_ms;
                    let t = Instant::now();
                    let faces = self.identify(faces, job).await;
                    timings.search = ms(t);
                    Ok(faces)
                }
                Err(
                    e @ (VisionError::Decode(_)
                    | VisionError::TooLarge { .. }
                    | VisionError::Empty { .. }),
                ) => Err(fail("decode", e)),
                Err(e) => Err(fail("vision", e)),
            },
            Err(f) => Err(f),
        };
        let (faces, error) = match outcome {
            Ok(faces) => (faces, None),
            Err(f) => {
                warn!(camera = %job.camera, key = %job.key(), kind = f.kind, detail = %f.detail, "face event without a usable picture");
                (
                    Vec::new(),
                    Some(ResultError {
                        kind: f.kind.into(),
                        detail: f.detail,
                    }),
                )
            }
        };
        FaceResult {
            kind: FACE_RESULT.into(),
            camera: job.camera.clone(),
            sn: job.sn.clone(),
            event_id: job.event_id,
            received_at_ms: job.received_at_ms,
            processed_at_ms: self.clock.now_ms(),
            model: self.model.clone(),
            faces,
            timings_ms: timings,
            error,
        }
    }

    /// The picture, from the camera's own host with the camera's trust, retried with backoff.
    async fn fetch(&self, job: &Job) -> Result<Bytes, Failure> {
        let cam = self.cameras.get(&job.camera).ok_or_else(|| {
            fail(
                "camera",
                format!("camera {:?} is not configured", job.camera),
            )
        })?;
        let url = camera_url(&job.pic_url, &cam.host).map_err(|e| fail("url", e))?;
        // DECISIONS §4: pictures come over HTTPS with the camera's trust; a plain http URL
        // would hand the picture (and the auth_key) to whoever is on the path.
        if !url.https {
            return Err(fail(
                "url",
                format!(
                    "{:?} is not https (pictures are fetched only with the camera's TLS trust)",
                    job.pic_url
                ),
            ));
        }
        let tls = Some(cam.tls.clone().map_err(|e| fail("tls", e))?);
        let client = HttpsClient::new(
            &url.authority,
            tls,
            Duration::from_millis(self.cfg.fetch_timeout_ms),
        );
        let _one_at_a_time = cam.serial.lock().await;
        let attempts = if cam.failing.load(Ordering::Relaxed) {
            1
        } else {
            self.cfg.fetch_attempts
        };
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.fetch_backoff_min_ms),
            Duration::from_millis(self.cfg.fetch_backoff_max_ms),
        );
        let mut last = fail("fetch", "no attempt");
        for attempt in 1..=attempts {
            let retry = match client
                .get(&url.path_and_query, self.cfg.max_picture_bytes)
                .await
            {
                Ok(a) if a.status == 200 => {
                    cam.failing.store(false, Ordering::Relaxed);
                    return Ok(a.body);
                }
                Ok(a) => {
                    last = fail(
                        "http_status",
                        format!("the camera answered HTTP {}", a.status),
                    );
                    a.status >= 500 || a.status == 429
                }
                Err(e @ HttpsError::TooLarge { .. }) => return Err(fail("too_large", e)),
                Err(e) => {
                    last = fail("fetch", e);
                    true
                }
            };
            if !retry {
                return Err(last);
            }
            if attempt < attempts {
                self.counters.fetch_retries.fetch_add(1, Ordering::Relaxed);
                let d = backoff.next_delay(&mut rand::rng());
                debug!(camera = %job.camera, attempt, retry_in = ?d, detail = %last.detail, "picture fetch failed; retrying");
                tokio::time::sleep(d).await;
            }
        }
        cam.failing.store(true, Ordering::Relaxed);
        Err(last)
    }

    /// Gallery decisions for each face (on a blocking thread: filing a stranger is an fsync).
    async fn identify(&self, faces: Vec<Face>, job: &Job) -> Vec<ResultFace> {
        let (gallery, bars, counters) = (
            self.gallery.clone(),
            self.cfg.quality,
            self.counters.clone(),
        );
        let seen = Seen {
            camera: job.camera.clone(),
            sn: job.sn.clone(),
            event_id: job.event_id,
        };
        let run = move || {
            let mut g = gallery.lock().expect("not poisoned");
            if let Err(e) = g.refresh() {
                warn!(error = %e, "gallery changes by another process cannot be read; using what is loaded");
            }
            let out: Vec<ResultFace> = faces
                .into_iter()
                .map(|f| decide_face(&mut g, f, &bars, &seen, &counters))
                .collect();
            if let Err(e) = g.maybe_compact() {
                warn!(error = %e, "gallery compaction failed");
            }
            out
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(out) => out,
            Err(e) => {
                error!(error = %e, "gallery step failed");
                Vec::new()
            }
        }
    }
}

/// One face's entry in the result: matched, filed as a stranger, or (below the bars) neither.
fn decide_face(
    g: &mut Gallery,
    f: Face,
    bars: &QualityBars,
    seen: &Seen,
    counters: &StageCounters,
) -> ResultFace {
    counters.faces.fetch_add(1, Ordering::Relaxed);
    let quality = quality_of(&f, bars);
    let [x1, y1, x2, y2] = f.detection.bbox;
    let mut out = ResultFace {
        bbox: [x1, y1, x2 - x1, y2 - y1],
        score: f.detection.score,
        landmarks: f.detection.landmarks,
        quality,
        identity: None,
        uguid: None,
    };
    if !quality.ok || f.embedding.is_none() {
        return out;
    }
    let t = template_of(f, quality);
    match g.identify(&t.embedding, MOBILEFACENET).0 {
        Decision::Match(c) => {
            counters.identified.fetch_add(1, Ordering::Relaxed);
            out.identity = Some(Identity {
                key: c.key,
                pguid: c.pguid,
                score: c.score,
            });
        }
        Decision::Unknown(_) => {
            counters.unknown.fetch_add(1, Ordering::Relaxed);
            match g.file_unknown(t, seen.clone()) {
                Ok(u) => out.uguid = Some(u),
                Err(e) => warn!(error = %e, "unknown face not filed in the gallery"),
            }
        }
    }
    out
}

/// The largest face that passes `bars` and has an embedding: the one a photo of one person is
/// about (enrolment, `gallery search`, `gallery reject`).
pub fn best_usable(faces: Vec<Face>, bars: &QualityBars) -> Option<Face> {
    faces
        .into_iter()
        .filter(|f| f.embedding.is_some() && quality_of(f, bars).ok)
        .max_by(|a, b| a.quality.box_size.total_cmp(&b.quality.box_size))
}

/// A gallery template of a face: its embedding, its quality and its aligned crop.
pub fn template_of(f: Face, quality: ResultQuality) -> NewTemplate {
    NewTemplate {
        model: MOBILEFACENET.into(),
        embedding: f.embedding.unwrap_or_default(),
        quality: serde_json::to_value(quality).ok(),
        crop: f.aligned.map(|c| c.data),
    }
}

/// The result's quality: `blur` maps the Laplacian variance of the aligned crop to 0..1
/// (100 / (100 + variance): a sharp crop has several hundred); `pose` is the larger of |yaw| and
/// 2·|pitch|, capped at 1. Roll is left out: alignment turns the face upright, so a tilted head
/// embeds as well as a level one.
pub fn quality_of(f: &Face, bars: &QualityBars) -> ResultQuality {
    let q = &f.quality;
    let size = q.box_size;
    let blur = 100.0 / (100.0 + q.blur_var.max(0.0));
    let pose = q.yaw.abs().max(2.0 * q.pitch.abs()).min(1.0);
    let ok = size >= bars.min_size
        && q.score >= bars.min_score
        && blur <= bars.max_blur
        && pose <= bars.max_pose
        && f.aligned.is_some();
    ResultQuality {
        size,
        blur,
        pose,
        ok,
    }
}

/// Refuses a JPEG cut short (no end-of-image marker before trailing padding): the decoder would
/// fill the missing rows grey and the result would quietly say "no face". PNG decoding fails on
/// a truncated stream by itself.
fn complete(bytes: Bytes) -> Result<Bytes, Failure> {
    if bytes.starts_with(&[0xff, 0xd8]) {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if !bytes[..end].ends_with(&[0xff, 0xd9]) {
            return Err(fail(
                "decode",
                format!(
                    "truncated JPEG: no end-of-image marker ({} bytes)",
                    bytes.len()
                ),
            ));
        }
    }
    Ok(bytes)
}

fn detect_ms(t: &StageTimes) -> f64 {
    t.decode_ms + t.resize_ms + t.pnet_ms + t.rnet_ms + t.onet_ms + t.align_ms
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Events read ahead of the cursor: offset → whether it is finished.
#[derive(Default)]
struct Window {
    open: BTreeMap<Offset, bool>,
    acked: Acked,
}

impl Window {
    /// Hands the finished prefix to the reader for committing.
    fn advance(&mut self, tx: &watch::Sender<Acked>) {
        let mut moved = false;
        while let Some(entry) = self.open.first_entry() {
            if !*entry.get() {
                break;
            }
            let (offset, _) = entry.remove_entry();
            self.acked.through = Some(offset);
            self.acked.count += 1;
            moved = true;
        }
        if moved {
            tx.send_replace(self.acked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::mtcnn::Detection;
    use crate::vision::quality::Quality;

    fn face(size: f32, score: f32, blur_var: f32, yaw: f32, roll: f32) -> Face {
        Face {
            detection: Detection {
                bbox: [0.0, 0.0, size, size],
                score,
                landmarks: [[0.0; 2]; 5],
            },
            quality: Quality {
                box_size: size,
                score,
                blur_var,
                yaw,
                pitch: 0.0,
                roll_deg: roll,
            },
            embedding: None,
            aligned: Some(crate::vision::RgbImage::from_raw(1, 1, vec![0; 3]).unwrap()),
        }
    }

    #[test]
    fn quality_bars() {
        let bars = QualityBars::default();
        let q = quality_of(&face(120.0, 0.99, 900.0, 0.1, 40.0), &bars);
        assert!(
            q.ok,
            "a tilted head is fine: alignment turns it upright: {q:?}"
        );
        assert!((q.blur - 0.1).abs() < 1e-6);
        for (f, why) in [
            (face(30.0, 0.99, 900.0, 0.1, 0.0), "small"),
            (face(120.0, 0.8, 900.0, 0.1, 0.0), "low score"),
            (face(120.0, 0.99, 5.0, 0.1, 0.0), "blurred"),
            (face(120.0, 0.99, 900.0, 0.95, 0.0), "profile"),
        ] {
            assert!(!quality_of(&f, &bars).ok, "{why}");
        }
        let mut no_crop = face(120.0, 0.99, 900.0, 0.1, 0.0);
        no_crop.aligned = None;
        assert!(!quality_of(&no_crop, &bars).ok);
    }

    #[test]
    fn truncated_jpegs_are_refused() {
        let jpeg = Bytes::from_static(b"\xff\xd8\xff\xe0 body \xff\xd9");
        assert!(complete(jpeg.clone()).is_ok());
        assert!(
            complete(Bytes::from([&jpeg[..], &[0u8; 16]].concat())).is_ok(),
            "padding"
        );
        let cut = complete(jpeg.slice(..8)).err().unwrap();
        assert_eq!(cut.kind, "decode");
        assert!(cut.detail.contains("truncated"));
        // Not a JPEG: left to the decoder (PNG fails on a short stream by itself).
        assert!(complete(Bytes::from_static(b"\x89PNG")).is_ok());
    }

    #[test]
    fn the_window_commits_only_a_finished_prefix() {
        let (tx, rx) = watch::channel(Acked::default());
        let mut w = Window::default();
        for (o, done) in [(1, true), (2, false), (3, true)] {
            w.open.insert(o, done);
        }
        w.advance(&tx);
        assert_eq!(rx.borrow().through, Some(1));
        w.open.insert(2, true);
        w.advance(&tx);
        assert_eq!((rx.borrow().through, rx.borrow().count), (Some(3), 3));
        assert!(w.open.is_empty());
    }
}
