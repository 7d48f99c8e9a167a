//! Load shedding: MAX_HTTP_CONNECTIONS slots for the whole gateway, and the
//! 503 for whoever finds none.
//!
//! Owns: [`Slots`], the count against MAX_HTTP_CONNECTIONS (one atomic,
//! shared by every event loop), and the rule that spends it: an accepted
//! connection holds a slot until hyper is done with it (an upgraded
//! WebSocket or tunnel gives it back at the 101; MAX_CONNECTIONS and
//! MAX_TUNNELS bound those), and, over h2c, where one connection carries
//! many requests at once, each request holds one more until its response
//! head is ready ([`ShedLayer`]). An HTTP/1.1 request takes none: its
//! connection's slot covers it (one request at a time), so the layer costs
//! an HTTP/1.1 request one comparison. Past the bound a connection gets
//! [`refused_connection`] (the accept loop writes it and closes) and an
//! h2c request [`overloaded`]; nothing waits in a queue.
//!
//! Does not own: accepting, reading and closing sockets (`server`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::response::{self, Body};

/// MAX_HTTP_CONNECTIONS places, shared by every loop.
#[derive(Debug)]
pub struct Slots {
    taken: AtomicUsize,
    max: usize,
}

/// One taken place, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            taken: AtomicUsize::new(0),
            max,
        })
    }

    /// A place, if one is free.
    pub fn take(self: &Arc<Slots>) -> Option<Slot> {
        let max = self.max;
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < max).then_some(taken + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// The whole answer written to a connection refused past the bound: an
/// HTTP/1.1 503 with `{"error": …}` naming the limit, `Connection: close`.
/// Built once at start.
pub fn refused_connection(max: usize) -> Bytes {
    let body = serde_json::json!({ "error": too_many(max) }).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: application/json\r\n\
         cache-control: no-store\r\n\
         retry-after: 1\r\n\
         connection: close\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    Bytes::from(head + &body)
}

fn too_many(max: usize) -> String {
    format!("Too many HTTP connections (MAX_HTTP_CONNECTIONS = {max}); try again shortly.")
}

/// The answer to an h2c request past the bound (HTML, or JSON when asked,
/// as the gateway's other errors).
pub fn overloaded(max: usize, wants_json: bool) -> Response<Body> {
    let mut answer =
        response::error_page(StatusCode::SERVICE_UNAVAILABLE, &too_many(max), wants_json);
    answer
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

/// Sheds h2c requests past the bound (see the module).
#[derive(Clone, Debug)]
pub struct ShedLayer {
    slots: Arc<Slots>,
}

impl ShedLayer {
    pub fn new(slots: Arc<Slots>) -> ShedLayer {
        ShedLayer { slots }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            slots: self.slots.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    slots: Arc<Slots>,
}

impl<S, B> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // HTTP/1.x: the connection's slot covers its one request.
        if request.version() != Version::HTTP_2 {
            return ShedFuture::Admitted {
                future: self.inner.call(request),
                slot: None,
            };
        }
        match self.slots.take() {
            Some(slot) => ShedFuture::Admitted {
                future: self.inner.call(request),
                slot: Some(slot),
            },
            None => {
                let wants_json = response::wants_json(request.headers());
                ShedFuture::Shed {
                    answer: Some(overloaded(self.slots.max(), wants_json)),
                }
            }
        }
    }
}

pin_project! {
    #[project = Projected]
    pub enum ShedFuture<F> {
        Admitted { #[pin] future: F, slot: Option<Slot> },
        Shed { answer: Option<Response<Body>> },
    }
}

impl<F> Future for ShedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Admitted { future, slot } => {
                let answer = ready!(future.poll(cx));
                drop(slot.take());
                Poll::Ready(answer)
            }
            Projected::Shed { answer } => {
                Poll::Ready(Ok(answer.take().unwrap_or_else(|| overloaded(0, true))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceExt};

    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let slots = Slots::new(2);
        let a = slots.take().expect("first");
        let _b = slots.take().expect("second");
        assert!(slots.take().is_none());
        drop(a);
        assert_eq!(slots.taken(), 1);
        assert!(slots.take().is_some());
    }

    #[test]
    fn the_refusal_is_a_complete_http_answer_naming_the_limit() {
        let bytes = refused_connection(7);
        let text = std::str::from_utf8(&bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"]
            .as_str()
            .unwrap()
            .contains("MAX_HTTP_CONNECTIONS = 7"));
    }

    #[tokio::test]
    async fn h2_requests_past_the_bound_are_shed_and_http1_ones_never() {
        let slots = Slots::new(1);
        let held = slots.take().expect("the connection's");
        let service = ShedLayer::new(slots.clone()).layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(response::json_error(StatusCode::OK, "fine"))
        }));
        let h1 = Request::get("/").body(()).unwrap();
        let answer = service.clone().oneshot(h1).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);

        let h2 = || {
            Request::get("/")
                .version(Version::HTTP_2)
                .header("accept", "application/json")
                .body(())
                .unwrap()
        };
        let answer = service.clone().oneshot(h2()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("MAX_HTTP_CONNECTIONS = 1"));

        drop(held);
        let answer = service.oneshot(h2()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(slots.taken(), 0, "the request's slot is given back");
    }
}
