//! The in-process hub: one epoch per process start, history and retained
//! state in memory.
//!
//! Publishing and fanning out are apart, so a publish is answered as soon
//! as its events have a seq, whatever the number of subscribers:
//!
//! - `state` (seq counter, history, retained state, and `pending`: accepted
//!   events not fanned out yet) is locked briefly by publish and snapshot;
//! - `subscribers` (the registry and the client queues) is locked by the
//!   fan-out, one event at a time, and by subscribe / unsubscribe;
//! - `fan_out` lets one fan-out run at a time, so events reach every queue
//!   in seq order.
//!
//! Lock order: `fan_out`, then `state`, then `subscribers`; no lock is held
//! across an `.await` (no hub method awaits) or while logging (cut-offs are
//! logged after the registry's lock is released). A subscriber registers,
//! under `state`, with the snapshot's seq as its last seen seq, and the
//! registry skips events at or below it: every event is either in its
//! snapshot or in its queue, never both, never neither, while `pending`
//! still holds events older than the snapshot. Patterns added later are
//! registered the same way, as of the seq their retained state is read at.
//!
//! Bounds: a subscribe's patterns are deduplicated and counted against
//! MAX_PATTERNS_PER_CLIENT before any lock is taken; under `state` it costs
//! the retained topics its patterns reach in the trie ([`RetainedState`])
//! plus its patterns' levels, never all retained topics or all clients. A
//! publish that would take retained state past MAX_RETAINED_BYTES is refused
//! whole before it takes a seq. History drops its oldest events past
//! HISTORY_SIZE events or HISTORY_MAX_BYTES bytes (of encoded frames).
//!
//! Idempotent publish: the last 10,000 ids published are remembered
//! ([`RecentIds`], under `state`), so a repeat within that window is
//! answered with its original seq and published again never.
//!
//! The fan-out task runs on the hub's runtime, never on an HTTP event
//! loop. With `PENDING_LIMIT` events waiting for it, a publisher waits
//! (asynchronously, holding no lock) until the task has made room, then
//! takes its seqs: backpressure that bounds `pending` without the
//! publisher's loop doing the fan-out (a loop that did stalled its other
//! connections, and with publishers on other loops refilling `pending`,
//! could fan out for as long as they published). Without a task (`new`,
//! as in unit tests), or once it has stopped at shutdown, the publisher
//! fans out itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::dedup::{Check, RecentIds};
use super::retained::RetainedState;
use super::subscribers::{distinct_patterns, Subscribers};
use super::topics::{Pattern, PatternIndex};
use super::{
    Catchup, Epoch, Event, Hub, HubError, HubFuture, HubStats, Limits, Publication, Receipt,
    Recent, ResumePoint, Seq, Snapshot, Subscribed, SubscriberId, Subscription,
};
use crate::shutdown::Shutdown;

/// With this many events waiting for the fan-out task, a publisher waits
/// for room before it takes a seq: backpressure instead of a growing list.
const PENDING_LIMIT: usize = 1024;

pub struct MemoryHub {
    epoch: Epoch,
    limits: Limits,
    state: Mutex<State>,
    subscribers: Mutex<Subscribers>,
    fan_out: Mutex<()>,
    /// Wakes the fan-out task; `None` without one.
    fan_out_wanted: Option<Arc<Notify>>,
    /// Publishers waiting for `pending` to fall below `PENDING_LIMIT`.
    room: Notify,
    /// Set by a waiting publisher: the fan-out task wakes `room` only then.
    room_wanted: AtomicBool,
    /// Set when the fan-out task has stopped (shutdown): publishers fan
    /// out themselves from then on.
    fan_out_stopped: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Seq of the last accepted event; 0 before the first.
    seq: Seq,
    /// The last events, oldest first: at most HISTORY_SIZE of them and
    /// HISTORY_MAX_BYTES of frames.
    history: VecDeque<Arc<Event>>,
    /// Bytes of the frames in `history`.
    history_bytes: usize,
    /// Current state per topic (MQTT retain semantics).
    retained: RetainedState,
    /// Accepted, not yet in the subscribers' queues; oldest first.
    pending: VecDeque<Arc<Event>>,
    /// Publish ids seen lately, with their seqs.
    ids: RecentIds,
}

impl State {
    fn push_history(&mut self, event: Arc<Event>, limits: &Limits) {
        if limits.history_size == 0 {
            return;
        }
        self.history_bytes += event.frame.len();
        self.history.push_back(event);
        while self.history.len() > limits.history_size
            || self.history_bytes > limits.history_max_bytes
        {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= oldest.frame.len();
        }
    }
}

/// A poisoned lock only means a panic elsewhere mid-update; the data is
/// still consistent enough to serve (every update is a few assignments).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ready<T: Send + 'static>(result: Result<T, HubError>) -> HubFuture<'static, T> {
    Box::pin(std::future::ready(result))
}

impl MemoryHub {
    /// A hub whose publishers fan out themselves, keeping `history_size`
    /// events and bounding nothing else (unit tests).
    pub fn new(history_size: usize) -> MemoryHub {
        MemoryHub::build(Limits::unbounded(history_size), None)
    }

    /// Like `new`, with `limits`.
    pub fn with_limits(limits: Limits) -> MemoryHub {
        MemoryHub::build(limits, None)
    }

    /// A hub with a fan-out task on `runtime`, stopped by `shutdown`.
    pub fn start(
        limits: Limits,
        shutdown: &Shutdown,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<MemoryHub> {
        let wanted = Arc::new(Notify::new());
        let hub = Arc::new(MemoryHub::build(limits, Some(wanted.clone())));
        let weak = Arc::downgrade(&hub);
        let stop = shutdown.clone();
        shutdown.spawn_on(
            async move {
                loop {
                    tokio::select! {
                        _ = wanted.notified() => {
                            let Some(hub) = weak.upgrade() else { return };
                            while let Some(left) = hub.fan_out_one() {
                                if left < PENDING_LIMIT
                                    && hub.room_wanted.swap(false, Ordering::SeqCst)
                                {
                                    hub.room.notify_waiters();
                                }
                                tokio::task::yield_now().await;
                            }
                        }
                        _ = stop.requested() => {
                            if let Some(hub) = weak.upgrade() {
                                hub.fan_out_stopped.store(true, Ordering::SeqCst);
                                hub.room.notify_waiters();
                            }
                            return;
                        }
                    }
                }
            },
            runtime,
        );
        hub
    }

    fn build(limits: Limits, fan_out_wanted: Option<Arc<Notify>>) -> MemoryHub {
        MemoryHub {
            epoch: Epoch::generate(),
            limits,
            state: Mutex::new(State::default()),
            subscribers: Mutex::new(Subscribers::new(limits.max_patterns_per_client)),
            fan_out: Mutex::new(()),
            fan_out_wanted,
            room: Notify::new(),
            room_wanted: AtomicBool::new(false),
            fan_out_stopped: AtomicBool::new(false),
        }
    }

    /// Subscribers registered right now.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// Bytes of retained state (topic + data of each retained event).
    pub fn retained_bytes(&self) -> usize {
        lock(&self.state).retained.bytes()
    }

    /// Events in history and the bytes of their frames.
    pub fn history_usage(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.history.len(), state.history_bytes)
    }

    /// Moves every pending event into the matching subscribers' queues, in
    /// seq order, one event per lock so subscribe and unsubscribe get turns.
    fn fan_out_pending(&self) {
        let one_at_a_time = lock(&self.fan_out);
        while self.fan_out_next(&one_at_a_time) {}
    }

    /// One event's fan-out, for the task, which yields between events: to
    /// thousands of subscribers one event is already a millisecond of work.
    /// The events still pending after it; `None` when none was pending.
    fn fan_out_one(&self) -> Option<usize> {
        let one_at_a_time = lock(&self.fan_out);
        self.fan_out_next(&one_at_a_time)
            .then(|| lock(&self.state).pending.len())
    }

    /// Whether a publisher may take seqs now: room in `pending`, or no
    /// task to wait for.
    fn has_room(&self, state: &State) -> bool {
        state.pending.len() < PENDING_LIMIT || self.fan_out_stopped.load(Ordering::SeqCst)
    }

    /// Accepts `batch` once `pending` has room (see the module doc): the
    /// wait holds no lock and blocks no thread.
    async fn publish_with_room(&self, batch: Vec<Publication>) -> Result<Receipt, HubError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.room_wanted.store(true, Ordering::SeqCst);
            {
                let state = lock(&self.state);
                if self.has_room(&state) {
                    return self.accept(state, batch);
                }
            }
            room.await;
        }
    }

    /// Fans out the oldest pending event; false when none was pending.
    /// When it was the only one pending (the fan-out keeps up), idle
    /// clients get it written to their sockets right here (see
    /// `subscribers`); with more waiting, each client's task is woken and
    /// writes what piled up in one go, on every core. (Fanning out a batch
    /// and then writing it directly, on the fan-out's task, halved the
    /// saturated throughput at 10k clients x 100 ev/s.) Only for a caller
    /// holding `fan_out` (the guard proves it).
    fn fan_out_next(&self, _one_at_a_time: &MutexGuard<'_, ()>) -> bool {
        let (event, more) = {
            let mut state = lock(&self.state);
            let event = state.pending.pop_front();
            (event, !state.pending.is_empty())
        };
        let Some(event) = event else {
            return false;
        };
        let after_unlock = {
            let mut subscribers = lock(&self.subscribers);
            subscribers.deliver(&event, !more);
            subscribers.take_after_unlock()
        };
        after_unlock.run();
        true
    }

    /// Takes seqs for `batch` under `state` (held since the room check),
    /// then wakes the fan-out task, or fans out here without one.
    fn accept(
        &self,
        mut state: MutexGuard<'_, State>,
        batch: Vec<Publication>,
    ) -> Result<Receipt, HubError> {
        match state.ids.check(&batch) {
            Ok(Check::New) => {}
            Ok(Check::Repeated(seqs)) => {
                return Ok(Receipt {
                    epoch: self.epoch.clone(),
                    seqs,
                    repeated: true,
                })
            }
            Err(error) => return Err(error),
        }
        let limit = self.limits.max_retained_bytes;
        if batch.iter().any(|p| p.retain) {
            let after = state
                .retained
                .bytes_after(batch.iter().filter_map(retained_change));
            // Shrinking (a delete, smaller data) always works, even when a
            // lower limit than before left the state over it.
            if after > limit && after > state.retained.bytes() {
                return Err(HubError::RetainedFull { limit });
            }
        }
        let mut seqs = Vec::with_capacity(batch.len());
        for mut publication in batch {
            let seq = state.seq + 1;
            state.seq = seq;
            if let Some(id) = publication.id.take() {
                state.ids.remember(&id, seq);
            }
            let event = Arc::new(Event::new(seq, publication));
            if event.retain {
                if event.deletes_state() {
                    state.retained.remove(&event.topic);
                } else {
                    state.retained.insert(event.clone());
                }
            }
            state.push_history(event.clone(), &self.limits);
            state.pending.push_back(event);
            seqs.push(seq);
        }
        drop(state);
        match &self.fan_out_wanted {
            Some(wanted) if !self.fan_out_stopped.load(Ordering::SeqCst) => wanted.notify_one(),
            _ => self.fan_out_pending(),
        }
        Ok(Receipt {
            epoch: self.epoch.clone(),
            seqs,
            repeated: false,
        })
    }

    /// `patterns` (distinct, within the limit) and `matcher` (an index of
    /// the same patterns) describe what the client wants. A fresh state
    /// comes unordered: pass the snapshot through [`ordered`] once `state`
    /// is released.
    fn snapshot_locked(
        &self,
        state: &State,
        patterns: &[Pattern],
        matcher: &PatternIndex<()>,
        resume: Option<&ResumePoint>,
    ) -> Snapshot {
        let catchup = match resume.and_then(|point| self.missed_events(state, point)) {
            Some(missed) => Catchup::Resumed(
                missed
                    .filter(|event| matcher.matches(&event.topic))
                    .cloned()
                    .collect(),
            ),
            // Sorted by the caller, after `state` is released: see
            // [`ordered`].
            None => Catchup::Fresh(state.retained.matching_unordered(patterns)),
        };
        Snapshot {
            epoch: self.epoch.clone(),
            seq: state.seq,
            catchup,
        }
    }

    /// The events after `point` when history still holds all of them; `None`
    /// for another epoch, a point older than history, or one ahead of us.
    fn missed_events<'a>(
        &self,
        state: &'a State,
        point: &ResumePoint,
    ) -> Option<impl Iterator<Item = &'a Arc<Event>>> {
        if point
            .epoch
            .as_ref()
            .is_some_and(|epoch| *epoch != self.epoch)
            || point.seq > state.seq
        {
            return None;
        }
        let oldest_kept = state
            .history
            .front()
            .map_or(state.seq + 1, |event| event.seq);
        if point.seq + 1 < oldest_kept {
            return None;
        }
        let skip = (point.seq + 1 - oldest_kept) as usize;
        Some(state.history.iter().skip(skip))
    }
}

/// `snapshot` with its fresh state sorted by topic, each topic once: done
/// after the hub's lock is released, so a large state (64k topics: tens of
/// milliseconds) never holds up publishers, whose loops wait on that lock.
fn ordered(mut snapshot: Snapshot) -> Snapshot {
    if let Catchup::Fresh(state) = &mut snapshot.catchup {
        *state = super::retained::by_topic(std::mem::take(state));
    }
    snapshot
}

/// The retained-state change a publication asks for: its topic and new
/// data (`None`: delete); `None` for an event that is not retained.
fn retained_change(publication: &Publication) -> Option<(&super::Topic, Option<&str>)> {
    let data = publication.data.get();
    publication
        .retain
        .then_some((&publication.topic, (data != "null").then_some(data)))
}

impl Hub for MemoryHub {
    fn epoch(&self) -> Epoch {
        self.epoch.clone()
    }

    fn state_bytes(&self) -> Option<usize> {
        Some(self.retained_bytes())
    }

    fn publish(&self, batch: Vec<Publication>) -> HubFuture<'_, Receipt> {
        if self.fan_out_wanted.is_none() {
            return ready(self.accept(lock(&self.state), batch));
        }
        Box::pin(self.publish_with_room(batch))
    }

    fn subscribe(
        self: Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        queue_capacity: usize,
    ) -> HubFuture<'static, Subscribed> {
        // Counted and indexed before any lock: a flood costs its sender.
        let patterns = match distinct_patterns(patterns, self.limits.max_patterns_per_client) {
            Ok(patterns) => patterns,
            Err(error) => return ready(Err(error)),
        };
        let matcher = PatternIndex::of(&patterns);
        let state = lock(&self.state);
        let snapshot = self.snapshot_locked(&state, &patterns, &matcher, resume.as_ref());
        // Registered before `state` is released: the next event is above
        // `snapshot.seq` and fanned out after this.
        let registration = lock(&self.subscribers).add(&patterns, snapshot.seq, queue_capacity);
        drop(state);
        let snapshot = ordered(snapshot);
        let subscribed = registration.map(|registration| Subscribed {
            snapshot,
            subscription: Subscription {
                id: registration.id,
                queue: registration.queue,
                hub: self,
            },
        });
        ready(subscribed)
    }

    fn add_patterns(
        &self,
        id: SubscriberId,
        patterns: Vec<Pattern>,
    ) -> HubFuture<'_, Vec<Arc<Event>>> {
        let patterns = match distinct_patterns(patterns, self.limits.max_patterns_per_client) {
            Ok(patterns) => patterns,
            Err(error) => return ready(Err(error)),
        };
        // The patterns are registered as of `state.seq`, the point the
        // answered retained state is read at: events still pending (at or
        // below it) are in that state and skipped for these patterns, later
        // ones are fanned out to them. No draining, no work for others.
        let state = lock(&self.state);
        let added = lock(&self.subscribers).add_patterns(id, &patterns, state.seq);
        let answer = added.map(|added| state.retained.matching(&added));
        drop(state);
        ready(answer)
    }

    fn remove_patterns(&self, id: SubscriberId, patterns: Vec<Pattern>) -> HubFuture<'_, ()> {
        let removed = lock(&self.subscribers).remove_patterns(id, &patterns);
        ready(removed)
    }

    fn unsubscribe(&self, id: SubscriberId) {
        lock(&self.subscribers).remove(id);
    }

    fn stats(&self) -> HubStats {
        let (seq, history) = {
            let state = lock(&self.state);
            (state.seq, state.history.len())
        };
        lock(&self.subscribers).stats(seq, history)
    }

    fn snapshot(
        &self,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
    ) -> HubFuture<'_, Snapshot> {
        let patterns = match distinct_patterns(patterns, self.limits.max_patterns_per_client) {
            Ok(patterns) => patterns,
            Err(error) => return ready(Err(error)),
        };
        let matcher = PatternIndex::of(&patterns);
        let snapshot =
            self.snapshot_locked(&lock(&self.state), &patterns, &matcher, resume.as_ref());
        ready(Ok(ordered(snapshot)))
    }

    fn recent(&self, patterns: Vec<Pattern>, limit: usize) -> HubFuture<'_, Recent> {
        let patterns = match distinct_patterns(patterns, self.limits.max_patterns_per_client) {
            Ok(patterns) => patterns,
            Err(error) => return ready(Err(error)),
        };
        let matcher = PatternIndex::of(&patterns);
        let state = lock(&self.state);
        let mut events: Vec<Arc<Event>> = state
            .history
            .iter()
            .rev()
            .filter(|event| matcher.matches(&event.topic))
            .take(limit)
            .cloned()
            .collect();
        let seq = state.seq;
        drop(state);
        events.reverse();
        ready(Ok(Recent {
            epoch: self.epoch.clone(),
            seq,
            events,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Topic;
    use serde_json::value::RawValue;

    fn publication(topic: &str, data: &str, retain: bool) -> Publication {
        Publication {
            topic: Topic::parse(topic).unwrap(),
            data: RawValue::from_string(data.to_owned()).unwrap(),
            retain,
            id: None,
        }
    }

    async fn publish(hub: &MemoryHub, topic: &str, data: &str, retain: bool) -> Seq {
        hub.publish(vec![publication(topic, data, retain)])
            .await
            .unwrap()
            .seqs[0]
    }

    fn seqs(events: &[Arc<Event>]) -> Vec<Seq> {
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn seqs_are_gap_free_and_retain_follows_mqtt() {
        let hub = MemoryHub::new(10);
        assert_eq!(publish(&hub, "a", "1", true).await, 1);
        assert_eq!(publish(&hub, "b", "2", true).await, 2);
        assert_eq!(publish(&hub, "a", "3", true).await, 3);
        assert_eq!(publish(&hub, "b", "null", true).await, 4);
        assert_eq!(publish(&hub, "c", "5", false).await, 5);
        let snapshot = hub
            .snapshot(vec![Pattern::everything()], None)
            .await
            .unwrap();
        let Catchup::Fresh(state) = snapshot.catchup else {
            panic!("fresh expected")
        };
        assert_eq!(seqs(&state), [3]);
        assert_eq!(state[0].data.get(), "3");
    }

    #[tokio::test]
    async fn resume_points_that_cannot_be_served_are_fresh() {
        let hub = MemoryHub::new(3);
        for i in 0..5 {
            publish(&hub, "t", &i.to_string(), false).await;
        }
        let all = vec![Pattern::everything()];
        let at = |epoch: Option<Epoch>, seq| Some(ResumePoint { epoch, seq });
        let epoch = Some(hub.epoch());
        let served = hub
            .snapshot(all.clone(), at(epoch.clone(), 2))
            .await
            .unwrap();
        assert!(matches!(&served.catchup, Catchup::Resumed(e) if seqs(e) == [3, 4, 5]));
        let current = hub.snapshot(all.clone(), at(None, 5)).await.unwrap();
        assert!(matches!(&current.catchup, Catchup::Resumed(e) if e.is_empty()));
        let too_old = hub
            .snapshot(all.clone(), at(epoch.clone(), 1))
            .await
            .unwrap();
        assert!(matches!(too_old.catchup, Catchup::Fresh(_)));
        let ahead = hub.snapshot(all.clone(), at(epoch, 6)).await.unwrap();
        assert!(matches!(ahead.catchup, Catchup::Fresh(_)));
        let other = hub
            .snapshot(all, at(Some(Epoch::from_string("old")), 4))
            .await
            .unwrap();
        assert!(matches!(other.catchup, Catchup::Fresh(_)));
    }

    #[tokio::test]
    async fn a_full_queue_cuts_the_subscriber_off_without_blocking() {
        let hub = Arc::new(MemoryHub::new(100));
        let slow = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 2)
            .await
            .unwrap()
            .subscription;
        let fast = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 100)
            .await
            .unwrap()
            .subscription;
        for i in 0..5 {
            publish(&hub, "t", &i.to_string(), false).await;
        }
        assert!(slow.queue.is_closed());
        assert_eq!(hub.subscriber_count(), 1);
        let mut received = Vec::new();
        while let Some(event) = fast.queue.try_pop() {
            received.push(event.seq());
        }
        assert_eq!(received, [1, 2, 3, 4, 5]);
        assert_eq!(slow.queue.try_pop().map(|e| e.seq()), Some(1));
        drop(fast);
        assert_eq!(hub.subscriber_count(), 0);
    }

    #[tokio::test]
    async fn overlapping_patterns_deliver_once() {
        let hub = Arc::new(MemoryHub::new(0));
        let patterns = vec![
            Pattern::parse("a/#").unwrap(),
            Pattern::parse("a/+").unwrap(),
        ];
        let subscription = hub
            .clone()
            .subscribe(patterns, None, 10)
            .await
            .unwrap()
            .subscription;
        publish(&hub, "a/b", "1", false).await;
        publish(&hub, "z", "2", false).await;
        assert_eq!(subscription.queue.try_pop().map(|e| e.seq()), Some(1));
        assert!(subscription.queue.try_pop().is_none());
    }

    /// A hub with a fan-out task that never runs: events stay pending until
    /// the test fans out (or the backlog reaches `PENDING_LIMIT`).
    fn hub_with_idle_fan_out(history_size: usize) -> Arc<MemoryHub> {
        Arc::new(MemoryHub::build(
            Limits::unbounded(history_size),
            Some(Arc::new(Notify::new())),
        ))
    }

    #[tokio::test]
    async fn events_pending_at_subscribe_time_are_in_the_snapshot_only() {
        let hub = hub_with_idle_fan_out(10);
        publish(&hub, "t", "1", false).await;
        let Subscribed {
            snapshot,
            subscription,
        } = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 10)
            .await
            .unwrap();
        assert_eq!(snapshot.seq, 1);
        publish(&hub, "t", "2", false).await;
        hub.fan_out_pending();
        assert_eq!(subscription.queue.try_pop().map(|e| e.seq()), Some(2));
        assert!(subscription.queue.try_pop().is_none());
    }

    #[tokio::test]
    async fn added_patterns_do_not_get_pending_events_twice() {
        let hub = hub_with_idle_fan_out(10);
        let subscription = hub
            .clone()
            .subscribe(vec![Pattern::parse("a").unwrap()], None, 10)
            .await
            .unwrap()
            .subscription;
        publish(&hub, "a", "1", false).await;
        publish(&hub, "b", "2", true).await;
        let state = hub
            .add_patterns(subscription.id, vec![Pattern::parse("b").unwrap()])
            .await
            .unwrap();
        assert_eq!(seqs(&state), [2]);
        publish(&hub, "b", "3", false).await;
        hub.fan_out_pending();
        let mut queued = Vec::new();
        while let Some(event) = subscription.queue.try_pop() {
            queued.push(event.seq());
        }
        assert_eq!(queued, [1, 3], "seq 2 came with the added pattern's state");
    }

    #[tokio::test]
    async fn a_full_backlog_makes_the_publisher_wait_not_fan_out() {
        let hub = hub_with_idle_fan_out(0);
        let subscription = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, PENDING_LIMIT + 1)
            .await
            .unwrap()
            .subscription;
        for i in 0..PENDING_LIMIT {
            publish(&hub, "t", &i.to_string(), false).await;
        }
        assert!(subscription.queue.try_pop().is_none(), "still pending");
        let waiting = hub.publish(vec![publication("t", "0", false)]);
        tokio::pin!(waiting);
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "answered with the backlog full");
        assert_eq!(
            lock(&hub.state).pending.len(),
            PENDING_LIMIT,
            "no seq taken"
        );
        assert!(
            subscription.queue.try_pop().is_none(),
            "the publisher fanned out nothing"
        );
        // What the fan-out task does: one event, then room for the waiter.
        assert_eq!(hub.fan_out_one(), Some(PENDING_LIMIT - 1));
        assert!(hub.room_wanted.swap(false, Ordering::SeqCst));
        hub.room.notify_waiters();
        let receipt = waiting.await.unwrap();
        assert_eq!(receipt.seqs, [PENDING_LIMIT as Seq + 1]);
        hub.fan_out_pending();
        let mut queued = 0;
        while subscription.queue.try_pop().is_some() {
            queued += 1;
        }
        assert_eq!(queued, PENDING_LIMIT + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fan_out_task_delivers_everything_once_in_order() {
        let shutdown = Shutdown::new();
        let hub = MemoryHub::start(
            Limits::unbounded(5000),
            &shutdown,
            &tokio::runtime::Handle::current(),
        );
        let early = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 5000)
            .await
            .unwrap()
            .subscription;
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let hub = hub.clone();
                tokio::spawn(async move {
                    for i in 0..1000 {
                        publish(&hub, "t", &i.to_string(), false).await;
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        // Joins mid-stream, resuming from the start of history.
        let resume = Some(ResumePoint {
            epoch: Some(hub.epoch()),
            seq: 0,
        });
        let late = hub
            .clone()
            .subscribe(vec![Pattern::everything()], resume, 5000)
            .await
            .unwrap();
        for publisher in publishers {
            publisher.await.unwrap();
        }
        let Catchup::Resumed(replayed) = &late.snapshot.catchup else {
            panic!("resumable")
        };
        let mut early_seen = Vec::new();
        let mut late_seen = seqs(replayed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (early_seen.len() < 2000 || late_seen.len() < 2000)
            && std::time::Instant::now() < deadline
        {
            while let Some(event) = early.queue.try_pop() {
                early_seen.push(event.seq());
            }
            while let Some(event) = late.subscription.queue.try_pop() {
                late_seen.push(event.seq());
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let all: Vec<Seq> = (1..=2000).collect();
        assert_eq!(early_seen, all);
        assert_eq!(late_seen, all);
        shutdown.begin();
    }

    #[tokio::test]
    async fn history_is_trimmed_by_bytes_as_well_as_count() {
        let frame_len = |hub: &MemoryHub| lock(&hub.state).history.back().unwrap().frame.len();
        let probe = MemoryHub::new(100);
        publish(&probe, "t", "1000", false).await;
        let one = frame_len(&probe);
        // Room for three frames of this size, and HISTORY_SIZE 100.
        let hub = MemoryHub::with_limits(Limits {
            history_max_bytes: 3 * one + one / 2,
            ..Limits::unbounded(100)
        });
        for i in 1000..1010 {
            publish(&hub, "t", &i.to_string(), false).await;
        }
        let (len, bytes) = hub.history_usage();
        assert_eq!(len, 3);
        let kept: Vec<Seq> = lock(&hub.state).history.iter().map(|e| e.seq).collect();
        assert_eq!(kept, [8, 9, 10], "the oldest went first");
        let held: usize = lock(&hub.state).history.iter().map(|e| e.frame.len()).sum();
        assert_eq!(bytes, held);
        assert!(bytes <= 3 * one + one / 2);
        // A point inside history resumes, an older one is fresh.
        let at = |seq| Some(ResumePoint { epoch: None, seq });
        let all = vec![Pattern::everything()];
        let served = hub.snapshot(all.clone(), at(7)).await.unwrap();
        assert!(matches!(&served.catchup, Catchup::Resumed(e) if seqs(e) == [8, 9, 10]));
        let lost = hub.snapshot(all.clone(), at(6)).await.unwrap();
        assert!(matches!(lost.catchup, Catchup::Fresh(_)));
        // One event larger than the whole bound leaves nothing to resume
        // from before it, and resuming from it works.
        let big = format!("\"{}\"", "x".repeat(4 * one));
        publish(&hub, "t", &big, false).await;
        assert_eq!(hub.history_usage(), (0, 0));
        let current = hub.snapshot(all.clone(), at(11)).await.unwrap();
        assert!(matches!(&current.catchup, Catchup::Resumed(e) if e.is_empty()));
        let before = hub.snapshot(all, at(10)).await.unwrap();
        assert!(matches!(before.catchup, Catchup::Fresh(_)));
        // The count bound still holds on its own.
        let counted = MemoryHub::with_limits(Limits {
            history_max_bytes: 1 << 20,
            ..Limits::unbounded(4)
        });
        for i in 0..10 {
            publish(&counted, "t", &i.to_string(), false).await;
        }
        assert_eq!(counted.history_usage().0, 4);
    }

    #[tokio::test]
    async fn a_publish_past_the_retained_cap_changes_nothing() {
        let hub = MemoryHub::with_limits(Limits {
            max_retained_bytes: 20,
            ..Limits::unbounded(10)
        });
        // "a" + 9 bytes = 10.
        assert_eq!(publish(&hub, "a", "123456789", true).await, 1);
        assert_eq!(hub.retained_bytes(), 10);
        // A batch whose last item passes the cap: nothing applied, no seq.
        let batch = vec![
            publication("b", "1", true),
            publication("c", "12345678", false),
            publication("d", "123456789", true),
        ];
        let error = hub.publish(batch).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "retained state is full: MAX_RETAINED_BYTES=20"
        );
        assert_eq!(hub.retained_bytes(), 10);
        assert_eq!(hub.history_usage().0, 1);
        // Non-retained events do not count.
        assert_eq!(
            publish(&hub, "c", "\"a long one, not retained\"", false).await,
            2
        );
        // Up to the cap is fine; replacing with smaller data and deleting
        // always work; a batch that frees what it adds works.
        assert_eq!(publish(&hub, "d", "123456789", true).await, 3);
        assert_eq!(hub.retained_bytes(), 20);
        assert!(hub
            .publish(vec![publication("e", "1", true)])
            .await
            .is_err());
        assert_eq!(publish(&hub, "a", "1", true).await, 4);
        assert_eq!(hub.retained_bytes(), 12);
        assert_eq!(publish(&hub, "d", "null", true).await, 5);
        assert_eq!(hub.retained_bytes(), 2);
        let swap = vec![
            publication("f", "12345678901234567", true),
            publication("a", "null", true),
        ];
        assert_eq!(hub.publish(swap).await.unwrap().seqs, [6, 7]);
        assert_eq!(hub.retained_bytes(), 18);
    }

    #[tokio::test]
    async fn a_repeated_id_answers_the_original_seq_and_publishes_nothing() {
        let hub = Arc::new(MemoryHub::new(10));
        let subscription = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 10)
            .await
            .unwrap()
            .subscription;
        let with_id = |id: &str, data: &str| Publication {
            id: Some(id.into()),
            ..publication("t", data, false)
        };
        let first = hub.publish(vec![with_id("x", "1")]).await.unwrap();
        assert_eq!((first.seqs.clone(), first.repeated), (vec![1], false));
        publish(&hub, "t", "2", false).await;
        let again = hub.publish(vec![with_id("x", "99")]).await.unwrap();
        assert_eq!((again.seqs, again.repeated), (vec![1], true));
        assert_eq!(again.epoch, first.epoch);
        let mixed = hub
            .publish(vec![with_id("y", "3"), with_id("x", "1")])
            .await;
        assert!(matches!(mixed, Err(HubError::RepeatedId { .. })));
        assert_eq!(publish(&hub, "t", "3", false).await, 3, "nothing applied");
        let seqs: Vec<Seq> = std::iter::from_fn(|| subscription.queue.try_pop())
            .map(|d| d.seq())
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[tokio::test]
    async fn too_many_patterns_are_refused_before_anything_changes() {
        let hub = Arc::new(MemoryHub::with_limits(Limits {
            max_patterns_per_client: 3,
            ..Limits::unbounded(10)
        }));
        let four: Vec<Pattern> = ["a", "b", "c", "d"]
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .collect();
        let refused = hub.clone().subscribe(four.clone(), None, 10).await;
        assert!(matches!(
            refused,
            Err(HubError::TooManyPatterns { limit: 3 })
        ));
        assert_eq!(hub.subscriber_count(), 0);
        assert!(hub.snapshot(four.clone(), None).await.is_err());
        let subscription = hub
            .clone()
            .subscribe(four[..2].to_vec(), None, 10)
            .await
            .unwrap()
            .subscription;
        assert!(hub
            .add_patterns(subscription.id, four[1..].to_vec())
            .await
            .is_err());
        publish(&hub, "c", "1", false).await;
        assert!(subscription.queue.try_pop().is_none(), "c was not added");
        assert!(hub
            .add_patterns(subscription.id, four[2..3].to_vec())
            .await
            .is_ok());
        publish(&hub, "c", "2", false).await;
        assert_eq!(subscription.queue.try_pop().map(|e| e.seq()), Some(2));
    }
}
