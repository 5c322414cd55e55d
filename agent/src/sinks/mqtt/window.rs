//! Pure bookkeeping of the MQTT sink, no I/O: which outbox records are out, which the broker
//! acknowledged, and which packet id stands for which record.
//!
//! rumqttc's `publish().await` returns once the request is queued (rumqtt#349), so delivery is
//! learned only from `Incoming::PubAck(pkid)`. Packet ids are recycled (1..=inflight), hence
//! the mapping is rebuilt from the event loop's own `Outgoing::Publish(pkid)` events, which come
//! in request order.

use std::collections::{HashMap, VecDeque};

use crate::outbox::Offset;

/// Records read from the outbox and not yet committed, in offset order. The cursor may only move
/// over a prefix that is entirely acknowledged: one record lost in the middle must hold back
/// every later commit, or a crash would skip it.
#[derive(Debug)]
pub struct CommitWindow<T> {
    /// `(offset, Some(data))` while unacknowledged, `(offset, None)` once acknowledged.
    entries: VecDeque<(Offset, Option<T>)>,
    cap: usize,
    unacked: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("commit window is full ({0} records)")]
    Full(usize),
    #[error("offset {offset} does not follow {last}")]
    OutOfOrder { offset: Offset, last: Offset },
}

impl<T> CommitWindow<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(cap.max(1)),
            cap: cap.max(1),
            unacked: 0,
        }
    }

    pub fn room(&self) -> usize {
        self.cap - self.entries.len()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records still waiting for their acknowledgement.
    pub fn unacked(&self) -> usize {
        self.unacked
    }

    pub fn push(&mut self, offset: Offset, data: T) -> Result<(), WindowError> {
        if self.entries.len() >= self.cap {
            return Err(WindowError::Full(self.cap));
        }
        if let Some(&(last, _)) = self.entries.back() {
            if offset <= last {
                return Err(WindowError::OutOfOrder { offset, last });
            }
        }
        self.entries.push_back((offset, Some(data)));
        self.unacked += 1;
        Ok(())
    }

    /// Marks `offset` delivered and gives its data back; `None` if it is not in the window or
    /// was acknowledged already (a duplicate ack must not count twice).
    pub fn ack(&mut self, offset: Offset) -> Option<T> {
        let i = self.entries.binary_search_by_key(&offset, |e| e.0).ok()?;
        let data = self.entries[i].1.take()?;
        self.unacked -= 1;
        Some(data)
    }

    /// Removes the acknowledged prefix and returns its last offset and length: what may be
    /// committed now.
    pub fn take_committable(&mut self) -> Option<(Offset, usize)> {
        let mut last = None;
        let mut n = 0;
        while let Some((off, None)) = self.entries.front() {
            last = Some(*off);
            n += 1;
            self.entries.pop_front();
        }
        last.map(|l| (l, n))
    }

    /// Unacknowledged records in offset order (what a new connection must publish again).
    pub fn unacked_iter(&self) -> impl Iterator<Item = (Offset, &T)> {
        self.entries
            .iter()
            .filter_map(|(o, d)| d.as_ref().map(|d| (*o, d)))
    }

    /// The oldest unacknowledged record.
    pub fn oldest_unacked(&self) -> Option<(Offset, &T)> {
        self.unacked_iter().next()
    }
}

/// What a QoS 1 publish stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Record(Offset),
    /// The retained availability message (`online`/`offline`): acknowledged but not a record.
    Status,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("packet id {0} announced with no publish queued")]
    Unexpected(u16),
    #[error("packet id {0} reused while still unacknowledged")]
    Reused(u16),
}

/// Maps packet ids to slots from the event loop's events.
#[derive(Debug, Default)]
pub struct PkidTracker {
    /// Handed to the client in this order; their packet ids are not known yet.
    queued: VecDeque<Slot>,
    /// rumqttc holds back a publish whose packet id is still in flight (out-of-order acks) and
    /// announces it with `AwaitAck(pkid)`; it goes out once that id is acknowledged.
    collided: Option<(u16, Slot)>,
    in_flight: HashMap<u16, Slot>,
}

impl PkidTracker {
    /// A publish was handed to the client.
    pub fn queued(&mut self, slot: Slot) {
        self.queued.push_back(slot);
    }

    /// `Outgoing::Publish(pkid)`.
    pub fn on_publish(&mut self, pkid: u16) -> Result<(), TrackError> {
        let slot = match self.collided.take() {
            Some((p, slot)) if p == pkid => slot,
            other => {
                self.collided = other;
                self.queued
                    .pop_front()
                    .ok_or(TrackError::Unexpected(pkid))?
            }
        };
        if self.in_flight.insert(pkid, slot).is_some() {
            return Err(TrackError::Reused(pkid));
        }
        Ok(())
    }

    /// `Outgoing::AwaitAck(pkid)`: the next queued publish waits for `pkid` to be acknowledged.
    pub fn on_await_ack(&mut self, pkid: u16) -> Result<(), TrackError> {
        let slot = self
            .queued
            .pop_front()
            .ok_or(TrackError::Unexpected(pkid))?;
        self.collided = Some((pkid, slot));
        Ok(())
    }

    /// `Incoming::PubAck(pkid)`: what was delivered, if anything of ours.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Slot> {
        self.in_flight.remove(&pkid)
    }

    /// The connection is gone: nothing sent on it will be acknowledged.
    pub fn reset(&mut self) {
        self.queued.clear();
        self.collided = None;
        self.in_flight.clear();
    }

    pub fn outstanding(&self) -> usize {
        self.queued.len() + self.in_flight.len() + self.collided.is_some() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_a_fully_acknowledged_prefix() {
        let mut w = CommitWindow::new(4);
        for o in [10, 11, 13, 14] {
            w.push(o, o).unwrap();
        }
        assert_eq!(w.push(15, 15), Err(WindowError::Full(4)));
        assert_eq!(w.ack(11), Some(11));
        assert_eq!(w.take_committable(), None, "10 is still out");
        assert_eq!(w.ack(10), Some(10));
        assert_eq!(w.take_committable(), Some((11, 2)));
        assert_eq!(w.ack(14), Some(14));
        assert_eq!(w.take_committable(), None, "13 holds back 14");
        assert_eq!(
            w.unacked_iter().map(|(o, _)| o).collect::<Vec<_>>(),
            vec![13]
        );
        assert_eq!(w.ack(14), None, "a duplicate ack does not count");
        assert_eq!(w.ack(99), None);
        w.ack(13);
        assert_eq!(w.take_committable(), Some((14, 2)));
        assert!(w.is_empty());
        assert_eq!(w.unacked(), 0);
    }

    #[test]
    fn offsets_must_increase() {
        let mut w = CommitWindow::new(4);
        w.push(5, ()).unwrap();
        assert_eq!(
            w.push(5, ()),
            Err(WindowError::OutOfOrder { offset: 5, last: 5 })
        );
        assert_eq!(
            w.push(3, ()),
            Err(WindowError::OutOfOrder { offset: 3, last: 5 })
        );
    }

    proptest! {
        /// Whatever order acks come in, a commit never covers an unacknowledged record, and
        /// once everything is acknowledged the commit reaches the last record.
        #[test]
        fn never_commits_past_an_unacked_record(n in 1usize..60, order in proptest::collection::vec(any::<u32>(), 60), gap in 1u64..3) {
            let offsets: Vec<u64> = (0..n as u64).map(|i| 100 + i * gap).collect();
            let mut w = CommitWindow::new(n);
            for &o in &offsets {
                w.push(o, ()).unwrap();
            }
            let mut acks = offsets.clone();
            acks.sort_by_key(|o| order[((*o - 100) / gap) as usize % order.len()]);
            let mut acked = std::collections::BTreeSet::new();
            let mut committed = None;
            for a in acks {
                prop_assert!(w.ack(a).is_some());
                acked.insert(a);
                if let Some((c, _)) = w.take_committable() {
                    prop_assert!(offsets.iter().filter(|&&o| o <= c).all(|o| acked.contains(o)));
                    prop_assert!(committed < Some(c));
                    committed = Some(c);
                }
            }
            prop_assert_eq!(committed, offsets.last().copied());
        }
    }

    #[test]
    fn packet_ids_map_in_request_order_and_survive_reuse() {
        let mut t = PkidTracker::default();
        t.queued(Slot::Status);
        t.queued(Slot::Record(0));
        t.queued(Slot::Record(1));
        t.on_publish(1).unwrap();
        t.on_publish(2).unwrap();
        t.on_publish(3).unwrap();
        assert_eq!(t.on_puback(2), Some(Slot::Record(0)));
        assert_eq!(t.on_puback(1), Some(Slot::Status));
        // Packet id 1 comes round again for a new record.
        t.queued(Slot::Record(2));
        t.on_publish(1).unwrap();
        assert_eq!(t.on_puback(1), Some(Slot::Record(2)));
        assert_eq!(t.on_puback(1), None, "a stray ack maps to nothing");
        assert_eq!(t.on_puback(3), Some(Slot::Record(1)));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn a_collided_publish_gets_its_id_when_released() {
        let mut t = PkidTracker::default();
        t.queued(Slot::Record(7));
        t.on_publish(1).unwrap();
        t.queued(Slot::Record(8));
        t.queued(Slot::Record(9));
        // Record 8 drew id 1 while 7 still holds it.
        t.on_await_ack(1).unwrap();
        // The ack of 7 arrives before rumqttc announces 8 with the same id.
        assert_eq!(t.on_puback(1), Some(Slot::Record(7)));
        t.on_publish(1).unwrap();
        t.on_publish(2).unwrap();
        assert_eq!(t.on_puback(1), Some(Slot::Record(8)));
        assert_eq!(t.on_puback(2), Some(Slot::Record(9)));
    }

    #[test]
    fn inconsistencies_are_reported_and_reset_forgets_everything() {
        let mut t = PkidTracker::default();
        assert_eq!(t.on_publish(4), Err(TrackError::Unexpected(4)));
        t.queued(Slot::Record(1));
        t.queued(Slot::Record(2));
        t.on_publish(4).unwrap();
        assert_eq!(t.on_publish(4), Err(TrackError::Reused(4)));
        t.queued(Slot::Record(3));
        t.reset();
        assert_eq!(t.outstanding(), 0);
        assert_eq!(
            t.on_puback(4),
            None,
            "an ack from the old connection maps to nothing"
        );
    }
}
