//! The cheapest WebSocket accept hyper 1 allows, for the accept benchmark
//! (`benches/broadcast.sh` runs it beside switchyard, uWebSockets.js and
//! Node `ws` as the accept row's "hyper floor"): what any gateway built on
//! the chosen stack pays per accepted WebSocket before it does anything of
//! its own. Not part of the product.
//!
//! It keeps switchyard's threading for HTTP (one current-thread loop per
//! core, each with its own `SO_REUSEPORT` listener, TCP_NODELAY) and hyper's
//! HTTP/1 server and upgrade, and answers `GET /ws` with a 101 and then a
//! fixed hello (`{"type":"hello","epoch":"floor","seq":0,"resumed":false,
//! "state":{}}`) in one text frame; the socket then stays on its loop,
//! read until the client closes. Left out, against switchyard: the
//! handshake's checks beyond the key (Origin, the query, tokens, limits),
//! the hand-over to a clients runtime (the isolation from a busy loop),
//! the watchdog, the hub subscription, pings, and every frame after the
//! hello. It is a measuring stick, not a server to deploy.
//!
//! Environment, as the gateway's: `PORT` (default 8080), `HOST` (default
//! 127.0.0.1), `TOKIO_WORKER_THREADS` (loops; default one per core).
//! `GET /health` answers `{"status":"ok"}`; everything else is a 404.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard::ws::handshake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The hello, as one unmasked text frame (FIN + opcode 1, 7-bit length).
const HELLO: &[u8] =
    b"\x81\x43{\"type\":\"hello\",\"epoch\":\"floor\",\"seq\":0,\"resumed\":false,\"state\":{}}";

fn main() -> std::io::Result<()> {
    let port: u16 = env_or("PORT", "8080").parse().map_err(invalid)?;
    let host: std::net::IpAddr = env_or("HOST", "127.0.0.1").parse().map_err(invalid)?;
    let loops = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let addr = SocketAddr::new(host, port);
    let threads = (0..loops)
        .map(|_| {
            let listener = listener(addr)?;
            Ok(std::thread::spawn(move || serve(listener)))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for thread in threads {
        thread
            .join()
            .map_err(|_| std::io::Error::other("a loop panicked"))??;
    }
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn invalid(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string())
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    // A runtime only to create the socket; the loop's own takes it over.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let _inside = runtime.enter();
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// One loop: accepts on its listener and serves each connection, and each
/// WebSocket after its upgrade, on it.
fn serve(listener: std::net::TcpListener) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let service =
                    service_fn(|request| async move { Ok::<_, Infallible>(answer(request)) });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    })
}

fn answer(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let key = match request.uri().path() {
        "/ws" => handshake::websocket_key(request.headers()).map(|key| key.as_bytes().to_vec()),
        "/health" => return Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}"))),
        _ => None,
    };
    let Some(key) = key else {
        let mut answer = Response::new(Full::new(Bytes::new()));
        *answer.status_mut() = StatusCode::NOT_FOUND;
        return answer;
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut socket = TokioIo::new(upgraded);
        if socket.write_all(HELLO).await.is_err() {
            return;
        }
        // Held until the client goes; what it sends is not looked at.
        let mut buffer = [0u8; 512];
        while let Ok(1..) = socket.read(&mut buffer).await {}
    });
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = answer.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&handshake::accept_key(&key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    answer
}
