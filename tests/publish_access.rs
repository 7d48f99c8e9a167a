//! Who may publish over HTTP: PUBLISH_TOKEN, an access token's `publish`
//! patterns (403 naming the first uncovered topic, the whole batch refused),
//! the loopback exemption on the effective client address (a local reverse
//! proxy's clients are not loopback), and a browser's cross-origin publish
//! (403 `origin_not_allowed`). Real gateway, real sockets.

mod support;

use serde_json::{json, Value};
use support::*;
use switchyard::auth::token::{mint, now_secs, Claims};

const SECRET: &str = "publish-access-secret-0123456789abcdef";
const PUBLISH_TOKEN: &str = "engine-token-1234567890";

fn token(claims: Claims) -> String {
    mint(SECRET, &claims).unwrap()
}

fn publisher_of(patterns: &[&str]) -> String {
    token(Claims {
        exp: now_secs() + 300,
        sub: Some("orders-desk".into()),
        publish: patterns.iter().map(|p| p.to_string()).collect(),
        ..Claims::default()
    })
}

fn admin() -> String {
    token(Claims {
        exp: now_secs() + 300,
        admin: true,
        ..Claims::default()
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The hub's current seq and retained state, read with an admin token.
async fn state(gateway: &Gateway) -> (u64, Value) {
    let auth = bearer(&admin());
    let response = request_with(
        http::Method::GET,
        &gateway.url("/_switchyard/state"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    (body["seq"].as_u64().expect("seq"), body["state"].clone())
}

fn one(topic: &str) -> String {
    json!({"topic": topic, "data": 1, "retain": true}).to_string()
}

#[tokio::test]
async fn publish_token_still_works() {
    let gateway = Gateway::start(&[("PUBLISH_TOKEN", PUBLISH_TOKEN)]).await;
    let auth = bearer(PUBLISH_TOKEN);
    let (status, body) = publish_with(&gateway, &[("authorization", &auth)], &one("a/b")).await;
    assert_eq!(status, 202, "{body}");
    // Loopback no longer publishes on its own once PUBLISH_TOKEN is set.
    let (status, body) = publish_with(&gateway, &[], &one("a/b")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "not_publisher");
    let (status, _) = publish_with(
        &gateway,
        &[("authorization", "Bearer wrong-token")],
        &one("a/b"),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_token_publishes_only_to_its_publish_patterns() {
    let gateway =
        Gateway::start(&[("AUTH_SECRET", SECRET), ("PUBLISH_TOKEN", PUBLISH_TOKEN)]).await;
    let orders = bearer(&publisher_of(&["orders/+"]));
    let auth = [("authorization", orders.as_str())];

    let (status, body) = publish_with(&gateway, &auth, &one("orders/1")).await;
    assert_eq!(status, 202, "{body}");
    let (seq_before, state_before) = state(&gateway).await;
    assert!(state_before.get("orders/1").is_some(), "{state_before}");

    let (status, body) = publish_with(&gateway, &auth, &one("positions/x")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    assert!(
        body["error"].as_str().unwrap().contains("positions/x"),
        "{body}"
    );

    // A batch with one uncovered topic: refused whole, the covered one too.
    let batch = json!([
        {"topic": "orders/2", "data": 2, "retain": true},
        {"topic": "positions/x", "data": 3, "retain": true},
        {"topic": "positions/y", "data": 4},
    ])
    .to_string();
    let (status, body) = publish_with(&gateway, &auth, &batch).await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("positions/x") && !message.contains("positions/y"),
        "{body}"
    );
    let (seq_after, state_after) = state(&gateway).await;
    assert_eq!(seq_after, seq_before, "nothing published");
    assert!(state_after.get("orders/2").is_none(), "{state_after}");

    // A read-only token is a valid token that covers no topic: 403.
    let reader = bearer(&token(Claims {
        exp: now_secs() + 300,
        subscribe: vec!["#".into()],
        ..Claims::default()
    }));
    let (status, body) =
        publish_with(&gateway, &[("authorization", &reader)], &one("orders/3")).await;
    assert_eq!(status, 403, "{body}");

    // An admin token publishes anywhere.
    let admin = bearer(&admin());
    let (status, _) =
        publish_with(&gateway, &[("authorization", &admin)], &one("positions/x")).await;
    assert_eq!(status, 202);

    // Bad signature and expired tokens: 401 with the reason's code.
    let forged = bearer(
        &mint(
            &"f".repeat(40),
            &Claims {
                exp: now_secs() + 300,
                publish: vec!["#".into()],
                ..Claims::default()
            },
        )
        .unwrap(),
    );
    let (status, body) =
        publish_with(&gateway, &[("authorization", &forged)], &one("orders/4")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_invalid")),
        "{body}"
    );
    let expired = bearer(&token(Claims {
        exp: now_secs() - 60,
        publish: vec!["orders/+".into()],
        ..Claims::default()
    }));
    let (status, body) =
        publish_with(&gateway, &[("authorization", &expired)], &one("orders/4")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_expired")),
        "{body}"
    );
    // `?token=` works like the header.
    let url = gateway.url(&format!(
        "/_switchyard/publish?token={}",
        publisher_of(&["orders/+"])
    ));
    let response = request_with(http::Method::POST, &url, &[], &one("orders/5")).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn loopback_is_decided_on_the_effective_client_address() {
    // Loopback is a trusted proxy by default: its X-Forwarded-For names the client.
    let gateway = Gateway::start(&[("AUTH_SECRET", SECRET)]).await;
    let (status, body) = publish_with(&gateway, &[], &one("a/1")).await;
    assert_eq!(
        status, 202,
        "the engine beside the gateway publishes: {body}"
    );
    let forwarded = [("x-forwarded-for", "203.0.113.9")];
    let (status, body) = publish_with(&gateway, &forwarded, &one("a/2")).await;
    assert_eq!(
        status, 401,
        "a local proxy's client is not loopback: {body}"
    );
    assert_eq!(body["code"], "not_publisher");
    // Through the proxy, a token with publish patterns still works.
    let orders = bearer(&publisher_of(&["a/+"]));
    let (status, body) = publish_with(
        &gateway,
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("authorization", &orders),
        ],
        &one("a/3"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // A forwarded chain of loopback hops only is still loopback.
    let (status, _) = publish_with(
        &gateway,
        &[("x-forwarded-for", "127.0.0.1, ::1")],
        &one("a/4"),
    )
    .await;
    assert_eq!(status, 202);

    // With TRUSTED_PROXIES not covering loopback, the header is not believed.
    let untrusting = Gateway::start(&[("TRUSTED_PROXIES", "10.0.0.0/8")]).await;
    let (status, body) = publish_with(&untrusting, &forwarded, &one("a/5")).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn browsers_publish_only_from_allowed_origins() {
    let gateway = Gateway::start(&[
        ("CORS_ORIGINS", "https://ok.example"),
        ("PUBLISH_TOKEN", PUBLISH_TOKEN),
    ])
    .await;
    let auth = bearer(PUBLISH_TOKEN);
    let (seq_before, _) = state(&gateway).await;
    let (status, body) = publish_with(
        &gateway,
        &[("authorization", &auth), ("origin", "https://evil.example")],
        &one("a/1"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "origin_not_allowed");
    let (status, body) = publish_with(
        &gateway,
        &[("authorization", &auth), ("origin", "null")],
        &one("a/1"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    assert_eq!(state(&gateway).await.0, seq_before, "nothing published");

    let own = format!("http://{}", gateway.addr);
    for origin in [own.as_str(), "https://ok.example"] {
        let (status, body) = publish_with(
            &gateway,
            &[("authorization", &auth), ("origin", origin)],
            &one("a/2"),
        )
        .await;
        assert_eq!(status, 202, "{origin}: {body}");
    }

    // The loopback exemption does not open a local gateway to other sites.
    let local = Gateway::start(&[]).await;
    let (status, body) =
        publish_with(&local, &[("origin", "https://evil.example")], &one("a/3")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("origin_not_allowed")),
        "{body}"
    );
    let own = format!("http://{}", local.addr);
    let (status, _) = publish_with(&local, &[("origin", &own)], &one("a/3")).await;
    assert_eq!(status, 202);
}
