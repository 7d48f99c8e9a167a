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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Every kept connection, busy (its response body still streaming) or
    /// free, the most recently kept last; one list per event loop (index
    /// [`event_loops::current`]), the loop whose thread runs the
    /// connection's task. A request takes a free connection of its own
    /// loop, so under load nothing wakes another thread; a loop with no
    /// connection of its own yet borrows another's rather than open one
    /// (so a dashboard that sees one request at a time sees one
    /// connection, as with one pool).
    kept: Box<[Mutex<Vec<Kept>>]>,
    idle_timeout: Duration,
}

struct Kept {
    sender: SendRequest<Outgoing>,
    since: Instant,
}

/// A connection taken for one exchange, and the loop it goes back to.
struct Taken {
    sender: SendRequest<Outgoing>,
    home: usize,
    /// When its last exchange got its answer (its idle time starts there).
    since: Instant,
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
            kept: (0..loops).map(|_| Mutex::new(Vec::new())).collect(),
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
    pub async fn send(
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
                    home,
                    since,
                },
                reused,
            ) = match free {
                Some(taken) => (taken, true),
                None => {
                    // Boxed: connecting (a timeout and hyper's handshake)
                    // is rare and its state large; inline, every request's
                    // future would carry (and copy) it.
                    let sender = Box::pin(self.connect()).await.map_err(SendError::Connect)?;
                    (
                        Taken {
                            sender,
                            home: self.here(),
                            since: Instant::now(),
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
                    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                        self.keep(sender, home);
                    }
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

    /// A kept connection that can take a request now: the calling loop's
    /// own; another loop's only while this loop has none of its own (say,
    /// the first requests it serves). Once it has one, a loop opens a new
    /// connection rather than borrow: a borrowed connection's task runs on
    /// the other thread, and every exchange on it wakes that thread.
    async fn take_free(&self) -> Option<Taken> {
        let here = self.here();
        {
            let mut own = lock(&self.kept[here]);
            if let Some((sender, since)) = take_ready(&mut own) {
                return Some(Taken {
                    sender,
                    home: here,
                    since,
                });
            }
            if !own.is_empty() {
                return None;
            }
        }
        let loops = self.kept.len();
        let others = || (1..loops).map(|step| (here + step) % loops);
        let ready = others().find_map(|home| {
            let (sender, since) = take_ready(&mut lock(&self.kept[home]))?;
            Some(Taken {
                sender,
                home,
                since,
            })
        });
        if ready.is_some() {
            return ready;
        }
        // Another loop's connection may be finishing the previous exchange
        // (its thread has not yet run the step that frees it, while the
        // client already has the answer and asked again here): wait for it
        // briefly rather than open a second connection.
        let (mut sender, home) = others().find_map(|home| {
            let mut kept = lock(&self.kept[home]);
            let open = kept.iter().rposition(|kept| !kept.sender.is_closed())?;
            Some((kept.swap_remove(open).sender, home))
        })?;
        match tokio::time::timeout(FINISHING, sender.ready()).await {
            // Busy until just now: not idle.
            Ok(Ok(())) => Some(Taken {
                sender,
                home,
                since: Instant::now(),
            }),
            Ok(Err(_)) => None,
            Err(_) => {
                self.keep(sender, home);
                None
            }
        }
    }

    fn keep(&self, sender: SendRequest<Outgoing>, home: usize) {
        let mut kept = lock(&self.kept[home % self.kept.len()]);
        if kept.len() < MAX_KEPT {
            kept.push(Kept {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops closed connections and free ones unused for `idle_timeout`;
    /// dropping the sender closes the connection.
    fn sweep(&self, now: Instant) {
        for kept in self.kept.iter() {
            lock(kept).retain(|kept| {
                let idle =
                    kept.sender.is_ready() && now.duration_since(kept.since) > self.idle_timeout;
                !(kept.sender.is_closed() || idle)
            });
        }
    }

    /// The calling event loop's list.
    fn here(&self) -> usize {
        event_loops::current() % self.kept.len()
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
    let mut index = kept.len();
    while index > 0 {
        index -= 1;
        let sender = &kept[index].sender;
        if sender.is_closed() {
            kept.swap_remove(index);
        } else if sender.is_ready() {
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

/// The list stays consistent even if a holder panicked (nothing here can).
fn lock(kept: &Mutex<Vec<Kept>>) -> std::sync::MutexGuard<'_, Vec<Kept>> {
    kept.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
