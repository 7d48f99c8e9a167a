//! Access control on every read path (issue 10): with AUTH_SECRET set,
//! `/ws`, SSE, `/_switchyard/state`, metrics and the console need a token;
//! a scoped token reads only what its `subscribe` patterns cover; bad
//! tokens are refused; the `/ws` `auth` first frame; live expiry and its
//! refresh; the scopes of WebSocket publish frames; and tokens in URLs
//! never reach the logs. The real binary, real sockets, real tokens
//! (`switchyard::auth::token::mint`).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use support::{
    access_token, close_code, connect, connect_bearer, get_bearer, json_body, next_json,
    next_message, publish, text_body, Client, Gateway, AUTH_SECRET,
};
use tokio_tungstenite::tungstenite::Message;

async fn auth_gateway(extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![("AUTH_SECRET", AUTH_SECRET)];
    env.extend_from_slice(extra);
    Gateway::start(&env).await
}

/// Retains `data` on each topic (from loopback: no PUBLISH_TOKEN is set).
async fn retain(gateway: &Gateway, topics: &[&str]) {
    for topic in topics {
        let body = json!({"topic": topic, "data": {"at": topic}, "retain": true}).to_string();
        let (status, answer) = publish(gateway, &body).await;
        assert_eq!(status, 202, "{answer}");
    }
}

/// The topics of a `state` object.
fn state_topics(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("a state object, got {value}"))
        .keys()
        .cloned()
        .collect()
}

fn topics(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|t| t.to_string()).collect()
}

fn text(value: Value) -> Message {
    Message::text(value.to_string())
}

/// A refusal: the status, the JSON code, and `WWW-Authenticate: Bearer` on
/// a 401.
async fn assert_refused(response: hyper::Response<Incoming>, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    if status == 401 {
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let body = json_body(response).await;
    assert_eq!(body["code"], code, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
}

/// An SSE body read as text, message by message.
struct Sse {
    body: Incoming,
    buffer: String,
}

impl Sse {
    async fn open(gateway: &Gateway, query: &str, token: Option<&str>) -> (u16, Sse) {
        let url = gateway.url(&format!("/_switchyard/events{query}"));
        let response = get_bearer(&url, token).await;
        let status = response.status().as_u16();
        let sse = Sse {
            body: response.into_body(),
            buffer: String::new(),
        };
        (status, sse)
    }

    /// The next `(event, data)`; `None` when the stream ended. Comments
    /// (heartbeats) are skipped.
    async fn next(&mut self, limit: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_owned());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data.join("\n")).expect("JSON data");
                return Some((event, data));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("SSE data in time")?;
            let frame = frame.ok()?;
            if let Some(bytes) = frame.data_ref() {
                self.buffer
                    .push_str(std::str::from_utf8(bytes).expect("UTF-8"));
            }
        }
    }
}

/// A token with the header swapped for `alg: none` (no signature) and one
/// with an RS256 header over the HS256 signature.
fn forged_tokens(valid: &str) -> (String, String) {
    let (_, rest) = valid.split_once('.').unwrap();
    let payload = rest.split('.').next().unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let rs256 = format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{rest}");
    (none, rs256)
}

#[tokio::test]
async fn anonymous_reads_are_refused_on_every_path() {
    let gateway = auth_gateway(&[]).await;
    retain(&gateway, &["positions/a"]).await;

    for path in [
        "/_switchyard/state",
        "/_switchyard/events",
        "/_switchyard/metrics",
    ] {
        assert_refused(
            get_bearer(&gateway.url(path), None).await,
            401,
            "token_missing",
        )
        .await;
    }
    // The console page is still sent (it asks for a token), with the status.
    for path in ["/", "/_switchyard/"] {
        let response = get_bearer(&gateway.url(path), None).await;
        assert_eq!(response.status(), 401, "{path}");
        assert!(text_body(response).await.contains("<html"), "{path}");
    }
    // A reader's token is not an admin's: 403 on metrics and the console.
    let reader = access_token(&["positions/#"], &[], false, 60);
    assert_refused(
        get_bearer(&gateway.url("/_switchyard/metrics"), Some(&reader)).await,
        403,
        "forbidden",
    )
    .await;
    let console = get_bearer(&gateway.url("/_switchyard/"), Some(&reader)).await;
    assert_eq!(console.status(), 403);

    // /ws without a token upgrades and waits for an auth frame; anything
    // else first is closed with 4001 at once, before any hello.
    let mut client = connect(&gateway, "").await;
    let started = Instant::now();
    client
        .send(text(
            json!({"type": "subscribe", "topics": ["positions/#"]}),
        ))
        .await
        .unwrap();
    match next_message(&mut client, Duration::from_secs(5)).await {
        Some(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected close 4001 before anything else, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn without_an_auth_frame_the_connection_is_closed_after_5_s() {
    let gateway = auth_gateway(&[]).await;
    retain(&gateway, &["positions/a"]).await;
    let mut client = connect(&gateway, "").await;
    let started = Instant::now();
    match next_message(&mut client, Duration::from_secs(10)).await {
        Some(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected close 4001 and no hello, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn expired_forged_and_foreign_tokens_are_refused() {
    let gateway = auth_gateway(&[]).await;
    let valid = access_token(&["#"], &[], true, 60);
    let expired = access_token(&["#"], &[], true, -60);
    let foreign = {
        use switchyard::auth::token::{mint, now_secs, Claims};
        let claims = Claims {
            exp: now_secs() + 60,
            admin: true,
            ..Claims::default()
        };
        mint("another-secret-that-is-32-bytes-long!!", &claims).unwrap()
    };
    let (none, rs256) = forged_tokens(&valid);
    let cases = [
        ("expired", expired, "token_expired"),
        ("wrong signature", foreign, "token_invalid"),
        ("alg none", none, "token_invalid"),
        ("RS256 header", rs256, "token_invalid"),
        ("not a JWT", "s3cret".to_owned(), "token_invalid"),
    ];
    for (what, token, code) in &cases {
        for path in [
            "/_switchyard/state",
            "/_switchyard/events",
            "/_switchyard/metrics",
        ] {
            // Header and query alike.
            assert_refused(get_bearer(&gateway.url(path), Some(token)).await, 401, code).await;
            let url = gateway.url(&format!("{path}?token={token}"));
            assert_refused(get_bearer(&url, None).await, 401, code).await;
        }
        let (status, body) = connect_bearer(&gateway, "", Some(token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: upgraded"));
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some(*code)),
            "{what}"
        );
        let (status, _) = connect_bearer(&gateway, &format!("?token={token}"), None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: upgraded"));
        assert_eq!(status, 401, "{what}");
        // In an auth frame: an error frame saying why, then 4001.
        let mut client = connect(&gateway, "").await;
        client
            .send(text(json!({"type": "auth", "token": token})))
            .await
            .unwrap();
        let error = next_json(&mut client).await;
        assert_eq!(error["type"], "error", "{what}");
        assert_eq!(error["code"], *code, "{what}");
        assert_eq!(
            close_code(&mut client, Duration::from_secs(5)).await,
            Some(4001),
            "{what}"
        );
    }
    // The valid one passes everywhere.
    let response = get_bearer(&gateway.url("/_switchyard/state"), Some(&valid)).await;
    assert_eq!(response.status(), 200);
    let mut client = connect_bearer(&gateway, "", Some(&valid)).await.unwrap();
    assert_eq!(next_json(&mut client).await["type"], "hello");
}

#[tokio::test]
async fn a_scoped_token_reads_only_its_topics() {
    let gateway = auth_gateway(&[]).await;
    retain(
        &gateway,
        &[
            "positions/a",
            "positions/b",
            "orders/1",
            "orders/2",
            "secret/x",
        ],
    )
    .await;
    let token = access_token(&["positions/#", "orders/1"], &[], false, 60);
    let in_scope = topics(&["positions/a", "positions/b", "orders/1"]);

    // No topics: the token's own patterns, by header and by query.
    let mut by_header = connect_bearer(&gateway, "", Some(&token)).await.unwrap();
    let hello = next_json(&mut by_header).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(state_topics(&hello["state"]), in_scope);
    let mut by_query = connect_bearer(&gateway, &format!("?token={token}"), None)
        .await
        .unwrap();
    assert_eq!(
        state_topics(&next_json(&mut by_query).await["state"]),
        in_scope
    );

    // Named topics inside the scope narrow it.
    let mut narrow = connect_bearer(&gateway, "?topics=positions/a", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        state_topics(&next_json(&mut narrow).await["state"]),
        topics(&["positions/a"])
    );

    // Named topics outside it: 403 before the upgrade, on every transport.
    for query in [
        "?topics=%23",
        "?topics=orders/%23",
        "?topics=positions/a,secret/x",
    ] {
        let (status, body) = connect_bearer(&gateway, query, Some(&token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{query}: upgraded"));
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{query}"
        );
        for path in ["/_switchyard/events", "/_switchyard/state"] {
            let url = gateway.url(&format!("{path}{query}"));
            assert_refused(get_bearer(&url, Some(&token)).await, 403, "forbidden").await;
        }
    }

    // Live events follow the scope.
    retain(&gateway, &["secret/y", "orders/2", "positions/c"]).await;
    let event = next_json(&mut by_header).await;
    assert_eq!(event["topic"], "positions/c", "{event}");

    // A subscribe frame outside the scope: an error frame, nothing added.
    by_header
        .send(text(
            json!({"type": "subscribe", "topics": ["positions/+", "secret/#"]}),
        ))
        .await
        .unwrap();
    let refused = next_json(&mut by_header).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    assert!(refused["message"].as_str().unwrap().contains("secret/#"));
    retain(&gateway, &["secret/z", "positions/d"]).await;
    assert_eq!(next_json(&mut by_header).await["topic"], "positions/d");

    // A subscribe frame inside it: `subscribed` holds only what it covers.
    narrow
        .send(text(
            json!({"type": "subscribe", "topics": ["positions/+", "orders/1"]}),
        ))
        .await
        .unwrap();
    let subscribed = next_json(&mut narrow).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(
        state_topics(&subscribed["state"]),
        topics(&[
            "positions/a",
            "positions/b",
            "positions/c",
            "positions/d",
            "orders/1"
        ])
    );

    // SSE and state without topics: the token's patterns.
    let (status, mut sse) = Sse::open(&gateway, &format!("?token={token}"), None).await;
    assert_eq!(status, 200);
    let (event, hello) = sse.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(event, "hello");
    let now_in_scope = topics(&[
        "positions/a",
        "positions/b",
        "positions/c",
        "positions/d",
        "orders/1",
    ]);
    assert_eq!(state_topics(&hello["state"]), now_in_scope);
    let state = get_bearer(&gateway.url("/_switchyard/state"), Some(&token)).await;
    assert_eq!(state.status(), 200);
    assert_eq!(state_topics(&json_body(state).await["state"]), now_in_scope);
    let url = gateway.url("/_switchyard/state?topics=positions/%2B");
    let state = json_body(get_bearer(&url, Some(&token)).await).await;
    assert_eq!(
        state_topics(&state["state"]),
        topics(&["positions/a", "positions/b", "positions/c", "positions/d"])
    );
}

#[tokio::test]
async fn the_hello_waits_for_the_auth_frame() {
    let gateway = auth_gateway(&[]).await;
    retain(&gateway, &["positions/a", "secret/x"]).await;
    let token = access_token(&["positions/#"], &[], false, 60);

    let mut client = connect(&gateway, "").await;
    // Nothing comes before the auth frame.
    assert!(next_message(&mut client, Duration::from_millis(700))
        .await
        .is_none());
    client
        .send(text(json!({"type": "auth", "token": token})))
        .await
        .unwrap();
    let hello = next_json(&mut client).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(state_topics(&hello["state"]), topics(&["positions/a"]));
    retain(&gateway, &["secret/y", "positions/b"]).await;
    assert_eq!(next_json(&mut client).await["topic"], "positions/b");

    // Query topics the auth frame's token does not cover: an error frame
    // naming them, then 4003.
    let mut client = connect(&gateway, "?topics=secret/%23").await;
    client
        .send(text(json!({"type": "auth", "token": token})))
        .await
        .unwrap();
    let error = next_json(&mut client).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    assert_eq!(
        close_code(&mut client, Duration::from_secs(5)).await,
        Some(4003)
    );
}

/// Reads until the `token_expired` error frame (events before it are
/// fine); panics after `limit`.
async fn expect_token_expired(client: &mut Client, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_message(client, left).await {
            Some(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["type"] == "error" {
                    assert_eq!(frame["code"], "token_expired", "{frame}");
                    return;
                }
            }
            other => panic!("expected the token_expired frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_unless_refreshed() {
    let gateway = auth_gateway(&[]).await;
    let short = access_token(&["positions/#"], &[], false, 2);
    // Both expire together; `kept` sends a fresh token before then,
    // `narrowed` one that does not cover its patterns (refused: the old
    // one stays in force and runs out).
    let mut expiring = connect_bearer(&gateway, "", Some(&short)).await.unwrap();
    let mut kept = connect(&gateway, "").await;
    kept.send(text(json!({"type": "auth", "token": short})))
        .await
        .unwrap();
    let mut narrowed = connect_bearer(&gateway, "", Some(&short)).await.unwrap();
    for client in [&mut expiring, &mut kept, &mut narrowed] {
        assert_eq!(next_json(client).await["type"], "hello");
    }
    let fresh = access_token(&["positions/#"], &[], false, 120);
    kept.send(text(json!({"type": "auth", "token": fresh})))
        .await
        .unwrap();
    let too_narrow = access_token(&["positions/a"], &[], false, 120);
    narrowed
        .send(text(json!({"type": "auth", "token": too_narrow})))
        .await
        .unwrap();
    let refused = next_json(&mut narrowed).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    expect_token_expired(&mut expiring, Duration::from_secs(5)).await;
    let warned = Instant::now();
    expect_token_expired(&mut narrowed, Duration::from_secs(2)).await;
    assert_eq!(
        close_code(&mut expiring, Duration::from_secs(8)).await,
        Some(4001)
    );
    let grace = warned.elapsed();
    assert!(
        grace >= Duration::from_secs(4) && grace < Duration::from_secs(7),
        "closed {grace:?} after the warning"
    );
    assert_eq!(
        close_code(&mut narrowed, Duration::from_secs(3)).await,
        Some(4001)
    );

    // The refreshed connection is still open and served, with no warning.
    retain(&gateway, &["positions/after"]).await;
    let event = next_json(&mut kept).await;
    assert_eq!(
        (event["type"].as_str(), event["topic"].as_str()),
        (Some("event"), Some("positions/after"))
    );
}

#[tokio::test]
async fn sse_ends_and_long_polls_answer_when_the_token_runs_out() {
    let gateway = auth_gateway(&[]).await;
    let short = access_token(&["positions/#"], &[], false, 1);
    let long = access_token(&["positions/#"], &[], false, 120);

    let (status, mut expiring) = Sse::open(&gateway, "", Some(&short)).await;
    assert_eq!(status, 200);
    let (_, mut lasting) = Sse::open(&gateway, &format!("?token={long}"), None).await;
    let (event, hello) = expiring.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(event, "hello");
    assert_eq!(
        lasting.next(Duration::from_secs(5)).await.unwrap().0,
        "hello"
    );
    let started = Instant::now();
    // A long-poll asking for 30 s with the short token.
    let url = gateway.url(&format!(
        "/_switchyard/state?epoch={}&since={}&wait=30",
        hello["epoch"].as_str().unwrap(),
        hello["seq"]
    ));
    let poll = tokio::spawn({
        let short = short.clone();
        async move {
            let started = Instant::now();
            let response = get_bearer(&url, Some(&short)).await;
            (response.status().as_u16(), started.elapsed())
        }
    });

    let (event, data) = expiring
        .next(Duration::from_secs(10))
        .await
        .expect("an error event before the end");
    assert_eq!(event, "error");
    assert_eq!(data["code"], "token_expired");
    assert!(
        expiring.next(Duration::from_secs(2)).await.is_none(),
        "the stream ends"
    );
    assert!(started.elapsed() < Duration::from_secs(9));

    let (status, waited) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        waited < Duration::from_secs(9),
        "long-poll waited {waited:?}"
    );

    // The other stream goes on.
    retain(&gateway, &["positions/a"]).await;
    let (event, data) = lasting.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (event.as_str(), data["topic"].as_str()),
        ("event", Some("positions/a"))
    );
}

#[tokio::test]
async fn websocket_publish_frames_follow_the_token_publish_scope() {
    // With PUBLISH_TOKEN set, loopback is no exemption.
    let gateway = auth_gateway(&[("PUBLISH_TOKEN", "engine-publish-token")]).await;
    let token = access_token(&["orders/#"], &["orders/+"], false, 60);
    let mut client = connect_bearer(&gateway, "", Some(&token)).await.unwrap();
    assert_eq!(next_json(&mut client).await["type"], "hello");
    client
        .send(text(
            json!({"type": "publish", "topic": "orders/1", "data": 5}),
        ))
        .await
        .unwrap();
    let event = next_json(&mut client).await;
    assert_eq!(
        (event["type"].as_str(), event["topic"].as_str()),
        (Some("event"), Some("orders/1"))
    );
    for topic in ["orders/1/x", "positions/1"] {
        client
            .send(text(json!({"type": "publish", "topic": topic, "data": 6})))
            .await
            .unwrap();
        let refused = next_json(&mut client).await;
        assert_eq!(refused["code"], "forbidden", "{topic}: {refused}");
        assert!(refused["message"].as_str().unwrap().contains(topic));
    }

    // A read-only token publishes nothing.
    let reader = access_token(&["orders/#"], &[], false, 60);
    let mut client = connect(&gateway, "").await;
    client
        .send(text(json!({"type": "auth", "token": reader})))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["type"], "hello");
    client
        .send(text(
            json!({"type": "publish", "topic": "orders/2", "data": 7}),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["code"], "forbidden");
}

#[tokio::test]
async fn without_auth_secret_an_auth_frame_can_carry_the_publish_token() {
    let gateway = Gateway::start(&[("PUBLISH_TOKEN", "engine-publish-token")]).await;
    let mut client = connect(&gateway, "").await;
    assert_eq!(next_json(&mut client).await["type"], "hello");
    let publish = text(json!({"type": "publish", "topic": "a", "data": 1}));
    client.send(publish.clone()).await.unwrap();
    let refused = next_json(&mut client).await;
    assert_eq!(refused["code"], "not_publisher", "{refused}");
    client
        .send(text(
            json!({"type": "auth", "token": "engine-publish-token"}),
        ))
        .await
        .unwrap();
    client.send(publish).await.unwrap();
    let event = next_json(&mut client).await;
    assert_eq!(
        (event["type"].as_str(), event["data"].as_i64()),
        (Some("event"), Some(1))
    );
}

#[tokio::test]
async fn an_admin_token_reads_everything() {
    let gateway = auth_gateway(&[]).await;
    retain(&gateway, &["positions/a", "secret/x"]).await;
    let admin = access_token(&[], &[], true, 60);
    let all = topics(&["positions/a", "secret/x"]);

    let metrics = get_bearer(&gateway.url("/_switchyard/metrics"), Some(&admin)).await;
    assert_eq!(metrics.status(), 200);
    assert!(text_body(metrics).await.contains("switchyard_"));
    let console = get_bearer(&gateway.url(&format!("/_switchyard/?token={admin}")), None).await;
    assert_eq!(console.status(), 200);
    let state = get_bearer(&gateway.url("/_switchyard/state"), Some(&admin)).await;
    assert_eq!(state_topics(&json_body(state).await["state"]), all);
    let mut client = connect_bearer(&gateway, "?topics=%23", Some(&admin))
        .await
        .unwrap();
    assert_eq!(state_topics(&next_json(&mut client).await["state"]), all);
    client
        .send(text(json!({"type": "subscribe", "topics": ["anything/#"]})))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    let (status, mut sse) = Sse::open(&gateway, "", Some(&admin)).await;
    assert_eq!(status, 200);
    let (_, hello) = sse.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(state_topics(&hello["state"]), all);
}

#[tokio::test]
async fn tokens_in_urls_never_reach_the_logs() {
    // Support starts the gateway with RUST_LOG=debug and JSON logs.
    let gateway = auth_gateway(&[]).await;
    let token = access_token(&["positions/#"], &[], false, 60);
    let expired = access_token(&["positions/#"], &[], false, -60);

    let mut client = connect_bearer(&gateway, &format!("?token={token}"), None)
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["type"], "hello");
    let mut framed = connect(&gateway, "?topics=positions/a").await;
    framed
        .send(text(json!({"type": "auth", "token": token})))
        .await
        .unwrap();
    assert_eq!(next_json(&mut framed).await["type"], "hello");
    let (status, mut sse) = Sse::open(&gateway, &format!("?token={token}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(sse.next(Duration::from_secs(5)).await.unwrap().0, "hello");
    let state = get_bearer(
        &gateway.url(&format!("/_switchyard/state?token={token}")),
        None,
    )
    .await;
    assert_eq!(state.status(), 200);
    for path in ["/_switchyard/state", "/_switchyard/events"] {
        let url = gateway.url(&format!("{path}?token={expired}"));
        assert_eq!(get_bearer(&url, None).await.status(), 401, "{path}");
    }
    let refused = connect_bearer(&gateway, &format!("?token={expired}"), None).await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(401));
    drop((client, framed, sse));

    // The request lines were logged (redacted), so the logs were on.
    let requests = gateway.wait_for_log("request", 6).await;
    assert!(
        requests
            .iter()
            .any(|line| line["query"].as_str() == Some("token=***")),
        "{requests:#?}"
    );
    gateway.wait_for_log("websocket client authorized", 2).await;
    let signature = |jwt: &str| jwt.rsplit('.').next().unwrap().to_owned();
    for line in gateway.logs() {
        for secret in [&token, &expired, &signature(&token), &signature(&expired)] {
            assert!(
                !line.contains(secret.as_str()),
                "a token in the logs: {line}"
            );
        }
    }
}

/// A validly signed token whose `exp` is at the end of time (near
/// `i64::MAX`, or `u64::MAX`) is a token that does not expire, not a panic:
/// on every read path and a live WebSocket (its expiry timer), and the
/// gateway goes on serving.
#[tokio::test]
async fn a_token_expiring_at_the_end_of_time_is_no_panic() {
    use switchyard::auth::token::{mint, Claims};
    let gateway = auth_gateway(&[]).await;
    retain(&gateway, &["positions/a"]).await;
    for exp in [
        i64::MAX as u64,
        i64::MAX as u64 - 5,
        i64::MAX as u64 + 1,
        u64::MAX,
        u64::MAX - 5,
        253_402_300_800, // 10000-01-01
    ] {
        let claims = Claims {
            exp,
            subscribe: vec!["positions/#".into()],
            ..Claims::default()
        };
        let token = mint(AUTH_SECRET, &claims).expect("mint");
        let state = get_bearer(&gateway.url("/_switchyard/state"), Some(&token)).await;
        assert_eq!(state.status(), 200, "exp {exp}: /state");
        let long_poll = gateway.url(&format!("/_switchyard/state?since=0&wait=1&token={token}"));
        assert_eq!(
            get_bearer(&long_poll, None).await.status(),
            200,
            "exp {exp}: long-poll"
        );
        let (status, mut stream) = Sse::open(&gateway, "", Some(&token)).await;
        assert_eq!(status, 200, "exp {exp}: SSE");
        assert_eq!(
            stream
                .next(Duration::from_secs(5))
                .await
                .map(|(event, _)| event),
            Some("hello".to_owned()),
            "exp {exp}: SSE hello"
        );
        let mut client = connect_bearer(&gateway, "", Some(&token))
            .await
            .unwrap_or_else(|refused| panic!("exp {exp}: /ws refused {refused:?}"));
        let hello = next_json(&mut client).await;
        assert_eq!(hello["type"], "hello", "exp {exp}");
        // A fresh auth frame with the same token renews the live grant.
        client
            .send(text(json!({"type": "auth", "token": token})))
            .await
            .expect("send auth frame");
        retain(&gateway, &["positions/b"]).await;
        let event = next_json(&mut client).await;
        assert_eq!(event["topic"], "positions/b", "exp {exp}: {event}");
    }
    let (status, health) = gateway.health().await;
    assert_eq!(status, 200, "{health}");
    let panics: Vec<String> = gateway
        .logs()
        .into_iter()
        .filter(|line| line.contains("panic") || line.contains("overflow"))
        .collect();
    assert!(panics.is_empty(), "{panics:#?}");
}
