//! Files from `static/`, embedded in the binary so one file deploys.

use http::header::{HeaderValue, CACHE_CONTROL};
use http::{Response, StatusCode};

use crate::response::{self, Body};

/// The live console: `/_switchyard/`, and `/` when no dashboard is configured.
const CONSOLE_HTML: &str = include_str!("../static/console.html");

/// The browser client, a classic script that defines `Switchyard`.
const CLIENT_JS: &str = include_str!("../static/client.js");

/// Appended for `?esm`, so `import Switchyard from ".../client.js?esm"` works
/// from the same file.
const ESM_EXPORTS: &str = "\nexport default globalThis.Switchyard;\nexport const connect = globalThis.Switchyard.connect;\n";

pub fn console_page() -> Response<Body> {
    response::with_type(
        StatusCode::OK,
        HeaderValue::from_static("text/html; charset=utf-8"),
        response::full(CONSOLE_HTML),
    )
}

pub fn client_js(query: Option<&str>) -> Response<Body> {
    let esm = query.is_some_and(|q| q.split('&').any(|pair| pair == "esm"));
    let body = if esm {
        response::full(format!("{CLIENT_JS}{ESM_EXPORTS}"))
    } else {
        response::full(CLIENT_JS)
    };
    let mut answer = response::with_type(
        StatusCode::OK,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
        body,
    );
    // Short: a redeploy should reach browsers soon.
    answer.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    answer
}
