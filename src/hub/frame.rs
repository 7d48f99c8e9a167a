//! [`Utf8Frame`]: one encoded frame (JSON text), encoded once and shared by
//! history, retained state and every subscriber's queue without a copy.
//!
//! Owns: the promise that the bytes are UTF-8 (they can only be made from a
//! `String`), so a transport may send them as a text frame or an SSE `data:`
//! line as they are. Does not own: any transport's framing; the hub imports
//! no WebSocket or HTTP crate, and each transport turns a frame into its own
//! bytes (`Bytes::from(frame)` shares, it does not copy).

use bytes::Bytes;

/// UTF-8 text in a shared, reference-counted buffer. Cloning is a counter
/// increment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Utf8Frame(Bytes);

impl Utf8Frame {
    /// The frame's bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The frame as text. Checks the UTF-8 again (no `unsafe` here), so it
    /// is for tests and logs, not the delivery path, which uses the bytes.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Utf8Frame {
    fn from(text: String) -> Utf8Frame {
        Utf8Frame(Bytes::from(text))
    }
}

impl From<Utf8Frame> for Bytes {
    /// The shared buffer itself: no copy.
    fn from(frame: Utf8Frame) -> Bytes {
        frame.0
    }
}
