//! The upgraded client socket, shared by the client's task and the hub's
//! fan-out.
//!
//! Owns: [`Socket`], the bare `TcpStream` taken back from hyper once the
//! upgrade is done (hyper's `Upgraded` box, its `Rewind` and the watchdog
//! wrapper are dropped: nothing of the HTTP connection stays allocated for
//! a WebSocket, and the stream stays on the reactor of the event loop
//! that accepted it, where the client's task runs: see `event_loops`);
//! the task's reading and writing ends over it
//! ([`SocketReader`], which first hands out any bytes hyper had read past
//! the request, and [`SocketWriter`]); and its [`Sink`] side: the fan-out
//! writes a delivery straight to the socket, without waiting, while the
//! client's task is not writing (see `hub::queue`), so an idle client's
//! task is not woken for each event.
//!
//! Does not own: when the fan-out may write or how much of the first
//! queued delivery is out (`hub::queue`'s write state, under the queue's
//! lock: this only reports how far a write got), framing rules or the
//! byte count of a frame (`codec`), or any timeout (the task's writer).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::codec::{self, Position, TextFrame};
use crate::hub::queue::{Progress, Sink};
use crate::hub::Delivery;

/// Most deliveries one direct write takes; the rest wait for the next.
const DIRECT_FRAMES: usize = 32;

pub struct Socket {
    stream: TcpStream,
}

impl Socket {
    pub fn new(stream: TcpStream) -> Arc<Socket> {
        Arc::new(Socket { stream })
    }

    /// Ready once a byte can be read, or the socket is closed or failed,
    /// with nothing read: a one-byte peek (only when tokio says the socket
    /// is readable), so a client's idle wait holds no state (see
    /// `frames`). A stale readiness is cleared by the peek's `WouldBlock`.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        self.stream.poll_peek(cx, &mut buf).map(|_| ())
    }

    /// The client's address; none once the connection is reset.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr().ok()
    }
}

impl Sink for Socket {
    /// Each delivery goes as a text frame over its shared bytes; bytes are
    /// counted by `codec` (the same count the task's writer keeps).
    ///
    /// What is left of the frames, when it is at most [`CORK_BYTES`] (an
    /// idle client's one event, the usual case), is copied into this
    /// thread's cork buffer and goes out with one `send(2)`, as uWS does:
    /// at 10k clients the copy is cheaper than `writev`'s vector and file
    /// lookups (per delivered message, `writev` cost ~10% of the server's
    /// CPU against ~6.6% for `send` in a `perf` profile). The syscall is
    /// made on the socket's descriptor without tokio's readiness check (a
    /// cold cache line per client); a `WouldBlock` leaves tokio's
    /// readiness as it was, which only costs the task one more try when it
    /// takes over. Larger runs go out with one vectored write.
    fn write_now(&self, items: &VecDeque<Delivery>, head_written: usize) -> io::Result<Progress> {
        // One queued event, the usual case for an idle client, needs no
        // array of [`DIRECT_FRAMES`] (a kilobyte filled per client per event).
        if let (Some(delivery), 1) = (items.front(), items.len()) {
            return self.write_frames(&[TextFrame::new(delivery.frame_bytes())], head_written);
        }
        let mut frames = [TextFrame::new(&[]); DIRECT_FRAMES];
        for (frame, delivery) in frames.iter_mut().zip(items) {
            *frame = TextFrame::new(delivery.frame_bytes());
        }
        self.write_frames(&frames[..items.len().min(DIRECT_FRAMES)], head_written)
    }
}

impl Socket {
    /// What [`Sink::write_now`] does once its frames are laid out.
    fn write_frames(&self, frames: &[TextFrame<'_>], head_written: usize) -> io::Result<Progress> {
        let mut at = Position::at(head_written);
        let sent = if codec::left(frames, at) <= CORK_BYTES {
            CORK.with_borrow_mut(|cork| {
                cork.clear();
                codec::copy_left(frames, at, cork);
                send(&self.stream, cork)
            })
        } else {
            let mut slices = [IoSlice::new(&[]); 2 * DIRECT_FRAMES];
            let used = codec::slices(frames, at, &mut slices);
            self.stream.try_write_vectored(&slices[..used])
        };
        match sent {
            Ok(written) => at.advance(frames, written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        Ok(Progress {
            whole: at.whole,
            into_next: at.offset,
        })
    }
}

/// Largest run of frames a direct write copies into the cork buffer.
const CORK_BYTES: usize = 16 * 1024;

thread_local! {
    /// The cork buffer: one per thread that fans out, reused.
    static CORK: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(CORK_BYTES));
}

/// One non-blocking `send(2)` of `bytes` (the socket is non-blocking).
fn send(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    rustix::net::send(stream, bytes, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
}

/// The task's reading end: the bytes hyper read past the upgrade request
/// first, then the socket.
pub struct SocketReader {
    early: Bytes,
    socket: Arc<Socket>,
}

impl SocketReader {
    pub fn new(socket: Arc<Socket>, early: Bytes) -> SocketReader {
        // Copied (or dropped): even an empty `Bytes` from hyper can keep
        // its whole read buffer (kilobytes) alive for as long as we hold it.
        let early = if early.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&early)
        };
        SocketReader { early, socket }
    }

    /// Whether bytes hyper read past the upgrade are still to be read.
    pub fn has_early(&self) -> bool {
        !self.early.is_empty()
    }
}

impl AsyncRead for SocketReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            if this.early.is_empty() {
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.socket.stream.poll_read_ready(cx))?;
            match this.socket.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; `try_read` cleared it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

/// The task's writing end (the fan-out writes through [`Sink`] only while
/// the task does not).
pub struct SocketWriter(Arc<Socket>);

impl SocketWriter {
    pub fn new(socket: Arc<Socket>) -> SocketWriter {
        SocketWriter(socket)
    }

    pub fn socket(&self) -> &Arc<Socket> {
        &self.0
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                // Readiness was stale; `try_write_vectored` cleared it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN (the socket is shared, so this is `shutdown(2)` on it, not
    /// a drop).
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = rustix::net::shutdown(&self.0.stream, rustix::net::Shutdown::Write);
        Poll::Ready(outcome.map_err(io::Error::from))
    }
}
