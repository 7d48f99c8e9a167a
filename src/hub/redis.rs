//! The Redis hub: several replicas act as one.
//!
//! Redis holds the epoch, the seq counter, a capped history list and the
//! retained state (a hash), all under `REDIS_PREFIX`. Publishing is one Lua
//! script: it takes the next seqs, appends to history, updates the state and
//! PUBLISHes each encoded event, so seqs are gap-free across replicas and
//! every replica hears events in seq order. Each replica subscribes on a
//! dedicated connection and fans out through its local [`Subscribers`].
//!
//! Trouble: a replica that sees a gap (it missed a message, e.g. across a
//! reconnect) fetches the missing events from history before delivering
//! more; when history cannot fill it, or Redis came back empty (the epoch
//! key is gone: exactly one new epoch is created, atomically, by whichever
//! script runs first), every local client gets a `reset`. While Redis is
//! unreachable publishes fail with `Unavailable` (503), clients stay
//! connected, and the listener reconnects with backoff.
//!
//! Bounds, the same as the memory hub's: MAX_PATTERNS_PER_CLIENT is
//! checked (patterns deduplicated with a set) before Redis is asked
//! anything and again by the local registry. MAX_RETAINED_BYTES is checked
//! atomically inside the publish script: a counter key (`retained_bytes`)
//! and a hash of each retained topic's size (`state_sizes`, topic + data
//! bytes) are kept with the state hash, the script computes what the whole
//! batch would leave and answers "full" before taking any seq. (A state hash
//! written by an older version has no counter yet: the first publish counts
//! it once, each entry as topic + stored frame, a slight over-estimate that
//! is released exactly when the topic is deleted or replaced.) History is
//! trimmed in the same script to HISTORY_SIZE events and HISTORY_MAX_BYTES
//! bytes of frames (a `history_bytes` counter; the oldest go first).
//!
//! Locking: one std `Mutex` guards the local state; it is never held across
//! an `.await` (Redis calls happen before or after it) nor while logging
//! (cut-offs and resets are logged after it is released).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{info, warn};

use super::retained::RetainedState;
use super::subscribers::{distinct_patterns, log_cut_offs, Subscribers};
use super::topics::{Pattern, PatternIndex, Topic};
use super::{
    Catchup, Epoch, Event, Hub, HubError, HubFuture, HubStats, Limits, Publication, Receipt,
    ResumePoint, Seq, Snapshot, SubscriberId, Subscription,
};
use crate::shutdown::Shutdown;

/// Events the listener keeps after delivering them, to hand a subscriber
/// whose snapshot was read just before the listener moved on.
const RECENT: usize = 4096;
/// Redis calls slower than this count as a failure.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the listener checks the command connection while idle.
const PING_EVERY: Duration = Duration::from_secs(1);

/// KEYS (all scripts): epoch, seq, history, state, state_sizes,
/// retained_bytes, history_bytes. ARGV: new epoch. → {epoch, seq}
const ENSURE_EPOCH: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
end
return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
"#;

/// KEYS: as above. ARGV: channel, history size, new epoch, ts, history
/// max bytes, retained max bytes, then (topic, retain 0/1, data JSON) per
/// event. → {epoch, {seqs}, 0}, or {epoch, {}, 1} when the batch would take
/// retained state past its limit (nothing applied).
const PUBLISH: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
end
local retained = redis.call('GET', KEYS[6])
if not retained then
  retained = 0
  local all = redis.call('HGETALL', KEYS[4])
  for j = 1, #all, 2 do
    local size = #all[j] + #all[j + 1]
    redis.call('HSET', KEYS[5], all[j], size)
    retained = retained + size
  end
end
retained = tonumber(retained)
local after = retained
local sizes = {}
for i = 7, #ARGV, 3 do
  if ARGV[i + 1] == '1' then
    local topic, data = ARGV[i], ARGV[i + 2]
    local old = sizes[topic]
    if old == nil then old = tonumber(redis.call('HGET', KEYS[5], topic) or '0') end
    local new = 0
    if data ~= 'null' then new = #topic + #data end
    after = after - old + new
    sizes[topic] = new
  end
end
if after > tonumber(ARGV[6]) and after > retained then return {epoch, {}, 1} end
local history_bytes = redis.call('GET', KEYS[7])
if history_bytes then
  history_bytes = tonumber(history_bytes)
else
  history_bytes = 0
  for _, old in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do history_bytes = history_bytes + #old end
end
local seqs = {}
for i = 7, #ARGV, 3 do
  local topic, retain, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local seq = redis.call('INCR', KEYS[2])
  local frame = '{"type":"event","seq":' .. seq .. ',"topic":"' .. topic .. '","data":' .. data
  if retain == '1' then frame = frame .. ',"retain":true' end
  frame = frame .. ',"ts":"' .. ARGV[4] .. '"}'
  redis.call('RPUSH', KEYS[3], frame)
  history_bytes = history_bytes + #frame
  if retain == '1' then
    if data == 'null' then
      redis.call('HDEL', KEYS[4], topic)
      redis.call('HDEL', KEYS[5], topic)
    else
      redis.call('HSET', KEYS[4], topic, frame)
      redis.call('HSET', KEYS[5], topic, #topic + #data)
    end
  end
  redis.call('PUBLISH', ARGV[1], epoch .. '\n' .. frame)
  seqs[#seqs + 1] = seq
end
redis.call('SET', KEYS[6], after)
local size, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[5])
local len = redis.call('LLEN', KEYS[3])
while len > 0 and (len > size or history_bytes > max_bytes) do
  history_bytes = history_bytes - #redis.call('LPOP', KEYS[3])
  len = len - 1
end
redis.call('SET', KEYS[7], history_bytes)
return {epoch, seqs, 0}
"#;

/// KEYS: epoch, seq, history, state. ARGV: epoch ('' = current), since
/// ('' = none). → {epoch, seq, 'resumed'|'fresh', frames}
const SNAPSHOT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'', 0, 'fresh', {}} end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[2] ~= '' then
  local since = tonumber(ARGV[2])
  local len = redis.call('LLEN', KEYS[3])
  local oldest = seq - len + 1
  if (ARGV[1] == '' or ARGV[1] == epoch) and since <= seq and since + 1 >= oldest then
    return {epoch, seq, 'resumed', redis.call('LRANGE', KEYS[3], since + 1 - oldest, -1)}
  end
end
return {epoch, seq, 'fresh', redis.call('HVALS', KEYS[4])}
"#;

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
}

pub struct RedisHub {
    client: Client,
    keys: Keys,
    limits: Limits,
    ensure_epoch: Script,
    publish: Script,
    snapshot: Script,
    /// The command connection; `None` while Redis is unreachable.
    commands: Mutex<Option<MultiplexedConnection>>,
    /// What `/health` reports as `"redis"`.
    up: AtomicBool,
    local: Mutex<Local>,
}

/// This replica's view: where its delivered stream is, and who listens.
struct Local {
    /// Empty until the first connection to Redis.
    epoch: Epoch,
    /// Seq of the last event delivered to local subscribers.
    seq: Seq,
    recent: VecDeque<Arc<Event>>,
    subscribers: Subscribers,
}

/// What the snapshot script answers.
struct RemoteSnapshot {
    epoch: Epoch,
    seq: Seq,
    resumed: bool,
    events: Vec<Arc<Event>>,
}

impl RedisHub {
    /// Creates the hub and starts its listener; Redis need not be up yet.
    pub fn start(
        url: &str,
        prefix: &str,
        limits: Limits,
        shutdown: &Shutdown,
    ) -> Result<Arc<RedisHub>, String> {
        let client = Client::open(url).map_err(|error| format!("REDIS_URL: {error}"))?;
        let key = |name: &str| format!("{prefix}{name}");
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
            },
            limits,
            ensure_epoch: Script::new(ENSURE_EPOCH),
            publish: Script::new(PUBLISH),
            snapshot: Script::new(SNAPSHOT),
            commands: Mutex::new(None),
            up: AtomicBool::new(false),
            local: Mutex::new(Local {
                epoch: Epoch::from_string(""),
                seq: 0,
                recent: VecDeque::with_capacity(RECENT),
                subscribers: Subscribers::new(limits.max_patterns_per_client),
            }),
        });
        let listener = hub.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            tokio::select! {
                _ = listener.listen() => {}
                _ = stop.requested() => {}
            }
        });
        Ok(hub)
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// The command connection, connecting when there is none.
    async fn commands(&self) -> Result<MultiplexedConnection, HubError> {
        let existing = self.commands.lock().ok().and_then(|slot| slot.clone());
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
            .map_err(|_| HubError::Unavailable)?;
        if let Ok(mut slot) = self.commands.lock() {
            *slot = Some(connection.clone());
        }
        Ok(connection)
    }

    /// Forgets a broken command connection so the next call reconnects.
    fn drop_commands(&self) {
        if let Ok(mut slot) = self.commands.lock() {
            *slot = None;
        }
    }

    fn with_keys<'a>(&self, invocation: &mut redis::ScriptInvocation<'a>) {
        invocation
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .key(&self.keys.history)
            .key(&self.keys.state)
            .key(&self.keys.state_sizes)
            .key(&self.keys.retained_bytes)
            .key(&self.keys.history_bytes);
    }

    async fn remote_snapshot(
        &self,
        resume: Option<&ResumePoint>,
    ) -> Result<RemoteSnapshot, HubError> {
        let mut connection = self.commands().await?;
        let mut invocation = self.snapshot.prepare_invoke();
        self.with_keys(&mut invocation);
        let epoch_arg = resume
            .and_then(|p| p.epoch.as_ref())
            .map_or("", |e| e.as_str())
            .to_owned();
        let since_arg = resume.map_or(String::new(), |p| p.seq.to_string());
        invocation.arg(epoch_arg).arg(since_arg);
        let (epoch, seq, kind, frames): (String, u64, String, Vec<String>) = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| {
                self.drop_commands();
                warn!(%error, "redis snapshot failed");
                HubError::Unavailable
            })?;
        if epoch.is_empty() {
            return Err(HubError::Unavailable);
        }
        let mut events: Vec<Arc<Event>> = frames
            .into_iter()
            .filter_map(Event::from_frame)
            .map(Arc::new)
            .collect();
        events.sort_by_key(|event| event.seq);
        Ok(RemoteSnapshot {
            epoch: Epoch::from_string(&epoch),
            seq,
            resumed: kind == "resumed",
            events,
        })
    }

    /// The listener: connects, catches up, then delivers what Redis
    /// publishes; on any failure marks Redis down and starts over.
    async fn listen(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.listen_once().await {
                Ok(()) => backoff = FIRST_BACKOFF,
                Err(reason) => {
                    self.drop_commands();
                    self.set_up(false, &reason);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn listen_once(&self) -> Result<(), String> {
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        pubsub
            .subscribe(&self.keys.channel)
            .await
            .map_err(|e| e.to_string())?;
        let mut connection = self.commands().await.map_err(|e| e.to_string())?;
        let mut invocation = self.ensure_epoch.prepare_invoke();
        self.with_keys(&mut invocation);
        invocation.arg(Epoch::generate().as_str());
        let (epoch, _seq): (String, u64) = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        // Whatever we missed while away (or everything, at first start).
        self.catch_up(&Epoch::from_string(&epoch)).await?;
        self.set_up(true, "");

        let mut messages = pubsub.on_message();
        let mut pings = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err("subscription connection closed".to_owned());
                    };
                    let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                    if let Some((epoch, frame)) = payload.split_once('\n') {
                        self.receive(Epoch::from_string(epoch), frame.to_owned()).await?;
                    }
                }
                _ = pings.tick() => {
                    let ping = redis::cmd("PING");
                    match tokio::time::timeout(REDIS_TIMEOUT, ping.query_async::<String>(&mut connection)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(error.to_string()),
                        Err(_) => return Err("ping timed out".to_owned()),
                    }
                }
            }
        }
    }

    /// One published event from Redis.
    async fn receive(&self, epoch: Epoch, frame: String) -> Result<(), String> {
        let Some(event) = Event::from_frame(frame) else {
            warn!("unreadable event on the redis channel; ignored");
            return Ok(());
        };
        let (local_epoch, local_seq) = {
            let local = self.lock();
            (local.epoch.clone(), local.seq)
        };
        if epoch != local_epoch || event.seq > local_seq + 1 {
            return self.catch_up(&epoch).await;
        }
        if event.seq == local_seq + 1 {
            self.deliver(&[Arc::new(event)]);
        }
        Ok(())
    }

    /// Brings local subscribers to Redis's current point: the missing events
    /// from history, or a `reset` when they cannot be had.
    async fn catch_up(&self, epoch: &Epoch) -> Result<(), String> {
        let (local_epoch, local_seq) = {
            let local = self.lock();
            (local.epoch.clone(), local.seq)
        };
        let point = ResumePoint {
            epoch: Some(local_epoch.clone()),
            seq: local_seq,
        };
        let same_epoch = *epoch == local_epoch && !local_epoch.as_str().is_empty();
        let remote = self
            .remote_snapshot(same_epoch.then_some(&point))
            .await
            .map_err(|e| e.to_string())?;
        if remote.resumed {
            self.deliver(&remote.events);
            return Ok(());
        }
        if !local_epoch.as_str().is_empty() {
            warn!(
                old_epoch = %local_epoch,
                new_epoch = %remote.epoch,
                seq = remote.seq,
                "redis history cannot fill the gap; resetting clients"
            );
        }
        // Indexed before the lock: each subscriber's share is a trie walk.
        let mut retained = RetainedState::default();
        for event in remote.events {
            retained.insert(event);
        }
        let cut_offs = {
            let mut local = self.lock();
            local.epoch = remote.epoch.clone();
            local.seq = remote.seq;
            local.recent.clear();
            local
                .subscribers
                .reset(&remote.epoch, remote.seq, &retained);
            local.subscribers.take_cut_offs()
        };
        log_cut_offs(cut_offs);
        Ok(())
    }

    /// Delivers events in seq order, skipping what was already delivered.
    fn deliver(&self, events: &[Arc<Event>]) {
        let cut_offs = {
            let mut local = self.lock();
            for event in events {
                if event.seq != local.seq + 1 {
                    continue;
                }
                local.seq = event.seq;
                local.subscribers.deliver(event);
                if local.recent.len() == RECENT {
                    local.recent.pop_front();
                }
                local.recent.push_back(event.clone());
            }
            local.subscribers.take_cut_offs()
        };
        log_cut_offs(cut_offs);
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
        self.lock().epoch.clone()
    }

    fn publish(&self, batch: Vec<Publication>) -> HubFuture<'_, Receipt> {
        Box::pin(async move {
            let mut connection = self.commands().await?;
            let mut invocation = self.publish.prepare_invoke();
            self.with_keys(&mut invocation);
            let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
            invocation
                .arg(&self.keys.channel)
                .arg(self.limits.history_size)
                .arg(Epoch::generate().as_str())
                .arg(ts)
                .arg(self.limits.history_max_bytes)
                .arg(self.limits.max_retained_bytes);
            for publication in &batch {
                invocation
                    .arg(publication.topic.as_str())
                    .arg(if publication.retain { "1" } else { "0" })
                    .arg(publication.data.get());
            }
            let (epoch, seqs, full): (String, Vec<Seq>, i64) = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|error| {
                    self.drop_commands();
                    warn!(%error, "redis publish failed");
                    HubError::Unavailable
                })?;
            if full != 0 {
                return Err(HubError::RetainedFull {
                    limit: self.limits.max_retained_bytes,
                });
            }
            Ok(Receipt {
                epoch: Epoch::from_string(&epoch),
                seqs,
            })
        })
    }

    fn subscribe(
        self: Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        queue_capacity: usize,
    ) -> HubFuture<'static, Subscription> {
        Box::pin(async move {
            // Refused before Redis is asked anything.
            let patterns = distinct_patterns(patterns, self.limits.max_patterns_per_client)?;
            let matcher = PatternIndex::of(&patterns);
            let remote = self.remote_snapshot(resume.as_ref()).await?;
            let (registration, cut_offs) = {
                let mut local = self.lock();
                let registration = local
                    .subscribers
                    .add(&patterns, remote.seq, queue_capacity)?;
                // The listener may already be past the snapshot: hand over
                // what it delivered since, from its recent events (in seq
                // order without gaps, so the first one needed is found by
                // arithmetic, not a scan).
                if remote.epoch == local.epoch && local.seq > remote.seq {
                    let oldest = local.recent.front().map_or(local.seq + 1, |e| e.seq);
                    if oldest > remote.seq + 1 {
                        local.subscribers.remove(registration.id);
                        return Err(HubError::Unavailable);
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
            let events = remote
                .events
                .into_iter()
                .filter(|e| matcher.matches(&e.topic))
                .collect();
            let catchup = if remote.resumed {
                Catchup::Resumed(events)
            } else {
                Catchup::Fresh(events)
            };
            Ok(Subscription {
                id: registration.id,
                snapshot: Snapshot {
                    epoch: remote.epoch,
                    seq: remote.seq,
                    catchup,
                },
                queue: registration.queue,
                hub: self,
            })
        })
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
                let mut local = self.lock();
                let seq = local.seq;
                local.subscribers.add_patterns(id, &patterns, seq)?
            };
            let remote = self.remote_snapshot(None).await?;
            let matcher = PatternIndex::of(&added);
            Ok(remote
                .events
                .into_iter()
                .filter(|e| matcher.matches(&e.topic))
                .collect())
        })
    }

    fn remove_patterns(&self, id: SubscriberId, patterns: Vec<Pattern>) -> HubFuture<'_, ()> {
        let removed = self.lock().subscribers.remove_patterns(id, &patterns);
        Box::pin(std::future::ready(removed))
    }

    fn unsubscribe(&self, id: SubscriberId) {
        self.lock().subscribers.remove(id);
    }

    fn stats(&self) -> HubStats {
        let local = self.lock();
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
            let remote = self.remote_snapshot(resume.as_ref()).await?;
            let events = remote
                .events
                .into_iter()
                .filter(|e| matcher.matches(&e.topic))
                .collect();
            Ok(Snapshot {
                epoch: remote.epoch,
                seq: remote.seq,
                catchup: if remote.resumed {
                    Catchup::Resumed(events)
                } else {
                    Catchup::Fresh(events)
                },
            })
        })
    }
}
