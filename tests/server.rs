//! Server hygiene and lifecycle: built-in routes without a dashboard,
//! slowloris, header limits, keep-alive, h2c, JSON logs, graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::upstream::Upstream;
use support::{get, json_body, text_body, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn without_a_dashboard_the_console_is_at_root_and_other_paths_404() {
    let gateway = Gateway::start(&[]).await;
    let response = get(&gateway.url("/")).await;
    assert_eq!(response.status(), 200);
    assert!(text_body(response).await.contains("DASHBOARD_URL"));

    assert_eq!(get(&gateway.url("/somewhere")).await.status(), 404);
    let response = get(&gateway.url("/_switchyard/nothing")).await;
    assert_eq!(response.status(), 404);
    assert!(json_body(response).await["error"].is_string());

    let (status, health) = gateway.health().await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["upstream"], "none");
    assert_eq!(health["websocket_enabled"], true);
    assert_eq!(health["connections"], 0);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(humantime::parse_rfc3339(health["timestamp"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn reserved_paths_are_never_proxied() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[
        ("DASHBOARD_URL", &upstream.url()),
        ("WEBSOCKET_ENABLED", "false"),
    ])
    .await;
    gateway.wait_upstream("up").await;
    let response = get(&gateway.url("/ws")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_body(response).await["error"], "websocket disabled");
    assert_eq!(get(&gateway.url("/_switchyard/x")).await.status(), 404);
    assert_eq!(gateway.health().await.1["websocket_enabled"], false);
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

#[tokio::test]
async fn a_slowloris_client_is_dropped_within_10_seconds() {
    let gateway = Gateway::start(&[]).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_after = None;
    for byte in head.iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        // A closed connection reads as EOF (or an error) instead of timing out.
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => {} // e.g. a 408 answer; the close follows
            Err(_) => {}
        }
    }
    let closed_after = closed_after.expect("the gateway never closed the slow connection");
    assert!(
        closed_after <= Duration::from_secs(12),
        "closed after {closed_after:?}"
    );
    assert!(
        closed_after >= Duration::from_secs(9),
        "closed after {closed_after:?}"
    );
}

/// After a response the head deadline starts again: a keep-alive
/// connection left idle, and one that dribbles its next head, are closed
/// 10 s after the end of their last response; a response that is still
/// streaming (SSE) holds no deadline however long it lasts.
#[tokio::test]
async fn the_head_deadline_restarts_after_each_response_and_spares_a_long_one() {
    let gateway = Gateway::start(&[]).await;

    /// Sends one request and reads its whole (JSON) answer.
    async fn one_request(stream: &mut TcpStream) {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before its answer");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }

    /// Until the gateway closes `stream` (EOF, error or a refused write),
    /// writing a byte of `dribble` every 500 ms when given one; 20 s at most.
    async fn closed(mut stream: TcpStream, dribble: Option<&[u8]>) -> Instant {
        let mut bytes = dribble.unwrap_or_default().iter().cycle();
        let mut buf = [0u8; 256];
        let give_up = Instant::now() + Duration::from_secs(20);
        while Instant::now() < give_up {
            if let (Some(_), Some(byte)) = (dribble, bytes.next()) {
                if stream.write_all(&[*byte]).await.is_err() {
                    return Instant::now();
                }
            }
            match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
                Ok(Ok(_)) | Err(_) => {}
            }
        }
        give_up
    }

    let mut idle = TcpStream::connect(gateway.addr).await.unwrap();
    let mut slow = TcpStream::connect(gateway.addr).await.unwrap();
    // Both connections' first requests come a few seconds after their
    // accept, so a deadline counted from the accept would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    one_request(&mut idle).await;
    let idle_answered = Instant::now();
    one_request(&mut slow).await;
    let slow_answered = Instant::now();

    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /_switchyard/events?topics=late HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let streaming = async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("still here") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    let publish_late = async {
        tokio::time::sleep(Duration::from_secs(13)).await;
        support::publish_one(&gateway, "late", serde_json::json!("still here")).await;
    };
    let (idle_closed, slow_closed, (streamed, ())) = tokio::join!(
        closed(idle, None),
        closed(
            slow,
            Some(b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        ),
        async {
            tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(streaming, publish_late)
            })
            .await
            .unwrap()
        }
    );
    for (what, after) in [
        ("idle", idle_closed - idle_answered),
        ("slow", slow_closed - slow_answered),
    ] {
        assert!(
            after >= Duration::from_secs(9) && after <= Duration::from_secs(12),
            "{what}: closed {after:?} after its answer"
        );
    }
    assert!(
        streamed,
        "the event stream was closed before its late event"
    );
}

/// A connection that sends nothing at all is closed like a slow one: it
/// would otherwise hold one of MAX_HTTP_CONNECTIONS until the drain (a
/// few thousand silent connects would lock everyone out).
#[tokio::test]
async fn a_silent_connection_is_dropped_within_10_seconds() {
    let gateway = Gateway::start(&[]).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
    let closed_after = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection was not closed within 20 s: {read:?}"
    );
    assert!(
        closed_after >= Duration::from_secs(9) && closed_after <= Duration::from_secs(12),
        "closed after {closed_after:?}"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_keep_alive_reuses_a_connection() {
    let gateway = Gateway::start(&[]).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let huge = "a".repeat(100 * 1024);
    let request = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 431"));

    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let request = Request::get("/health")
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
}

/// The header count bound: MAX_HEADERS headers are served, one more gets
/// 431 (and the gateway goes on serving).
#[tokio::test]
async fn a_request_past_max_headers_gets_431() {
    let gateway = Gateway::start(&[]).await;
    let max = switchyard::server::MAX_HEADERS;
    let head = |count: usize| {
        let mut head = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
        for i in 1..count {
            head.push_str(&format!("X-Header-{i}: {i}\r\n"));
        }
        head + "Connection: close\r\n\r\n"
    };
    for (count, status) in [(max - 1, "200"), (max, "200"), (max + 1, "431")] {
        // `count` headers with Host, then `Connection`.
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream.write_all(head(count - 1).as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{count} headers: {answer}"
        );
    }
    assert_eq!(gateway.health().await.0, 200);
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("http://dash.example/inspect")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let hosts: Vec<_> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0] == "host")
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0][1], "dash.example");
}

#[tokio::test]
async fn startup_line_shows_config_with_secrets_masked() {
    let gateway = Gateway::start(&[
        ("PUBLISH_TOKEN", "hunter2-secret"),
        ("REDIS_URL", "redis://:pw@127.0.0.1:1/"),
    ])
    .await;
    let logs = gateway.logs().join("\n");
    assert!(!logs.contains("hunter2-secret"), "{logs}");
    assert!(!logs.contains(":pw@"), "{logs}");
    let config = gateway.log_events("configuration");
    assert!(config[0]["config"]
        .as_str()
        .unwrap()
        .contains("publish_token"));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_response_finish_then_exits_0() {
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::start(&[
        ("DASHBOARD_URL", &upstream.url()),
        ("SHUTDOWN_GRACE_SECS", "10"),
    ])
    .await;
    let slow = tokio::spawn({
        let url = gateway.url("/slow?ms=2000");
        async move {
            let response = get(&url).await;
            (response.status(), text_body(response).await)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    gateway.signal("TERM");

    // Stops accepting at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(gateway.addr).await.is_err(),
        "still accepting after SIGTERM"
    );

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow hello");
    let exit = gateway.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert!(!gateway.wait_for_log("drained; bye", 1).await.is_empty());
}

#[tokio::test]
async fn sigterm_closes_tunnels_and_exits_well_within_the_grace() {
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::start(&[
        ("DASHBOARD_URL", &upstream.url()),
        ("SHUTDOWN_GRACE_SECS", "30"),
    ])
    .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(gateway.ws_url("/_stcore/stream"))
        .await
        .unwrap();
    socket.send(Message::text("ping?")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("ping?")
    );

    let signalled = Instant::now();
    gateway.signal("INT");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "tunnel still open after SIGINT");
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "waited for the grace instead of closing tunnels"
    );
}

#[tokio::test]
async fn the_console_and_client_js_are_served_from_the_binary() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    // With a dashboard, `/` is the dashboard's and the console moves.
    assert_eq!(
        text_body(get(&gateway.url("/")).await).await,
        "hello from upstream\n"
    );
    let console = get(&gateway.url("/_switchyard/")).await;
    assert_eq!(console.status(), 200);
    let page = text_body(console).await;
    assert!(page.contains("/_switchyard/client.js") && page.contains("Retained state"));
    let redirect = get(&gateway.url("/_switchyard")).await;
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/_switchyard/");

    let script = get(&gateway.url("/_switchyard/client.js")).await;
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let classic = text_body(script).await;
    assert!(classic.contains("root.Switchyard = Switchyard"));
    assert!(
        !classic.contains("export default"),
        "a classic script cannot export"
    );
    let module = text_body(get(&gateway.url("/_switchyard/client.js?esm")).await).await;
    assert!(module.ends_with("export const connect = globalThis.Switchyard.connect;\n"));

    // Both parse, as a script and as a module, where node is installed.
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = std::env::temp_dir().join(format!("switchyard-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in [("client.js", &classic), ("client.mjs", &module)] {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let check = std::process::Command::new("node")
                .arg("--check")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("node not installed: skipping the parse check of client.js");
    }
    assert!(upstream
        .requests()
        .iter()
        .all(|(_, uri, _)| !uri.starts_with("/_switchyard")));
}

/// Voluntary context switches of each `http-loop-N` thread: a loop
/// that serves connections sleeps and wakes in epoll many times.
fn loop_wakeups(pid: u32) -> Vec<(String, u64)> {
    let mut loops = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with("http-loop-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        loops.push((name.trim().to_owned(), switches));
    }
    loops.sort();
    loops
}

/// One event loop per TOKIO_WORKER_THREADS, each on its own listener of
/// the same port (SO_REUSEPORT): connections are spread over all of them,
/// every one is answered, a drain still waits for each loop's requests,
/// and a second gateway cannot join the port.
#[tokio::test]
async fn event_loops_share_the_port_and_a_second_gateway_cannot_join_it() {
    let gateway = Gateway::start(&[("TOKIO_WORKER_THREADS", "3")]).await;
    // The listeners take connections from the `listening` line on; the
    // threads that serve them may start a moment later.
    let started = Instant::now();
    while loop_wakeups(gateway.pid()).len() < 3 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = loop_wakeups(gateway.pid());
    let names: Vec<&str> = before.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["http-loop-1", "http-loop-2", "http-loop-3"]);

    // 60 connections from 60 source ports: each loop gets some.
    let mut requests = Vec::new();
    for _ in 0..60 {
        let addr = gateway.addr;
        requests.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    for request in requests {
        let answer = request.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let after = loop_wakeups(gateway.pid());
    for ((name, was), (_, now)) in before.iter().zip(&after) {
        assert!(now > was, "{name} served nothing: {before:?} -> {after:?}");
    }

    let port = gateway.addr.port().to_string();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env_clear()
        .env("PORT", &port)
        .env("HOST", "127.0.0.1")
        .env("TOKIO_WORKER_THREADS", "3")
        .output()
        .unwrap();
    assert_eq!(
        second.status.code(),
        Some(1),
        "the port is the first gateway's"
    );
    assert!(String::from_utf8_lossy(&second.stdout).contains("cannot serve"));
    assert_eq!(get(&gateway.url("/health")).await.status(), 200);
}
