//! The local subscriber registry: who listens to what, and the bounded
//! queue each listener reads from.
//!
//! Owns: fan-out of one event to every matching subscriber (each event is
//! `Arc`-shared, so a delivery is a pointer push), the once-per-subscriber
//! rule when several of its patterns match, and cutting off a subscriber
//! whose queue is full: it is removed at once and its queue is closed,
//! so the transport closes it with 1008 and its memory is freed. A full
//! queue never makes the publisher wait.
//!
//! Does not own: locking. The owner (a hub) keeps this inside the same lock
//! as its seq counter, which is what makes registration atomic with publish.

use std::sync::Arc;

use slab::Slab;
use tracing::warn;

use super::queue::{ClientQueue, PushError};
use super::topics::any_matches;
use super::topics::{Pattern, PatternIndex};
use super::{Delivery, Epoch, Event, HubError, HubStats, Reset, Seq, SubscriberId};

struct Subscriber {
    serial: u64,
    patterns: Vec<Pattern>,
    queue: Arc<ClientQueue>,
    /// Seq of the last event queued: a second matching pattern is a no-op.
    last_seq: Seq,
}

/// What `add` hands to the transport.
pub struct Registration {
    pub id: SubscriberId,
    pub queue: Arc<ClientQueue>,
}

#[derive(Default)]
pub struct Subscribers {
    slots: Slab<Subscriber>,
    index: PatternIndex<usize>,
    next_serial: u64,
    /// Deliveries queued since start.
    pub delivered_total: u64,
    /// Deliveries that found a full queue since start.
    pub dropped_total: u64,
    /// Subscribers cut off for being slow since start.
    pub cut_off_total: u64,
}

impl Subscribers {
    /// Registers a subscriber that has seen everything up to `seq`.
    pub fn add(&mut self, patterns: Vec<Pattern>, seq: Seq, capacity: usize) -> Registration {
        let queue = Arc::new(ClientQueue::new(capacity));
        self.next_serial += 1;
        let serial = self.next_serial;
        let slot = self.slots.insert(Subscriber {
            serial,
            patterns: Vec::new(),
            queue: queue.clone(),
            last_seq: seq,
        });
        let id = SubscriberId { slot, serial };
        self.add_patterns(id, &patterns);
        Registration { id, queue }
    }

    /// Adds the patterns the subscriber does not hold yet; answers those.
    pub fn add_patterns(&mut self, id: SubscriberId, patterns: &[Pattern]) -> Option<Vec<Pattern>> {
        let subscriber = self
            .slots
            .get_mut(id.slot)
            .filter(|s| s.serial == id.serial)?;
        let mut added = Vec::new();
        for pattern in patterns {
            if !subscriber.patterns.contains(pattern) && !added.contains(pattern) {
                added.push(pattern.clone());
            }
        }
        for pattern in &added {
            self.index.insert(pattern, id.slot);
        }
        subscriber.patterns.extend(added.iter().cloned());
        Some(added)
    }

    pub fn remove_patterns(
        &mut self,
        id: SubscriberId,
        patterns: &[Pattern],
    ) -> Result<(), HubError> {
        let Some(subscriber) = self
            .slots
            .get_mut(id.slot)
            .filter(|s| s.serial == id.serial)
        else {
            return Err(HubError::UnknownSubscriber);
        };
        for pattern in patterns {
            if let Some(at) = subscriber.patterns.iter().position(|p| p == pattern) {
                subscriber.patterns.swap_remove(at);
                self.index.remove(pattern, id.slot);
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, id: SubscriberId) {
        if self
            .slots
            .get(id.slot)
            .is_some_and(|s| s.serial == id.serial)
        {
            self.remove_slot(id.slot);
        }
    }

    fn remove_slot(&mut self, slot: usize) {
        let subscriber = self.slots.remove(slot);
        // A reader still waiting learns it is out once the queue drains.
        subscriber.queue.close();
        for pattern in &subscriber.patterns {
            self.index.remove(pattern, slot);
        }
    }

    /// Queues `event` for every matching subscriber; cuts off the ones whose
    /// queue is full. Returns how many queues it reached.
    pub fn deliver(&mut self, event: &Arc<Event>) -> usize {
        let mut delivered = 0;
        let mut too_slow = Vec::new();
        let slots = &mut self.slots;
        self.index.for_each_match(&event.topic, |slot| {
            let Some(subscriber) = slots.get_mut(slot) else {
                return;
            };
            if subscriber.last_seq >= event.seq {
                return;
            }
            subscriber.last_seq = event.seq;
            match subscriber.queue.push(Delivery::Event(event.clone())) {
                Ok(()) => delivered += 1,
                Err(PushError::Full) => too_slow.push(slot),
                // The transport is gone and will unsubscribe; nothing to do.
                Err(PushError::Closed) => {}
            }
        });
        self.delivered_total += delivered as u64;
        self.dropped_total += too_slow.len() as u64;
        self.cut_off(too_slow, event.seq);
        delivered
    }

    /// Queues `event` for one subscriber only (a backfill), if it matches.
    pub fn deliver_to(&mut self, id: SubscriberId, event: &Arc<Event>) {
        let Some(subscriber) = self
            .slots
            .get_mut(id.slot)
            .filter(|s| s.serial == id.serial)
        else {
            return;
        };
        if subscriber.last_seq >= event.seq || !any_matches(&subscriber.patterns, &event.topic) {
            return;
        }
        subscriber.last_seq = event.seq;
        match subscriber.queue.push(Delivery::Event(event.clone())) {
            Ok(()) => self.delivered_total += 1,
            Err(PushError::Full) => self.cut_off(vec![id.slot], event.seq),
            Err(PushError::Closed) => {}
        }
    }

    /// Tells every subscriber its stream restarts at (`epoch`, `seq`) with
    /// `retained` as the state (each gets the part its patterns match).
    pub fn reset(&mut self, epoch: &Epoch, seq: Seq, retained: &[Arc<Event>]) {
        let mut too_slow = Vec::new();
        for (slot, subscriber) in self.slots.iter_mut() {
            let state: Vec<Arc<Event>> = retained
                .iter()
                .filter(|event| any_matches(&subscriber.patterns, &event.topic))
                .cloned()
                .collect();
            let reset = Reset {
                epoch: epoch.clone(),
                seq,
                frame: crate::protocol::reset_frame(epoch, seq, &state).into(),
            };
            subscriber.last_seq = seq;
            match subscriber.queue.push(Delivery::Reset(Arc::new(reset))) {
                Ok(()) => {}
                Err(PushError::Full) => too_slow.push(slot),
                Err(PushError::Closed) => {}
            }
        }
        self.cut_off(too_slow, seq);
    }

    fn cut_off(&mut self, too_slow: Vec<usize>, seq: Seq) {
        for slot in too_slow {
            if let Some(subscriber) = self.slots.get(slot) {
                warn!(
                    subscriber = subscriber.serial,
                    seq, "client queue full; cutting it off"
                );
            }
            self.cut_off_total += 1;
            self.remove_slot(slot);
        }
    }

    /// Totals for metrics; the owner knows what it published and keeps.
    pub fn stats(&self, published: u64, history_len: usize) -> HubStats {
        HubStats {
            published,
            delivered: self.delivered_total,
            dropped: self.dropped_total,
            cut_off: self.cut_off_total,
            history_len,
            subscribers: self.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Publication, Topic};
    use serde_json::value::RawValue;

    fn event(seq: Seq, topic: &str) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            Publication {
                topic: Topic::parse(topic).unwrap(),
                data: RawValue::from_string(seq.to_string()).unwrap(),
                retain: true,
            },
        ))
    }

    #[test]
    fn a_reset_carries_each_subscriber_its_own_state_and_moves_its_seq() {
        let mut subscribers = Subscribers::default();
        let a = subscribers.add(vec![Pattern::parse("a/#").unwrap()], 0, 8);
        let b = subscribers.add(vec![Pattern::parse("b").unwrap()], 0, 8);
        let epoch = Epoch::from_string("new");
        subscribers.reset(&epoch, 7, &[event(3, "a/x"), event(7, "b")]);
        let Some(Delivery::Reset(reset)) = a.queue.try_pop() else {
            panic!("no reset for a")
        };
        assert_eq!(
            reset.frame.as_str(),
            r#"{"type":"reset","epoch":"new","seq":7,"state":{"a/x":{"seq":3,"data":3}}}"#
        );
        let Some(Delivery::Reset(reset)) = b.queue.try_pop() else {
            panic!("no reset for b")
        };
        assert!(reset
            .frame
            .as_str()
            .contains(r#""state":{"b":{"seq":7,"data":7}}"#));
        // Events the reset already covers are not delivered again.
        assert_eq!(subscribers.deliver(&event(6, "a/y")), 0);
        assert_eq!(subscribers.deliver(&event(8, "a/y")), 1);
        assert_eq!(a.queue.try_pop().map(|d| d.seq()), Some(8));
    }
}
