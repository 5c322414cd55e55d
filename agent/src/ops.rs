//! systemd integration: `Type=notify` readiness, watchdog pings, STOPPING, and the health file
//! the OTA agent reads through `camgate health`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::CameraSnapshot;

/// `[health]`: the file `camgate health` reads (OTA commit check).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Default `/run/camgate/health.json`.
    pub file: PathBuf,
    /// How often the daemon rewrites it, seconds. Default 5.
    pub interval_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("/run/camgate/health.json"),
            interval_secs: 5,
        }
    }
}

impl HealthConfig {
    /// Appends every problem of `[health]` to `errs`.
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.interval_secs == 0 {
            errs.push("health.interval_secs: must be at least 1".into());
        }
    }
}

pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

pub fn notify_status(text: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(text)]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

pub fn notify_watchdog() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
}

/// What the daemon writes to the health file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    pub pid: u32,
    pub version: String,
    /// `running` or `stopping`.
    pub state: String,
    pub updated_ms: u64,
    pub interval_secs: u64,
    pub cameras: Vec<NamedCamera>,
    /// The hook callback receiver, when it runs: where it listens, whether over HTTPS, and its
    /// counters (accepted, duplicates, rejected by reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<serde_json::Value>,
    pub outbox: serde_json::Value,
    /// The vision stage's counters (face events, results, error results, fetch retries, faces
    /// identified / unknown), when `[vision]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<serde_json::Value>,
    /// The transactions processor (`queued`: accepted work not yet done), when `[api]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactions: Option<serde_json::Value>,
    /// The EKYC services (requests received, answered, failed; reply retries; last error),
    /// when `[ekyc]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekyc: Option<serde_json::Value>,
    /// Forwarding sinks by name (`kafka`, `mqtt`): delivery counters and lag.
    #[serde(default)]
    pub sinks: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedCamera {
    pub name: String,
    #[serde(flatten)]
    pub status: serde_json::Value,
}

impl NamedCamera {
    pub fn new(name: &str, snap: &CameraSnapshot) -> Self {
        NamedCamera {
            name: name.to_owned(),
            status: serde_json::to_value(snap).unwrap_or_default(),
        }
    }
}

/// Writes `report` atomically (tmp + rename), so a reader never sees half a file.
pub fn write_health(path: &Path, report: &HealthReport) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("no health file at {0} (is camgate running?)")]
    Missing(String),
    #[error("health file unreadable: {0}")]
    Bad(String),
    #[error("daemon is {0}")]
    NotRunning(String),
    #[error("health file is stale: last update {age_secs} s ago (expected every {interval} s)")]
    Stale { age_secs: u64, interval: u64 },
}

/// Checks the health file: present, fresh (3 intervals) and `running`.
pub fn check_health(path: &Path, now_ms: u64) -> Result<HealthReport, HealthError> {
    let text = std::fs::read(path).map_err(|_| HealthError::Missing(path.display().to_string()))?;
    let r: HealthReport =
        serde_json::from_slice(&text).map_err(|e| HealthError::Bad(e.to_string()))?;
    if r.state != "running" {
        return Err(HealthError::NotRunning(r.state));
    }
    let age_secs = now_ms.saturating_sub(r.updated_ms) / 1000;
    if age_secs > r.interval_secs.max(1) * 3 {
        return Err(HealthError::Stale {
            age_secs,
            interval: r.interval_secs,
        });
    }
    Ok(r)
}
