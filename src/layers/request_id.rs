//! Request ids, and tracing for the `/_switchyard/*` routes.
//!
//! Owns: the `x-request-id` every request carries ([`RequestIdLayer`]): the
//! one the client or an edge proxy sent when it is sane (one header, 1 to
//! [`MAX_CLIENT_ID`] bytes of letters, digits and `-_.:;/+=@`), else ours,
//! set on the request (so a proxied request carries it to the dashboard)
//! and on the answer when the answer has none. Ours read
//! `sy-<process tag>-<thread>-<n>`: a random tag per process (replicas and
//! restarts do not collide), the thread's number, and a counter of the
//! thread's own (no shared counter for the loops to fight over). Their
//! bytes are cut from a per-thread buffer, one allocation per
//! [`ARENA_BYTES`] of ids rather than one per request.
//!
//! Also owns the debug span every log line of a reserved handler runs in
//! (method, path, request id; never the query, which may hold a token),
//! with a debug line for each answer (status, latency): tower-http's
//! `Trace`, on the reserved routes only.
//!
//! Does not own: the `request` line the router logs for every route
//! (with the query redacted).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use http::header::{Entry, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id a client may bring; a longer one is replaced.
pub const MAX_CLIENT_ID: usize = 128;

/// Each thread cuts its ids from a buffer this big.
const ARENA_BYTES: usize = 4096;

/// Sets the request id (see the module), then propagates it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = set(request.headers_mut());
        RequestIdFuture {
            future: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The inner future; its answer gets the id unless it has one.
    pub struct RequestIdFuture<F> {
        #[pin]
        future: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut answer = ready!(this.future.poll(cx))?;
        if let Some(id) = this.id.take() {
            if let Entry::Vacant(slot) = answer.headers_mut().entry(X_REQUEST_ID) {
                slot.insert(id);
            }
        }
        Poll::Ready(Ok(answer))
    }
}

/// The request's id: the one `headers` carry when it is sane, else a new
/// one, set in `headers` (replacing whatever was there).
pub fn set(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup whether the header is there or not.
    match headers.entry(X_REQUEST_ID) {
        Entry::Occupied(mut sent) => {
            let mut values = sent.iter();
            if let (Some(id), None) = (values.next(), values.next()) {
                if is_sane(id) {
                    return id.clone();
                }
            }
            let id = next_id();
            sent.insert(id.clone());
            id
        }
        Entry::Vacant(slot) => {
            let id = next_id();
            slot.insert(id.clone());
            id
        }
    }
}

/// An id worth keeping: short, and of characters no log or header parser
/// trips on.
pub fn is_sane(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_CLIENT_ID).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:;/+=@".contains(b))
}

/// A new id from this thread's counter.
pub fn next_id() -> HeaderValue {
    IDS.with_borrow_mut(ThreadIds::next)
}

thread_local! {
    static IDS: RefCell<ThreadIds> = RefCell::new(ThreadIds::new());
}

/// One thread's ids: its prefix, its counter, the buffer they are cut from.
struct ThreadIds {
    prefix: String,
    count: u64,
    arena: BytesMut,
}

impl ThreadIds {
    fn new() -> ThreadIds {
        static THREADS: AtomicU64 = AtomicU64::new(0);
        let thread = THREADS.fetch_add(1, Ordering::Relaxed) + 1;
        ThreadIds {
            prefix: format!("sy-{}-{thread}-", process_tag()),
            count: 0,
            arena: BytesMut::new(),
        }
    }

    fn next(&mut self) -> HeaderValue {
        self.count += 1;
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut n = self.count;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let digits = &digits[start..];
        let len = self.prefix.len() + digits.len();
        if self.arena.capacity() < len {
            self.arena = BytesMut::with_capacity(ARENA_BYTES.max(len));
        }
        self.arena.extend_from_slice(self.prefix.as_bytes());
        self.arena.extend_from_slice(digits);
        // Letters, digits and '-' only: always a valid header value.
        HeaderValue::from_maybe_shared(self.arena.split().freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("sy"))
    }
}

/// Six hex digits, random, the same for the whole process.
fn process_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let random = getrandom::u64().unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            u64::from(std::process::id()) << 32 | u64::from(nanos)
        });
        format!("{:06x}", random & 0xff_ffff)
    })
}

/// The span of one reserved request.
pub fn span<B>(request: &Request<B>) -> Span {
    let id = request
        .headers()
        .get(X_REQUEST_ID)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_counted_per_thread() {
        let first = next_id();
        let second = next_id();
        assert_ne!(first, second);
        let text = first.to_str().unwrap();
        assert!(text.starts_with("sy-"), "{text}");
        let other = std::thread::spawn(next_id).join().unwrap();
        assert_ne!(other, first);
        assert_ne!(other, second);
        // Past one buffer's worth, still distinct and well-formed.
        let many: std::collections::HashSet<_> = (0..1000).map(|_| next_id()).collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn a_sane_client_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("edge-42"));
        assert_eq!(set(&mut headers), "edge-42");

        for bad in ["", "a b", "<script>", "\"quoted\""] {
            let mut headers = HeaderMap::new();
            headers.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = set(&mut headers);
            assert!(id.to_str().unwrap().starts_with("sy-"), "{bad:?} kept");
            assert_eq!(headers[X_REQUEST_ID], id);
        }
        let long = "x".repeat(MAX_CLIENT_ID + 1);
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_ne!(set(&mut headers), long.as_str());

        // Two of them: which one would the dashboard believe? Ours.
        let mut headers = HeaderMap::new();
        headers.append(X_REQUEST_ID, HeaderValue::from_static("a"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("b"));
        let id = set(&mut headers);
        assert!(id.to_str().unwrap().starts_with("sy-"));
        assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
    }
}
