//! Pure bookkeeping of the MQTT sink, no I/O: which packet id stands for which record (the
//! commit window itself is the sinks' shared `sinks::window`).
//!
//! rumqttc's `publish().await` returns once the request is queued (rumqtt#349), so delivery is
//! learned only from `Incoming::PubAck(pkid)`. Packet ids are recycled (1..=inflight), hence
//! the mapping is rebuilt from the event loop's own `Outgoing::Publish(pkid)` events, which come
//! in request order.

use std::collections::{HashMap, VecDeque};

use crate::outbox::Offset;

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
