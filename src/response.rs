//! The body type every route answers with, and the few shapes of answer the
//! gateway makes itself: JSON, JSON errors and small HTML pages.
//!
//! Owns: turning a status and a message into a response, in one place, so
//! every error looks the same. Does not own: deciding which error applies.

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use serde::Serialize;

use crate::hub::HubError;
use crate::upstream::CrashLoop;

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends: fixed bytes, or a stream
/// passed through from the dashboard.
pub type Body = BoxBody<Bytes, BoxError>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A JSON answer. Serialising our own types cannot fail; if it ever did the
/// client still gets a well-formed 500 rather than a panic.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, JSON, full(bytes)),
        Err(_) => with_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON,
            full(&br#"{"error":"response could not be encoded"}"#[..]),
        ),
    }
}

/// `{"error": message}` with the given status.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    let mut response = json(status, &ErrorBody { error: message });
    response.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    response
}

/// A hub error as an HTTP answer, the same on every route: 400 for a client
/// over MAX_PATTERNS_PER_CLIENT, 507 for a publish past MAX_RETAINED_BYTES,
/// 503 while the backplane is down.
pub fn hub_error(error: &HubError) -> Response<Body> {
    let status = match error {
        HubError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        HubError::TooManyPatterns { .. } => StatusCode::BAD_REQUEST,
        HubError::RetainedFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
        HubError::UnknownSubscriber => StatusCode::INTERNAL_SERVER_ERROR,
        HubError::RepeatedId { .. } => StatusCode::CONFLICT,
    };
    json_error(status, &error.to_string())
}

/// The gateway's own error for a browser or an API client: a small HTML page,
/// or JSON when the request asked for JSON.
pub fn error_page(status: StatusCode, message: &str, wants_json: bool) -> Response<Body> {
    if wants_json {
        return json_error(status, message);
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{code} {reason}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:4rem auto;max-width:36rem;color:#222}}\
         small{{color:#777}}</style></head><body><h1>{code} {reason}</h1><p>{message}</p>\
         <small>switchyard</small></body></html>",
        code = status.as_u16(),
        message = escape_html(message),
    );
    let mut response = with_type(status, HTML, full(page));
    response.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    response
}

/// 503 while a supervised or configured dashboard has not answered yet: the
/// page reloads itself, and API clients get `Retry-After`. A dashboard
/// that keeps exiting before its first answer (`crash`) gets a page that
/// says so instead of "starting" forever.
pub fn starting_page(wants_json: bool, crash: Option<CrashLoop>) -> Response<Body> {
    let crashed = crash.map(|crash| {
        let how = crash
            .code
            .map_or_else(|| "is killed by a signal".to_owned(), |code| format!("exits with code {code}"));
        format!(
            "The dashboard {how} before it answers ({} times in a row). \
             See the gateway's log: the dashboard's own output is there, under target \"dashboard\".",
            crash.exits
        )
    });
    let mut response = if wants_json {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            crashed.as_deref().unwrap_or("dashboard starting"),
        )
    } else {
        let (title, text) = match &crashed {
            Some(message) => ("The dashboard keeps exiting", escape_html(message)),
            None => (
                "The dashboard is starting…",
                "This page reloads by itself in a moment.".to_owned(),
            ),
        };
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\">\
            <meta http-equiv=\"refresh\" content=\"2\"><title>{title}</title>\
            <style>body{{font-family:system-ui,sans-serif;margin:4rem auto;max-width:36rem;color:#222}}</style>\
            </head><body><h1>{title}</h1>\
            <p>{text}</p><small>switchyard</small></body></html>"
        );
        let mut response = with_type(StatusCode::SERVICE_UNAVAILABLE, HTML, full(page));
        response.headers_mut().insert(CACHE_CONTROL, NO_STORE);
        response
    };
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

/// True when the client prefers JSON to HTML (an API call, not a browser).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json") && !accept.contains("text/html"))
}

pub fn with_type(status: StatusCode, content_type: HeaderValue, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
