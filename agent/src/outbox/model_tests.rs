//! Model-based tests: random operation sequences against a plain in-memory model of the outbox
//! (offsets, segment rolling and release, the full policy, consumer cursors), on real files.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::segment::{self, HEADER_LEN};
use super::{Consumer, Offset, Outbox, OutboxConfig, OutboxError, Record};

const NAMES: [&str; 2] = ["sink-a", "sink-b"];

#[derive(Debug, Clone)]
enum Op {
    Append {
        len: usize,
        fill: u8,
    },
    /// Several appends of the same length in flight at once (one group commit, any order).
    Burst {
        n: usize,
        len: usize,
    },
    Register {
        c: usize,
    },
    Read {
        c: usize,
        max: usize,
    },
    Commit {
        c: usize,
        back: u64,
    },
    CommitBeyondEnd {
        c: usize,
        ahead: u64,
    },
    Reopen,
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..120, any::<u8>()).prop_map(|(len, fill)| Op::Append { len, fill }),
        2 => (2usize..8, 0usize..60).prop_map(|(n, len)| Op::Burst { n, len }),
        2 => (0usize..2).prop_map(|c| Op::Register { c }),
        4 => (0usize..2, 1usize..6).prop_map(|(c, max)| Op::Read { c, max }),
        3 => (0usize..2, 0u64..3).prop_map(|(c, back)| Op::Commit { c, back }),
        1 => (0usize..2, 0u64..3).prop_map(|(c, ahead)| Op::CommitBeyondEnd { c, ahead }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Shutdown),
    ]
}

#[derive(Debug)]
struct MSeg {
    base: Offset,
    records: u64,
    size: u64,
}

#[derive(Debug)]
struct MConsumer {
    committed: Option<Offset>,
    next: Offset,
}

/// The specification, written as directly as possible.
struct Model {
    max_bytes: u64,
    seg_limit: u64,
    max_record: usize,
    data: Vec<Vec<u8>>,
    segments: VecDeque<MSeg>,
    closed: bool,
    consumers: BTreeMap<usize, MConsumer>,
    refused_full: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Offset(Offset),
    Full,
    TooLarge,
    Closed,
    Records(Vec<(Offset, Vec<u8>)>),
    Done,
    Beyond,
}

impl Model {
    fn stored(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
    fn next_offset(&self) -> Offset {
        self.data.len() as Offset
    }
    fn first(&self) -> Offset {
        self.segments[0].base
    }
    fn fits(&self, extra: u64) -> bool {
        self.stored() + extra + HEADER_LEN as u64 <= self.max_bytes
    }
    fn append(&mut self, d: Vec<u8>) -> Answer {
        if self.closed {
            return Answer::Closed;
        }
        if d.len() > self.max_record {
            return Answer::TooLarge;
        }
        let size = segment::record_size(d.len());
        if !self.fits(size) {
            self.refused_full += 1;
            return Answer::Full;
        }
        let next = self.next_offset();
        let last = self.segments.back().unwrap();
        if last.records > 0 && last.size + size > self.seg_limit {
            self.segments.push_back(MSeg {
                base: next,
                records: 0,
                size: HEADER_LEN as u64,
            });
        }
        let last = self.segments.back_mut().unwrap();
        last.records += 1;
        last.size += size;
        self.data.push(d);
        Answer::Offset(next)
    }
    fn register(&mut self, c: usize) {
        let first = self.first();
        let cons = self.consumers.entry(c).or_insert(MConsumer {
            committed: None,
            next: first,
        });
        cons.next = cons.committed.map_or(first, |x| x + 1).max(first);
    }
    fn read(&mut self, c: usize, max: usize) -> Option<Answer> {
        if self.closed {
            return Some(Answer::Closed);
        }
        let first = self.first();
        let next_offset = self.next_offset();
        let cons = self.consumers.get_mut(&c)?;
        cons.next = cons.next.max(first);
        if cons.next >= next_offset {
            return None; // would wait
        }
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|s| s.base <= cons.next)
            .unwrap();
        let end = (cons.next + max as u64).min(seg.base + seg.records);
        let out = (cons.next..end)
            .map(|o| (o, self.data[o as usize].clone()))
            .collect();
        cons.next = end;
        Some(Answer::Records(out))
    }
    fn commit(&mut self, c: usize, through: Offset) -> Answer {
        if self.closed {
            return Answer::Closed;
        }
        if through >= self.next_offset() {
            return Answer::Beyond;
        }
        let cons = self.consumers.get_mut(&c).unwrap();
        if cons.committed.is_some_and(|x| x >= through) {
            return Answer::Done;
        }
        cons.committed = Some(through);
        cons.next = cons.next.max(through + 1);
        let released_below = self
            .consumers
            .values()
            .map(|c| c.committed.map_or(0, |x| x + 1))
            .min()
            .unwrap();
        while self.segments.len() > 1
            && self.segments[0].base + self.segments[0].records <= released_below
        {
            self.segments.pop_front();
        }
        Answer::Done
    }
}

fn answer<T>(r: Result<T, OutboxError>, f: impl FnOnce(T) -> Answer) -> Answer {
    match r {
        Ok(v) => f(v),
        Err(OutboxError::Full { .. }) => Answer::Full,
        Err(OutboxError::RecordTooLarge { .. }) => Answer::TooLarge,
        Err(OutboxError::Closed) => Answer::Closed,
        Err(OutboxError::CommitBeyondEnd { .. }) => Answer::Beyond,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn records(rs: Vec<Record>) -> Answer {
    Answer::Records(
        rs.into_iter()
            .map(|r| (r.offset, r.data.to_vec()))
            .collect(),
    )
}

async fn run(cfg: OutboxConfig, ops: Vec<Op>) {
    let mut model = Model {
        max_bytes: cfg.max_bytes,
        seg_limit: cfg.effective_segment_bytes(),
        max_record: cfg.max_record_len(),
        data: Vec::new(),
        segments: VecDeque::from([MSeg {
            base: 0,
            records: 0,
            size: HEADER_LEN as u64,
        }]),
        closed: false,
        consumers: BTreeMap::new(),
        refused_full: 0,
    };
    let mut outbox = Outbox::open(&cfg).await.unwrap();
    let mut handles: BTreeMap<usize, Consumer> = BTreeMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        match op {
            Op::Append { len, fill } => {
                let d = vec![fill; len];
                let got = answer(outbox.append(Bytes::from(d.clone())).await, Answer::Offset);
                assert_eq!(got, model.append(d), "{ctx}");
            }
            Op::Burst { n, len } => {
                // Each queued append reserves its size plus a header until written.
                let reserve = segment::record_size(len) + HEADER_LEN as u64;
                if model.closed || !model.fits(n as u64 * reserve - HEADER_LEN as u64) {
                    continue;
                }
                let datas: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; len]).collect();
                let futs = datas.iter().map(|d| outbox.append(Bytes::from(d.clone())));
                let offsets: Vec<Offset> = futures_util::future::join_all(futs)
                    .await
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|e| panic!("{ctx}: {e}")))
                    .collect();
                let base = model.next_offset();
                let mut sorted = offsets.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (base..base + n as u64).collect::<Vec<_>>(), "{ctx}");
                // Same lengths, so the segment layout does not depend on the order in the batch.
                let mut by_offset: Vec<(Offset, Vec<u8>)> =
                    offsets.into_iter().zip(datas).collect();
                by_offset.sort();
                for (_, d) in by_offset {
                    model.append(d);
                }
            }
            Op::Register { c } => {
                let got = outbox.consumer(NAMES[c]);
                if model.closed {
                    assert!(matches!(got, Err(OutboxError::Closed)), "{ctx}");
                } else if let std::collections::btree_map::Entry::Vacant(slot) = handles.entry(c) {
                    let h = got.unwrap();
                    model.register(c);
                    assert_eq!(h.committed(), model.consumers[&c].committed, "{ctx}");
                    slot.insert(h);
                } else {
                    assert!(matches!(got, Err(OutboxError::ConsumerBusy(_))), "{ctx}");
                }
            }
            Op::Read { c, max } => {
                let Some(h) = handles.get_mut(&c) else {
                    continue;
                };
                match model.read(c, max) {
                    Some(expected) => {
                        let got = tokio::time::timeout(Duration::from_secs(10), h.next_batch(max))
                            .await
                            .unwrap_or_else(|_| panic!("{ctx}: next_batch hung"));
                        assert_eq!(answer(got, records), expected, "{ctx}");
                    }
                    None => {
                        // Nothing durable past the cursor: it must wait, not return.
                        let got =
                            tokio::time::timeout(Duration::from_millis(20), h.next_batch(max))
                                .await;
                        assert!(got.is_err(), "{ctx}: returned {got:?} with nothing to read");
                    }
                }
            }
            Op::Commit { c, back } => {
                let Some(h) = handles.get_mut(&c) else {
                    continue;
                };
                let next = model.consumers[&c].next;
                let Some(through) = next.checked_sub(1 + back) else {
                    continue;
                };
                let got = answer(h.commit(through).await, |()| Answer::Done);
                assert_eq!(got, model.commit(c, through), "{ctx}");
                assert_eq!(h.committed(), model.consumers[&c].committed, "{ctx}");
            }
            Op::CommitBeyondEnd { c, ahead } => {
                let Some(h) = handles.get_mut(&c) else {
                    continue;
                };
                let through = model.next_offset() + ahead;
                let got = answer(h.commit(through).await, |()| Answer::Done);
                assert_eq!(got, model.commit(c, through), "{ctx}");
            }
            Op::Shutdown => {
                outbox.shutdown().await.unwrap();
                model.closed = true;
                // Appends after shutdown are refused as closed, not as full.
                let got = answer(
                    outbox.append(Bytes::from_static(b"late")).await,
                    Answer::Offset,
                );
                assert_eq!(got, Answer::Closed, "{ctx}");
            }
            Op::Reopen => {
                outbox.shutdown().await.unwrap();
                handles.clear();
                outbox = Outbox::open(&cfg).await.unwrap();
                model.closed = false;
                model.refused_full = 0;
                for c in model.consumers.keys().copied().collect::<Vec<_>>() {
                    handles.insert(c, outbox.consumer(NAMES[c]).unwrap());
                    model.register(c);
                }
                // What is on disk is what the model holds.
                let dumped = Outbox::dump(&cfg.dir).unwrap();
                let first = model.first();
                let expected: Vec<(Offset, Vec<u8>)> = (first..model.next_offset())
                    .map(|o| (o, model.data[o as usize].clone()))
                    .collect();
                assert_eq!(
                    answer(Ok(dumped), records),
                    Answer::Records(expected),
                    "{ctx}"
                );
            }
        }
        let s = outbox.stats();
        assert_eq!(s.next_offset, model.next_offset(), "{ctx}");
        assert_eq!(s.stored_bytes, model.stored(), "{ctx}");
        assert_eq!(s.segments, model.segments.len() as u64, "{ctx}");
        assert_eq!(s.refused_full, model.refused_full, "{ctx}");
        assert!(s.stored_bytes <= cfg.max_bytes, "{ctx}");
    }
    outbox.shutdown().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn outbox_matches_model(
        max_bytes in prop_oneof![Just(400u64), Just(900), 900u64..4000],
        segment_bytes in 60u64..400,
        max_batch in 1usize..6,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = OutboxConfig {
            dir: dir.path().join("ob"),
            max_bytes,
            segment_bytes,
            max_batch,
            group_commit_window: Duration::from_millis(2),
            derived_reserve_bytes: 0,
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(cfg, ops));
    }
}

#[tokio::test]
async fn model_smoke_sequence() {
    // A fixed sequence through full, release and reopen, so a regression shows without shrinking.
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        dir: dir.path().to_owned(),
        max_bytes: 400,
        segment_bytes: 100,
        ..OutboxConfig::default()
    };
    let mut ops = vec![Op::Register { c: 0 }];
    ops.extend((0..12).map(|i| Op::Append { len: 30, fill: i }));
    ops.extend([
        Op::Read { c: 0, max: 5 },
        Op::Commit { c: 0, back: 0 },
        Op::Read { c: 0, max: 5 },
        Op::Commit { c: 0, back: 0 },
    ]);
    ops.extend((0..4).map(|i| Op::Append {
        len: 30,
        fill: 100 + i,
    }));
    ops.extend([
        Op::Reopen,
        Op::Read { c: 0, max: 50 },
        Op::Commit { c: 0, back: 0 },
        Op::Append { len: 1, fill: 1 },
    ]);
    run(cfg, ops).await;
}
