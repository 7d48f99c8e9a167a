//! Early answers arrive: when the gateway answers before it has read a
//! request's body (413, 401 from publish; 502 from the proxy while a client
//! uploads), it lingers on the rest of the body so the client reads the
//! status, not a TCP reset. Raw TCP clients that write their whole body
//! before reading, the way a simple HTTP client does.

mod support;

use std::time::Duration;

use support::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How much chunked body each client writes: far past MAX_MESSAGE_BYTES.
const BODY_BYTES: usize = 8 << 20;

/// What a client that writes `head` plus a `BODY_BYTES` chunked body, and
/// only then reads, gets back: the status line, or what went wrong.
async fn write_all_then_read(gateway: &Gateway, head: &str) -> String {
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut message = head.as_bytes().to_vec();
    let mut written = 0;
    while written < BODY_BYTES {
        message.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        message.extend_from_slice(&chunk);
        message.extend_from_slice(b"\r\n");
        written += chunk.len();
    }
    message.extend_from_slice(b"0\r\n\r\n");
    let write = tokio::time::timeout(Duration::from_secs(20), stream.write_all(&message)).await;
    match write {
        Err(_) => return "write timed out".into(),
        Ok(Err(error)) => return format!("write failed: {error}"),
        Ok(Ok(())) => {}
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Err(_) => return "read timed out".into(),
            Ok(Err(error)) => return format!("read failed: {error}"),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("empty answer").to_owned()
}

fn chunked_head(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         {extra}Transfer-Encoding: chunked\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_oversized_chunked_publishes_all_read_413() {
    let gateway = Gateway::start(&[("MAX_MESSAGE_BYTES", "65536")]).await;
    let head = chunked_head("/_switchyard/publish", "");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(write_all_then_read(&gateway, &head).await);
    }
    let wrong: Vec<_> = statuses
        .iter()
        .filter(|s| !s.starts_with("HTTP/1.1 413"))
        .collect();
    assert!(
        wrong.is_empty(),
        "not a 413: {wrong:?} (of {})",
        statuses.len()
    );
    // Lingering is bounded and logged.
    let lingered = gateway.wait_for_log("lingering body discarded", 20).await;
    assert_eq!(lingered.len(), 20, "one drain per refused body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_publishes_with_a_large_body_read_401() {
    let gateway = Gateway::start(&[("PUBLISH_TOKEN", "secret-token-1234")]).await;
    let head = chunked_head("/_switchyard/publish", "Authorization: Bearer wrong\r\n");
    for _ in 0..20 {
        let status = write_all_then_read(&gateway, &head).await;
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_error_during_an_upload_reaches_the_client() {
    // A dashboard that was up and is gone: every upload gets 502 at once,
    // before its body has been read.
    let upstream = support::upstream::Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    gateway.wait_upstream("up").await;
    upstream.kill().await;
    let head = chunked_head("/upload", "");
    for _ in 0..20 {
        let status = write_all_then_read(&gateway, &head).await;
        assert!(
            status.starts_with("HTTP/1.1 502") || status.starts_with("HTTP/1.1 503"),
            "{status}"
        );
    }
}
