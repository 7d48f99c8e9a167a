//! Lingering close: when the gateway answers before it has read a request's
//! whole body (a 413, 401 or 405 from publish, a 502/503/504 from the proxy
//! while a client uploads), the rest of the body is read and thrown away
//! for a bounded time and size, so the client reads the status instead of a
//! TCP reset.
//!
//! Why: closing a socket whose receive buffer still holds unread bytes makes
//! the kernel send RST, and an RST can overtake the response in flight; the
//! client then sees "connection reset" and never the 413 (nginx's
//! `lingering_close` exists for the same reason). hyper keeps reading a
//! request body for as long as someone holds its `Incoming`, and closes the
//! read side as soon as it is dropped, so "linger" here means: hold the body
//! in a task that reads and drops its frames until it ends, [`LINGER_TIME`]
//! passes, [`LINGER_MIN_BYTES`] (or 4 × MAX_MESSAGE_BYTES, if larger) have
//! been read, or the gateway drains. Memory: one frame at a time.
//!
//! Owns: that drain task and its bounds. Does not own: deciding to answer
//! early (each handler does), or the response itself.

use std::time::Duration;

use http::header::{HeaderMap, EXPECT};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tracing::debug;

use crate::shutdown::Shutdown;

/// A lingering body is read for at most this long (nginx: `lingering_time`
/// 30 s, `lingering_timeout` 5 s between reads; one bound is enough here).
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// A lingering body is read up to the larger of this and 4 × MAX_MESSAGE_BYTES.
/// Reading costs no memory (frames are dropped), so the bound is generous:
/// an HTTP client that writes its whole upload before reading (Python's
/// `requests`) must still get to the status.
pub const LINGER_MIN_BYTES: u64 = 16 << 20;

/// How many bytes a lingering body may be read for, given MAX_MESSAGE_BYTES.
pub fn max_bytes(max_message_bytes: usize) -> u64 {
    (max_message_bytes as u64)
        .saturating_mul(4)
        .max(LINGER_MIN_BYTES)
}

/// True when the client waits for `100 Continue` before it sends its body.
/// Such a body is not lingered on: reading it would make hyper send the 100
/// and invite the body the answer just refused; unread, the client sends
/// nothing and the close is clean.
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards what is left of `body` in a task of its own, within
/// [`LINGER_TIME`] and `max_bytes`, so the response sent meanwhile reaches
/// the client before the connection closes. An empty or finished body
/// spawns nothing. Needs a Tokio runtime (any handler or body runs in one);
/// without one the body is simply dropped.
pub fn discard(body: Incoming, max_bytes: u64, shutdown: &Shutdown) {
    if body.is_end_stream() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let stop = shutdown.requested();
    runtime.spawn(async move {
        let mut body = body;
        let mut read: u64 = 0;
        let drain = async {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return "error" };
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                    if read > max_bytes {
                        return "size bound";
                    }
                }
            }
            "end of body"
        };
        let ended = tokio::select! {
            ended = tokio::time::timeout(LINGER_TIME, drain) => ended.unwrap_or("time bound"),
            _ = stop => "shutdown",
        };
        debug!(ended, bytes = read, "lingering body discarded");
    });
}
