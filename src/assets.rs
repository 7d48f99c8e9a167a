//! Files from `static/`, embedded in the binary so one file deploys.

use http::header::HeaderValue;
use http::{Response, StatusCode};

use crate::response::{self, Body};

/// The page at `/` when no dashboard is configured.
const CONSOLE_HTML: &str = include_str!("../static/console.html");

pub fn console_page() -> Response<Body> {
    response::with_type(
        StatusCode::OK,
        HeaderValue::from_static("text/html; charset=utf-8"),
        response::full(CONSOLE_HTML),
    )
}
