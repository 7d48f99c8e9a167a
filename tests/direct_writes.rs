//! Events written to a WebSocket client's socket by the fan-out itself
//! (while the client's task is idle): a client whose socket keeps filling
//! up gets every event once, whole and in order, whether the fan-out wrote
//! all of a frame, part of it (the task writes the rest) or none.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{connect, next_json, publish_one, Client, Gateway};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_slow_reader_gets_every_directly_written_event_whole_and_in_order() {
    let gateway = Gateway::start(&[("CLIENT_QUEUE", "1024")]).await;
    // The slow one: a receive buffer as small as the kernel allows, so the
    // server's writes to it keep stopping part-way through a frame.
    let mut slow = connect_tiny(&gateway).await;
    let mut fast = connect(&gateway, "").await;
    assert_eq!(next_json(&mut slow).await["type"], "hello");
    assert_eq!(next_json(&mut fast).await["type"], "hello");

    const EVENTS: u64 = 300;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < EVENTS {
            let message = tokio::time::timeout(Duration::from_secs(10), slow.next())
                .await
                .expect("an event within 10 s")
                .expect("open")
                .expect("a valid frame");
            let Message::Text(text) = message else {
                continue;
            };
            let event: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
            let seq = event["seq"].as_u64().unwrap();
            assert_eq!(event["data"][0], seq, "the frame of seq {seq} is whole");
            seqs.push(seq);
            // Reads slowly: the server finds the socket full again and again.
            if seqs.len() % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        seqs
    });
    // One event per publish: each is fanned out alone, the direct path.
    let payload = "y".repeat(3000);
    for seq in 1..=EVENTS {
        assert_eq!(publish_one(&gateway, "t", json!([seq, payload])).await, seq);
        let event = next_json(&mut fast).await;
        assert_eq!(event["seq"], seq);
    }
    let seqs = reader.await.unwrap();
    assert_eq!(seqs, (1..=EVENTS).collect::<Vec<u64>>());
    assert!(gateway
        .log_events("client queue full; cutting it off")
        .is_empty());
}

/// What the fan-out logs when a direct write stopped inside a delivery.
const STOPPED_INSIDE: &str = "direct writes stopped inside a delivery";

/// A client with a receive buffer as small as the kernel allows.
async fn connect_tiny(gateway: &Gateway) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (client, _) = tokio_tungstenite::client_async(gateway.ws_url("/ws"), stream)
        .await
        .unwrap();
    client
}

/// Checks that `event` is the whole event of `seq` carrying `payload`.
fn assert_whole(event: &serde_json::Value, seq: u64, payload: &str) {
    assert_eq!(event["seq"], seq);
    assert_eq!(event["data"][0], seq);
    assert_eq!(
        event["data"][1].as_str().map(str::len),
        Some(payload.len()),
        "the frame of seq {seq} is whole"
    );
}

#[tokio::test]
async fn a_direct_write_stopped_mid_frame_is_finished_by_the_task_and_the_next_frame_is_intact() {
    // An event far larger than any socket buffer (the kernel's send buffer
    // tops out at tcp_wmem's 4 MiB): the one direct write of it cannot
    // take it whole, and stops inside its frame.
    let gateway = Gateway::start(&[("MAX_MESSAGE_BYTES", "16777216")]).await;
    let big = "z".repeat(6 << 20);
    let small = "s".repeat(100);
    let mut slow = connect_tiny(&gateway).await;
    assert_eq!(next_json(&mut slow).await["type"], "hello");
    let mut seq = 0;
    let mut stopped_inside = false;
    // Tries a few times: the event must find the client's task idle (the
    // sink attached, its last write given back), which a busy machine can
    // delay past our ping's pong.
    for _ in 0..3 {
        // The task attaches the socket to its queue right after the hello,
        // before it reads another frame: once the pong is back, events go
        // out through direct writes.
        slow.send(Message::Ping(b"sync".to_vec().into()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), slow.next())
                .await
                .expect("a pong within 5 s")
                .expect("open")
                .expect("a valid frame");
            if matches!(message, Message::Pong(_)) {
                break;
            }
        }
        // Not reading: the fan-out writes what the socket takes, and leaves
        // the rest of the frame to the client's task.
        seq = publish_one(&gateway, "t", json!([seq + 1, big])).await;
        if wait_for_log_within(&gateway, STOPPED_INSIDE, Duration::from_secs(3)).await {
            stopped_inside = true;
            break;
        }
        assert_whole(&next_json(&mut slow).await, seq, &big);
    }
    assert!(stopped_inside, "no direct write stopped inside a frame");
    // While the task finishes that frame, the next event is queued behind
    // it; once the task gives the socket back, the one after is written
    // directly again. Each arrives whole, in order.
    let second = publish_one(&gateway, "t", json!([seq + 1, small])).await;
    assert_whole(&next_json(&mut slow).await, seq, &big);
    assert_whole(&next_json(&mut slow).await, second, &small);
    let third = publish_one(&gateway, "t", json!([second + 1, small])).await;
    assert_whole(&next_json(&mut slow).await, third, &small);
    assert!(gateway
        .log_events("client queue full; cutting it off")
        .is_empty());
}

/// Whether a log line with `message` shows up within `limit`.
async fn wait_for_log_within(gateway: &Gateway, message: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while gateway.log_events(message).is_empty() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
