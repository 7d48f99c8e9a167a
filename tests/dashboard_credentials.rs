//! The gateway's own credentials never reach the dashboard: the Basic
//! `Authorization` of BASIC_AUTH, PUBLISH_TOKEN or a switchyard access token
//! in `Authorization: Bearer` or `?token=` are removed from proxied requests
//! (plain HTTP and WebSocket upgrades); a client-sent `X-Forwarded-User` is
//! always removed, and with BASIC_AUTH the gateway sets it to the signed-in
//! user. Credentials that are not the gateway's pass unchanged. The real
//! binary in front of the real test upstream, which records every request
//! head it receives.

mod support;

use http::{HeaderMap, Method};
use support::upstream::Upstream;
use support::*;
use switchyard::auth::token::{mint, now_secs, Claims};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
const PUBLISH_TOKEN: &str = "engine-token-1234567890";

fn token(exp: u64) -> String {
    let claims = Claims {
        exp,
        subscribe: vec!["a/#".into()],
        ..Claims::default()
    };
    mint(AUTH_SECRET, &claims).expect("mint")
}

/// The head of the last request the upstream saw for `path`.
fn seen(upstream: &Upstream, path: &str) -> (String, HeaderMap) {
    upstream
        .requests()
        .into_iter()
        .rev()
        .find(|(_, uri, _)| uri.starts_with(path))
        .map(|(_, uri, headers)| (uri, headers))
        .unwrap_or_else(|| panic!("the upstream saw no request for {path}"))
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

async fn get_through(gateway: &Gateway, path: &str, headers: &[(&str, &str)]) -> u16 {
    let response = request_with(Method::GET, &gateway.url(path), headers, "").await;
    response.status().as_u16()
}

#[tokio::test]
async fn with_basic_auth_the_dashboard_sees_the_user_not_the_password() {
    let upstream = Upstream::start().await;
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let basic_var = format!("{USER}:{hash}");
    let gateway = Gateway::start(&[
        ("BASIC_AUTH", &basic_var),
        ("PUBLISH_TOKEN", PUBLISH_TOKEN),
        ("AUTH_SECRET", AUTH_SECRET),
        ("DASHBOARD_URL", &upstream.url()),
    ])
    .await;
    let right = basic_auth(USER, PASSWORD);

    // Basic credentials, and a forged X-Forwarded-User (twice).
    let status = get_through(
        &gateway,
        "/inspect?page=1",
        &[
            ("authorization", &right),
            ("x-forwarded-user", "mallory"),
            ("X-Forwarded-User", "root"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let (uri, headers) = seen(&upstream, "/inspect?page=1");
    println!("basic: {uri} {headers:?}");
    assert_eq!(uri, "/inspect?page=1");
    assert!(values(&headers, "authorization").is_empty(), "{headers:?}");
    assert_eq!(values(&headers, "x-forwarded-user"), [USER]);

    // A bearer token passes the site password; it is not forwarded, and
    // nobody signed in: no X-Forwarded-User.
    let access = token(now_secs() + 300);
    for (name, bearer) in [("publish", PUBLISH_TOKEN), ("access", access.as_str())] {
        let path = format!("/inspect?bearer={name}");
        let header = format!("Bearer {bearer}");
        let status = get_through(
            &gateway,
            &path,
            &[("authorization", &header), ("x-forwarded-user", "mallory")],
        )
        .await;
        assert_eq!(status, 200, "{name}");
        let (uri, headers) = seen(&upstream, &path);
        println!("bearer {name}: {uri} {headers:?}");
        assert!(
            values(&headers, "authorization").is_empty(),
            "{name}: {headers:?}"
        );
        assert!(
            values(&headers, "x-forwarded-user").is_empty(),
            "{name}: {headers:?}"
        );
    }

    // ?token= is cut out of the query; every other parameter stays as sent.
    let path = format!("/inspect?a=1&token={access}&b=%2F+x&token={PUBLISH_TOKEN}&c");
    assert_eq!(get_through(&gateway, &path, &[]).await, 200);
    let (uri, _) = seen(&upstream, "/inspect?a=1");
    println!("query: {uri}");
    assert_eq!(uri, "/inspect?a=1&b=%2F+x&c");

    // The WebSocket tunnel: Basic credentials and a forged user.
    let ws = gateway.ws_url("/_stcore/stream?x=1");
    let client = ws_connect_with(
        &ws,
        &[("authorization", &right), ("x-forwarded-user", "mallory")],
    )
    .await
    .expect("tunnel with the password");
    drop(client);
    let (uri, headers) = seen(&upstream, "/_stcore/stream?x=1");
    println!("tunnel basic: {uri} {headers:?}");
    assert!(values(&headers, "authorization").is_empty(), "{headers:?}");
    assert_eq!(values(&headers, "x-forwarded-user"), [USER]);

    // The WebSocket tunnel with ?token= (what a browser's EventSource-style
    // client does): cut out, the rest kept.
    let ws = gateway.ws_url(&format!("/_stcore/stream?token={access}&y=2"));
    let client = ws_connect_with(&ws, &[])
        .await
        .expect("tunnel with a token");
    drop(client);
    let (uri, headers) = seen(&upstream, "/_stcore/stream?y=2");
    println!("tunnel token: {uri} {headers:?}");
    assert_eq!(uri, "/_stcore/stream?y=2");
    assert!(values(&headers, "authorization").is_empty(), "{headers:?}");
}

#[tokio::test]
async fn switchyard_tokens_are_removed_even_without_basic_auth() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[
        ("PUBLISH_TOKEN", PUBLISH_TOKEN),
        ("AUTH_SECRET", AUTH_SECRET),
        ("DASHBOARD_URL", &upstream.url()),
    ])
    .await;
    // Valid, expired (still signed with AUTH_SECRET) and PUBLISH_TOKEN:
    // removed from the header and from the query.
    let valid = token(now_secs() + 300);
    let expired = token(now_secs() - 3600);
    for (name, bearer) in [
        ("valid", valid.as_str()),
        ("expired", expired.as_str()),
        ("publish", PUBLISH_TOKEN),
    ] {
        let path = format!("/inspect?case={name}");
        let header = format!("Bearer {bearer}");
        assert_eq!(
            get_through(&gateway, &path, &[("authorization", &header)]).await,
            200
        );
        let (_, headers) = seen(&upstream, &path);
        assert!(
            values(&headers, "authorization").is_empty(),
            "{name}: {headers:?}"
        );
        let path = format!("/inspect?query={name}&token={bearer}");
        assert_eq!(get_through(&gateway, &path, &[]).await, 200);
        let (uri, _) = seen(&upstream, &format!("/inspect?query={name}"));
        assert_eq!(uri, format!("/inspect?query={name}"), "{name}");
    }
    // Not ours: the dashboard's own bearer token, a token signed with
    // another key, and a foreign ?token= pass unchanged. No BASIC_AUTH: a
    // Basic header is the dashboard's too. X-Forwarded-User is still removed.
    let foreign = {
        let claims = Claims {
            exp: now_secs() + 300,
            ..Claims::default()
        };
        mint(&"k".repeat(40), &claims).unwrap()
    };
    let cases = [
        ("dashboard", "Bearer dashboard-own-token".to_owned()),
        ("foreign", format!("Bearer {foreign}")),
        ("basic", basic_auth("bob", "dashboard password")),
    ];
    for (name, header) in &cases {
        let path = format!("/inspect?theirs={name}&token=their-own");
        let status = get_through(
            &gateway,
            &path,
            &[("authorization", header), ("x-forwarded-user", "mallory")],
        )
        .await;
        assert_eq!(status, 200, "{name}");
        let (uri, headers) = seen(&upstream, &path);
        assert_eq!(uri, path, "{name}");
        assert_eq!(
            values(&headers, "authorization"),
            std::slice::from_ref(header),
            "{name}"
        );
        assert!(
            values(&headers, "x-forwarded-user").is_empty(),
            "{name}: {headers:?}"
        );
    }
}

#[tokio::test]
async fn with_no_credentials_configured_the_dashboards_own_pass_unchanged() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let header = "Bearer dashboard-own-token";
    let path = "/inspect?token=abc&x=1";
    let status = get_through(
        &gateway,
        path,
        &[("authorization", header), ("x-forwarded-user", "mallory")],
    )
    .await;
    assert_eq!(status, 200);
    let (uri, headers) = seen(&upstream, path);
    assert_eq!(uri, path);
    assert_eq!(values(&headers, "authorization"), [header]);
    assert!(
        values(&headers, "x-forwarded-user").is_empty(),
        "{headers:?}"
    );
    // The tunnel too.
    let ws = gateway.ws_url("/_stcore/stream?z=1");
    let client = ws_connect_with(
        &ws,
        &[("authorization", header), ("x-forwarded-user", "mallory")],
    )
    .await
    .expect("tunnel");
    drop(client);
    let (_, headers) = seen(&upstream, "/_stcore/stream?z=1");
    assert_eq!(values(&headers, "authorization"), [header]);
    assert!(
        values(&headers, "x-forwarded-user").is_empty(),
        "{headers:?}"
    );
}
