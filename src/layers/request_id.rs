//! Request ids and tracing for the `/_switchyard/*` routes.
//!
//! Owns: the `x-request-id` each reserved request carries (the client's or
//! an edge proxy's when it sent one, else ours: a process-unique counter),
//! echoed on the answer, and the debug span every log line of the handler
//! runs in (method, path, request id; never the query, which may hold a
//! token), with a debug line for each answer (status, latency). The layers
//! are tower-http's `SetRequestId`, `Trace` and `PropagateRequestId`.
//!
//! Does not own: the `request` line the router logs for every route
//! (with the query redacted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Request};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestId, RequestId};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

/// Ids for requests that came without one: `sy-<n>`, counting from 1.
#[derive(Clone, Debug, Default)]
pub struct CountingIds(Arc<AtomicU64>);

impl MakeRequestId for CountingIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        HeaderValue::from_str(&format!("sy-{n}"))
            .ok()
            .map(RequestId::new)
    }
}

/// The span of one reserved request.
pub fn span<B>(request: &Request<B>) -> Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug_span!(
        "reserved",
        method = %request.method(),
        path = request.uri().path(),
        request_id = id,
    )
}

/// The trace layer: a debug span per request, a debug line per answer
/// (5xx included: the handlers log their own failures at the right level).
pub type Trace<B> = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<B>) -> Span,
    (),
    DefaultOnResponse,
    (),
    (),
    DefaultOnFailure,
>;

pub fn trace<B>() -> Trace<B> {
    TraceLayer::new_for_http()
        .make_span_with(span::<B> as fn(&Request<B>) -> Span)
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG))
}
