//! WebSocket upgrades through the proxy, as Streamlit's `/_stcore/stream`
//! uses them: handshake headers both ways, then every kind of frame.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use support::upstream::Upstream;
use support::{send, text_body, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect_streamlit_like(gateway: &Gateway) -> (Socket, http::HeaderMap) {
    let mut request = gateway
        .ws_url("/_stcore/stream")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "streamlit, c2Vzc2lvbi10b2tlbg, 3f0e".parse().unwrap(),
    );
    request.headers_mut().insert(
        "origin",
        format!("http://{}", gateway.addr).parse().unwrap(),
    );
    let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
    let (socket, response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .expect("upgrade through the gateway");
    (socket, response.headers().clone())
}

async fn next_message(socket: &mut Socket) -> Message {
    tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("valid frame")
}

#[tokio::test]
async fn text_binary_large_ping_and_close_pass_through() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let (mut socket, headers) = connect_streamlit_like(&gateway).await;
    assert_eq!(headers["sec-websocket-protocol"], "streamlit");

    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut socket).await, Message::text("hello"));

    let binary = Bytes::from_static(&[0, 1, 2, 254, 255]);
    socket.send(Message::Binary(binary.clone())).await.unwrap();
    assert_eq!(next_message(&mut socket).await, Message::Binary(binary));

    let large: Bytes = (0..(1 << 20))
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    socket.send(Message::Binary(large.clone())).await.unwrap();
    assert_eq!(next_message(&mut socket).await, Message::Binary(large));

    socket
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut socket).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    // Client-initiated close: the upstream echoes our code.
    let frame = CloseFrame {
        code: CloseCode::from(4001),
        reason: "client done".into(),
    };
    socket.send(Message::Close(Some(frame))).await.unwrap();
    match next_message(&mut socket).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected close, got {other:?}"),
    }
    let (_, _) = (upstream, gateway);
}

#[tokio::test]
async fn server_initiated_close_code_reaches_the_client() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let (mut socket, _) = connect_streamlit_like(&gateway).await;
    socket.send(Message::text("close-me:4002")).await.unwrap();
    match next_message(&mut socket).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason.as_str(), "server says bye");
        }
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_headers_travel_end_to_end() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET /_stcore/stream HTTP/1.1\r\n\
         Host: dash.example.com\r\n\
         Origin: https://dash.example.com\r\n\
         Connection: keep-alive, Upgrade, Sec-WebSocket-Extensions\r\n\
         Upgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Protocol: streamlit, tok\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains(
            &format!(
                "sec-websocket-accept: {}",
                derive_accept_key(key.as_bytes())
            )
            .to_ascii_lowercase()
        ),
        "{head}"
    );
    assert!(head.contains("sec-websocket-protocol: streamlit"), "{head}");
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate; client_max_window_bits"),
        "{head}"
    );

    let (_, _, headers) = upstream.requests().pop().expect("upstream saw the upgrade");
    assert_eq!(headers["host"], "dash.example.com");
    assert_eq!(headers["origin"], "https://dash.example.com");
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["connection"], "upgrade");
    assert_eq!(headers["sec-websocket-key"], key);
    assert_eq!(headers["sec-websocket-version"], "13");
    assert_eq!(headers["sec-websocket-protocol"], "streamlit, tok");
    assert_eq!(
        headers["sec-websocket-extensions"],
        "permessage-deflate; client_max_window_bits"
    );
}

#[tokio::test]
async fn a_refused_upgrade_passes_through_unchanged() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let request = http::Request::get(gateway.url("/refuse-upgrade"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send(request).await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["x-refused"], "yes");
    assert_eq!(text_body(response).await, "nope");
}

#[tokio::test]
async fn many_tunnels_at_once_stay_independent() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(connect_streamlit_like(&gateway).await.0);
    }
    for (i, socket) in sockets.iter_mut().enumerate() {
        socket
            .send(Message::text(format!("tunnel {i}")))
            .await
            .unwrap();
    }
    for (i, socket) in sockets.iter_mut().enumerate() {
        assert_eq!(
            next_message(socket).await,
            Message::text(format!("tunnel {i}"))
        );
    }
}

/// Proxied upgrades whose request headers say `upgrade` to the dashboard.
fn upgrades_seen(upstream: &Upstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|(_, _, headers)| headers.contains_key("upgrade"))
        .count()
}

/// Waits (up to `limit`) for the socket to end; answers how long that took.
async fn ended_within(socket: &mut Socket, limit: Duration) -> Option<std::time::Instant> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return Some(std::time::Instant::now())
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_tunnels_an_upgrade_gets_503_before_the_dashboard_hears_of_it() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url()), ("MAX_TUNNELS", "2")]).await;
    let (mut first, _) = connect_streamlit_like(&gateway).await;
    let (mut second, _) = connect_streamlit_like(&gateway).await;
    assert_eq!(upgrades_seen(&upstream), 2);

    let third = tokio_tungstenite::connect_async(gateway.ws_url("/_stcore/stream")).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("MAX_TUNNELS = 2"), "{body}");
        }
        Err(other) => panic!("expected a 503, got {other}"),
        Ok(_) => panic!("a third tunnel opened past MAX_TUNNELS=2"),
    }
    assert_eq!(
        upgrades_seen(&upstream),
        2,
        "the dashboard never saw the third"
    );

    // The two open tunnels are unaffected; closing one frees its place.
    second
        .send(Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut second).await,
        Message::Text("still here".into())
    );
    first.close(None).await.unwrap();
    assert!(ended_within(&mut first, Duration::from_secs(10))
        .await
        .is_some());
    drop(first);
    let closed = gateway.wait_for_log("tunnel closed", 1).await;
    assert_eq!(closed.len(), 1, "the closed tunnel was let go");
    let (mut again, _) = connect_streamlit_like(&gateway).await;
    again
        .send(Message::Text("room again".into()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut again).await,
        Message::Text("room again".into())
    );
}

/// TUNNEL_IDLE_SECS=2: a tunnel with no byte either way is closed after
/// about 2 s, not before; one that talks every 300 ms stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_and_an_active_one_is_not() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[
        ("DASHBOARD_URL", &upstream.url()),
        ("TUNNEL_IDLE_SECS", "2"),
    ])
    .await;
    let (mut silent, _) = connect_streamlit_like(&gateway).await;
    let opened = std::time::Instant::now();
    let (mut active, _) = connect_streamlit_like(&gateway).await;
    let watcher = tokio::spawn(async move {
        ended_within(&mut silent, Duration::from_secs(15))
            .await
            .map(|at| at - opened)
    });
    for i in 0..15 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = format!("tick {i}");
        active
            .send(Message::Text(text.clone().into()))
            .await
            .unwrap();
        assert_eq!(next_message(&mut active).await, Message::Text(text.into()));
    }
    let silent_for = watcher
        .await
        .unwrap()
        .expect("the silent tunnel closed within 15 s");
    eprintln!("silent tunnel closed after {silent_for:?}; the active one is still open");
    assert!(
        silent_for >= Duration::from_millis(1900) && silent_for < Duration::from_secs(5),
        "silent tunnel closed after {silent_for:?}"
    );
    // The active one outlived the silent one by far (4.5 s of ticks).
    active.send(Message::Text("last".into())).await.unwrap();
    assert_eq!(
        next_message(&mut active).await,
        Message::Text("last".into())
    );
    let idle = gateway.wait_for_log("tunnel timed out", 1).await;
    assert_eq!(idle.len(), 1, "only the silent tunnel timed out");
    assert_eq!(idle[0]["reason"], "idle");
}

/// WRITE_TIMEOUT_SECS=2: a client with a tiny receive buffer that never
/// reads while the dashboard floods it. The tunnel is closed and freed, and
/// the dashboard side sees the close within the timeout + 2 s; a quiet
/// tunnel beside it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_client_takes_no_bytes_is_closed_after_the_write_timeout() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[
        ("DASHBOARD_URL", &upstream.url()),
        ("WRITE_TIMEOUT_SECS", "2"),
        ("MAX_TUNNELS", "2"),
    ])
    .await;
    let (mut quiet, _) = connect_streamlit_like(&gateway).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let (mut stalled, _) =
        tokio_tungstenite::client_async(gateway.ws_url("/_stcore/stream"), stream)
            .await
            .expect("upgrade through the gateway");
    stalled.send(Message::Text("flood".into())).await.unwrap();
    let flood_started = std::time::Instant::now();
    // Never read `stalled` again.

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let ended = loop {
        if let Some(&at) = upstream.websockets_ended().first() {
            break at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard never saw the stalled tunnel close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = ended - flood_started;
    eprintln!("stalled tunnel: dashboard side closed {after:?} after the flood began");
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(4),
        "dashboard side closed {after:?} after the client stopped reading"
    );
    let timed_out = gateway.wait_for_log("tunnel timed out", 1).await;
    assert_eq!(timed_out.len(), 1);
    assert_eq!(timed_out[0]["reason"], "write stalled");
    assert_eq!(timed_out[0]["side"], "client");

    // The quiet tunnel is still open, and the stalled one's place is free.
    quiet.send(Message::Text("alive".into())).await.unwrap();
    assert_eq!(
        next_message(&mut quiet).await,
        Message::Text("alive".into())
    );
    let (mut another, _) = connect_streamlit_like(&gateway).await;
    another.send(Message::Text("freed".into())).await.unwrap();
    assert_eq!(
        next_message(&mut another).await,
        Message::Text("freed".into())
    );
    drop(stalled);
}
