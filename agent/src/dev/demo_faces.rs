//! The face part of `camgate demo`: the simulated cameras serve real photos (the repository's
//! test fixtures, built into dev builds), one person is enrolled first from a different photo of
//! them, the daemon's vision stage makes a result for every face event, and the summary checks
//! that every stored face event has exactly one.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Config, StageConfig};
use crate::gallery::Gallery;
use crate::outbox::Record;
use crate::results::{FaceResult, Stored};
use crate::stage::run::{best_usable, quality_of, template_of, vision_config};
use crate::vision::models::ModelSet;
use crate::vision::FaceEngine;

/// Enrolled before the cameras start, from a photo the cameras never serve.
const ENROLL_PHOTO: &[u8] = include_bytes!("../../../tests/fixtures/faces/obama.jpg");
pub const ENROLLED_KEY: &str = "obama";
/// What the cameras serve: the enrolled person in another photo (the simulator's snapshot), a
/// stranger, and a group of three strangers.
const BIDEN: &[u8] = include_bytes!("../../../tests/fixtures/faces/biden.jpg");
const GROUP: &[u8] = include_bytes!("../../../tests/fixtures/faces/group3.jpg");

pub fn pictures() -> Vec<Bytes> {
    vec![
        Bytes::from_static(crate::dev::sim::SNAPSHOT_JPEG),
        Bytes::from_static(BIDEN),
        Bytes::from_static(GROUP),
    ]
}

/// Sets `[vision]` and `[gallery]` (in `dir`) and enrolls the demo's person; `None` (and a
/// note) when the models are not where `$CAMGATE_MODELS` or `./models` says.
pub fn prepare(cfg: &mut Config, dir: &Path) -> Result<Option<String>, String> {
    let models = ModelSet::default_dir();
    if !models.join("mobilefacenet.f16.onnx").exists() {
        return Ok(None);
    }
    let stage = StageConfig {
        models_dir: models,
        ..StageConfig::default()
    };
    cfg.gallery.dir = dir.join("gallery");
    let engine = FaceEngine::new(vision_config(&stage)).map_err(|e| e.to_string())?;
    let (faces, _) = engine
        .process(ENROLL_PHOTO, true)
        .map_err(|e| e.to_string())?;
    let face =
        best_usable(faces, &stage.quality).ok_or("the enrollment photo has no usable face")?;
    let q = quality_of(&face, &stage.quality);
    let mut g = Gallery::open(&cfg.gallery, crate::clock::system()).map_err(|e| e.to_string())?;
    let e = g
        .enroll(ENROLLED_KEY, None, vec![template_of(face, q)])
        .map_err(|e| e.to_string())?;
    cfg.vision = Some(stage);
    Ok(Some(e.pguid))
}

/// Keys of the stored face events with a picture, and of the results.
fn keys(records: &[Record]) -> (HashSet<String>, HashMap<String, usize>) {
    let (mut events, mut results) = (HashSet::new(), HashMap::new());
    for r in records {
        match Stored::parse(&r.data) {
            Ok(Stored::Event(e)) if e.event_type == crate::event::FACE_RECOG_EVENT => {
                events.insert(format!("{}/{}", e.sn, e.event_id));
            }
            Ok(Stored::FaceResult(h)) => *results.entry(h.key()).or_default() += 1,
            _ => {}
        }
    }
    (events, results)
}

/// Waits until every stored face event has its result, for as long as results keep coming:
/// it gives up after `stalled` without a new one (a slow or busy machine still finishes; a stage
/// that stopped making results does not hold the demo forever).
pub async fn settle(outbox_dir: &Path, stalled: Duration) {
    let (mut last_progress, mut seen) = (tokio::time::Instant::now(), 0);
    while last_progress.elapsed() < stalled {
        if let Ok(records) = crate::outbox::Outbox::dump(outbox_dir) {
            let (events, results) = keys(&records);
            if events.iter().all(|k| results.contains_key(k)) {
                return;
            }
            if results.len() > seen {
                (seen, last_progress) = (results.len(), tokio::time::Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the summary says of faces.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaceSummary {
    pub face_events: usize,
    pub results: usize,
    pub identified: usize,
    pub unknown_faces: usize,
    pub unsolved_entries: usize,
    pub error_results: usize,
    /// Face events without a result, and events with more than one.
    pub missing: usize,
    pub repeated: usize,
}

pub fn summarise(records: &[Record]) -> FaceSummary {
    let (events, results) = keys(records);
    let mut s = FaceSummary {
        face_events: events.len(),
        results: results.values().sum(),
        missing: events.iter().filter(|k| !results.contains_key(*k)).count(),
        repeated: results.values().filter(|n| **n > 1).count(),
        ..FaceSummary::default()
    };
    let mut uguids = HashSet::new();
    for r in records {
        if let Ok(fr) = serde_json::from_slice::<FaceResult>(&r.data) {
            s.error_results += usize::from(fr.error.is_some());
            for f in &fr.faces {
                s.identified += usize::from(f.identity.is_some());
                if let Some(u) = &f.uguid {
                    s.unknown_faces += 1;
                    uguids.insert(u.clone());
                }
            }
        }
    }
    s.unsolved_entries = uguids.len();
    s
}
