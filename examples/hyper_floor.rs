//! The cheapest reverse proxy hyper 1 allows, for the proxy benchmarks
//! (`benches/proxy.sh` and `benches/proxy-instructions.sh` run it beside
//! nginx and switchyard as `FLOOR_BIN`): what any gateway built on the chosen
//! stack pays per request before it does anything of its own. Not part of
//! the product.
//!
//! It keeps switchyard's threading (one current-thread loop per core, each
//! with its own `SO_REUSEPORT` listener, TCP_NODELAY) and hyper's HTTP/1
//! server and client, and leaves out everything else a gateway does: no
//! tower stack, no timers (no header-read or upstream timeout), no
//! forwarding or hop-by-hop headers, no pool shared between connections
//! (each client connection opens one dashboard connection on its first
//! request and keeps it), no retries, no error pages (a failure closes
//! the connection). It is a measuring stick, not a proxy to deploy.
//!
//! Environment, as the gateway's: `PORT` (default 8080), `HOST` (default
//! 127.0.0.1), `DASHBOARD_URL` (`http://host:port`, required),
//! `TOKIO_WORKER_THREADS` (loops; default one per core). `GET /health`
//! answers `{"upstream":"up"}` here, so the benchmarks' readiness check
//! passes; every other request goes to the dashboard.

#[path = "support/floor.rs"]
mod floor;

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use self::floor::invalid;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> std::io::Result<()> {
    let dashboard =
        std::env::var("DASHBOARD_URL").map_err(|_| invalid("DASHBOARD_URL is required"))?;
    let upstream = dashboard
        .strip_prefix("http://")
        .ok_or_else(|| invalid("DASHBOARD_URL must be http://host:port"))?
        .trim_end_matches('/')
        .to_owned();
    floor::run_loops(move |listener| serve(listener, upstream.clone()))
}

/// One loop: accepts on its listener and serves each connection on it.
fn serve(listener: std::net::TcpListener, upstream: String) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let upstream: Rc<str> = upstream.into();
        loop {
            let (stream, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::task::spawn_local(async move {
                // This client connection's dashboard connection, once opened.
                let dashboard: Rc<RefCell<Option<SendRequest<Incoming>>>> = Rc::default();
                let service = service_fn(move |request| {
                    let upstream = upstream.clone();
                    let dashboard = dashboard.clone();
                    async move { Ok::<_, Infallible>(forward(request, &upstream, &dashboard).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    })
}

/// Sends `request` as it came on this connection's dashboard connection.
async fn forward(
    request: Request<Incoming>,
    upstream: &str,
    dashboard: &RefCell<Option<SendRequest<Incoming>>>,
) -> Response<Body> {
    if request.uri().path() == "/health" {
        let body = Full::new(Bytes::from_static(b"{\"upstream\":\"up\"}"));
        return Response::new(body.map_err(|never| match never {}).boxed_unsync());
    }
    let sender = dashboard.borrow_mut().take();
    let mut sender = match sender {
        Some(sender) => sender,
        None => match connect(upstream).await {
            Ok(sender) => sender,
            Err(_) => return status(StatusCode::BAD_GATEWAY),
        },
    };
    // The previous response's body has been read to its end by now (the
    // client connection serves one request at a time).
    if sender.ready().await.is_err() {
        return status(StatusCode::BAD_GATEWAY);
    }
    let answer = sender.send_request(request).await;
    *dashboard.borrow_mut() = Some(sender);
    match answer {
        Ok(answer) => answer.map(BodyExt::boxed_unsync),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

async fn connect(upstream: &str) -> std::io::Result<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::task::spawn_local(connection);
    Ok(sender)
}

fn status(code: StatusCode) -> Response<Body> {
    let mut answer = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *answer.status_mut() = code;
    answer
}
