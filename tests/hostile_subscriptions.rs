//! Hostile subscribers and a bounded hub, against the real binary over real
//! sockets: a pattern flood from an anonymous WebSocket client while a
//! publisher publishes steadily (MAX_PATTERNS_PER_CLIENT, publish latency
//! compared with a quiet run in the same test), and the retained-state cap
//! (MAX_RETAINED_BYTES: 507, nothing of a batch applied, deletes work) and
//! history bounded in bytes (HISTORY_MAX_BYTES), in memory and, with
//! SWITCHYARD_TEST_REDIS set, through Redis.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::{
    connect, get, json_body, next_json, publish, redis_url, unique_prefix, Client, Gateway,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Patterns in one flood frame (the issue's report: ~3,600), each distinct.
const PATTERNS_PER_FRAME: usize = 3_600;
/// Flood frames at least (the issue's report: 30).
const MIN_FLOOD_FRAMES: usize = 30;
/// Publishes per phase and round; quiet and flood phases alternate, quiet
/// first, so drifting load from other processes hits both alike.
const PUBLISHES_PER_PHASE: usize = 100;
const ROUNDS: usize = 6;
/// Gap between publishes: a steady flow, not a saturation test.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// Gap between flood frames: 10 frames/s (~0.5 MB/s of subscribe JSON), so
/// the flood phases together send about the issue's 30 frames, spread over
/// the whole measurement. Unpaced, the test would measure how 2 shared
/// cores are split between parsing JSON (about 6 ms of CPU per frame in a
/// debug build, all in the transport's frame parsing) and publishing, not
/// whether the hub lets a flood hold up publishes.
const FLOOD_EVERY: Duration = Duration::from_millis(100);
/// Normal clients subscribed to what is published.
const NORMAL_CLIENTS: usize = 10;

/// One kept-alive HTTP/1.1 connection for publishing, so a sample measures
/// the publish, not a TCP handshake.
struct Publisher {
    sender: SendRequest<Full<Bytes>>,
    url: String,
}

impl Publisher {
    async fn connect(gateway: &Gateway) -> Publisher {
        let stream = TcpStream::connect(gateway.addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Publisher {
            sender,
            url: "/_switchyard/publish".to_owned(),
        }
    }

    /// POSTs `body`; answers the status and how long the answer took.
    async fn publish(&mut self, body: String) -> (u16, Duration) {
        let request = Request::post(&self.url)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let started = Instant::now();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        (status, started.elapsed())
    }
}

/// A subscribe frame of `PATTERNS_PER_FRAME` patterns no other frame has:
/// exact, `+` and `#` ones, so the old code's index and retained matching
/// had work of every kind.
fn flood_frame(round: usize) -> String {
    let topics: Vec<String> = (0..PATTERNS_PER_FRAME)
        .map(|i| {
            let n = round * PATTERNS_PER_FRAME + i;
            match i % 3 {
                0 => format!("f{n}"),
                1 => format!("r/{n}/+"),
                _ => format!("+/{n}/#"),
            }
        })
        .collect();
    json!({"type": "subscribe", "topics": topics}).to_string()
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Publishes `count` events to `prices/*` at a steady pace; every one must
/// answer 202. Answers the round-trip times.
async fn publish_steadily(publisher: &mut Publisher, count: usize, first: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    let mut ticks = tokio::time::interval(PUBLISH_EVERY);
    for i in first..first + count {
        ticks.tick().await;
        let body = json!({"topic": format!("prices/{}", i % 10), "data": i, "retain": true});
        // Generous: only a starved publish takes this long (the code before
        // the limit held the hub's locks for seconds per flood frame).
        let (status, took) =
            tokio::time::timeout(Duration::from_secs(10), publisher.publish(body.to_string()))
                .await
                .unwrap_or_else(|_| panic!("publish {i} not answered within 10 s: starved"));
        assert_eq!(status, 202, "publish {i} answered {status}");
        times.push(took);
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_flood_is_refused_and_does_not_slow_publishing() {
    let gateway = Gateway::start(&[("RUST_LOG", "info")]).await;

    // Retained state for the old code's per-subscribe scan to chew on:
    // 2,000 topics, some under the flood's `r/N/+` patterns.
    for chunk in 0..4 {
        let batch: Vec<Value> = (0..500)
            .map(
                |i| json!({"topic": format!("r/{}/v", chunk * 500 + i), "data": i, "retain": true}),
            )
            .collect();
        let (status, answer) = publish(&gateway, &Value::from(batch).to_string()).await;
        assert_eq!(status, 202, "{answer}");
    }

    // Normal clients, each counting the events it receives.
    let received = Arc::new(AtomicUsize::new(0));
    let mut normal = Vec::new();
    for _ in 0..NORMAL_CLIENTS {
        let mut client = connect(&gateway, "?topics=prices/%23").await;
        assert_eq!(next_json(&mut client).await["type"], "hello");
        let received = received.clone();
        normal.push(tokio::spawn(async move {
            while let Some(Ok(message)) = client.next().await {
                if let Message::Text(text) = message {
                    if text.as_str().contains(r#""type":"event""#) {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // The flooder: anonymous (tungstenite sends no Origin header), first
    // takes 200 patterns, which is allowed.
    let mut flooder = connect(&gateway, "?topics=own/0").await;
    assert_eq!(next_json(&mut flooder).await["type"], "hello");
    let own: Vec<String> = (0..200).map(|i| format!("own/{i}")).collect();
    flooder
        .send(Message::text(
            json!({"type": "subscribe", "topics": own}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut flooder).await["type"], "subscribed");
    let (mut flood_sink, mut flood_stream) = flooder.split();
    // Replies arrive on a channel; the writer keeps one frame in flight.
    let (replies_tx, mut replies) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = flood_stream.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if replies_tx.send(frame).is_err() {
                    return;
                }
            }
        }
    });

    // Built before anything is measured: generating them is the test's own
    // CPU, which would otherwise land in the flood phases only.
    let max_frames = ROUNDS * (PUBLISHES_PER_PHASE * 4 / 3) + MIN_FLOOD_FRAMES;
    let frames: Vec<String> = (0..max_frames).map(flood_frame).collect();
    let mut frames = frames.into_iter();

    let mut publisher = Publisher::connect(&gateway).await;
    let mut quiet = Vec::new();
    let mut flooded = Vec::new();
    let mut sent = 0;
    // Flood frames answered by an `error` naming the limit.
    let mut refused = 0;
    let mut published = 0;
    // The gateway's CPU time (clock ticks) in each kind of phase.
    let (mut quiet_cpu, mut flood_cpu) = (0, 0);
    for _ in 0..ROUNDS {
        let ticks = support::cpu_ticks(gateway.pid());
        quiet.extend(publish_steadily(&mut publisher, PUBLISHES_PER_PHASE, published).await);
        quiet_cpu += support::cpu_ticks(gateway.pid()) - ticks;
        published += PUBLISHES_PER_PHASE;
        let ticks = support::cpu_ticks(gateway.pid());

        // Flood for exactly as long as this phase publishes, at least
        // MIN_FLOOD_FRAMES / ROUNDS frames per phase, each answered before
        // the next is sent (the flooder reads its replies, as a real
        // client does; otherwise it would only be a slow reader).
        let flooding = Arc::new(AtomicBool::new(true));
        let still = flooding.clone();
        let flood = async {
            let mut count = 0;
            let mut pace = tokio::time::interval(FLOOD_EVERY);
            while still.load(Ordering::Relaxed) || count < MIN_FLOOD_FRAMES.div_ceil(ROUNDS) {
                pace.tick().await;
                let frame = frames.next().expect("enough flood frames were built");
                flood_sink.send(Message::text(frame)).await.unwrap();
                count += 1;
                let reply = tokio::time::timeout(Duration::from_secs(30), replies.recv())
                    .await
                    .expect("an answer to each flood frame within 30 s")
                    .expect("flooder still connected");
                let message = reply["message"].as_str().unwrap_or_default();
                if reply["type"] == "error"
                    && message
                        == "too many patterns: at most 256 per client (MAX_PATTERNS_PER_CLIENT)"
                {
                    refused += 1;
                }
            }
            count
        };
        let publishing = async {
            let times = publish_steadily(&mut publisher, PUBLISHES_PER_PHASE, published).await;
            flooding.store(false, Ordering::Relaxed);
            times
        };
        let (frames, times) = tokio::join!(flood, publishing);
        flood_cpu += support::cpu_ticks(gateway.pid()) - ticks;
        published += PUBLISHES_PER_PHASE;
        sent += frames;
        flooded.extend(times);
    }

    // Measured first, asserted last, so a run without the limit shows its
    // timing too.
    let (quiet_median, flooded_median) = (median(&mut quiet), median(&mut flooded));
    let (quiet_p99, flooded_p99) = (p99(&mut quiet), p99(&mut flooded));
    eprintln!(
        "publish round trip over {} samples each: quiet median {quiet_median:?} p99 {quiet_p99:?}; \
         under a flood of {sent} frames x {PATTERNS_PER_FRAME} patterns ({refused} refused): \
         median {flooded_median:?} p99 {flooded_p99:?}; gateway CPU ticks quiet {quiet_cpu}, \
         flood {flood_cpu}",
        quiet.len()
    );
    // Within 2x of the quiet p99. Slack: the quiet p99 is floored at 5 ms.
    // Each flood frame costs the gateway ~6 ms of CPU (debug build; perf
    // shows it in the transport's JSON and pattern parsing, before the hub
    // is called, which refuses it without a lock), and on 2 cores a publish
    // that lands during one waits for a core: on an idle machine quiet p99
    // is ~2 ms and flood p99 ~5 ms. Below the floor that is CPU sharing,
    // not the hub. What this guards against is far above it: before the
    // limit a publish went unanswered for 10 s ("starved" above); with the
    // limit raised to 1,000,000 the flood's p99 was 59 ms against 23 ms quiet.
    let allowed = 2 * quiet_p99.max(Duration::from_millis(5));
    assert!(
        flooded_p99 <= allowed,
        "publish p99 under the flood {flooded_p99:?} > 2x quiet {quiet_p99:?} (allowed {allowed:?})"
    );

    assert!(sent >= MIN_FLOOD_FRAMES);
    assert_eq!(
        refused, sent,
        "every flood frame gets an error naming the limit"
    );

    // Its connection stays, with what it had: a small subscribe within the
    // limit (200 held + 10) is answered, and its old patterns still deliver.
    let late: Vec<String> = (0..10).map(|i| format!("late/{i}")).collect();
    flood_sink
        .send(Message::text(
            json!({"type": "subscribe", "topics": late}).to_string(),
        ))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    support::publish_one(&gateway, "own/7", json!("still here")).await;
    support::publish_one(&gateway, "late/3", json!("and here")).await;
    for topic in ["own/7", "late/3"] {
        let event = tokio::time::timeout(Duration::from_secs(10), replies.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event["topic"], topic, "{event}");
    }

    // Every normal client got every event.
    let expected = NORMAL_CLIENTS * published;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received.load(Ordering::Relaxed), expected);

    drop(flood_sink);
    reader.abort();
    for task in normal {
        task.abort();
    }
}

// ---------------------------------------------------------------------------
// The retained-state cap
// ---------------------------------------------------------------------------

const CAP: usize = 1024;

async fn state(gateway: &Gateway) -> Value {
    json_body(get(&gateway.url("/_switchyard/state")).await).await
}

fn retained(topic: &str, data: Value) -> Value {
    json!({"topic": topic, "data": data, "retain": true})
}

/// A JSON string whose raw JSON is `len` bytes (quotes included).
fn text_of(len: usize) -> Value {
    Value::from("x".repeat(len - 2))
}

async fn expect_full(gateway: &Gateway, body: Value) {
    let (status, answer) = publish(gateway, &body.to_string()).await;
    assert_eq!(status, 507, "{answer}");
    assert_eq!(
        answer["error"],
        format!("retained state is full: MAX_RETAINED_BYTES={CAP}")
    );
}

async fn expect_accepted(gateway: &Gateway, body: Value) {
    let (status, answer) = publish(gateway, &body.to_string()).await;
    assert_eq!(status, 202, "{answer}");
}

/// Retained state is counted as topic + data bytes: "cap/a" (5) + data.
async fn retained_cap_holds(gateway: &Gateway) {
    // 5 + 500 = 505.
    expect_accepted(gateway, retained("cap/a", text_of(500))).await;
    // 505 + 5 + 600 > 1024.
    expect_full(gateway, retained("cap/b", text_of(600))).await;

    // A batch whose last item passes the cap applies nothing: no seq taken,
    // no state changed, nothing delivered.
    let before = state(gateway).await;
    let batch = json!([
        retained("cap/c", json!(1)),
        {"topic": "cap/plain", "data": 2},
        retained("cap/d", text_of(400)),
        retained("cap/e", text_of(600)),
    ]);
    expect_full(gateway, batch).await;
    let after = state(gateway).await;
    assert_eq!(after["seq"], before["seq"], "no seq consumed");
    assert_eq!(after["state"], before["state"], "state unchanged");

    // Events that are not retained do not count.
    expect_accepted(gateway, json!({"topic": "cap/b", "data": text_of(900)})).await;
    // Replacing with smaller data frees room: 5 + 3 = 8, then 8 + 605 fits.
    expect_accepted(gateway, retained("cap/a", json!("x"))).await;
    expect_accepted(gateway, retained("cap/b", text_of(600))).await;
    // Up to the cap exactly: 8 + 605 + (5 + 406) = 1024.
    expect_accepted(gateway, retained("cap/c", text_of(406))).await;
    expect_full(gateway, retained("cap/d", json!(1))).await;
    // Full, a delete still works, and frees its bytes.
    expect_accepted(gateway, retained("cap/b", json!(null))).await;
    let now = state(gateway).await;
    let topics: Vec<&String> = now["state"].as_object().unwrap().keys().collect();
    assert_eq!(topics, ["cap/a", "cap/c"]);
    expect_accepted(gateway, retained("cap/d", text_of(500))).await;
}

#[tokio::test]
async fn the_retained_cap_answers_507_and_applies_nothing() {
    let cap = CAP.to_string();
    let gateway = Gateway::start(&[("MAX_RETAINED_BYTES", &cap)]).await;
    retained_cap_holds(&gateway).await;
}

async fn wait_for_redis(gateway: &Gateway) {
    for _ in 0..200 {
        if gateway.health().await.1["redis"] == "up" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis never came up: {:?}", gateway.health().await);
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn the_retained_cap_holds_through_redis() {
    let Some(url) = redis_url("the Redis retained cap") else {
        return;
    };
    let prefix = unique_prefix("cap");
    let cap = CAP.to_string();
    let gateway = Gateway::start(&[
        ("REDIS_URL", &url),
        ("REDIS_PREFIX", &prefix),
        ("MAX_RETAINED_BYTES", &cap),
    ])
    .await;
    wait_for_redis(&gateway).await;
    retained_cap_holds(&gateway).await;
}

/// Over MAX_PATTERNS_PER_CLIENT on the WebSocket query the hub refuses the
/// subscription; a subscribe frame over it gets an `error` frame and the
/// connection stays with what it had.
#[tokio::test]
async fn subscribe_frames_past_the_limit_get_an_error_and_keep_the_connection() {
    let gateway = Gateway::start(&[("MAX_PATTERNS_PER_CLIENT", "3")]).await;
    let mut client: Client = connect(&gateway, "?topics=a,b").await;
    assert_eq!(next_json(&mut client).await["type"], "hello");
    let subscribe =
        |topics: &[&str]| Message::text(json!({"type": "subscribe", "topics": topics}).to_string());
    client.send(subscribe(&["c", "d"])).await.unwrap();
    let reply = next_json(&mut client).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(
        reply["message"],
        "too many patterns: at most 3 per client (MAX_PATTERNS_PER_CLIENT)"
    );
    // Duplicates and held patterns do not count again.
    client.send(subscribe(&["a", "c", "c"])).await.unwrap();
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    support::publish_one(&gateway, "d", json!(1)).await;
    support::publish_one(&gateway, "c", json!(2)).await;
    let event = next_json(&mut client).await;
    assert_eq!(
        (event["topic"].as_str(), event["data"].as_i64()),
        (Some("c"), Some(2))
    );
}

// ---------------------------------------------------------------------------
// History bounded in bytes
// ---------------------------------------------------------------------------

/// With HISTORY_MAX_BYTES=1024 and frames of ~380 bytes, two events are kept
/// (the count bound, 1000, is far): resuming from before them is fresh,
/// from within them is served.
async fn history_is_bounded_in_bytes(gateway: &Gateway) {
    let mut last = 0;
    for i in 0..10 {
        last = support::publish_one(
            gateway,
            "h/t",
            Value::from(format!("{i}{}", "x".repeat(300))),
        )
        .await;
    }
    let epoch = state(gateway).await["epoch"].as_str().unwrap().to_owned();
    let poll = |since: u64| {
        let url = gateway.url(&format!("/_switchyard/state?epoch={epoch}&since={since}"));
        async move { json_body(get(&url).await).await }
    };
    let served = poll(last - 2).await;
    assert_eq!(served["resumed"], true, "{served}");
    assert_eq!(served["events"].as_array().unwrap().len(), 2);
    let lost = poll(last - 3).await;
    assert_eq!(
        lost["resumed"], false,
        "three frames do not fit in 1024 bytes: {lost}"
    );
}

#[tokio::test]
async fn history_is_bounded_in_bytes_in_memory() {
    let gateway = Gateway::start(&[("HISTORY_MAX_BYTES", "1024")]).await;
    history_is_bounded_in_bytes(&gateway).await;
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn history_is_bounded_in_bytes_through_redis() {
    let Some(url) = redis_url("the Redis history bound") else {
        return;
    };
    let prefix = unique_prefix("history");
    let gateway = Gateway::start(&[
        ("REDIS_URL", &url),
        ("REDIS_PREFIX", &prefix),
        ("HISTORY_MAX_BYTES", "1024"),
    ])
    .await;
    wait_for_redis(&gateway).await;
    history_is_bounded_in_bytes(&gateway).await;
}

/// A state hash written before the retained-bytes counter existed is
/// counted once, on the first publish (each entry as topic + stored frame),
/// and deleting such a topic frees exactly what it was counted as.
#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn an_older_redis_state_is_counted_once() {
    let Some(url) = redis_url("the Redis state migration") else {
        return;
    };
    let prefix = unique_prefix("legacy");
    let frame = json!({
        "type": "event", "seq": 1, "topic": "old/big", "data": "x".repeat(900),
        "retain": true, "ts": "2026-01-01T00:00:00.000Z"
    })
    .to_string();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    redis::pipe()
        .cmd("SET")
        .arg(format!("{prefix}epoch"))
        .arg("legacy")
        .cmd("SET")
        .arg(format!("{prefix}seq"))
        .arg(1)
        .cmd("RPUSH")
        .arg(format!("{prefix}history"))
        .arg(&frame)
        .cmd("HSET")
        .arg(format!("{prefix}state"))
        .arg("old/big")
        .arg(&frame)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let cap = CAP.to_string();
    let gateway = Gateway::start(&[
        ("REDIS_URL", &url),
        ("REDIS_PREFIX", &prefix),
        ("MAX_RETAINED_BYTES", &cap),
    ])
    .await;
    wait_for_redis(&gateway).await;
    let before = state(&gateway).await;
    assert_eq!(before["epoch"], "legacy");
    assert!(before["state"]["old/big"].is_object(), "{before}");
    // ~990 counted for old/big: 205 more does not fit.
    expect_full(&gateway, retained("cap/x", text_of(200))).await;
    expect_accepted(&gateway, retained("old/big", json!(null))).await;
    expect_accepted(&gateway, retained("cap/x", text_of(200))).await;
    let counted: i64 = redis::cmd("GET")
        .arg(format!("{prefix}retained_bytes"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(counted, 5 + 200);
}
