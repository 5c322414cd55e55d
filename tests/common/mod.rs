//! Shared pieces of the integration tests: a simulated camera wired to a camgate camera config.
#![allow(dead_code)]

pub mod endpoint;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mosquitto;
pub mod tansu;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use camgate::config::{CameraConfig, Config};
use camgate::dev::sim::{SimCamera, SimConfig};
use camgate::net::tls::TlsConfig;
use camgate::outbox::Outbox;

pub const APP_ID: &str = "test-app";
pub const SECRET: &str = "test-secret-0123";

pub fn sim_config(rate: f64) -> SimConfig {
    let mut c = SimConfig::new(APP_ID, SECRET);
    c.rate_per_sec = rate;
    c
}

pub fn camera_for(sim: &SimCamera, name: &str) -> CameraConfig {
    let tls = TlsConfig {
        fingerprint_sha256: Some(sim.fingerprint()),
        ..TlsConfig::default()
    };
    let mut c = CameraConfig::new(name, &sim.addr.to_string(), APP_ID, SECRET, tls);
    c.keep_alive = 5;
    c.backoff_min = 1;
    c.backoff_max = 2;
    c.connect_timeout = 5;
    c
}

pub fn config_in(dir: &Path, cameras: Vec<CameraConfig>) -> Config {
    let mut cfg = Config::default();
    cfg.outbox.dir = dir.join("outbox");
    cfg.sinks.jsonl.path = dir.join("events.jsonl");
    cfg.health.file = dir.join("health.json");
    cfg.health.interval_secs = 1;
    cfg.cameras = cameras;
    cfg
}

/// Writes `dir/camgate.toml` for a `camgate run` child: `sections` as written (top-level keys,
/// sinks, `[hook]`, `[[cameras]]`), then the outbox, JSON-lines sink and health file in `dir`, a
/// 1 s health interval and a 5 s shutdown grace. Returns its path.
pub fn write_run_config(dir: &Path, sections: &str) -> std::path::PathBuf {
    let text = format!(
        "{sections}\n[outbox]\ndir = \"{d}/outbox\"\n[sinks.jsonl]\npath = \"{d}/events.jsonl\"\n[health]\nfile = \"{d}/health.json\"\ninterval_secs = 1\n[shutdown]\ngrace_secs = 5\n",
        d = dir.display()
    );
    let path = dir.join("camgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `[[cameras]]` for a channel-mode `sim` named `name`, with the test secret inline and short
/// keep-alive and backoff.
pub fn channel_camera_toml(sim: &SimCamera, name: &str) -> String {
    format!(
        "[[cameras]]\nname = \"{name}\"\naddress = \"{}\"\napp_id = \"{APP_ID}\"\nsecret = \"{SECRET}\"\nkeep_alive = 5\nbackoff_min = 1\nbackoff_max = 2\ntls = {{ fingerprint_sha256 = \"{}\" }}\n",
        sim.addr,
        sim.fingerprint()
    )
}

/// A `camgate run` child: killed if a test fails before stopping it, so no orphan outlives the test.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// `(sn, event_id)` of every stored event, in order (face results of the vision stage left out).
pub fn stored_events(outbox_dir: &Path) -> Vec<(String, i64)> {
    Outbox::dump(outbox_dir)
        .expect("outbox readable")
        .iter()
        .filter_map(|r| {
            match camgate::results::Stored::parse(&r.data).expect("stored record is JSON") {
                camgate::results::Stored::Event(e) => Some((e.sn.into_owned(), e.event_id.0)),
                camgate::results::Stored::FaceResult(_) | camgate::results::Stored::Notice(_) => {
                    None
                }
            }
        })
        .collect()
}

/// Asserts that every event the camera saw acknowledged is stored, and none twice.
pub fn assert_acked_are_stored(sim: &SimCamera, serial: &str, outbox_dir: &Path) {
    let stored = stored_events(outbox_dir);
    let mut ids: Vec<i64> = stored
        .iter()
        .filter(|(sn, _)| sn == serial)
        .map(|(_, id)| *id)
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was stored twice");
    let published = sim.state.published.load(Ordering::Relaxed) as i64;
    let unacked = sim.unacked_ids();
    for id in 1..=published {
        if !unacked.contains(&id) {
            assert!(
                ids.binary_search(&id).is_ok(),
                "event {id} was acknowledged but is not in the outbox"
            );
        }
    }
}

/// A face result record as the vision stage stores it, one face per key in `identified` (and one
/// unknown face when it is empty).
pub fn face_result(camera: &str, sn: &str, event_id: i64, identified: &[&str]) -> bytes::Bytes {
    use camgate::results::*;
    let face = |identity: Option<Identity>| ResultFace {
        bbox: [10.0, 20.0, 100.0, 120.0],
        score: 0.99,
        landmarks: [[50.0, 60.0]; 5],
        quality: ResultQuality {
            size: 100.0,
            blur: 0.1,
            pose: 0.1,
            ok: true,
        },
        uguid: identity.is_none().then(|| "u-1".to_string()),
        identity,
    };
    let faces = if identified.is_empty() {
        vec![face(None)]
    } else {
        identified
            .iter()
            .map(|k| {
                face(Some(Identity {
                    key: k.to_string(),
                    pguid: format!("p-{k}"),
                    score: 0.7,
                }))
            })
            .collect()
    };
    let r = FaceResult {
        kind: FACE_RESULT.into(),
        camera: camera.into(),
        sn: sn.into(),
        event_id,
        received_at_ms: 1_796_280_000_000,
        processed_at_ms: 1_796_280_000_400,
        model: "mtcnn+mobilefacenet-f16".into(),
        faces,
        timings_ms: Timings::default(),
        error: None,
    };
    bytes::Bytes::from(serde_json::to_vec(&r).unwrap())
}
