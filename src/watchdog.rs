//! The connection watchdog: every accepted connection's write progress,
//! and the power to close it from outside hyper.
//!
//! Owns: [`Watched`], the IO wrapper `server` puts around each accepted
//! socket (a write that returns `Pending` starts a stall clock, any write
//! that moves bytes stops it), and [`Watchdog`], the future the connection
//! task runs instead of the bare hyper connection: it ends (dropping the
//! connection, which closes the socket) when the stall reaches
//! WRITE_TIMEOUT_SECS, when a handler asks ([`ConnectionHandle`]; the SSE
//! handler registers its client queue so a cut-off closes the socket at
//! once), or, once the gateway drains, when the socket is stalled for
//! [`DRAIN_STALL`]. This has to live at the connection: hyper stops polling
//! a response body whose socket is full, so nothing inside a body ever runs
//! for a stalled client.
//!
//! Also owns the request-head deadline of an HTTP/1 connection
//! ([`Watchdog::with_head_deadline`]): a connection that waits longer than
//! it for a whole request head, from its accept or from the end of its
//! last response, is closed (slowloris, and keep-alive connections left
//! idle). The connection's [`Heads`] service marks when each request
//! begins and its response ends; the watchdog's one timer is moved only
//! when it fires, so a request costs two stores, a clock read and a
//! reference count, where hyper's own header timer took a timer from the
//! wheel and gave it back for every request head.
//!
//! The unit is the connection: over HTTP/2 a cut-off SSE stream closes the
//! whole connection (EventSource reconnects and resumes), and a stall
//! stalls every stream on it anyway.
//!
//! Also owns the connection's first read ([`Watched::sniff`]): it takes
//! up to [`FIRST_READ`] bytes into a per-thread buffer, tells an HTTP/2
//! preface (h2c) from HTTP/1.1 by them, and keeps them for hyper's first
//! read, which gets them whole: one `recvfrom(2)` and one parse per
//! request head. (hyper-util's `auto` builder read 24 bytes to tell, and
//! hyper's first read then got those 24 alone: a second, failed parse
//! and a regrown read buffer, ~15% of the user-space instructions of an
//! accepted WebSocket under callgrind.)
//!
//! Also owns holding back a WebSocket's 101: a handler that answers an
//! upgrade asks ([`ConnectionHandle::hold_upgrade`]) and the response head
//! hyper writes is kept (at most [`HOLD_LIMIT`] bytes) instead of sent, so
//! the WebSocket task sends it in one write with its hello
//! ([`Watched::into_parts`]); and running the hand-over of that
//! WebSocket ([`ConnectionHandle::then`]) on the connection's own task
//! once hyper is done with it, instead of on a task of its own.
//!
//! Does not own: upgraded connections (a WebSocket task bounds its own
//! writes: hyper's connection future ends at the upgrade), or what any
//! response says.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::beacon::Signal;
use crate::hub::queue::ClientQueue;

/// While draining, a connection whose socket accepts no bytes for this long
/// is closed: shutdown never waits out WRITE_TIMEOUT_SECS for a stalled
/// client.
pub const DRAIN_STALL: Duration = Duration::from_secs(1);

/// Most bytes of a 101 held back (its head is a few hundred); a write past
/// it fails the connection.
pub const HOLD_LIMIT: usize = 4096;

/// Most bytes the first read of a connection takes (see
/// [`Watched::sniff`]): a request head usually fits, and hyper's first
/// read (8 KiB) takes them all.
pub const FIRST_READ: usize = 8 * 1024;

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// h2c with prior knowledge.
    Http2,
}

thread_local! {
    /// Where a connection's first read lands, one per thread, reused.
    static FIRST: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; FIRST_READ].into_boxed_slice());
}

/// What a connection's IO and its watchdog share.
#[derive(Debug)]
struct Progress {
    /// Origin of `stalled_since`.
    base: Instant,
    /// Milliseconds since `base` + 1 when a write last returned `Pending`
    /// with no progress since; 0 when not stalled.
    stalled_since: AtomicU64,
    /// A handler asked for the connection to close.
    killed: AtomicBool,
    /// Writes are held back in `Watcher::held` (the 101 of a WebSocket).
    holding: AtomicBool,
    /// Milliseconds since `base` + 1 from which the connection has waited
    /// for a request head: from the accept, then from the end of each
    /// response; 0 while a request is in flight (see [`Heads`]).
    awaiting_head: AtomicU64,
    /// A client queue was registered in `watcher` since the watchdog last
    /// looked: the watchdog takes the lock only then (or when its task's
    /// waker changed), not at every poll.
    registered: AtomicBool,
    watcher: Mutex<Watcher>,
}

#[derive(Default)]
struct Watcher {
    /// The watchdog's task, woken by a kill or a registration.
    waker: Option<Waker>,
    /// A client queue registered since the watchdog last looked.
    queue: Option<Arc<ClientQueue>>,
    /// What was written while `holding`.
    held: Vec<u8>,
    /// What the connection's task runs once hyper is done with it.
    then: Option<Then>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("waker", &self.waker)
            .field("queue", &self.queue)
            .field("held", &self.held.len())
            .field("then", &self.then.is_some())
            .finish()
    }
}

/// Work for the connection's task after hyper (see [`ConnectionHandle::then`]).
pub type Then = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Progress {
    fn lock(&self) -> MutexGuard<'_, Watcher> {
        self.watcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn note<T>(&self, outcome: &Poll<io::Result<T>>, moved: impl FnOnce(&T) -> bool) {
        match outcome {
            Poll::Ready(Ok(value)) if moved(value) => {
                if self.stalled_since.load(Ordering::Relaxed) != 0 {
                    self.stalled_since.store(0, Ordering::Relaxed);
                }
            }
            Poll::Pending => {
                if self.stalled_since.load(Ordering::Relaxed) == 0 {
                    self.stalled_since.store(self.stamp(), Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {}
        }
    }

    /// How long the socket has accepted no bytes while we had some for it.
    fn stalled_for(&self) -> Option<Duration> {
        match self.stalled_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.stamp().saturating_sub(since))),
        }
    }

    /// Now, as `stalled_since` and `awaiting_head` keep it: milliseconds
    /// since `base` + 1 (so 0 can mean "not").
    fn stamp(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// A request head has arrived (hyper called the service): no head is
    /// awaited until its response ends.
    fn request_began(&self) {
        self.awaiting_head.store(0, Ordering::Relaxed);
    }

    /// The response ended: the wait for the next head starts now.
    fn response_ended(&self) {
        self.awaiting_head.store(self.stamp(), Ordering::Relaxed);
    }

    /// When the head awaited now is overdue, `limit` after the wait began;
    /// `None` while a request is in flight.
    fn head_due(&self, limit: Duration) -> Option<Instant> {
        match self.awaiting_head.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.base + Duration::from_millis(since - 1) + limit),
        }
    }

    /// Wakes the watchdog's task. The waker stays: the watchdog stores it
    /// again only when its task's changes.
    fn wake(&self) {
        let waker = self.lock().waker.clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// An accepted socket whose write progress its [`Watchdog`] sees.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    progress: Arc<Progress>,
    /// Read from `inner` by [`Watched::sniff`] but not yet handed out.
    unread: Bytes,
}

/// Wraps `io`; the watchdog and the handle go with the connection task and
/// its requests.
pub fn watch<T>(io: T) -> (Watched<T>, ConnectionHandle) {
    let progress = Arc::new(Progress {
        base: Instant::now(),
        stalled_since: AtomicU64::new(0),
        killed: AtomicBool::new(false),
        holding: AtomicBool::new(false),
        // Waiting for the first head since `base`, the accept.
        awaiting_head: AtomicU64::new(1),
        registered: AtomicBool::new(false),
        watcher: Mutex::new(Watcher::default()),
    });
    (
        Watched {
            inner: io,
            progress: progress.clone(),
            unread: Bytes::new(),
        },
        ConnectionHandle(progress),
    )
}

impl<T> Watched<T> {
    /// The socket itself, for a connection that leaves hyper (an upgraded
    /// WebSocket bounds its own writes), what was read from it but not
    /// handed out yet (it comes after whatever hyper kept), and what was
    /// held back for it to send first (see
    /// [`ConnectionHandle::hold_upgrade`]).
    pub fn into_parts(self) -> (T, Bytes, Vec<u8>) {
        let held = if self.progress.holding.load(Ordering::Acquire) {
            std::mem::take(&mut self.progress.lock().held)
        } else {
            Vec::new()
        };
        (self.inner, self.unread, held)
    }

    /// Keeps `bufs` instead of writing them, while holding; `None` when not
    /// holding.
    fn hold(&self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        if !self.progress.holding.load(Ordering::Acquire) {
            return None;
        }
        let len: usize = bufs.iter().map(|buf| buf.len()).sum();
        let mut watcher = self.progress.lock();
        if watcher.held.len() + len > HOLD_LIMIT {
            return Some(Err(io::Error::other("held response head too large")));
        }
        for buf in bufs {
            watcher.held.extend_from_slice(buf);
        }
        Some(Ok(len))
    }
}

impl<T: AsyncRead + Unpin> Watched<T> {
    /// Reads the connection's first bytes (more only while they could
    /// still be the start of an HTTP/2 preface) and tells its protocol;
    /// the bytes are handed out first by the next reads. Fails at EOF
    /// before a verdict.
    pub async fn sniff(&mut self) -> io::Result<Protocol> {
        loop {
            let seen = &self.unread[..];
            if seen.len() >= H2_PREFACE.len() {
                return Ok(if seen.starts_with(H2_PREFACE) {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                });
            }
            if !seen.is_empty() && !H2_PREFACE.starts_with(seen) {
                return Ok(Protocol::Http1);
            }
            let read = std::future::poll_fn(|cx| self.poll_first(cx)).await?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// One read of at most [`FIRST_READ`] bytes into the per-thread
    /// buffer, appended to `unread`.
    fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = FIRST_READ.saturating_sub(self.unread.len()).max(1);
        FIRST.with_borrow_mut(|scratch| {
            let mut first = ReadBuf::new(&mut scratch[..room]);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut first))?;
            let read = first.filled();
            if !read.is_empty() {
                self.unread = if self.unread.is_empty() {
                    Bytes::copy_from_slice(read)
                } else {
                    [&self.unread[..], read].concat().into()
                };
            }
            Poll::Ready(Ok(read.len()))
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    /// What [`Watched::sniff`] read first, then the socket.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            if this.unread.is_empty() {
                this.unread = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(held) = self.hold(&[IoSlice::new(buf)]) {
            return Poll::Ready(held);
        }
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress.note(&outcome, |n| *n > 0);
        outcome
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(held) = self.hold(bufs) {
            return Poll::Ready(held);
        }
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress.note(&outcome, |n| *n > 0);
        outcome
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.progress.holding.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress.note(&outcome, |_| false);
        outcome
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a handler holds to close its connection (from the request's
/// extensions).
#[derive(Clone, Debug)]
pub struct ConnectionHandle(Arc<Progress>);

impl ConnectionHandle {
    /// Closes the connection now, whatever hyper is doing with it.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.wake();
    }

    /// From now on what hyper writes to this connection is held back, not
    /// sent: call it with the 101 of a WebSocket upgrade (HTTP/1.1 only),
    /// whose task takes it with [`Watched::into_parts`] and sends it ahead
    /// of its first frame. Nothing follows a 101 on the connection.
    pub fn hold_upgrade(&self) {
        self.0.holding.store(true, Ordering::Release);
    }

    /// Has the connection's task run `then` once hyper is done with the
    /// connection (closed, or handed over at an upgrade), after its
    /// watchdog: a WebSocket's hand-over, with no task of its own to
    /// allocate, track and wake on the loop for it.
    pub fn then(&self, then: Then) {
        self.0.lock().then = Some(then);
    }

    /// What [`ConnectionHandle::then`] left, for the connection's task.
    pub fn take_then(&self) -> Option<Then> {
        self.0.lock().then.take()
    }

    /// Closes the connection as soon as `queue` is closed (its client cut
    /// off), even while the socket is full and hyper polls nothing.
    pub fn close_when_cut_off(&self, queue: Arc<ClientQueue>) {
        {
            let mut watcher = self.0.lock();
            watcher.queue = Some(queue);
            self.0.registered.store(true, Ordering::Release);
        }
        self.0.wake();
    }
}

/// An HTTP/1 connection's service as hyper calls it: `inner`, with the
/// start of each request and the end of its response marked for the
/// connection's head deadline (hyper serves an HTTP/1 connection's requests
/// one after another, so between those two marks no head is awaited).
pub struct Heads<S> {
    inner: S,
    connection: ConnectionHandle,
}

impl<S> Heads<S> {
    pub fn new(inner: S, connection: ConnectionHandle) -> Heads<S> {
        Heads { inner, connection }
    }
}

impl<S, R, B> hyper::service::Service<R> for Heads<S>
where
    S: hyper::service::Service<R, Response = http::Response<B>>,
{
    type Response = http::Response<Marked<B>>;
    type Error = S::Error;
    type Future = HeadsFuture<S::Future>;

    fn call(&self, request: R) -> Self::Future {
        self.connection.0.request_began();
        HeadsFuture {
            future: self.inner.call(request),
            connection: Some(self.connection.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future; its response body marks the end.
    pub struct HeadsFuture<F> {
        #[pin]
        future: F,
        connection: Option<ConnectionHandle>,
    }
}

impl<F, B, E> Future for HeadsFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Marked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.future.poll(cx))?;
        let connection = this.connection.take();
        Poll::Ready(Ok(answer.map(|body| Marked { body, connection })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that, once hyper drops it (sent whole, or given up
    /// with the connection), starts the wait for the next request head.
    pub struct Marked<B> {
        #[pin]
        body: B,
        connection: Option<ConnectionHandle>,
    }

    impl<B> PinnedDrop for Marked<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(connection) = this.project().connection.take() {
                connection.0.response_ended();
            }
        }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Marked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How a watched connection ended.
#[derive(Debug)]
pub enum Ending<T> {
    /// hyper finished it (closed, upgraded, or failed): its result.
    Finished(T),
    /// Its socket accepted no bytes for WRITE_TIMEOUT_SECS (or
    /// [`DRAIN_STALL`] while draining).
    Stalled(Duration),
    /// Its SSE client was cut off for falling CLIENT_QUEUE behind.
    CutOff,
    /// A handler closed it.
    Killed,
    /// No whole request head came within the head deadline.
    SlowHead,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs a connection until it finishes or must be closed; dropping the
/// connection closes its socket.
pub struct Watchdog<F> {
    connection: Pin<Box<F>>,
    progress: Arc<Progress>,
    /// The waker last stored in the shared `Watcher` (a copy, compared
    /// without the lock).
    stored_waker: Option<Waker>,
    write_timeout: Duration,
    stop: Signal,
    draining: bool,
    /// Armed only while the socket is stalled.
    timer: Option<Pin<Box<Sleep>>>,
    /// Resolves when a registered client queue closes.
    cut_off: Option<BoxFuture<()>>,
    /// HTTP/1 only (see [`Watchdog::with_head_deadline`]).
    head: Option<HeadDeadline>,
}

/// How long a request head may take, and the timer that checks it: armed
/// the first time the connection waits for a head (a WebSocket upgraded by
/// its first request never needs one), then moved on only when it fires.
struct HeadDeadline {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl HeadDeadline {
    /// True when the head the connection waits for is overdue. While it
    /// waits and is not, the timer is armed for when it would be.
    fn overdue(&mut self, progress: &Progress, cx: &mut Context<'_>) -> bool {
        // A request in flight: a timer armed before may fire meanwhile,
        // and is looked at when a head is awaited again.
        let Some(due) = progress.head_due(self.limit) else {
            return false;
        };
        let timer = match &mut self.timer {
            Some(timer) => timer,
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(due.into()))),
        };
        // Each due instant is later than the last (a wait starts at the end
        // of a response), so the timer fires at the due one or before it.
        while timer.as_mut().poll(cx).is_ready() {
            match progress.head_due(self.limit) {
                Some(due) if due <= Instant::now() => return true,
                Some(due) => timer.as_mut().reset(due.into()),
                None => return false,
            }
        }
        false
    }
}

impl<F: Future> Watchdog<F> {
    pub fn new(
        connection: F,
        handle: &ConnectionHandle,
        write_timeout: Duration,
        stop: Signal,
    ) -> Watchdog<F> {
        Watchdog {
            connection: Box::pin(connection),
            progress: handle.0.clone(),
            stored_waker: None,
            write_timeout,
            stop,
            draining: false,
            timer: None,
            cut_off: None,
            head: None,
        }
    }

    /// Also closes the connection when it waits longer than `limit` for a
    /// whole request head (from its accept, then from the end of each
    /// response; see [`Heads`]). One timer per connection, moved on only
    /// when it fires: at most one wake-up per `limit` for a busy one.
    pub fn with_head_deadline(mut self, limit: Duration) -> Watchdog<F> {
        self.head = Some(HeadDeadline { limit, timer: None });
        self
    }
}

impl<F: Future> Future for Watchdog<F> {
    type Output = Ending<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if this.progress.killed.load(Ordering::Acquire) {
                return Poll::Ready(Ending::Killed);
            }
            // The lock only when there is something to do under it: a
            // new waker to store, or a registered queue to take.
            let new_waker = !this
                .stored_waker
                .as_ref()
                .is_some_and(|stored| stored.will_wake(cx.waker()));
            if new_waker || this.progress.registered.load(Ordering::Acquire) {
                let mut watcher = this.progress.lock();
                if new_waker {
                    watcher.waker = Some(cx.waker().clone());
                    this.stored_waker = Some(cx.waker().clone());
                }
                this.progress.registered.store(false, Ordering::Relaxed);
                if let Some(queue) = watcher.queue.take() {
                    this.cut_off = Some(Box::pin(async move { queue.closed().await }));
                }
            }
            if let Some(cut_off) = &mut this.cut_off {
                if cut_off.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ending::CutOff);
                }
            }
            if let Poll::Ready(output) = this.connection.as_mut().poll(cx) {
                return Poll::Ready(Ending::Finished(output));
            }
            // After that poll: a response that ended inside it started
            // the wait for the next head.
            if let Some(head) = &mut this.head {
                if head.overdue(&this.progress, cx) {
                    return Poll::Ready(Ending::SlowHead);
                }
            }
            // A handler that ran inside that poll may have registered a
            // queue or asked for a kill.
            let registered = this.progress.registered.load(Ordering::Acquire);
            if registered || this.progress.killed.load(Ordering::Acquire) {
                continue;
            }
            if !this.draining && Pin::new(&mut this.stop).poll(cx).is_ready() {
                this.draining = true;
            }
            let Some(stalled) = this.progress.stalled_for() else {
                this.timer = None;
                return Poll::Pending;
            };
            let limit = if this.draining {
                DRAIN_STALL.min(this.write_timeout)
            } else {
                this.write_timeout
            };
            if stalled >= limit {
                return Poll::Ready(Ending::Stalled(stalled));
            }
            let deadline = tokio::time::Instant::now() + (limit - stalled);
            let timer = match &mut this.timer {
                Some(timer) => {
                    timer.as_mut().reset(deadline);
                    timer
                }
                None => this
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::beacon::Beacon;

    fn never_stops() -> Signal {
        Beacon::new().fired()
    }

    #[tokio::test]
    async fn a_writer_that_makes_no_progress_is_stopped_and_progress_resets_the_clock() {
        let (near, mut far) = tokio::io::duplex(64);
        let (mut io, handle) = watch(near);
        // The far end takes 64 bytes every 50 ms: slow, never stalled for
        // 150 ms, so the writer finishes.
        let reader = tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buffer)
                    .await
                    .unwrap();
            }
            far
        });
        let slow = async {
            io.write_all(&[1u8; 1024]).await.unwrap();
        };
        let ending = Watchdog::new(slow, &handle, Duration::from_millis(150), never_stops()).await;
        assert!(matches!(ending, Ending::Finished(())), "{ending:?}");
        let _far = reader.await.unwrap();

        // Now nobody reads: stopped after the write timeout.
        let started = Instant::now();
        let stuck = async {
            io.write_all(&[2u8; 1024]).await.unwrap();
        };
        let ending = Watchdog::new(stuck, &handle, Duration::from_millis(150), never_stops()).await;
        assert!(matches!(ending, Ending::Stalled(_)), "{ending:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    /// The head deadline: counted from the accept; none while a request is
    /// in flight however long it takes; counted again from the end of the
    /// response. (Real time: the deadline compares std instants.)
    #[tokio::test]
    async fn a_head_awaited_too_long_ends_the_connection_but_a_request_in_flight_does_not() {
        let limit = Duration::from_millis(200);
        let (near, _far) = tokio::io::duplex(64);
        let (_io, handle) = watch(near);
        let accepted = Instant::now();
        let watchdog = |handle: &ConnectionHandle| {
            Watchdog::new(
                std::future::pending::<()>(),
                handle,
                Duration::from_secs(60),
                never_stops(),
            )
            .with_head_deadline(limit)
        };
        let ending = watchdog(&handle).await;
        assert!(matches!(ending, Ending::SlowHead), "{ending:?}");
        assert!(accepted.elapsed() >= limit);

        // A request in flight (what `Heads::call` marks): no deadline.
        let progress = &handle.0;
        progress.request_began();
        let in_flight = tokio::time::timeout(3 * limit, watchdog(&handle)).await;
        assert!(in_flight.is_err(), "ended with a request in flight");

        // Its response ended (what `Marked` marks when dropped): the wait
        // for the next head starts there.
        let ended = Instant::now();
        progress.response_ended();
        let ending = watchdog(&handle).await;
        assert!(matches!(ending, Ending::SlowHead), "{ending:?}");
        let waited = ended.elapsed();
        assert!(waited >= limit - Duration::from_millis(2), "{waited:?}");
        assert!(waited < 3 * limit, "{waited:?}");
    }

    #[tokio::test]
    async fn a_held_upgrade_keeps_what_hyper_writes_for_the_websocket_task() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut io, handle) = watch(near);
        io.write_all(b"before").await.unwrap();
        handle.hold_upgrade();
        io.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        io.flush().await.unwrap();
        let (inner, unread, held) = io.into_parts();
        assert!(unread.is_empty());
        assert_eq!(held, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        drop(inner);
        let mut sent = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut far, &mut sent)
            .await
            .unwrap();
        assert_eq!(sent, b"before", "only what came before the hold went out");

        // Bounded: past HOLD_LIMIT the write fails.
        let (near, _far) = tokio::io::duplex(64);
        let (mut io, handle) = watch(near);
        handle.hold_upgrade();
        assert!(io.write_all(&vec![0u8; HOLD_LIMIT + 1]).await.is_err());
    }

    #[tokio::test]
    async fn the_sniff_takes_what_is_there_and_hands_it_out_first() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10);
        far.write_all(&request).await.unwrap();
        let (mut io, _handle) = watch(near);
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);
        far.write_all(b"after").await.unwrap();
        drop(far);
        let mut head = [0u8; 100];
        let n = tokio::io::AsyncReadExt::read(&mut io, &mut head)
            .await
            .unwrap();
        assert_eq!(&head[..n], &request[..100], "served from memory");
        let (mut inner, unread, held) = io.into_parts();
        assert_eq!(&unread[..], &request[100..], "what was not handed out");
        assert!(held.is_empty());
        let mut after = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut inner, &mut after)
            .await
            .unwrap();
        assert_eq!(after, b"after", "the sniff took what was there only");
    }

    #[tokio::test]
    async fn a_preface_in_pieces_is_http2_and_eof_first_fails() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut io, _handle) = watch(near);
        let sniffing = tokio::spawn(async move { (io.sniff().await.unwrap(), io) });
        for piece in H2_PREFACE.chunks(5) {
            far.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        far.write_all(b"frames").await.unwrap();
        let (protocol, mut io) = sniffing.await.unwrap();
        assert_eq!(protocol, Protocol::Http2);
        drop(far);
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut io, &mut all)
            .await
            .unwrap();
        assert_eq!(&all[..H2_PREFACE.len()], H2_PREFACE, "handed out whole");

        let (near, far) = tokio::io::duplex(64);
        let (mut io, _handle) = watch(near);
        drop(far);
        assert!(io.sniff().await.is_err());
        // "PRI" then something else is HTTP/1.1 (hyper answers 400).
        let (near, mut far) = tokio::io::duplex(64);
        let (mut io, _handle) = watch(near);
        far.write_all(b"PRI / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);
    }

    #[tokio::test]
    async fn a_handler_can_close_its_connection_or_have_it_closed_on_a_cut_off() {
        let (_io, handle) = watch(tokio::io::empty());
        let killer = handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            killer.kill();
        });
        let ending = Watchdog::new(
            std::future::pending::<()>(),
            &handle,
            Duration::from_secs(60),
            never_stops(),
        )
        .await;
        assert!(matches!(ending, Ending::Killed), "{ending:?}");

        let (_io, handle) = watch(tokio::io::empty());
        let queue = Arc::new(ClientQueue::new(4));
        handle.close_when_cut_off(queue.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            queue.close();
        });
        let ending = Watchdog::new(
            std::future::pending::<()>(),
            &handle,
            Duration::from_secs(60),
            never_stops(),
        )
        .await;
        assert!(matches!(ending, Ending::CutOff), "{ending:?}");
    }
}
