//! The listener: this replica's subscription to the Redis channel, which
//! moves local subscribers to wherever Redis is.
//!
//! Owns: reconnecting with backoff, the periodic epoch check
//! ([`CHECK_EVERY`]), delivering events heard in seq order, catching up
//! from history after a gap, and resets when history cannot fill it. Runs
//! on the hub's runtime, so fan-out happens there. Does not
//! own: the command connection ([`connection`](super::connection)).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use tracing::warn;

use super::snapshot::{Fallback, Kind};
use super::{
    lock, Local, RedisHub, CHECK_EVERY, FIRST_BACKOFF, HEALTHY_PERIOD, MAX_BACKOFF, REDIS_TIMEOUT,
};
use crate::hub::retained::RetainedState;
use crate::hub::{Epoch, Event, ResumePoint, Seq};

impl RedisHub {
    /// The listener: connects, catches up, then delivers what Redis
    /// publishes; on any failure marks Redis down and starts over.
    pub(super) async fn listen(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut healthy_since = None;
            let Err(reason) = self.listen_once(&mut healthy_since).await;
            self.drop_commands();
            self.set_up(false, &reason);
            if healthy_since.is_some_and(|since: Instant| since.elapsed() >= HEALTHY_PERIOD) {
                backoff = FIRST_BACKOFF;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    pub(super) async fn listen_once(
        &self,
        healthy_since: &mut Option<Instant>,
    ) -> Result<Infallible, String> {
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(REDIS_TIMEOUT, pubsub.subscribe(&self.keys.channel))
            .await
            .map_err(|_| "subscribe timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        // Whatever we missed while away (or everything, at first start).
        self.check(true).await?;
        *healthy_since = Some(Instant::now());
        let mut messages = pubsub.on_message();
        let mut checks = tokio::time::interval(CHECK_EVERY);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err("subscription connection closed".to_owned());
                    };
                    let payload = String::from_utf8_lossy(message.get_payload_bytes());
                    match payload.split_once('\n') {
                        Some((epoch, frame)) => {
                            self.receive(Epoch::from_string(epoch), frame).await?;
                        }
                        None => warn!("message without an epoch on the redis channel; ignored"),
                    }
                }
                _ = checks.tick() => self.check(false).await?,
            }
        }
    }

    /// The periodic check: verifies the epoch (the script rotates when
    /// Redis lost it) and catches up when this replica is not where Redis
    /// is. Marks Redis up when it answers.
    pub(super) async fn check(&self, first: bool) -> Result<(), String> {
        let invocation = self.invocation(&self.check);
        let (epoch, seq, rotated): (String, Seq, i64) = self
            .run(&invocation, "check")
            .await
            .map_err(|e| e.to_string())?;
        let epoch = Epoch::from_string(&epoch);
        self.observe(&epoch, seq);
        self.note_rotation(rotated, &epoch, "check");
        let (local_epoch, local_seq) = self.local_point();
        if first || epoch != local_epoch || seq > local_seq {
            self.catch_up().await?;
        }
        self.set_up(true, "");
        Ok(())
    }

    /// One message from the channel: an event, or (empty frame) the notice
    /// that a script started a new epoch.
    pub(super) async fn receive(&self, epoch: Epoch, frame: &str) -> Result<(), String> {
        if lock(&self.belief).is_retired(&epoch) {
            return Ok(()); // late news from before a rotation
        }
        let (local_epoch, local_seq) = self.local_point();
        if frame.is_empty() {
            if epoch != local_epoch {
                self.catch_up().await?;
            }
            return Ok(());
        }
        let Some(event) = Event::from_frame(frame.to_owned()) else {
            warn!("unreadable event on the redis channel; catching up from history");
            return self.catch_up().await;
        };
        self.observe(&epoch, event.seq);
        if epoch != local_epoch || event.seq > local_seq + 1 {
            return self.catch_up().await;
        }
        if event.seq == local_seq + 1 {
            self.deliver(&epoch, &[Arc::new(event)]);
        }
        Ok(())
    }

    /// Brings local subscribers to Redis's current point: the missing events
    /// from history; in a new epoch a reset to its seq 0 and its history;
    /// a reset to the current state when history cannot serve either.
    pub(super) async fn catch_up(&self) -> Result<(), String> {
        let (local_epoch, local_seq) = self.local_point();
        let started = !local_epoch.as_str().is_empty();
        let point = started.then(|| ResumePoint {
            epoch: Some(local_epoch.clone()),
            seq: local_seq,
        });
        let remote = self
            .remote_snapshot(point.as_ref(), Fallback::Restart)
            .await
            .map_err(|e| e.to_string())?;
        match remote.kind {
            Kind::Resumed if remote.readable => {
                self.deliver(&remote.epoch, &remote.events);
                return Ok(());
            }
            Kind::Restart if remote.readable => {
                if started {
                    warn!(
                        old_epoch = %local_epoch,
                        new_epoch = %remote.epoch,
                        replayed = remote.events.len(),
                        "new redis epoch; resetting clients to its start and replaying it"
                    );
                }
                self.reset(&remote.epoch, 0, Vec::new(), &remote.events);
                return Ok(());
            }
            _ => {}
        }
        let fresh = if remote.kind == Kind::Fresh {
            remote
        } else {
            self.remote_snapshot(None, Fallback::State)
                .await
                .map_err(|e| e.to_string())?
        };
        if started {
            warn!(
                old_epoch = %local_epoch,
                new_epoch = %fresh.epoch,
                seq = fresh.seq,
                "redis history cannot fill the gap; resetting clients to the current state"
            );
        }
        self.reset(&fresh.epoch, fresh.seq, fresh.events, &[]);
        Ok(())
    }

    /// Every local subscriber restarts at (`epoch`, `seq`) with `state`,
    /// then gets `replay` (the events after `seq`) as ordinary events.
    pub(super) fn reset(
        &self,
        epoch: &Epoch,
        seq: Seq,
        state: Vec<Arc<Event>>,
        replay: &[Arc<Event>],
    ) {
        // Indexed before the lock: each subscriber's share is a trie walk.
        let mut retained = RetainedState::default();
        for event in state {
            retained.insert(event);
        }
        let cut_offs = {
            let mut local = self.local();
            local.epoch = epoch.clone();
            local.seq = seq;
            local.recent.clear();
            local.subscribers.reset(epoch, seq, &retained);
            for event in replay {
                self.deliver_locked(&mut local, event);
            }
            local.subscribers.take_after_unlock()
        };
        cut_offs.run();
    }

    /// Delivers events of `epoch` in seq order, skipping what was already
    /// delivered (and everything, when the listener has moved to another
    /// epoch meanwhile).
    pub(super) fn deliver(&self, epoch: &Epoch, events: &[Arc<Event>]) {
        let cut_offs = {
            let mut local = self.local();
            if local.epoch != *epoch {
                return;
            }
            for event in events {
                self.deliver_locked(&mut local, event);
            }
            local.subscribers.take_after_unlock()
        };
        cut_offs.run();
    }

    pub(super) fn deliver_locked(&self, local: &mut Local, event: &Arc<Event>) {
        if event.seq != local.seq + 1 {
            return;
        }
        local.seq = event.seq;
        local.subscribers.deliver(event, true);
        if self.limits.history_size == 0 {
            return;
        }
        if local.recent.len() >= self.limits.history_size {
            local.recent.pop_front();
        }
        local.recent.push_back(event.clone());
    }
}
