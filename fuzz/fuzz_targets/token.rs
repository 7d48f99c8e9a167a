#![no_main]

//! Everything that reads a credential from the network: access tokens
//! (`Verifier::verify`), the `?token=` query parameter (`auth::query_token`
//! and its redaction for logs), the effective client address behind
//! X-Forwarded-For (`auth::client_address`, which decides the loopback
//! publish exemption) and `Authorization: Basic` (`auth::basic::credentials`).
//!
//! Input: one flags byte (bit 0: the TCP peer is 127.0.0.1, else
//! 203.0.113.9, an untrusted address), then up to four NUL-separated parts:
//! a token, a query string, an X-Forwarded-For value and an Authorization
//! value. Checks, beyond "no panic":
//! - arbitrary text never verifies; the same text as `subscribe` claims
//!   minted with the key verifies exactly when every pattern is valid;
//! - a redacted query holds no `token` value but `***`;
//! - an untrusted peer's X-Forwarded-For is ignored, and a forwarded
//!   request counts as loopback only when the peer and every hop are
//!   loopback (a trusted proxy cannot vouch for "this host");
//! - signed claims with extreme numbers (`exp`, `iat`, `nbf` near
//!   i64::MIN/MAX, u64::MAX, floats, 1e308, strings) verify or are refused,
//!   never panic, and a grant's expiry arithmetic never overflows;
//! - Basic credentials re-encoded parse back the same, with no `:` in the
//!   user.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use switchyard::auth::token::{self, Claims, Verifier};
use switchyard::auth::{self, basic, Access};
use switchyard::config::Config;

const SECRET: &str = "fuzzing-secret-fuzzing-secret-32b";

/// The default config (default TRUSTED_PROXIES), its policy and a verifier,
/// built once.
fn fixtures() -> &'static (Config, Access, Verifier) {
    static FIXTURES: OnceLock<(Config, Access, Verifier)> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let config = Config::from_vars(Vec::<(&str, &str)>::new()).expect("default config");
        let access = Access::new(&config);
        (config, access, Verifier::new(SECRET))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == 0);
    let token_part = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let forwarded = parts.next().unwrap_or_default();
    let authorization = parts.next().unwrap_or_default();

    let (config, access, verifier) = fixtures();

    // Tokens.
    assert!(
        verifier.verify(&token_part).is_err(),
        "unsigned text verified"
    );
    let patterns: Vec<String> = token_part.split(',').map(str::to_owned).collect();
    let claims = Claims {
        exp: token::now_secs() + 60,
        subscribe: patterns.clone(),
        ..Claims::default()
    };
    if let Ok(minted) = token::mint(SECRET, &claims) {
        let all_valid = patterns.len() <= token::MAX_TOKEN_PATTERNS
            && patterns
                .iter()
                .all(|p| switchyard::hub::topics::Pattern::parse(p).is_ok());
        match verifier.verify(&minted) {
            Ok(grant) => {
                assert!(all_valid);
                let read: Vec<&str> = grant.subscribe.iter().map(|p| p.as_str()).collect();
                assert_eq!(read, patterns);
            }
            Err(_) => assert!(!all_valid || minted.len() > token::MAX_TOKEN_BYTES),
        }
    }

    // Extreme numbers in signed claims: the fuzz bytes pick a number for
    // each of exp, iat and nbf.
    const NUMBERS: [&str; 16] = [
        "9223372036854775807",
        "9223372036854775806",
        "9223372036854775808",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "0",
        "-1",
        "1e308",
        "-1e308",
        "1.5e19",
        "253402300799.9",
        "4102444800.5",
        "\"4102444800\"",
        "null",
        "1e-300",
    ];
    let pick = |i: usize| NUMBERS[usize::from(*data.get(i).unwrap_or(&0)) % NUMBERS.len()];
    let claims_json = format!(
        r#"{{"exp":{},"iat":{},"nbf":{},"subscribe":["a/#"]}}"#,
        pick(1),
        pick(2),
        pick(3)
    );
    if let Ok(claims) = serde_json::from_str::<serde_json::Value>(&claims_json) {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let signed = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())
            .and_then(|key| jsonwebtoken::encode(&header, &claims, &key));
        if let Ok(signed) = signed {
            if let Ok(grant) = verifier.verify(&signed) {
                let _ = grant.remaining();
                assert!(grant.expires_at.checked_add(token::LEEWAY).is_some());
                let _ = switchyard::broadcast::instant_at(grant.expires_at + token::LEEWAY);
            }
        }
    }

    // ?token=
    let _ = auth::query_token(Some(&query));
    for pair in auth::redacted_query(&query).split('&') {
        if let Some(("token", value)) = pair.split_once('=') {
            assert_eq!(value, "***");
        }
    }

    // X-Forwarded-For.
    let loopback_peer = flags & 1 == 1;
    let peer = if loopback_peer {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))
    };
    if let Ok(value) = HeaderValue::from_bytes(forwarded) {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value);
        let client = access.client_address(SocketAddr::new(peer, 443), &headers);
        assert_eq!(
            client,
            auth::client_address(peer, &headers, &config.trusted_proxies)
        );
        if !loopback_peer {
            assert_eq!(client, peer, "an untrusted peer's header was believed");
        }
        if auth::is_loopback(client) {
            assert!(loopback_peer, "loopback from a peer off this host");
            let text = String::from_utf8_lossy(forwarded);
            for hop in text.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                let ip = hop
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
                    .or_else(|| hop.trim_matches(['[', ']']).parse().ok());
                assert!(
                    ip.is_some_and(auth::is_loopback),
                    "loopback through a hop off this host or unreadable: {hop:?}"
                );
            }
        }
    }

    // Authorization: Basic.
    if let Some(credentials) = basic::credentials(authorization) {
        assert!(!credentials.user.contains(&b':'));
        let mut joined = credentials.user.clone();
        joined.push(b':');
        joined.extend_from_slice(&credentials.password);
        let again = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(&joined)
        );
        if again.len() - "Basic ".len() <= 4096 {
            assert_eq!(basic::credentials(again.as_bytes()), Some(credentials));
        }
    }
});
