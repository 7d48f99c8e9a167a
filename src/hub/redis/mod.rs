//! The Redis hub: several replicas act as one.
//!
//! Redis holds the epoch, the seq counter, a capped history list and the
//! retained state (a hash), all under `REDIS_PREFIX`. Publishing is one Lua
//! script ([`scripts`]): it takes the next seqs, appends to history, updates
//! the state and PUBLISHes each encoded event, so seqs are gap-free across
//! replicas and every replica hears events in seq order. Each replica
//! subscribes on a dedicated connection and fans out through its local
//! [`Subscribers`], on the hub's runtime (as the in-process hub does), so
//! the HTTP loops only run scripts.
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
//! # Files
//!
//! - `mod.rs` (this): the [`RedisHub`] state, its keys and bounds, `start`.
//! - [`scripts`]: the Lua scripts (`*.lua` beside it, `include_str!`ed),
//!   and the layout of their KEYS and ARGV.
//! - [`connection`]: the command connection and calling a script on it.
//! - [`snapshot`]: the snapshot script's answer as events.
//! - [`listener`]: the pub/sub subscription, periodic check, catch-up and
//!   resets.
//! - [`hub`]: the [`Hub`](super::Hub) impl (subscribe, publish, patterns).
//! - [`belief`]: what this replica knows Redis held.
//!
//! Locking: std `Mutex`es guard the local state and the belief; neither is
//! held across an `.await` (Redis calls happen before or after) nor while
//! logging (cut-offs and resets are logged after release).

mod belief;
mod connection;

pub use self::connection::connect;
mod hub;
mod listener;
mod scripts;
mod snapshot;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, Script};
use tracing::warn;

use self::belief::Belief;
use super::subscribers::Subscribers;
use super::{Epoch, Event, Limits, Seq};
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
    /// Redis's host and port, for log lines (never the password).
    host: String,
    /// When "redis unreachable" may be said again.
    down_log: Mutex<connection::DownLog>,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisHub {
    /// Creates the hub and starts its listener on `runtime` (the hub's
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
            host: crate::config::redis_host(url),
            down_log: Mutex::new(connection::DownLog::default()),
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
}
