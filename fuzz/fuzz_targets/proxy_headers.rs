#![no_main]

//! The reverse proxy's header rewriting (`proxy::headers`) on arbitrary
//! header names and values: no panic, no hop-by-hop header and nothing named
//! by `Connection` survives (bar an upgrade's handshake), every other header
//! is kept as it was, and the forwarding headers cannot be spoofed by an
//! untrusted peer.
//!
//! Input: one flags byte (bit 0 upgrading, bit 1 trusted peer, bit 2 IPv6),
//! the peer address (4 or 16 bytes), then headers, each a selector byte
//! (below 21 mod 32: a header the rules care about, from [`KNOWN`], so the
//! fuzzer need not guess the spellings; else a length byte and that many
//! name bytes), a length byte and that many value bytes. In a value, a byte
//! below 0x20 (tab aside) stands for a [`KNOWN`] name too
//! (`connection: \x14,\x01` names `x-secret` and `keep-alive`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use switchyard::proxy::headers::{is_upgrade, set_forwarded, strip_hop_by_hop};

const KNOWN: [&str; 21] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authorization",
    "proxy-authenticate",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-scheme",
    "host",
    "x-secret",
];

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Takes `n` bytes (fewer at the end of the input).
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

fn parse(data: &[u8]) -> Option<(bool, bool, IpAddr, HeaderMap)> {
    let (&flags, mut rest) = data.split_first()?;
    let peer: IpAddr = if flags & 4 != 0 {
        let bytes: [u8; 16] = take(&mut rest, 16).try_into().ok()?;
        Ipv6Addr::from(bytes).into()
    } else {
        let bytes: [u8; 4] = take(&mut rest, 4).try_into().ok()?;
        Ipv4Addr::from(bytes).into()
    };
    let mut headers = HeaderMap::new();
    while let Some((&selector, tail)) = rest.split_first() {
        rest = tail;
        let name = match KNOWN.get((selector % 32) as usize) {
            Some(known) => Ok(HeaderName::from_static(known)),
            None => {
                let len = take(&mut rest, 1).first().map_or(0, |n| n % 24);
                HeaderName::from_bytes(take(&mut rest, len as usize))
            }
        };
        let len = take(&mut rest, 1).first().map_or(0, |n| n % 48);
        let value = expand(take(&mut rest, len as usize));
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_bytes(&value)) {
            headers.append(name, value);
        }
    }
    Some((flags & 1 != 0, flags & 2 != 0, peer, headers))
}

/// `value` with each byte below 0x20 (tab aside) that indexes [`KNOWN`]
/// replaced by that name.
fn expand(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &byte in value {
        match KNOWN.get(byte as usize) {
            Some(name) if byte != b'\t' => out.extend_from_slice(name.as_bytes()),
            _ => out.push(byte),
        }
    }
    out
}

/// The header names `Connection` lists (as HeaderName parses them).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

fn is_handshake(name: &HeaderName) -> bool {
    name == header::UPGRADE || name.as_str().starts_with("sec-websocket-")
}

fn values(headers: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
    headers.get_all(name).iter().cloned().collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((upgrading, trusted, peer, mut headers)) = parse(data) else {
        return;
    };
    let before = headers.clone();
    let _ = is_upgrade(&headers);
    let named = connection_named(&before);

    strip_hop_by_hop(&mut headers, upgrading);

    for hop in HOP_BY_HOP {
        if upgrading && hop == "connection" {
            assert_eq!(values(&headers, &header::CONNECTION), ["upgrade"]);
        } else {
            assert!(!headers.contains_key(hop), "{hop} survived");
        }
    }
    if !upgrading {
        assert!(!headers.contains_key(header::UPGRADE), "upgrade survived");
    }
    for name in &named {
        if upgrading && (is_handshake(name) || name == header::CONNECTION) {
            continue;
        }
        assert!(
            !headers.contains_key(name),
            "{name} named by Connection survived"
        );
    }
    for name in before.keys() {
        let hop = HOP_BY_HOP.contains(&name.as_str())
            || (!upgrading && name == header::UPGRADE)
            || named.contains(name);
        let handshake = upgrading && is_handshake(name);
        if handshake || !hop {
            assert_eq!(
                values(&headers, name),
                values(&before, name),
                "{name} changed"
            );
        }
    }

    let host = headers.get(header::HOST).cloned();
    let x_forwarded_for = HeaderName::from_static("x-forwarded-for");
    set_forwarded(&mut headers, peer, trusted, host.clone());

    let peer_text = peer.to_string();
    let forwarded_for = values(&headers, &x_forwarded_for);
    assert_eq!(forwarded_for.len(), 1, "x-forwarded-for: {forwarded_for:?}");
    let forwarded_for = forwarded_for[0].to_str().expect("x-forwarded-for not text");
    assert!(
        forwarded_for == peer_text || forwarded_for.ends_with(&format!(", {peer_text}")),
        "x-forwarded-for {forwarded_for:?} does not end with the peer {peer_text}"
    );
    if !trusted {
        assert_eq!(forwarded_for, peer_text);
        assert_eq!(
            values(&headers, &HeaderName::from_static("x-forwarded-proto")),
            ["http"]
        );
        assert_eq!(
            values(&headers, &HeaderName::from_static("x-real-ip")),
            [peer_text.as_str()]
        );
        let forwarded_host = values(&headers, &HeaderName::from_static("x-forwarded-host"));
        assert_eq!(forwarded_host, host.into_iter().collect::<Vec<_>>());
        // An untrusted peer cannot tell the dashboard where it came from.
        for name in [
            "forwarded",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-scheme",
        ] {
            assert!(
                !headers.contains_key(name),
                "{name} from an untrusted peer survived"
            );
        }
    }
});
