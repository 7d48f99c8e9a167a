//! The broadcaster's own context, shared by its three transports (`ws`,
//! `sse`, `state`'s long-poll).
//!
//! Owns: [`Broadcaster`], the narrow context those handlers get instead of
//! the whole gateway (the hub, the limits, the MAX_CONNECTIONS client slots
//! with their `switchyard_connections` gauges, the keepalive clock, the
//! shutdown signal and the runtime WebSocket clients run on), and
//! [`ClientStream`] (in [`stream`]), the one subscription stream every
//! transport reads: hello, then live deliveries, keepalive ticks and the
//! reasons to end. A transport only encodes what it yields and writes it.
//!
//! Also owns the read gate the three transports share ([`admit`]): the
//! token a request presents is checked, and the patterns it subscribes to
//! are the query's (each covered by the token) or the token's own; and
//! [`instant_at`], which turns a token's `exp` into a timer deadline.
//!
//! Does not own: HTTP routing (`server`), wire encodings (`protocol`, and
//! each transport's framing), fan-out and resume (`hub`), what a token
//! allows (`auth`).

pub mod stream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use prometheus_client::metrics::gauge::Gauge;

use crate::auth::{self, Access, Denied, Reader};
use crate::beacon::Beacon;
use crate::config::Config;
use crate::event_loops;
use crate::hub::{Catchup, Hub, HubError, Pattern, ResumePoint};
use crate::protocol::{StateEncodings, SubscriptionQuery};
use crate::shutdown::Shutdown;

pub use stream::{ClientStream, End, Step};

/// The limits the transports enforce, copied from the config at start.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// MAX_CONNECTIONS: WebSocket + SSE clients + long-poll waiters.
    pub max_connections: usize,
    /// CLIENT_QUEUE: how far behind a client may fall before it is cut off.
    pub client_queue: usize,
    /// WRITE_TIMEOUT_SECS: longest a client may accept no bytes while we
    /// have bytes for it.
    pub write_timeout: Duration,
    /// MAX_PATTERNS_PER_CLIENT.
    pub max_patterns: usize,
    /// PING_INTERVAL_SECS.
    pub ping_interval: Duration,
    /// MAX_MESSAGE_BYTES: largest client frame.
    pub max_message_bytes: usize,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Limits {
        Limits {
            max_connections: config.max_connections,
            client_queue: config.client_queue,
            write_timeout: config.write_timeout,
            max_patterns: config.max_patterns_per_client,
            ping_interval: config.ping_interval,
            max_message_bytes: config.max_message_bytes,
        }
    }
}

/// How a broadcaster client is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::LongPoll];

    /// Its `transport` label in `switchyard_connections`.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
        }
    }
}

/// What the broadcaster's handlers share, built once at start.
pub struct Broadcaster {
    pub hub: Arc<dyn Hub>,
    pub limits: Limits,
    /// Live clients of every transport, for `/health` and MAX_CONNECTIONS.
    clients: AtomicUsize,
    /// One `switchyard_connections` gauge per transport, in `Transport::ALL`
    /// order.
    gauges: [Gauge; 3],
    /// Ticks every PING_INTERVAL_SECS: one clock for every client's
    /// keepalive, so an idle connection holds no timer of its own; closed
    /// at the drain (a client waits on it for both).
    pub ping_clock: Arc<Beacon>,
    /// Tells client tasks to finish and waits for them.
    pub shutdown: Shutdown,
    /// The encoded states of recent hellos, shared by the clients given
    /// the same state.
    pub states: StateEncodings,
}

impl Broadcaster {
    pub fn new(
        hub: Arc<dyn Hub>,
        limits: Limits,
        gauges: [Gauge; 3],
        ping_clock: Arc<Beacon>,
        shutdown: Shutdown,
    ) -> Broadcaster {
        Broadcaster {
            hub,
            limits,
            clients: AtomicUsize::new(0),
            gauges,
            ping_clock,
            shutdown,
            states: StateEncodings::default(),
        }
    }

    /// Live clients of every transport.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Takes one of MAX_CONNECTIONS client places, if any is free.
    pub fn reserve_client(self: &Arc<Self>, transport: Transport) -> Option<ClientSlot> {
        let max = self.limits.max_connections;
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let gauge = self.gauges[transport as usize].clone();
        gauge.inc();
        Some(ClientSlot {
            broadcaster: self.clone(),
            gauge,
        })
    }

    /// Subscribes a client: its hello comes first out of the stream. With
    /// a retained state past [`LARGE_STATE_BYTES`], the snapshot (every
    /// topic, sorted) takes tens of milliseconds: it is taken off the
    /// event loop ([`event_loops::off_loop`]), as `/state`'s is.
    pub async fn subscribe(
        self: &Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
    ) -> Result<ClientStream, HubError> {
        self.subscribe_and_encode(patterns, resume, false).await
    }

    /// [`subscribe`](Self::subscribe) for a WebSocket, whose hello takes
    /// its state from `states`: with a large state, the state's encoding
    /// is made off the loop too, and kept there for this client's hello.
    pub async fn subscribe_websocket(
        self: &Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
    ) -> Result<ClientStream, HubError> {
        self.subscribe_and_encode(patterns, resume, true).await
    }

    async fn subscribe_and_encode(
        self: &Arc<Self>,
        patterns: Vec<Pattern>,
        resume: Option<ResumePoint>,
        encode: bool,
    ) -> Result<ClientStream, HubError> {
        let large = self
            .hub
            .state_bytes()
            .is_some_and(|bytes| bytes > LARGE_STATE_BYTES);
        let subscription = if large {
            let broadcaster = self.clone();
            let work = move || {
                let subscribing = broadcaster.hub.clone().subscribe(
                    patterns,
                    resume,
                    broadcaster.limits.client_queue,
                );
                let subscribed = tokio::runtime::Handle::current().block_on(subscribing)?;
                match &subscribed.snapshot.catchup {
                    Catchup::Fresh(state) if encode => broadcaster.states.prepare(state),
                    _ => {}
                }
                Ok(subscribed)
            };
            // `None`: the runtime is shutting down.
            event_loops::off_loop(work)
                .await
                .unwrap_or(Err(HubError::Unavailable))?
        } else {
            self.hub
                .clone()
                .subscribe(patterns, resume, self.limits.client_queue)
                .await?
        };
        Ok(ClientStream::new(
            subscription,
            self.ping_clock.next_firing(),
        ))
    }
}

/// A retained state larger than this makes a subscribe heavy work (see
/// [`Broadcaster::subscribe`]). A 64 MB one takes ~70 ms to snapshot and
/// encode (the longest delays `tests/event_loops.rs` saw with that work
/// on the loop), so this is about a millisecond's worth.
pub const LARGE_STATE_BYTES: usize = 1024 * 1024;

/// One counted client; gives its place back when dropped.
pub struct ClientSlot {
    broadcaster: Arc<Broadcaster>,
    /// Its transport's `switchyard_connections` gauge.
    gauge: Gauge,
}

impl ClientSlot {
    /// The broadcaster that counts it.
    pub fn broadcaster(&self) -> &Arc<Broadcaster> {
        &self.broadcaster
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.broadcaster.clients.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// The read gate of SSE and polling (and of `/ws` when the upgrade
/// carries a token): who reads, from the token the request presents
/// (`Authorization: Bearer` or `?token=`), with `query.patterns` replaced
/// by what it may subscribe to (see [`admit_patterns`]). Without
/// AUTH_SECRET anyone reads whatever it asks for.
pub fn admit(
    access: &Access,
    headers: &HeaderMap,
    query: &mut SubscriptionQuery,
) -> Result<Reader, Denied> {
    let reader = access.reader(auth::presented(headers, query.token.as_deref()))?;
    let asked = std::mem::take(&mut query.patterns);
    query.patterns = admit_patterns(&reader, query.topics_named, asked)?;
    Ok(reader)
}

/// What `reader` subscribes to: the patterns it named, each of which must
/// be covered (`Denied::Forbidden` names the first that is not), or, when
/// it named none, everything it may read (a scoped token's own patterns).
pub fn admit_patterns(
    reader: &Reader,
    named: bool,
    patterns: Vec<Pattern>,
) -> Result<Vec<Pattern>, Denied> {
    if !named {
        return Ok(reader.default_patterns());
    }
    match reader.first_forbidden(&patterns) {
        Some(pattern) => Err(Denied::Forbidden(format!("{:?}", pattern.as_str()))),
        None => Ok(patterns),
    }
}

/// The timer instant of a wall-clock time (a token's `exp`); now when it
/// has passed.
pub fn instant_at(time: SystemTime) -> tokio::time::Instant {
    let left = time
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    // Checked: a time past what an Instant holds is "never" (a token's exp
    // is clamped well before that; this keeps any other caller safe).
    let now = tokio::time::Instant::now();
    now.checked_add(left)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}
