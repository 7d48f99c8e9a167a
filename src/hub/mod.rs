//! The event bus: sequence numbers, history, retained state and fan-out.
//!
//! Owns: what an event is ([`Event`], encoded once), epochs and resume
//! points, the [`Hub`] trait every backend implements, the local
//! subscriber registry ([`subscribers`]) that both backends fan out through,
//! the retained-state trie ([`retained`]), and the resource limits
//! ([`Limits`]): MAX_PATTERNS_PER_CLIENT per subscriber, MAX_RETAINED_BYTES
//! of retained state (a publish past it fails whole with
//! [`HubError::RetainedFull`]), and history bounded by HISTORY_SIZE events
//! and HISTORY_MAX_BYTES bytes (the oldest go first).
//!
//! No hub holds one of its locks while logging or doing work that grows
//! with all retained topics or all clients; a subscribe costs what its own
//! patterns match.
//!
//! Does not own: any transport. The hub never sees HTTP or WebSockets and
//! imports no crate of theirs: frames are [`Utf8Frame`]s (shared UTF-8
//! bytes); a transport subscribes ([`Subscribed`]: the hello and a
//! [`Subscription`]) and writes what arrives on its queue.

pub mod dedup;
pub mod frame;
pub mod memory;
pub mod queue;
pub mod redis;
pub mod retained;
pub mod subscribers;
pub mod topics;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

pub use frame::Utf8Frame;
pub use topics::{Pattern, Topic, TopicError};

/// Position of an event in its epoch; the first event is 1.
pub type Seq = u64;

/// Names one unbroken history. Opaque to clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A fresh epoch: 16 hex digits from the standard library's randomly
    /// seeded hasher, mixed with the clock and the pid.
    pub fn generate() -> Epoch {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let random = RandomState::new().hash_one((nanos, std::process::id()));
        Epoch(Arc::from(format!("{random:016x}")))
    }

    pub fn from_string(text: &str) -> Epoch {
        Epoch(Arc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Epoch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// One event as a publisher submits it.
#[derive(Debug)]
pub struct Publication {
    pub topic: Topic,
    pub data: Box<RawValue>,
    /// Keep as the topic's current state; with `data: null`, delete it.
    pub retain: bool,
    /// The publisher's idempotency id (1–128 chars): a repeat within the
    /// dedup window is answered with the original seq, not published again.
    pub id: Option<Box<str>>,
}

/// An accepted event, shared by history, retained state and every queue.
#[derive(Debug)]
pub struct Event {
    pub seq: Seq,
    pub topic: Topic,
    pub data: Box<RawValue>,
    pub retain: bool,
    /// `{"type":"event",...}`, encoded once and shared by every subscriber.
    pub frame: Utf8Frame,
}

impl Event {
    pub fn new(seq: Seq, publication: Publication) -> Event {
        #[derive(Serialize)]
        struct Frame<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            seq: Seq,
            topic: &'a str,
            data: &'a RawValue,
            /// Present (true) only on retained events, so a client can keep
            /// its mirror of the retained state.
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            retain: bool,
            ts: String,
        }
        let frame = Frame {
            kind: "event",
            seq,
            topic: publication.topic.as_str(),
            data: &publication.data,
            retain: publication.retain,
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        // Serialising borrowed strings and a RawValue cannot fail.
        let frame = serde_json::to_string(&frame).unwrap_or_default();
        Event {
            seq,
            topic: publication.topic,
            data: publication.data,
            retain: publication.retain,
            frame: Utf8Frame::from(frame),
        }
    }

    /// `retain: true` with `data: null` deletes the retained state.
    pub fn deletes_state(&self) -> bool {
        self.retain && self.data.get() == "null"
    }

    /// A retained event of `data` (JSON) on `topic`, for unit tests.
    #[cfg(test)]
    pub fn retained(seq: Seq, topic: &str, data: &str) -> Arc<Event> {
        let publication = Publication {
            topic: Topic::parse(topic).unwrap(),
            data: RawValue::from_string(data.to_owned()).unwrap(),
            retain: true,
            id: None,
        };
        Arc::new(Event::new(seq, publication))
    }
}

/// What arrives on a subscriber's queue.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The next matching event.
    Event(Arc<Event>),
    /// The hub's own stream broke (a backplane came back empty): the client
    /// must replace its state with this one; live events after `seq` follow.
    Reset(Arc<Reset>),
}

impl Delivery {
    /// The seq the client is at once it has applied this.
    pub fn seq(&self) -> Seq {
        match self {
            Delivery::Event(event) => event.seq,
            Delivery::Reset(reset) => reset.seq,
        }
    }

    /// The frame's bytes, borrowed.
    pub fn frame_bytes(&self) -> &[u8] {
        match self {
            Delivery::Event(event) => event.frame.as_bytes(),
            Delivery::Reset(reset) => reset.frame.as_bytes(),
        }
    }

    /// The frame to send, shared, not copied.
    pub fn frame(&self) -> Utf8Frame {
        match self {
            Delivery::Event(event) => event.frame.clone(),
            Delivery::Reset(reset) => reset.frame.clone(),
        }
    }
}

/// A `reset` for one subscriber (its state is filtered by its patterns).
#[derive(Debug)]
pub struct Reset {
    pub epoch: Epoch,
    pub seq: Seq,
    /// `{"type":"reset",...}`, encoded for this subscriber.
    pub frame: Utf8Frame,
}

/// Where a client wants to pick up: after `seq` of `epoch` (`None`: the
/// hub's current epoch, for simple clients that send only `since`).
#[derive(Clone, Debug)]
pub struct ResumePoint {
    pub epoch: Option<Epoch>,
    pub seq: Seq,
}

/// What a client must apply before live events.
#[derive(Debug)]
pub enum Catchup {
    /// The resume point was served: these are the missed matching events.
    Resumed(Vec<Arc<Event>>),
    /// A fresh start: the retained state matching the patterns, by topic.
    Fresh(Vec<Arc<Event>>),
}

/// The answer to a poll or a subscribe: where the hub is, and what to apply.
#[derive(Debug)]
pub struct Snapshot {
    pub epoch: Epoch,
    /// The last seq covered by `catchup`; live events follow from seq + 1.
    pub seq: Seq,
    pub catchup: Catchup,
}

/// The most recent events of some topics, for a page that starts with what
/// came before it (a trade tape): read-only, no resume point.
#[derive(Debug)]
pub struct Recent {
    pub epoch: Epoch,
    /// The hub's seq when they were read: every event here is at or below it.
    pub seq: Seq,
    /// Oldest first.
    pub events: Vec<Arc<Event>>,
}

/// Totals since start, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct HubStats {
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub cut_off: u64,
    pub history_len: usize,
    pub subscribers: usize,
}

/// The result of a publish.
#[derive(Debug, Serialize)]
pub struct Receipt {
    pub epoch: Epoch,
    pub seqs: Vec<Seq>,
    /// Every event carried an id already published: nothing was published
    /// now, `epoch` and `seqs` are the originals (HTTP answers 200).
    #[serde(skip)]
    pub repeated: bool,
}

/// Identifies one subscriber; the serial makes a reused slot distinct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberId {
    pub(crate) slot: usize,
    pub(crate) serial: u64,
}

/// What a subscribe answers: the hello and the live subscription, apart,
/// so a transport can release the hello once it is sent.
pub struct Subscribed {
    /// The hello: state or missed events, atomically with registration.
    pub snapshot: Snapshot,
    pub subscription: Subscription,
}

/// A live subscription. Dropping it unsubscribes.
pub struct Subscription {
    pub id: SubscriberId,
    /// Events after the hello's `seq`, bounded by CLIENT_QUEUE.
    pub queue: Arc<queue::ClientQueue>,
    hub: Arc<dyn Hub>,
}

impl Subscription {
    pub fn hub(&self) -> &Arc<dyn Hub> {
        &self.hub
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("backplane unavailable")]
    Unavailable,
    #[error("no such subscriber")]
    UnknownSubscriber,
    /// A subscribe would leave the client with more distinct patterns than
    /// MAX_PATTERNS_PER_CLIENT; nothing of it was applied.
    #[error("too many patterns: at most {limit} per client (MAX_PATTERNS_PER_CLIENT)")]
    TooManyPatterns { limit: usize },
    /// A publish would take retained state past MAX_RETAINED_BYTES; nothing
    /// of the batch was applied.
    #[error("retained state is full: MAX_RETAINED_BYTES={limit}")]
    RetainedFull { limit: usize },
    /// Some, not all, events of a batch carry an id already published (or
    /// the repeats name different epochs); nothing of it was applied.
    #[error(
        "id: {id:?} was already published, but this batch is not made only of repeats (of one epoch); nothing was published"
    )]
    RepeatedId { id: String },
}

/// What a hub bounds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// HISTORY_SIZE: events kept for resume.
    pub history_size: usize,
    /// HISTORY_MAX_BYTES: bytes of history (encoded frames) kept for resume.
    pub history_max_bytes: usize,
    /// MAX_RETAINED_BYTES: topic + data bytes of all retained events.
    pub max_retained_bytes: usize,
    /// MAX_PATTERNS_PER_CLIENT: distinct patterns one subscriber may hold.
    pub max_patterns_per_client: usize,
}

impl Limits {
    /// `history_size` events and nothing else bounded (unit tests).
    pub fn unbounded(history_size: usize) -> Limits {
        Limits {
            history_size,
            history_max_bytes: usize::MAX,
            max_retained_bytes: usize::MAX,
            max_patterns_per_client: usize::MAX,
        }
    }
}

impl From<&crate::config::Config> for Limits {
    fn from(config: &crate::config::Config) -> Limits {
        Limits {
            history_size: config.history_size,
            history_max_bytes: config.history_max_bytes,
            max_retained_bytes: config.max_retained_bytes,
            max_patterns_per_client: config.max_patterns_per_client,
        }
    }
}

pub type HubFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HubError>> + Send + 'a>>;

/// What every backend offers. Registration and snapshot happen atomically
/// with respect to publishing, so a client never misses or repeats an event
/// between its hello and its live stream.
pub trait Hub: Send + Sync + 'static {
    /// The current epoch.
    fn epoch(&self) -> Epoch;

    /// Accepts a batch all-or-nothing, assigning consecutive seqs.
    /// Events with an `id` seen within the dedup window are not published
    /// again: a batch made only of repeats answers the original receipt
    /// (`repeated`), a batch mixing repeats and new events fails whole with
    /// [`HubError::RepeatedId`].
    fn publish(&self, batch: Vec<Publication>) -> HubFuture<'_, Receipt>;

    /// Registers a subscriber with a bounded queue and answers its hello.
    fn subscribe(
        self: Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        queue_capacity: usize,
    ) -> HubFuture<'static, Subscribed>;

    /// Adds patterns to a subscriber; answers the retained state they match.
    fn add_patterns(
        &self,
        id: SubscriberId,
        patterns: Vec<Pattern>,
    ) -> HubFuture<'_, Vec<Arc<Event>>>;

    /// Removes patterns from a subscriber.
    fn remove_patterns(&self, id: SubscriberId, patterns: Vec<Pattern>) -> HubFuture<'_, ()>;

    /// Forgets a subscriber (called from `Subscription::drop`).
    fn unsubscribe(&self, id: SubscriberId);

    /// Totals for metrics.
    fn stats(&self) -> HubStats;

    /// Whether the backplane answers; `None` for a hub without one.
    fn backplane_up(&self) -> Option<bool> {
        None
    }

    /// The retained state's size (topic + data bytes of every retained
    /// event) when the hub knows it without asking anyone: how heavy a
    /// fresh hello can be. `None` when it does not.
    fn state_bytes(&self) -> Option<usize> {
        None
    }

    /// Polling: the events after `resume` when it can be served, else the
    /// retained state; never a silent hole.
    fn snapshot(
        &self,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
    ) -> HubFuture<'_, Snapshot>;

    /// The last `limit` events in history that match `patterns`, oldest
    /// first (`?history=N` on `/_switchyard/state`).
    fn recent(&self, patterns: Vec<Pattern>, limit: usize) -> HubFuture<'_, Recent>;
}
