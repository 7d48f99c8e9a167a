//! Catch-panic: a request whose handler panics answers 500 (JSON) and is
//! logged, instead of the connection being dropped under the client.
//!
//! Owns: the layer ([`CatchPanicLayer`]), the answer and the log line for a
//! panic. The layer is ours rather than tower-http's `CatchPanicLayer`,
//! which boxes every response body (and re-boxes ours) and answers through
//! a boxed future: here the future is a concrete type, and a panic costs
//! nothing until it happens (`catch_unwind` around each poll; no
//! allocation). A panic while a response body is polled
//! ([`CatchPanicBody`]) is logged and ends that response with an error (the
//! head is gone by then). A panic is a bug: the process goes on serving
//! everyone else, and the log says where to look.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::error;

use super::request_id::X_REQUEST_ID;
use crate::response::{self, Body, BoxError};

/// The 500 and the log line for `panic`; `request_id` is the request's, so
/// the client's report and the log meet.
pub fn answer(
    panic: Box<dyn Any + Send + 'static>,
    request_id: Option<&HeaderValue>,
) -> Response<Body> {
    let message = crate::event_loops::panic_message(panic.as_ref());
    let request_id = request_id.and_then(|id| id.to_str().ok()).unwrap_or("");
    error!(
        panic = message,
        request_id, "a request handler panicked; answered 500"
    );
    response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// Wraps a service in [`CatchPanic`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// A service whose panics (in `call`, in its future, in its response
/// body) become a 500 and a log line.
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<CatchPanicBody>;
    type Error = Infallible;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // For the log line only: a reference count, not a copy.
        let request_id = request.headers().get(X_REQUEST_ID).cloned();
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => CatchPanicFuture::Running { future, request_id },
            Err(panic) => CatchPanicFuture::Panicked {
                answer: Some(answer(panic, request_id.as_ref())),
            },
        }
    }
}

pin_project! {
    /// The inner future, polled inside `catch_unwind`.
    #[project = Projected]
    pub enum CatchPanicFuture<F> {
        Running { #[pin] future: F, request_id: Option<HeaderValue> },
        Panicked { answer: Option<Response<Body>> },
    }
}

impl<F> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<CatchPanicBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match self.project() {
            Projected::Running { future, request_id } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(polled) => ready!(polled).unwrap_or_else(|never| match never {}),
                    Err(panic) => answer(panic, request_id.as_ref()),
                }
            }
            Projected::Panicked { answer } => match answer.take() {
                Some(answer) => answer,
                // Polled again after it was ready: a bug of the caller.
                None => response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            },
        };
        Poll::Ready(Ok(answer.map(|body| CatchPanicBody { body })))
    }
}

/// A response body whose panics end it with an error (the status line is
/// sent by then) and a log line, instead of taking the connection's task
/// down. The gateway's [`Body`] is boxed, hence `Unpin`: no projection.
pub struct CatchPanicBody {
    body: Body,
}

impl hyper::body::Body for CatchPanicBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let body = Pin::new(&mut self.body);
        match catch_unwind(AssertUnwindSafe(|| body.poll_frame(cx))) {
            Ok(polled) => polled,
            Err(panic) => {
                let message = crate::event_loops::panic_message(panic.as_ref());
                error!(panic = message, "a response body panicked; response cut");
                Poll::Ready(Some(Err("a response body panicked".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http::Request;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500() {
        let service = ServiceBuilder::new()
            .layer(CatchPanicLayer)
            .service(service_fn(|request: Request<()>| async move {
                if request.uri().path() == "/boom" {
                    panic!("boom");
                }
                Ok::<_, Infallible>(response::json_error(StatusCode::OK, "fine"))
            }));
        let fine = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(fine.status(), StatusCode::OK);
        let boom = Request::get("/boom").body(()).unwrap();
        let answer = service.oneshot(boom).await.unwrap();
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);
    }

    #[tokio::test]
    async fn a_panic_in_call_answers_500() {
        #[derive(Clone)]
        struct PanicsInCall;
        impl Service<Request<()>> for PanicsInCall {
            type Response = Response<Body>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Response<Body>, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<()>) -> Self::Future {
                panic!("in call");
            }
        }
        let service = CatchPanicLayer.layer(PanicsInCall);
        let answer = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
