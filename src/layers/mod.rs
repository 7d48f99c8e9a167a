//! The tower layers around the router: each cross-cutting concern of the
//! HTTP side in one place, composed by [`server`](crate::server) with a
//! `ServiceBuilder`.
//!
//! The stack, outermost first:
//!
//! ```text
//! every request     RequestId (x-request-id, kept or set)   request_id
//!  (proxied too)    └ CatchPanic (panic → 500 JSON)          panic
//!                     └ Shed (h2c past MAX_HTTP_CONNECTIONS) shed
//!                       └ server::handle: proxy::Proxy, or the router
//! /_switchyard/*    Trace (debug span + response log)       request_id
//!                   └ reserved handlers, CORS (cors.rs)
//! console, client.js Compression (gzip, when asked)         pages
//! ```
//!
//! The connection bound itself (MAX_HTTP_CONNECTIONS, [`shed::Slots`]) is
//! applied by the accept loop (`server`), before hyper sees a connection.
//!
//! The three layers every request goes through are ours, not tower-http's:
//! each has a concrete future (no `Box<dyn Future>`), the body is wrapped
//! once without boxing, the request id comes from a per-thread counter and
//! buffer (no shared atomic, no allocation per request), an HTTP/1.1
//! request skips the shed count (its connection's slot covers it), and the
//! handler's future is boxed once at the bottom so the layers move a
//! pointer, not the whole future. An earlier stack of tower-http's `CatchPanic` +
//! a boxed router future + tower's `ConcurrencyLimit`/`LoadShed` cost about
//! 4% more CPU per proxied request. This one, under callgrind (user-space
//! instructions per proxied request, wrk -c8 through the gateway to a local
//! upstream, the same run for both): main 38,740, with the pipeline 39,750
//! to 39,980 (+2.6% to +3.2%), most of it the `x-request-id` header itself
//! (looked up, set, forwarded, answered: four header-map operations and
//! two more header lines for hyper to write); before the boxing it was
//! 42,240 (+9%). In CPU time (benches/proxy.sh, 64 connections, main's
//! binary in the same rounds) the difference is inside the machine's
//! noise: 0.97x median over 3 rounds.
//!
//! Owns: which layer does what, and how each one's answer looks (the
//! panic's 500, the shed connection's or request's 503). Does not own:
//! routing (`server`), any route's behaviour, or the rules the layers were
//! not fit for: CORS (`cors`: tower-http's `CorsLayer` answers a preflight
//! with 200, ours answers 204, and the broadcaster's Origin check must stay
//! one function with the CORS rule), request body limits (`publish` answers
//! 413 early and lingers, see `linger`; `RequestBodyLimitLayer` would reset
//! the connection under a client still uploading), and timeouts (the proxy's
//! upstream timeout counts only while the dashboard is awaited, SSE and
//! long-poll are long on purpose, and hyper times out request heads).

pub mod pages;
pub mod panic;
pub mod request_id;
pub mod shed;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;

use crate::response::{Body, BoxError};

/// The client's address, put in a request's extensions by the router for
/// the services behind it that need it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// A response whose body a layer wrapped, back as the gateway's [`Body`].
pub fn rebox<B>(response: Response<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    response.map(|body| body.map_err(Into::into).boxed())
}
