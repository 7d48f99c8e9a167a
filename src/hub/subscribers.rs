//! The local subscriber registry: who listens to what, and the bounded
//! queue each listener reads from.
//!
//! Owns: fan-out of one event to every matching subscriber (each event is
//! `Arc`-shared, so a delivery is a pointer push), the once-per-subscriber
//! rule when several of its patterns match, MAX_PATTERNS_PER_CLIENT (a
//! subscribe that would leave a client with more distinct patterns fails
//! with [`HubError::TooManyPatterns`] and changes nothing; patterns are
//! deduplicated with a set), and cutting off a subscriber whose queue is
//! full: it is removed at once and its queue is closed, so the transport
//! closes it with 1008 and its memory is freed. A full queue never makes
//! the publisher wait.
//!
//! Each pattern remembers the seq it was added at: events at or below it
//! came with the pattern's state (the hello or the `subscribed` answer), so
//! that pattern does not deliver them again. That is what lets a hub add
//! patterns without first draining the events still waiting for fan-out.
//!
//! Direct writes: [`Subscribers::deliver`] with `direct` queues with
//! [`ClientQueue::push_direct`] and collects the queues that owe a flush;
//! the owner runs them ([`AfterUnlock::run`]) once its lock is released, so
//! the writes to idle clients' sockets happen under no hub lock.
//!
//! Does not own: locking, or logging. The owner (a hub) keeps this inside
//! its lock; cut-offs and flushes are collected
//! ([`Subscribers::take_after_unlock`]) so the owner logs and writes them
//! after releasing it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use slab::Slab;
use tracing::{debug, warn};

use super::queue::{ClientQueue, PushError};
use super::retained::RetainedState;
use super::topics::{Pattern, PatternIndex};
use super::{Delivery, Epoch, Event, HubError, HubStats, Reset, Seq, SubscriberId};

struct Subscriber {
    serial: u64,
    /// Its patterns, each with the seq it was added at.
    patterns: PatternSet,
    queue: Arc<ClientQueue>,
    /// Seq of the last event queued: a second matching pattern is a no-op.
    last_seq: Seq,
}

/// Past this many patterns a subscriber's set is a hash map; up to it, a
/// list (one small allocation, where even an empty-ish hash map costs ~200
/// bytes); one pattern (what almost every client holds) is kept inline,
/// with no allocation.
const FEW_PATTERNS: usize = 16;

/// A subscriber's distinct patterns, each with the seq it was added at.
enum PatternSet {
    /// Exactly one.
    One((Pattern, Seq)),
    /// None, or 2 to FEW_PATTERNS (a list emptied by removals may hold
    /// one).
    Few(Vec<(Pattern, Seq)>),
    /// Boxed: rare, and inline (48 bytes) it would make the set, and so
    /// every subscriber, 8 bytes larger.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Pattern, Seq>>),
}

impl PatternSet {
    fn with_capacity(capacity: usize) -> PatternSet {
        if capacity > FEW_PATTERNS {
            PatternSet::Many(Box::new(HashMap::with_capacity(capacity)))
        } else if capacity > 1 {
            PatternSet::Few(Vec::with_capacity(capacity))
        } else {
            PatternSet::Few(Vec::new())
        }
    }

    /// The set as a list, unless it is a hash map.
    fn as_list(&self) -> Option<&[(Pattern, Seq)]> {
        match self {
            PatternSet::One(pair) => Some(std::slice::from_ref(pair)),
            PatternSet::Few(list) => Some(list),
            PatternSet::Many(_) => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            PatternSet::Many(map) => map.len(),
            listed => listed.as_list().map_or(0, <[_]>::len),
        }
    }

    fn contains(&self, pattern: &Pattern) -> bool {
        match self {
            PatternSet::Many(map) => map.contains_key(pattern),
            listed => listed
                .as_list()
                .is_some_and(|list| list.iter().any(|(held, _)| held == pattern)),
        }
    }

    /// Adds a pattern the set does not hold.
    fn insert(&mut self, pattern: Pattern, added_at: Seq) {
        match self {
            PatternSet::Few(list) if list.is_empty() && list.capacity() == 0 => {
                *self = PatternSet::One((pattern, added_at));
            }
            PatternSet::One(_) => {
                if let PatternSet::One(held) = std::mem::replace(self, PatternSet::Few(Vec::new()))
                {
                    *self = PatternSet::Few(vec![held, (pattern, added_at)]);
                }
            }
            PatternSet::Few(list) if list.len() < FEW_PATTERNS => list.push((pattern, added_at)),
            PatternSet::Few(list) => {
                let mut map: HashMap<Pattern, Seq> = list.drain(..).collect();
                map.insert(pattern, added_at);
                *self = PatternSet::Many(Box::new(map));
            }
            PatternSet::Many(map) => {
                map.insert(pattern, added_at);
            }
        }
    }

    /// Removes a pattern; answers the seq it was added at.
    fn remove(&mut self, pattern: &Pattern) -> Option<Seq> {
        match self {
            PatternSet::One((held, _)) if held == pattern => {
                match std::mem::replace(self, PatternSet::Few(Vec::new())) {
                    PatternSet::One((_, at)) => Some(at),
                    _ => None,
                }
            }
            PatternSet::One(_) => None,
            PatternSet::Few(list) => {
                let at = list.iter().position(|(held, _)| held == pattern)?;
                Some(list.swap_remove(at).1)
            }
            PatternSet::Many(map) => map.remove(pattern),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Pattern, &Seq)> + '_ {
        let list = match self {
            PatternSet::Many(map) => return Either::Many(map.iter()),
            PatternSet::One(pair) => std::slice::from_ref(pair),
            PatternSet::Few(list) => list.as_slice(),
        };
        Either::Few(list.iter().map(|(pattern, seq)| (pattern, seq)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&Pattern, &mut Seq)> + '_ {
        let list = match self {
            PatternSet::Many(map) => return Either::Many(map.iter_mut()),
            PatternSet::One(pair) => std::slice::from_mut(pair),
            PatternSet::Few(list) => list.as_mut_slice(),
        };
        Either::Few(list.iter_mut().map(|(pattern, seq)| (&*pattern, seq)))
    }
}

/// One iterator type for both shapes of a [`PatternSet`].
enum Either<A, B> {
    Few(A),
    Many(B),
}

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for Either<A, B> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            Either::Few(few) => few.next(),
            Either::Many(many) => many.next(),
        }
    }
}

/// What `add` hands to the transport.
pub struct Registration {
    pub id: SubscriberId,
    pub queue: Arc<ClientQueue>,
}

/// A subscriber cut off for a full queue, for the owner to log once it has
/// released its lock.
#[derive(Debug)]
pub struct CutOff {
    pub subscriber: u64,
    pub seq: Seq,
}

/// With this many direct writes owed after one fan-out, half are handed
/// to another task (see [`AfterUnlock::run`]).
const SPLIT_FLUSHES: usize = 1024;

/// What the owner does once it has released its lock: log the cut-offs
/// and write queued deliveries straight to idle clients' sockets.
#[derive(Default)]
pub struct AfterUnlock {
    cut_offs: Vec<CutOff>,
    flushes: Vec<Arc<ClientQueue>>,
}

impl AfterUnlock {
    /// Call with no hub lock held. A long list of writes is split: half
    /// goes to a task of its own, so both cores of a busy runtime write
    /// (the last client's latency is that of the longest half). Order
    /// holds: a client's writes are serialised by its queue's lock, and a
    /// later event finds the flush still owed and rides along with it.
    pub fn run(mut self) {
        if self.flushes.len() >= SPLIT_FLUSHES {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let half = self.flushes.split_off(self.flushes.len() / 2);
                runtime.spawn(async move { flush(&half) });
            }
        }
        flush(&self.flushes);
        for cut_off in self.cut_offs {
            warn!(
                subscriber = cut_off.subscriber,
                seq = cut_off.seq,
                "client queue full; cutting it off"
            );
        }
    }

    /// The cut-offs in it (tests).
    pub fn cut_offs(&self) -> &[CutOff] {
        &self.cut_offs
    }
}

/// Writes what `queues` hold straight to their sockets (see `queue`).
fn flush(queues: &[Arc<ClientQueue>]) {
    let stopped_inside = queues.iter().filter(|queue| queue.flush()).count();
    if stopped_inside > 0 {
        // Tests count on it: the rest of each is the client task's to write.
        debug!(
            clients = stopped_inside,
            "direct writes stopped inside a delivery"
        );
    }
}

/// The distinct patterns of `patterns`, or `TooManyPatterns` when there are
/// more than `limit` of them: a check that needs no lock, so a flood of
/// patterns is refused before the hub takes any.
pub fn distinct_patterns(patterns: Vec<Pattern>, limit: usize) -> Result<Vec<Pattern>, HubError> {
    let mut seen = HashSet::with_capacity(patterns.len().min(limit.saturating_add(1)));
    let mut distinct = Vec::with_capacity(seen.capacity());
    for pattern in patterns {
        if !seen.contains(&pattern) {
            if distinct.len() == limit {
                return Err(HubError::TooManyPatterns { limit });
            }
            seen.insert(pattern.clone());
            distinct.push(pattern);
        }
    }
    Ok(distinct)
}

pub struct Subscribers {
    slots: Slab<Subscriber>,
    /// Pattern → (slot, seq the pattern was added at).
    index: PatternIndex<(usize, Seq)>,
    next_serial: u64,
    /// MAX_PATTERNS_PER_CLIENT.
    max_patterns: usize,
    /// Cut off, and queues owing a flush, since the owner last took them.
    after_unlock: AfterUnlock,
    /// Deliveries queued since start.
    pub delivered_total: u64,
    /// Deliveries that found a full queue since start.
    pub dropped_total: u64,
    /// Subscribers cut off for being slow since start.
    pub cut_off_total: u64,
}

impl Default for Subscribers {
    /// No pattern limit (unit tests).
    fn default() -> Self {
        Subscribers::new(usize::MAX)
    }
}

impl Subscribers {
    /// A registry where each subscriber holds at most `max_patterns`.
    pub fn new(max_patterns: usize) -> Subscribers {
        Subscribers {
            slots: Slab::new(),
            index: PatternIndex::default(),
            next_serial: 0,
            max_patterns,
            after_unlock: AfterUnlock::default(),
            delivered_total: 0,
            dropped_total: 0,
            cut_off_total: 0,
        }
    }

    pub fn max_patterns(&self) -> usize {
        self.max_patterns
    }

    /// Registers a subscriber that has seen everything up to `seq`; refuses
    /// (registering nothing) more than MAX_PATTERNS_PER_CLIENT patterns.
    pub fn add(
        &mut self,
        patterns: &[Pattern],
        seq: Seq,
        capacity: usize,
    ) -> Result<Registration, HubError> {
        let queue = Arc::new(ClientQueue::new(capacity));
        self.next_serial += 1;
        let serial = self.next_serial;
        let slot = self.slots.insert(Subscriber {
            serial,
            patterns: PatternSet::with_capacity(patterns.len().min(self.max_patterns)),
            queue: queue.clone(),
            last_seq: seq,
        });
        let id = SubscriberId { slot, serial };
        if let Err(error) = self.add_patterns(id, patterns, seq) {
            self.slots.remove(slot);
            return Err(error);
        }
        Ok(Registration { id, queue })
    }

    /// Adds the patterns the subscriber does not hold yet, as of `seq` (its
    /// state up to `seq` is answered with them); answers those. Past
    /// MAX_PATTERNS_PER_CLIENT nothing is added.
    pub fn add_patterns(
        &mut self,
        id: SubscriberId,
        patterns: &[Pattern],
        seq: Seq,
    ) -> Result<Vec<Pattern>, HubError> {
        let subscriber = self
            .slots
            .get_mut(id.slot)
            .filter(|s| s.serial == id.serial)
            .ok_or(HubError::UnknownSubscriber)?;
        let mut added = Vec::new();
        let mut seen = HashSet::new();
        for pattern in patterns {
            if subscriber.patterns.contains(pattern) || !seen.insert(pattern) {
                continue;
            }
            if subscriber.patterns.len() + added.len() >= self.max_patterns {
                return Err(HubError::TooManyPatterns {
                    limit: self.max_patterns,
                });
            }
            added.push(pattern.clone());
        }
        for pattern in &added {
            subscriber.patterns.insert(pattern.clone(), seq);
            self.index.insert(pattern, (id.slot, seq));
        }
        Ok(added)
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
            if let Some(added_at) = subscriber.patterns.remove(pattern) {
                self.index.remove(pattern, (id.slot, added_at));
            }
        }
        Ok(())
    }

    /// How many patterns the subscriber holds (`None`: not registered).
    pub fn pattern_count(&self, id: SubscriberId) -> Option<usize> {
        self.slots
            .get(id.slot)
            .filter(|s| s.serial == id.serial)
            .map(|s| s.patterns.len())
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
        for (pattern, added_at) in subscriber.patterns.iter() {
            self.index.remove(pattern, (slot, *added_at));
        }
    }

    /// Queues `event` for every matching subscriber; cuts off the ones whose
    /// queue is full. Returns how many queues it reached. With `direct`,
    /// idle clients get it written to their socket by the owner's
    /// [`AfterUnlock::run`] (for when the fan-out keeps up: with events
    /// piling up, waking each client's task to write them in one go is
    /// cheaper).
    pub fn deliver(&mut self, event: &Arc<Event>, direct: bool) -> usize {
        let mut delivered = 0;
        let mut too_slow = Vec::new();
        let slots = &mut self.slots;
        let flushes = &mut self.after_unlock.flushes;
        self.index.for_each_match(&event.topic, |(slot, added_at)| {
            // The pattern's state, answered when it was added, covers it.
            if event.seq <= added_at {
                return;
            }
            let Some(subscriber) = slots.get_mut(slot) else {
                return;
            };
            if subscriber.last_seq >= event.seq {
                return;
            }
            subscriber.last_seq = event.seq;
            let delivery = Delivery::Event(event.clone());
            let pushed = if direct {
                subscriber.queue.push_direct(delivery)
            } else {
                subscriber.queue.push(delivery).map(|()| false)
            };
            match pushed {
                Ok(owed) => {
                    delivered += 1;
                    if owed {
                        flushes.push(subscriber.queue.clone());
                    }
                }
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
        let matches = subscriber
            .patterns
            .iter()
            .any(|(pattern, added_at)| event.seq > *added_at && pattern.matches(&event.topic));
        if subscriber.last_seq >= event.seq || !matches {
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
    /// Every pattern counts as added at `seq`: the seqs of the old stream
    /// mean nothing in the new one, so events after `seq` (a replay of the
    /// new epoch from its start included) are all delivered.
    pub fn reset(&mut self, epoch: &Epoch, seq: Seq, retained: &RetainedState) {
        let mut too_slow = Vec::new();
        let index = &mut self.index;
        for (slot, subscriber) in self.slots.iter_mut() {
            for (pattern, added_at) in subscriber.patterns.iter_mut() {
                if *added_at != seq {
                    index.remove(pattern, (slot, *added_at));
                    index.insert(pattern, (slot, seq));
                    *added_at = seq;
                }
            }
            let patterns: Vec<Pattern> = subscriber
                .patterns
                .iter()
                .map(|(pattern, _)| pattern.clone())
                .collect();
            let state = retained.matching(&patterns);
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
                self.after_unlock.cut_offs.push(CutOff {
                    subscriber: subscriber.serial,
                    seq,
                });
            }
            self.cut_off_total += 1;
            self.remove_slot(slot);
        }
    }

    /// The subscribers cut off and the queues owing a flush since the last
    /// call, to run once the owner's lock is released.
    pub fn take_after_unlock(&mut self) -> AfterUnlock {
        std::mem::take(&mut self.after_unlock)
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

    #[test]
    fn one_pattern_is_held_inline_and_the_set_changes_shape_as_it_grows() {
        println!(
            "pattern set: {} bytes, subscriber: {} bytes",
            std::mem::size_of::<PatternSet>(),
            std::mem::size_of::<Subscriber>()
        );
        // One pattern inline, in no more than the set took before (48).
        assert!(std::mem::size_of::<PatternSet>() <= 48);
        let pattern = |text: &str| Pattern::parse(text).unwrap();
        let mut set = PatternSet::with_capacity(1);
        set.insert(pattern("a"), 1);
        assert!(matches!(set, PatternSet::One(_)));
        assert!(set.contains(&pattern("a")) && !set.contains(&pattern("b")));
        set.insert(pattern("b"), 2);
        assert!(matches!(set, PatternSet::Few(_)));
        assert_eq!(set.len(), 2);
        assert_eq!(set.remove(&pattern("a")), Some(1));
        assert_eq!(set.remove(&pattern("b")), Some(2));
        assert_eq!(set.len(), 0);
        let mut set = PatternSet::with_capacity(1);
        set.insert(pattern("a"), 3);
        for (_, seq) in set.iter_mut() {
            *seq = 4;
        }
        assert_eq!(set.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(), [4]);
        assert_eq!(set.remove(&pattern("b")), None);
        assert_eq!(set.remove(&pattern("a")), Some(4));
        assert!(!set.contains(&pattern("a")));
        for n in 0..=FEW_PATTERNS {
            set.insert(pattern(&n.to_string()), 5);
        }
        assert!(matches!(set, PatternSet::Many(_)));
        assert_eq!(set.len(), FEW_PATTERNS + 1);
    }

    fn event(seq: Seq, topic: &str) -> Arc<Event> {
        Event::retained(seq, topic, &seq.to_string())
    }

    #[test]
    fn a_reset_carries_each_subscriber_its_own_state_and_moves_its_seq() {
        let mut subscribers = Subscribers::default();
        let a = subscribers
            .add(&[Pattern::parse("a/#").unwrap()], 0, 8)
            .unwrap();
        let b = subscribers
            .add(&[Pattern::parse("b").unwrap()], 0, 8)
            .unwrap();
        let epoch = Epoch::from_string("new");
        let mut retained = RetainedState::default();
        retained.insert(event(3, "a/x"));
        retained.insert(event(7, "b"));
        subscribers.reset(&epoch, 7, &retained);
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
        assert_eq!(subscribers.deliver(&event(6, "a/y"), false), 0);
        assert_eq!(subscribers.deliver(&event(8, "a/y"), false), 1);
        assert_eq!(a.queue.try_pop().map(|d| d.seq()), Some(8));
    }

    #[test]
    fn a_reset_to_a_new_epochs_start_delivers_its_replay_whatever_the_old_seqs() {
        let mut subscribers = Subscribers::default();
        // Patterns added at seq 10 of the old epoch.
        let client = subscribers.add(&patterns(["a".to_owned()]), 10, 8).unwrap();
        subscribers
            .add_patterns(client.id, &patterns(["b".to_owned()]), 12)
            .unwrap();
        subscribers.reset(&Epoch::from_string("new"), 0, &RetainedState::default());
        for seq in 1..=3 {
            assert_eq!(subscribers.deliver(&event(seq, "a"), false), 1);
        }
        assert_eq!(subscribers.deliver(&event(4, "b"), false), 1);
        let seqs: Vec<Seq> = std::iter::from_fn(|| client.queue.try_pop())
            .map(|d| d.seq())
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        // The index holds each pattern once: removing it stops delivery.
        subscribers
            .remove_patterns(client.id, &patterns(["a".to_owned()]))
            .unwrap();
        assert_eq!(subscribers.deliver(&event(5, "a"), false), 0);
    }

    fn patterns(texts: impl IntoIterator<Item = String>) -> Vec<Pattern> {
        texts
            .into_iter()
            .map(|t| Pattern::parse(&t).unwrap())
            .collect()
    }

    #[test]
    fn the_pattern_limit_counts_distinct_patterns_and_refuses_whole_requests() {
        let mut subscribers = Subscribers::new(4);
        let over = patterns((0..5).map(|i| format!("t/{i}")));
        assert!(matches!(
            subscribers.add(&over, 0, 8),
            Err(HubError::TooManyPatterns { limit: 4 })
        ));
        assert!(
            subscribers.is_empty(),
            "a refused subscribe registers nothing"
        );
        // Duplicates count once.
        let twice = patterns(["a", "a", "b", "b", "a"].map(String::from));
        let client = subscribers.add(&twice, 0, 8).unwrap();
        assert_eq!(subscribers.pattern_count(client.id), Some(2));
        // 2 held + 3 new > 4: nothing of it is added.
        let three = patterns(["c", "d", "e"].map(String::from));
        let error = subscribers.add_patterns(client.id, &three, 0).unwrap_err();
        assert_eq!(
            error.to_string(),
            "too many patterns: at most 4 per client (MAX_PATTERNS_PER_CLIENT)"
        );
        assert_eq!(subscribers.pattern_count(client.id), Some(2));
        assert_eq!(subscribers.deliver(&event(1, "c"), false), 0);
        // Held ones do not count again; up to the limit is fine.
        let two = patterns(["a", "c", "d", "c"].map(String::from));
        let added = subscribers.add_patterns(client.id, &two, 1).unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(subscribers.pattern_count(client.id), Some(4));
        assert_eq!(subscribers.deliver(&event(2, "d"), false), 1);
        // Removing makes room again.
        subscribers
            .remove_patterns(client.id, &patterns(["a".to_owned()]))
            .unwrap();
        assert!(subscribers
            .add_patterns(client.id, &patterns(["e".to_owned()]), 2)
            .is_ok());
        assert!(subscribers
            .add_patterns(client.id, &patterns(["f".to_owned()]), 2)
            .is_err());
        // The lock-free pre-check agrees.
        assert!(distinct_patterns(twice, 2).is_ok());
        assert!(distinct_patterns(over, 4).is_err());
    }

    #[test]
    fn a_set_past_the_few_patterns_a_list_holds_keeps_its_seqs_and_removals() {
        let mut subscribers = Subscribers::default();
        let client = subscribers
            .add(&patterns(["p/0".to_owned()]), 0, 64)
            .unwrap();
        // One at a time, past FEW_PATTERNS: the list becomes a map.
        for i in 1..FEW_PATTERNS + 4 {
            let added = subscribers
                .add_patterns(client.id, &patterns([format!("p/{i}")]), i as Seq)
                .unwrap();
            assert_eq!(added.len(), 1);
        }
        let count = FEW_PATTERNS + 4;
        assert_eq!(subscribers.pattern_count(client.id), Some(count));
        // Held ones are not added again, whichever shape holds them.
        let again = subscribers
            .add_patterns(
                client.id,
                &patterns(["p/0".to_owned(), "p/19".to_owned()]),
                99,
            )
            .unwrap();
        assert!(again.is_empty());
        // Each pattern kept the seq it was added at.
        assert_eq!(subscribers.deliver(&event(3, "p/5"), false), 0);
        assert_eq!(subscribers.deliver(&event(6, "p/5"), false), 1);
        subscribers
            .remove_patterns(client.id, &patterns(["p/5".to_owned()]))
            .unwrap();
        assert_eq!(subscribers.pattern_count(client.id), Some(count - 1));
        assert_eq!(subscribers.deliver(&event(30, "p/5"), false), 0);
        assert_eq!(subscribers.deliver(&event(31, "p/0"), false), 1);
    }

    #[test]
    fn a_pattern_does_not_deliver_what_its_state_already_covered() {
        let mut subscribers = Subscribers::default();
        let client = subscribers.add(&patterns(["a".to_owned()]), 0, 8).unwrap();
        // "b" is added as of seq 5: its state up to 5 went with it.
        subscribers
            .add_patterns(client.id, &patterns(["b".to_owned()]), 5)
            .unwrap();
        assert_eq!(subscribers.deliver(&event(3, "a"), false), 1);
        assert_eq!(subscribers.deliver(&event(4, "b"), false), 0);
        assert_eq!(subscribers.deliver(&event(6, "b"), false), 1);
        let seqs: Vec<Seq> = std::iter::from_fn(|| client.queue.try_pop())
            .map(|d| d.seq())
            .collect();
        assert_eq!(seqs, [3, 6]);
    }

    #[test]
    fn cut_offs_are_handed_to_the_owner_to_log() {
        let mut subscribers = Subscribers::default();
        let slow = subscribers.add(&[Pattern::everything()], 0, 1).unwrap();
        subscribers.deliver(&event(1, "t"), false);
        subscribers.deliver(&event(2, "t"), false);
        assert!(slow.queue.is_closed());
        let cut = subscribers.take_after_unlock();
        assert_eq!(cut.cut_offs().len(), 1);
        assert_eq!(cut.cut_offs()[0].seq, 2);
        assert!(subscribers.take_after_unlock().cut_offs().is_empty());
    }
}
