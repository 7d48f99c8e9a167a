//! The broadcaster's WebSocket transport on `$WEBSOCKET_PATH`.
//!
//! Owns: the handshake checks (enabled, Origin, the access token,
//! MAX_CONNECTIONS, query); the 101, which goes out in one write with the
//! hello (the connection's watchdog wrapper holds it back, see
//! `watchdog`), except while an `auth` frame is awaited; one task per
//! client, started once the upgrade is done, that encodes what its
//! [`ClientStream`] yields (the hello and catch-up, then each batch of
//! deliveries as one vectored write sequence from the shared event bytes;
//! once the hello is out, events for a client whose task is not writing
//! are written to its [`socket`] by the hub's fan-out instead, and the task
//! is woken only for what the socket did not take)
//! and reads the client's frames (auth / subscribe / unsubscribe /
//! publish, pings, close) — fairly: a steady flow of events never starves
//! reading them; keepalive pings; WRITE_TIMEOUT_SECS on every write; and
//! the close codes: 1008 too slow or a fragmented message not completed
//! within WRITE_TIMEOUT_SECS, 1009 frame too large, 1007 bad UTF-8 (text or
//! close reason), 1002 protocol error (a close code RFC 6455 reserves or a
//! 1-byte close payload included: those are never echoed), 1001 shutdown
//! or silence, 4001 no valid token (none in time, a bad one, or one that
//! expired), 4003 topics the token does not cover.
//!
//! Access (with AUTH_SECRET): a token in the upgrade request is checked
//! before the 101; without one the task waits at most [`AUTH_WAIT`] for a
//! first `auth` frame before it subscribes. A live grant carries a timer:
//! at `exp` the client gets a `token_expired` error frame, at `exp` +
//! LEEWAY it is closed with 4001 unless a fresh `auth` frame (covering the
//! connection's patterns) replaced the grant. Without AUTH_SECRET nothing
//! waits and a connection holds no timer.
//!
//! Does not own: ordering, resume or fan-out (the hub), who may write to
//! the socket and how much of a delivery the fan-out wrote (the hub's
//! client queue: the task takes the socket from it before each write and
//! gives it back after), the stream of what to send (`broadcast`), what a
//! frame means (`protocol`), what a token allows (`auth`), framing and the
//! byte count of frames ([`codec`]), reading the client's messages with
//! nothing allocated for it while the client is idle (`frames`), the
//! handshake's headers ([`handshake`]).

pub mod codec;
mod frames;
pub mod handshake;
pub mod socket;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming as IncomingBody;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::auth::{self, token::LEEWAY, Access, Denied, Publisher, Reader};
use crate::broadcast::{self, Broadcaster, ClientSlot, ClientStream, End, Step, Transport};
use crate::config::Config;
use crate::cors;
use crate::hub::{Catchup, HubError, Pattern, ResumePoint, Topic};
use crate::protocol::{self, code, ClientFrame, StateEncodings, SubscriptionQuery};
use crate::response::{self, Body};
use crate::watchdog::{ConnectionHandle, Watched, DRAIN_STALL};
use bytes::Bytes;
use codec::{Frame, Incoming, ReadError, WriteError};
use frames::ClientFrames;
use socket::{Socket, SocketWriter};

/// What `server` hands hyper for each accepted socket; taken back whole
/// after the upgrade.
type Upgradable = TokioIo<Watched<TcpStream>>;
type Writer = codec::Writer<SocketWriter>;

/// Every this many turns of a client's loop its socket is read before its
/// queue (see `run`).
const READ_EVERY: u8 = 4;

/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a client that presented no token at the upgrade (AUTH_SECRET
/// set) has to send its `auth` frame.
pub const AUTH_WAIT: Duration = Duration::from_secs(5);

/// Answers the upgrade request and spawns the client's task.
pub fn upgrade(
    broadcaster: &Arc<Broadcaster>,
    access: &Arc<Access>,
    config: &Config,
    peer: SocketAddr,
    mut request: Request<IncomingBody>,
) -> Response<Body> {
    if !config.websocket_enabled {
        return response::json_error(StatusCode::NOT_FOUND, "websocket disabled");
    }
    if request.method() != Method::GET {
        return response::json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect with a WebSocket GET",
        );
    }
    let headers = request.headers();
    let Some(key) = handshake::websocket_key(headers) else {
        let mut answer = response::json_error(
            StatusCode::UPGRADE_REQUIRED,
            "this is the WebSocket endpoint: connect with a WebSocket client (version 13)",
        );
        answer
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        answer.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return answer;
    };
    if !cors::origin_allowed(config, headers) {
        warn!(%peer, origin = ?headers.get(header::ORIGIN), "websocket origin refused");
        return response::json_error(
            StatusCode::FORBIDDEN,
            "origin not allowed (see CORS_ORIGINS)",
        );
    }
    let query = match SubscriptionQuery::parse_limited(
        request.uri().query(),
        broadcaster.limits.max_patterns,
    ) {
        Ok(query) => query,
        Err(error) => return response::json_error(StatusCode::BAD_REQUEST, &error.0),
    };
    let token = auth::presented(headers, query.token.as_deref());
    let client_address = access.client_address(peer, headers);
    // With AUTH_SECRET a token presented here is checked before the 101;
    // without one, the task waits for an `auth` frame.
    let opening = if access.reads_need_token() && token.is_none() {
        Opening::AwaitAuth {
            named: query.topics_named,
            patterns: query.patterns,
        }
    } else {
        let reader = match access.reader(token) {
            Ok(reader) => reader,
            Err(refusal) => return refusal.response(),
        };
        match broadcast::admit_patterns(&reader, query.topics_named, query.patterns) {
            Ok(patterns) => Opening::Ready(reader, patterns),
            Err(refusal) => return refusal.response(),
        }
    };
    // The token was verified as a read credential just above: reuse it.
    let publishing = PublishRight::from(match &opening {
        Opening::Ready(Reader::Granted(grant), _) => {
            access.publisher_from(client_address, token, Some(Ok(grant.clone())))
        }
        _ => access.publisher(client_address, token),
    });
    let Some(slot) = broadcaster.reserve_client(Transport::WebSocket) else {
        warn!(%peer, max = config.max_connections, "MAX_CONNECTIONS reached; refusing a websocket");
        return response::json_error(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let accept = handshake::accept_key(key.as_bytes());
    // The 101 goes out with the hello, in one write, when the hello comes
    // at once (not while an `auth` frame is awaited: the client needs the
    // 101 to send it). HTTP/1.1 only: nothing follows a 101 there.
    let hold = request.version() == Version::HTTP_11 && matches!(opening, Opening::Ready(..));
    let connection = hold
        .then(|| request.extensions().get::<ConnectionHandle>().cloned())
        .flatten();
    let on_upgrade = hyper::upgrade::on(&mut request);

    let admitted = Admitted {
        access: access.clone(),
        client_address,
        publishing,
        slot,
    };
    let start = Box::new(Start {
        opening,
        resume: query.resume,
    });
    // The upgrade is awaited on the event loop that serves the connection:
    // with the 101 held, by the connection's own task once hyper is done
    // (ready then, see `watchdog`), else by a task of its own. The
    // client's own task then starts on the same loop, whose reactor
    // already drives the socket: a connection never changes threads (see
    // `event_loops`).
    let handover = broadcaster.clone();
    let handover = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                debug!(%peer, %error, "websocket upgrade failed");
                return;
            }
        };
        // The bare socket back from hyper: none of its connection's
        // machinery stays allocated, and the fan-out can write to it.
        let parts = match upgraded.downcast::<Upgradable>() {
            Ok(parts) => parts,
            Err(_) => {
                warn!(%peer, "websocket upgrade on an unexpected transport");
                return;
            }
        };
        let (stream, unread, held) = parts.io.into_inner().into_parts();
        // A copy: `read_buf` points into hyper's read buffer (8 KiB),
        // which it would keep allocated until the client's first read.
        let early = match (parts.read_buf.is_empty(), unread.is_empty()) {
            (true, true) => Bytes::new(),
            (false, true) => Bytes::copy_from_slice(&parts.read_buf),
            _ => [parts.read_buf, unread].concat().into(),
        };
        let accepted = Accepted {
            stream,
            early,
            held,
        };
        let task = run(Box::new(Setup {
            admitted,
            start,
            accepted,
        }));
        debug!(%peer, task_bytes = std::mem::size_of_val(&task), "websocket client task");
        handover.shutdown.spawn(task);
    };
    match &connection {
        Some(connection) => {
            connection.hold_upgrade();
            connection.then(Box::pin(handover));
        }
        None => broadcaster.shutdown.spawn(handover),
    }

    let mut answer = Response::new(response::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = answer.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    answer
}

/// An upgraded connection, out of hyper.
struct Accepted {
    stream: TcpStream,
    /// What hyper read past the upgrade request.
    early: Bytes,
    /// The 101, when it was held back to go out with the hello.
    held: Vec<u8>,
}

/// Everything a client's task starts from, in one box that is freed as
/// it starts: a task's arguments would stay part of its future (twice
/// over, as rustc lays it out) for as long as the client is connected.
struct Setup {
    admitted: Admitted,
    start: Box<Start>,
    accepted: Accepted,
}

/// What the upgrade decided about a client, before its socket is ours.
struct Admitted {
    access: Arc<Access>,
    client_address: IpAddr,
    publishing: PublishRight,
    slot: ClientSlot,
}

/// The client's task: serves the upgraded connection until it ends, then
/// closes it. What it keeps across its idle await is the client (with its
/// writer and its reader: the socket and an empty slot), its stream, two
/// counters and the idle wait's two words; everything used once is in
/// boxed futures or helpers (see the size test below).
async fn run(setup: Box<Setup>) {
    let (client, start) = attach(setup);
    // One local for the task's whole life, never moved: rustc keeps a
    // moved-from local's room in the task too.
    let mut serving = Serving {
        client,
        stream: None,
    };
    // Boxed: authentication and the subscribe are needed once.
    let ending = match Box::pin(serving.open(start)).await {
        Err(ending) => ending,
        // The client's loop, here and not in a future of its own: its
        // reference would be one more word in every client's task.
        Ok(()) => {
            // Keepalive ticks since the client was last heard from.
            let mut unheard: u8 = 0;
            let mut turn: u8 = 0;
            loop {
                // The queue is looked at first, so a wake-up for events
                // costs no read poll of the socket; but every READ_EVERY-th
                // turn the socket goes first, so a client's frames (pong,
                // unsubscribe, close) are read within READ_EVERY writes
                // however busy its queue is (a queue-first select alone
                // starved them).
                turn = turn.wrapping_add(1);
                let read_first = turn % READ_EVERY == 0;
                // The idle wait: what is live across it is what every idle
                // client's task holds. What woke it is handled in a boxed
                // future, so none of that is part of the task.
                let woke = {
                    // `move`: the closure owns the one reference it polls
                    // through.
                    let serving = &mut serving;
                    std::future::poll_fn(move |cx| serving.poll_woke(cx, read_first)).await
                };
                if let Err(ending) = Box::pin(serving.woken(woke, &mut unheard)).await {
                    break ending;
                }
            }
        }
    };
    let client = &mut serving.client;
    if let Some(stream) = serving.stream.take() {
        // The close (and whatever an interrupted write left) is the
        // task's alone to write; a frame a direct write stopped inside is
        // finished before it.
        drop(stream.queue().detach_sink());
        take_socket(&mut client.writer, &stream);
        // The subscription and its queue go before a close that may take
        // a while.
        drop(stream);
    }
    // The grant and its timer go, too.
    drop(client.grant.take());
    // Boxed (`ending` with it): its timers would otherwise be part of the
    // task's size for as long as the client is connected.
    Box::pin(async move {
        // Asked before the close: once the socket is shut, it has no peer.
        let peer = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| client.peer())
            .flatten();
        close(&mut client.writer, ending).await;
        debug!(?peer, ending = ?ending, "websocket client disconnected");
    })
    .await;
}

/// Builds the client with its writer (the held-back 101 first) and
/// reader. Not async: nothing here stays part of the task's future. Takes
/// the box itself: unboxed in `run`, the emptied box would stay in the
/// task (8 bytes) until it ends.
#[allow(clippy::boxed_local)]
fn attach(setup: Box<Setup>) -> (Client, Box<Start>) {
    let Setup {
        admitted,
        start,
        accepted: Accepted {
            stream,
            early,
            held,
        },
    } = *setup;
    let socket = Socket::new(stream);
    let limits = admitted.slot.broadcaster().limits;
    let mut writer = codec::Writer::new(SocketWriter::new(socket.clone()));
    if !held.is_empty() {
        // Written ahead of the first frame, in the same write.
        writer.resume(Frame::raw(held), 0);
    }
    let frames = ClientFrames::new(socket, early, &limits);
    let client = Client {
        access: admitted.access,
        client_address: admitted.client_address,
        publishing: admitted.publishing,
        grant: None,
        writer,
        frames,
        slot: admitted.slot,
    };
    (client, start)
}

/// What the client task starts from (boxed: freed once subscribed).
struct Start {
    opening: Opening,
    resume: Option<ResumePoint>,
}

/// What a client is allowed to read when its socket opens.
enum Opening {
    /// Decided at the upgrade: who reads, and the patterns it subscribes to.
    Ready(Reader, Vec<Pattern>),
    /// AUTH_SECRET is set and the upgrade carried no token: the first frame
    /// must be `auth`. `named` and `patterns` are the query's topics.
    AwaitAuth { named: bool, patterns: Vec<Pattern> },
}

/// Why a client's loop ended; each maps to one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Its queue overflowed: 1008.
    TooSlow,
    /// It sent what the reader refuses: a message over MAX_MESSAGE_BYTES
    /// (1009), text or a close reason that is not UTF-8 (1007), a frame
    /// that breaks the protocol or a close code RFC 6455 does not allow
    /// (1002), a fragmented message not completed within
    /// WRITE_TIMEOUT_SECS (1008). Never [`ReadError::Gone`].
    Refused(ReadError),
    /// The gateway is draining: 1001.
    Shutdown,
    /// No frame from it for three ping intervals: 1001.
    Silent,
    /// The hub could not serve it: 1011.
    HubUnavailable,
    /// Its query asked for more than MAX_PATTERNS_PER_CLIENT: 1008 (the
    /// handshake checks the query first, so this is a backstop).
    TooManyPatterns,
    /// No valid token: no `auth` frame first or in time, a bad or expired
    /// one, or the grant ran out (exp + LEEWAY): 4001 with this reason.
    Unauthorized(&'static str),
    /// Its query's topics are not covered by the token of its `auth`
    /// frame: 4003.
    Forbidden,
    /// It accepted no bytes for WRITE_TIMEOUT_SECS: nothing more is sent.
    Stalled,
    /// It closed (we answer its close), or the socket broke.
    Gone { answer_close: Option<u16> },
}

impl Ending {
    /// The close frame to send, if any.
    fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            Ending::TooSlow => Some((1008, "too slow")),
            Ending::Refused(error) => error.close(),
            Ending::Shutdown => Some((1001, "server shutting down")),
            Ending::Silent => Some((1001, "no pong")),
            Ending::HubUnavailable => Some((1011, "backplane unavailable")),
            Ending::TooManyPatterns => Some((1008, "too many patterns (MAX_PATTERNS_PER_CLIENT)")),
            Ending::Unauthorized(reason) => Some((auth::CLOSE_UNAUTHORIZED, reason)),
            Ending::Forbidden => Some((auth::CLOSE_FORBIDDEN, "topics not covered by the token")),
            Ending::Gone {
                answer_close: Some(code),
            } => Some((code, "")),
            Ending::Gone { answer_close: None } | Ending::Stalled => None,
        }
    }

    /// How a read that yields no message ends the loop; `None` for a
    /// message to handle.
    fn of_read(message: &Result<Incoming, ReadError>) -> Option<Ending> {
        match message {
            // The reader let through only a code that may be echoed.
            Ok(Incoming::Close(code)) => Some(Ending::Gone {
                answer_close: Some(codec::close_reply(*code)),
            }),
            Ok(_) => None,
            Err(ReadError::Gone) => Some(Ending::Gone { answer_close: None }),
            Err(error) => Some(Ending::Refused(*error)),
        }
    }
}

impl From<WriteError> for Ending {
    fn from(error: WriteError) -> Ending {
        match error {
            WriteError::Stalled => Ending::Stalled,
            WriteError::Gone => Ending::Gone { answer_close: None },
        }
    }
}

impl From<End> for Ending {
    fn from(end: End) -> Ending {
        match end {
            End::CutOff => Ending::TooSlow,
            End::Shutdown => Ending::Shutdown,
        }
    }
}

/// What a connection's `publish` frames may do: `Access::publisher`'s
/// answer, decided at the upgrade and again on each accepted `auth` frame.
/// A scoped grant and a refusal are boxed, so every connection keeps 16
/// bytes here.
enum PublishRight {
    Anything,
    Scoped(Box<Publisher>),
    Refused(Box<Denied>),
}

impl From<Publisher> for PublishRight {
    fn from(publisher: Publisher) -> PublishRight {
        match publisher {
            Publisher::Anything => PublishRight::Anything,
            Publisher::Refused(refusal) => PublishRight::Refused(Box::new(refusal)),
            scoped @ Publisher::Scoped(_) => PublishRight::Scoped(Box::new(scoped)),
        }
    }
}

impl PublishRight {
    fn check(&self, topic: &Topic) -> Result<(), Denied> {
        match self {
            PublishRight::Anything => Ok(()),
            PublishRight::Refused(refusal) => Err(Denied::clone(refusal)),
            PublishRight::Scoped(publisher) if publisher.may_publish(topic) => Ok(()),
            PublishRight::Scoped(_) => Err(Denied::Forbidden(format!(
                "publishing to {:?}",
                topic.as_str()
            ))),
        }
    }
}

/// A connection's read grant (AUTH_SECRET set) and its expiry timer;
/// boxed in [`Client`], so a connection without one holds a null pointer.
struct LiveGrant {
    /// Always `Reader::Granted`.
    reader: Reader,
    /// The connection's patterns, which a fresh token must cover.
    patterns: Vec<Pattern>,
    /// Fires at `exp` (the `token_expired` error frame), then at `exp` +
    /// LEEWAY (close 4001).
    timer: Pin<Box<Sleep>>,
    /// The `token_expired` frame has been sent for this grant.
    warned: bool,
}

impl LiveGrant {
    /// `None` for `Reader::Anyone` (no AUTH_SECRET): nothing expires.
    fn new(reader: Reader, patterns: &[Pattern]) -> Option<Box<LiveGrant>> {
        let expires_at = reader.grant()?.expires_at;
        Some(Box::new(LiveGrant {
            reader,
            patterns: patterns.to_vec(),
            timer: Box::pin(tokio::time::sleep_until(broadcast::instant_at(expires_at))),
            warned: false,
        }))
    }

    /// Puts a fresh token's grant in force.
    fn renew(&mut self, reader: Reader) {
        if let Some(grant) = reader.grant() {
            let at = broadcast::instant_at(grant.expires_at);
            self.timer.as_mut().reset(at);
        }
        self.reader = reader;
        self.warned = false;
    }

    /// The timer fired: the `token_expired` frame the first time (and the
    /// timer moves to `exp` + LEEWAY), the close the second.
    fn expired(&mut self) -> Result<String, Ending> {
        if self.warned {
            return Err(Ending::Unauthorized("token_expired"));
        }
        self.warned = true;
        if let Some(grant) = self.reader.grant() {
            let at = broadcast::instant_at(grant.expires_at + LEEWAY);
            self.timer.as_mut().reset(at);
        }
        Ok(protocol::token_expired_frame())
    }
}

/// Ready when the grant's timer fires; never without a grant.
fn poll_expiry(grant: &mut Option<Box<LiveGrant>>, cx: &mut Context<'_>) -> Poll<()> {
    match grant {
        Some(live) => live.timer.as_mut().poll(cx),
        None => Poll::Pending,
    }
}

/// An `error` frame for a refusal.
fn refusal_frame(refusal: &Denied) -> String {
    protocol::error_frame(refusal.code(), &refusal.message())
}

struct Client {
    /// Checks the tokens of `auth` frames.
    access: Arc<Access>,
    /// The effective client address (after trusted X-Forwarded-For), for
    /// the publish rights of an `auth` frame's token.
    client_address: IpAddr,
    /// What its `publish` frames may do.
    publishing: PublishRight,
    /// The read grant in force; `None` when reads are open (no
    /// AUTH_SECRET).
    grant: Option<Box<LiveGrant>>,
    /// Writes the client's frames to its socket (the task's side of it).
    writer: Writer,
    /// Reads the client's frames from its socket.
    frames: ClientFrames,
    /// Counts this client in /health and MAX_CONNECTIONS until dropped;
    /// the broadcaster it is counted by is the client's.
    slot: ClientSlot,
}

/// A client and, once it is subscribed, its stream: what its task holds
/// while it is connected.
struct Serving {
    client: Client,
    /// Set by [`Serving::open`]; taken at the end.
    stream: Option<ClientStream>,
}

impl Serving {
    /// [`Client::open`], keeping the stream here.
    async fn open(&mut self, start: Box<Start>) -> Result<(), Ending> {
        self.stream = Some(self.client.open(start).await?);
        Ok(())
    }

    /// See [`Client::poll_woke`].
    fn poll_woke(&mut self, cx: &mut Context<'_>, read_first: bool) -> Poll<Woke> {
        match &mut self.stream {
            Some(stream) => self.client.poll_woke(cx, stream, read_first),
            // Not reached: the loop runs once `open` kept the stream.
            None => Poll::Ready(Woke::Step {
                hello: false,
                encoded: Encoded::End(End::Shutdown),
            }),
        }
    }

    /// See [`Client::woken`].
    async fn woken(&mut self, woke: Woke, unheard: &mut u8) -> Result<(), Ending> {
        match &mut self.stream {
            Some(stream) => self.client.woken(stream, woke, unheard).await,
            // Not reached, as above.
            None => Err(Ending::Shutdown),
        }
    }
}

impl Client {
    /// The client's address, for debug logs: asked of the socket (none
    /// once it is reset), so an idle client keeps no copy.
    fn peer(&self) -> Option<SocketAddr> {
        self.writer.io().socket().peer_addr()
    }

    /// Authenticates (when the upgrade carried no token) and subscribes;
    /// answers the client's stream, or why its connection ends. Takes the
    /// connection by reference: the client task owns it.
    async fn open(&mut self, start: Box<Start>) -> Result<ClientStream, Ending> {
        let Start { opening, resume } = *start;
        let (reader, patterns) = match opening {
            Opening::Ready(reader, patterns) => (reader, patterns),
            Opening::AwaitAuth { named, patterns } => {
                match self.authenticate(named, patterns).await {
                    Ok(admitted) => admitted,
                    Err(ending) => {
                        debug!(peer = ?self.peer(), ending = ?ending, "websocket client refused");
                        return Err(ending);
                    }
                }
            }
        };
        if let Some(grant) = reader.grant() {
            debug!(peer = ?self.peer(), subject = ?grant.subject, admin = grant.admin, "websocket client authorized");
        }
        self.grant = LiveGrant::new(reader, &patterns);
        let stream = self
            .slot
            .broadcaster()
            .subscribe_websocket(patterns, resume)
            .await;
        debug!(peer = ?self.peer(), ok = stream.is_ok(), "websocket client connected");
        match stream {
            Ok(stream) => Ok(stream),
            Err(HubError::TooManyPatterns { .. }) => Err(Ending::TooManyPatterns),
            Err(_) => Err(Ending::HubUnavailable),
        }
    }

    /// Waits at most AUTH_WAIT for the first frame, which must be `auth`
    /// with a valid token covering the query's topics; answers who reads
    /// and what it subscribes to. A refused token gets an `error` frame
    /// saying why before the close.
    async fn authenticate(
        &mut self,
        named: bool,
        patterns: Vec<Pattern>,
    ) -> Result<(Reader, Vec<Pattern>), Ending> {
        let mut stop = self.slot.broadcaster().shutdown.requested();
        let deadline = Instant::now() + AUTH_WAIT;
        let token = loop {
            let message = tokio::select! {
                biased;
                _ = &mut stop => return Err(Ending::Shutdown),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Ending::Unauthorized("no auth frame within 5 s"))
                }
                message = self.frames.next(&self.slot.broadcaster().limits) => message,
            };
            if let Some(ending) = Ending::of_read(&message) {
                return Err(ending);
            }
            match message {
                Ok(Incoming::Ping(_) | Incoming::Pong) => continue,
                Ok(Incoming::Text(text)) => match protocol::parse_client_frame(&text) {
                    Ok(ClientFrame::Auth(token)) => break token,
                    _ => return Err(Ending::Unauthorized("the first frame must be auth")),
                },
                _ => return Err(Ending::Unauthorized("the first frame must be auth")),
            }
        };
        let admitted = self.access.reader(Some(&token)).and_then(|reader| {
            broadcast::admit_patterns(&reader, named, patterns).map(|p| (reader, p))
        });
        match admitted {
            Ok(admitted) => {
                self.publishing = self
                    .access
                    .publisher(self.client_address, Some(&token))
                    .into();
                Ok(admitted)
            }
            Err(refusal) => {
                let frame = Frame::new(codec::OP_TEXT, refusal_frame(&refusal).into_bytes());
                let ending = match refusal {
                    Denied::Forbidden(_) => Ending::Forbidden,
                    other => Ending::Unauthorized(other.code()),
                };
                // The reason is in the error frame; the close follows it.
                let send = self.writer.send(vec![frame], CLOSE_TIMEOUT);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, send).await;
                Err(ending)
            }
        }
    }

    /// What wakes the idle loop, in this order: a read from the client
    /// when `read_first`, the grant's timer (only a connection with a
    /// grant has one), a step of the stream (encoded), a read from the
    /// client otherwise.
    fn poll_woke(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut ClientStream,
        read_first: bool,
    ) -> Poll<Woke> {
        let limits = &self.slot.broadcaster().limits;
        if read_first {
            if let Poll::Ready(message) = self.frames.poll_next(cx, limits) {
                return Poll::Ready(Woke::Message(message));
            }
        }
        if poll_expiry(&mut self.grant, cx).is_ready() {
            return Poll::Ready(Woke::Expiry);
        }
        if let Poll::Ready(step) = stream.poll_next(cx) {
            return Poll::Ready(Woke::Step {
                hello: matches!(step, Step::Hello(_)),
                encoded: encode_step(step, &self.slot.broadcaster().states),
            });
        }
        if read_first {
            // Polled above: its waker is registered.
            return Poll::Pending;
        }
        self.frames.poll_next(cx, limits).map(Woke::Message)
    }

    /// Handles what woke the client's loop: the grant's timer, a step of
    /// its stream, or a read from the client. `unheard` counts the
    /// keepalive ticks since the client was last heard from.
    async fn woken(
        &mut self,
        stream: &mut ClientStream,
        woke: Woke,
        unheard: &mut u8,
    ) -> Result<(), Ending> {
        match woke {
            Woke::Expiry => {
                let expired = match &mut self.grant {
                    Some(live) => live.expired(),
                    None => return Ok(()),
                };
                let out = vec![Frame::new(codec::OP_TEXT, expired?.into_bytes())];
                self.write(stream, out).await
            }
            Woke::Step { hello, encoded } => {
                let out = match encoded {
                    Encoded::Frames(frames) => frames,
                    Encoded::Keepalive => {
                        // The shared clock ticks every PING_INTERVAL_SECS:
                        // the 4th tick since the client was last heard is
                        // the first more than three intervals after it.
                        *unheard = unheard.saturating_add(1);
                        if *unheard > 3 {
                            return Err(Ending::Silent);
                        }
                        vec![Frame::new(codec::OP_PING, Bytes::new())]
                    }
                    Encoded::End(end) => return Err(end.into()),
                };
                self.write(stream, out).await?;
                if hello {
                    // From now on the fan-out writes events to an idle
                    // client itself (see `socket`).
                    let sink: Arc<Socket> = self.writer.io().socket().clone();
                    stream.queue().attach_sink(sink);
                }
                Ok(())
            }
            Woke::Message(message) => {
                *unheard = 0;
                self.received(stream, message).await
            }
        }
    }

    /// Writes `out` unless the client is cut off or the gateway drains
    /// first, each write bounded by WRITE_TIMEOUT_SECS. While it writes,
    /// the fan-out leaves the socket to it; after a failed write it never
    /// writes to it again.
    async fn write(&mut self, stream: &mut ClientStream, out: Vec<Frame>) -> Result<(), Ending> {
        take_socket(&mut self.writer, stream);
        let stall = self.slot.broadcaster().limits.write_timeout;
        // Boxed: the write's state is no part of an idle client's task.
        match Box::pin(stream.guard(self.writer.send(out, stall))).await {
            Ok(Ok(())) => {
                stream.queue().end_write();
                Ok(())
            }
            Ok(Err(error)) => Err(error.into()),
            Err(end) => Err(end.into()),
        }
    }

    /// Handles one read from the client: answers a ping, a text frame or
    /// a binary one, or says why the connection ends. Boxed where it is
    /// awaited: a frame from the client is rare next to the idle wait, and
    /// its state would otherwise be part of every client's task.
    async fn received(
        &mut self,
        stream: &mut ClientStream,
        message: Result<Incoming, ReadError>,
    ) -> Result<(), Ending> {
        if let Some(ending) = Ending::of_read(&message) {
            return Err(ending);
        }
        let reply = match message {
            Ok(Incoming::Text(text)) => Box::pin(self.client_frame(&text, stream))
                .await
                .map(|reply| (codec::OP_TEXT, reply.into_bytes())),
            Ok(Incoming::Binary(_)) => Some((
                codec::OP_TEXT,
                protocol::error_frame(
                    code::BAD_REQUEST,
                    "binary frames are not supported; send JSON text",
                )
                .into_bytes(),
            )),
            Ok(Incoming::Ping(payload)) => Some((codec::OP_PONG, payload)),
            // Pong; the rest ended the connection above.
            _ => None,
        };
        if let Some((opcode, payload)) = reply {
            self.write(stream, vec![Frame::new(opcode, payload)])
                .await?;
        }
        Ok(())
    }

    /// Handles one text frame; answers with a frame to send, if any.
    async fn client_frame(&mut self, text: &str, stream: &ClientStream) -> Option<String> {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(error) => return Some(protocol::error_frame(code::BAD_REQUEST, &error.0)),
        };
        let subscription = stream.subscription();
        let hub = subscription.hub();
        match frame {
            ClientFrame::Subscribe(patterns) => {
                if let Some(live) = &self.grant {
                    if let Some(pattern) = live.reader.first_forbidden(&patterns) {
                        let refusal = Denied::Forbidden(format!("{:?}", pattern.as_str()));
                        return Some(refusal_frame(&refusal));
                    }
                }
                match hub.add_patterns(subscription.id, patterns.clone()).await {
                    Ok(state) => {
                        if let Some(live) = &mut self.grant {
                            for pattern in &patterns {
                                if !live.patterns.contains(pattern) {
                                    live.patterns.push(pattern.clone());
                                }
                            }
                        }
                        Some(protocol::subscribed_frame(&patterns, &state))
                    }
                    Err(error) => Some(hub_error_frame(&error)),
                }
            }
            ClientFrame::Unsubscribe(patterns) => {
                match hub.remove_patterns(subscription.id, patterns.clone()).await {
                    Ok(()) => {
                        if let Some(live) = &mut self.grant {
                            live.patterns.retain(|held| !patterns.contains(held));
                        }
                        None
                    }
                    Err(error) => Some(hub_error_frame(&error)),
                }
            }
            ClientFrame::Publish(publication) => {
                if let Err(refusal) = self.publishing.check(&publication.topic) {
                    return Some(refusal_frame(&refusal));
                }
                match hub.publish(vec![publication]).await {
                    Ok(_) => None,
                    Err(error) => Some(hub_error_frame(&error)),
                }
            }
            ClientFrame::Auth(token) => self.renew(&token),
        }
    }

    /// A fresh `auth` frame on a live connection. With AUTH_SECRET its
    /// token must verify and cover every pattern the connection holds,
    /// else an `error` frame says why and the grant in force stays (until
    /// it runs out). Without AUTH_SECRET it only decides publishing
    /// (PUBLISH_TOKEN).
    fn renew(&mut self, token: &str) -> Option<String> {
        let Some(live) = &mut self.grant else {
            self.publishing = self
                .access
                .publisher(self.client_address, Some(token))
                .into();
            return None;
        };
        let reader = match self.access.reader(Some(token)) {
            Ok(reader) => reader,
            Err(refusal) => {
                let message = format!("{}; the current token stays in force", refusal.message());
                return Some(protocol::error_frame(refusal.code(), &message));
            }
        };
        if let Some(pattern) = reader.first_forbidden(&live.patterns) {
            let refusal = Denied::Forbidden(format!(
                "{:?}, which this connection subscribes to; the current token stays in force",
                pattern.as_str()
            ));
            return Some(refusal_frame(&refusal));
        }
        let verified = reader.grant().cloned().map(Ok);
        let publishing = self
            .access
            .publisher_from(self.client_address, Some(token), verified);
        live.renew(reader);
        self.publishing = publishing.into();
        None
    }
}

/// An `error` frame for a hub error.
fn hub_error_frame(error: &HubError) -> String {
    protocol::error_frame(protocol::hub_error_code(error), &error.to_string())
}

/// Sends the close frame of `ending` and shuts the socket; neither for a
/// stalled client, nor for one that is gone without a close frame (its
/// EOF or reset was read, or a write failed): `shutdown(2)` would send a
/// FIN that the `close(2)` of the drop sends anyway, or fail with
/// ENOTCONN after a reset (81% of the clients of `loadgen --accept`).
async fn close(writer: &mut Writer, ending: Ending) {
    if matches!(
        ending,
        Ending::Stalled | Ending::Gone { answer_close: None }
    ) {
        return;
    }
    let frame = ending
        .close_frame()
        .map(|(code, reason)| codec::close_frame(code, reason));
    // While draining, a full socket gets little time (see
    // `watchdog::DRAIN_STALL`).
    let limit = if ending == Ending::Shutdown {
        DRAIN_STALL
    } else {
        CLOSE_TIMEOUT
    };
    writer.finish(frame, limit).await;
}

/// Takes the socket from the fan-out (see `hub::queue`): until
/// `end_write`, only the task writes to it. A frame a direct write stopped
/// inside becomes the writer's next (its rest), or the client would get
/// our frames in the middle of it.
fn take_socket(writer: &mut Writer, stream: &ClientStream) {
    if let Some(part) = stream.queue().begin_write() {
        let frame = Frame::new(codec::OP_TEXT, Bytes::from(part.delivery.frame()));
        writer.resume(frame, part.written);
    }
}

/// What woke a client's loop (see `run`).
enum Woke {
    /// The grant's timer fired.
    Expiry,
    /// A step of its stream, encoded.
    Step { hello: bool, encoded: Encoded },
    /// A read from the client.
    Message(Result<Incoming, ReadError>),
}

/// What one step of the stream becomes on the wire.
enum Encoded {
    /// Frames to write: headers, and payloads shared with every client.
    Frames(Vec<Frame>),
    Keepalive,
    End(End),
}

fn encode_step(step: Step<'_>, states: &StateEncodings) -> Encoded {
    match step {
        Step::Hello(snapshot) => {
            let catchup = match &snapshot.catchup {
                Catchup::Resumed(events) => events.as_slice(),
                Catchup::Fresh(_) => &[],
            };
            let hello = protocol::hello_pieces(snapshot, states);
            let mut frames = Vec::with_capacity(hello.len() + catchup.len());
            frames.extend(Frame::pieces(codec::OP_TEXT, hello));
            for event in catchup {
                frames.push(Frame::new(codec::OP_TEXT, Bytes::from(event.frame.clone())));
            }
            Encoded::Frames(frames)
        }
        Step::Deliveries(batch) => Encoded::Frames(
            batch
                .iter()
                .map(|delivery| Frame::new(codec::OP_TEXT, Bytes::from(delivery.frame())))
                .collect(),
        ),
        Step::Keepalive => Encoded::Keepalive,
        Step::End(end) => Encoded::End(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the future `f` returns.
    fn future_size<A, F: Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected client keeps its task's future allocated (in a
    /// tokio task cell: the future and 112 bytes of tokio's, 128-byte
    /// aligned) for as long as it is connected, idle or not: 15,000 idle
    /// clients hold 15,000 of them. It was 1,664 bytes before the setup,
    /// the subscribe and the handling of client frames left it (736 then),
    /// 656 once what wakes the idle loop was handled in a boxed future, 536
    /// once the stream was polled with no future of its own, 392 once the
    /// client held its writer and reader, the hello was boxed and
    /// released, the peer address was asked of the socket, the signals
    /// were shrunk and silence was counted in keepalive ticks, and 264 once
    /// the stream waited on one clock (closed at the drain) and kept no
    /// batch, the writer kept no copy of WRITE_TIMEOUT, the client no
    /// second handle on the broadcaster, a refusal to publish was boxed,
    /// and the loop ran in the task itself on one local that never moves:
    /// at most 272 keeps tokio's cell at 384 bytes (512 from 273 on).
    #[test]
    fn a_client_task_stays_small() {
        let bytes = future_size(run);
        println!("client task future: {bytes} bytes");
        assert!(
            bytes <= 272,
            "the client task's future grew to {bytes} bytes"
        );
    }
}
