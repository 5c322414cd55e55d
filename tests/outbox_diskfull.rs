//! Write failures for real: the child process lowers RLIMIT_FSIZE (and ignores SIGXFSZ) so that
//! writes into the active segment fail with EFBIG partway, as on a full disk. The appenders of
//! the failed group commits get `Io` (no ack), nothing partial stays in the log, and once the
//! limit is lifted the same outbox keeps appending.
//!
//! A child process because the limit applies to the whole process (other tests write files).

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use camgate::outbox::{Offset, Outbox, OutboxConfig, OutboxError};

const CHILD_ENV: &str = "CAMGATE_OUTBOX_EFBIG_CHILD_DIR";
const FILE_LIMIT: u64 = 96 * 1024;

fn set_file_size_limit(soft: u64) {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with valid pointers.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_FSIZE, &mut cur),
            0,
            "getrlimit failed"
        );
        let new = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: cur.rlim_max,
        };
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_FSIZE, &new),
            0,
            "setrlimit(RLIMIT_FSIZE) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn record(i: u64) -> Vec<u8> {
    let mut v = format!("event {i} ").into_bytes();
    v.resize(1000, b'0' + (i % 10) as u8);
    v
}

#[test]
fn efbig_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    // SAFETY: ignoring a signal; no handler code involved.
    unsafe {
        assert_ne!(
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN),
            libc::SIG_ERR,
            "cannot ignore SIGXFSZ"
        );
    }
    set_file_size_limit(FILE_LIMIT);
    let dir = Path::new(&dir).to_owned();
    let cfg = OutboxConfig {
        dir: dir.clone(),
        max_bytes: 64 * 1024 * 1024,
        // Larger than the file limit: the active segment itself hits it.
        segment_bytes: 1024 * 1024,
        ..OutboxConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let outbox = Outbox::open(&cfg).await.unwrap();
        let mut acked: Vec<(Offset, Vec<u8>)> = Vec::new();
        let mut failed = 0u64;
        let mut i = 0u64;
        // Concurrent appenders, so failures hit whole group commits.
        while failed < 20 {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let (outbox, data) = (outbox.clone(), record(i));
                i += 1;
                set.spawn(async move { (outbox.append(Bytes::from(data.clone())).await, data) });
            }
            while let Some(r) = set.join_next().await {
                match r.unwrap() {
                    (Ok(off), data) => acked.push((off, data)),
                    (Err(OutboxError::Io { source, .. }), _) => {
                        assert_eq!(
                            source.raw_os_error(),
                            Some(libc::EFBIG),
                            "unexpected error {source}"
                        );
                        failed += 1;
                    }
                    (Err(e), _) => panic!("unexpected error {e}"),
                }
            }
            assert!(
                i < 10_000,
                "writes never failed: is RLIMIT_FSIZE in effect?"
            );
        }
        let stats = outbox.stats();
        assert!(stats.io_errors > 0);
        assert!(stats.stored_bytes <= FILE_LIMIT, "{stats:?}");
        // Failed writes stopped partway, at the limit: those bytes must have been truncated away.
        assert_eq!(stats.segments, 1);
        let seg = dir.join(format!("{:020}.seg", 0));
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            stats.stored_bytes,
            "partial write left in {}",
            seg.display()
        );
        // The disk has room again: the same outbox goes on, with the offset right after the acked ones.
        set_file_size_limit(libc::RLIM_INFINITY);
        let data = record(99_999);
        let off = outbox.append(Bytes::from(data.clone())).await.unwrap();
        acked.push((off, data));
        acked.sort();
        for (n, (off, _)) in acked.iter().enumerate() {
            assert_eq!(
                *off, n as u64,
                "acknowledged offsets must be contiguous: failed appends leave no hole"
            );
        }
        outbox.shutdown().await.unwrap();

        // Nothing of the failed writes is left for recovery to find: no torn tail to cut, and
        // above all no complete-looking record that was never acknowledged.
        let dump = |dir: &Path| -> Vec<(Offset, Vec<u8>)> {
            Outbox::dump(dir)
                .unwrap()
                .into_iter()
                .map(|r| (r.offset, r.data.to_vec()))
                .collect()
        };
        assert_eq!(dump(&dir), acked);
        let outbox = Outbox::open(&cfg).await.unwrap();
        let s = outbox.stats();
        assert_eq!(s.truncated_bytes, 0, "{s:?}");
        assert_eq!(s.next_offset, acked.len() as u64);

        for k in 0..50 {
            let data = record(100_000 + k);
            let off = outbox.append(Bytes::from(data.clone())).await.unwrap();
            assert_eq!(off, acked.len() as u64);
            acked.push((off, data));
        }
        // What a consumer reads is exactly what was acknowledged.
        let mut c = outbox.consumer("check").unwrap();
        let mut read = Vec::new();
        while read.len() < acked.len() {
            read.extend(
                c.next_batch(1000)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.offset, r.data.to_vec())),
            );
        }
        assert_eq!(read, acked);
        drop(c);
        outbox.shutdown().await.unwrap();
        assert_eq!(dump(&dir), acked);
        println!("EFBIG-CHILD-OK acked={} failed={failed}", acked.len());
    });
}

#[test]
fn write_errors_are_returned_and_outbox_recovers() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "efbig_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path().join("outbox"))
        .output()
        .expect("cannot start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("EFBIG-CHILD-OK"),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("EFBIG-CHILD-OK"))
            .unwrap()
    );
}
