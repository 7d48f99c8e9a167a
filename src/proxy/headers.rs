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
/// over the (few) names present, each told apart by its text in one
/// `match` ([`hop_by_hop_index`]) rather than compared with eight
/// `HeaderName`s, instead of a hashed removal per hop-by-hop name; and the
/// tokens of `Connection` are only parsed and looked up when it is present
/// and names something other than a hop-by-hop header (which go anyway:
/// `Connection: keep-alive`, the usual one, costs no lookup).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Bit i set: HOP_BY_HOP[i] is present; bit HOP_BY_HOP.len(): Upgrade.
    let mut present = 0u32;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        } else if !upgrading && name == header::UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present & 1 != 0 {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|token| {
                hop_by_hop_index_ignoring_case(token).is_none()
                    && !token.eq_ignore_ascii_case("close")
                    && !(upgrading && token.eq_ignore_ascii_case("upgrade"))
            })
            .filter(|token| headers.contains_key(*token))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .filter(|name| !(upgrading && is_upgrade_header(name)))
            .collect();
        for name in named {
            if name == header::UPGRADE {
                present |= 1 << HOP_BY_HOP.len();
            } else {
                headers.remove(name);
            }
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

/// The index in [`HOP_BY_HOP`] of the header named `name` (lower case, as
/// every `HeaderName` is).
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "proxy-authorization" => 6,
        "proxy-authenticate" => 7,
        _ => return None,
    })
}

/// [`hop_by_hop_index`] for a `Connection` token, in any case.
fn hop_by_hop_index_ignoring_case(token: &str) -> Option<usize> {
    HOP_BY_HOP
        .iter()
        .position(|hop| hop.as_str().eq_ignore_ascii_case(token))
}

/// Bits of [`forwarding_sent`]: which forwarding headers a request carries.
const SENT_ONLY_IF_TRUSTED: u8 = 1;
const SENT_FOR: u8 = 1 << 1;
const SENT_PROTO: u8 = 1 << 2;
const SENT_HOST: u8 = 1 << 3;
const SENT_REAL_IP: u8 = 1 << 4;

/// Which forwarding headers `headers` carry, in one pass over the names
/// present (each told apart by its text) rather than a hashed lookup per
/// name; any of [`FORWARDED_ONLY_IF_TRUSTED`] is one bit.
fn forwarding_sent(headers: &HeaderMap) -> u8 {
    let mut sent = 0;
    for name in headers.keys() {
        sent |= match name.as_str() {
            "forwarded" | "x-forwarded-port" | "x-forwarded-prefix" | "x-scheme" => {
                SENT_ONLY_IF_TRUSTED
            }
            "x-forwarded-for" => SENT_FOR,
            "x-forwarded-proto" => SENT_PROTO,
            "x-forwarded-host" => SENT_HOST,
            "x-real-ip" => SENT_REAL_IP,
            _ => 0,
        };
    }
    sent
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
    let sent = forwarding_sent(headers);
    // Kept: sent, by a trusted peer.
    let kept = |bit: u8| trusted && sent & bit != 0;
    if !trusted && sent & SENT_ONLY_IF_TRUSTED != 0 {
        for name in &FORWARDED_ONLY_IF_TRUSTED {
            headers.remove(name);
        }
    }
    let peer_value = peer_header_value(peer);
    let previous = if kept(SENT_FOR) {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    let forwarded_for = match previous {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {peer}")).ok(),
        None => peer_value.clone(),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !kept(SENT_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !kept(SENT_HOST) {
        match original_host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host);
            }
            None if sent & SENT_HOST != 0 => {
                headers.remove(X_FORWARDED_HOST);
            }
            None => {}
        }
    }
    if !kept(SENT_REAL_IP) {
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
    fn the_names_told_apart_by_text_are_the_lists() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(hop_by_hop_index_ignoring_case(&upper), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("upgrade"), None);
        for name in &FORWARDED_ONLY_IF_TRUSTED {
            let headers = map(&[(name.as_str(), "x")]);
            assert_eq!(forwarding_sent(&headers), SENT_ONLY_IF_TRUSTED, "{name}");
        }
        let sent = forwarding_sent(&map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("x-forwarded-host", "a"),
            ("x-real-ip", "1.2.3.4"),
            ("accept", "*/*"),
        ]));
        assert_eq!(sent, SENT_FOR | SENT_PROTO | SENT_HOST | SENT_REAL_IP);
    }

    #[test]
    fn connection_may_name_upgrade_and_other_hop_headers_in_any_case() {
        let mut headers = map(&[
            ("connection", "Keep-Alive, CLOSE, Upgrade, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("x-secret", "1"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
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
