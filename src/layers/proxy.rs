//! The reverse proxy as a tower service, behind a bound on the requests in
//! flight to the dashboard.
//!
//! Owns: [`Forward`] (a `Service` that hands a request to
//! [`Proxy::forward`]) and the guard around it: tower's `ConcurrencyLimit`
//! with one semaphore for the whole gateway and `LoadShed`, so past the
//! bound a request is answered 503 with `Retry-After` at once, rather than
//! queued while the gateway runs out of descriptors (a proxied request
//! holds a client connection and a dashboard connection). The bound is
//! MAX_CONNECTIONS, the gateway's budget for clients. Upgrades (tunnels)
//! hold a permit only until the 101; MAX_TUNNELS bounds them after.
//!
//! Does not own: anything the proxy does (`crate::proxy`), or its metrics
//! (the router records every answer, refusals included).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShed;
use tower::{BoxError, Service, ServiceExt};

use super::Peer;
use crate::proxy::Proxy;
use crate::response::{self, Body};

/// Hands each request to the proxy; the client's address comes from the
/// request's [`Peer`] extension.
#[derive(Clone)]
pub struct Forward {
    proxy: Arc<Proxy>,
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let peer = request.extensions().get::<Peer>().map(|p| p.0);
            let Some(peer) = peer else {
                // The router always sets it; without it, refuse rather than guess.
                return Ok(response::json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no client address",
                ));
            };
            Ok(proxy.forward(request, peer).await)
        })
    }
}

/// The proxy behind its in-flight bound. Clones share the bound.
#[derive(Clone)]
pub struct Guarded(LoadShed<ConcurrencyLimit<Forward>>);

impl Guarded {
    pub fn new(proxy: Arc<Proxy>, max_in_flight: usize) -> Guarded {
        let limited = ConcurrencyLimit::new(Forward { proxy }, max_in_flight.max(1));
        Guarded(LoadShed::new(limited))
    }

    /// Forwards `request`, or answers 503 when the bound is reached.
    pub async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let wants_json = response::wants_json(request.headers());
        match self.0.clone().oneshot(request).await {
            Ok(answer) => answer,
            Err(error) => overloaded(&error, wants_json),
        }
    }
}

/// The answer when the bound is reached (the only error the stack makes).
fn overloaded(error: &BoxError, wants_json: bool) -> Response<Body> {
    let message = if error.is::<Overloaded>() {
        "Too many requests to the dashboard in flight; try again shortly."
    } else {
        "The request could not be forwarded."
    };
    let mut answer = response::error_page(StatusCode::SERVICE_UNAVAILABLE, message, wants_json);
    answer
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}
