//! Catch-panic: a handler that panics answers 500 (JSON) and is logged,
//! instead of the connection being dropped under the client.
//!
//! Owns: the answer and the log line for a panic. The layer itself is
//! tower-http's `CatchPanicLayer` (it wraps the handler's future and the
//! response body in `catch_unwind`). A panic is a bug: the process goes on
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
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        error!(panic = message, "a request handler panicked; answered 500");
        response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
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
