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
//! across an `.await` (no hub method awaits). A subscriber registers, under
//! `state`, with the snapshot's seq as its last seen seq, and the registry
//! skips events at or below it: every event is either in its snapshot or
//! in its queue, never both, never neither, while `pending` still holds
//! events older than the snapshot.
//!
//! The fan-out task runs on the clients' runtime; without one (`new`, as in
//! unit tests) or with `PENDING_LIMIT` events waiting, the publisher fans
//! out itself, which is also what bounds `pending`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::subscribers::Subscribers;
use super::topics::{any_matches, Pattern, Topic};
use super::{
    Catchup, Epoch, Event, Hub, HubError, HubFuture, HubStats, Publication, Receipt, ResumePoint,
    Seq, Snapshot, SubscriberId, Subscription,
};
use crate::shutdown::Shutdown;

/// With this many events waiting for the fan-out task, a publisher fans
/// out itself before it is answered: backpressure instead of a growing list.
const PENDING_LIMIT: usize = 1024;

pub struct MemoryHub {
    epoch: Epoch,
    history_size: usize,
    state: Mutex<State>,
    subscribers: Mutex<Subscribers>,
    fan_out: Mutex<()>,
    /// Wakes the fan-out task; `None` without one.
    fan_out_wanted: Option<Arc<Notify>>,
}

#[derive(Default)]
struct State {
    /// Seq of the last accepted event; 0 before the first.
    seq: Seq,
    /// The last `history_size` events, oldest first.
    history: VecDeque<Arc<Event>>,
    /// Current state per topic (MQTT retain semantics).
    retained: BTreeMap<Topic, Arc<Event>>,
    /// Accepted, not yet in the subscribers' queues; oldest first.
    pending: VecDeque<Arc<Event>>,
}

/// A poisoned lock only means a panic elsewhere mid-update; the data is
/// still consistent enough to serve (every update is a few assignments).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryHub {
    /// A hub whose publishers fan out themselves (unit tests).
    pub fn new(history_size: usize) -> MemoryHub {
        MemoryHub::build(history_size, None)
    }

    /// A hub with a fan-out task on `runtime`, stopped by `shutdown`.
    pub fn start(
        history_size: usize,
        shutdown: &Shutdown,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<MemoryHub> {
        let wanted = Arc::new(Notify::new());
        let hub = Arc::new(MemoryHub::build(history_size, Some(wanted.clone())));
        let weak = Arc::downgrade(&hub);
        let stop = shutdown.clone();
        shutdown.spawn_on(
            async move {
                loop {
                    tokio::select! {
                        _ = wanted.notified() => {
                            let Some(hub) = weak.upgrade() else { return };
                            while hub.fan_out_one() {
                                tokio::task::yield_now().await;
                            }
                        }
                        _ = stop.requested() => return,
                    }
                }
            },
            runtime,
        );
        hub
    }

    fn build(history_size: usize, fan_out_wanted: Option<Arc<Notify>>) -> MemoryHub {
        MemoryHub {
            epoch: Epoch::generate(),
            history_size,
            state: Mutex::new(State::default()),
            subscribers: Mutex::new(Subscribers::default()),
            fan_out: Mutex::new(()),
            fan_out_wanted,
        }
    }

    /// Subscribers registered right now.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// Moves every pending event into the matching subscribers' queues, in
    /// seq order, one event per lock so subscribe and unsubscribe get turns.
    fn fan_out_pending(&self) {
        let one_at_a_time = lock(&self.fan_out);
        while self.fan_out_next(&one_at_a_time) {}
    }

    /// One event's fan-out, for the task, which yields between events: to
    /// thousands of subscribers one event is already a millisecond of work.
    fn fan_out_one(&self) -> bool {
        let one_at_a_time = lock(&self.fan_out);
        self.fan_out_next(&one_at_a_time)
    }

    /// Fans out the oldest pending event; false when none was pending.
    /// Only for a caller holding `fan_out` (the guard proves it).
    fn fan_out_next(&self, _one_at_a_time: &MutexGuard<'_, ()>) -> bool {
        let Some(event) = lock(&self.state).pending.pop_front() else {
            return false;
        };
        lock(&self.subscribers).deliver(&event);
        true
    }

    fn snapshot_locked(
        &self,
        state: &State,
        patterns: &[Pattern],
        resume: Option<&ResumePoint>,
    ) -> Snapshot {
        let catchup = match resume.and_then(|point| self.missed_events(state, point)) {
            Some(missed) => Catchup::Resumed(
                missed
                    .filter(|event| any_matches(patterns, &event.topic))
                    .cloned()
                    .collect(),
            ),
            None => Catchup::Fresh(retained_matching(state, patterns)),
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

fn retained_matching(state: &State, patterns: &[Pattern]) -> Vec<Arc<Event>> {
    state
        .retained
        .values()
        .filter(|event| any_matches(patterns, &event.topic))
        .cloned()
        .collect()
}

impl Hub for MemoryHub {
    fn epoch(&self) -> Epoch {
        self.epoch.clone()
    }

    fn publish(&self, batch: Vec<Publication>) -> HubFuture<'_, Receipt> {
        let mut state = lock(&self.state);
        let mut seqs = Vec::with_capacity(batch.len());
        for publication in batch {
            let seq = state.seq + 1;
            state.seq = seq;
            let event = Arc::new(Event::new(seq, publication));
            if event.retain {
                if event.deletes_state() {
                    state.retained.remove(&event.topic);
                } else {
                    state.retained.insert(event.topic.clone(), event.clone());
                }
            }
            if self.history_size > 0 {
                if state.history.len() == self.history_size {
                    state.history.pop_front();
                }
                state.history.push_back(event.clone());
            }
            state.pending.push_back(event);
            seqs.push(seq);
        }
        let backlog = state.pending.len();
        drop(state);
        match &self.fan_out_wanted {
            Some(wanted) if backlog < PENDING_LIMIT => wanted.notify_one(),
            _ => self.fan_out_pending(),
        }
        let receipt = Receipt {
            epoch: self.epoch.clone(),
            seqs,
        };
        Box::pin(async move { Ok(receipt) })
    }

    fn subscribe(
        self: Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        queue_capacity: usize,
    ) -> HubFuture<'static, Subscription> {
        let state = lock(&self.state);
        let snapshot = self.snapshot_locked(&state, &patterns, resume.as_ref());
        // Registered before `state` is released: the next event is above
        // `snapshot.seq` and fanned out after this.
        let registration = lock(&self.subscribers).add(patterns, snapshot.seq, queue_capacity);
        drop(state);
        let subscription = Subscription {
            id: registration.id,
            snapshot,
            queue: registration.queue,
            hub: self,
        };
        Box::pin(async move { Ok(subscription) })
    }

    fn add_patterns(
        &self,
        id: SubscriberId,
        patterns: Vec<Pattern>,
    ) -> HubFuture<'_, Vec<Arc<Event>>> {
        // The retained state answered below already includes every pending
        // event; fanning those out first keeps them from arriving twice.
        // The last few, published meanwhile, go out under `state`.
        let one_at_a_time = lock(&self.fan_out);
        while self.fan_out_next(&one_at_a_time) {}
        let mut state = lock(&self.state);
        let mut subscribers = lock(&self.subscribers);
        for event in state.pending.drain(..) {
            subscribers.deliver(&event);
        }
        let answer = match subscribers.add_patterns(id, &patterns) {
            Some(added) => Ok(retained_matching(&state, &added)),
            None => Err(HubError::UnknownSubscriber),
        };
        drop(subscribers);
        drop(state);
        Box::pin(async move { answer })
    }

    fn remove_patterns(&self, id: SubscriberId, patterns: Vec<Pattern>) -> HubFuture<'_, ()> {
        let removed = lock(&self.subscribers).remove_patterns(id, &patterns);
        Box::pin(std::future::ready(removed))
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
        let snapshot = self.snapshot_locked(&lock(&self.state), &patterns, resume.as_ref());
        Box::pin(async move { Ok(snapshot) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn publication(topic: &str, data: &str, retain: bool) -> Publication {
        Publication {
            topic: Topic::parse(topic).unwrap(),
            data: RawValue::from_string(data.to_owned()).unwrap(),
            retain,
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
            .unwrap();
        let fast = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 100)
            .await
            .unwrap();
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
        let subscription = hub.clone().subscribe(patterns, None, 10).await.unwrap();
        publish(&hub, "a/b", "1", false).await;
        publish(&hub, "z", "2", false).await;
        assert_eq!(subscription.queue.try_pop().map(|e| e.seq()), Some(1));
        assert!(subscription.queue.try_pop().is_none());
    }

    /// A hub with a fan-out task that never runs: events stay pending until
    /// the test fans out (or the backlog reaches `PENDING_LIMIT`).
    fn hub_with_idle_fan_out(history_size: usize) -> Arc<MemoryHub> {
        Arc::new(MemoryHub::build(
            history_size,
            Some(Arc::new(Notify::new())),
        ))
    }

    #[tokio::test]
    async fn events_pending_at_subscribe_time_are_in_the_snapshot_only() {
        let hub = hub_with_idle_fan_out(10);
        publish(&hub, "t", "1", false).await;
        let subscription = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 10)
            .await
            .unwrap();
        assert_eq!(subscription.snapshot.seq, 1);
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
            .unwrap();
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
    async fn a_full_backlog_makes_the_publisher_fan_out() {
        let hub = hub_with_idle_fan_out(0);
        let subscription = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, PENDING_LIMIT + 1)
            .await
            .unwrap();
        for i in 0..PENDING_LIMIT - 1 {
            publish(&hub, "t", &i.to_string(), false).await;
        }
        assert!(subscription.queue.try_pop().is_none(), "still pending");
        publish(&hub, "t", "0", false).await;
        assert_eq!(lock(&hub.state).pending.len(), 0);
        let mut queued = 0;
        while subscription.queue.try_pop().is_some() {
            queued += 1;
        }
        assert_eq!(queued, PENDING_LIMIT);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fan_out_task_delivers_everything_once_in_order() {
        let shutdown = Shutdown::new();
        let hub = MemoryHub::start(5000, &shutdown, &tokio::runtime::Handle::current());
        let early = hub
            .clone()
            .subscribe(vec![Pattern::everything()], None, 5000)
            .await
            .unwrap();
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
            while let Some(event) = late.queue.try_pop() {
                late_seen.push(event.seq());
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let all: Vec<Seq> = (1..=2000).collect();
        assert_eq!(early_seen, all);
        assert_eq!(late_seen, all);
        shutdown.begin();
    }
}
