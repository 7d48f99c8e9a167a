//! Events written to a WebSocket client's socket by the fan-out itself
//! (while the client's task is idle): a client whose socket keeps filling
//! up gets every event once, whole and in order, whether the fan-out wrote
//! all of a frame, part of it (the task writes the rest) or none.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::{connect, next_json, publish_one, Gateway};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_slow_reader_gets_every_directly_written_event_whole_and_in_order() {
    let gateway = Gateway::start(&[("CLIENT_QUEUE", "1024")]).await;
    // The slow one: a receive buffer as small as the kernel allows, so the
    // server's writes to it keep stopping part-way through a frame.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut slow, _) = tokio_tungstenite::client_async(gateway.ws_url("/ws"), stream)
        .await
        .unwrap();
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
