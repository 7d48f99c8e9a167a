//! Reading the snapshot script's answer: history after a resume point, the
//! epoch's whole history, or the retained state, as events.
//!
//! Owns: [`RemoteSnapshot`] and its checks (every frame readable, history
//! an unbroken run), turning a frame from Redis back into an [`Event`],
//! and answering a client fresh rather than with a hole. Does not own:
//! registering the subscriber ([`hub`](super::hub)) or moving local
//! clients ([`listener`](super::listener)).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::warn;

use super::RedisHub;
use crate::hub::topics::Topic;
use crate::hub::{Epoch, Event, HubError, ResumePoint, Seq, Utf8Frame};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The events after the resume point.
    Resumed,
    /// The epoch's whole history, from seq 1.
    Restart,
    /// The retained state.
    Fresh,
    /// The whole history as Redis holds it (for `recent`: no resume).
    History,
}

/// What the snapshot script is asked for besides a resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fallback {
    /// The retained state when the point cannot be resumed.
    State,
    /// The epoch's whole history when it still starts at seq 1, else the
    /// retained state.
    Restart,
    /// The whole history, whatever its first seq (no resume point).
    History,
}

/// What the snapshot script answers.
pub(super) struct RemoteSnapshot {
    pub(super) epoch: Epoch,
    pub(super) seq: Seq,
    pub(super) kind: Kind,
    pub(super) events: Vec<Arc<Event>>,
    /// Every frame read, and history frames form an unbroken run.
    pub(super) readable: bool,
}

impl RedisHub {
    pub(super) async fn remote_snapshot(
        &self,
        resume: Option<&ResumePoint>,
        fallback: Fallback,
    ) -> Result<RemoteSnapshot, HubError> {
        let mut invocation = self.invocation(&self.snapshot);
        let epoch_arg = resume
            .and_then(|p| p.epoch.as_ref())
            .map_or("", |e| e.as_str())
            .to_owned();
        let since_arg = resume.map_or(String::new(), |p| p.seq.to_string());
        invocation
            .arg(epoch_arg)
            .arg(since_arg)
            .arg(match fallback {
                Fallback::State => "0",
                Fallback::Restart => "1",
                Fallback::History => "history",
            });
        let (epoch, seq, rotated, kind, frames): (String, Seq, i64, String, Vec<Vec<u8>>) =
            self.run(&invocation, "snapshot").await?;
        let epoch = Epoch::from_string(&epoch);
        self.observe(&epoch, seq);
        self.note_rotation(rotated, &epoch, "snapshot");
        let kind = match kind.as_str() {
            "resumed" => Kind::Resumed,
            "restart" => Kind::Restart,
            "history" => Kind::History,
            _ => Kind::Fresh,
        };
        let total = frames.len();
        let mut events: Vec<Arc<Event>> = frames
            .into_iter()
            .filter_map(|frame| String::from_utf8(frame).ok())
            .filter_map(Event::from_frame)
            .map(Arc::new)
            .collect();
        let mut readable = events.len() == total;
        match kind {
            Kind::Fresh => events.sort_by_key(|event| event.seq),
            // Read-only and possibly trimmed at the front: only the order
            // matters (`recent` leaves unreadable entries out).
            Kind::History => readable &= events.windows(2).all(|w| w[0].seq < w[1].seq),
            // History must be the unbroken run up to `seq`.
            Kind::Resumed | Kind::Restart => {
                let first = seq + 1 - events.len() as Seq;
                readable &= events
                    .iter()
                    .zip(first..)
                    .all(|(event, expected)| event.seq == expected);
            }
        }
        if !readable {
            warn!(
                epoch = %epoch,
                unreadable = total - events.len(),
                "redis history or state holds unreadable entries"
            );
        }
        Ok(RemoteSnapshot {
            epoch,
            seq,
            kind,
            events,
            readable,
        })
    }

    /// A snapshot for a client: a resume whose history cannot be read is
    /// answered fresh (never with a hole); unreadable state entries are
    /// left out (and logged).
    pub(super) async fn client_snapshot(
        &self,
        resume: Option<&ResumePoint>,
    ) -> Result<RemoteSnapshot, HubError> {
        let remote = self.remote_snapshot(resume, Fallback::State).await?;
        if remote.kind == Kind::Resumed && !remote.readable {
            return self.remote_snapshot(None, Fallback::State).await;
        }
        Ok(remote)
    }
}

impl Event {
    /// Reads an event frame as the publish script encodes it.
    pub(super) fn from_frame(frame: String) -> Option<Event> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            seq: Seq,
            topic: &'a str,
            #[serde(borrow)]
            data: &'a RawValue,
            #[serde(default)]
            retain: bool,
        }
        let wire: Wire<'_> = serde_json::from_str(&frame).ok()?;
        let (seq, topic, data, retain) = (
            wire.seq,
            Topic::parse(wire.topic).ok()?,
            wire.data.to_owned(),
            wire.retain,
        );
        Some(Event {
            seq,
            topic,
            data,
            retain,
            frame: Utf8Frame::from(frame),
        })
    }
}
