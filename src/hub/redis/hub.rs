//! [`Hub`] for [`RedisHub`]: subscribe, publish, patterns and snapshots.
//!
//! Owns: registering a subscriber at the point its snapshot names (waiting
//! for the listener when they disagree), turning a publish batch into the
//! publish script's arguments and its answer into a [`Receipt`] or an
//! error. Does not own: the scripts' atomic work ([`scripts`](super::scripts))
//! or delivery ([`listener`](super::listener)).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use super::snapshot::{Fallback, Kind, RemoteSnapshot};
use super::{lock, RedisHub, ID_WINDOW, LISTENER_WAIT, SUBSCRIBE_ATTEMPTS};
use crate::hub::subscribers::{distinct_patterns, Registration};
use crate::hub::topics::{Pattern, PatternIndex};
use crate::hub::{
    Catchup, Epoch, Event, Hub, HubError, HubFuture, HubStats, Publication, Receipt, Recent,
    ResumePoint, Seq, Snapshot, Subscribed, SubscriberId, Subscription,
};

impl RedisHub {
    /// Registers a subscriber at `remote`'s point when the listener
    /// delivers the same epoch, topping it up from the recent events when
    /// the listener is already past it; `None`: read again.
    pub(super) fn register(
        &self,
        patterns: &[Pattern],
        remote: &RemoteSnapshot,
        queue_capacity: usize,
    ) -> Result<Option<Registration>, HubError> {
        let (registration, cut_offs) = {
            let mut local = self.local();
            if remote.epoch != local.epoch {
                return Ok(None);
            }
            let registration = local
                .subscribers
                .add(patterns, remote.seq, queue_capacity)?;
            // In seq order without gaps, so the first one needed is found
            // by arithmetic, not a scan.
            if local.seq > remote.seq {
                let oldest = local.recent.front().map_or(local.seq + 1, |e| e.seq);
                if oldest > remote.seq + 1 {
                    local.subscribers.remove(registration.id);
                    return Ok(None);
                }
                let skip = (remote.seq + 1 - oldest) as usize;
                let missed: Vec<Arc<Event>> = local.recent.iter().skip(skip).cloned().collect();
                for event in &missed {
                    local.subscribers.deliver_to(registration.id, event);
                }
            }
            (registration, local.subscribers.take_after_unlock())
        };
        cut_offs.run();
        Ok(Some(registration))
    }

    /// After a snapshot of `seen` that the listener does not deliver: waits
    /// (at most LISTENER_WAIT) for the listener to move, unless `seen` is an
    /// epoch already replaced (then reading again is enough).
    pub(super) async fn wait_for_listener(&self, seen: &Epoch) {
        if lock(&self.belief).is_retired(seen) {
            return;
        }
        let before = self.local().epoch.clone();
        if before == *seen {
            return; // behind the listener's recent events: read again
        }
        let deadline = Instant::now() + LISTENER_WAIT;
        while self.local().epoch == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) async fn subscribe_inner(
        self: Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        queue_capacity: usize,
    ) -> Result<Subscribed, HubError> {
        // Refused before Redis is asked anything.
        let patterns = distinct_patterns(patterns, self.limits.max_patterns_per_client)?;
        let matcher = PatternIndex::of(&patterns);
        for _ in 0..SUBSCRIBE_ATTEMPTS {
            let remote = self.client_snapshot(resume.as_ref()).await?;
            let Some(registration) = self.register(&patterns, &remote, queue_capacity)? else {
                self.wait_for_listener(&remote.epoch).await;
                continue;
            };
            let events = remote
                .events
                .into_iter()
                .filter(|e| matcher.matches(&e.topic))
                .collect();
            let catchup = if remote.kind == Kind::Resumed {
                Catchup::Resumed(events)
            } else {
                Catchup::Fresh(events)
            };
            return Ok(Subscribed {
                snapshot: Snapshot {
                    epoch: remote.epoch,
                    seq: remote.seq,
                    catchup,
                },
                subscription: Subscription {
                    id: registration.id,
                    queue: registration.queue,
                    hub: self,
                },
            });
        }
        warn!("subscribe: redis and this replica's listener disagree on the epoch; refused");
        Err(HubError::Unavailable)
    }

    pub(super) async fn publish_inner(&self, batch: Vec<Publication>) -> Result<Receipt, HubError> {
        let mut invocation = self.invocation(&self.publish);
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        invocation
            .arg(self.limits.history_size)
            .arg(ts)
            .arg(self.limits.history_max_bytes)
            .arg(self.limits.max_retained_bytes)
            .arg(ID_WINDOW.as_secs());
        let mut next_key = 8;
        for publication in &batch {
            invocation
                .arg(publication.topic.as_str())
                .arg(if publication.retain { "1" } else { "0" })
                .arg(publication.data.get());
            match &publication.id {
                Some(id) => {
                    invocation
                        .key(format!("{}{id}", self.keys.id))
                        .arg(next_key);
                    next_key += 1;
                }
                None => {
                    invocation.arg(0);
                }
            }
        }
        type Reply = (String, Seq, i64, i64, Vec<Seq>, Vec<String>);
        let (epoch, seq, rotated, status, seqs, originals): Reply =
            self.run(&invocation, "publish").await?;
        let epoch = Epoch::from_string(&epoch);
        self.observe(&epoch, seq);
        self.note_rotation(rotated, &epoch, "publish");
        let id_of = |index: usize| {
            batch
                .get(index)
                .and_then(|p| p.id.as_deref())
                .unwrap_or_default()
                .to_owned()
        };
        match status {
            0 => Ok(Receipt {
                epoch,
                seqs,
                repeated: false,
            }),
            1 => Err(HubError::RetainedFull {
                limit: self.limits.max_retained_bytes,
            }),
            2 => {
                let parsed: Option<Vec<(&str, Seq)>> = originals
                    .iter()
                    .map(|original| {
                        let (epoch, seq) = original.split_once(' ')?;
                        Some((epoch, seq.parse().ok()?))
                    })
                    .collect();
                match parsed.as_deref() {
                    Some([(first, _), rest @ ..]) if rest.iter().all(|(e, _)| e == first) => {
                        Ok(Receipt {
                            epoch: Epoch::from_string(first),
                            seqs: parsed.iter().flatten().map(|(_, seq)| *seq).collect(),
                            repeated: true,
                        })
                    }
                    _ => Err(HubError::RepeatedId { id: id_of(0) }),
                }
            }
            _ => {
                let index = originals.first().and_then(|i| i.parse().ok()).unwrap_or(0);
                Err(HubError::RepeatedId { id: id_of(index) })
            }
        }
    }
}

impl Hub for RedisHub {
    fn epoch(&self) -> Epoch {
        self.local().epoch.clone()
    }

    fn publish(&self, batch: Vec<Publication>) -> HubFuture<'_, Receipt> {
        Box::pin(self.publish_inner(batch))
    }

    fn subscribe(
        self: Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        queue_capacity: usize,
    ) -> HubFuture<'static, Subscribed> {
        Box::pin(self.subscribe_inner(patterns, resume, queue_capacity))
    }

    fn add_patterns(
        &self,
        id: SubscriberId,
        patterns: Vec<Pattern>,
    ) -> HubFuture<'_, Vec<Arc<Event>>> {
        Box::pin(async move {
            let patterns = distinct_patterns(patterns, self.limits.max_patterns_per_client)?;
            // Registered as of the last delivered seq, then the state is
            // read: an event in between may arrive both ways (never neither).
            let added = {
                let mut local = self.local();
                let seq = local.seq;
                local.subscribers.add_patterns(id, &patterns, seq)?
            };
            let remote = self.client_snapshot(None).await?;
            let matcher = PatternIndex::of(&added);
            Ok(remote
                .events
                .into_iter()
                .filter(|e| matcher.matches(&e.topic))
                .collect())
        })
    }

    fn remove_patterns(&self, id: SubscriberId, patterns: Vec<Pattern>) -> HubFuture<'_, ()> {
        let removed = self.local().subscribers.remove_patterns(id, &patterns);
        Box::pin(std::future::ready(removed))
    }

    fn unsubscribe(&self, id: SubscriberId) {
        self.local().subscribers.remove(id);
    }

    fn stats(&self) -> HubStats {
        let local = self.local();
        local
            .subscribers
            .stats(local.seq, self.limits.history_size.min(local.seq as usize))
    }

    fn backplane_up(&self) -> Option<bool> {
        Some(self.up.load(Ordering::Acquire))
    }

    fn snapshot(
        &self,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
    ) -> HubFuture<'_, Snapshot> {
        Box::pin(async move {
            let patterns = distinct_patterns(patterns, self.limits.max_patterns_per_client)?;
            let matcher = PatternIndex::of(&patterns);
            let remote = self.client_snapshot(resume.as_ref()).await?;
            let events = remote
                .events
                .into_iter()
                .filter(|e| matcher.matches(&e.topic))
                .collect();
            Ok(Snapshot {
                epoch: remote.epoch,
                seq: remote.seq,
                catchup: if remote.kind == Kind::Resumed {
                    Catchup::Resumed(events)
                } else {
                    Catchup::Fresh(events)
                },
            })
        })
    }

    fn recent(&self, patterns: Vec<Pattern>, limit: usize) -> HubFuture<'_, Recent> {
        Box::pin(async move {
            let patterns = distinct_patterns(patterns, self.limits.max_patterns_per_client)?;
            let matcher = PatternIndex::of(&patterns);
            let remote = self.remote_snapshot(None, Fallback::History).await?;
            let mut events: Vec<Arc<Event>> = remote
                .events
                .into_iter()
                .rev()
                .filter(|e| matcher.matches(&e.topic))
                .take(limit)
                .collect();
            events.reverse();
            Ok(Recent {
                epoch: remote.epoch,
                seq: remote.seq,
                events,
            })
        })
    }
}
