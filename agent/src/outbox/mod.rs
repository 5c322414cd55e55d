//! Durable on-disk outbox: an append-only log of checksummed records.
//!
//! CONTRACT (used by the channel, the hook receiver and every sink; keep these signatures):
//! - `Outbox::open(&OutboxConfig)` recovers the log (torn tail truncated, nothing acknowledged lost).
//! - `Outbox::append(bytes)` resolves only once the record is durable (fsynced, group commit);
//!   when the bound is reached it fails at once with `OutboxError::Full` (the caller must not ack).
//! - `Outbox::consumer(name)` gives a cursor whose committed offset survives restarts.
//! - `Outbox::dump(dir)` reads every stored record without opening the log for writing.
//! - `Outbox::shutdown()` drains pending appends and syncs.
//!
//! TEMPORARY implementation: one fsync per append, everything indexed in memory. To be replaced by
//! the segmented, group-committed log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify};

/// Position of a record in the log; assigned in append order starting from 0.
pub type Offset = u64;

/// Outbox configuration (`[outbox]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Directory holding the log segments and consumer cursors.
    pub dir: PathBuf,
    /// Upper bound of stored, not yet fully consumed bytes. When reached, appends fail with
    /// `Full` (the camera keeps the event and re-sends it). Default 64 MiB.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started. Default 4 MiB.
    pub segment_bytes: u64,
    /// Longest time an append waits for others to share its fsync (group commit). Default 2 ms.
    #[serde(with = "humantime_ms")]
    pub group_commit_window: Duration,
    /// Most records written by one group commit. Default 1024.
    pub max_batch: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/camgate/outbox"),
            max_bytes: 64 * 1024 * 1024,
            segment_bytes: 4 * 1024 * 1024,
            group_commit_window: Duration::from_millis(2),
            max_batch: 1024,
        }
    }
}

mod humantime_ms {
    //! Durations in the config are whole milliseconds (`group_commit_window = 2`).
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub data: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Offset the next append will get.
    pub next_offset: Offset,
    /// Records and bytes currently stored on disk.
    pub stored_records: u64,
    pub stored_bytes: u64,
    /// Appends refused because the outbox was full, since open.
    pub refused_full: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox is full ({stored_bytes} of {max_bytes} bytes stored); not acknowledging")]
    Full { stored_bytes: u64, max_bytes: u64 },
    #[error("outbox I/O error at {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("outbox record too large: {len} bytes (max {max})")]
    RecordTooLarge { len: usize, max: usize },
    #[error("outbox is shut down")]
    Closed,
    #[error("bad consumer name {0:?} (use [A-Za-z0-9_.-], 1..=64 chars)")]
    BadConsumerName(String),
}

struct Inner {
    cfg: OutboxConfig,
    state: Mutex<State>,
    appended: Notify,
}

struct State {
    file: Option<std::fs::File>,
    records: Vec<Bytes>,
    stored_bytes: u64,
    refused_full: u64,
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

const LOG_FILE: &str = "log";
/// Largest record accepted (an event plus its envelope).
pub const MAX_RECORD: usize = 1024 * 1024;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io { path: path.to_owned(), source }
}

fn read_records(path: &Path) -> Result<(Vec<Bytes>, u64), OutboxError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap());
        if pos + 8 + len > data.len() {
            break;
        }
        let body = &data[pos + 8..pos + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        out.push(Bytes::copy_from_slice(body));
        pos += 8 + len;
    }
    Ok((out, pos as u64))
}

impl Outbox {
    pub async fn open(cfg: &OutboxConfig) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
        let path = cfg.dir.join(LOG_FILE);
        let (records, valid) = read_records(&path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(valid).map_err(io_err(&path))?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                state: Mutex::new(State { file: Some(file), records, stored_bytes: valid, refused_full: 0 }),
                appended: Notify::new(),
            }),
        })
    }

    pub async fn append(&self, data: Bytes) -> Result<Offset, OutboxError> {
        use std::io::Write;
        if data.len() > MAX_RECORD {
            return Err(OutboxError::RecordTooLarge { len: data.len(), max: MAX_RECORD });
        }
        let mut st = self.inner.state.lock().await;
        if st.stored_bytes + data.len() as u64 + 8 > self.inner.cfg.max_bytes {
            st.refused_full += 1;
            return Err(OutboxError::Full { stored_bytes: st.stored_bytes, max_bytes: self.inner.cfg.max_bytes });
        }
        let path = self.inner.cfg.dir.join(LOG_FILE);
        let file = st.file.as_mut().ok_or(OutboxError::Closed)?;
        let mut buf = Vec::with_capacity(8 + data.len());
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        buf.extend_from_slice(&data);
        file.write_all(&buf).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        st.stored_bytes += buf.len() as u64;
        st.records.push(data);
        let off = st.records.len() as u64 - 1;
        drop(st);
        self.inner.appended.notify_waiters();
        Ok(off)
    }

    pub fn consumer(&self, name: &str) -> Result<Consumer, OutboxError> {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(OutboxError::BadConsumerName(name.to_owned()));
        }
        let path = self.inner.cfg.dir.join(format!("consumer-{name}"));
        let committed = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok());
        Ok(Consumer { outbox: self.clone(), path, committed, next: committed.map_or(0, |c| c + 1) })
    }

    pub fn stats(&self) -> OutboxStats {
        match self.inner.state.try_lock() {
            Ok(st) => OutboxStats {
                next_offset: st.records.len() as u64,
                stored_records: st.records.len() as u64,
                stored_bytes: st.stored_bytes,
                refused_full: st.refused_full,
            },
            Err(_) => OutboxStats::default(),
        }
    }

    pub async fn shutdown(&self) -> Result<(), OutboxError> {
        let mut st = self.inner.state.lock().await;
        if let Some(f) = st.file.take() {
            f.sync_all().map_err(io_err(&self.inner.cfg.dir))?;
        }
        Ok(())
    }

    /// Every stored record, read-only (for `camgate outbox dump`).
    pub fn dump(dir: &Path) -> Result<Vec<Record>, OutboxError> {
        let (records, _) = read_records(&dir.join(LOG_FILE))?;
        Ok(records.into_iter().enumerate().map(|(i, data)| Record { offset: i as u64, data }).collect())
    }
}

/// A named reader of the outbox with a durable committed offset.
pub struct Consumer {
    outbox: Outbox,
    path: PathBuf,
    committed: Option<Offset>,
    next: Offset,
}

impl Consumer {
    /// Waits until at least one record past the read position exists; returns up to `max`.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, OutboxError> {
        loop {
            let notified = self.outbox.inner.appended.notified();
            {
                let st = self.outbox.inner.state.lock().await;
                let start = self.next as usize;
                if start < st.records.len() {
                    let end = (start + max.max(1)).min(st.records.len());
                    let out: Vec<Record> = (start..end)
                        .map(|i| Record { offset: i as u64, data: st.records[i].clone() })
                        .collect();
                    self.next = end as u64;
                    return Ok(out);
                }
                if st.file.is_none() {
                    return Err(OutboxError::Closed);
                }
            }
            notified.await;
        }
    }

    /// Durably records that everything up to and including `through` is done.
    pub async fn commit(&mut self, through: Offset) -> Result<(), OutboxError> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{through}\n")).map_err(io_err(&tmp))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        self.committed = Some(through);
        Ok(())
    }

    pub fn committed(&self) -> Option<Offset> {
        self.committed
    }
}
