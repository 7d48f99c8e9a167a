//! Compression of the console page and `client.js`.
//!
//! Owns: which answers are gzipped: HTML and JavaScript of at least
//! [`MIN_BYTES`], when the client accepts gzip (tower-http's
//! `CompressionLayer` reads `Accept-Encoding`, sets `Content-Encoding` and
//! `Vary`). Event streams, JSON and the proxied dashboard are never
//! compressed here: SSE must flush event by event, and the dashboard
//! compresses its own answers.

use http::header::CONTENT_TYPE;
use http::{Extensions, HeaderMap, StatusCode, Version};
use tower_http::compression::CompressionLayer;

/// Smaller answers are sent as they are (gzip would not pay).
pub const MIN_BYTES: u64 = 1024;

/// HTML or JavaScript, which is what the console and client.js are.
fn is_page(_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html") || t.starts_with("text/javascript"))
}

pub type Predicate = tower_http::compression::predicate::And<
    tower_http::compression::predicate::SizeAbove,
    fn(StatusCode, Version, &HeaderMap, &Extensions) -> bool,
>;

/// The compression layer for pages.
pub fn compression() -> CompressionLayer<Predicate> {
    use tower_http::compression::predicate::{Predicate as _, SizeAbove};
    let pages: fn(StatusCode, Version, &HeaderMap, &Extensions) -> bool = is_page;
    CompressionLayer::new()
        .gzip(true)
        .compress_when(SizeAbove::new(MIN_BYTES).and(pages))
}
