//! The tower layers around the router: each cross-cutting concern of the
//! HTTP side in one place, composed by [`server`](crate::server) with a
//! `ServiceBuilder`.
//!
//! The stack, outermost first:
//!
//! ```text
//! proxied           no layer: server::dispatch → proxy::Proxy
//! every other route CatchPanic (panic → 500 JSON)           panic
//!                   └ Router (server.rs): one hop to a route
//! /_switchyard/*    SetRequestId (x-request-id)             request_id
//!                   └ Trace (debug span + response log)     request_id
//!                     └ PropagateRequestId
//!                       └ reserved handlers, CORS (cors.rs)
//! console, client.js Compression (gzip, when asked)         pages
//! ```
//!
//! The proxy path has no layer: catch-panic, a boxed router future and an
//! in-flight bound (tower's `ConcurrencyLimit` + `LoadShed`, 503 past
//! MAX_CONNECTIONS proxied requests) together measured about 4% more CPU
//! per proxied request with benches/proxy.sh (two runs against the
//! previous binary), over the 2% a layer may cost there.
//!
//! Owns: which tower / tower-http layer does what, and how each one's
//! answer looks (the panic's 500, the shed request's 503). Does not own:
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
