//! Who may call from a browser on another origin: CORS for the
//! `/_switchyard/*` HTTP routes and the Origin check of the broadcaster.
//!
//! Rules (CORS_ORIGINS): no Origin header (not a browser, or same-origin
//! GET) is allowed; an Origin equal to the request's own `scheme://Host` is
//! allowed; an Origin listed in CORS_ORIGINS, or any with `*`, is allowed.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::config::Config;
use crate::response::{self, Body};

/// True when a request with these headers may use the broadcaster.
pub fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => same_origin(origin, headers) || listed(config, origin),
    }
}

fn listed(config: &Config, origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    config
        .cors_origins
        .iter()
        .any(|allowed| allowed == "*" || *allowed == origin)
}

/// `Origin: https://host[:port]` against the Host header the browser sent
/// (Railway's edge keeps Host; the scheme does not matter for this check).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Answers a preflight `OPTIONS` for a reserved route.
pub fn preflight(config: &Config, headers: &HeaderMap) -> Response<Body> {
    let mut answer = Response::new(response::empty());
    *answer.status_mut() = StatusCode::NO_CONTENT;
    if let Some(origin) = allowed_cross_origin(config, headers) {
        let out = answer.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    answer
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("origin"));
    answer
}

/// Adds the CORS headers to a reserved route's answer.
pub fn decorate(config: &Config, request_headers: &HeaderMap, answer: &mut Response<Body>) {
    if let Some(origin) = allowed_cross_origin(config, request_headers) {
        answer
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    answer
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("origin"));
}

/// The Origin to echo when it is listed (same-origin needs no header).
fn allowed_cross_origin(config: &Config, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    listed(config, origin.to_str().ok()?).then(|| origin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn origin_rules() {
        let config = Config::from_vars([("CORS_ORIGINS", "https://ok.example")]).unwrap();
        assert!(origin_allowed(&config, &headers(&[("host", "gw.example")])));
        assert!(origin_allowed(
            &config,
            &headers(&[("host", "gw.example"), ("origin", "https://gw.example")])
        ));
        assert!(origin_allowed(
            &config,
            &headers(&[("host", "gw.example"), ("origin", "https://OK.example")])
        ));
        assert!(!origin_allowed(
            &config,
            &headers(&[("host", "gw.example"), ("origin", "https://evil.example")])
        ));
        assert!(!origin_allowed(
            &config,
            &headers(&[("host", "gw.example"), ("origin", "null")])
        ));
    }
}
