//! The commit window every forwarding sink keeps, pure data, no I/O: which outbox records have
//! been handed to the transport, which of them are settled (delivered, or set aside for good),
//! and therefore how far the sink's outbox cursor may be committed.
//!
//! Deliveries complete out of order (Kafka partitions and retries, MQTT packet ids), but the
//! cursor is a single offset: it may only move past a record once every record before it is
//! settled too. A later success must never commit past an earlier record still pending, or a
//! crash would lose that record (the Vector #14259 failure, with the cursor instead of a
//! timeout). Settled records at the front leave the window at once, so they free room before the
//! commit that covers them is taken.
//!
//! Each record carries the sink's own data `T` until it settles (the MQTT sink keeps what to
//! publish again after a reconnect; the Kafka sink the receive time, for the lag figures).

use std::collections::VecDeque;

use crate::outbox::Offset;

#[derive(Debug)]
struct Entry<T> {
    offset: Offset,
    bytes: usize,
    /// `Some` until settled.
    data: Option<T>,
}

/// Bounded by records and bytes: [`CommitWindow::has_room`] is what stops a sink from reading on.
#[derive(Debug)]
pub struct CommitWindow<T> {
    entries: VecDeque<Entry<T>>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
    unsettled: usize,
    /// Last offset and count of the settled prefix that left the window, not yet taken.
    committable: Option<(Offset, usize)>,
    /// Highest offset ever pushed: offsets must keep increasing even after the window empties.
    last_pushed: Option<Offset>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("offset {offset} is not above the last one in the window ({last})")]
    OutOfOrder { offset: Offset, last: Offset },
    /// For a sink to which settling an offset it never pushed (or settled) is a bug.
    #[error("offset {0} is not in the window")]
    Unknown(Offset),
}

impl<T> CommitWindow<T> {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            unsettled: 0,
            committable: None,
            last_pushed: None,
        }
    }

    /// Whether another record may be read. An empty window always has room, so that a record
    /// larger than `max_bytes` still goes through (alone).
    pub fn has_room(&self) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < self.max_records && self.bytes < self.max_bytes)
    }

    /// Records that may still be pushed under the record bound.
    pub fn room(&self) -> usize {
        self.max_records.saturating_sub(self.entries.len())
    }

    pub fn capacity(&self) -> usize {
        self.max_records
    }

    /// Records a record handed to the transport. Offsets must increase (outbox order); gaps are
    /// fine (corrupt records the outbox skipped). The bounds are the caller's to check: a sink
    /// may read one batch past them.
    pub fn push(&mut self, offset: Offset, bytes: usize, data: T) -> Result<(), WindowError> {
        if let Some(last) = self.last_pushed.filter(|&l| offset <= l) {
            return Err(WindowError::OutOfOrder { offset, last });
        }
        self.last_pushed = Some(offset);
        self.entries.push_back(Entry {
            offset,
            bytes,
            data: Some(data),
        });
        self.bytes += bytes;
        self.unsettled += 1;
        Ok(())
    }

    /// Marks `offset` settled and gives its data back; `None` if it is not in the window or was
    /// settled already (a duplicate acknowledgement must not count twice).
    pub fn settle(&mut self, offset: Offset) -> Option<T> {
        let i = self
            .entries
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()?;
        let data = self.entries[i].data.take()?;
        self.unsettled -= 1;
        while let Some(front) = self.entries.front().filter(|e| e.data.is_none()) {
            let n = self.committable.map_or(0, |(_, n)| n) + 1;
            self.committable = Some((front.offset, n));
            self.bytes -= front.bytes;
            self.entries.pop_front();
        }
        Some(data)
    }

    /// The data of an unsettled record, to update in place (the MQTT sink counts a record's
    /// outstanding publishes there).
    pub fn get_mut(&mut self, offset: Offset) -> Option<&mut T> {
        let i = self
            .entries
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()?;
        self.entries[i].data.as_mut()
    }

    /// The last offset of the settled prefix (everything through it is settled) and how many
    /// records it covers since the last call: what may be committed now. Taken once.
    pub fn take_committable(&mut self) -> Option<(Offset, usize)> {
        self.committable.take()
    }

    /// What [`CommitWindow::take_committable`] would return, without taking it.
    pub fn pending_commit(&self) -> Option<Offset> {
        self.committable.map(|(o, _)| o)
    }

    /// Records in the window (not settled, or settled behind an unsettled one).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records still waiting to settle.
    pub fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// Unsettled records in offset order (what a new connection must send again).
    pub fn unsettled_iter(&self) -> impl Iterator<Item = (Offset, &T)> {
        self.entries
            .iter()
            .filter_map(|e| e.data.as_ref().map(|d| (e.offset, d)))
    }

    /// The oldest unsettled record (the front of the window, since settled ones leave it).
    pub fn oldest_unsettled(&self) -> Option<(Offset, &T)> {
        self.unsettled_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_later_success_does_not_commit_past_an_earlier_pending_record() {
        let mut w = CommitWindow::new(10, 1 << 20);
        for o in 0..4 {
            w.push(o, 10, 1000 + o).unwrap();
        }
        assert_eq!(w.settle(1), Some(1001));
        w.settle(3).unwrap();
        assert_eq!(w.take_committable(), None, "0 is still pending");
        assert_eq!(w.oldest_unsettled(), Some((0, &1000)));
        w.settle(0).unwrap();
        assert_eq!(w.pending_commit(), Some(1));
        assert_eq!(w.take_committable(), Some((1, 2)), "2 is still pending");
        assert_eq!(w.take_committable(), None, "taken once");
        assert_eq!(w.len(), 2);
        w.settle(2).unwrap();
        assert_eq!(w.take_committable(), Some((3, 2)));
        assert!(w.is_empty());
        assert_eq!((w.bytes(), w.unsettled()), (0, 0));
        assert_eq!(w.oldest_unsettled(), None);
    }

    #[test]
    fn gaps_in_offsets_are_fine_but_order_is_enforced() {
        let mut w = CommitWindow::new(10, 1 << 20);
        w.push(5, 1, ()).unwrap();
        w.push(9, 1, ()).unwrap();
        assert_eq!(
            w.push(9, 1, ()),
            Err(WindowError::OutOfOrder { offset: 9, last: 9 })
        );
        assert_eq!(
            w.push(3, 1, ()),
            Err(WindowError::OutOfOrder { offset: 3, last: 9 })
        );
        assert_eq!(w.settle(7), None, "not in the window");
        w.settle(9).unwrap();
        w.settle(5).unwrap();
        assert_eq!(w.take_committable(), Some((9, 2)));
        // Still ordered after the window emptied.
        assert!(w.push(8, 1, ()).is_err());
        w.push(10, 1, ()).unwrap();
    }

    #[test]
    fn bounded_by_records_and_bytes_but_one_oversized_record_passes_alone() {
        let mut w = CommitWindow::new(2, 100);
        assert!(w.has_room());
        w.push(0, 10, ()).unwrap();
        w.push(1, 10, ()).unwrap();
        assert!(!w.has_room(), "record bound");
        assert_eq!(w.room(), 0);
        w.settle(0).unwrap();
        assert!(
            w.has_room(),
            "a settled front record frees room before the commit is taken"
        );
        let mut w = CommitWindow::new(100, 100);
        w.push(0, 500, ()).unwrap();
        assert!(!w.has_room(), "byte bound");
        w.settle(0).unwrap();
        assert!(w.has_room());
    }

    #[test]
    fn settling_twice_counts_once_and_unsettled_ones_are_listed_in_order() {
        let mut w = CommitWindow::new(4, usize::MAX);
        for o in [10, 11, 13, 14] {
            w.push(o, 0, o).unwrap();
        }
        assert_eq!(w.settle(14), Some(14));
        assert_eq!(w.settle(14), None, "a duplicate ack does not count");
        assert_eq!(w.unsettled(), 3);
        assert_eq!(
            w.unsettled_iter().map(|(o, _)| o).collect::<Vec<_>>(),
            vec![10, 11, 13]
        );
        assert_eq!(w.take_committable(), None, "10 holds back 14");
    }

    proptest! {
        /// Whatever order settlements come in, a commit never covers an unsettled record, the
        /// counts add up to every record, and once all settle the commit reaches the last one.
        #[test]
        fn never_commits_past_an_unsettled_record(n in 1usize..60, order in proptest::collection::vec(any::<u32>(), 60), gap in 1u64..3) {
            let offsets: Vec<u64> = (0..n as u64).map(|i| 100 + i * gap).collect();
            let mut w = CommitWindow::new(n, usize::MAX);
            for &o in &offsets {
                w.push(o, 1, ()).unwrap();
            }
            let mut acks = offsets.clone();
            acks.sort_by_key(|o| order[((*o - 100) / gap) as usize % order.len()]);
            let mut acked = std::collections::BTreeSet::new();
            let (mut committed, mut counted) = (None, 0);
            for a in acks {
                prop_assert!(w.settle(a).is_some());
                acked.insert(a);
                if let Some((c, k)) = w.take_committable() {
                    prop_assert!(offsets.iter().filter(|&&o| o <= c).all(|o| acked.contains(o)));
                    prop_assert!(committed < Some(c));
                    committed = Some(c);
                    counted += k;
                }
            }
            prop_assert_eq!(committed, offsets.last().copied());
            prop_assert_eq!(counted, n);
            prop_assert_eq!(w.bytes(), 0);
        }
    }
}
