//! Counters and state per camera, shared between the camera task (writer) and the health file,
//! `camgate status`, the demo summary and the benchmarks (readers). Every error kind that is
//! logged is also counted here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Ready,
    Backoff,
    Stopped,
}

impl LinkState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => LinkState::Ready,
            2 => LinkState::Backoff,
            3 => LinkState::Stopped,
            _ => LinkState::Connecting,
        }
    }
}

#[derive(Debug, Default)]
pub struct CameraStatus {
    state: AtomicU8,
    pub connects: AtomicU64,
    pub sessions_ready: AtomicU64,
    pub events_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub pubacks: AtomicU64,
    pub not_acked: AtomicU64,
    pub quirks: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    last_error: Mutex<Option<String>>,
    serial: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraSnapshot {
    pub state: LinkState,
    pub connects: u64,
    pub sessions_ready: u64,
    pub events_stored: u64,
    pub duplicates: u64,
    pub pubacks: u64,
    pub not_acked: u64,
    pub quirks: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    pub serial: Option<String>,
}

impl CameraStatus {
    pub fn set_state(&self, s: LinkState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn count_error(&self, kind: &'static str, message: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    pub fn errors(&self, kind: &str) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    pub fn set_serial(&self, sn: &str) {
        let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        if s.as_deref() != Some(sn) {
            *s = Some(sn.to_owned());
        }
    }

    pub fn serial(&self) -> Option<String> {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> CameraSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CameraSnapshot {
            state: self.state(),
            connects: l(&self.connects),
            sessions_ready: l(&self.sessions_ready),
            events_stored: l(&self.events_stored),
            duplicates: l(&self.duplicates),
            pubacks: l(&self.pubacks),
            not_acked: l(&self.not_acked),
            quirks: l(&self.quirks),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            serial: self.serial(),
        }
    }
}

pub fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}
