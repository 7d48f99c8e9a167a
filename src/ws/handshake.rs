//! The server side of the WebSocket opening handshake (RFC 6455 §4.2).
//!
//! Owns: recognising a valid version-13 upgrade request
//! ([`websocket_key`]) and the `Sec-WebSocket-Accept` value that answers it
//! ([`accept_key`]). Used by the broadcaster and by the Autobahn echo
//! server (`examples/autobahn_echo.rs`), so both shake hands alike.
//!
//! Does not own: whether the upgrade is allowed (Origin, tokens, limits:
//! the broadcaster), or anything after the 101 (`codec`).

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Key` of a valid version-13 upgrade request.
pub fn websocket_key(headers: &HeaderMap) -> Option<&HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let valid = has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    valid
        .then(|| headers.get(header::SEC_WEBSOCKET_KEY))
        .flatten()
}

/// `Sec-WebSocket-Accept` for the client's `Sec-WebSocket-Key`: base64 of
/// the SHA-1 of the key and the RFC's GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn only_a_version_13_upgrade_has_a_key() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("abc"));
        assert!(websocket_key(&headers).is_none(), "no version");
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(websocket_key(&headers).is_none(), "version 8");
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert_eq!(
            websocket_key(&headers).map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
    }
}
