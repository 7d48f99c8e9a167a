//! A real upstream for the proxy tests: a hyper HTTP/1.1 server on
//! 127.0.0.1 with a few routes, and a WebSocket echo endpoint built on
//! hyper's upgrade + tokio-tungstenite, like a dashboard would run.
//!
//! Routes:
//! - `/inspect`: answers JSON with the method, URI, headers and body size it saw
//! - `/download?bytes=N`: streams N bytes (a repeating pattern) in 64 KiB chunks,
//!   pausing for `pause_ms` after the first 8 MiB
//! - `/upload?pause_ms=N`: reads the body (pausing after 8 MiB), answers its size
//! - `/slow?ms=N`: waits N ms before the response head
//! - `/hop-response`: a response carrying hop-by-hop headers
//! - `/bye`: answers 200 (keep-alive, as far as the headers say), then
//!   closes the connection 100 ms later, like a server's idle timeout
//! - `/drop-on-reuse`: answers the first request of a connection with 200
//!   "fresh"; on a connection that already carried one, reads the request
//!   and hangs up without an answer (a dashboard closing a kept connection
//!   just as a request arrives)
//! - `/refuse-upgrade`: answers an upgrade request with 403 "nope"
//! - any other path with `Upgrade: websocket`: a WebSocket echo server; a
//!   text message `flood` makes it send 64 KiB binary frames until sending
//!   fails. Each WebSocket's end is recorded in `Seen::websockets_ended`.
//! - anything else: 200 "hello from upstream"

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

/// What the upstream saw, for assertions.
#[derive(Default)]
pub struct Seen {
    /// Request heads, in arrival order.
    pub requests: Vec<(String, String, HeaderMap)>,
    /// Connections that carried at least one request (the gateway's TCP
    /// health probe connects without sending one).
    pub connections: usize,
    /// When each upgraded WebSocket's task ended (its peer closed or broke).
    pub websockets_ended: Vec<std::time::Instant>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    accept_loop: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on(0).await
    }

    /// Binds a given port (0: any), e.g. to come back where a killed one was.
    pub async fn start_on(port: u16) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let accept_loop = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                connections.spawn(async move {
                    let this = Arc::new(ThisConnection::default());
                    let hang_up = this.clone();
                    let service = service_fn(move |request| {
                        if !this.used.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            record.lock().unwrap().connections += 1;
                        }
                        handle(request, record.clone(), this.clone())
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = connection => {}
                        _ = hang_up.hang_up.notified() => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            accept_loop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and drops every open connection (the JoinSet goes
    /// with the aborted task).
    /// Returns once the listener is closed.
    pub async fn kill(self) {
        self.accept_loop.abort();
        let _ = self.accept_loop.await;
    }

    pub fn requests(&self) -> Vec<(String, String, HeaderMap)> {
        self.seen.lock().unwrap().requests.clone()
    }

    pub fn websockets_ended(&self) -> Vec<std::time::Instant> {
        self.seen.lock().unwrap().websockets_ended.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }
}

/// Per-connection state shared with its requests.
#[derive(Default)]
struct ThisConnection {
    used: std::sync::atomic::AtomicBool,
    /// Requests this connection carried before the current one.
    served: std::sync::atomic::AtomicUsize,
    hang_up: tokio::sync::Notify,
}

fn query_number(request: &Request<Incoming>, name: &str) -> u64 {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

async fn handle(
    mut request: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
    connection: Arc<ThisConnection>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    seen.lock().unwrap().requests.push((
        request.method().to_string(),
        request.uri().to_string(),
        request.headers().clone(),
    ));
    let upgrade = request.headers().contains_key(http::header::UPGRADE);
    let served = connection
        .served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = match path.as_str() {
        "/drop-on-reuse" if served > 0 => {
            connection.hang_up.notify_one();
            return std::future::pending().await;
        }
        "/drop-on-reuse" => Response::new(full("fresh")),
        "/refuse-upgrade" => Response::builder()
            .status(StatusCode::FORBIDDEN)
            .header("x-refused", "yes")
            .body(full("nope"))
            .unwrap(),
        _ if upgrade => websocket(&mut request, seen.clone()),
        "/inspect" => {
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let answer = serde_json::json!({
                "method": method, "uri": uri, "headers": headers,
                "body_len": body.len(), "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(full(answer.to_string()))
                .unwrap()
        }
        "/download" => {
            let total = query_number(&request, "bytes");
            let pause = Duration::from_millis(query_number(&request, "pause_ms"));
            Response::new(download(total, pause))
        }
        "/upload" => {
            let pause = Duration::from_millis(query_number(&request, "pause_ms"));
            let mut body = request.into_body();
            let mut received: u64 = 0;
            let mut paused = false;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                }
                if !paused && received >= 8 << 20 {
                    paused = true;
                    tokio::time::sleep(pause).await;
                }
            }
            Response::new(full(received.to_string()))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_number(&request, "ms"))).await;
            Response::new(full("slow hello"))
        }
        "/hop-response" => Response::builder()
            .header("connection", "x-drop")
            .header("x-drop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-keep", "1")
            .body(full("hop"))
            .unwrap(),
        "/bye" => {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                connection.hang_up.notify_one();
            });
            Response::new(full("bye"))
        }
        _ => Response::new(full("hello from upstream\n")),
    };
    Ok(response)
}

/// `total` bytes of a repeating 0..=250 pattern, so corruption shows.
fn download(total: u64, pause: Duration) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let pattern: Bytes = (0..CHUNK)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let pattern = pattern.clone();
        async move {
            if sent >= total {
                return None;
            }
            if sent == 8 << 20 {
                tokio::time::sleep(pause).await;
            }
            let len = CHUNK.min(total - sent);
            // The pattern restarts every chunk; 64 KiB chunks keep it aligned.
            let frame = Frame::data(pattern.slice(0..len as usize));
            Some((Ok::<_, Infallible>(frame), sent + len))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// The 101 answer plus an echo task. Picks the first offered subprotocol and
/// echoes any offered extension header back, so tests can see the proxy
/// carry handshake headers both ways.
fn websocket(request: &mut Request<Incoming>, seen: Arc<Mutex<Seen>>) -> Response<Body> {
    let headers = request.headers();
    let Some(key) = headers.get("sec-websocket-key") else {
        return Response::builder()
            .status(400)
            .body(full("no key"))
            .unwrap();
    };
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
    if let Some(first) = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
    {
        response = response.header("sec-websocket-protocol", first.trim());
    }
    if let Some(extensions) = headers.get("sec-websocket-extensions") {
        response = response.header("sec-websocket-extensions", extensions.clone());
    }
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                Message::Text(text) if text.as_str() == "flood" => {
                    let frame = Bytes::from(vec![7u8; 64 * 1024]);
                    while socket.send(Message::Binary(frame.clone())).await.is_ok() {}
                    break;
                }
                Message::Text(text) => match text.as_str().strip_prefix("close-me:") {
                    Some(code) => {
                        let code: u16 = code.parse().unwrap_or(1000);
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: "server says bye".into(),
                        };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        continue;
                    }
                    None => Message::Text(text),
                },
                Message::Binary(data) => Message::Binary(data),
                // Pings are answered by tungstenite itself; closes are echoed.
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
        seen.lock()
            .unwrap()
            .websockets_ended
            .push(std::time::Instant::now());
    });
    response.body(full(Bytes::new())).unwrap()
}
