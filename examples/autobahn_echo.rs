//! An echo server on the broadcaster's own WebSocket code, for the Autobahn
//! test suite (`tests/autobahn/run.sh` runs `kosoku` against it). Not part
//! of the product: the gateway has no echo route.
//!
//! The handshake (`ws::handshake`), the bare socket taken back from hyper
//! (`ws::socket`) and the framing (`ws::codec`) are the gateway's; only the
//! loop is this file's: it echoes text and binary messages, answers pings,
//! and answers a close (or closes with the reader's code on bad input).
//!
//! Its message limit is 16 MiB (Autobahn's section 9 sends messages of up
//! to 16 MiB; the gateway's default MAX_MESSAGE_BYTES is 64 KiB), and a
//! fragmented message must complete within 60 s.
//!
//! Usage: `autobahn_echo [ADDR]` (default 127.0.0.1:9001; port 0 picks a
//! free one); prints `listening on ADDR` once bound.

use std::convert::Infallible;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming as IncomingBody};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchyard::ws::codec::{self, Frame, Incoming, Reader, Writer};
use switchyard::ws::handshake;
use switchyard::ws::socket::{Socket, SocketReader, SocketWriter};
use tokio::net::{TcpListener, TcpStream};

/// Autobahn's largest message (cases 9.1.6 and 9.2.6).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long the client may accept nothing, and a fragmented message may
/// take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the close frame may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|request| async { Ok::<_, Infallible>(upgrade(request)) });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Answers the upgrade request (400 for anything else) and spawns the echo.
fn upgrade(mut request: Request<IncomingBody>) -> Response<Empty<Bytes>> {
    let mut answer = Response::new(Empty::new());
    let Some(key) = handshake::websocket_key(request.headers()) else {
        *answer.status_mut() = StatusCode::BAD_REQUEST;
        return answer;
    };
    let accept = handshake::accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            echo(upgraded).await;
        }
    });
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = answer.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SERVER, HeaderValue::from_static("switchyard-codec"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    answer
}

/// Echoes messages until a close, bad input or a failed write.
async fn echo(upgraded: Upgraded) {
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        return;
    };
    let socket = Socket::new(parts.io.into_inner());
    let mut writer = Writer::new(SocketWriter::new(socket.clone()));
    let mut reader = Reader::new(
        SocketReader::new(socket, parts.read_buf),
        MAX_MESSAGE_BYTES,
        Some(WRITE_TIMEOUT),
    );
    let close = loop {
        let reply = match reader.next().await {
            Ok(Incoming::Text(text)) => Frame::new(codec::OP_TEXT, text.into_bytes()),
            Ok(Incoming::Binary(bytes)) => Frame::new(codec::OP_BINARY, bytes),
            Ok(Incoming::Ping(payload)) => Frame::new(codec::OP_PONG, payload),
            Ok(Incoming::Pong) => continue,
            Ok(Incoming::Close(code)) => {
                break Some(codec::close_frame(codec::close_reply(code), ""))
            }
            Err(error) => {
                break error
                    .close()
                    .map(|(code, reason)| codec::close_frame(code, reason))
            }
        };
        if writer.send(vec![reply], WRITE_TIMEOUT).await.is_err() {
            return;
        }
    };
    writer.finish(close, CLOSE_TIMEOUT).await;
}
