//! The broadcaster's WebSocket transport on `$WEBSOCKET_PATH`.
//!
//! Owns: the handshake checks (enabled, Origin, MAX_CONNECTIONS, query),
//! one task per client that writes its hello and catch-up, then coalesces
//! whatever its queue holds into one flush per wake-up; client frames
//! (subscribe / unsubscribe / publish), keepalive pings, and the close
//! codes: 1008 too slow, 1009 frame too large, 1001 shutdown or silence.
//!
//! Does not own: ordering, resume or fan-out (the hub), or what a frame
//! means on the wire (`protocol`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::beacon::Signal;
use crate::hub::queue::ClientQueue;
use crate::hub::{Catchup, HubError, Subscription};
use crate::metrics::Transport;
use crate::protocol::{self, ClientFrame, SubscriptionQuery};
use crate::response::{self, Body};
use crate::server::{ClientSlot, Gateway};
use crate::{cors, publish};

type Socket = WebSocketStream<TokioIo<Upgraded>>;
type Sink = SplitSink<Socket, Message>;

/// Most queued events written in one flush.
const BATCH: usize = 256;

/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers the upgrade request and spawns the client's task.
pub fn upgrade(
    gateway: &Arc<Gateway>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let config = &gateway.config;
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
    let query = match SubscriptionQuery::parse(request.uri().query()) {
        Ok(query) => query,
        Err(error) => return response::json_error(StatusCode::BAD_REQUEST, &error.0),
    };
    let can_publish = publish::may_publish(config, peer, headers, query.token.as_deref());
    let Some(slot) = gateway.reserve_client(Transport::WebSocket) else {
        warn!(%peer, max = config.max_connections, "MAX_CONNECTIONS reached; refusing a websocket");
        return response::json_error(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);

    let client = Client {
        gateway: gateway.clone(),
        peer,
        can_publish,
        _slot: slot,
    };
    let max_message_bytes = config.max_message_bytes;
    let (patterns, resume) = (query.patterns, query.resume);
    // Everything this future keeps across `.await`s stays allocated for as
    // long as the client is connected, so it holds little: the socket goes
    // straight into its split halves and the query into the subscription.
    let task = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                debug!(%peer, %error, "websocket upgrade failed");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(socket_config(max_message_bytes)),
        )
        .await;
        let (sink, stream) = socket.split();
        let gateway = &client.gateway;
        let subscription = gateway
            .hub
            .clone()
            .subscribe(patterns, resume, gateway.config.client_queue)
            .await;
        client.run(sink, stream, subscription).await;
    };
    gateway.shutdown.spawn_on(task, &gateway.client_runtime);

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

fn socket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        // Clients send few, small frames; an idle connection should cost
        // little (this buffer is allocated up front, per connection).
        .read_buffer_size(256)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size((max_message_bytes * 4).max(1 << 20))
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
    /// It sent a frame over MAX_MESSAGE_BYTES: 1009.
    TooLarge,
    /// The gateway is draining: 1001.
    Shutdown,
    /// No frame from it for three ping intervals: 1001.
    Silent,
    /// The hub could not serve it: 1011.
    HubUnavailable,
    /// It closed, or the socket broke: nothing more to send.
    Gone,
}

struct Client {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    /// Presented the publish token (or is on loopback without one).
    can_publish: bool,
    /// Counts this client in /health and MAX_CONNECTIONS until dropped.
    _slot: ClientSlot,
}

impl Client {
    async fn run(
        self,
        mut sink: Sink,
        mut stream: SplitStream<Socket>,
        subscription: Result<Subscription, HubError>,
    ) {
        let peer = self.peer;
        debug!(%peer, ok = subscription.is_ok(), "websocket client connected");
        let ending = match subscription {
            Ok(mut subscription) => {
                let ending = self.serve(&mut sink, &mut stream, &mut subscription).await;
                // Free the queue before a close that may take a while.
                drop(subscription);
                ending
            }
            Err(_) => Ending::HubUnavailable,
        };
        let close = |code: CloseCode, reason: &'static str| {
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
        };
        let farewell = match ending {
            Ending::TooSlow => Some(close(CloseCode::Policy, "too slow")),
            Ending::TooLarge => Some(close(CloseCode::Size, "frame too large")),
            Ending::Shutdown => Some(close(CloseCode::Away, "server shutting down")),
            Ending::Silent => Some(close(CloseCode::Away, "no pong")),
            Ending::HubUnavailable => Some(close(CloseCode::Error, "backplane unavailable")),
            Ending::Gone => None,
        };
        if let Some(frame) = farewell {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        debug!(%peer, ending = ?ending, "websocket client disconnected");
    }

    async fn serve(
        &self,
        sink: &mut Sink,
        stream: &mut SplitStream<Socket>,
        subscription: &mut Subscription,
    ) -> Ending {
        let interval = self.gateway.config.ping_interval;
        let queue = subscription.queue.clone();
        // One drain signal and one ping signal for the whole connection,
        // polled at every wake-up for an atomic load each (see `beacon`).
        let mut stop = self.gateway.shutdown.requested();

        let hello = protocol::hello_frame(&subscription.snapshot);
        let catchup = match &subscription.snapshot.catchup {
            Catchup::Resumed(events) => events.as_slice(),
            Catchup::Fresh(_) => &[],
        };
        let greeting = async {
            sink.feed(Message::text(hello)).await?;
            for event in catchup {
                sink.feed(Message::Text(event.frame.clone())).await?;
            }
            sink.flush().await
        };
        if let Err(ending) = self.guarded(greeting, &queue, &mut stop).await {
            return ending;
        }
        // The catch-up is written; its events need not stay alive with us.
        subscription.snapshot.catchup = Catchup::Resumed(Vec::new());

        let mut pings = self.gateway.ping_clock.next_firing();
        let mut last_heard = Instant::now();
        // Grows on first use: idle clients hold no batch buffer.
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return Ending::Shutdown,
                // A cut-off client learns it here (0: queue closed) or, when
                // its socket is stalled, from `guarded`.
                received = subscription.queue.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        // The hub dropped our queue: we were cut off.
                        return Ending::TooSlow;
                    }
                    let write = async {
                        for delivery in batch.drain(..) {
                            sink.feed(Message::Text(delivery.frame())).await?;
                        }
                        sink.flush().await
                    };
                    if let Err(ending) = self.guarded(write, &queue, &mut stop).await {
                        return ending;
                    }
                }
                message = stream.next() => {
                    last_heard = Instant::now();
                    let reply = match message {
                        Some(Ok(Message::Text(text))) => self.client_frame(text.as_str(), subscription).await,
                        Some(Ok(Message::Binary(_))) => Some(protocol::error_frame("binary frames are not supported; send JSON text")),
                        Some(Ok(Message::Close(_))) | None => return Ending::Gone,
                        Some(Ok(_)) => None, // ping (answered by tungstenite) or pong
                        Some(Err(tungstenite::Error::Capacity(_))) => return Ending::TooLarge,
                        Some(Err(_)) => return Ending::Gone,
                    };
                    if let Some(reply) = reply {
                        if let Err(ending) = self.guarded(sink.send(Message::text(reply)), &queue, &mut stop).await {
                            return ending;
                        }
                    }
                }
                _ = &mut pings => {
                    if last_heard.elapsed() > interval * 3 {
                        return Ending::Silent;
                    }
                    if let Err(ending) = self.guarded(sink.send(Message::Ping(Default::default())), &queue, &mut stop).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Runs a write unless the client is cut off or the gateway drains first;
    /// a stalled socket must not keep either from happening.
    async fn guarded(
        &self,
        write: impl Future<Output = Result<(), tungstenite::Error>>,
        queue: &ClientQueue,
        stop: &mut Signal,
    ) -> Result<(), Ending> {
        tokio::select! {
            biased;
            _ = queue.closed() => Err(Ending::TooSlow),
            _ = stop => Err(Ending::Shutdown),
            written = write => written.map_err(|_| Ending::Gone),
        }
    }

    /// Handles one text frame; answers with a frame to send, if any.
    async fn client_frame(&self, text: &str, subscription: &Subscription) -> Option<String> {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(error) => return Some(protocol::error_frame(&error.0)),
        };
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
