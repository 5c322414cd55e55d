//! Full policy, consumers and retention, recovery of damaged files, shutdown and dump, on real
//! files.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use camgate::outbox::{Consumer, Offset, Outbox, OutboxConfig, OutboxError, Record};

fn cfg(dir: &Path, max_bytes: u64, segment_bytes: u64) -> OutboxConfig {
    OutboxConfig {
        dir: dir.to_owned(),
        max_bytes,
        segment_bytes,
        ..OutboxConfig::default()
    }
}

fn event(i: u64) -> Bytes {
    Bytes::from(format!("{{\"event\":{i},\"pad\":\"{}\"}}", "x".repeat(80)))
}

async fn read_n(c: &mut Consumer, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), c.next_batch(n - out.len()))
            .await
            .expect("next_batch hung");
        out.extend(batch.unwrap());
    }
    out
}

fn seg_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn full_refuses_without_dropping_and_recovers_after_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 16 * 1024, 2 * 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    // No consumer yet: nothing is ever released, the bound alone holds the data.
    let mut acked = Vec::new();
    let mut i = 0;
    let first_full = loop {
        match outbox.append(event(i)).await {
            Ok(off) => acked.push((off, event(i))),
            Err(OutboxError::Full {
                stored_bytes,
                max_bytes,
            }) => break (stored_bytes, max_bytes),
            Err(e) => panic!("{e}"),
        }
        i += 1;
        assert!(i < 10_000, "never full");
    };
    assert_eq!(first_full.1, 16 * 1024);
    for _ in 0..5 {
        assert!(
            matches!(outbox.append(event(i)).await, Err(OutboxError::Full { .. })),
            "full must persist"
        );
    }
    let s = outbox.stats();
    assert_eq!(s.refused_full, 6);
    assert!(s.stored_bytes <= cfg.max_bytes);
    assert_eq!(
        s.next_offset,
        acked.len() as u64,
        "a refused append must not take an offset"
    );

    // Every acknowledged record is still there, and a late consumer gets them all.
    let mut c = outbox.consumer("late").unwrap();
    let got: Vec<(Offset, Bytes)> = read_n(&mut c, acked.len())
        .await
        .into_iter()
        .map(|r| (r.offset, r.data))
        .collect();
    assert_eq!(got, acked);
    // Still full until something is committed.
    assert!(matches!(
        outbox.append(event(i)).await,
        Err(OutboxError::Full { .. })
    ));
    c.commit(acked.last().unwrap().0).await.unwrap();
    assert!(
        outbox.stats().stored_bytes < cfg.max_bytes / 4,
        "{:?}",
        outbox.stats()
    );
    let off = outbox.append(event(i)).await.unwrap();
    assert_eq!(off, acked.len() as u64);
    assert_eq!(read_n(&mut c, 1).await[0].data, event(i));
    outbox.shutdown().await.unwrap();
}

/// With a derived reserve (the daemon sets one when the vision stage runs), camera events are
/// refused while records derived from stored ones (face results) still fit, up to `max_bytes`.
#[tokio::test]
async fn derived_records_have_room_that_camera_events_cannot_take() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = cfg(tmp.path(), 32 * 1024, 4 * 1024);
    cfg.derived_reserve_bytes = cfg.derived_reserve();
    assert_eq!(cfg.derived_reserve_bytes, 2 * 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut i = 0;
    let events_full = loop {
        match outbox.append(event(i)).await {
            Ok(_) => i += 1,
            Err(OutboxError::Full { max_bytes, .. }) => break max_bytes,
            Err(e) => panic!("{e}"),
        }
        assert!(i < 10_000, "never full");
    };
    assert_eq!(events_full, 30 * 1024, "events stop at max_bytes - reserve");
    let mut derived = 0;
    let all_full = loop {
        match outbox.append_derived(event(i)).await {
            Ok(_) => (i, derived) = (i + 1, derived + 1),
            Err(OutboxError::Full { max_bytes, .. }) => break max_bytes,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(all_full, 32 * 1024);
    // The reserve holds more than a handful of records (2 KiB of ~110-byte records).
    assert!(derived >= 10, "{derived} derived records fitted");
    assert!(outbox.stats().stored_bytes <= cfg.max_bytes);
    // Still no room for a camera event.
    assert!(matches!(
        outbox.append(event(i)).await,
        Err(OutboxError::Full { .. })
    ));
    let mut c = outbox.consumer("all").unwrap();
    assert_eq!(read_n(&mut c, i as usize).await.len(), i as usize);
}

#[tokio::test]
async fn two_consumers_have_independent_cursors_that_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut a = outbox.consumer("kafka").unwrap();
    let mut b = outbox.consumer("mqtt").unwrap();
    assert!(matches!(
        outbox.consumer("kafka"),
        Err(OutboxError::ConsumerBusy(_))
    ));
    assert!(matches!(
        outbox.consumer("../x"),
        Err(OutboxError::BadConsumerName(_))
    ));
    for i in 0..100 {
        outbox.append(event(i)).await.unwrap();
    }
    let ra = read_n(&mut a, 60).await;
    let rb = read_n(&mut b, 25).await;
    assert_eq!(
        ra.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..60).collect::<Vec<_>>()
    );
    assert_eq!(
        rb.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..25).collect::<Vec<_>>()
    );
    a.commit(59).await.unwrap();
    b.commit(19).await.unwrap();
    assert!(matches!(
        b.commit(100).await,
        Err(OutboxError::CommitBeyondEnd {
            through: 100,
            next_offset: 100
        })
    ));
    // Commits are monotonic.
    b.commit(10).await.unwrap();
    assert_eq!(b.committed(), Some(19));
    drop((a, b));
    outbox.shutdown().await.unwrap();

    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut a = outbox.consumer("kafka").unwrap();
    let mut b = outbox.consumer("mqtt").unwrap();
    assert_eq!((a.committed(), b.committed()), (Some(59), Some(19)));
    let ra = read_n(&mut a, 40).await;
    assert_eq!(ra[0].offset, 60);
    assert_eq!(ra[0].data, event(60));
    assert_eq!(ra.last().unwrap().offset, 99);
    // b re-reads what it had read but not committed: at-least-once.
    let rb = read_n(&mut b, 1).await;
    assert_eq!((rb[0].offset, &rb[0].data), (20, &event(20)));
    outbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn progress_marks_survive_a_process_crash_and_err_on_the_side_of_resending() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut c = outbox.consumer("notifier-hr").unwrap();
    for i in 0..30 {
        outbox.append(event(i)).await.unwrap();
    }
    read_n(&mut c, 30).await;
    c.commit(9).await.unwrap();
    // Delivered through 19 and 20 on its way, never committed: the process dies here (the
    // file is written in place, so what a crash leaves is what was written).
    c.mark(Some(19), Some(20)).unwrap();
    drop(c);
    outbox.shutdown().await.unwrap();
    let progress = tmp.path().join("notifier-hr.progress");
    let text = std::fs::read_to_string(&progress).unwrap();
    assert_eq!(
        text, "progress 00000000000000000020 00000000000000000021\n",
        "golden line"
    );

    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut c = outbox.consumer("notifier-hr").unwrap();
    assert_eq!((c.committed(), c.sent_before()), (Some(19), Some(20)));
    assert_eq!(read_n(&mut c, 1).await[0].offset, 20);
    // Taken once: a second consumer of the same name in this process is not told again.
    drop(c);
    assert_eq!(outbox.consumer("notifier-hr").unwrap().sent_before(), None);
    outbox.shutdown().await.unwrap();

    // A torn line, or one beyond the log's end (a log restored from an older copy), is ignored.
    for bad in [
        "progress 0000000000000",
        "progress 00000000000000000500 00000000000000000000\n",
    ] {
        std::fs::write(&progress, bad).unwrap();
        let outbox = Outbox::open(&cfg).await.unwrap();
        let c = outbox.consumer("notifier-hr").unwrap();
        assert_eq!((c.committed(), c.sent_before()), (Some(19), None), "{bad}");
        drop(c);
        outbox.shutdown().await.unwrap();
    }
    // A lease beyond the log's end is cut at the last record.
    std::fs::write(
        &progress,
        "progress 00000000000000000000 00000000000000000500\n",
    )
    .unwrap();
    let outbox = Outbox::open(&cfg).await.unwrap();
    let c = outbox.consumer("notifier-hr").unwrap();
    assert_eq!((c.committed(), c.sent_before()), (Some(19), Some(29)));
    drop(c);
    outbox.shutdown().await.unwrap();
    // A mark behind the durable cursor changes nothing.
    std::fs::write(
        &progress,
        "progress 00000000000000000003 00000000000000000004\n",
    )
    .unwrap();
    let outbox = Outbox::open(&cfg).await.unwrap();
    let c = outbox.consumer("notifier-hr").unwrap();
    assert_eq!((c.committed(), c.sent_before()), (Some(19), None));
    drop(c);
    outbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_holds_for_the_slowest_consumer() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut fast = outbox.consumer("fast").unwrap();
    let _slow = outbox.consumer("slow").unwrap();
    for i in 0..200 {
        outbox.append(event(i)).await.unwrap();
    }
    let segs_before = seg_files(tmp.path());
    assert!(segs_before.len() > 5, "{segs_before:?}");
    read_n(&mut fast, 200).await;
    fast.commit(199).await.unwrap();
    assert_eq!(
        seg_files(tmp.path()),
        segs_before,
        "released although 'slow' has not committed"
    );
    assert_eq!(Outbox::dump(tmp.path()).unwrap().len(), 200);
    drop(_slow);
    outbox.shutdown().await.unwrap();

    // The registration of 'slow' is persistent: it still holds retention after a restart.
    let outbox = Outbox::open(&cfg).await.unwrap();
    assert_eq!(seg_files(tmp.path()), segs_before);
    let mut slow = outbox.consumer("slow").unwrap();
    let r = read_n(&mut slow, 120).await;
    slow.commit(r.last().unwrap().offset).await.unwrap();
    let segs_after = seg_files(tmp.path());
    assert!(
        segs_after.len() < segs_before.len(),
        "nothing released after both committed"
    );
    let first_kept: u64 = segs_after[0].trim_end_matches(".seg").parse().unwrap();
    assert!(
        first_kept <= 120,
        "released a record 'slow' has not committed: {segs_after:?}"
    );
    let dumped = Outbox::dump(tmp.path()).unwrap();
    assert_eq!(dumped.first().unwrap().offset, first_kept);
    assert_eq!(dumped.last().unwrap().offset, 199);
    outbox.shutdown().await.unwrap();
}

/// A consumer whose sink was removed from the config holds its records until it is forgotten:
/// `idle_consumers` names it, `forget_consumer` (and `camgate outbox forget`) releases them.
#[tokio::test]
async fn an_idle_consumer_is_listed_and_forgetting_it_releases_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut kept = outbox.consumer("kafka").unwrap();
    let mut gone = outbox.consumer("notifier-old").unwrap();
    for i in 0..200 {
        outbox.append(event(i)).await.unwrap();
    }
    read_n(&mut gone, 10).await;
    gone.commit(9).await.unwrap();
    gone.mark(Some(12), None).unwrap();
    drop(gone);
    read_n(&mut kept, 200).await;
    kept.commit(199).await.unwrap();
    let idle = outbox.stats().idle_consumers;
    assert_eq!(
        idle.into_iter().collect::<Vec<_>>(),
        [("notifier-old".to_owned(), Some(9))]
    );
    let before = seg_files(tmp.path());
    assert!(matches!(
        outbox.forget_consumer("kafka").await,
        Err(OutboxError::ConsumerBusy(_))
    ));
    assert!(!outbox.forget_consumer("no-such").await.unwrap());
    assert!(outbox.forget_consumer("notifier-old").await.unwrap());
    let after = seg_files(tmp.path());
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    assert!(outbox.stats().idle_consumers.is_empty());
    for f in ["notifier-old.consumer", "notifier-old.progress"] {
        assert!(!tmp.path().join(f).exists(), "{f} left behind");
    }
    drop(kept);
    outbox.shutdown().await.unwrap();
    // Gone across a restart too.
    let outbox = Outbox::open(&cfg).await.unwrap();
    assert_eq!(outbox.stats().consumers, 1);
    outbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_and_wakes_waiting_consumers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 64 * 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut c = outbox.consumer("sink").unwrap();
    // Reads until the outbox closes: everything appended before shutdown, then `Closed`.
    let waiter = tokio::spawn(async move {
        let mut n = 0;
        loop {
            match c.next_batch(7).await {
                Ok(b) => n += b.len(),
                Err(e) => return (n, e),
            }
        }
    });
    let appends: Vec<_> = (0..20)
        .map(|i| {
            let o = outbox.clone();
            tokio::spawn(async move { o.append(event(i)).await })
        })
        .collect();
    for a in appends {
        a.await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    outbox.shutdown().await.unwrap();
    let (n, err) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("consumer not woken")
        .unwrap();
    assert_eq!(n, 20);
    assert!(matches!(err, OutboxError::Closed), "{err:?}");
    assert!(matches!(
        outbox.append(event(99)).await,
        Err(OutboxError::Closed)
    ));
    // Shut down means the directory is free again.
    let again = Outbox::open(&cfg).await.unwrap();
    assert_eq!(again.stats().next_offset, 20);
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn directory_is_locked_while_open_and_dump_reads_alongside() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    assert!(matches!(
        Outbox::open(&cfg).await,
        Err(OutboxError::Locked(_))
    ));
    for i in 0..30 {
        outbox.append(event(i)).await.unwrap();
    }
    let dumped = Outbox::dump(tmp.path()).unwrap();
    assert_eq!(dumped.len(), 30);
    assert!(dumped
        .iter()
        .enumerate()
        .all(|(i, r)| r.offset == i as u64 && r.data == event(i as u64)));
    outbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn torn_tail_is_truncated_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024 * 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    for i in 0..10 {
        outbox.append(event(i)).await.unwrap();
    }
    outbox.shutdown().await.unwrap();
    let seg = tmp.path().join(&seg_files(tmp.path())[0]);
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A record cut short, as if the machine lost power mid-write (a kill -9 cannot do this).
    let mut torn = Vec::new();
    torn.extend_from_slice(&200u32.to_le_bytes());
    torn.extend_from_slice(&[0xAB; 4]);
    torn.extend_from_slice(&[b'y'; 50]);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(&seg, &bytes).unwrap();
    assert_eq!(
        Outbox::dump(tmp.path()).unwrap().len(),
        10,
        "dump must tolerate a torn tail"
    );

    let outbox = Outbox::open(&cfg).await.unwrap();
    let s = outbox.stats();
    assert_eq!(s.truncated_bytes, torn.len() as u64);
    assert_eq!(s.next_offset, 10);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(outbox.append(event(10)).await.unwrap(), 10);
    let mut c = outbox.consumer("c").unwrap();
    let all = read_n(&mut c, 11).await;
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, r)| r.data == event(i as u64)));
    drop(c);
    outbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn corrupt_record_in_sealed_segment_is_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    for i in 0..60 {
        outbox.append(event(i)).await.unwrap();
    }
    outbox.shutdown().await.unwrap();
    let segs = seg_files(tmp.path());
    assert!(segs.len() >= 4, "{segs:?}");
    // Flip a byte in the body of the second record of the second segment.
    let victim = tmp.path().join(&segs[1]);
    let base: u64 = segs[1].trim_end_matches(".seg").parse().unwrap();
    let next_base: u64 = segs[2].trim_end_matches(".seg").parse().unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let rec_len = 8 + event(0).len();
    bytes[20 + rec_len + 8 + 3] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();

    let dumped = Outbox::dump(tmp.path()).unwrap();
    assert!(
        dumped.iter().all(|r| r.data == event(r.offset)),
        "dump returned a corrupt record"
    );
    assert!(!dumped.iter().any(|r| r.offset == base + 1));

    let outbox = Outbox::open(&cfg).await.unwrap();
    let mut c = outbox.consumer("c").unwrap();
    let mut got = Vec::new();
    while got.last().is_none_or(|r: &Record| r.offset < 59) {
        got.extend(
            tokio::time::timeout(Duration::from_secs(5), c.next_batch(100))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    let expected: Vec<u64> = (0..60).filter(|o| *o <= base || *o >= next_base).collect();
    assert_eq!(
        offsets, expected,
        "records before the corruption are delivered, the rest of that segment skipped"
    );
    assert!(got.iter().all(|r| r.data == event(r.offset)));
    assert_eq!(outbox.stats().corrupt_records, next_base - base - 1);
    drop(c);
    outbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_files_do_not_panic_open_or_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 1024);
    std::fs::create_dir_all(tmp.path()).unwrap();
    // A segment that is only garbage, and an unparsable cursor.
    std::fs::write(
        tmp.path().join(format!("{:020}.seg", 0)),
        b"not a segment at all, clearly",
    )
    .unwrap();
    std::fs::write(tmp.path().join("sink.consumer"), b"garbage").unwrap();
    assert!(Outbox::dump(tmp.path()).unwrap().is_empty());
    let outbox = Outbox::open(&cfg).await.unwrap();
    assert_eq!(outbox.append(event(0)).await.unwrap(), 0);
    let c = outbox.consumer("sink").unwrap();
    assert_eq!(c.committed(), None);
    drop(c);
    outbox.shutdown().await.unwrap();
    // The bad segment was set aside, not deleted.
    assert!(tmp.path().join(format!("{:020}.seg.corrupt", 0)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_what_was_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cfg(tmp.path(), 1024 * 1024, 64 * 1024);
    let outbox = Outbox::open(&cfg).await.unwrap();
    let appends: Vec<_> = (0..200)
        .map(|i| {
            let o = outbox.clone();
            tokio::spawn(async move { (i, o.append(event(i)).await) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    outbox.shutdown().await.unwrap();
    let mut ok = Vec::new();
    for a in appends {
        match a.await.unwrap() {
            (i, Ok(off)) => ok.push((off, event(i))),
            (_, Err(OutboxError::Closed)) => {}
            (_, Err(e)) => panic!("{e}"),
        }
    }
    assert!(!ok.is_empty());
    ok.sort();
    let dumped: Vec<(Offset, Bytes)> = Outbox::dump(tmp.path())
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.data))
        .collect();
    assert_eq!(dumped, ok, "acknowledged exactly what is stored");
}

#[tokio::test]
async fn segment_rolls_exactly_at_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    // Header (20) + two records of 8 + 10 bytes fill a segment exactly.
    let cfg = cfg(tmp.path(), 1024 * 1024, 20 + 2 * 18);
    let outbox = Outbox::open(&cfg).await.unwrap();
    for i in 0..5u8 {
        outbox.append(Bytes::from(vec![i; 10])).await.unwrap();
    }
    let names = seg_files(tmp.path());
    assert_eq!(
        names,
        [
            format!("{:020}.seg", 0),
            format!("{:020}.seg", 2),
            format!("{:020}.seg", 4)
        ]
    );
    assert_eq!(
        std::fs::metadata(tmp.path().join(&names[0])).unwrap().len(),
        56
    );
    assert_eq!(outbox.stats().stored_bytes, 56 + 56 + 38);
    outbox.shutdown().await.unwrap();
}
