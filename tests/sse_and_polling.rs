//! The HTTP transports: Server-Sent Events, long-polling state, and the
//! public config a client reads to choose between them.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use serde_json::{json, Value};
use support::{get, json_body, publish, publish_one, send, Gateway};

/// One SSE message as the browser's EventSource would see it.
#[derive(Debug)]
struct Message {
    id: String,
    event: String,
    data: Value,
}

/// Reads an SSE body, message by message (comments kept apart).
struct SseReader {
    body: Incoming,
    buffer: String,
    comments: Vec<String>,
}

impl SseReader {
    async fn open(gateway: &Gateway, query: &str, last_event_id: Option<&str>) -> (u16, SseReader) {
        let mut request = Request::get(gateway.url(&format!("/_switchyard/events{query}")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = send(request.body(Empty::<Bytes>::new()).unwrap()).await;
        let status = response.status().as_u16();
        if status == 200 {
            assert_eq!(response.headers()["content-type"], "text/event-stream");
        }
        let reader = SseReader {
            body: response.into_body(),
            buffer: String::new(),
            comments: Vec::new(),
        };
        (status, reader)
    }

    /// The next message; `None` when the stream ended.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), Vec::new());
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_owned());
                    }
                }
                if data.is_empty() {
                    continue; // a heartbeat comment
                }
                let data = serde_json::from_str(&data.join("\n")).expect("JSON data");
                return Some(Message { id, event, data });
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .expect("SSE data within 5 s")?;
            let frame = frame.ok()?;
            if let Some(bytes) = frame.data_ref() {
                self.buffer
                    .push_str(std::str::from_utf8(bytes).expect("UTF-8"));
            }
        }
    }
}

#[tokio::test]
async fn sse_streams_hello_then_events_with_epoch_seq_ids() {
    let gateway = Gateway::start(&[]).await;
    let body = json!({"topic": "k", "data": {"v": 1}, "retain": true}).to_string();
    publish(&gateway, &body).await;
    let (status, mut stream) = SseReader::open(&gateway, "?topics=k,e/%23", None).await;
    assert_eq!(status, 200);
    let hello = stream.next().await.unwrap();
    assert_eq!(hello.event, "hello");
    let epoch = hello.data["epoch"].as_str().unwrap().to_owned();
    assert_eq!(hello.id, format!("{epoch}:1"));
    assert_eq!(
        hello.data["state"],
        json!({"k": {"seq": 1, "data": {"v": 1}}})
    );

    publish_one(&gateway, "e/x", json!("first")).await;
    publish_one(&gateway, "other", json!("skipped")).await;
    // A publisher's JSON with line breaks between tokens still arrives whole.
    let (status, _) = publish(
        &gateway,
        "{\"topic\": \"e/y\",\n \"data\": {\n\"multi\": \"line\"\n}}",
    )
    .await;
    assert_eq!(status, 202);
    let first = stream.next().await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.id.clone()),
        ("event", format!("{epoch}:2"))
    );
    assert_eq!(first.data["type"], "event");
    assert_eq!(first.data["data"], "first");
    let second = stream.next().await.unwrap();
    assert_eq!(second.id, format!("{epoch}:4"));
    assert_eq!(second.data["data"], json!({"multi": "line"}));

    assert_eq!(gateway.health().await.1["connections"], 1);
}

#[tokio::test]
async fn last_event_id_resumes_exactly_or_starts_fresh() {
    let gateway = Gateway::start(&[]).await;
    for i in 1..=3 {
        publish_one(&gateway, "t", json!(i)).await;
    }
    let state = json_body(get(&gateway.url("/_switchyard/state")).await).await;
    let epoch = state["epoch"].as_str().unwrap().to_owned();

    let (_, mut resumed) = SseReader::open(&gateway, "", Some(&format!("{epoch}:1"))).await;
    let hello = resumed.next().await.unwrap();
    assert_eq!(hello.data["resumed"], true);
    assert_eq!(resumed.next().await.unwrap().data["seq"], 2);
    assert_eq!(resumed.next().await.unwrap().data["seq"], 3);

    // The header wins over the query string (EventSource keeps the URL).
    let query = format!("?epoch={epoch}&since=0");
    let (_, mut by_header) = SseReader::open(&gateway, &query, Some(&format!("{epoch}:2"))).await;
    assert_eq!(by_header.next().await.unwrap().data["resumed"], true);
    assert_eq!(by_header.next().await.unwrap().data["seq"], 3);

    let (_, mut stale) = SseReader::open(&gateway, "", Some("otherepoch:2")).await;
    assert_eq!(stale.next().await.unwrap().data["resumed"], false);

    let (status, _) = SseReader::open(&gateway, "", Some("garbage")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn sse_sends_heartbeats_and_works_without_websockets() {
    let gateway =
        Gateway::start(&[("PING_INTERVAL_SECS", "1"), ("WEBSOCKET_ENABLED", "false")]).await;
    let (_, mut stream) = SseReader::open(&gateway, "", None).await;
    stream.next().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    publish_one(&gateway, "t", json!(1)).await;
    assert_eq!(stream.next().await.unwrap().data["seq"], 1);
    assert!(
        stream.comments.iter().filter(|c| *c == "ping").count() >= 2,
        "{:?}",
        stream.comments
    );
}

#[tokio::test]
async fn sse_counts_against_max_connections() {
    let gateway = Gateway::start(&[("MAX_CONNECTIONS", "1")]).await;
    let (status, mut first) = SseReader::open(&gateway, "", None).await;
    assert_eq!(status, 200);
    first.next().await.unwrap();
    let (status, _) = SseReader::open(&gateway, "", None).await;
    assert_eq!(status, 503);
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.health().await.1["connections"], 0);
}

#[tokio::test]
async fn a_stalled_sse_client_is_cut_off() {
    let gateway = Gateway::start(&[("CLIENT_QUEUE", "8")]).await;
    let (_, mut stalled) = SseReader::open(&gateway, "", None).await;
    stalled.next().await.unwrap();
    // 18 MB: more than the socket buffers on both sides can absorb.
    let payload = "x".repeat(12_000);
    for chunk in 0..300 {
        let batch: Vec<Value> = (0..5)
            .map(|i| json!({"topic": "t", "data": [chunk * 5 + i, payload]}))
            .collect();
        let (status, _) = publish(&gateway, &Value::from(batch).to_string()).await;
        assert_eq!(status, 202);
    }
    assert_eq!(
        gateway
            .wait_for_log("client queue full; cutting it off", 1)
            .await
            .len(),
        1
    );
    // What was written still arrives, then the stream ends (no silent hole).
    let mut last = 0;
    while let Some(message) = stalled.next().await {
        let seq = message.data["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1);
        last = seq;
    }
    assert!(
        last < 1500,
        "the stalled client received everything ({last})"
    );
    assert_eq!(gateway.health().await.1["connections"], 0);
}

#[tokio::test]
async fn sigterm_ends_sse_streams_and_exits_0() {
    let mut gateway = Gateway::start(&[]).await;
    let (_, mut stream) = SseReader::open(&gateway, "", None).await;
    stream.next().await.unwrap();
    gateway.signal("TERM");
    assert!(stream.next().await.is_none());
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn long_polling_returns_on_the_first_event_or_after_wait() {
    let gateway = Gateway::start(&[]).await;
    publish_one(&gateway, "t", json!(1)).await;
    let state = json_body(get(&gateway.url("/_switchyard/state")).await).await;
    let epoch = state["epoch"].as_str().unwrap().to_owned();

    let url = gateway.url(&format!("/_switchyard/state?epoch={epoch}&since=1&wait=10"));
    let started = Instant::now();
    let poll = tokio::spawn(async move { json_body(get(&url).await).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_one(&gateway, "t", json!(2)).await;
    let answer = poll.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(answer["resumed"], true);
    assert_eq!(answer["seq"], 2);
    assert_eq!(answer["events"][0]["data"], 2);

    let started = Instant::now();
    let url = gateway.url(&format!("/_switchyard/state?epoch={epoch}&since=2&wait=1"));
    let empty = json_body(get(&url).await).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["seq"], 2);

    // Events already missed are answered at once.
    let url = gateway.url(&format!("/_switchyard/state?epoch={epoch}&since=0&wait=30"));
    let started = Instant::now();
    let missed = json_body(get(&url).await).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(missed["events"].as_array().unwrap().len(), 2);

    let response = get(&gateway.url("/_switchyard/state?wait=soon")).await;
    assert_eq!(response.status(), 400);
    assert!(json_body(response).await["error"]
        .as_str()
        .unwrap()
        .starts_with("wait"));
}

#[tokio::test]
async fn public_config_names_the_transports() {
    let gateway = Gateway::start(&[("RAILWAY_PUBLIC_DOMAIN", "dash.up.railway.app")]).await;
    let config = json_body(get(&gateway.url("/_switchyard/config")).await).await;
    assert_eq!(
        config,
        json!({
            "websocket_enabled": true,
            "websocket_uri": "wss://dash.up.railway.app/ws",
            "websocket_path": "/ws",
            "events_url": "/_switchyard/events",
            "state_url": "/_switchyard/state",
            "publish_url": "/_switchyard/publish",
            "auth_required": false,
        })
    );
    let local = Gateway::start(&[("WEBSOCKET_ENABLED", "false")]).await;
    let config = json_body(get(&local.url("/_switchyard/config")).await).await;
    assert_eq!(config["websocket_enabled"], false);
    assert_eq!(config["auth_required"], false);
    assert_eq!(
        config["websocket_uri"],
        format!("ws://localhost:{}/ws", local.addr.port())
    );

    // AUTH_SECRET set: the config says a token is needed, and names nothing
    // of the secret (it stays readable without a token).
    let secret = "config-test-secret-0123456789abcdef";
    let guarded = Gateway::start(&[("AUTH_SECRET", secret)]).await;
    let response = get(&guarded.url("/_switchyard/config")).await;
    assert_eq!(response.status(), 200);
    let text = support::text_body(response).await;
    assert!(!text.contains(secret), "the secret leaked into {text}");
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["auth_required"], true);
}

#[tokio::test]
async fn waiting_long_polls_count_against_max_connections() {
    let gateway = Gateway::start(&[("MAX_CONNECTIONS", "1")]).await;
    let seq = publish_one(&gateway, "t", json!(1)).await;
    let url = gateway.url(&format!("/_switchyard/state?since={seq}&wait=3"));
    let waiting = {
        let url = url.clone();
        tokio::spawn(async move { get(&url).await.status().as_u16() })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.health().await.1["connections"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the waiting long-poll is not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The one place is taken: a second waiter and an SSE client get 503.
    assert_eq!(get(&url).await.status(), 503);
    let (status, _) = SseReader::open(&gateway, "", None).await;
    assert_eq!(status, 503);
    // A plain poll does not wait and is not counted.
    assert_eq!(get(&gateway.url("/_switchyard/state")).await.status(), 200);
    // Answered (here after `wait`), the place is free again.
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(gateway.health().await.1["connections"], 0);
}

/// `?history=N`: the last N matching events, oldest first, so a page opened
/// after 7 trades starts its tape with them.
#[tokio::test]
async fn history_answers_the_last_matching_events() {
    let gateway = Gateway::start(&[("HISTORY_SIZE", "50")]).await;
    for i in 1..=7 {
        publish_one(&gateway, &format!("trades/{i}"), json!({"n": i})).await;
        publish_one(&gateway, "ticks/A", json!(i)).await;
    }
    let answer =
        json_body(get(&gateway.url("/_switchyard/state?topics=trades/%23&history=5")).await).await;
    assert_eq!(answer["seq"], 14);
    assert!(answer["epoch"].is_string());
    let seqs: Vec<u64> = answer["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 7, 9, 11, 13], "{answer}");
    assert_eq!(answer["history"][4]["topic"], "trades/7");
    assert_eq!(answer["history"][4]["type"], "event");
    // Fewer than asked: what there is.
    let all =
        json_body(get(&gateway.url("/_switchyard/state?topics=trades/%23&history=1000")).await)
            .await;
    assert_eq!(all["history"].as_array().map(Vec::len), Some(7));
    // Bad values and combinations name the problem.
    for query in [
        "history=0",
        "history=1001",
        "history=x",
        "history=5&since=3",
        "history=5&wait=5",
    ] {
        let response = get(&gateway.url(&format!("/_switchyard/state?{query}"))).await;
        assert_eq!(response.status(), 400, "{query}");
        let body = json_body(response).await;
        assert!(
            body["error"].as_str().unwrap().starts_with("history:"),
            "{query}: {body}"
        );
    }
}
