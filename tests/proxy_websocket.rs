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
