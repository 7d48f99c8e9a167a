//! [`ClientFrames`]: the client's messages, read one at a time, with
//! nothing allocated for reading while the client sends nothing.
//!
//! Owns: the idle wait on the socket's read readiness, which holds no state
//! (a one-byte `MSG_PEEK` says a byte is there without taking it); the
//! reading of one message, a boxed [`codec::Reader::next`] future created
//! when its first byte is there and kept from then until it returns (it
//! is not cancel-safe: a partly read header must not be lost), then
//! dropped, unless its reader has something for the next read: the bytes
//! hyper read past the upgrade request not read yet (they come first), or
//! a fragmented message in progress when a control frame came in the
//! middle of it; the next read's future is then created at once, so the
//! message's time limit keeps running while nothing arrives. An idle
//! client keeps 24 bytes here (the socket and an empty slot) and nothing
//! allocated; it kept a ~200-byte pending read future before.
//!
//! Does not own: framing rules and the message time limit (`codec`), the
//! bytes' source (`socket`), when the client loop reads (`ws`'s fairness
//! rule: it only polls).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;

use super::codec::{self, Incoming, ReadError};
use super::socket::{Socket, SocketReader};
use crate::broadcast::Limits;

type Reader = codec::Reader<SocketReader>;

/// One message being read; answers it and the reader, for what it keeps.
type Reading = Pin<Box<dyn Future<Output = (Result<Incoming, ReadError>, Reader)> + Send>>;

pub struct ClientFrames {
    /// Waited on for readiness, and read by each message's reader.
    socket: Arc<Socket>,
    /// The message being read, from its first byte until it returns; or
    /// the next one, when its reader has something for it (early bytes, a
    /// fragmented message in progress). `None` for an idle client.
    reading: Option<Reading>,
}

impl ClientFrames {
    /// `early`: what hyper read past the upgrade request, read first.
    pub fn new(socket: Arc<Socket>, early: Bytes, limits: &Limits) -> ClientFrames {
        let reading = (!early.is_empty())
            .then(|| next(reader(SocketReader::new(socket.clone(), early), limits)));
        ClientFrames { socket, reading }
    }

    /// The next whole message. Cancel-safe (a message in progress stays
    /// here); polling registers the task's waker for the socket.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        limits: &Limits,
    ) -> Poll<Result<Incoming, ReadError>> {
        let reading = match &mut self.reading {
            Some(reading) => reading,
            None => {
                // Closed or failed counts as readable: the reader's first
                // read says which.
                ready!(self.socket.poll_readable(cx));
                let reader = reader(SocketReader::new(self.socket.clone(), Bytes::new()), limits);
                self.reading.insert(next(reader))
            }
        };
        let (message, reader) = ready!(reading.as_mut().poll(cx));
        self.reading = (reader.mid_message() || reader.io().has_early()).then(|| next(reader));
        Poll::Ready(message)
    }

    /// [`ClientFrames::poll_next`] as a future.
    pub fn next<'a>(
        &'a mut self,
        limits: &'a Limits,
    ) -> impl Future<Output = Result<Incoming, ReadError>> + 'a {
        std::future::poll_fn(move |cx| self.poll_next(cx, limits))
    }

    /// Whether a message is being read (its future allocated).
    #[cfg(test)]
    fn reading(&self) -> bool {
        self.reading.is_some()
    }
}

fn reader(io: SocketReader, limits: &Limits) -> Reader {
    // A fragmented message must be complete within WRITE_TIMEOUT_SECS,
    // however many pings and pongs keep the connection alive meanwhile.
    codec::Reader::new(io, limits.max_message_bytes, Some(limits.write_timeout))
}

/// The next message's future (boxed: see the module's doc).
fn next(mut reader: Reader) -> Reading {
    Box::pin(async move {
        let message = reader.next().await;
        (message, reader)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use codec::tests::frame;

    fn limits(message_timeout: Duration) -> Limits {
        Limits {
            max_connections: 10,
            client_queue: 10,
            write_timeout: message_timeout,
            max_patterns: 10,
            ping_interval: Duration::from_secs(30),
            max_message_bytes: 1024,
        }
    }

    async fn pair() -> (Arc<Socket>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Socket::new(server), client)
    }

    /// Polls once with the task's waker: `None` while pending.
    async fn poll_once(
        frames: &mut ClientFrames,
        limits: &Limits,
    ) -> Option<Result<Incoming, ReadError>> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match frames.poll_next(cx, limits) {
                Poll::Ready(message) => Some(message),
                Poll::Pending => None,
            })
        })
        .await
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn an_idle_client_holds_no_read_future_and_a_split_header_is_kept() {
        let limits = limits(Duration::from_secs(5));
        let (socket, mut client) = pair().await;
        let mut frames = ClientFrames::new(socket, Bytes::new(), &limits);
        assert!(poll_once(&mut frames, &limits).await.is_none());
        assert!(!frames.reading(), "nothing arrived: nothing is read");

        let wire = frame(true, 0x1, b"hello");
        client.write_all(&wire[..3]).await.unwrap();
        settle().await;
        assert!(poll_once(&mut frames, &limits).await.is_none());
        assert!(frames.reading(), "a header in progress is kept");
        client.write_all(&wire[3..]).await.unwrap();
        let message = frames.next(&limits).await;
        assert!(matches!(message, Ok(Incoming::Text(t)) if t == "hello"));

        assert!(poll_once(&mut frames, &limits).await.is_none());
        assert!(!frames.reading(), "after a message, idle again");
        client.write_all(&frame(true, 0x9, b"p")).await.unwrap();
        let message = frames.next(&limits).await;
        assert!(matches!(message, Ok(Incoming::Ping(p)) if p == b"p"));
    }

    #[tokio::test]
    async fn early_bytes_come_first_even_two_messages_of_them() {
        let limits = limits(Duration::from_secs(5));
        let (socket, mut client) = pair().await;
        let mut early = frame(true, 0x1, b"one");
        early.extend(frame(true, 0x1, b"two"));
        early.extend(&frame(true, 0x1, b"three")[..4]);
        let mut frames = ClientFrames::new(socket, Bytes::from(early), &limits);
        client
            .write_all(&frame(true, 0x1, b"three")[4..])
            .await
            .unwrap();
        for expected in ["one", "two", "three"] {
            let message = frames.next(&limits).await;
            assert!(matches!(message, Ok(Incoming::Text(t)) if t == expected));
        }
        assert!(poll_once(&mut frames, &limits).await.is_none());
        assert!(!frames.reading());
    }

    #[tokio::test]
    async fn a_fragmented_message_times_out_after_a_ping_with_nothing_more() {
        let limits = limits(Duration::from_millis(200));
        let (socket, mut client) = pair().await;
        let mut frames = ClientFrames::new(socket, Bytes::new(), &limits);
        let mut wire = frame(false, 0x1, b"hel");
        wire.extend(frame(true, 0x9, b""));
        client.write_all(&wire).await.unwrap();
        assert!(matches!(frames.next(&limits).await, Ok(Incoming::Ping(_))));
        let message = tokio::time::timeout(Duration::from_secs(5), frames.next(&limits)).await;
        assert!(matches!(message, Ok(Err(ReadError::Unfinished))));
    }

    #[tokio::test]
    async fn a_closed_socket_is_gone() {
        let limits = limits(Duration::from_secs(5));
        let (socket, client) = pair().await;
        let mut frames = ClientFrames::new(socket, Bytes::new(), &limits);
        drop(client);
        assert!(matches!(frames.next(&limits).await, Err(ReadError::Gone)));
    }
}
