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
//! the watchdog, the hub subscription, pings, and every frame after the
//! hello. It is a measuring stick, not a server to deploy.
//!
//! Environment, as the gateway's: `PORT` (default 8080), `HOST` (default
//! 127.0.0.1), `TOKIO_WORKER_THREADS` (loops; default one per core).
//! `GET /health` answers `{"status":"ok"}`; everything else is a 404.

#[path = "support/floor.rs"]
mod floor;

use std::convert::Infallible;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard::ws::handshake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hello, as one unmasked text frame (FIN + opcode 1, 7-bit length).
const HELLO: &[u8] =
    b"\x81\x43{\"type\":\"hello\",\"epoch\":\"floor\",\"seq\":0,\"resumed\":false,\"state\":{}}";

fn main() -> std::io::Result<()> {
    floor::run_loops(serve)
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
