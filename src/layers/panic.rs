//! Catch-panic: a handler that panics answers 500 (JSON) and is logged,
//! instead of the connection being dropped under the client.
//!
//! Owns: the answer and the log line for a panic. The layer itself is
//! tower-http's `CatchPanicLayer` (it wraps the handler's future and the
//! response body in `catch_unwind`); proxied requests, which skip the tower
//! stack for speed, wrap their future in `catch_unwind` and answer through
//! [`answer`] (the body they stream is the dashboard's, passed through). A panic is a bug: the process goes on
//! serving everyone else, and the log says where to look.

use std::any::Any;

use http::{Response, StatusCode};
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};
use tracing::error;

use crate::response::{self, Body};

/// The 500 a panicking request gets.
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicAnswer;

impl ResponseForPanic for PanicAnswer {
    type ResponseBody = Body;

    fn response_for_panic(&mut self, panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
        let message = crate::event_loops::panic_message(panic.as_ref());
        error!(panic = message, "a request handler panicked; answered 500");
        response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

/// The 500 and the log line for `panic`, where no layer is (the proxied
/// path catches its panics itself, without tower's boxing).
pub fn answer(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    PanicAnswer.response_for_panic(panic)
}

/// The layer around every route.
pub fn layer() -> CatchPanicLayer<PanicAnswer> {
    CatchPanicLayer::custom(PanicAnswer)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Request;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500() {
        let service = ServiceBuilder::new().layer(layer()).service(service_fn(
            |request: Request<()>| async move {
                if request.uri().path() == "/boom" {
                    panic!("boom");
                }
                Ok::<_, Infallible>(response::json_error(StatusCode::OK, "fine"))
            },
        ));
        let fine = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(fine.status(), StatusCode::OK);
        let boom = Request::get("/boom").body(()).unwrap();
        let answer = service.oneshot(boom).await.unwrap();
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
