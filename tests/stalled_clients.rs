//! Broken and hostile clients on real sockets: readers that stop reading
//! (tiny receive buffers, never read) on every transport, a client cut off
//! for a full queue, shutdown with a stalled client, memory per idle
//! WebSocket after a large hello, and client frames read under a steady
//! flow of events.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{next_json, publish, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A connection to the gateway whose receive buffer is as small as the
/// kernel allows: it stalls the server's writes after a few KB.
async fn tiny_socket(gateway: &Gateway) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket.connect(gateway.addr).await.unwrap()
}

/// Sends a request head on a tiny socket and never reads.
async fn stalled_request(gateway: &Gateway, head: &str) -> TcpStream {
    let mut stream = tiny_socket(gateway).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

const WEBSOCKET_HEAD: &str = "GET /ws HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
const SSE_HEAD: &str = "GET /_switchyard/events HTTP/1.1\r\nHost: gateway\r\n\r\n";

async fn connections(gateway: &Gateway) -> u64 {
    gateway.health().await.1["connections"].as_u64().unwrap()
}

/// Polls /health until `connections` is `want`; answers how long it took.
async fn wait_connections(gateway: &Gateway, want: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = connections(gateway).await;
        if now == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "connections stayed {now}, wanted {want}, for {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `count` events of about `size` bytes on topic `t`, in
/// batches of 10.
async fn flood(gateway: &Gateway, count: usize, size: usize) {
    let payload = "x".repeat(size);
    for chunk in 0..count.div_ceil(10) {
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"topic": "t", "data": [chunk * 10 + i, payload]}))
            .collect();
        let (status, answer) = publish(gateway, &Value::from(batch).to_string()).await;
        assert_eq!(status, 202, "{answer}");
    }
}

/// Reads until EOF or a reset; answers the bytes read, or `None` when the
/// socket was still open after `limit`.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(total),
            Ok(Ok(n)) => total += n,
        }
    }
}

#[tokio::test]
async fn stalled_websocket_sse_and_long_poll_clients_are_closed_within_write_timeout() {
    const WRITE_TIMEOUT_SECS: u64 = 2;
    let gateway = Gateway::start(&[
        ("WRITE_TIMEOUT_SECS", "2"),
        // Room for everything published: the stall, not the queue, ends them.
        ("CLIENT_QUEUE", "5000"),
        ("HISTORY_SIZE", "5000"),
    ])
    .await;
    let (rss_before, _) = gateway.memory_kib();
    let _websocket = stalled_request(&gateway, WEBSOCKET_HEAD).await;
    let _sse = stalled_request(&gateway, SSE_HEAD).await;
    wait_connections(&gateway, 2, Duration::from_secs(5)).await;

    // 600 events of 4 KB: 2.4 MB each client cannot take.
    flood(&gateway, 600, 4000).await;
    // A long-poll from the start of history: its answer (2.4 MB) stalls too.
    let long_poll_head = "GET /_switchyard/state?since=0&wait=30 HTTP/1.1\r\nHost: gateway\r\n\r\n";
    let mut long_poll = stalled_request(&gateway, long_poll_head).await;
    let published = Instant::now();

    let took = wait_connections(&gateway, 0, Duration::from_secs(WRITE_TIMEOUT_SECS + 10)).await;
    println!("stalled WebSocket and SSE clients gone from /health after {took:?}");
    assert!(
        took <= Duration::from_secs(WRITE_TIMEOUT_SECS + 2),
        "stalled clients lingered {took:?}"
    );
    // Freed: out of the metrics too, and unsubscribed from the hub (their
    // queues and the events they pinned released).
    let metrics =
        support::text_body(support::get(&gateway.url("/_switchyard/metrics")).await).await;
    for line in [
        "switchyard_connections{transport=\"websocket\"} 0",
        "switchyard_connections{transport=\"sse\"} 0",
        "switchyard_subscribers 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    // The long-poll's socket was closed part-way through its answer: what
    // the kernel buffered arrives, then EOF (an open socket would deliver
    // all 2.4 MB and then wait for the next request).
    let limit = Duration::from_secs(WRITE_TIMEOUT_SECS + 2).saturating_sub(published.elapsed());
    tokio::time::sleep(limit).await;
    let read = read_to_close(&mut long_poll, Duration::from_secs(5))
        .await
        .expect("the stalled long-poll's socket is closed");
    assert!(
        read < 2_400_000,
        "the long-poll got its whole answer ({read} bytes)"
    );

    let (rss_after, _) = gateway.memory_kib();
    println!("gateway RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[tokio::test]
async fn an_sse_client_cut_off_for_a_full_queue_has_its_socket_closed() {
    // A long write timeout: only the full queue can end this client.
    let gateway = Gateway::start(&[("CLIENT_QUEUE", "8"), ("WRITE_TIMEOUT_SECS", "600")]).await;
    let mut sse = stalled_request(&gateway, SSE_HEAD).await;
    wait_connections(&gateway, 1, Duration::from_secs(5)).await;
    flood(&gateway, 400, 4000).await;
    assert_eq!(
        gateway
            .wait_for_log("client queue full; cutting it off", 1)
            .await
            .len(),
        1
    );
    let cut_off = Instant::now();
    let read = read_to_close(&mut sse, Duration::from_secs(5))
        .await
        .expect("the cut-off SSE client's socket is closed");
    println!(
        "cut-off SSE socket closed after {read} bytes, {:?}",
        cut_off.elapsed()
    );
    wait_connections(&gateway, 0, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sigterm_exits_promptly_with_stalled_clients() {
    let mut gateway = Gateway::start(&[
        ("SHUTDOWN_GRACE_SECS", "20"),
        ("CLIENT_QUEUE", "5000"),
        ("HISTORY_SIZE", "5000"),
    ])
    .await;
    let _websocket = stalled_request(&gateway, WEBSOCKET_HEAD).await;
    let _sse = stalled_request(&gateway, SSE_HEAD).await;
    wait_connections(&gateway, 2, Duration::from_secs(5)).await;
    flood(&gateway, 600, 4000).await;
    let _long_poll = stalled_request(
        &gateway,
        "GET /_switchyard/state?since=0&wait=30 HTTP/1.1\r\nHost: gateway\r\n\r\n",
    )
    .await;
    // Let every write reach its stall (WRITE_TIMEOUT_SECS is 30 here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        connections(&gateway).await,
        2,
        "still stalled, still counted"
    );

    let signalled = Instant::now();
    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    println!("exit {status:?} {took:?} after SIGTERM with stalled clients (grace 20 s)");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited on stalled clients: {took:?}"
    );
}

#[tokio::test]
async fn a_thousand_idle_websocket_clients_after_a_60_kb_hello() {
    const CLIENTS: usize = 1000;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let gateway = Gateway::start(&[("MAX_CONNECTIONS", "5000")]).await;
    // 20 retained topics of 3 KB: a 60 KB hello.
    let payload = "y".repeat(3000);
    let batch: Vec<Value> = (0..20)
        .map(|i| json!({"topic": format!("state/{i}"), "data": payload, "retain": true}))
        .collect();
    assert_eq!(
        publish(&gateway, &Value::from(batch).to_string()).await.0,
        202
    );

    /// A client that got the 60 KB hello and then sent a 60 KB frame of its
    /// own (answered with an error frame): both directions had a large
    /// frame to buffer.
    async fn hello(gateway: &Gateway) -> support::Client {
        let mut client = support::connect(gateway, "").await;
        let hello = next_json(&mut client).await;
        assert_eq!(hello["type"], "hello");
        assert_eq!(hello["state"].as_object().unwrap().len(), 20);
        let large = json!({"type": "no-such-frame", "pad": "p".repeat(60_000)}).to_string();
        client.send(Message::text(large)).await.unwrap();
        assert_eq!(next_json(&mut client).await["type"], "error");
        client
    }
    // Warm the allocator and the runtimes' threads with a few clients first.
    for _ in 0..20 {
        drop(hello(&gateway).await);
    }
    wait_connections(&gateway, 0, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (before, _) = gateway.memory_kib();

    // In waves of 100 at once, as dashboards reconnect after a deploy:
    // many hellos are being written at the same moment.
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS / 100 {
        let wave = (0..100).map(|_| hello(&gateway));
        clients.extend(futures_util::future::join_all(wave).await);
    }
    wait_connections(&gateway, CLIENTS as u64, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, _) = gateway.memory_kib();
    let per_client = (after.saturating_sub(before)) as f64 / CLIENTS as f64;
    println!(
        "{CLIENTS} idle WebSocket clients after a 60 KB hello and a 60 KB client frame: \
         RSS {before} -> {after} KiB, {per_client:.2} KiB per connection"
    );
    // 1.3 KiB measured; 4.2-6.4 KiB when every client's hello was a 60 KB
    // string of its own (the allocator kept their freed heap).
    assert!(
        per_client <= 3.0,
        "{per_client:.2} KiB per idle WebSocket client"
    );
    drop(clients);
}

#[tokio::test]
async fn client_frames_are_read_while_events_keep_flowing() {
    let gateway =
        Arc::new(Gateway::start(&[("CLIENT_QUEUE", "20000"), ("WRITE_TIMEOUT_SECS", "60")]).await);

    /// A client on a small receive buffer that reads one frame a
    /// millisecond, so the gateway soon has more for it than it takes.
    async fn slow_reader(gateway: &Gateway) -> support::Client {
        let stream = tiny_socket(gateway).await;
        let (mut client, _) = tokio_tungstenite::client_async(
            gateway.ws_url("/ws?topics=t"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .unwrap();
        assert_eq!(next_json(&mut client).await["type"], "hello");
        client
    }

    /// Sends a close and answers how long until the gateway's close arrives
    /// (still reading one frame a millisecond), with its code; `None` when
    /// it did not come within `limit`.
    async fn close_round_trip(
        client: &mut support::Client,
        limit: Duration,
    ) -> Option<(Duration, Option<u16>)> {
        let sent = Instant::now();
        client
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
        while sent.elapsed() < limit {
            match tokio::time::timeout(limit, client.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Some((sent.elapsed(), frame.map(|f| u16::from(f.code))))
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return Some((sent.elapsed(), None)),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    async fn read_slowly_for(client: &mut support::Client, duration: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + duration;
        let mut frames = 0;
        // Checked here: a timeout around `next` never fires while frames
        // keep arriving.
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, client.next()).await {
                Err(_) => return frames,
                Ok(Some(Ok(Message::Text(_)))) => frames += 1,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("the connection ended: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        frames
    }

    // Quiet: nothing flows.
    let mut quiet = slow_reader(&gateway).await;
    let (quiet_took, code) = close_round_trip(&mut quiet, Duration::from_secs(10))
        .await
        .expect("a quiet close is answered");
    assert_eq!(code, Some(1000));

    // Under load: a publisher keeps the client's queue from ever emptying.
    let mut busy = slow_reader(&gateway).await;
    let stop = Arc::new(AtomicBool::new(false));
    const FLOOD_FOR: Duration = Duration::from_secs(14);
    let publisher = {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let payload = "z".repeat(4000);
            let batch: Vec<Value> = (0..12)
                .map(|i| json!({"topic": "t", "data": [i, payload]}))
                .collect();
            let body = Value::from(batch).to_string();
            let mut published = 0;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_FOR {
                assert_eq!(publish(&gateway, &body).await.0, 202);
                published += 12;
                // A few thousand 4 KB events a second: more than the client
                // reads, so once the socket buffers on both sides are full
                // (a few MB) its queue grows; within CLIENT_QUEUE for the
                // two seconds before the close, past it well before the end
                // of the flood (a starved close would meet 1008 instead).
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            published
        })
    };
    let read = read_slowly_for(&mut busy, Duration::from_secs(2)).await;
    assert!(read > 100, "events flowed ({read} read)");
    // The gateway's close comes after what the socket buffers already
    // hold (a few MB, read at the same pace): a second or two. A close that
    // waits for the client's queue to empty never comes while it reads
    // slowly and the flood goes on.
    let answered = close_round_trip(&mut busy, FLOOD_FOR / 2).await;
    stop.store(true, Ordering::Relaxed);
    let Some((busy_took, code)) = answered else {
        publisher.abort();
        panic!("the close was not answered within {:?}", FLOOD_FOR / 2);
    };
    let published = publisher.await.unwrap();
    println!(
        "close answered in {quiet_took:?} quiet, {busy_took:?} while {published} events \
         were published (flood lasts at most {FLOOD_FOR:?})"
    );
    assert_eq!(code, Some(1000), "the gateway answered the close");
    assert!(
        busy_took < FLOOD_FOR / 2,
        "the close waited for the flood: {busy_took:?} (quiet {quiet_took:?})"
    );
}
