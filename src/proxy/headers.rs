//! Header rules of the reverse proxy: hop-by-hop headers out, forwarding
//! headers in. Pure functions over a `HeaderMap`, tested here.
//!
//! On an upgrade the Upgrade/Connection pair must survive and so must every
//! `Sec-WebSocket-*` header, even when a client names one in `Connection`
//! (stripping those is a bug two Rust proxies shipped).

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop, never the message (RFC 9110 §7.6.1, plus
/// the non-standard ones nginx also drops).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Forwarding headers the gateway does not set: believed from a trusted
/// proxy, removed from anyone else, so a client cannot tell the dashboard
/// its own scheme, port or path prefix (frameworks build redirect and
/// asset URLs from these; Tornado, under Streamlit, reads X-Scheme).
const FORWARDED_ONLY_IF_TRUSTED: [HeaderName; 4] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-scheme"),
];
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// True for an HTTP/1.1 upgrade request: `Connection: upgrade` plus an
/// `Upgrade` header.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers. With `upgrading`, keeps `Upgrade`, sets
/// `Connection: upgrade`, and keeps every `Sec-WebSocket-*` header.
///
/// Runs twice per proxied request, so it looks before it removes: one pass
/// over the (few) names present instead of a hashed removal per hop-by-hop
/// name, and headers named by `Connection` are only collected (and owned)
/// when they are actually present.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|token| headers.contains_key(*token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| !(upgrading && is_upgrade_header(name)))
        .collect();
    for name in named {
        headers.remove(name);
    }
    // Bit i set: HOP_BY_HOP[i] is present; bit HOP_BY_HOP.len(): Upgrade.
    let mut present = 0u32;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        } else if !upgrading && name == header::UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present != 0 {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if present & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
    if upgrading {
        headers.insert(header::CONNECTION, UPGRADE_TOKEN);
    } else if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Sets the forwarding headers for a request from `peer`. A trusted peer's
/// X-Forwarded-Proto/-Host and X-Real-IP are kept and its X-Forwarded-For is
/// appended to; from anyone else they are replaced, so a client cannot
/// spoof its address or scheme to the dashboard. `Forwarded`,
/// X-Forwarded-Port, X-Forwarded-Prefix and X-Scheme pass from a trusted
/// peer and are removed from anyone else.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    original_host: Option<HeaderValue>,
) {
    if !trusted {
        for name in &FORWARDED_ONLY_IF_TRUSTED {
            if headers.contains_key(name) {
                headers.remove(name);
            }
        }
    }
    let peer_value = peer_header_value(peer);
    let forwarded_for = match (trusted, joined(headers, &X_FORWARDED_FOR)) {
        (true, Some(previous)) => HeaderValue::from_str(&format!("{previous}, {peer}")).ok(),
        _ => peer_value.clone(),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }

    let keep = |headers: &HeaderMap, name: &HeaderName| trusted && headers.contains_key(name);
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        match original_host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host);
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    if !keep(headers, &X_REAL_IP) {
        if let Some(value) = peer_value {
            headers.insert(X_REAL_IP, value);
        }
    }
}

/// `peer` as a header value. Formatting an address and copying it into a
/// `HeaderValue` costs more than the rest of the header work together, and a
/// keep-alive client sends many requests from one address: each worker
/// thread remembers the last address it formatted and shares the bytes.
fn peer_header_value(peer: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((ip, value)) = &*last {
            if *ip == peer {
                return Some(value.clone());
            }
        }
        let value = HeaderValue::from_str(&peer.to_string()).ok()?;
        *last = Some((peer, value.clone()));
        Some(value)
    })
}

fn is_upgrade_header(name: &HeaderName) -> bool {
    name == header::UPGRADE || name.as_str().starts_with("sec-websocket-")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// All values of a header joined with ", " (a list header may be repeated).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?.to_owned();
    Some(values.fold(first, |mut acc, v| {
        acc.push_str(", ");
        acc.push_str(v);
        acc
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn drops_hop_by_hop_and_headers_named_by_connection() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn an_upgrade_keeps_its_handshake_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, Upgrade, Sec-WebSocket-Key"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "streamlit, token"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(is_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert!(headers.contains_key("sec-websocket-key"));
        assert!(headers.contains_key("sec-websocket-protocol"));
        assert!(headers.contains_key("sec-websocket-extensions"));
        assert!(!headers.contains_key("keep-alive"));
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
        let mut headers = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        set_forwarded(
            &mut headers,
            peer,
            false,
            Some(HeaderValue::from_static("app.example")),
        );
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "app.example");
        assert_eq!(headers["x-real-ip"], "203.0.113.9");
    }

    #[test]
    fn other_forwarding_headers_from_an_untrusted_peer_are_removed() {
        let mut headers = map(&[
            ("forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
            ("Forwarded", "for=7.7.7.7"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-scheme", "https"),
            ("accept", "*/*"),
        ]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        set_forwarded(&mut headers, peer, false, None);
        for name in [
            "forwarded",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-scheme",
        ] {
            assert!(!headers.contains_key(name), "{name} kept");
        }
        assert_eq!(headers["accept"], "*/*");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
    }

    #[test]
    fn other_forwarding_headers_from_a_trusted_peer_pass() {
        let mut headers = map(&[
            ("forwarded", "for=198.51.100.1;proto=https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/app"),
            ("x-scheme", "https"),
        ]);
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        set_forwarded(&mut headers, peer, true, None);
        assert_eq!(headers["forwarded"], "for=198.51.100.1;proto=https");
        assert_eq!(headers["x-forwarded-port"], "443");
        assert_eq!(headers["x-forwarded-prefix"], "/app");
        assert_eq!(headers["x-scheme"], "https");
    }

    #[test]
    fn forwarded_headers_from_a_trusted_peer_are_kept_and_appended() {
        let mut headers = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.up.railway.app"),
            ("x-real-ip", "198.51.100.1"),
        ]);
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        set_forwarded(
            &mut headers,
            peer,
            true,
            Some(HeaderValue::from_static("internal")),
        );
        assert_eq!(
            headers["x-forwarded-for"],
            "198.51.100.1, 198.51.100.2, 10.0.0.5"
        );
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "app.up.railway.app");
        assert_eq!(headers["x-real-ip"], "198.51.100.1");
    }
}
