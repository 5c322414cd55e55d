//! File-level work of the outbox: recovery, the writer, readers, cursors. Everything here except
//! `run_writer` is blocking and runs on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::{mpsc, oneshot, watch};

use super::segment::{self, HEADER_LEN, RECORD_OVERHEAD};
use super::{
    io_err, AppendReq, Core, Msg, Offset, OutboxConfig, OutboxError, Record, SegMeta, Slot, State,
};

const LOCK_FILE: &str = "LOCK";
const CURSOR_SUFFIX: &str = ".consumer";

pub(crate) struct Recovered {
    pub state: State,
    pub writer: SegWriter,
    pub lock: Flock<File>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{CURSOR_SUFFIX}"))
}

/// Durably replaces the consumer's cursor file (tmp + fsync + rename + fsync dir), so a crash
/// leaves either the old or the new committed offset, never a torn one.
pub(crate) fn write_cursor(
    dir: &Path,
    name: &str,
    committed: Option<Offset>,
) -> Result<(), OutboxError> {
    let path = cursor_path(dir, name);
    let tmp = dir.join(format!("{name}{CURSOR_SUFFIX}.tmp"));
    let text = match committed {
        Some(c) => format!("committed {c}\n"),
        None => "committed none\n".to_owned(),
    };
    (|| {
        let f = File::create(&tmp)?;
        f.write_all_at(text.as_bytes(), 0)?;
        f.sync_all()
    })()
    .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))
}

const PROGRESS_SUFFIX: &str = ".progress";

fn progress_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{PROGRESS_SUFFIX}"))
}

/// `progress <done + 1> <sending + 1>\n`, fixed width (0 = none), so that one `pwrite` at offset 0
/// replaces the whole line.
fn progress_line(done: Option<Offset>, sending: Option<Offset>) -> String {
    let n = |o: Option<Offset>| o.map_or(0, |o| o + 1);
    format!("progress {:020} {:020}\n", n(done), n(sending))
}

fn parse_progress(text: &str) -> Option<(Option<Offset>, Option<Offset>)> {
    let rest = text.strip_prefix("progress ")?.strip_suffix('\n')?;
    let (d, s) = rest.split_once(' ')?;
    let o = |v: &str| -> Option<Option<Offset>> {
        let n: u64 = v.parse().ok()?;
        Some(n.checked_sub(1))
    };
    Some((o(d)?, o(s)?))
}

pub(crate) fn open_progress(dir: &Path, name: &str) -> Result<File, OutboxError> {
    let path = progress_path(dir, name);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))
}

pub(crate) fn write_progress(
    dir: &Path,
    name: &str,
    file: &File,
    done: Option<Offset>,
    sending: Option<Offset>,
) -> Result<(), OutboxError> {
    file.write_all_at(progress_line(done, sending).as_bytes(), 0)
        .map_err(io_err(&progress_path(dir, name)))
}

/// Takes each consumer's progress file into account: its `done` becomes the durable cursor when
/// it is further on, and its `sending` (cut at the log's end) is kept for
/// `Consumer::sent_before`. The file only ever said what was true when written, so a stale, lost
/// or torn one (power loss) only means records are handed out again; a `done` beyond the log's
/// end (a log restored from an older copy) is ignored for the same reason.
fn apply_progress(dir: &Path, state: &mut State) -> Result<(), OutboxError> {
    let end = state.next_offset;
    for (name, slot) in state.consumers.iter_mut() {
        let path = progress_path(dir, name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Some((done, sending)) = parse_progress(&text) else {
            tracing::warn!(path = %path.display(), "unreadable consumer progress file; using the committed cursor");
            continue;
        };
        let ahead = |o: Offset, c: Option<Offset>| o < end && c.is_none_or(|c| o > c);
        if let Some(d) = done.filter(|&d| ahead(d, slot.committed)) {
            write_cursor(dir, name, Some(d))?;
            slot.committed = Some(d);
        }
        slot.sending = sending
            .zip(end.checked_sub(1))
            .map(|(s, last)| s.min(last))
            .filter(|&s| ahead(s, slot.committed));
    }
    Ok(())
}

/// Removes a consumer's cursor and progress files, durably (the directory is synced).
pub(crate) fn remove_consumer(dir: &Path, name: &str) -> Result<(), OutboxError> {
    for path in [cursor_path(dir, name), progress_path(dir, name)] {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
    }
    sync_dir(dir).map_err(io_err(dir))
}

fn parse_cursor(text: &str) -> Option<Option<Offset>> {
    let v = text.strip_prefix("committed ")?.strip_suffix('\n')?;
    if v == "none" {
        Some(None)
    } else {
        v.parse().ok().map(Some)
    }
}

/// Segment bases present in `dir`, sorted, and consumer cursor files; removes stale tmp files.
fn list_dir(dir: &Path, remove_tmp: bool) -> io::Result<(Vec<Offset>, Vec<String>)> {
    let mut bases = Vec::new();
    let mut consumers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(base) = segment::parse_file_name(&name) {
            bases.push(base);
        } else if let Some(c) = name.strip_suffix(CURSOR_SUFFIX) {
            if super::valid_consumer_name(c) {
                consumers.push(c.to_owned());
            }
        } else if remove_tmp && name.ends_with(".tmp") {
            // An interrupted cursor update: the rename never happened, the old cursor stands.
            let _ = fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    Ok((bases, consumers))
}

pub(crate) fn recover(cfg: &OutboxConfig) -> Result<Recovered, OutboxError> {
    let dir = &cfg.dir;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            OutboxError::Locked(dir.clone())
        } else {
            OutboxError::Io {
                path: lock_path.clone(),
                source: errno.into(),
            }
        }
    })?;

    let (mut bases, consumer_names) = list_dir(dir, true).map_err(io_err(dir))?;
    let mut state = State::default();
    for name in consumer_names {
        let path = cursor_path(dir, &name);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let committed = match parse_cursor(&text) {
            Some(c) => c,
            None => {
                // Re-delivering is the safe side: keep this consumer's data until it commits again.
                tracing::warn!(path = %path.display(), "unreadable consumer cursor; treating as nothing committed");
                None
            }
        };
        state.consumers.insert(
            name,
            Slot {
                committed,
                live: false,
                sending: None,
            },
        );
    }

    // The last segment is the one that may have a torn tail; a last segment with a bad header
    // never held an acknowledged record (the header is synced before any record is written)
    // unless the header itself got corrupted later, in which case it is set aside, not deleted.
    let mut active: Option<(File, Offset, u64, u64)> = None;
    while let Some(&base) = bases.last() {
        let path = dir.join(segment::file_name(base));
        let data = fs::read(&path).map_err(io_err(&path))?;
        match segment::parse_segment(&data) {
            Ok(scan) if scan.header.base_offset == base => {
                let valid = scan.valid_len as u64;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                if valid < data.len() as u64 {
                    let cut = data.len() as u64 - valid;
                    tracing::warn!(path = %path.display(), valid_bytes = valid, truncated_bytes = cut,
                        reason = ?scan.stop, "truncating torn tail of outbox segment");
                    file.set_len(valid)
                        .and_then(|_| file.sync_all())
                        .map_err(io_err(&path))?;
                    state.truncated_bytes += cut;
                }
                active = Some((file, base, valid, scan.records.len() as u64));
                break;
            }
            result => {
                bases.pop();
                if data.len() <= HEADER_LEN {
                    tracing::warn!(path = %path.display(), bytes = data.len(), "removing outbox segment torn at creation");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    state.truncated_bytes += data.len() as u64;
                } else {
                    let aside = path.with_extension("seg.corrupt");
                    tracing::error!(path = %path.display(), error = ?result.err(), moved_to = %aside.display(),
                        "last outbox segment has a bad header; setting it aside");
                    fs::rename(&path, &aside).map_err(io_err(&path))?;
                }
                sync_dir(dir).map_err(io_err(dir))?;
            }
        }
    }

    // Sealed segments: their record count follows from the next segment's name, so they are not
    // read here (a corrupt record in one is found, reported and skipped by the reader).
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        let path = dir.join(segment::file_name(base));
        let file = File::open(&path).map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let mut head = [0u8; HEADER_LEN];
        let unreadable = match file
            .read_exact_at(&mut head, 0)
            .map(|_| segment::decode_header(&head))
        {
            Ok(Ok(h)) if h.base_offset == base => false,
            other => {
                tracing::error!(path = %path.display(), error = ?other, "outbox segment header unreadable");
                true
            }
        };
        state.segments.push_back(SegMeta {
            base,
            records: next_base - base,
            size,
            unreadable,
        });
        state.stored_bytes += size;
    }

    let limit = cfg.effective_segment_bytes();
    let writer = match active {
        Some((file, base, size, records)) => {
            state.segments.push_back(SegMeta {
                base,
                records,
                size,
                unreadable: false,
            });
            state.stored_bytes += size;
            SegWriter::new(dir.clone(), file, base, size, records, limit)
        }
        None => {
            // Never reuse offsets a consumer has already seen committed (e.g. segments removed by hand).
            let base = state
                .consumers
                .values()
                .filter_map(|s| s.committed.map(|c| c + 1))
                .max()
                .unwrap_or(0);
            let (file, size) = SegWriter::create_segment(dir, base).map_err(io_err(dir))?;
            state.segments.push_back(SegMeta {
                base,
                records: 0,
                size,
                unreadable: false,
            });
            state.stored_bytes += size;
            SegWriter::new(dir.clone(), file, base, size, 0, limit)
        }
    };
    state.next_offset = writer.base + writer.records;
    apply_progress(dir, &mut state)?;

    let released = state.take_released();
    state.stored_bytes -= delete_segments(dir, &released);
    tracing::info!(dir = %dir.display(), next_offset = state.next_offset, segments = state.segments.len(),
        stored_bytes = state.stored_bytes, consumers = state.consumers.len(), "outbox opened");
    Ok(Recovered {
        state,
        writer,
        lock,
    })
}

/// Deletes released segment files; returns the bytes freed. Failures are logged, not fatal: the
/// files are found again, and released again, at the next open.
pub(crate) fn delete_segments(dir: &Path, segs: &[SegMeta]) -> u64 {
    let mut freed = 0;
    for s in segs {
        let path = dir.join(segment::file_name(s.base));
        match fs::remove_file(&path) {
            Ok(()) => freed += s.size,
            Err(e) if e.kind() == io::ErrorKind::NotFound => freed += s.size,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete released outbox segment")
            }
        }
    }
    if !segs.is_empty() {
        if let Err(e) = sync_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot sync outbox directory after deleting segments");
        }
    }
    freed
}

/// State of one segment after a batch, for the shared metadata.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegSnapshot {
    pub base: Offset,
    pub size: u64,
    pub records: u64,
}

pub(crate) struct BatchOutcome {
    pub results: Vec<io::Result<Offset>>,
    /// Segments written or created by the batch, in order; the last one is the active segment.
    pub touched: Vec<SegSnapshot>,
}

/// Owner of the active segment file.
pub(crate) struct SegWriter {
    dir: PathBuf,
    file: File,
    pub base: Offset,
    pub size: u64,
    pub records: u64,
    limit: u64,
    /// A failed write could not be truncated away: bytes past `size` may be junk, so no new
    /// record is written until the truncation succeeds.
    dirty_tail: bool,
    buf: Vec<u8>,
}

fn clone_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl SegWriter {
    fn new(dir: PathBuf, file: File, base: Offset, size: u64, records: u64, limit: u64) -> Self {
        Self {
            dir,
            file,
            base,
            size,
            records,
            limit,
            dirty_tail: false,
            buf: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(segment::file_name(self.base))
    }

    /// Creates a segment holding only its header, durable with its directory entry.
    fn create_segment(dir: &Path, base: Offset) -> io::Result<(File, u64)> {
        let path = dir.join(segment::file_name(base));
        // A leftover file with this name can only be a failed earlier creation: no record with
        // this offset was ever acknowledged.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let res = file
            .write_all_at(&segment::encode_header(base), 0)
            .and_then(|_| file.sync_all())
            .and_then(|_| sync_dir(dir));
        match res {
            Ok(()) => Ok((file, HEADER_LEN as u64)),
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn snapshot(&self) -> SegSnapshot {
        SegSnapshot {
            base: self.base,
            size: self.size,
            records: self.records,
        }
    }

    fn roll(&mut self, touched: &mut Vec<SegSnapshot>) -> io::Result<()> {
        let base = self.base + self.records;
        let (file, size) = Self::create_segment(&self.dir, base)?;
        tracing::debug!(base, "outbox segment rolled");
        touched.push(self.snapshot());
        self.file = file;
        self.base = base;
        self.size = size;
        self.records = 0;
        Ok(())
    }

    fn undo_tail(&mut self) {
        match self
            .file
            .set_len(self.size)
            .and_then(|_| self.file.sync_data())
        {
            Ok(()) => self.dirty_tail = false,
            Err(e) => {
                self.dirty_tail = true;
                tracing::error!(path = %self.path().display(), error = %e, "cannot truncate failed outbox write");
            }
        }
    }

    /// Writes the records, one `fdatasync` per segment touched. Each record's result is its
    /// offset, or the error of the write/sync that would have carried it.
    pub fn write_batch(&mut self, datas: &[Bytes]) -> BatchOutcome {
        let mut results = Vec::with_capacity(datas.len());
        let mut touched = Vec::new();
        let mut i = 0;
        while i < datas.len() {
            if self.dirty_tail {
                self.undo_tail();
                if self.dirty_tail {
                    let e = io::Error::other(
                        "outbox segment tail could not be cleaned after a failed write",
                    );
                    results.extend((i..datas.len()).map(|_| Err(clone_err(&e))));
                    break;
                }
            }
            let first = segment::record_size(datas[i].len());
            if self.records > 0 && self.size + first > self.limit {
                if let Err(e) = self.roll(&mut touched) {
                    tracing::error!(dir = %self.dir.display(), error = %e, "cannot start a new outbox segment");
                    results.extend((i..datas.len()).map(|_| Err(clone_err(&e))));
                    break;
                }
            }
            // The chunk that fits in this segment (at least one record).
            let start = i;
            self.buf.clear();
            let mut end_size = self.size;
            while i < datas.len() {
                let s = segment::record_size(datas[i].len());
                if i > start && end_size + s > self.limit {
                    break;
                }
                segment::encode_record(&datas[i], &mut self.buf);
                end_size += s;
                i += 1;
            }
            let res = self
                .file
                .write_all_at(&self.buf, self.size)
                .and_then(|_| self.file.sync_data());
            match res {
                Ok(()) => {
                    results
                        .extend((0..(i - start) as u64).map(|k| Ok(self.base + self.records + k)));
                    self.records += (i - start) as u64;
                    self.size = end_size;
                }
                Err(e) => {
                    tracing::error!(path = %self.path().display(), error = %e, records = datas.len() - start,
                        "outbox write failed; not acknowledging");
                    // Nothing of this chunk may survive: a later successful sync would make a
                    // never-acknowledged (possibly torn) record durable in the middle of the log.
                    self.undo_tail();
                    results.extend((start..datas.len()).map(|_| Err(clone_err(&e))));
                    break;
                }
            }
        }
        if self.buf.capacity() > 4 * 1024 * 1024 {
            self.buf = Vec::new();
        }
        touched.push(self.snapshot());
        BatchOutcome { results, touched }
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// Takes what is queued, without waiting longer than the window and stopping as soon as a round
/// of yielding brings no new appender (they would otherwise wait for nothing).
async fn collect(
    rx: &mut mpsc::Receiver<Msg>,
    batch: &mut Vec<AppendReq>,
    shutdown: &mut Option<oneshot::Sender<Result<(), OutboxError>>>,
    cfg: &OutboxConfig,
) {
    let deadline = tokio::time::Instant::now() + cfg.group_commit_window;
    let mut idle_rounds = 0;
    loop {
        let before = batch.len();
        while batch.len() < cfg.max_batch {
            match rx.try_recv() {
                Ok(Msg::Append(r)) => batch.push(r),
                Ok(Msg::Shutdown(t)) => {
                    *shutdown = Some(t);
                    return;
                }
                Err(_) => break,
            }
        }
        if batch.len() >= cfg.max_batch || cfg.group_commit_window.is_zero() {
            return;
        }
        if batch.len() == before {
            idle_rounds += 1;
            if idle_rounds >= 2 {
                return;
            }
        } else {
            idle_rounds = 0;
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::task::yield_now().await;
    }
}

pub(crate) async fn run_writer(
    core: Arc<Core>,
    mut rx: mpsc::Receiver<Msg>,
    mut seg: SegWriter,
    lock: Flock<File>,
    done: watch::Sender<bool>,
) {
    let mut batch: Vec<AppendReq> = Vec::new();
    let mut shutdowns = Vec::new();
    loop {
        let mut shutdown = None;
        match rx.recv().await {
            None => break,
            Some(Msg::Append(r)) => batch.push(r),
            Some(Msg::Shutdown(t)) => shutdown = Some(t),
        }
        if shutdown.is_none() {
            collect(&mut rx, &mut batch, &mut shutdown, &core.cfg).await;
        }
        if !batch.is_empty() {
            seg = commit_batch(&core, seg, &mut batch).await;
        }
        if let Some(t) = shutdown {
            shutdowns.push(t);
            break;
        }
    }
    core.lock().closed = true;
    rx.close();
    while let Ok(m) = rx.try_recv() {
        match m {
            Msg::Append(r) => {
                core.lock().reserved_bytes -= r.size;
                let _ = r.reply.send(Err(OutboxError::Closed));
            }
            Msg::Shutdown(t) => shutdowns.push(t),
        }
    }
    let path = seg.path();
    let synced = tokio::task::spawn_blocking(move || {
        let r = seg.sync();
        drop(seg);
        drop(lock);
        r
    })
    .await;
    core.appended.notify_waiters();
    let _ = done.send(true);
    let result = match synced {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(io::Error::other(e)),
    };
    for (i, t) in shutdowns.into_iter().enumerate() {
        let r = match &result {
            Ok(()) => Ok(()),
            Err(e) if i == 0 => Err(OutboxError::Io {
                path: path.clone(),
                source: clone_err(e),
            }),
            Err(_) => Ok(()),
        };
        let _ = t.send(r);
    }
}

async fn commit_batch(core: &Core, mut seg: SegWriter, batch: &mut Vec<AppendReq>) -> SegWriter {
    let datas: Vec<Bytes> = batch.iter().map(|r| r.data.clone()).collect();
    let (seg_back, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = seg.write_batch(&datas);
        (seg, outcome)
    })
    .await
    .expect("outbox writer I/O panicked");
    seg = seg_back;
    let failed = outcome.results.iter().any(|r| r.is_err());
    {
        let mut st = core.lock();
        for snap in &outcome.touched {
            match st.segments.back_mut() {
                Some(last) if last.base == snap.base => {
                    let old = last.size;
                    last.size = snap.size;
                    last.records = snap.records;
                    st.stored_bytes = st.stored_bytes + snap.size - old;
                }
                _ => {
                    st.segments.push_back(SegMeta {
                        base: snap.base,
                        records: snap.records,
                        size: snap.size,
                        unreadable: false,
                    });
                    st.stored_bytes += snap.size;
                }
            }
        }
        st.next_offset = seg.base + seg.records;
        st.reserved_bytes -= batch.iter().map(|r| r.size).sum::<u64>();
        if failed {
            st.io_errors += 1;
        }
    }
    core.appended.notify_waiters();
    let path = seg.path();
    for (req, res) in batch.drain(..).zip(outcome.results) {
        let _ = req.reply.send(res.map_err(|source| OutboxError::Io {
            path: path.clone(),
            source,
        }));
    }
    seg
}

/// What a consumer reads next: `count` records of segment `base` starting at the consumer's
/// offset, within the first `limit` (durable) bytes of the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadPlan {
    pub base: Offset,
    pub seg_end: Offset,
    pub limit: u64,
    pub count: u64,
    pub budget: u64,
}

pub(crate) enum ReadOutcome {
    Records {
        records: Vec<Record>,
        end_pos: u64,
    },
    /// The segment file no longer exists.
    Gone,
    /// Record `at` (or the header) is unreadable.
    Corrupt {
        at: Offset,
        reason: String,
        path: PathBuf,
    },
}

pub(crate) fn read_records(
    dir: &Path,
    file: Option<(Offset, File)>,
    next: Offset,
    pos: Option<u64>,
    plan: &ReadPlan,
) -> (Option<(Offset, File)>, ReadOutcome) {
    let path = dir.join(segment::file_name(plan.base));
    let (file, pos) = match file {
        Some((b, f)) if b == plan.base => (f, pos),
        _ => match File::open(&path) {
            Ok(f) => (f, None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (None, ReadOutcome::Gone),
            Err(e) => {
                return (
                    None,
                    ReadOutcome::Corrupt {
                        at: next,
                        reason: format!("open: {e}"),
                        path,
                    },
                )
            }
        },
    };
    let mut out = Vec::new();
    let mut end_pos = 0;
    let res = read_into(
        &mut BufReader::with_capacity(64 * 1024, &file),
        next,
        pos,
        plan,
        &mut out,
        &mut end_pos,
    );
    let outcome = match res {
        Ok(()) => ReadOutcome::Records {
            records: out,
            end_pos,
        },
        // Records before a corrupt one are good: deliver them; the next call reaches the
        // corruption again and reports it.
        Err(_) if !out.is_empty() => ReadOutcome::Records {
            records: out,
            end_pos,
        },
        Err((at, reason)) => ReadOutcome::Corrupt { at, reason, path },
    };
    (Some((plan.base, file)), outcome)
}

/// Reads the planned records into `out`; `end_pos` follows the last good one. On error, the
/// offset where reading stopped and why.
fn read_into(
    reader: &mut BufReader<&File>,
    next: Offset,
    pos: Option<u64>,
    plan: &ReadPlan,
    out: &mut Vec<Record>,
    end_pos: &mut u64,
) -> Result<(), (Offset, String)> {
    let mut p = match pos {
        Some(p) => p,
        None => {
            let mut head = [0u8; HEADER_LEN];
            reader
                .read_exact(&mut head)
                .map_err(|e| (plan.base, format!("header: {e}")))?;
            match segment::decode_header(&head) {
                Ok(h) if h.base_offset == plan.base => {}
                Ok(h) => return Err((plan.base, format!("header names base {}", h.base_offset))),
                Err(e) => return Err((plan.base, e.to_string())),
            }
            // Skip to `next` by framing only; the skipped bodies are checked by whoever reads them.
            let mut p = HEADER_LEN as u64;
            for o in plan.base..next {
                let mut frame = [0u8; RECORD_OVERHEAD];
                reader
                    .read_exact(&mut frame)
                    .map_err(|e| (o, format!("frame: {e}")))?;
                let (len, _) = segment::decode_frame(&frame).map_err(|e| (o, e.to_string()))?;
                reader
                    .seek_relative(i64::from(len))
                    .map_err(|e| (o, format!("seek: {e}")))?;
                p += (RECORD_OVERHEAD as u64) + u64::from(len);
            }
            p
        }
    };
    *end_pos = p;
    reader
        .seek(SeekFrom::Start(p))
        .map_err(|e| (next, format!("seek: {e}")))?;
    let mut offset = next;
    let mut bytes = 0u64;
    let past_end = || "record extends past the segment's durable length".to_owned();
    while (out.len() as u64) < plan.count && (out.is_empty() || bytes < plan.budget) {
        if p + RECORD_OVERHEAD as u64 > plan.limit {
            return Err((offset, past_end()));
        }
        let mut frame = [0u8; RECORD_OVERHEAD];
        reader
            .read_exact(&mut frame)
            .map_err(|e| (offset, format!("frame: {e}")))?;
        let (len, crc) = segment::decode_frame(&frame).map_err(|e| (offset, e.to_string()))?;
        let size = RECORD_OVERHEAD as u64 + u64::from(len);
        if p + size > plan.limit {
            return Err((offset, past_end()));
        }
        let mut body = vec![0u8; len as usize];
        reader
            .read_exact(&mut body)
            .map_err(|e| (offset, format!("body: {e}")))?;
        segment::check_body(len, crc, &body).map_err(|e| (offset, e.to_string()))?;
        out.push(Record {
            offset,
            data: Bytes::from(body),
        });
        offset += 1;
        p += size;
        bytes += size;
        *end_pos = p;
    }
    Ok(())
}

/// Every record in `dir`, without locking or modifying anything.
pub(crate) fn dump(dir: &Path) -> Result<Vec<Record>, OutboxError> {
    let (bases, _) = list_dir(dir, false).map_err(io_err(dir))?;
    let mut out = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::file_name(base));
        let data = match fs::read(&path) {
            Ok(d) => d,
            // Released by the running daemon between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let scan = match segment::parse_segment(&data) {
            Ok(s) if s.header.base_offset == base => s,
            other => {
                tracing::warn!(path = %path.display(), error = ?other.err(), "skipping outbox segment with a bad header");
                continue;
            }
        };
        let cap = bases.get(i + 1).map_or(u64::MAX, |n| n - base);
        if let Some(stop) = scan.stop {
            // An incomplete record at the end of the last segment is a write in progress.
            let in_progress =
                i + 1 == bases.len() && matches!(stop, segment::RecordError::Incomplete { .. });
            if !in_progress {
                tracing::warn!(path = %path.display(), valid_bytes = scan.valid_len, reason = %stop, "outbox segment ends early");
            }
        }
        for (k, body) in scan
            .records
            .into_iter()
            .enumerate()
            .take(usize::try_from(cap).unwrap_or(usize::MAX))
        {
            out.push(Record {
                offset: base + k as u64,
                data: Bytes::copy_from_slice(body),
            });
        }
    }
    Ok(out)
}
