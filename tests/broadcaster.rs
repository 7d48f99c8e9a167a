//! The broadcaster on /ws with the HTTP publish API: hello, retained state,
//! subscriptions, resume, slow clients, bad input, limits and keepalive.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{close_code, connect, get, json_body, next_json, publish, publish_one, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn hello_then_live_events_encoded_once_for_everyone() {
    let gateway = Gateway::start(&[]).await;
    let mut first = connect(&gateway, "").await;
    let mut second = connect(&gateway, "?topics=positions/%23").await;
    for client in [&mut first, &mut second] {
        let hello = next_json(client).await;
        assert_eq!(hello["type"], "hello");
        assert_eq!(hello["seq"], 0);
        assert_eq!(hello["resumed"], false);
        assert_eq!(hello["state"], json!({}));
        assert!(hello["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let seq = publish_one(
        &gateway,
        "positions/NIFTY24DEC24000CE",
        json!({"qty": 50, "ltp": 101.5}),
    )
    .await;
    assert_eq!(seq, 1);
    let a = next_json(&mut first).await;
    let b = next_json(&mut second).await;
    assert_eq!(a, b, "every subscriber gets the same frame");
    assert_eq!(a["type"], "event");
    assert_eq!(a["seq"], 1);
    assert_eq!(a["topic"], "positions/NIFTY24DEC24000CE");
    assert_eq!(a["data"], json!({"qty": 50, "ltp": 101.5}));
    assert!(humantime::parse_rfc3339(a["ts"].as_str().unwrap()).is_ok());

    let (_, health) = gateway.health().await;
    assert_eq!(health["connections"], 2);
}

#[tokio::test]
async fn hello_carries_matching_retained_state_and_null_deletes() {
    let gateway = Gateway::start(&[]).await;
    let body = json!([
        {"topic": "positions/A", "data": {"qty": 1}, "retain": true},
        {"topic": "positions/B", "data": {"qty": 2}, "retain": true},
        {"topic": "positions/C", "data": {"qty": 3}, "retain": true},
        {"topic": "trades/x", "data": 9, "retain": true},
        {"topic": "positions/A", "data": {"qty": 10}, "retain": true},
        {"topic": "positions/C", "data": null, "retain": true},
        {"topic": "positions/D", "data": "not kept", "retain": false},
    ]);
    let (status, answer) = publish(&gateway, &body.to_string()).await;
    assert_eq!(status, 202);
    assert_eq!(answer["seqs"], json!([1, 2, 3, 4, 5, 6, 7]));

    let mut client = connect(&gateway, "?topics=positions/%23").await;
    let hello = next_json(&mut client).await;
    assert_eq!(hello["seq"], 7);
    assert_eq!(
        hello["state"],
        json!({"positions/A": {"seq": 5, "data": {"qty": 10}}, "positions/B": {"seq": 2, "data": {"qty": 2}}})
    );
    let mut everything = connect(&gateway, "").await;
    let hello = next_json(&mut everything).await;
    assert_eq!(hello["state"].as_object().unwrap().len(), 3);
    assert_eq!(hello["state"]["trades/x"]["data"], 9);
}

#[tokio::test]
async fn subscribe_and_unsubscribe_frames() {
    let gateway = Gateway::start(&[]).await;
    publish_one(&gateway, "noise", json!(0)).await;
    let body = json!({"topic": "orders/1", "data": "open", "retain": true}).to_string();
    assert_eq!(publish(&gateway, &body).await.0, 202);

    let mut client = connect(&gateway, "?topics=marker").await;
    assert_eq!(next_json(&mut client).await["state"], json!({}));
    client
        .send(Message::text(
            r#"{"type":"subscribe","topics":["orders/+"]}"#,
        ))
        .await
        .unwrap();
    let subscribed = next_json(&mut client).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["topics"], json!(["orders/+"]));
    assert_eq!(
        subscribed["state"],
        json!({"orders/1": {"seq": 2, "data": "open"}})
    );

    publish_one(&gateway, "orders/2", json!("filled")).await;
    assert_eq!(next_json(&mut client).await["topic"], "orders/2");

    client
        .send(Message::text(
            r#"{"type":"unsubscribe","topics":["orders/+"]}"#,
        ))
        .await
        .unwrap();
    // The unsubscribe frame is handled before the next publish reaches the hub
    // only once the server has read it: give it a round trip via a bad frame.
    client.send(Message::text("{}")).await.unwrap();
    assert_eq!(next_json(&mut client).await["type"], "error");
    publish_one(&gateway, "orders/3", json!("ignored")).await;
    publish_one(&gateway, "marker", json!("after")).await;
    let next = next_json(&mut client).await;
    assert_eq!(
        next["topic"], "marker",
        "unsubscribed topic was delivered: {next}"
    );
}

#[tokio::test]
async fn publish_validation_and_all_or_nothing() {
    let gateway = Gateway::start(&[("MAX_MESSAGE_BYTES", "1024")]).await;
    let cases = [
        (r#"{"data":1}"#, "topic"),
        (r#"{"topic":"a b","data":1}"#, "topic"),
        (r#"{"topic":"a"}"#, "data"),
        (r#"{"topic":"a","data":1,"retain":"yes"}"#, "retain"),
        (r#"{"topic":"a","data":1,"color":"red"}"#, "color"),
        ("not json", "body"),
        ("[]", "empty"),
        (
            r#"[{"topic":"ok","data":1},{"topic":"","data":2}]"#,
            "[1].topic",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = publish(&gateway, body).await;
        assert_eq!(status, 400, "{body}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let too_large = json!({"topic": "a", "data": "x".repeat(2000)}).to_string();
    let (status, answer) = publish(&gateway, &too_large).await;
    assert_eq!(status, 413);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("MAX_MESSAGE_BYTES"));

    // Nothing above was applied, not even the good half of the bad batch.
    let state = json_body(get(&gateway.url("/_switchyard/state")).await).await;
    assert_eq!(state["seq"], 0);
    assert_eq!(publish_one(&gateway, "ok", json!(1)).await, 1);
}

#[tokio::test]
async fn publishing_needs_the_token_when_one_is_set() {
    let gateway = Gateway::start(&[("PUBLISH_TOKEN", "s3cret-token")]).await;
    let url = gateway.url("/_switchyard/publish");
    let body = r#"{"topic":"a","data":1}"#;
    let send = |auth: Option<&'static str>| {
        let mut request = http::Request::post(url.clone());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        support::send(
            request
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    body.as_bytes(),
                )))
                .unwrap(),
        )
    };
    let response = send(None).await;
    assert_eq!(
        response.status(),
        401,
        "loopback alone is not enough once a token is set"
    );
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(send(Some("Bearer wrong-token!")).await.status(), 401);
    assert_eq!(send(Some("Basic czNjcmV0LXRva2Vu")).await.status(), 401);
    let response = send(Some("Bearer s3cret-token")).await;
    assert_eq!(response.status(), 202);
    let answer = json_body(response).await;
    assert_eq!(answer["seq"], 1);
    assert!(answer["epoch"].is_string());

    // Over the WebSocket: a publish frame needs the token too.
    let mut anonymous = connect(&gateway, "").await;
    next_json(&mut anonymous).await;
    anonymous
        .send(Message::text(r#"{"type":"publish","topic":"a","data":2}"#))
        .await
        .unwrap();
    let refused = next_json(&mut anonymous).await;
    assert_eq!(refused["type"], "error");
    assert!(refused["message"].as_str().unwrap().contains("token"));

    let mut trusted = connect(&gateway, "?token=s3cret-token").await;
    next_json(&mut trusted).await;
    trusted
        .send(Message::text(
            r#"{"type":"publish","topic":"a","data":3,"retain":true}"#,
        ))
        .await
        .unwrap();
    let event = next_json(&mut anonymous).await;
    assert_eq!(
        (event["seq"].as_u64(), event["data"].as_u64()),
        (Some(2), Some(3))
    );
}

#[tokio::test]
async fn resume_delivers_exactly_the_missed_events() {
    let gateway = Gateway::start(&[]).await;
    let mut client = connect(&gateway, "?topics=a/%23").await;
    let epoch = next_json(&mut client).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=4 {
        publish_one(&gateway, "a/x", json!(i)).await;
    }
    for i in 1..=4 {
        assert_eq!(next_json(&mut client).await["seq"], i);
    }
    drop(client);
    for i in 5..=10 {
        let topic = if i % 2 == 0 { "a/y" } else { "b/other" };
        publish_one(&gateway, topic, json!(i)).await;
    }
    let mut client = connect(&gateway, &format!("?topics=a/%23&epoch={epoch}&since=4")).await;
    let hello = next_json(&mut client).await;
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["state"], json!({}));
    assert_eq!(hello["seq"], 10);
    for seq in [6, 8, 10] {
        assert_eq!(next_json(&mut client).await["seq"], seq);
    }
    publish_one(&gateway, "a/live", json!(11)).await;
    assert_eq!(next_json(&mut client).await["seq"], 11);

    // `since` alone means the current epoch.
    let mut simple = connect(&gateway, "?since=9").await;
    assert_eq!(next_json(&mut simple).await["resumed"], true);
    assert_eq!(next_json(&mut simple).await["seq"], 10);
    assert_eq!(next_json(&mut simple).await["seq"], 11);
}

#[tokio::test]
async fn resume_points_that_cannot_be_served_get_a_fresh_hello() {
    let gateway = Gateway::start(&[("HISTORY_SIZE", "5")]).await;
    let body = json!({"topic": "kept", "data": "state", "retain": true}).to_string();
    publish(&gateway, &body).await;
    for i in 0..9 {
        publish_one(&gateway, "t", json!(i)).await;
    }
    let mut probe = connect(&gateway, "").await;
    let epoch = next_json(&mut probe).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for (query, why) in [
        ("?epoch=someotherepoch&since=5".to_owned(), "another epoch"),
        (format!("?epoch={epoch}&since=2"), "older than history"),
        (
            format!("?epoch={epoch}&since=99"),
            "ahead of the current seq",
        ),
    ] {
        let mut client = connect(&gateway, &query).await;
        let hello = next_json(&mut client).await;
        assert_eq!(hello["resumed"], false, "{why}");
        assert_eq!(hello["state"]["kept"]["data"], "state", "{why}");
    }
    // The oldest point history can still serve.
    let mut client = connect(&gateway, &format!("?epoch={epoch}&since=5")).await;
    assert_eq!(next_json(&mut client).await["resumed"], true);
    assert_eq!(next_json(&mut client).await["seq"], 6);
}

#[tokio::test]
async fn a_restarted_gateway_is_never_mistaken_for_a_resumable_point() {
    let first = Gateway::start(&[]).await;
    for i in 0..3 {
        publish_one(&first, "t", json!(i)).await;
    }
    let mut client = connect(&first, "").await;
    let old = next_json(&mut client).await;
    assert_eq!(old["seq"], 3);
    drop(client);
    drop(first);

    let second = Gateway::start(&[]).await;
    let body = json!({"topic": "fresh", "data": 1, "retain": true}).to_string();
    publish(&second, &body).await;
    for i in 0..9 {
        publish_one(&second, "t", json!(i)).await; // its seq passes 3
    }
    let query = format!("?epoch={}&since=3", old["epoch"].as_str().unwrap());
    let mut client = connect(&second, &query).await;
    let hello = next_json(&mut client).await;
    assert_ne!(hello["epoch"], old["epoch"]);
    assert_eq!(hello["resumed"], false);
    assert_eq!(hello["seq"], 10);
    assert_eq!(hello["state"]["fresh"]["data"], 1);
}

/// Reconnecting clients resume while a publisher never pauses: every seq
/// arrives once, in order, across all reconnects.
#[tokio::test]
async fn resume_under_concurrent_publishing_loses_and_repeats_nothing() {
    let gateway = Gateway::start(&[("HISTORY_SIZE", "100000")]).await;
    const TOTAL: u64 = 1500;
    let url = gateway.url("/_switchyard/publish");
    let mut clients = Vec::new();
    for reconnect_every in [37u64, 101, 250] {
        let ws = gateway.ws_url("/ws");
        // The first connection is made before publishing starts, at seq 0.
        let mut client = connect(&gateway, "").await;
        let hello = next_json(&mut client).await;
        assert_eq!(hello["seq"], 0);
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut epoch = hello["epoch"].as_str().unwrap().to_owned();
            loop {
                let mut count = 0;
                while count < reconnect_every && seen.last().copied().unwrap_or(0) < TOTAL {
                    let event = next_json(&mut client).await;
                    seen.push(event["seq"].as_u64().unwrap());
                    count += 1;
                }
                if seen.last().copied().unwrap_or(0) >= TOTAL {
                    return seen;
                }
                let resume = format!("?epoch={epoch}&since={}", seen.last().unwrap());
                client = tokio_tungstenite::connect_async(format!("{ws}{resume}"))
                    .await
                    .unwrap()
                    .0;
                let hello = next_json(&mut client).await;
                assert_eq!(hello["resumed"], true, "{hello}");
                epoch = hello["epoch"].as_str().unwrap().to_owned();
            }
        }));
    }
    let publisher = tokio::spawn(async move {
        for i in 0..TOTAL / 5 {
            let batch: Vec<Value> = (0..5)
                .map(|j| json!({"topic": "p", "data": i * 5 + j}))
                .collect();
            let response = support::post(&url, Value::from(batch).to_string()).await;
            assert_eq!(response.status(), 202);
        }
    });
    publisher.await.unwrap();
    for client in clients {
        let seen = client.await.unwrap();
        let expected: Vec<u64> = (1..=TOTAL).collect();
        assert_eq!(seen, expected);
    }
}

#[tokio::test]
async fn a_stalled_client_is_cut_off_with_1008_and_never_delays_the_others() {
    let gateway = Gateway::start(&[
        ("CLIENT_QUEUE", "16"),
        ("HISTORY_SIZE", "10"),
        ("MAX_MESSAGE_BYTES", "262144"),
    ])
    .await;
    // The stalled client: completes the handshake, then does not read.
    let stalled_url = gateway.ws_url("/ws");
    let (mut stalled, _) = tokio_tungstenite::connect_async(stalled_url).await.unwrap();
    let mut others = Vec::new();
    for _ in 0..5 {
        let mut client = connect(&gateway, "").await;
        next_json(&mut client).await;
        others.push(client);
    }
    // Each reader reports how far it got; the publisher sends a batch only
    // when every reader has the previous one, so a healthy reader never has
    // more than one batch (10 < CLIENT_QUEUE) queued however the machine
    // schedules it. The stalled one stops reading and falls behind all the
    // same, and nothing here waits for it.
    let mut progress = Vec::new();
    let readers: Vec<_> = others
        .into_iter()
        .map(|mut client| {
            let (seen, watch) = tokio::sync::watch::channel(0u64);
            progress.push(watch);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                while seqs.len() < 2000 {
                    let event = next_json(&mut client).await;
                    seqs.push(event["seq"].as_u64().unwrap());
                    seen.send_replace(seqs.len() as u64);
                }
                (seqs, client)
            })
        })
        .collect();
    // 16 MB in all: more than the socket buffers on both sides absorb.
    let payload = "x".repeat(8192);
    for chunk in 0..200u64 {
        for watch in &mut progress {
            let delivered = tokio::time::timeout(
                Duration::from_secs(10),
                watch.wait_for(|&seen| seen >= chunk * 10),
            )
            .await;
            assert!(
                matches!(delivered, Ok(Ok(_))),
                "a reader stalled at batch {chunk}"
            );
        }
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"topic": "big", "data": [chunk * 10 + i, payload]}))
            .collect();
        let (status, _) = publish(&gateway, &Value::from(batch).to_string()).await;
        assert_eq!(
            status, 202,
            "a publish waited on or failed for the stalled client"
        );
    }
    let mut still_open = Vec::new();
    for reader in readers {
        let (seqs, client) = reader.await.unwrap();
        assert_eq!(seqs, (1..=2000).collect::<Vec<u64>>());
        still_open.push(client);
    }
    // Now read what the stalled one was sent: data, then close 1008.
    assert_eq!(
        close_code(&mut stalled, Duration::from_secs(10)).await,
        Some(1008)
    );
    let cut = gateway
        .wait_for_log("client queue full; cutting it off", 1)
        .await;
    assert_eq!(cut.len(), 1, "exactly the stalled client was cut off");
    for _ in 0..50 {
        if gateway.health().await.1["connections"] == 5 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the stalled client still counts: {:?}",
        gateway.health().await
    );
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays() {
    let gateway = Gateway::start(&[("MAX_MESSAGE_BYTES", "1024")]).await;
    let mut client = connect(&gateway, "?topics=a").await;
    next_json(&mut client).await;
    for bad in [
        "not json",
        r#"{"type":"dance"}"#,
        r#"{"type":"subscribe","topics":["a/#/b"]}"#,
        r#"{"type":"subscribe"}"#,
    ] {
        client.send(Message::text(bad)).await.unwrap();
        let error = next_json(&mut client).await;
        assert_eq!(error["type"], "error", "{bad}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    client
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["type"], "error");
    publish_one(&gateway, "a", json!("still here")).await;
    assert_eq!(next_json(&mut client).await["data"], "still here");

    client.send(Message::text("x".repeat(2048))).await.unwrap();
    assert_eq!(
        close_code(&mut client, Duration::from_secs(5)).await,
        Some(1009)
    );
}

#[tokio::test]
async fn bad_queries_and_origins_are_refused_before_upgrading() {
    let gateway = Gateway::start(&[("CORS_ORIGINS", "https://allowed.example")]).await;
    let handshake = |query: &str, origin: Option<&str>| {
        let mut request = gateway
            .ws_url(&format!("/ws{query}"))
            .into_client_request()
            .unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    let status = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Ok(_) => 101,
        Err(other) => panic!("{other}"),
    };
    assert_eq!(
        status(handshake("", Some("https://evil.example")).await),
        403
    );
    assert_eq!(
        status(handshake("", Some("https://allowed.example")).await),
        101
    );
    let own = format!("http://{}", gateway.addr);
    assert_eq!(status(handshake("", Some(&own)).await), 101);
    assert_eq!(status(handshake("?since=yesterday", None).await), 400);
    assert_eq!(status(handshake("?topics=a%20b", None).await), 400);

    // A plain GET on the endpoint says what it is.
    assert_eq!(get(&gateway.url("/ws")).await.status(), 426);
}

#[tokio::test]
async fn max_connections_refuses_with_503() {
    let gateway = Gateway::start(&[("MAX_CONNECTIONS", "2")]).await;
    let _a = connect(&gateway, "").await;
    let _b = connect(&gateway, "").await;
    let third = tokio_tungstenite::connect_async(gateway.ws_url("/ws")).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!(gateway.health().await.1["connections"], 2);
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _c = connect(&gateway, "").await;
}

#[tokio::test]
async fn disabled_websocket_keeps_publish_and_polling() {
    let gateway = Gateway::start(&[("WEBSOCKET_ENABLED", "false")]).await;
    let response = get(&gateway.url("/ws")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        json_body(response).await,
        json!({"error": "websocket disabled"})
    );

    let body = json!({"topic": "k", "data": 1, "retain": true}).to_string();
    assert_eq!(publish(&gateway, &body).await.0, 202);
    publish_one(&gateway, "e", json!(2)).await;
    let state = json_body(get(&gateway.url("/_switchyard/state")).await).await;
    assert_eq!(state["resumed"], false);
    assert_eq!(state["seq"], 2);
    assert_eq!(state["state"], json!({"k": {"seq": 1, "data": 1}}));
    let epoch = state["epoch"].as_str().unwrap();
    let polled =
        json_body(get(&gateway.url(&format!("/_switchyard/state?epoch={epoch}&since=1"))).await)
            .await;
    assert_eq!(polled["resumed"], true);
    assert_eq!(polled["events"].as_array().unwrap().len(), 1);
    assert_eq!(polled["events"][0]["data"], 2);
    let stale = json_body(get(&gateway.url("/_switchyard/state?epoch=gone&since=1")).await).await;
    assert_eq!(stale["resumed"], false);
}

#[tokio::test]
async fn a_silent_client_is_closed_after_three_ping_intervals() {
    let gateway = Gateway::start(&[("PING_INTERVAL_SECS", "1")]).await;
    // A raw client: handshake, then read frames without ever answering.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("a silent client was never closed"),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    let pings = received.windows(2).filter(|w| w == &[0x89, 0x00]).count();
    assert!(pings >= 2, "expected server pings, got {pings}");
    // The close frame (0x88) carries 1001 (0x03 0xE9).
    let close = received
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xE9);
    assert!(close, "no close 1001 in what was received");
}

#[tokio::test]
async fn an_answering_client_stays_connected_through_pings() {
    let gateway = Gateway::start(&[("PING_INTERVAL_SECS", "1")]).await;
    let mut client = connect(&gateway, "").await;
    next_json(&mut client).await;
    // tungstenite answers pings while we read; 5 s is > 3 intervals.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    while Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout(Duration::from_millis(500), client.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 3);
    publish_one(&gateway, "t", json!(1)).await;
    assert_eq!(next_json(&mut client).await["seq"], 1);
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_and_exits_0() {
    let mut gateway = Gateway::start(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = connect(&gateway, "").await;
        next_json(&mut client).await;
        clients.push(client);
    }
    gateway.signal("TERM");
    for client in &mut clients {
        assert_eq!(close_code(client, Duration::from_secs(5)).await, Some(1001));
    }
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn cors_for_reserved_routes() {
    let gateway = Gateway::start(&[("CORS_ORIGINS", "https://app.example")]).await;
    let preflight = |origin: &'static str| {
        support::send(
            http::Request::builder()
                .method("OPTIONS")
                .uri(gateway.url("/_switchyard/publish"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
    };
    let allowed = preflight("https://app.example").await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let refused = preflight("https://evil.example").await;
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));

    let response = support::send(
        http::Request::get(gateway.url("/_switchyard/state"))
            .header("origin", "https://app.example")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn topic_patterns_route_events_to_the_right_clients() {
    let gateway = Gateway::start(&[]).await;
    let patterns = ["a/+/c", "a/%23", "%2B/b/c", "x", "a/b/c"];
    let mut clients = Vec::new();
    for pattern in patterns {
        let mut client = connect(&gateway, &format!("?topics={pattern},done")).await;
        next_json(&mut client).await;
        clients.push(client);
    }
    for topic in ["a/b/c", "a", "a/b", "q/b/c", "x", "x/y"] {
        publish_one(&gateway, topic, json!(topic)).await;
    }
    publish_one(&gateway, "done", json!("done")).await;
    let expected: [&[&str]; 5] = [
        &["a/b/c"],
        &["a/b/c", "a", "a/b"],
        &["a/b/c", "q/b/c"],
        &["x"],
        &["a/b/c"],
    ];
    for (client, expected) in clients.iter_mut().zip(expected) {
        let mut got = Vec::new();
        loop {
            let event = next_json(client).await;
            if event["topic"] == "done" {
                break;
            }
            got.push(event["topic"].as_str().unwrap().to_owned());
        }
        assert_eq!(got, expected);
    }
}

#[tokio::test]
async fn the_open_file_limit_is_raised_and_a_too_large_max_connections_is_reported() {
    // The default MAX_CONNECTIONS (100,000, over this machine's 20,000
    // open files) is nobody's choice: no warning for it on every start.
    let quiet = Gateway::start(&[]).await;
    assert!(
        !quiet
            .logs()
            .iter()
            .any(|line| line.contains("\"level\":\"WARN\"")),
        "a warning with the defaults: {:#?}",
        quiet.logs()
    );
    drop(quiet);
    let gateway = Gateway::start(&[("MAX_CONNECTIONS", "100000000")]).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gateway.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        numbers[0], numbers[1],
        "soft limit not raised to the hard one: {line}"
    );
    let hard = numbers[1];
    let warned = gateway.logs().iter().any(|line| {
        line.contains("does not fit under the open-file limit")
            && line.contains("\"max_connections\":100000000")
            && line.contains(&format!("\"open_file_limit\":{hard}"))
    });
    assert!(
        warned,
        "no warning naming both numbers: {:#?}",
        gateway.logs()
    );
}

#[tokio::test]
async fn running_out_of_descriptors_neither_spins_nor_kills_the_accept_loop() {
    // Start the gateway under a hard limit of 64 descriptors.
    let gateway = Gateway::start_with_prefix(&["prlimit", "--nofile=64:64", "--"], &[]).await;
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(gateway.addr)).await
        {
            held.push(stream);
        }
    }
    let cpu_before = support::cpu_ticks(gateway.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_used = support::cpu_ticks(gateway.pid()) - cpu_before;
    assert!(
        cpu_used < 50,
        "the accept loop spun: {cpu_used} ticks in 2 s"
    );
    let warnings = gateway.wait_for_log("accept failed; backing off", 1).await;
    assert!(!warnings.is_empty(), "EMFILE was never hit");
    assert!(
        warnings.len() <= 4,
        "{} accept warnings in ~2 s",
        warnings.len()
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = gateway.health().await;
    assert_eq!(status, 200, "the gateway recovered");
}

#[tokio::test]
async fn too_many_patterns_in_a_query_get_400_naming_the_limit() {
    let gateway = Gateway::start(&[("MAX_PATTERNS_PER_CLIENT", "3")]).await;
    // Duplicates count once: three distinct patterns are fine.
    let mut client = connect(&gateway, "?topics=a,b,c,a,b,c").await;
    assert_eq!(next_json(&mut client).await["type"], "hello");
    match tokio_tungstenite::connect_async(gateway.ws_url("/ws?topics=a,b,c,d")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("MAX_PATTERNS_PER_CLIENT (3)"), "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    for path in ["/_switchyard/events", "/_switchyard/state"] {
        let response = get(&gateway.url(&format!("{path}?topics=a,b,c,d"))).await;
        assert_eq!(response.status(), 400, "{path}");
        let body = json_body(response).await;
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("MAX_PATTERNS_PER_CLIENT (3)"),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn fragmented_frames_pings_and_invalid_text_follow_the_websocket_rules() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let gateway = Gateway::start(&[]).await;
    let mut client = connect(&gateway, "?topics=a").await;
    next_json(&mut client).await;

    // A text message in two fragments, with a ping between them.
    let first = Frame::message(
        r#"{"type":"subscribe","#.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    );
    let rest = Frame::message(
        r#""topics":["b"]}"#.as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    );
    client.send(Message::Frame(first)).await.unwrap();
    client
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    client.send(Message::Frame(rest)).await.unwrap();
    let mut pong = None;
    let subscribed = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("a frame within 5 s")
            .expect("open")
            .expect("valid");
        match message {
            Message::Pong(payload) => pong = Some(payload.to_vec()),
            Message::Text(text) => break serde_json::from_str::<Value>(text.as_str()).unwrap(),
            _ => {}
        }
    };
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(pong.as_deref(), Some(&b"hi"[..]), "the ping was answered");

    // Text that is not UTF-8: close 1007.
    let invalid = Frame::message(vec![0xFF, 0xFE], OpCode::Data(Data::Text), true);
    client.send(Message::Frame(invalid)).await.unwrap();
    assert_eq!(
        close_code(&mut client, Duration::from_secs(5)).await,
        Some(1007)
    );
}
