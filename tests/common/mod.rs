//! Shared pieces of the integration tests: a simulated camera wired to a camgate camera config.
#![allow(dead_code)]

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mosquitto;
pub mod tansu;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use camgate::config::{CameraConfig, Config};
use camgate::dev::sim::{SimCamera, SimConfig};
use camgate::event::StoredEnvelope;
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

/// `(sn, event_id)` of every stored record, in order.
pub fn stored_events(outbox_dir: &Path) -> Vec<(String, i64)> {
    Outbox::dump(outbox_dir)
        .expect("outbox readable")
        .iter()
        .map(|r| {
            let e: StoredEnvelope =
                serde_json::from_slice(&r.data).expect("stored envelope is JSON");
            (e.sn.into_owned(), e.event_id.0)
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
