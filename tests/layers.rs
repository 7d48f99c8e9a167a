//! The tower layers (src/layers/), seen from outside: gzip for the console
//! and client.js only, a request id on every request (proxied ones carry
//! it to the dashboard and back), and MAX_HTTP_CONNECTIONS (503 past it,
//! and back once a connection closes).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use support::upstream::Upstream;
use support::{body_bytes, get, send, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Empty<bytes::Bytes>> {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Empty::new()).unwrap()
}

#[tokio::test]
async fn pages_are_gzipped_when_asked_and_events_never_are() {
    let gateway = Gateway::start(&[]).await;
    let plain = body_bytes(get(&gateway.url("/_switchyard/client.js")).await).await;
    assert!(plain.len() > 4096, "client.js is {} bytes", plain.len());

    for path in ["/_switchyard/client.js", "/_switchyard/", "/"] {
        let response = send(get_with(&gateway.url(path), &[("accept-encoding", "gzip")])).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-encoding"], "gzip", "{path}");
        let zipped = body_bytes(response).await;
        assert_eq!(&zipped[..2], &[0x1f, 0x8b], "{path}: not a gzip stream");
        assert!(zipped.len() < plain.len() / 2 || path != "/_switchyard/client.js");
    }

    // Without Accept-Encoding: as it is.
    let response = send(get_with(&gateway.url("/_switchyard/client.js"), &[])).await;
    assert!(!response.headers().contains_key("content-encoding"));

    // JSON and the event stream are never compressed.
    for path in ["/_switchyard/config", "/_switchyard/events"] {
        let response = send(get_with(&gateway.url(path), &[("accept-encoding", "gzip")])).await;
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            !response.headers().contains_key("content-encoding"),
            "{path} was compressed"
        );
    }
}

#[tokio::test]
async fn reserved_routes_carry_a_request_id() {
    let gateway = Gateway::start(&[]).await;
    let first = get(&gateway.url("/_switchyard/config")).await;
    let second = get(&gateway.url("/_switchyard/config")).await;
    let id = |r: &http::Response<_>| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id(&first).starts_with("sy-"), "{}", id(&first));
    assert_ne!(id(&first), id(&second));

    // One the client (or an edge proxy) sent is kept.
    let echoed = send(get_with(
        &gateway.url("/_switchyard/config"),
        &[("x-request-id", "edge-42")],
    ))
    .await;
    assert_eq!(echoed.headers()["x-request-id"], "edge-42");

    // Every route has one, not only the reserved ones.
    let health = get(&gateway.url("/health")).await;
    assert!(id(&health).starts_with("sy-"), "{}", id(&health));
}

/// The id the upstream saw on the request whose id the client got back.
fn seen_by_upstream(upstream: &Upstream, id: &str) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|(_, _, headers)| headers.get("x-request-id").is_some_and(|v| v == id))
        .count()
}

#[tokio::test]
async fn proxied_requests_carry_a_request_id_to_the_dashboard_and_back() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    let id = |r: &http::Response<_>| r.headers()["x-request-id"].to_str().unwrap().to_owned();

    let first = get(&gateway.url("/page")).await;
    let second = get(&gateway.url("/page")).await;
    assert_eq!(first.status(), 200);
    let (first, second) = (id(&first), id(&second));
    println!("ours: {first}, {second}");
    assert!(first.starts_with("sy-"), "{first}");
    assert_ne!(first, second);
    assert_eq!(
        seen_by_upstream(&upstream, &first),
        1,
        "the dashboard saw {first}"
    );
    assert_eq!(seen_by_upstream(&upstream, &second), 1);

    // A client's (or an edge proxy's) sane id is kept, both ways.
    let kept = send(get_with(
        &gateway.url("/page"),
        &[("x-request-id", "edge-42")],
    ))
    .await;
    assert_eq!(kept.headers()["x-request-id"], "edge-42");
    assert_eq!(seen_by_upstream(&upstream, "edge-42"), 1);

    // One that is not sane is replaced, both ways.
    let long = "x".repeat(200);
    for odd in ["two words", "<b>", long.as_str()] {
        let replaced = send(get_with(&gateway.url("/page"), &[("x-request-id", odd)])).await;
        let ours = id(&replaced);
        assert!(ours.starts_with("sy-"), "{odd:?} was kept as {ours}");
        assert_eq!(seen_by_upstream(&upstream, &ours), 1);
        assert_eq!(seen_by_upstream(&upstream, odd), 0);
    }
}

/// A keep-alive HTTP/1.1 connection to the gateway.
async fn keep_alive(gateway: &Gateway) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(gateway.addr).await.expect("connect");
    let (sender, link) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(link);
    sender
}

async fn status_on(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) -> u16 {
    let request = Request::get("/page")
        .header("host", "gateway")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = sender.send_request(request).await.expect("an answer");
    let status = answer.status().as_u16();
    body_bytes(answer).await;
    status
}

/// One request on a new connection, written and read raw (`Connection:
/// close`): everything the gateway sent before it closed.
async fn one_shot(gateway: &Gateway) -> String {
    let mut stream = TcpStream::connect(gateway.addr).await.expect("connect");
    stream
        .write_all(b"GET /page HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn past_max_http_connections_a_new_connection_gets_503_until_one_closes() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[
        ("DASHBOARD_URL", &upstream.url()),
        ("MAX_HTTP_CONNECTIONS", "2"),
    ])
    .await;
    let mut first = keep_alive(&gateway).await;
    let mut second = keep_alive(&gateway).await;
    assert_eq!(status_on(&mut first).await, 200);
    assert_eq!(status_on(&mut second).await, 200);

    let refused = one_shot(&gateway).await;
    println!("the third connection got:\n{refused}");
    let (head, body) = refused.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
    let error = body["error"].as_str().expect("{\"error\": …}");
    assert!(error.contains("MAX_HTTP_CONNECTIONS = 2"), "{error}");
    let warned = gateway
        .wait_for_log(
            "MAX_HTTP_CONNECTIONS reached: new connections are answered 503 and closed",
            1,
        )
        .await;
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0]["max_http_connections"], 2);

    // The two open ones are unaffected.
    assert_eq!(status_on(&mut first).await, 200);
    assert_eq!(status_on(&mut second).await, 200);

    // One closes: its place is free again.
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = one_shot(&gateway).await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused 5 s after a connection closed: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_on(&mut first).await, 200);
}
