//! `kill -9` in the middle of a stream of appends: every acknowledged record survives intact,
//! committed consumer offsets survive, and the recovered log keeps working.
//!
//! The test binary re-executes itself as the child (`crash_child`, selected by an env var): the
//! child appends from many tasks and prints each acknowledgement; the parent kills it with
//! SIGKILL after a few thousand of them and checks the directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use camgate::outbox::{Offset, Outbox, OutboxConfig};

const CHILD_ENV: &str = "CAMGATE_OUTBOX_CRASH_CHILD_DIR";

fn config(dir: &Path) -> OutboxConfig {
    OutboxConfig {
        dir: dir.to_owned(),
        max_bytes: 256 * 1024 * 1024,
        // Small segments, so that kills also land around segment rolls and releases.
        segment_bytes: 64 * 1024,
        ..OutboxConfig::default()
    }
}

/// Deterministic payload of varying length, so any mix-up of records shows.
fn payload(task: u64, seq: u64) -> Vec<u8> {
    let head = format!("task={task} seq={seq} ");
    let len = 40 + ((task * 7919 + seq * 104729) % 700) as usize;
    let mut v = head.into_bytes();
    v.extend((0..len).map(|i| b'a' + ((i as u64 + seq + task) % 26) as u8));
    v
}

#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let outbox = Outbox::open(&config(Path::new(&dir))).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        // A run-unique task id base, so payloads of successive children never repeat.
        let run = outbox.stats().next_offset;
        for t in 0..32u64 {
            let outbox = outbox.clone();
            tasks.spawn(async move {
                for seq in 0.. {
                    let data = payload(run * 100 + t, seq);
                    let hash = crc32fast::hash(&data);
                    let off = outbox.append(Bytes::from(data)).await.unwrap();
                    // One write per line: the parent only trusts complete lines.
                    println!("ACK {off} {hash:08x}");
                }
            });
        }
        // A consumer that commits as it goes: its offset must survive the kill too.
        let mut consumer = outbox.consumer("sink").unwrap();
        tasks.spawn(async move {
            loop {
                let batch = consumer.next_batch(200).await.unwrap();
                let last = batch.last().unwrap().offset;
                consumer.commit(last).await.unwrap();
                println!("COMMIT {last}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        tasks.join_next().await;
        panic!("child tasks are not supposed to end");
    });
}

struct RoundResult {
    acked: BTreeMap<Offset, u32>,
    committed: Option<Offset>,
}

fn run_child_and_kill(dir: &Path, kill_after_acks: usize) -> RoundResult {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start the child test process");
    let stdout = child.stdout.take().unwrap();
    let mut acked = BTreeMap::new();
    let mut committed = None;
    let mut killed = false;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if !line.ends_with('\n') {
            continue; // cut by the kill: not a complete acknowledgement
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["ACK", off, hash] => {
                let prev =
                    acked.insert(off.parse().unwrap(), u32::from_str_radix(hash, 16).unwrap());
                assert!(prev.is_none(), "offset {off} acknowledged twice");
            }
            ["COMMIT", off] => committed = Some(off.parse::<Offset>().unwrap()),
            _ => {}
        }
        if !killed && acked.len() >= kill_after_acks {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        killed,
        "child ended by itself after {} acks: {status}",
        acked.len()
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "child was not killed by SIGKILL: {status}"
    );
    RoundResult { acked, committed }
}

#[test]
fn acknowledged_records_survive_kill_9() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let mut all_acked: BTreeMap<Offset, u32> = BTreeMap::new();
    let mut last_commit: Option<Offset> = None;
    for (round, kill_after) in [1500usize, 4000, 2500, 6000].into_iter().enumerate() {
        let r = run_child_and_kill(&dir, kill_after);
        assert!(r.acked.len() >= kill_after, "round {round}");
        for (off, hash) in r.acked {
            assert!(
                all_acked.insert(off, hash).is_none(),
                "round {round}: offset {off} reused after a crash"
            );
        }
        if r.committed.is_some() {
            last_commit = r.committed;
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let outbox = Outbox::open(&config(&dir)).await.unwrap();
            let stats = outbox.stats();
            eprintln!("round {round}: recovered {stats:?}");
            let max_acked = *all_acked.keys().last().unwrap();
            assert!(
                stats.next_offset > max_acked,
                "round {round}: log ends before an acknowledged record"
            );

            // The read-only dump sees a contiguous log whose records are intact.
            let dumped = Outbox::dump(&dir).unwrap();
            let first = dumped.first().map_or(stats.next_offset, |r| r.offset);
            for (i, rec) in dumped.iter().enumerate() {
                assert_eq!(
                    rec.offset,
                    first + i as u64,
                    "round {round}: gap in the log"
                );
            }
            assert_eq!(
                first + dumped.len() as u64,
                stats.next_offset,
                "round {round}"
            );
            let by_offset: BTreeMap<Offset, &Bytes> =
                dumped.iter().map(|r| (r.offset, &r.data)).collect();

            // The consumer's committed offset survived, and released only what it had committed.
            let mut consumer = outbox.consumer("sink").unwrap();
            assert!(
                consumer.committed() >= last_commit,
                "round {round}: committed offset went back"
            );
            let committed = consumer.committed();
            assert!(
                first <= committed.map_or(0, |c| c + 1),
                "round {round}: released uncommitted records"
            );

            for (&off, &hash) in &all_acked {
                match by_offset.get(&off) {
                    Some(data) => {
                        assert_eq!(
                            crc32fast::hash(data),
                            hash,
                            "round {round}: record {off} corrupted"
                        );
                    }
                    None => assert!(
                        committed.is_some_and(|c| off <= c),
                        "round {round}: acknowledged record {off} lost (first stored {first})"
                    ),
                }
            }

            // Every stored record is one of ours (a well-formed payload), acknowledged or not.
            for rec in &dumped {
                let text = String::from_utf8_lossy(&rec.data);
                assert!(
                    text.starts_with("task="),
                    "round {round}: foreign record at {}",
                    rec.offset
                );
            }

            // The consumer reads the same bytes from where it stopped.
            let next = committed.map_or(first, |c| c + 1);
            if next < stats.next_offset {
                let batch = consumer.next_batch(50).await.unwrap();
                assert_eq!(batch[0].offset, next);
                for rec in &batch {
                    assert_eq!(&rec.data, by_offset[&rec.offset]);
                }
            }

            // The recovered log takes new appends right after the recovered end.
            let off = outbox
                .append(Bytes::from_static(b"task=parent after recovery"))
                .await
                .unwrap();
            assert_eq!(off, stats.next_offset);
            drop(consumer);
            outbox.shutdown().await.unwrap();
        });
    }
}
