//! The broadcaster's WebSocket transport on `$WEBSOCKET_PATH`.
//!
//! Owns: the handshake checks (enabled, Origin, MAX_CONNECTIONS, query),
//! one task per client that encodes what its [`ClientStream`] yields (the
//! hello and catch-up, then each batch of deliveries as one vectored write
//! sequence from the shared event bytes) and reads
//! the client's frames (subscribe / unsubscribe / publish, pings, close) —
//! fairly: a steady flow of events never starves reading them; keepalive
//! pings; WRITE_TIMEOUT_SECS on every write; and the close codes: 1008 too
//! slow, 1009 frame too large, 1007 bad UTF-8, 1002 protocol error, 1001
//! shutdown or silence.
//!
//! Does not own: ordering, resume or fan-out (the hub), the stream of what
//! to send (`broadcast`), what a frame means (`protocol`), framing
//! ([`codec`]).

pub mod codec;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming as IncomingBody;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, warn};

use crate::auth::Access;
use crate::broadcast::{Broadcaster, ClientSlot, ClientStream, End, Step, Transport};
use crate::config::Config;
use crate::hub::{Catchup, HubError};
use crate::protocol::{self, ClientFrame, SubscriptionQuery};
use crate::response::{self, Body};
use crate::watchdog::DRAIN_STALL;
use crate::{cors, publish};
use bytes::Bytes;
use codec::{Frame, Incoming, ReadError, WriteError};

type Io = TokioIo<Upgraded>;
type Writer = codec::Writer<WriteHalf<Io>>;
type ClientFrames = Pin<Box<dyn Stream<Item = Result<Incoming, ReadError>> + Send>>;

/// Every this many turns of a client's loop its socket is read before its
/// queue (see `Client::serve`).
const READ_EVERY: u32 = 4;

/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers the upgrade request and spawns the client's task.
pub fn upgrade(
    broadcaster: &Arc<Broadcaster>,
    _access: &Arc<Access>,
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
    let Some(key) = websocket_key(headers) else {
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
    let can_publish = publish::may_publish(config, peer, headers, query.token.as_deref());
    let Some(slot) = broadcaster.reserve_client(Transport::WebSocket) else {
        warn!(%peer, max = config.max_connections, "MAX_CONNECTIONS reached; refusing a websocket");
        return response::json_error(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);

    let client = Client {
        broadcaster: broadcaster.clone(),
        peer,
        can_publish,
        _slot: slot,
    };
    let (patterns, resume) = (query.patterns, query.resume);
    // Everything this future keeps across `.await`s stays allocated for as
    // long as the client is connected, so it holds little.
    let task = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                debug!(%peer, %error, "websocket upgrade failed");
                return;
            }
        };
        let limits = client.broadcaster.limits;
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        let writer = codec::Writer::new(write, limits.write_timeout);
        let reader = codec::Reader::new(read, limits.max_message_bytes);
        let frames: ClientFrames = Box::pin(futures_util::stream::unfold(
            reader,
            |mut reader: codec::Reader<ReadHalf<Io>>| async move {
                let next = reader.next().await;
                Some((next, reader))
            },
        ));
        let stream = client.broadcaster.subscribe(patterns, resume).await;
        client.run(writer, frames, stream).await;
    };
    broadcaster
        .shutdown
        .spawn_on(task, &broadcaster.client_runtime);

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

/// The `Sec-WebSocket-Key` of a valid version-13 upgrade request.
fn websocket_key(headers: &HeaderMap) -> Option<&HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let valid = has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    valid
        .then(|| headers.get(header::SEC_WEBSOCKET_KEY))
        .flatten()
}

/// Why a client's loop ended; each maps to one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Its queue overflowed: 1008.
    TooSlow,
    /// It sent a message over MAX_MESSAGE_BYTES: 1009.
    TooLarge,
    /// It sent text that is not UTF-8: 1007.
    InvalidText,
    /// It broke the framing rules: 1002.
    Protocol,
    /// The gateway is draining: 1001.
    Shutdown,
    /// No frame from it for three ping intervals: 1001.
    Silent,
    /// The hub could not serve it: 1011.
    HubUnavailable,
    /// Its query asked for more than MAX_PATTERNS_PER_CLIENT: 1008 (the
    /// handshake checks the query first, so this is a backstop).
    TooManyPatterns,
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
            Ending::TooLarge => Some((1009, "frame too large")),
            Ending::InvalidText => Some((1007, "text is not UTF-8")),
            Ending::Protocol => Some((1002, "protocol error")),
            Ending::Shutdown => Some((1001, "server shutting down")),
            Ending::Silent => Some((1001, "no pong")),
            Ending::HubUnavailable => Some((1011, "backplane unavailable")),
            Ending::TooManyPatterns => Some((1008, "too many patterns (MAX_PATTERNS_PER_CLIENT)")),
            Ending::Gone {
                answer_close: Some(code),
            } => Some((code, "")),
            Ending::Gone { answer_close: None } | Ending::Stalled => None,
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

struct Client {
    broadcaster: Arc<Broadcaster>,
    peer: SocketAddr,
    /// Presented the publish token (or is on loopback without one).
    can_publish: bool,
    /// Counts this client in /health and MAX_CONNECTIONS until dropped.
    _slot: ClientSlot,
}

impl Client {
    async fn run(
        self,
        mut writer: Writer,
        mut frames: ClientFrames,
        stream: Result<ClientStream, HubError>,
    ) {
        let peer = self.peer;
        debug!(%peer, ok = stream.is_ok(), "websocket client connected");
        let ending = match stream {
            Ok(mut stream) => {
                let ending = self.serve(&mut writer, &mut frames, &mut stream).await;
                // Free the queue and its pinned events before a close that
                // may take a while.
                drop(stream);
                ending
            }
            Err(HubError::TooManyPatterns { .. }) => Ending::TooManyPatterns,
            Err(_) => Ending::HubUnavailable,
        };
        if ending != Ending::Stalled {
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
        debug!(%peer, ending = ?ending, "websocket client disconnected");
    }

    async fn serve(
        &self,
        writer: &mut Writer,
        frames: &mut ClientFrames,
        stream: &mut ClientStream,
    ) -> Ending {
        let interval = self.broadcaster.limits.ping_interval;
        let mut last_heard = Instant::now();
        let mut turn: u32 = 0;
        loop {
            // The queue is looked at first, so a wake-up for events costs no
            // read poll of the socket; but every READ_EVERY-th turn the
            // socket goes first, so a client's frames (pong, unsubscribe,
            // close) are read within READ_EVERY writes however busy its
            // queue is (a queue-first select alone starved them).
            turn = turn.wrapping_add(1);
            // Polled with this task's own waker (not `now_or_never`'s no-op
            // one), so a Pending read stays registered for the next frame.
            let early = if turn % READ_EVERY == 0 {
                std::future::poll_fn(|cx| {
                    Poll::Ready(match frames.poll_next_unpin(cx) {
                        Poll::Ready(message) => Some(message),
                        Poll::Pending => None,
                    })
                })
                .await
            } else {
                None
            };
            let message = match early {
                Some(message) => message,
                None => tokio::select! {
                    biased;
                    step = stream.next() => {
                        let out = match encode_step(step) {
                            Encoded::Frames(frames) => frames,
                            Encoded::Keepalive => {
                                if last_heard.elapsed() > interval * 3 {
                                    return Ending::Silent;
                                }
                                vec![Frame::new(codec::OP_PING, Bytes::new())]
                            }
                            Encoded::End(end) => return end.into(),
                        };
                        if let Err(ending) = write(writer, stream, out).await {
                            return ending;
                        }
                        continue;
                    }
                    message = frames.next() => message,
                },
            };
            last_heard = Instant::now();
            let reply = match message {
                Some(Ok(Incoming::Text(text))) => self
                    .client_frame(&text, stream)
                    .await
                    .map(|reply| (codec::OP_TEXT, reply.into_bytes())),
                Some(Ok(Incoming::Binary)) => Some((
                    codec::OP_TEXT,
                    protocol::error_frame("binary frames are not supported; send JSON text")
                        .into_bytes(),
                )),
                Some(Ok(Incoming::Ping(payload))) => Some((codec::OP_PONG, payload)),
                Some(Ok(Incoming::Pong)) => None,
                Some(Ok(Incoming::Close(code))) => {
                    // Echo a valid code; 1000 when it sent none.
                    let code = code.filter(|c| (1000..5000).contains(c)).unwrap_or(1000);
                    return Ending::Gone {
                        answer_close: Some(code),
                    };
                }
                Some(Err(ReadError::TooLarge)) => return Ending::TooLarge,
                Some(Err(ReadError::InvalidText)) => return Ending::InvalidText,
                Some(Err(ReadError::Protocol)) => return Ending::Protocol,
                Some(Err(ReadError::Gone)) | None => return Ending::Gone { answer_close: None },
            };
            if let Some((opcode, payload)) = reply {
                if let Err(ending) = write(writer, stream, vec![Frame::new(opcode, payload)]).await
                {
                    return ending;
                }
            }
        }
    }

    /// Handles one text frame; answers with a frame to send, if any.
    async fn client_frame(&self, text: &str, stream: &ClientStream) -> Option<String> {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(error) => return Some(protocol::error_frame(&error.0)),
        };
        let subscription = stream.subscription();
        let hub = subscription.hub();
        match frame {
            ClientFrame::Subscribe(patterns) => {
                match hub.add_patterns(subscription.id, patterns.clone()).await {
                    Ok(state) => Some(protocol::subscribed_frame(&patterns, &state)),
                    Err(error) => Some(protocol::error_frame(&error.to_string())),
                }
            }
            ClientFrame::Unsubscribe(patterns) => {
                match hub.remove_patterns(subscription.id, patterns).await {
                    Ok(()) => None,
                    Err(error) => Some(protocol::error_frame(&error.to_string())),
                }
            }
            ClientFrame::Publish(_) if !self.can_publish => Some(protocol::error_frame(
                "publishing needs the publish token (Authorization: Bearer or ?token=)",
            )),
            ClientFrame::Publish(publication) => match hub.publish(vec![publication]).await {
                Ok(_) => None,
                Err(error) => Some(protocol::error_frame(&error.to_string())),
            },
        }
    }
}

/// Writes `out` unless the client is cut off or the gateway drains first.
async fn write(
    writer: &mut Writer,
    stream: &mut ClientStream,
    out: Vec<Frame>,
) -> Result<(), Ending> {
    match stream.guard(writer.send(out)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(end) => Err(end.into()),
    }
}

/// What one step of the stream becomes on the wire.
enum Encoded {
    /// Frames to write: headers, and payloads shared with every client.
    Frames(Vec<Frame>),
    Keepalive,
    End(End),
}

fn encode_step(step: Step<'_>) -> Encoded {
    match step {
        Step::Hello(snapshot) => {
            let catchup = match &snapshot.catchup {
                Catchup::Resumed(events) => events.as_slice(),
                Catchup::Fresh(_) => &[],
            };
            let mut frames = Vec::with_capacity(1 + catchup.len());
            frames.push(Frame::new(codec::OP_TEXT, protocol::hello_frame(snapshot)));
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
