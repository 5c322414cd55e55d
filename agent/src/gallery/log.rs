//! The gallery's write-ahead log: one file, `gallery.log`, a header line and then one JSON
//! operation per line, each prefixed by the CRC-32 of its JSON (`<8 hex> <json>\n`).
//!
//! Why a log: enrolling, filing a stranger and deleting are appends (one `write` + `fsync`), a
//! crash can only leave a torn last line (dropped at the next write, never an error), and other
//! processes (the CLI beside the daemon) pick up changes by reading what was appended. Every
//! writer holds an exclusive `flock` on `gallery.lock` while it appends or compacts; readers take
//! no lock: they apply complete lines only. Compaction writes the live state to a new file and
//! renames it over the log; a reader notices the new inode and reads it from the start.
//!
//! Versioning: the header names the format and its version. A reader applies the operations it
//! knows and skips (and counts) others, and ignores unknown fields, so the previous release still
//! reads a log written by this one after an OTA rollback; only a change it could not read safely
//! bumps [`FORMAT_VERSION`], which older readers then refuse with a clear error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::ops::Op;
use super::GalleryError;

pub const LOG_FILE: &str = "gallery.log";
pub const LOCK_FILE: &str = "gallery.lock";
pub const FORMAT_NAME: &str = "camgate-gallery";
/// Version 1: the operations of [`Op`].
pub const FORMAT_VERSION: u32 = 1;
/// Longest line accepted (a template with a 512-float embedding is about 6 KB).
pub const MAX_LINE: usize = 1 << 20;
/// Bytes read at a time when catching up with the log.
const READ_CHUNK: usize = 256 * 1024;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    version: u32,
}

fn header_line() -> String {
    let h = Header {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
    };
    format!("{}\n", serde_json::to_string(&h).expect("plain struct"))
}

/// One operation as a log line.
pub fn encode(op: &Op) -> Vec<u8> {
    let json = serde_json::to_vec(op).expect("gallery ops serialise");
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// What a line holds.
#[derive(Debug)]
pub enum Line {
    Op(Box<Op>),
    /// An operation of a later version of this format, skipped.
    Unknown,
}

/// Why a line is not a valid operation (the reason, for the error).
pub fn decode(line: &[u8]) -> Result<Line, String> {
    if line.len() < 10 || line[8] != b' ' {
        return Err("no CRC prefix".into());
    }
    let crc = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("CRC prefix is not hex")?;
    let json = &line[9..];
    if crc32fast::hash(json) != crc {
        return Err("CRC mismatch".into());
    }
    match serde_json::from_slice::<Op>(json) {
        Ok(op) if !op.is_finite() => Err("an embedding value is not a finite number".into()),
        Ok(op) => Ok(Line::Op(Box::new(op))),
        Err(e) => {
            // Known shape, but an op this version does not know: skip. Anything else is damage.
            let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
            match v.get("op").and_then(|o| o.as_str()) {
                Some(name) if !super::ops::KNOWN.contains(&name) => Ok(Line::Unknown),
                _ => Err(format!("bad operation: {e}")),
            }
        }
    }
}

/// What [`scan`] found in a run of log bytes.
#[derive(Debug, Default)]
pub struct Scan {
    pub ops: Vec<Op>,
    /// Lines of a later format's operations, skipped.
    pub skipped: usize,
    /// Bytes of the complete, valid lines read (always at a line end).
    pub consumed: usize,
    /// Lines read (the header included, when it was in `buf`).
    pub lines: u64,
    /// The bytes after `consumed` are a damaged or unfinished last line: a torn write (or one
    /// still being copied in by another process), not damage.
    pub torn_tail: bool,
    /// A damaged line with more lines after it.
    pub damage: Option<Damage>,
}

#[derive(Debug)]
pub struct Damage {
    /// 1-based, counted from the start of `buf`.
    pub line: u64,
    /// Byte offset in `buf`.
    pub offset: usize,
    pub reason: String,
}

/// Parses log bytes (no I/O): the header first unless `header_seen`, then operation lines.
pub fn scan(buf: &[u8], header_seen: bool) -> Scan {
    let mut out = Scan::default();
    let mut at = 0usize;
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        let line = &buf[at..at + nl];
        let parsed = if !header_seen && out.lines == 0 {
            check_header(line).map(|()| None)
        } else {
            decode(line).map(Some)
        };
        match parsed {
            Ok(l) => {
                match l {
                    Some(Line::Op(op)) => out.ops.push(*op),
                    Some(Line::Unknown) => out.skipped += 1,
                    None => {}
                }
                at += nl + 1;
                out.consumed = at;
                out.lines += 1;
            }
            // The last line, damaged after the header: torn.
            Err(_) if (header_seen || out.lines > 0) && at + nl + 1 == buf.len() => {
                out.torn_tail = true;
                return out;
            }
            Err(reason) => {
                out.damage = Some(Damage {
                    line: out.lines + 1,
                    offset: at,
                    reason,
                });
                return out;
            }
        }
    }
    out.torn_tail |= at < buf.len();
    out
}

/// A reader/writer of one gallery directory's log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    file: File,
    inode: u64,
    /// Bytes applied so far (always at a line end).
    pos: u64,
    /// Lines applied (header included), for error messages.
    lines: u64,
}

/// New operations read by [`Log::read_new`]; `reset` means the file was replaced (compacted by
/// another process): the state must be rebuilt from these operations alone.
#[derive(Debug, Default)]
pub struct Delta {
    pub reset: bool,
    pub ops: Vec<Op>,
    pub skipped: usize,
    /// A damaged last line, left for the next writer to cut (a torn write).
    pub torn_tail: bool,
}

impl Log {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(LOG_FILE)
    }

    /// Opens (creating the directory and an empty log if need be) and hands every operation to
    /// `each`, in order.
    pub fn open(dir: &Path, each: &mut dyn FnMut(Op)) -> Result<(Log, Delta), GalleryError> {
        create_dir_adopted(dir, dir.parent().unwrap_or(Path::new("/")))?;
        let path = Self::path(dir);
        if !path.exists() {
            let _lock = lock(dir)?;
            if !path.exists() {
                write_file_atomic(&path, header_line().as_bytes())?;
            }
        }
        let file = File::open(&path).map_err(GalleryError::io(&path))?;
        let inode = file.metadata().map_err(GalleryError::io(&path))?.ino();
        let mut log = Log {
            dir: dir.to_owned(),
            file,
            inode,
            pos: 0,
            lines: 0,
        };
        let mut delta = log.read_each(each)?;
        delta.reset = true;
        Ok((log, delta))
    }

    /// Reads what was appended since the last call (or the whole file again if it was replaced).
    pub fn read_new(&mut self) -> Result<Delta, GalleryError> {
        let mut ops = Vec::new();
        let mut delta = self.read_each(&mut |op| ops.push(op))?;
        delta.ops = ops;
        Ok(delta)
    }

    /// [`Log::read_new`], handing each operation to `each` as it is decoded instead of
    /// collecting them: a large gallery is read through a [`READ_CHUNK`] buffer, never held
    /// whole as text or as operations (on a gateway that peak would outlive the load: the
    /// allocator keeps it).
    fn read_each(&mut self, each: &mut dyn FnMut(Op)) -> Result<Delta, GalleryError> {
        let path = Self::path(&self.dir);
        let mut delta = Delta::default();
        let meta = std::fs::metadata(&path).map_err(GalleryError::io(&path))?;
        if meta.ino() != self.inode {
            self.file = File::open(&path).map_err(GalleryError::io(&path))?;
            self.inode = self.file.metadata().map_err(GalleryError::io(&path))?.ino();
            self.pos = 0;
            self.lines = 0;
            delta.reset = true;
        }
        let len = self.file.metadata().map_err(GalleryError::io(&path))?.len();
        if len <= self.pos {
            return Ok(delta);
        }
        self.file
            .seek(SeekFrom::Start(self.pos))
            .map_err(GalleryError::io(&path))?;
        let mut left = len - self.pos;
        // Bytes read but not applied yet: the start of a line the next chunk finishes.
        let mut buf: Vec<u8> = Vec::new();
        while left > 0 {
            let n = left.min(READ_CHUNK as u64);
            (&self.file)
                .take(n)
                .read_to_end(&mut buf)
                .map_err(GalleryError::io(&path))?;
            left -= n;
            let consumed = self.apply_lines(&buf, left == 0, &mut delta, each)?;
            buf.drain(..consumed);
        }
        Ok(delta)
    }

    /// Applies the complete lines of `buf` (bytes from `self.pos`); `at_end`: nothing follows
    /// in the file, so a damaged last line is a torn write, not damage. Returns the bytes used.
    fn apply_lines(
        &mut self,
        buf: &[u8],
        at_end: bool,
        delta: &mut Delta,
        each: &mut dyn FnMut(Op),
    ) -> Result<usize, GalleryError> {
        let scan = scan(buf, self.lines > 0);
        if let Some(d) = scan.damage {
            return Err(GalleryError::Corrupt {
                file: Self::path(&self.dir),
                line: self.lines + d.line,
                offset: self.pos + d.offset as u64,
                reason: d.reason,
            });
        }
        self.pos += scan.consumed as u64;
        self.lines += scan.lines;
        let mut ops = scan.ops;
        super::ops::pack(&mut ops);
        ops.into_iter().for_each(each);
        delta.skipped += scan.skipped;
        delta.torn_tail |= at_end && scan.torn_tail;
        Ok(scan.consumed)
    }

    /// Appends `ops` under the lock, after catching up (returned: apply it before `ops`). Cuts a
    /// torn tail first. Durable (fsync) when it returns.
    pub fn append(&mut self, ops: &[Op]) -> Result<Delta, GalleryError> {
        let _lock = lock(&self.dir)?;
        let delta = self.read_new()?;
        let path = Self::path(&self.dir);
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(GalleryError::io(&path))?;
        if f.metadata().map_err(GalleryError::io(&path))?.len() != self.pos {
            f.set_len(self.pos).map_err(GalleryError::io(&path))?;
        }
        let mut bytes = Vec::new();
        for op in ops {
            let line = encode(op);
            if line.len() > MAX_LINE {
                return Err(GalleryError::Invalid(format!(
                    "operation of {} bytes is over the {MAX_LINE}-byte line limit",
                    line.len()
                )));
            }
            bytes.extend_from_slice(&line);
        }
        f.seek(SeekFrom::Start(self.pos))
            .and_then(|_| f.write_all(&bytes))
            .and_then(|_| f.sync_data())
            .map_err(GalleryError::io(&path))?;
        self.pos += bytes.len() as u64;
        self.lines += ops.len() as u64;
        Ok(delta)
    }

    /// Replaces the log by `ops` (the live state), under the lock. Returns `false` (and writes
    /// nothing) if another process appended since our last read: compaction waits for a quiet
    /// moment rather than lose its operations.
    pub fn compact(&mut self, ops: &[Op]) -> Result<bool, GalleryError> {
        let _lock = lock(&self.dir)?;
        let path = Self::path(&self.dir);
        let meta = std::fs::metadata(&path).map_err(GalleryError::io(&path))?;
        if meta.ino() != self.inode || meta.len() != self.pos {
            return Ok(false);
        }
        let mut bytes = header_line().into_bytes();
        for op in ops {
            bytes.extend_from_slice(&encode(op));
        }
        write_file_atomic(&path, &bytes)?;
        self.file = File::open(&path).map_err(GalleryError::io(&path))?;
        self.inode = self.file.metadata().map_err(GalleryError::io(&path))?.ino();
        self.pos = bytes.len() as u64;
        self.lines = 1 + ops.len() as u64;
        Ok(true)
    }

    /// Lines in the log (header included).
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

fn check_header(line: &[u8]) -> Result<(), String> {
    let h: Header = serde_json::from_slice(line).map_err(|e| format!("not a gallery log: {e}"))?;
    if h.format != FORMAT_NAME {
        return Err(format!("format {:?} is not {FORMAT_NAME:?}", h.format));
    }
    if h.version > FORMAT_VERSION {
        return Err(format!(
            "written by a newer camgate (format version {}, this one reads up to {FORMAT_VERSION})",
            h.version
        ));
    }
    Ok(())
}

/// The exclusive writer lock of a gallery directory (released when dropped).
pub fn lock(dir: &Path) -> Result<Flock<File>, GalleryError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(GalleryError::io(&path))?;
    adopt(&f, dir).map_err(GalleryError::io(&path))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| GalleryError::Io {
        path,
        source: std::io::Error::from(e),
    })
}

/// Gives `f`, just created in `dir`, the owner of `dir` when this process runs as root.
///
/// Why: the daemon runs as systemd's dynamic user and owns the gallery directory, while an
/// operator runs `camgate gallery ...` as root beside it. A file root left behind as its own (a
/// compacted log, the lock, a crop) would lock the daemon out of its own gallery.
pub fn adopt(f: &File, dir: &Path) -> std::io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (d, m) = (std::fs::metadata(dir)?, f.metadata()?);
    if (m.uid(), m.gid()) != (d.uid(), d.gid()) {
        std::os::unix::fs::fchown(f, Some(d.uid()), Some(d.gid()))?;
    }
    Ok(())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `dir` (made if missing, with its parents) owned as [`adopt`] says: by the owner of `parent`.
pub fn create_dir_adopted(dir: &Path, parent: &Path) -> Result<(), GalleryError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .and_then(|_| adopt(&File::open(dir)?, parent))
        .map_err(GalleryError::io(dir))
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), GalleryError> {
    let tmp = path.with_extension("tmp");
    let dir = path.parent().unwrap_or(Path::new("."));
    (|| {
        let mut f = File::create(&tmp)?;
        adopt(&f, dir)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })()
    .map_err(GalleryError::io(path))
}

/// What [`repair`] did.
#[derive(Debug, serde::Serialize)]
pub struct Repaired {
    pub kept: usize,
    /// 1-based record numbers dropped, with the reason.
    pub dropped: Vec<(u64, String)>,
    /// The damaged log, kept as it was.
    pub copy: PathBuf,
}

/// Rewrites the log without its damaged records (the original is kept beside it as
/// `gallery.log.damaged-<unix ms>`): the documented way back from a `Corrupt` error, run by an
/// operator who has read which record is lost.
pub fn repair(dir: &Path, now_ms: u64) -> Result<Repaired, GalleryError> {
    let _lock = lock(dir)?;
    let path = Log::path(dir);
    let bytes = std::fs::read(&path).map_err(GalleryError::io(&path))?;
    let copy = dir.join(format!("{LOG_FILE}.damaged-{now_ms}"));
    std::fs::copy(&path, &copy)
        .and_then(|_| adopt(&File::open(&copy)?, dir))
        .map_err(GalleryError::io(&copy))?;
    let mut out = header_line().into_bytes();
    let (mut kept, mut dropped) = (0, Vec::new());
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate().skip(1) {
        if line.is_empty() {
            continue;
        }
        match decode(line) {
            Ok(_) => {
                out.extend_from_slice(line);
                out.push(b'\n');
                kept += 1;
            }
            Err(reason) => dropped.push((i as u64 + 1, reason)),
        }
    }
    write_file_atomic(&path, &out)?;
    Ok(Repaired {
        kept,
        dropped,
        copy,
    })
}
