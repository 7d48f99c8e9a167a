//! The in-process hub: one epoch per process start, history and retained
//! state in memory.
//!
//! One `std::sync::Mutex` guards the seq counter, history, retained state
//! and the subscriber registry. It is never held across an `.await` (no hub
//! method awaits), and holding it while fanning out is what makes a
//! subscriber's snapshot and its live stream meet exactly: every event is
//! either in the snapshot or in the queue, never both, never neither.
//! Fan-out under the lock is a pointer push per matching subscriber.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::subscribers::Subscribers;
use super::topics::{any_matches, Pattern, Topic};
use super::{
    Catchup, Epoch, Event, Hub, HubError, HubFuture, HubStats, Publication, Receipt, ResumePoint,
    Seq, Snapshot, SubscriberId, Subscription,
};

pub struct MemoryHub {
    epoch: Epoch,
    history_size: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Seq of the last accepted event; 0 before the first.
    seq: Seq,
    /// The last `history_size` events, oldest first.
    history: VecDeque<Arc<Event>>,
    /// Current state per topic (MQTT retain semantics).
    retained: BTreeMap<Topic, Arc<Event>>,
    subscribers: Subscribers,
}

impl MemoryHub {
    pub fn new(history_size: usize) -> MemoryHub {
        MemoryHub {
            epoch: Epoch::generate(),
            history_size,
            state: Mutex::new(State::default()),
        }
    }

    /// A poisoned lock only means a panic elsewhere mid-update; the data is
    /// still consistent enough to serve (every update is a few assignments).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribers registered right now.
    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
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
        let mut state = self.lock();
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
            state.subscribers.deliver(&event);
            seqs.push(seq);
        }
        drop(state);
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
        let mut state = self.lock();
        let snapshot = self.snapshot_locked(&state, &patterns, resume.as_ref());
        let registration = state
            .subscribers
            .add(patterns, snapshot.seq, queue_capacity);
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
        let mut state = self.lock();
        let answer = match state.subscribers.add_patterns(id, &patterns) {
            Some(added) => Ok(retained_matching(&state, &added)),
            None => Err(HubError::UnknownSubscriber),
        };
        drop(state);
        Box::pin(async move { answer })
    }

    fn remove_patterns(&self, id: SubscriberId, patterns: Vec<Pattern>) -> HubFuture<'_, ()> {
        let removed = self.lock().subscribers.remove_patterns(id, &patterns);
        Box::pin(std::future::ready(removed))
    }

    fn unsubscribe(&self, id: SubscriberId) {
        self.lock().subscribers.remove(id);
    }

    fn stats(&self) -> HubStats {
        let state = self.lock();
        state.subscribers.stats(state.seq, state.history.len())
    }

    fn snapshot(
        &self,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
    ) -> HubFuture<'_, Snapshot> {
        let snapshot = self.snapshot_locked(&self.lock(), &patterns, resume.as_ref());
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
}
