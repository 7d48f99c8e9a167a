//! The broadcaster's WebSocket framing on the real gateway, byte by byte:
//! raw masked frames over a real TCP socket (a library client would refuse
//! to send most of them), and what the gateway answers.
//!
//! Close codes (RFC 6455 §7.4): a code the RFC forbids on the wire (1005,
//! 1006, 1015), an unassigned or reserved one (0–999, 1004, 1016–2999,
//! 5000+), a 1-byte close payload: 1002, never echoed; a reason that is not
//! UTF-8: 1007. A control frame inside a fragmented message does not count
//! against MAX_MESSAGE_BYTES. A message in progress must complete within
//! WRITE_TIMEOUT_SECS, whatever pings and pongs arrive meanwhile: 1008.
//! The 101 and the hello go out in one write.

mod support;

use std::time::Duration;

use support::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One frame from the server.
#[derive(Debug)]
struct ServerFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl ServerFrame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(self.opcode, 0x1, "a text frame, got {self:?}");
        serde_json::from_slice(&self.payload).expect("a JSON text frame")
    }
}

/// A connection that has sent a WebSocket upgrade request for `/ws`.
async fn send_upgrade(gateway: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(gateway.addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gateway.addr
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// A client that writes raw frames.
struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects to `/ws` and reads the 101 and the hello.
    async fn connect(gateway: &Gateway) -> RawClient {
        let mut stream = send_upgrade(gateway).await;
        // The response head, byte by byte, so nothing past it is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream.read_u8().await.expect("response head");
            head.push(byte);
        }
        let head = String::from_utf8(head).expect("ASCII head");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key of RFC 6455's example: {head}"
        );
        let mut client = RawClient { stream };
        let hello = client.next_frame().await.expect("hello");
        assert_eq!(hello.json()["type"], "hello");
        client
    }

    /// Sends one masked frame.
    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.expect("send a frame");
    }

    /// Sends a close frame with this payload.
    async fn close_with(&mut self, payload: &[u8]) {
        self.send(true, 0x8, payload).await;
    }

    /// The next frame, or `None` when the socket closed first.
    async fn next_frame(&mut self) -> Option<ServerFrame> {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).await.ok()?;
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7F {
            126 => u64::from(self.stream.read_u16().await.ok()?),
            127 => self.stream.read_u64().await.ok()?,
            short => u64::from(short),
        };
        let mut payload = vec![0; usize::try_from(len).expect("a sane length")];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some(ServerFrame {
            fin: head[0] & 0x80 != 0,
            opcode: head[0] & 0x0F,
            payload,
        })
    }

    /// The server's close code: every frame up to the close frame is
    /// skipped; panics when none comes within `limit`.
    async fn close_code(&mut self, limit: Duration) -> Option<u16> {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.next_frame()).await {
                Err(_) => panic!("no close frame within {limit:?}"),
                Ok(None) => panic!("the socket closed without a close frame"),
                Ok(Some(frame)) if frame.opcode == 0x8 => return frame.close_code(),
                Ok(Some(_)) => continue,
            }
        }
    }
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

const LIMIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn the_101_and_the_hello_arrive_together() {
    let gateway = Gateway::start(&[]).await;
    let mut stream = send_upgrade(&gateway).await;
    // One read: whatever the first segment carried.
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(LIMIT, stream.read(&mut first))
        .await
        .expect("an answer in time")
        .expect("read");
    let first = &first[..n];
    let end = first
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .expect("the whole 101 head in the first read");
    assert!(first.starts_with(b"HTTP/1.1 101"), "{first:?}");
    let frame = &first[end..];
    assert!(
        frame.len() > 2 && frame[0] == 0x81 && usize::from(frame[1]) == frame.len() - 2,
        "the hello, whole, right after the head: {:?}",
        String::from_utf8_lossy(first)
    );
    let hello: serde_json::Value = serde_json::from_slice(&frame[2..]).expect("JSON");
    assert_eq!(hello["type"], "hello");
}

#[tokio::test]
async fn close_codes_the_rfc_reserves_are_answered_with_1002_never_echoed() {
    let gateway = Gateway::start(&[]).await;
    let mut answers = Vec::new();
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut client = RawClient::connect(&gateway).await;
        client.close_with(&close_payload(code, b"")).await;
        answers.push((code, client.close_code(LIMIT).await));
    }
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(_, answer)| *answer != Some(1002))
        .collect();
    assert!(wrong.is_empty(), "(sent, answered) not 1002: {wrong:?}");
}

#[tokio::test]
async fn valid_close_codes_are_echoed() {
    let gateway = Gateway::start(&[]).await;
    for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        let mut client = RawClient::connect(&gateway).await;
        client.close_with(&close_payload(code, b"bye")).await;
        assert_eq!(client.close_code(LIMIT).await, Some(code), "code {code}");
    }
    // No code at all: a normal close.
    let mut client = RawClient::connect(&gateway).await;
    client.close_with(b"").await;
    assert_eq!(client.close_code(LIMIT).await, Some(1000));
}

#[tokio::test]
async fn a_one_byte_close_payload_is_a_protocol_error() {
    let gateway = Gateway::start(&[]).await;
    let mut client = RawClient::connect(&gateway).await;
    client.close_with(&[0x03]).await;
    assert_eq!(client.close_code(LIMIT).await, Some(1002));
}

#[tokio::test]
async fn a_close_reason_that_is_not_utf8_is_answered_with_1007() {
    let gateway = Gateway::start(&[]).await;
    let mut client = RawClient::connect(&gateway).await;
    // Autobahn 7.5.1's reason: valid UTF-8 up to an encoded surrogate.
    let reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
    client.close_with(&close_payload(1000, reason)).await;
    assert_eq!(client.close_code(LIMIT).await, Some(1007));
}

/// `{"type":"subscribe","topics":["x"]}` padded with JSON whitespace to
/// `len` bytes.
fn padded_subscribe(len: usize) -> Vec<u8> {
    let mut message = br#"{"type":"subscribe","topics":["x"]}"#.to_vec();
    message.resize(len, b' ');
    message
}

#[tokio::test]
async fn a_ping_inside_a_fragmented_message_does_not_count_against_its_size() {
    let gateway = Gateway::start(&[("MAX_MESSAGE_BYTES", "65536")]).await;
    let mut client = RawClient::connect(&gateway).await;
    // 65,500 bytes of message (under the limit) around a 125-byte ping:
    // the message and the ping together are over it, the message is not.
    let message = padded_subscribe(65_500);
    let (first, rest) = message.split_at(65_450);
    client.send(false, 0x1, first).await;
    client.send(true, 0x9, &[b'p'; 125]).await;
    let pong = client.next_frame().await.expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload.len(), pong.close_code()),
        (0xA, 125, None),
        "the ping is answered with a pong, not a close"
    );
    client.send(true, 0x0, rest).await;
    let answer = client.next_frame().await.expect("the answer");
    assert_eq!(answer.json()["type"], "subscribed", "{answer:?}");
    assert!(answer.fin);
}

#[tokio::test]
async fn a_message_in_progress_must_complete_within_write_timeout_pongs_or_not() {
    let write_timeout = Duration::from_secs(2);
    let gateway = Gateway::start(&[("WRITE_TIMEOUT_SECS", "2"), ("PING_INTERVAL_SECS", "1")]).await;

    // Quiet run: a message in fragments spread over half the time, pongs
    // in between, completes and is answered.
    let mut client = RawClient::connect(&gateway).await;
    let message = padded_subscribe(60_000);
    let chunks: Vec<&[u8]> = message.chunks(20_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { 0x1 } else { 0x0 };
        client.send(i + 1 == chunks.len(), opcode, chunk).await;
        if i + 1 < chunks.len() {
            tokio::time::sleep(write_timeout / 4).await;
            client.send(true, 0xA, b"").await;
        }
    }
    loop {
        let frame = client.next_frame().await.expect("the answer");
        if frame.opcode == 0x1 {
            assert_eq!(frame.json()["type"], "subscribed");
            break;
        }
        assert_eq!(frame.opcode, 0x9, "only pings before the answer: {frame:?}");
    }
    drop(client);

    // One unfinished 64 KiB fragment, then only pongs, three times as long
    // as WRITE_TIMEOUT_SECS: closed with 1008 after WRITE_TIMEOUT_SECS.
    let mut client = RawClient::connect(&gateway).await;
    client
        .send(false, 0x1, &padded_subscribe(64 * 1024 - 1))
        .await;
    let started = Instant::now();
    // Pongs from one half of the socket while the other reads.
    let (mut read_half, mut write_half) = client.stream.into_split();
    let pinger = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write_half
                .write_all(&[0x8A, 0x80, 0, 0, 0, 0])
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let close = tokio::time::timeout(write_timeout * 3, async {
        loop {
            let mut head = [0u8; 2];
            read_half.read_exact(&mut head).await.ok()?;
            let len = usize::from(head[1] & 0x7F);
            let mut payload = vec![0; len];
            read_half.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0F == 0x8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    pinger.abort();
    assert_eq!(
        close,
        Ok(Some(1008)),
        "an unfinished message, pongs every 200 ms: close 1008 within {:?} (waited {elapsed:?})",
        write_timeout * 3
    );
    assert!(
        elapsed >= write_timeout - Duration::from_millis(100),
        "not before WRITE_TIMEOUT_SECS: {elapsed:?}"
    );
    // Its memory is freed: the gateway soon counts no client.
    let deadline = Instant::now() + LIMIT;
    loop {
        let (_, health) = gateway.health().await;
        if health["connections"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still counted: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
