//! The Redis hub: several replicas act as one.
//!
//! Redis holds the epoch, the seq counter, a capped history list and the
//! retained state (a hash), all under `REDIS_PREFIX`. Publishing is one Lua
//! script ([`scripts`]): it takes the next seqs, appends to history, updates
//! the state and PUBLISHes each encoded event, so seqs are gap-free across
//! replicas and every replica hears events in seq order. Each replica
//! subscribes on a dedicated connection and fans out through its local
//! [`Subscribers`], on the broadcaster's client runtime (as the in-process
//! hub does), so the HTTP runtime only runs scripts.
//!
//! # Epoch integrity
//!
//! An epoch names one unbroken history; it must never continue over a
//! history that went backwards or vanished. Redis can do both while the
//! connection looks healthy: restarted from an older RDB/AOF, failed over
//! to a replica that lagged, FLUSHALL/FLUSHDB, eviction under `maxmemory`,
//! keys deleted by hand. Redis itself cannot tell (a restored snapshot is
//! self-consistent), so the evidence is what the gateways saw. Each replica
//! keeps a [`Belief`]: the epoch the scripts last reported, the highest seq
//! it has seen in it (receipts, snapshots, checks, events heard), and the
//! last few epochs it saw replaced. Every script starts with the same
//! `verify()` and is handed that belief; it rotates to a fresh epoch when
//!
//! - the epoch key is missing (flushed, evicted, restarted empty);
//! - Redis holds the believed epoch with a seq below the highest one seen
//!   (older snapshot, lagging replica);
//! - Redis holds an epoch this replica saw replaced (a snapshot older than
//!   the last rotation);
//! - a counter says retained state or history exists but the key is gone
//!   (partial eviction).
//!
//! The rotation is a compare-and-set inside the script: it deletes the
//! old epoch's keys, writes the fresh epoch and PUBLISHes a notice. A second
//! replica noticing the same loss runs its script after the first (scripts
//! are atomic), finds an epoch it has not seen (neither believed nor
//! retired), accepts it and rotates nothing: one loss, one new epoch. Stale
//! replies (computed before a rotation whose reply arrived first) name a
//! retired epoch and are ignored. A seq reported in the believed epoch only
//! ever raises the floor, and Redis hands out seqs only upwards, so a
//! healthy Redis never trips the check. What this cannot see: a loss while
//! no replica was running (nobody remembers the history), and a replica
//! restarted after the loss (it starts with no belief). Why not a generation
//! token written with the data: a restored snapshot restores the token too;
//! only memory outside Redis can tell that Redis went back.
//!
//! Where it is detected: the publish script (before taking seqs), the
//! snapshot script (every subscribe, poll and catch-up), and the listener's
//! periodic check (every [`CHECK_EVERY`], a script, not a PING), so missing
//! keys are noticed, and a new epoch created, within about a second even
//! with no publishing.
//!
//! # Resets
//!
//! The listener moves local clients to whatever Redis holds: a gap in seq
//! (a missed message, a reconnect) is filled from history; a new epoch
//! resets every local client to that epoch's seq 0 with empty state and
//! then replays the epoch's history as ordinary events, so events published
//! in it before this replica noticed are delivered, not skipped. Only when
//! history no longer reaches back to seq 1 (or holds unreadable or missing
//! entries) is the reset at Redis's current seq with its retained state.
//! Each client gets one `reset` per new epoch; an old resume point is not
//! served (`resumed:false`), because its epoch is gone.
//!
//! A subscriber registers only when its snapshot names the epoch the
//! listener delivers; otherwise (a rotation in between) it waits for the
//! listener and reads again, so it never registers with a seq of another
//! epoch. A snapshot behind the listener is topped up from the listener's
//! recent events (at most HISTORY_SIZE), or read again.
//!
//! # Idempotent publish
//!
//! An event with an `id` stores `<prefix>id:<id>` → "epoch seq" with a TTL of
//! [`ID_WINDOW`] (10 minutes) in the publish script itself, so the
//! id and the event are applied together or not at all. A batch whose every
//! event repeats a remembered id (of one epoch) publishes nothing and
//! answers the original epoch and seqs; a batch mixing repeats and new
//! events is refused whole ([`HubError::RepeatedId`]). Ids survive an epoch
//! rotation (the original event was accepted); they are lost with Redis's
//! data (a flush, or a restore from before the first publish).
//!
//! # Redis lost
//!
//! While Redis is unreachable publishes fail with `Unavailable` (503),
//! clients stay connected, `/health` says down (any failed script marks it
//! down; only a successful check marks it up), and the listener reconnects
//! with backoff from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], starting again
//! from the first step after [`HEALTHY_PERIOD`] of health.
//!
//! The command connection is one multiplexed connection in a slot, dropped
//! on any failure (including a reply slower than [`REDIS_TIMEOUT`]) and
//! opened again, with a connect timeout, by the next call. The redis crate's
//! `ConnectionManager` is not used: it needs the `connection-manager`
//! feature and one more dependency (`arc-swap`, not in the lockfile), it
//! would replace only these dozen lines, and with the slot any failure (a
//! reply slower than REDIS_TIMEOUT included) drops the connection at once;
//! the listener's pub/sub connection needs its own loop anyway.
//!
//! # Bounds
//!
//! The same as the memory hub's: MAX_PATTERNS_PER_CLIENT is checked
//! (patterns deduplicated with a set) before Redis is asked anything and
//! again by the local registry. MAX_RETAINED_BYTES is checked atomically
//! inside the publish script: a counter key (`retained_bytes`) and a hash of
//! each retained topic's size (`state_sizes`, topic + data bytes) are kept
//! with the state hash, the script computes what the whole batch would
//! leave and answers "full" before taking any seq. (A state hash written by
//! an older version has no counter yet: the first publish counts it once.)
//! History is trimmed in the same script to HISTORY_SIZE events and
//! HISTORY_MAX_BYTES bytes of frames (a `history_bytes` counter; the oldest
//! go first). The listener's recent events are bounded by HISTORY_SIZE.
//!
//! Locking: std `Mutex`es guard the local state and the belief; neither is
//! held across an `.await` (Redis calls happen before or after) nor while
//! logging (cut-offs and resets are logged after release).

mod belief;
mod scripts;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, Script, ScriptInvocation};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{info, warn};

use self::belief::Belief;
use super::retained::RetainedState;
use super::subscribers::{distinct_patterns, log_cut_offs, Registration, Subscribers};
use super::topics::{Pattern, PatternIndex, Topic};
use super::{
    Catchup, Epoch, Event, Hub, HubError, HubFuture, HubStats, Limits, Publication, Receipt,
    ResumePoint, Seq, Snapshot, SubscriberId, Subscription,
};
use crate::shutdown::Shutdown;

/// Redis calls slower than this count as a failure.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connected and healthy this long: the next reconnect starts from
/// FIRST_BACKOFF again.
pub const HEALTHY_PERIOD: Duration = Duration::from_secs(5);
/// How often the listener verifies the epoch (and that it is not behind).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long Redis remembers a publish id.
pub const ID_WINDOW: Duration = Duration::from_secs(600);
/// Snapshots a subscribe reads before it gives up on agreeing with the
/// listener (each after the listener moved, or at most LISTENER_WAIT).
const SUBSCRIBE_ATTEMPTS: usize = 4;
const LISTENER_WAIT: Duration = Duration::from_secs(2);

struct Keys {
    epoch: String,
    seq: String,
    history: String,
    state: String,
    /// topic → its retained size (topic + data bytes).
    state_sizes: String,
    /// Sum of `state_sizes`.
    retained_bytes: String,
    /// Bytes of the frames in `history`.
    history_bytes: String,
    channel: String,
    /// Prefix of the publish-id keys.
    id: String,
}

pub struct RedisHub {
    client: Client,
    keys: Keys,
    limits: Limits,
    check: Script,
    publish: Script,
    snapshot: Script,
    /// The command connection; `None` while Redis is unreachable.
    commands: Mutex<Option<MultiplexedConnection>>,
    /// What `/health` reports as `"redis"`.
    up: AtomicBool,
    belief: Mutex<Belief>,
    local: Mutex<Local>,
}

/// This replica's view: where its delivered stream is, and who listens.
struct Local {
    /// Empty until the listener's first catch-up.
    epoch: Epoch,
    /// Seq of the last event delivered to local subscribers.
    seq: Seq,
    /// The last delivered events (at most HISTORY_SIZE), in seq order
    /// without gaps.
    recent: VecDeque<Arc<Event>>,
    subscribers: Subscribers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The events after the resume point.
    Resumed,
    /// The epoch's whole history, from seq 1.
    Restart,
    /// The retained state.
    Fresh,
}

/// What the snapshot script answers.
struct RemoteSnapshot {
    epoch: Epoch,
    seq: Seq,
    kind: Kind,
    events: Vec<Arc<Event>>,
    /// Every frame read, and history frames form an unbroken run.
    readable: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisHub {
    /// Creates the hub and starts its listener on `runtime` (the clients'
    /// runtime: the listener fans out); Redis need not be up yet.
    pub fn start(
        url: &str,
        prefix: &str,
        limits: Limits,
        shutdown: &Shutdown,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<RedisHub>, String> {
        let client = Client::open(url).map_err(|error| format!("REDIS_URL: {error}"))?;
        let key = |name: &str| format!("{prefix}{name}");
        let script = |body: &str| Script::new(&format!("{}{body}", scripts::VERIFY));
        let hub = Arc::new(RedisHub {
            client,
            keys: Keys {
                epoch: key("epoch"),
                seq: key("seq"),
                history: key("history"),
                state: key("state"),
                state_sizes: key("state_sizes"),
                retained_bytes: key("retained_bytes"),
                history_bytes: key("history_bytes"),
                channel: key("events"),
                id: key("id:"),
            },
            limits,
            check: script(scripts::CHECK),
            publish: script(scripts::PUBLISH),
            snapshot: script(scripts::SNAPSHOT),
            commands: Mutex::new(None),
            up: AtomicBool::new(false),
            belief: Mutex::new(Belief::default()),
            local: Mutex::new(Local {
                epoch: Epoch::from_string(""),
                seq: 0,
                recent: VecDeque::new(),
                subscribers: Subscribers::new(limits.max_patterns_per_client),
            }),
        });
        let listener = hub.clone();
        let stop = shutdown.clone();
        shutdown.spawn_on(
            async move {
                tokio::select! {
                    _ = listener.listen() => {}
                    _ = stop.requested() => {}
                }
            },
            runtime,
        );
        Ok(hub)
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        lock(&self.local)
    }

    fn local_point(&self) -> (Epoch, Seq) {
        let local = self.local();
        (local.epoch.clone(), local.seq)
    }

    fn set_up(&self, up: bool, reason: &str) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            if up {
                info!("redis is up");
            } else {
                warn!(reason, "redis is down; reconnecting with backoff");
            }
        }
    }

    /// Takes in a script's report; false for a stale one (a retired epoch).
    fn observe(&self, epoch: &Epoch, seq: Seq) -> bool {
        lock(&self.belief).observe(epoch, seq)
    }

    fn note_rotation(&self, rotated: i64, epoch: &Epoch, by: &str) {
        if rotated != 0 {
            warn!(
                new_epoch = %epoch,
                by,
                "redis lost or rolled back the history of the epoch; started a new epoch"
            );
        }
    }

    /// The command connection, connecting when there is none.
    async fn commands(&self) -> Result<MultiplexedConnection, HubError> {
        let existing = lock(&self.commands).clone();
        if let Some(connection) = existing {
            return Ok(connection);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| {
                self.set_up(false, &error.to_string());
                HubError::Unavailable
            })?;
        *lock(&self.commands) = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a broken command connection so the next call reconnects.
    fn drop_commands(&self) {
        *lock(&self.commands) = None;
    }

    /// A script call with the keys and the common arguments (the belief).
    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let belief = lock(&self.belief).args();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .key(&self.keys.history)
            .key(&self.keys.state)
            .key(&self.keys.state_sizes)
            .key(&self.keys.retained_bytes)
            .key(&self.keys.history_bytes)
            .arg(&self.keys.channel)
            .arg(belief.epoch)
            .arg(belief.floor)
            .arg(belief.retired)
            .arg(Epoch::generate().as_str());
        invocation
    }

    /// Runs a script; any failure drops the connection and marks Redis down.
    async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        what: &'static str,
    ) -> Result<T, HubError> {
        let mut connection = self.commands().await?;
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| {
                self.drop_commands();
                self.set_up(false, &error.to_string());
                warn!(%error, what, "redis call failed");
                HubError::Unavailable
            })
    }

    async fn remote_snapshot(
        &self,
        resume: Option<&ResumePoint>,
        restart: bool,
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
            .arg(if restart { "1" } else { "0" });
        let (epoch, seq, rotated, kind, frames): (String, Seq, i64, String, Vec<Vec<u8>>) =
            self.run(&invocation, "snapshot").await?;
        let epoch = Epoch::from_string(&epoch);
        self.observe(&epoch, seq);
        self.note_rotation(rotated, &epoch, "snapshot");
        let kind = match kind.as_str() {
            "resumed" => Kind::Resumed,
            "restart" => Kind::Restart,
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
    async fn client_snapshot(
        &self,
        resume: Option<&ResumePoint>,
    ) -> Result<RemoteSnapshot, HubError> {
        let remote = self.remote_snapshot(resume, false).await?;
        if remote.kind == Kind::Resumed && !remote.readable {
            return self.remote_snapshot(None, false).await;
        }
        Ok(remote)
    }

    /// The listener: connects, catches up, then delivers what Redis
    /// publishes; on any failure marks Redis down and starts over.
    async fn listen(self: Arc<Self>) {
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

    async fn listen_once(&self, healthy_since: &mut Option<Instant>) -> Result<Infallible, String> {
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
    async fn check(&self, first: bool) -> Result<(), String> {
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
    async fn receive(&self, epoch: Epoch, frame: &str) -> Result<(), String> {
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
    async fn catch_up(&self) -> Result<(), String> {
        let (local_epoch, local_seq) = self.local_point();
        let started = !local_epoch.as_str().is_empty();
        let point = started.then(|| ResumePoint {
            epoch: Some(local_epoch.clone()),
            seq: local_seq,
        });
        let remote = self
            .remote_snapshot(point.as_ref(), true)
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
            self.remote_snapshot(None, false)
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
    fn reset(&self, epoch: &Epoch, seq: Seq, state: Vec<Arc<Event>>, replay: &[Arc<Event>]) {
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
            local.subscribers.take_cut_offs()
        };
        log_cut_offs(cut_offs);
    }

    /// Delivers events of `epoch` in seq order, skipping what was already
    /// delivered (and everything, when the listener has moved to another
    /// epoch meanwhile).
    fn deliver(&self, epoch: &Epoch, events: &[Arc<Event>]) {
        let cut_offs = {
            let mut local = self.local();
            if local.epoch != *epoch {
                return;
            }
            for event in events {
                self.deliver_locked(&mut local, event);
            }
            local.subscribers.take_cut_offs()
        };
        log_cut_offs(cut_offs);
    }

    fn deliver_locked(&self, local: &mut Local, event: &Arc<Event>) {
        if event.seq != local.seq + 1 {
            return;
        }
        local.seq = event.seq;
        local.subscribers.deliver(event);
        if self.limits.history_size == 0 {
            return;
        }
        if local.recent.len() >= self.limits.history_size {
            local.recent.pop_front();
        }
        local.recent.push_back(event.clone());
    }

    /// Registers a subscriber at `remote`'s point when the listener
    /// delivers the same epoch, topping it up from the recent events when
    /// the listener is already past it; `None`: read again.
    fn register(
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
            (registration, local.subscribers.take_cut_offs())
        };
        log_cut_offs(cut_offs);
        Ok(Some(registration))
    }

    /// After a snapshot of `seen` that the listener does not deliver: waits
    /// (at most LISTENER_WAIT) for the listener to move, unless `seen` is an
    /// epoch already replaced (then reading again is enough).
    async fn wait_for_listener(&self, seen: &Epoch) {
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

    async fn subscribe_inner(
        self: Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        queue_capacity: usize,
    ) -> Result<Subscription, HubError> {
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
            return Ok(Subscription {
                id: registration.id,
                snapshot: Snapshot {
                    epoch: remote.epoch,
                    seq: remote.seq,
                    catchup,
                },
                queue: registration.queue,
                hub: self,
            });
        }
        warn!("subscribe: redis and this replica's listener disagree on the epoch; refused");
        Err(HubError::Unavailable)
    }

    async fn publish_inner(&self, batch: Vec<Publication>) -> Result<Receipt, HubError> {
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

impl Event {
    /// Reads an event frame as the publish script encodes it.
    fn from_frame(frame: String) -> Option<Event> {
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
            frame: Utf8Bytes::from(frame),
        })
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
    ) -> HubFuture<'static, Subscription> {
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
}
