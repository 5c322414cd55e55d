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
//! Design:
//! - The log is a directory of segment files named by their first offset ([`segment`] has the
//!   format). Only the last segment is written; the others are sealed and immutable.
//! - One writer task owns the active segment. Appenders send their record through a bounded
//!   channel; the writer takes whatever is queued (up to `max_batch`), writes it with one
//!   `pwrite` and one `fdatasync` on the blocking pool, then answers every appender. Appends that
//!   arrive while a sync is in flight queue up and share the next one, which is where the group
//!   commit comes from under load.
//! - `max_bytes` bounds the bytes of the segment files (what is on disk). A segment is deleted
//!   once every registered consumer has committed past its last record, so the bound is also the
//!   backlog bound. Reaching it refuses appends with `Full` right away instead of dropping
//!   anything; with no consumer registered nothing is ever released.
//! - Consumers read from the files (page cache), never from an in-memory copy of the log, and see
//!   only records that are already durable.

pub mod segment;
mod store;

#[cfg(test)]
mod model_tests;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use segment::{HEADER_LEN, MAX_RECORD_LEN};
use store::ReadOutcome;

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
    /// (Capped at a quarter of `max_bytes`, so that whole-segment release can always make room.)
    pub segment_bytes: u64,
    /// Longest time an append waits for others to share its fsync (group commit). Default 2 ms.
    /// The writer stops collecting earlier as soon as no more appenders are runnable.
    #[serde(with = "humantime_ms")]
    pub group_commit_window: Duration,
    /// Most records written by one group commit. Default 1024.
    pub max_batch: usize,
    /// Bytes of `max_bytes` that [`Outbox::append`] leaves to [`Outbox::append_derived`]:
    /// records made from stored ones (face results). Without it a backlog of camera events could
    /// fill the outbox and leave no room for the results of the events already taken. Not a
    /// config key: the daemon sets [`OutboxConfig::derived_reserve`] when the vision stage runs.
    #[serde(skip)]
    pub derived_reserve_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/camgate/outbox"),
            max_bytes: 64 * 1024 * 1024,
            segment_bytes: 4 * 1024 * 1024,
            group_commit_window: Duration::from_millis(2),
            max_batch: 1024,
            derived_reserve_bytes: 0,
        }
    }
}

impl OutboxConfig {
    /// Appends every problem of `[outbox]` to `errs`.
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.dir.as_os_str().is_empty() {
            errs.push("outbox.dir: must not be empty".to_string());
        }
        if self.segment_bytes < 4096 {
            errs.push(format!(
                "outbox.segment_bytes: {} is below 4096",
                self.segment_bytes
            ));
        }
        if self.max_bytes < self.segment_bytes.saturating_mul(2) {
            errs.push(format!(
                "outbox.max_bytes: {} must be at least twice segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            ));
        }
        if self.max_batch == 0 {
            errs.push("outbox.max_batch: must be at least 1".into());
        }
    }

    /// Segment size actually used: a segment can only be released whole, so it must stay well
    /// below the bound or a caught-up consumer could still leave the outbox full.
    pub fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes
            .min(self.max_bytes / 4)
            .max(HEADER_LEN as u64 + 1)
    }

    /// The reserve for derived records when a stage makes them: a sixteenth of `max_bytes`, at
    /// most 1 MiB (the vision stage has at most 64 results in flight, a few KiB each).
    pub fn derived_reserve(&self) -> u64 {
        (self.max_bytes / 16).min(1 << 20)
    }

    /// Largest record `append` accepts with this configuration (see `effective_segment_bytes`).
    pub fn max_record_len(&self) -> usize {
        let quarter =
            (self.max_bytes / 4).saturating_sub((HEADER_LEN + segment::RECORD_OVERHEAD) as u64);
        MAX_RECORD_LEN.min(usize::try_from(quarter).unwrap_or(usize::MAX))
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
    /// Segment files and registered consumers.
    pub segments: u64,
    pub consumers: u64,
    /// Registered consumers nobody reads now, with their committed cursor (`null`: nothing
    /// committed). One whose sink was removed from the config holds its records forever (and
    /// so fills the outbox) until `camgate outbox forget NAME`.
    pub idle_consumers: BTreeMap<String, Option<Offset>>,
    /// Group commits that failed with an I/O error (their appenders got `Io`), since open.
    pub io_errors: u64,
    /// Bytes of torn or corrupt tail truncated at open.
    pub truncated_bytes: u64,
    /// Records found corrupt (unreadable) in sealed segments, since open.
    pub corrupt_records: u64,
    /// Each stored segment's first offset, records and bytes, oldest first: what
    /// [`OutboxStats::bytes_from`] measures a consumer's lag in bytes with.
    #[serde(skip)]
    pub spans: Vec<SegmentSpan>,
}

/// One stored segment as seen by [`Outbox::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentSpan {
    pub base: Offset,
    pub records: u64,
    /// Durable bytes, header included.
    pub bytes: u64,
}

impl OutboxStats {
    /// Bytes stored for the records at `from` and after. Exact at segment boundaries; inside a
    /// segment the share is taken by record count, as the outbox keeps no per-record index
    /// (records of one camera are of similar size, so the estimate errs by little).
    pub fn bytes_from(&self, from: Offset) -> u64 {
        self.spans
            .iter()
            .map(|s| {
                let end = s.base + s.records;
                if s.records == 0 || from >= end {
                    0
                } else if from <= s.base {
                    s.bytes
                } else {
                    let body = s.bytes.saturating_sub(segment::HEADER_LEN as u64);
                    (u128::from(body) * u128::from(end - from) / u128::from(s.records)) as u64
                }
            })
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox is full ({stored_bytes} of {max_bytes} bytes stored); not acknowledging")]
    Full { stored_bytes: u64, max_bytes: u64 },
    #[error("outbox I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox record too large: {len} bytes (max {max})")]
    RecordTooLarge { len: usize, max: usize },
    #[error("outbox is shut down")]
    Closed,
    #[error("bad consumer name {0:?} (use [A-Za-z0-9_.-], 1..=64 chars)")]
    BadConsumerName(String),
    #[error("outbox consumer {0:?} is already in use")]
    ConsumerBusy(String),
    #[error("cannot commit offset {through}: the log ends before {next_offset}")]
    CommitBeyondEnd {
        through: Offset,
        next_offset: Offset,
    },
    #[error("outbox directory {0} is locked by another process (a running camgate?)")]
    Locked(PathBuf),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Metadata of one segment file; `records` and `size` cover only durable data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegMeta {
    pub base: Offset,
    pub records: u64,
    pub size: u64,
    /// Header unreadable: its records are counted but cannot be delivered.
    pub unreadable: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub committed: Option<Offset>,
    pub live: bool,
    /// The last record the previous process may have handed out when it stopped (from the
    /// progress file).
    pub sending: Option<Offset>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub segments: VecDeque<SegMeta>,
    pub next_offset: Offset,
    pub stored_bytes: u64,
    /// Bytes of appends accepted but not written yet: counted against `max_bytes` so that a
    /// burst cannot overshoot the bound.
    pub reserved_bytes: u64,
    pub closed: bool,
    pub consumers: BTreeMap<String, Slot>,
    pub refused_full: u64,
    pub io_errors: u64,
    pub truncated_bytes: u64,
    pub corrupt_records: u64,
}

impl State {
    /// Sealed segments that every consumer has committed past (none while no consumer exists).
    fn take_released(&mut self) -> Vec<SegMeta> {
        let Some(released_below) = self
            .consumers
            .values()
            .map(|s| s.committed.map_or(0, |c| c + 1))
            .min()
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // The last segment is the writer's and stays even when empty: its name carries the next
        // offset across restarts.
        while self.segments.len() > 1
            && self.segments[0].base + self.segments[0].records <= released_below
        {
            out.extend(self.segments.pop_front());
        }
        out
    }
}

/// What the writer and the readers share.
pub(crate) struct Core {
    pub cfg: OutboxConfig,
    pub state: Mutex<State>,
    /// Signalled when durable records were added or the outbox closed.
    pub appended: Notify,
}

impl Core {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind, still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct AppendReq {
    pub data: Bytes,
    pub size: u64,
    pub reply: oneshot::Sender<Result<Offset, OutboxError>>,
}

pub(crate) enum Msg {
    Append(AppendReq),
    Shutdown(oneshot::Sender<Result<(), OutboxError>>),
}

struct Inner {
    core: Arc<Core>,
    /// Dropping the last handle drops this sender, which stops the writer.
    tx: mpsc::Sender<Msg>,
    writer_done: watch::Receiver<bool>,
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// Gives back a reservation if the append is abandoned before the writer took it over.
struct Reservation<'a> {
    core: &'a Core,
    size: u64,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.core.lock().reserved_bytes -= self.size;
        }
    }
}

fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name != "."
        && name != ".."
}

impl Outbox {
    pub async fn open(cfg: &OutboxConfig) -> Result<Self, OutboxError> {
        let mut cfg = cfg.clone();
        cfg.max_batch = cfg.max_batch.max(1);
        let c2 = cfg.clone();
        let recovered = tokio::task::spawn_blocking(move || store::recover(&c2))
            .await
            .map_err(|e| OutboxError::Io {
                path: cfg.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let core = Arc::new(Core {
            cfg: cfg.clone(),
            state: Mutex::new(recovered.state),
            appended: Notify::new(),
        });
        let (tx, rx) = mpsc::channel(cfg.max_batch.max(16));
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(store::run_writer(
            core.clone(),
            rx,
            recovered.writer,
            recovered.lock,
            done_tx,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                core,
                tx,
                writer_done: done_rx,
            }),
        })
    }

    pub async fn append(&self, data: Bytes) -> Result<Offset, OutboxError> {
        let cfg = &self.inner.core.cfg;
        let limit = cfg.max_bytes.saturating_sub(cfg.derived_reserve_bytes);
        self.append_within(data, limit).await
    }

    /// [`Outbox::append`] for a record derived from stored ones (a face result): it may also use
    /// the reserve that `append` leaves (`derived_reserve_bytes`).
    pub async fn append_derived(&self, data: Bytes) -> Result<Offset, OutboxError> {
        self.append_within(data, self.inner.core.cfg.max_bytes)
            .await
    }

    async fn append_within(&self, data: Bytes, limit: u64) -> Result<Offset, OutboxError> {
        let core = &*self.inner.core;
        let max = core.cfg.max_record_len();
        // Reserved with a header of slack: each queued record may end up first in a new segment.
        let size = segment::record_size(data.len()) + HEADER_LEN as u64;
        {
            let mut st = core.lock();
            if st.closed {
                return Err(OutboxError::Closed);
            }
            if data.len() > max {
                return Err(OutboxError::RecordTooLarge {
                    len: data.len(),
                    max,
                });
            }
            let used = st.stored_bytes + st.reserved_bytes;
            if used + size > limit {
                st.refused_full += 1;
                return Err(OutboxError::Full {
                    stored_bytes: used,
                    max_bytes: limit,
                });
            }
            st.reserved_bytes += size;
        }
        let mut reservation = Reservation {
            core,
            size,
            armed: true,
        };
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(Msg::Append(AppendReq { data, size, reply }))
            .await
            .is_err()
        {
            return Err(OutboxError::Closed);
        }
        reservation.armed = false;
        rx.await.unwrap_or(Err(OutboxError::Closed))
    }

    /// Registers (durably, on first use) or reopens the consumer `name`. Only one handle per name
    /// may be live at a time. Blocks briefly on a small file write when the name is new.
    pub fn consumer(&self, name: &str) -> Result<Consumer, OutboxError> {
        if !valid_consumer_name(name) {
            return Err(OutboxError::BadConsumerName(name.to_owned()));
        }
        let core = &self.inner.core;
        let mut st = core.lock();
        if st.closed {
            return Err(OutboxError::Closed);
        }
        let (committed, sent_before) = match st.consumers.get_mut(name) {
            Some(slot) if slot.live => return Err(OutboxError::ConsumerBusy(name.to_owned())),
            Some(slot) => {
                slot.live = true;
                (slot.committed, slot.sending.take())
            }
            None => {
                // Registered before anyone reads: from now on this consumer holds retention,
                // across restarts too.
                store::write_cursor(&core.cfg.dir, name, None)?;
                st.consumers.insert(
                    name.to_owned(),
                    Slot {
                        committed: None,
                        live: true,
                        sending: None,
                    },
                );
                (None, None)
            }
        };
        let first = st.segments.front().map_or(0, |s| s.base);
        let next = committed.map_or(first, |c| c + 1).max(first);
        Ok(Consumer {
            outbox: self.clone(),
            name: name.to_owned(),
            committed,
            next,
            pos: None,
            file: None,
            progress: None,
            sent_before,
        })
    }

    pub fn stats(&self) -> OutboxStats {
        let st = self.inner.core.lock();
        let first = st.segments.front().map_or(st.next_offset, |s| s.base);
        OutboxStats {
            next_offset: st.next_offset,
            stored_records: st.next_offset - first,
            stored_bytes: st.stored_bytes,
            refused_full: st.refused_full,
            segments: st.segments.len() as u64,
            consumers: st.consumers.len() as u64,
            idle_consumers: st
                .consumers
                .iter()
                .filter(|(_, slot)| !slot.live)
                .map(|(name, slot)| (name.clone(), slot.committed))
                .collect(),
            io_errors: st.io_errors,
            truncated_bytes: st.truncated_bytes,
            corrupt_records: st.corrupt_records,
            spans: st
                .segments
                .iter()
                .map(|s| SegmentSpan {
                    base: s.base,
                    records: s.records,
                    bytes: s.size,
                })
                .collect(),
        }
    }

    /// Unregisters consumer `name`: its cursor and progress files go, and the records only it
    /// still held are released. `false` when there was no such consumer; refused while it is
    /// being read.
    pub async fn forget_consumer(&self, name: &str) -> Result<bool, OutboxError> {
        let core = self.inner.core.clone();
        let released = {
            let mut st = core.lock();
            match st.consumers.get(name) {
                None => return Ok(false),
                Some(slot) if slot.live => return Err(OutboxError::ConsumerBusy(name.to_owned())),
                Some(_) => {}
            }
            store::remove_consumer(&core.cfg.dir, name)?;
            st.consumers.remove(name);
            st.take_released()
        };
        let dir = core.cfg.dir.clone();
        let freed = tokio::task::spawn_blocking(move || store::delete_segments(&dir, &released))
            .await
            .unwrap_or(0);
        core.lock().stored_bytes -= freed;
        Ok(true)
    }

    /// Writes what was queued before the call, syncs, and closes: later appends and waiting
    /// consumers get `Closed`. Returns once the directory lock is released (the dir can be
    /// reopened).
    pub async fn shutdown(&self) -> Result<(), OutboxError> {
        {
            let mut st = self.inner.core.lock();
            st.closed = true;
        }
        self.inner.core.appended.notify_waiters();
        let (tx, rx) = oneshot::channel();
        let result = if self.inner.tx.send(Msg::Shutdown(tx)).await.is_ok() {
            rx.await.unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let mut done = self.inner.writer_done.clone();
        let _ = done.wait_for(|d| *d).await;
        result
    }

    /// Every stored record, read-only (for `camgate outbox dump`, also while the daemon runs).
    /// A torn tail is tolerated; unreadable segments are skipped with a warning.
    pub fn dump(dir: &Path) -> Result<Vec<Record>, OutboxError> {
        store::dump(dir)
    }
}

/// A named reader of the outbox with a durable committed offset.
pub struct Consumer {
    outbox: Outbox,
    name: String,
    committed: Option<Offset>,
    /// Offset of the next record to read.
    next: Offset,
    /// Byte position of `next` in its segment, when known (else found by skipping from the start).
    pos: Option<u64>,
    /// Open segment file being read, by base offset.
    file: Option<(Offset, std::fs::File)>,
    /// The progress file, once `mark` was called.
    progress: Option<std::fs::File>,
    /// See `sent_before`.
    sent_before: Option<Offset>,
}

/// Most bytes one `next_batch` returns (at least one record), to keep readers' memory bounded.
const READ_BUDGET: u64 = 4 * 1024 * 1024;

impl Consumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until at least one record past the read position exists; returns up to `max`.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, OutboxError> {
        let max = max.max(1) as u64;
        let core = self.outbox.inner.core.clone();
        loop {
            let notified = core.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let plan = {
                let mut st = core.lock();
                if st.closed {
                    return Err(OutboxError::Closed);
                }
                self.plan_read(&mut st, max)
            };
            let Some(plan) = plan else {
                notified.await;
                continue;
            };
            let dir = core.cfg.dir.clone();
            let file = self.file.take();
            let pos = self.pos;
            let next = self.next;
            let (file, outcome) = tokio::task::spawn_blocking(move || {
                store::read_records(&dir, file, next, pos, &plan)
            })
            .await
            .map_err(|e| OutboxError::Io {
                path: core.cfg.dir.clone(),
                source: std::io::Error::other(e),
            })?;
            self.file = file;
            match outcome {
                ReadOutcome::Records { records, end_pos } => {
                    self.next += records.len() as u64;
                    self.pos = Some(end_pos);
                    return Ok(records);
                }
                ReadOutcome::Gone => {
                    // Released under us (only if we committed past our read position): re-plan.
                    self.pos = None;
                    let st = core.lock();
                    if st.segments.iter().any(|s| s.base == plan.base) {
                        return Err(OutboxError::Io {
                            path: core.cfg.dir.join(segment::file_name(plan.base)),
                            source: std::io::ErrorKind::NotFound.into(),
                        });
                    }
                }
                ReadOutcome::Corrupt { at, reason, path } => {
                    let mut st = core.lock();
                    let is_last = st.segments.back().is_some_and(|s| s.base == plan.base);
                    if is_last {
                        // The segment being written cannot be skipped: later appends land in it.
                        return Err(OutboxError::Io {
                            path,
                            source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
                        });
                    }
                    let lost = plan.seg_end - at;
                    st.corrupt_records += lost;
                    tracing::error!(consumer = %self.name, path = %path.display(), offset = at, lost, %reason,
                        "corrupt record in sealed outbox segment; skipping to the next segment");
                    self.next = plan.seg_end;
                    self.pos = None;
                }
            }
        }
    }

    /// Chooses the segment and record range to read next, or `None` if nothing is durable yet.
    fn plan_read(&mut self, st: &mut State, max: u64) -> Option<store::ReadPlan> {
        loop {
            if self.next >= st.next_offset {
                return None;
            }
            let first = st.segments.front()?;
            if self.next < first.base {
                self.next = first.base;
                self.pos = None;
            }
            let idx = st
                .segments
                .partition_point(|s| s.base <= self.next)
                .checked_sub(1)?;
            let seg = &st.segments[idx];
            let seg_end = seg.base + seg.records;
            if seg.unreadable || self.next >= seg_end {
                if seg.unreadable && self.next < seg_end {
                    st.corrupt_records += seg_end - self.next;
                    tracing::error!(consumer = %self.name, base = seg.base, "unreadable outbox segment header; skipping it");
                }
                self.next = seg_end;
                self.pos = None;
                continue;
            }
            return Some(store::ReadPlan {
                base: seg.base,
                seg_end,
                limit: seg.size,
                count: max.min(seg_end - self.next),
                budget: READ_BUDGET,
            });
        }
    }

    /// Durably records that everything up to and including `through` is done. Monotonic: a lower
    /// offset than the committed one is a no-op. Releases segments every consumer is done with.
    pub async fn commit(&mut self, through: Offset) -> Result<(), OutboxError> {
        let core = self.outbox.inner.core.clone();
        {
            let st = core.lock();
            if st.closed {
                return Err(OutboxError::Closed);
            }
            if through >= st.next_offset {
                return Err(OutboxError::CommitBeyondEnd {
                    through,
                    next_offset: st.next_offset,
                });
            }
        }
        if self.committed.is_some_and(|c| c >= through) {
            return Ok(());
        }
        let dir = core.cfg.dir.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || store::write_cursor(&dir, &name, Some(through)))
            .await
            .map_err(|e| OutboxError::Io {
                path: core.cfg.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        self.committed = Some(through);
        if self.next <= through {
            self.next = through + 1;
            self.pos = None;
        }
        let released = {
            let mut st = core.lock();
            if let Some(slot) = st.consumers.get_mut(&self.name) {
                slot.committed = Some(through);
            }
            st.take_released()
        };
        if !released.is_empty() {
            let dir = core.cfg.dir.clone();
            let freed =
                tokio::task::spawn_blocking(move || store::delete_segments(&dir, &released))
                    .await
                    .unwrap_or(0);
            let mut st = core.lock();
            st.stored_bytes -= freed;
        }
        Ok(())
    }

    pub fn committed(&self) -> Option<Offset> {
        self.committed
    }

    /// Records, without waiting for the disk, that everything through `done` is handled and
    /// that records after it, through `sending`, may be on their way to a peer whose answer has
    /// not come. This survives a crash of the process (the page cache keeps it; the next open
    /// takes `done` as committed and offers `sending` as `sent_before`), not a power loss:
    /// `commit` makes it durable. It costs one `pwrite`, where a commit costs two fsyncs.
    pub fn mark(
        &mut self,
        done: Option<Offset>,
        sending: Option<Offset>,
    ) -> Result<(), OutboxError> {
        let dir = &self.outbox.inner.core.cfg.dir;
        if self.progress.is_none() {
            self.progress = Some(store::open_progress(dir, &self.name)?);
        }
        let file = self.progress.as_ref().expect("opened above");
        store::write_progress(dir, &self.name, file, done, sending)
    }

    /// The last record the previous process had marked as possibly on its way when it stopped
    /// (never beyond the log's end): records after `committed()` through it may reach the peer
    /// a second time.
    pub fn sent_before(&self) -> Option<Offset> {
        self.sent_before
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(slot) = self.outbox.inner.core.lock().consumers.get_mut(&self.name) {
            slot.live = false;
        }
    }
}
