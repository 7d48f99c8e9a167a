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
//! buffer (no shared atomic, no allocation per request), and an HTTP/1.1
//! request skips the shed count (its connection's slot covers it). An
//! earlier stack of tower-http's `CatchPanic` + a boxed router future +
//! tower's `ConcurrencyLimit`/`LoadShed` cost about 4% more CPU per
//! proxied request; this one was measured with benches/proxy.sh against
//! the binary without it (see the commit that added it).
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
