//! BASIC_AUTH in front of every route but `/health`: the 401 challenge on
//! the dashboard, its WebSocket, `/ws` and the reserved routes; the right
//! password lets everything through (a proxied WebSocket included); ten
//! failures a minute from one address, then 429 with Retry-After even for
//! the right password, while other addresses still get in; bearer tokens
//! and the engine's loopback publish need no password; and neither the
//! password nor its hash ever reaches the log. Real gateway, real upstream,
//! real sockets.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Method;
use support::upstream::Upstream;
use support::*;
use switchyard::auth::token::{mint, now_secs, Claims};
use tokio_tungstenite::tungstenite::Message;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
const PUBLISH_TOKEN: &str = "engine-token-1234567890";
const LIMIT_LOGGED: &str =
    "too many failed site-password attempts; this address gets 429 until its window ends";
const AUTH_SECRET: &str = "site-password-secret-0123456789abcdef";
const BOB_PASSWORD: &str = "bobs other password";

/// A cost-4 hash (fast in a debug build) and the BASIC_AUTH value.
fn basic_auth_var() -> (String, String) {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    (format!("{USER}:{hash}"), hash)
}

async fn status_of(gateway: &Gateway, method: Method, path: &str, headers: &[(&str, &str)]) -> u16 {
    let response = request_with(method, &gateway.url(path), headers, "").await;
    response.status().as_u16()
}

/// Never the password, its base64 form or the hash in any log line.
fn assert_no_secret_logged(gateway: &Gateway, hash: &str) {
    let right = basic_auth(USER, PASSWORD);
    let encoded = right.trim_start_matches("Basic ");
    for line in gateway.logs() {
        assert!(!line.contains(PASSWORD), "password logged: {line}");
        assert!(!line.contains("battery"), "password logged: {line}");
        assert!(!line.contains(encoded), "credentials logged: {line}");
        assert!(!line.contains(hash), "hash logged: {line}");
        assert!(!line.contains(&hash[7..]), "hash logged: {line}");
    }
}

#[tokio::test]
async fn everything_but_health_needs_the_password() {
    let upstream = Upstream::start().await;
    let (basic_var, hash) = basic_auth_var();
    let gateway = Gateway::start(&[
        ("BASIC_AUTH", &basic_var),
        ("DASHBOARD_URL", &upstream.url()),
    ])
    .await;
    gateway.wait_upstream("up").await;

    // No credentials: a challenge the browser answers with its prompt.
    let refused = request_with(Method::GET, &gateway.url("/"), &[], "").await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Basic realm="switchyard", charset="UTF-8""#
    );
    assert!(refused.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let api = request_with(
        Method::GET,
        &gateway.url("/_switchyard/state"),
        &[("accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(api.status(), 401);
    assert!(api.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    assert!(json_body(api).await["error"].is_string());
    for path in ["/some/page", "/_switchyard/events", "/_switchyard/config"] {
        assert_eq!(
            status_of(&gateway, Method::GET, path, &[]).await,
            401,
            "{path}"
        );
    }
    assert_eq!(
        ws_connect_with(&gateway.ws_url("/ws"), &[]).await.err(),
        Some(401)
    );
    assert_eq!(
        ws_connect_with(&gateway.ws_url("/_stcore/stream"), &[])
            .await
            .err(),
        Some(401)
    );
    // A wrong scheme or garbage is refused the same way.
    for bad in ["Basic !!!", "Bearer nope", "Basic YWxpY2U="] {
        let status = status_of(&gateway, Method::GET, "/", &[("authorization", bad)]).await;
        assert_eq!(status, 401, "{bad}");
    }
    let (health, _) = gateway.health().await;
    assert_eq!(health, 200);
    let upstream_requests = upstream.requests().len();

    // The right credentials: the dashboard, its WebSocket, the broadcaster.
    let right = basic_auth(USER, PASSWORD);
    let auth = [("authorization", right.as_str())];
    let page = request_with(Method::GET, &gateway.url("/some/page"), &auth, "").await;
    assert_eq!(page.status(), 200);
    assert_eq!(text_body(page).await.trim_end(), "hello from upstream");
    assert_eq!(
        status_of(&gateway, Method::GET, "/_switchyard/state", &auth).await,
        200
    );
    let mut stream = ws_connect_with(&gateway.ws_url("/_stcore/stream"), &auth)
        .await
        .expect("proxied websocket with the password");
    stream
        .send(Message::text("ping from browser"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("frame");
    assert_eq!(echoed, Message::text("ping from browser"));
    let mut broadcaster = ws_connect_with(&gateway.ws_url("/ws"), &auth)
        .await
        .expect("/ws with the password");
    assert_eq!(next_json(&mut broadcaster).await["type"], "hello");
    // Refused requests never reached the dashboard.
    let seen = upstream.requests();
    assert!(
        seen[..upstream_requests]
            .iter()
            .all(|(_, path, _)| path == "/health"),
        "refused requests reached the dashboard: {:?}",
        seen.iter().map(|(m, p, _)| (m, p)).collect::<Vec<_>>()
    );

    // Wrong user or password.
    for wrong in [basic_auth(USER, "guess"), basic_auth("bob", PASSWORD)] {
        let status = status_of(&gateway, Method::GET, "/", &[("authorization", &wrong)]).await;
        assert_eq!(status, 401);
    }
    assert_no_secret_logged(&gateway, &hash);
}

#[tokio::test]
async fn ten_failures_a_minute_then_429_for_that_address_only() {
    let (basic_var, hash) = basic_auth_var();
    let bob = format!("bob:{}", bcrypt::hash(BOB_PASSWORD, 4).unwrap());
    let basic_var = format!("{basic_var},{bob}");
    let gateway = Gateway::start(&[("BASIC_AUTH", &basic_var)]).await;
    let right = basic_auth(USER, PASSWORD);
    let wrong = basic_auth(USER, "not the password");
    // A quiet run: the right password works from this address.
    let status = status_of(
        &gateway,
        Method::GET,
        "/_switchyard/config",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(status, 200);

    for attempt in 1..=10 {
        let status = status_of(&gateway, Method::GET, "/", &[("authorization", &wrong)]).await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    let limited = request_with(
        Method::GET,
        &gateway.url("/"),
        &[("authorization", &wrong)],
        "",
    )
    .await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(text_body(limited).await.contains("Too many"));

    // A right password not yet verified from the same address: 429 too,
    // JSON for an API client (the limit holds for guesses that happen to
    // be right).
    let fresh = basic_auth("bob", BOB_PASSWORD);
    let limited = request_with(
        Method::GET,
        &gateway.url("/_switchyard/config"),
        &[("authorization", &fresh), ("accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert!(json_body(limited).await["error"].is_string());
    assert_eq!(
        ws_connect_with(&gateway.ws_url("/ws"), &[("authorization", &fresh)])
            .await
            .err(),
        Some(429)
    );
    // The user whose password was verified from this address before is not
    // locked out by someone else's failures here.
    assert_eq!(
        status_of(
            &gateway,
            Method::GET,
            "/_switchyard/config",
            &[("authorization", &right)]
        )
        .await,
        200
    );
    assert!(
        ws_connect_with(&gateway.ws_url("/ws"), &[("authorization", &right)])
            .await
            .is_ok()
    );

    // Another client, forwarded by a local proxy (loopback is trusted): in.
    let other = [
        ("authorization", right.as_str()),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    assert_eq!(
        status_of(&gateway, Method::GET, "/_switchyard/config", &other).await,
        200
    );
    // /health stays open.
    assert_eq!(gateway.health().await.0, 200);
    assert_eq!(gateway.wait_for_log(LIMIT_LOGGED, 1).await.len(), 1);
    assert_no_secret_logged(&gateway, &hash);
}

#[tokio::test]
async fn bearer_tokens_and_the_engine_pass_without_the_password() {
    let (basic_var, hash) = basic_auth_var();
    let with_token = Gateway::start(&[
        ("BASIC_AUTH", &basic_var),
        ("PUBLISH_TOKEN", PUBLISH_TOKEN),
        ("AUTH_SECRET", AUTH_SECRET),
    ])
    .await;
    // An access token passes too, in the header or as `?token=` (EventSource).
    let reader = mint(
        AUTH_SECRET,
        &Claims {
            exp: now_secs() + 300,
            subscribe: vec!["a/#".into()],
            ..Claims::default()
        },
    )
    .unwrap();
    let header = format!("Bearer {reader}");
    let path = "/_switchyard/state?topics=a/%23";
    let state = status_of(
        &with_token,
        Method::GET,
        path,
        &[("authorization", &header)],
    )
    .await;
    assert_eq!(state, 200);
    let query = format!("{path}&token={reader}");
    assert_eq!(status_of(&with_token, Method::GET, &query, &[]).await, 200);
    let forged = Claims {
        exp: now_secs() + 300,
        admin: true,
        ..Claims::default()
    };
    let forged = format!("Bearer {}", mint(&"f".repeat(40), &forged).unwrap());
    let state = status_of(
        &with_token,
        Method::GET,
        path,
        &[("authorization", &forged)],
    )
    .await;
    assert_eq!(state, 401);
    let engine = format!("Bearer {PUBLISH_TOKEN}");
    let (status, body) = publish_with(
        &with_token,
        &[
            ("authorization", &engine),
            ("x-forwarded-for", "203.0.113.9"),
        ],
        r#"{"topic":"a/b","data":1}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let state = status_of(
        &with_token,
        Method::GET,
        "/_switchyard/state",
        &[("authorization", &engine)],
    )
    .await;
    assert_eq!(state, 200);
    // A wrong bearer token gets the password challenge.
    let wrong = status_of(
        &with_token,
        Method::GET,
        "/_switchyard/state",
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong, 401);
    // With PUBLISH_TOKEN set, loopback is no exemption: the password is asked.
    let loopback = request_with(
        Method::POST,
        &with_token.url("/_switchyard/publish"),
        &[],
        r#"{"topic":"a/b","data":2}"#,
    )
    .await;
    assert_eq!(loopback.status(), 401);
    assert!(loopback.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));

    // No PUBLISH_TOKEN: the engine on loopback publishes without the password...
    let local = Gateway::start(&[("BASIC_AUTH", &basic_var)]).await;
    let (status, body) = publish(&local, r#"{"topic":"a/b","data":3}"#).await;
    assert_eq!(status, 202, "{body}");
    // ...but a client behind a local proxy does not, and reads need it too.
    let forwarded = request_with(
        Method::POST,
        &local.url("/_switchyard/publish"),
        &[("x-forwarded-for", "203.0.113.9")],
        r#"{"topic":"a/b","data":4}"#,
    )
    .await;
    assert_eq!(forwarded.status(), 401);
    assert!(forwarded.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    assert_eq!(
        status_of(&local, Method::GET, "/_switchyard/state", &[]).await,
        401
    );
    assert_no_secret_logged(&with_token, &hash);
    assert_no_secret_logged(&local, &hash);
}

/// Failures count per /64 for IPv6 (one host may hold every address of its
/// /64), per address for IPv4: rotating addresses within a /64 does not
/// buy more attempts. Clients are told apart through X-Forwarded-For from a
/// local proxy (loopback is a trusted proxy).
#[tokio::test]
async fn ipv6_failures_count_per_64() {
    let (basic_var, _) = basic_auth_var();
    let gateway = Gateway::start(&[("BASIC_AUTH", &basic_var)]).await;
    let wrong = basic_auth(USER, "not the password");
    let right = basic_auth(USER, PASSWORD);
    for attempt in 1..=10u32 {
        let client = format!("2001:db8:1:2::{attempt:x}");
        let headers = [
            ("authorization", wrong.as_str()),
            ("x-forwarded-for", client.as_str()),
        ];
        let status = status_of(&gateway, Method::GET, "/_switchyard/config", &headers).await;
        assert_eq!(status, 401, "attempt {attempt} from {client}");
    }
    // An 11th address of the same /64, with the right password: 429.
    for client in ["2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::abcd"] {
        let headers = [
            ("authorization", right.as_str()),
            ("x-forwarded-for", client),
        ];
        let status = status_of(&gateway, Method::GET, "/_switchyard/config", &headers).await;
        assert_eq!(status, 429, "{client}");
    }
    // The next /64, and an IPv4 address, are someone else.
    for client in ["2001:db8:1:3::1", "198.51.100.9"] {
        let headers = [
            ("authorization", right.as_str()),
            ("x-forwarded-for", client),
        ];
        let status = status_of(&gateway, Method::GET, "/_switchyard/config", &headers).await;
        assert_eq!(status, 200, "{client}");
    }
    // IPv4 counts per address: ten failures at .20 leave .21 alone.
    for _ in 0..10 {
        let headers = [
            ("authorization", wrong.as_str()),
            ("x-forwarded-for", "198.51.100.20"),
        ];
        status_of(&gateway, Method::GET, "/_switchyard/config", &headers).await;
    }
    let fresh = basic_auth("alice", "still wrong");
    let at = |ip: &'static str| {
        [
            ("authorization", fresh.clone()),
            ("x-forwarded-for", ip.to_owned()),
        ]
    };
    let headers = at("198.51.100.20");
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        status_of(&gateway, Method::GET, "/_switchyard/config", &headers).await,
        429
    );
    let headers = at("198.51.100.21");
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        status_of(&gateway, Method::GET, "/_switchyard/config", &headers).await,
        401
    );
}
