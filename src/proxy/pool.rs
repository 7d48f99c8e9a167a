//! Keep-alive HTTP/1.1 connections to the dashboard.
//!
//! Owns: opening connections (TCP_NODELAY, a connect timeout), reusing the
//! ones that are free, forgetting closed ones and closing ones idle too long,
//! and sending a request again on a fresh connection when a kept-alive one
//! closed before the dashboard saw it — or, for an idempotent request
//! without a body (GET, HEAD, OPTIONS), when a kept-alive one that had sat
//! idle for [`RACE_IDLE`] broke before any answer (once, on a new
//! connection: the dashboard may have closed it just as the request went
//! out, the race every keep-alive client has).
//!
//! Does not own: what goes into the request (`proxy`), or what happens after
//! a 101 (`tunnel`); a connection that switched protocols is never kept.
//!
//! Why not hyper-util's pooled client: it is general (any scheme, HTTP/2,
//! waiters, a task per request that hands the connection back when the
//! body ends) and profiling the proxy benchmark put it at about a fifth of
//! the gateway's user-space instructions. Here there is one destination and
//! HTTP/1.1 only, so a connection is kept straight after its response head
//! arrives and is taken again once hyper reports it ready, which is the
//! moment the previous response body has been read to the end.

use std::future::{self, Future};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{Either, FutureExt};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::outgoing::Outgoing;
use crate::event_loops;
use crate::shutdown::Shutdown;

/// A dashboard that does not accept a TCP connection within this is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many connections are kept per event loop; more are closed
/// after their exchange. Far above what a dashboard needs; it only bounds memory.
const MAX_KEPT: usize = 512;

/// How long a loop with no connection of its own waits for another loop's
/// busy one to finish its exchange before opening one (see `take_free`).
const FINISHING: Duration = Duration::from_millis(20);

/// A kept connection idle at least this long may have been closed by the
/// dashboard (its idle timeout: seconds, in every server) just as a
/// request goes out on it, so the request's head is copied to send again.
/// One used more recently is not in that race: the copy (the whole header
/// map, a few allocations) would be paid by every request under load for
/// nothing. A dashboard dying under such a connection fails its requests
/// either way.
const RACE_IDLE: Duration = Duration::from_millis(100);

/// How often connections idle longer than the idle timeout are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

pub struct Pool {
    /// `host:port` of the dashboard.
    address: String,
    /// One entry per event loop (index [`event_loops::current`]): the
    /// connections whose task runs on that loop's thread. A request takes
    /// a free connection of its own loop, or opens one, so under load
    /// nothing wakes another thread; a loop with no connection of its own
    /// at all borrows another's rather than open one (so a dashboard that
    /// sees one request at a time sees one connection, as with one pool).
    loops: Box<[Mutex<Connections>]>,
    idle_timeout: Duration,
}

/// One loop's connections.
#[derive(Default)]
struct Connections {
    /// Kept ones, busy (their response body still streaming) or free, the
    /// most recently kept last.
    kept: Vec<Kept>,
    /// Taken ones, waiting for a response head ([`Out`]). Counted, so a
    /// loop whose every connection is out opens another rather than
    /// borrow one whose task runs on another thread: every exchange on
    /// that would wake the other thread, three times (the request, the
    /// response, the body), through its driver's eventfd.
    out: usize,
}

struct Kept {
    sender: SendRequest<Outgoing>,
    since: Instant,
}

/// A connection taken for one exchange.
struct Taken<'a> {
    sender: SendRequest<Outgoing>,
    /// When its last exchange got its answer (its idle time starts there).
    since: Instant,
    out: Out<'a>,
}

/// A connection counted out of its loop's [`Connections`] until it is kept
/// again or dropped.
struct Out<'a> {
    home: Option<&'a Mutex<Connections>>,
}

impl<'a> Out<'a> {
    /// Counts one more out of `home`, whose lock the caller holds.
    fn of(home: &'a Mutex<Connections>, held: &mut Connections) -> Out<'a> {
        held.out += 1;
        Out { home: Some(home) }
    }

    /// Gives `sender` back to its loop's list (fewer than [`MAX_KEPT`]
    /// there, else it is closed).
    fn keep(mut self, sender: SendRequest<Outgoing>) {
        if let Some(home) = self.home.take() {
            let mut home = lock(home);
            home.out -= 1;
            if home.kept.len() < MAX_KEPT {
                home.kept.push(Kept {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    /// [`Out::keep`] after `response`, unless it switched protocols: a
    /// connection that upgraded is never kept (its sender is dropped).
    fn keep_unless_upgraded(self, sender: SendRequest<Outgoing>, response: &Response<Incoming>) {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.keep(sender);
        }
    }
}

impl Drop for Out<'_> {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            lock(home).out -= 1;
        }
    }
}

/// Why a request got no response head.
pub enum SendError {
    /// No connection could be opened.
    Connect(std::io::Error),
    /// The connection broke before a response head arrived.
    Exchange(hyper::Error),
}

impl Pool {
    /// A pool for `address` (`host:port`) and a task, tracked by `shutdown`,
    /// that closes connections idle longer than `idle_timeout`.
    pub fn new(address: String, idle_timeout: Duration, shutdown: &Shutdown) -> Arc<Pool> {
        let loops = event_loops::count() + 1;
        let pool = Arc::new(Pool {
            address,
            loops: (0..loops).map(|_| Mutex::default()).collect(),
            idle_timeout,
        });
        let weak = Arc::downgrade(&pool);
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = ticks.tick() => match weak.upgrade() {
                        Some(pool) => pool.sweep(Instant::now()),
                        None => return,
                    },
                    _ = stop.requested() => return,
                }
            }
        });
        pool
    }

    /// Sends `request` (origin-form URI, Host set) and returns the response
    /// head. A request that a kept connection gave back unsent (it closed
    /// under us) goes out again on the next free connection or a new one.
    /// A request the dashboard may have seen is sent again only when it is
    /// idempotent and has no body, only once, and only on a new connection,
    /// after a kept connection broke before any answer.
    ///
    /// The usual case is decided here, before the future exists: a free
    /// connection of this loop, used less than [`RACE_IDLE`] ago (so no
    /// replay copy), takes the request at once, and the future only waits
    /// for its answer. Everything else (opening, borrowing, waiting for a
    /// finishing connection, replaying) is [`Pool::send_slowly`], boxed:
    /// inline, every request's future would carry its state and a second
    /// copy of the request (a boxed proxied request's future was 3.4 KB).
    pub fn send(
        &self,
        request: Request<Outgoing>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + '_ {
        let Some(Taken {
            mut sender,
            since: _,
            out,
        }) = self.take_recent()
        else {
            return Either::Right(Box::pin(self.send_slowly(request)));
        };
        // A combinator, not an `async` block: the block would hold hyper's
        // future twice (its capture and what it awaits).
        let sent = sender.try_send_request(request);
        Either::Left(sent.then(move |sent| match sent {
            Ok(response) => {
                out.keep_unless_upgraded(sender, &response);
                Either::Left(future::ready(Ok(response)))
            }
            Err(mut failed) => match failed.take_message() {
                Some(unsent) => {
                    debug!(error = %failed.error(), "kept connection closed; retrying on a new one");
                    Either::Right(Box::pin(self.send_slowly(unsent)))
                }
                None => Either::Left(future::ready(Err(SendError::Exchange(
                    failed.into_error(),
                )))),
            },
        }))
    }

    /// [`Pool::send`] past its usual case: on the next free connection (any
    /// loop's, see [`Pool::take_free`]) or a new one, with a replay copy
    /// when the connection sat idle for [`RACE_IDLE`].
    async fn send_slowly(
        &self,
        mut request: Request<Outgoing>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut replayed = false;
        loop {
            let free = if replayed {
                None
            } else {
                self.take_free().await
            };
            let (
                Taken {
                    mut sender,
                    since,
                    out,
                },
                reused,
            ) = match free {
                Some(taken) => (taken, true),
                None => {
                    // Boxed: connecting (a timeout and hyper's handshake)
                    // is rare and its state large.
                    let sender = Box::pin(self.connect()).await.map_err(SendError::Connect)?;
                    let home = &self.loops[self.here()];
                    let out = Out::of(home, &mut lock(home));
                    (
                        Taken {
                            sender,
                            since: Instant::now(),
                            out,
                        },
                        false,
                    )
                }
            };
            // The head is copied only when a replay could happen.
            let replay = (reused && !replayed && since.elapsed() >= RACE_IDLE)
                .then(|| replayable(&request))
                .flatten();
            match sender.try_send_request(request).await {
                Ok(response) => {
                    out.keep_unless_upgraded(sender, &response);
                    return Ok(response);
                }
                Err(mut failed) => match (failed.take_message(), replay) {
                    (Some(unsent), _) if reused => {
                        debug!(error = %failed.error(), "kept connection closed; retrying on a new one");
                        request = unsent;
                    }
                    (None, Some(again)) if broke_before_answer(failed.error()) => {
                        debug!(error = %failed.error(), "kept connection broke before an answer; retrying the idempotent request once on a new connection");
                        request = again;
                        replayed = true;
                    }
                    _ => return Err(SendError::Exchange(failed.into_error())),
                },
            }
        }
    }

    /// A free connection of the calling loop's own, kept less than
    /// [`RACE_IDLE`] ago: one [`Pool::send`] sends on at once.
    fn take_recent(&self) -> Option<Taken<'_>> {
        let home = &self.loops[self.here()];
        let mut own = lock(home);
        let now = Instant::now();
        let (sender, since) =
            take_ready_if(&mut own.kept, |since| now.duration_since(since) < RACE_IDLE)?;
        let out = Out::of(home, &mut own);
        Some(Taken { sender, since, out })
    }

    /// A kept connection that can take a request now: the calling loop's
    /// own; another loop's only while this loop has none of its own, kept
    /// or out (say, the first requests it serves). Once it has one, a loop
    /// opens a new connection rather than borrow (see [`Connections::out`]).
    async fn take_free(&self) -> Option<Taken<'_>> {
        let here = self.here();
        {
            let home = &self.loops[here];
            let mut own = lock(home);
            if let Some((sender, since)) = take_ready(&mut own.kept) {
                let out = Out::of(home, &mut own);
                return Some(Taken { sender, since, out });
            }
            if !own.kept.is_empty() || own.out > 0 {
                return None;
            }
        }
        let loops = self.loops.len();
        let others = || (1..loops).map(|step| &self.loops[(here + step) % loops]);
        let ready = others().find_map(|home| {
            let mut other = lock(home);
            let (sender, since) = take_ready(&mut other.kept)?;
            let out = Out::of(home, &mut other);
            Some(Taken { sender, since, out })
        });
        if ready.is_some() {
            return ready;
        }
        // Another loop's connection may be finishing the previous exchange
        // (its thread has not yet run the step that frees it, while the
        // client already has the answer and asked again here): wait for it
        // briefly rather than open a second connection.
        let (mut sender, out) = others().find_map(|home| {
            let mut other = lock(home);
            let open = other
                .kept
                .iter()
                .rposition(|kept| !kept.sender.is_closed())?;
            let sender = other.kept.swap_remove(open).sender;
            Some((sender, Out::of(home, &mut other)))
        })?;
        match tokio::time::timeout(FINISHING, sender.ready()).await {
            // Busy until just now: not idle.
            Ok(Ok(())) => Some(Taken {
                sender,
                since: Instant::now(),
                out,
            }),
            Ok(Err(_)) => None,
            Err(_) => {
                out.keep(sender);
                None
            }
        }
    }

    /// Drops closed connections and free ones unused for `idle_timeout`;
    /// dropping the sender closes the connection.
    fn sweep(&self, now: Instant) {
        for connections in self.loops.iter() {
            lock(connections).kept.retain(|kept| {
                let idle =
                    kept.sender.is_ready() && now.duration_since(kept.since) > self.idle_timeout;
                !(kept.sender.is_closed() || idle)
            });
        }
    }

    /// The calling event loop's list.
    fn here(&self) -> usize {
        event_loops::current() % self.loops.len()
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Outgoing>> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "dashboard connection ended by error");
            }
        });
        Ok(sender)
    }
}

/// A kept connection that can take a request now, and when it was kept,
/// forgetting closed ones on the way. Newest first: the connection most
/// likely still open.
fn take_ready(kept: &mut Vec<Kept>) -> Option<(SendRequest<Outgoing>, Instant)> {
    take_ready_if(kept, |_| true)
}

/// [`take_ready`], of the connections whose keeping time passes `fits`.
fn take_ready_if(
    kept: &mut Vec<Kept>,
    fits: impl Fn(Instant) -> bool,
) -> Option<(SendRequest<Outgoing>, Instant)> {
    let mut index = kept.len();
    while index > 0 {
        index -= 1;
        let sender = &kept[index].sender;
        if sender.is_closed() {
            kept.swap_remove(index);
        } else if sender.is_ready() && fits(kept[index].since) {
            let Kept { sender, since } = kept.swap_remove(index);
            return Some((sender, since));
        }
    }
    None
}

/// A copy of `request` to send again, when sending it twice is harmless:
/// an idempotent method (RFC 9110 §9.2.2; PUT and DELETE are left out, a
/// dashboard's handlers for them rarely are) and no body.
fn replayable(request: &Request<Outgoing>) -> Option<Request<Outgoing>> {
    use hyper::body::Body as _;
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !idempotent || !request.body().is_end_stream() {
        return None;
    }
    let mut again = Request::new(Outgoing::empty());
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    Some(again)
}

/// The connection closed or failed under the request, with no answer; not
/// a malformed answer, nor a failure of our own.
fn broke_before_answer(error: &hyper::Error) -> bool {
    if error.is_parse() || error.is_user() || error.is_timeout() {
        return false;
    }
    error.is_incomplete_message()
        || error.is_canceled()
        || error.is_closed()
        || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}

/// The lists stay consistent even if a holder panicked (nothing here can).
fn lock(connections: &Mutex<Connections>) -> std::sync::MutexGuard<'_, Connections> {
    connections
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;

    /// A dashboard that answers each request with the number of the
    /// connection it came on (1, 2, …); `/slow` waits for `release`.
    struct Dashboard {
        address: String,
        /// Requests for `/slow` received so far.
        slow: Arc<AtomicUsize>,
        release: Arc<Notify>,
    }

    async fn dashboard() -> Dashboard {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let slow = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (seen, wake) = (slow.clone(), release.clone());
        tokio::spawn(async move {
            let mut opened = 0usize;
            while let Ok((stream, _)) = listener.accept().await {
                opened += 1;
                let number = opened;
                let (seen, wake) = (seen.clone(), wake.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (seen, wake) = (seen.clone(), wake.clone());
                    async move {
                        if request.uri().path() == "/slow" {
                            seen.fetch_add(1, Ordering::SeqCst);
                            wake.notified().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            number.to_string(),
                        ))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Dashboard {
            address,
            slow,
            release,
        }
    }

    fn get(path: &str) -> Request<Outgoing> {
        let mut request = Request::new(Outgoing::empty());
        *request.uri_mut() = path.parse().expect("path");
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("dashboard"),
        );
        request
    }

    /// The number of the dashboard connection that answered.
    async fn connection_of(answer: Result<Response<Incoming>, SendError>) -> String {
        let Ok(answer) = answer else {
            panic!("no answer from the dashboard");
        };
        let body = answer.into_body().collect().await.expect("body");
        String::from_utf8(body.to_bytes().to_vec()).expect("utf-8")
    }

    /// A loop whose one connection is out waiting for an answer opens a
    /// second one rather than borrow a free connection of another loop
    /// (whose task runs on that loop's thread: every exchange would wake it).
    #[tokio::test]
    async fn a_loop_with_its_connection_out_opens_its_own_rather_than_borrow() {
        let dashboard = dashboard().await;
        let pool = Pool::new(
            dashboard.address.clone(),
            Duration::from_secs(60),
            &Shutdown::new(),
        );

        // Loop 1 opens connection 1 and keeps it waiting.
        event_loops::pretend_loop(1);
        let slow = pool.send(get("/slow"));
        tokio::pin!(slow);
        let sent = async {
            while dashboard.slow.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = &mut slow => panic!("/slow answered before its release"),
            () = sent => {}
        }

        // Loop 2 has no connection at all and none is free: it opens
        // connection 2, kept free in its list once answered.
        event_loops::pretend_loop(2);
        assert_eq!(connection_of(pool.send(get("/fast")).await).await, "2");

        // Loop 1 again: its own connection is out, loop 2's is free.
        event_loops::pretend_loop(1);
        assert_eq!(
            connection_of(pool.send(get("/fast")).await).await,
            "3",
            "loop 1 borrowed loop 2's connection instead of opening its own"
        );

        // Loop 1's first request still gets its answer on connection 1,
        // and loop 2 still finds its own connection free.
        dashboard.release.notify_one();
        assert_eq!(connection_of(slow.await).await, "1");
        event_loops::pretend_loop(2);
        assert_eq!(connection_of(pool.send(get("/fast")).await).await, "2");
    }
}
