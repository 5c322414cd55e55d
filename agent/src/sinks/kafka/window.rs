//! The in-flight window: which outbox records have been handed to the producer, which of them
//! are settled (delivered or dead-lettered), and therefore how far the cursor may be committed.
//!
//! Deliveries complete out of order (partitions, retries, re-produced timeouts), but the outbox
//! cursor is a single offset: it may only move past a record once every record before it is
//! settled too. A later success must never commit past an earlier record still pending, or a
//! crash would lose that record (the Vector #14259 failure, with the cursor instead of a timeout).
//! Pure data, no I/O, so the rule is tested without a broker.

use std::collections::VecDeque;

use crate::outbox::Offset;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    offset: Offset,
    bytes: usize,
    received_at_ms: u64,
    settled: bool,
}

/// Bounded by records and bytes; `has_room` is what stops the sink from reading further.
#[derive(Debug)]
pub struct CommitWindow {
    slots: VecDeque<Slot>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
    /// Highest settled offset with nothing unsettled before it, not yet handed out to commit.
    committable: Option<Offset>,
    /// Highest offset ever pushed: offsets must keep increasing even after the window empties.
    last_pushed: Option<Offset>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("offset {offset} is not above the last one in the window ({last})")]
    OutOfOrder { offset: Offset, last: Offset },
    #[error("offset {0} is not in the window")]
    Unknown(Offset),
}

impl CommitWindow {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            slots: VecDeque::new(),
            bytes: 0,
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            committable: None,
            last_pushed: None,
        }
    }

    /// Whether another record may be read. An empty window always has room, so that a record
    /// larger than `max_bytes` still goes through (alone).
    pub fn has_room(&self) -> bool {
        self.slots.is_empty()
            || (self.slots.len() < self.max_records && self.bytes < self.max_bytes)
    }

    /// Records a record handed to the producer. Offsets must increase (outbox order); gaps are
    /// fine (corrupt records the outbox skipped).
    pub fn push(
        &mut self,
        offset: Offset,
        bytes: usize,
        received_at_ms: u64,
    ) -> Result<(), WindowError> {
        if let Some(last) = self.last_pushed.filter(|&l| offset <= l) {
            return Err(WindowError::OutOfOrder { offset, last });
        }
        self.last_pushed = Some(offset);
        self.slots.push_back(Slot {
            offset,
            bytes,
            received_at_ms,
            settled: false,
        });
        self.bytes += bytes;
        Ok(())
    }

    /// Marks `offset` as done (delivered or dead-lettered) and advances the committable point
    /// over every settled record at the front.
    pub fn settle(&mut self, offset: Offset) -> Result<(), WindowError> {
        let idx = self
            .slots
            .binary_search_by_key(&offset, |s| s.offset)
            .map_err(|_| WindowError::Unknown(offset))?;
        self.slots[idx].settled = true;
        while let Some(front) = self.slots.front().filter(|s| s.settled) {
            self.committable = Some(front.offset);
            self.bytes -= front.bytes;
            self.slots.pop_front();
        }
        Ok(())
    }

    /// Highest offset through which everything is settled and not yet taken by `take_commit`.
    pub fn take_commit(&mut self) -> Option<Offset> {
        self.committable.take()
    }

    pub fn pending_commit(&self) -> Option<Offset> {
        self.committable
    }

    /// Records in the window (handed out, not yet settled or not yet past an unsettled one).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Receive time of the oldest record not yet settled-and-passed; for the lag figures.
    pub fn oldest_received_ms(&self) -> Option<u64> {
        self.slots.front().map(|s| s.received_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_success_does_not_commit_past_an_earlier_pending_record() {
        let mut w = CommitWindow::new(10, 1 << 20);
        for o in 0..4 {
            w.push(o, 10, 1000 + o).unwrap();
        }
        w.settle(1).unwrap();
        w.settle(3).unwrap();
        assert_eq!(w.take_commit(), None, "0 is still pending");
        assert_eq!(w.oldest_received_ms(), Some(1000));
        w.settle(0).unwrap();
        assert_eq!(w.take_commit(), Some(1), "2 is still pending");
        assert_eq!(w.take_commit(), None, "taken once");
        assert_eq!(w.len(), 2);
        w.settle(2).unwrap();
        assert_eq!(w.take_commit(), Some(3));
        assert!(w.is_empty());
        assert_eq!(w.bytes(), 0);
        assert_eq!(w.oldest_received_ms(), None);
    }

    #[test]
    fn gaps_in_offsets_are_fine_but_order_is_enforced() {
        let mut w = CommitWindow::new(10, 1 << 20);
        w.push(5, 1, 0).unwrap();
        w.push(9, 1, 0).unwrap();
        assert_eq!(
            w.push(9, 1, 0),
            Err(WindowError::OutOfOrder { offset: 9, last: 9 })
        );
        assert_eq!(w.settle(7), Err(WindowError::Unknown(7)));
        w.settle(9).unwrap();
        w.settle(5).unwrap();
        assert_eq!(w.take_commit(), Some(9));
        // Still ordered after the window emptied.
        assert!(w.push(8, 1, 0).is_err());
        w.push(10, 1, 0).unwrap();
    }

    #[test]
    fn bounded_by_records_and_bytes_but_one_oversized_record_passes_alone() {
        let mut w = CommitWindow::new(2, 100);
        assert!(w.has_room());
        w.push(0, 10, 0).unwrap();
        w.push(1, 10, 0).unwrap();
        assert!(!w.has_room(), "record bound");
        w.settle(0).unwrap();
        assert!(w.has_room());
        let mut w = CommitWindow::new(100, 100);
        w.push(0, 500, 0).unwrap();
        assert!(!w.has_room(), "byte bound");
        w.settle(0).unwrap();
        assert!(w.has_room());
    }

    #[test]
    fn settling_twice_is_harmless() {
        let mut w = CommitWindow::new(10, 100);
        w.push(0, 1, 0).unwrap();
        w.push(1, 1, 0).unwrap();
        w.settle(1).unwrap();
        w.settle(1).unwrap();
        w.settle(0).unwrap();
        assert_eq!(w.take_commit(), Some(1));
        assert_eq!(w.settle(0), Err(WindowError::Unknown(0)), "already passed");
    }
}
