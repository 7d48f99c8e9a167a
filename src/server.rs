//! The public listener: accept loops, router, connection tracking and drain.
//!
//! Each event loop (see [`event_loops`](crate::event_loops): one thread per
//! core, each with its own listener on the port) runs an accept loop here
//! and serves its connections on its own thread; [`serve`] starts them,
//! waits for the signal and conducts the drain across all of them.
//!
//! Owns: HTTP server settings (head deadline, header size, keep-alive,
//! h2c), which handler each request goes to (each gets only the context it
//! needs: the broadcaster's handlers a [`Broadcaster`], never this module's
//! [`Gateway`], so data flows request → router → handler → hub with no
//! import back here), a [`watchdog`](crate::watchdog) on every accepted
//! connection (closed when it accepts no bytes for WRITE_TIMEOUT_SECS, when
//! its SSE client is cut off, when stalled while draining, or, over
//! HTTP/1, when a request head takes longer than [`HEADER_READ_TIMEOUT`]),
//! and the order of shutdown: stop accepting → tell upgraded tasks to
//! finish → let in-flight requests complete → give up after the grace
//! period.
//!
//! Every request, proxied or routed, goes through one tower stack, the
//! [`pipeline`] (request id, catch-panic, load shedding: see
//! [`layers`](crate::layers)), composed here in one place, per connection,
//! around [`handle`], which sends it to the proxy or to the router. The
//! reserved routes and the pages have their own stacks inside, built once
//! at start ([`App`]). The accept loop refuses a connection past
//! MAX_HTTP_CONNECTIONS with a 503 ([`refuse`]).
//!
//! Does not own: any route's behaviour; each handler lives in its module and
//! the router below names it in one hop. Nor what each layer does
//! (`layers`).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing::{debug, error, info, warn};

use crate::auth::{self, Access};
use crate::beacon::Signal;
use crate::broadcast::Broadcaster;
use crate::config::{Config, RESERVED_PREFIX};
use crate::layers::panic::{CatchPanicBody, CatchPanicLayer};
use crate::layers::request_id::RequestIdLayer;
use crate::layers::shed::{ShedLayer, Slots};
use crate::layers::{self, Peer};
use crate::lease::LeaseView;
use crate::metrics::Metrics;
use crate::proxy::{Forwarding, Proxy};
use crate::replicas::{Replicas, Route};
use crate::response::{self, Body};
use crate::shutdown::Shutdown;
use crate::supervisor::ChildStatus;
use crate::upstream::UpstreamHealth;
use crate::watchdog::{self, ConnectionHandle, Heads, Protocol, Watchdog};
use crate::{assets, cors, event_loops, faults, health, public_config, publish, sse, state, ws};

/// An HTTP/1 connection that takes longer than this for a whole request
/// head, from its accept or from the end of its last response, is closed
/// (slowloris; idle keep-alive connections): the watchdog's head deadline.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head hyper buffers; past it the client gets 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How many headers one request may carry; past it the client gets 431.
/// hyper's own default, and no higher: up to it hyper parses a head into
/// arrays on the stack, while past it it allocates two of MAX_HEADERS
/// entries (4 KiB each, too large for the allocator's per-thread cache)
/// for every request head. At 128 that was 4% of a proxied request's
/// instructions (`benches/proxy-instructions.sh`: 38,881 → 37,298). nginx
/// has no count, only a size (our MAX_HEADER_BYTES).
pub const MAX_HEADERS: usize = 100;

/// After an accept error (EMFILE and friends) the loop pauses this long
/// instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A connection refused past MAX_HTTP_CONNECTIONS: how long its request is
/// awaited, its 503 given to write, and the client given to close after.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Refused connections one loop keeps open at once to answer them (each
/// for at most 3 × [`REFUSAL_WAIT`]); past it, one is closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;

/// Everything the router needs, built once at start.
pub struct Gateway {
    pub config: Config,
    /// Who may read and publish (AUTH_SECRET, PUBLISH_TOKEN, BASIC_AUTH).
    pub access: Arc<Access>,
    /// The broadcaster's context: hub, limits, client slots, clocks.
    pub broadcaster: Arc<Broadcaster>,
    /// Present when a dashboard is configured.
    pub proxy: Option<Arc<Proxy>>,
    /// What `/health` reports about the dashboard.
    pub upstream: Arc<UpstreamHealth>,
    /// The supervised dashboard's state and restarts, for `/health`.
    pub dashboard: Option<Arc<ChildStatus>>,
    /// The supervised worker's state and restarts, for `/health`.
    pub worker: Option<Arc<ChildStatus>>,
    /// With REDIS_URL: who holds the worker's lease, for `/health`.
    pub worker_lease: Option<Arc<LeaseView>>,
    /// Tells upgraded tasks to finish and waits for them.
    pub shutdown: Shutdown,
    /// What `/_switchyard/metrics` reports.
    pub metrics: Metrics,
    /// Sticky dashboard sessions across replicas: with REDIS_URL and a
    /// dashboard only.
    pub replicas: Option<Arc<Replicas>>,
}

/// Serves `listeners`, one per event loop (see [`event_loops`]), until
/// `signal` resolves, then drains for at most `drain_for` (the grace, less
/// what stopping a supervised child needs). Fails only when a loop's
/// thread cannot be started.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    gateway: Arc<Gateway>,
    signal: impl Future<Output = ()>,
    drain_for: Duration,
) -> io::Result<()> {
    let app = App::new(gateway.clone());
    let (phase, watch_phase) = watch::channel(Phase::Serving);
    let failures = event_loops::Failures::default();
    let mut loops = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let (drained, on_drained) = oneshot::channel();
        // Each loop its own `App` (the same stacks and slots): the count
        // every request bumps is then this loop's alone.
        let (app, seen) = (Arc::new(app.for_loop()), watch_phase.clone());
        let number = index + 1;
        let thread = event_loops::start(number, failures.clone(), move || {
            serve_loop(listener, app, seen, drained)
        });
        match thread {
            Ok(thread) => loops.push(((number, thread), on_drained)),
            Err(error) => {
                let _ = phase.send(Phase::Exit);
                return Err(error);
            }
        }
    }

    // A loop that panicked took its connections with it and no longer
    // accepts: the gateway drains the others and exits non-zero, so the
    // platform restarts it (see `event_loops`).
    tokio::select! {
        _ = signal => {}
        _ = failures.first() => {}
    }
    let _ = phase.send(Phase::Draining);
    // What is left of the grace after this is for the loops to return.
    let grace = drain_for.saturating_sub(LOOP_EXIT_WAIT);
    info!(
        grace_secs = grace.as_secs(),
        "shutting down: stopped accepting, draining"
    );
    gateway.shutdown.begin();
    let (threads, connections_drained): (Vec<_>, Vec<_>) = loops.into_iter().unzip();
    let drained = async {
        tokio::join!(
            async {
                for loop_drained in connections_drained {
                    let _ = loop_drained.await;
                }
            },
            gateway.shutdown.drained()
        );
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => info!("drained; bye"),
        Err(_) => warn!(
            grace_secs = grace.as_secs(),
            "grace period over with work in flight; exiting anyway"
        ),
    }
    // Each loop returns now; its runtime cuts what is still open. A loop
    // stuck in a blocking call is left behind: the process exits anyway.
    let _ = phase.send(Phase::Exit);
    let deadline = Instant::now() + LOOP_EXIT_WAIT;
    while threads.iter().any(|(_, thread)| !thread.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (number, thread) in &threads {
        if !thread.is_finished() {
            error!(
                event_loop = number,
                "an event loop did not stop in time; abandoned"
            );
        }
    }
    match failures.count() {
        0 => Ok(()),
        n => Err(io::Error::other(format!("{n} event loop(s) panicked"))),
    }
}

/// How long the loops get to return once told to exit (each cuts its
/// tasks within `event_loops`' 100 ms); taken from the grace.
const LOOP_EXIT_WAIT: Duration = Duration::from_millis(300);

/// Where the gateway is in its life, as every loop sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Stop accepting; finish the connections in hand.
    Draining,
    /// The grace period is over (or everything drained): return.
    Exit,
}

/// One event loop: accepts on its own listener and serves each connection
/// on this thread; from [`Phase::Draining`] on, stops accepting, lets its
/// connections finish (then reports on `drained`), and returns at
/// [`Phase::Exit`].
async fn serve_loop(
    listener: std::net::TcpListener,
    app: Arc<App>,
    mut phase: watch::Receiver<Phase>,
    drained: oneshot::Sender<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => Some(listener),
        Err(error) => {
            error!(%error, "an event loop cannot use its listener");
            None
        }
    };
    let connections = GracefulShutdown::new();
    if let Some(listener) = listener {
        accept_loop(listener, &app, &connections, &mut phase).await;
    }
    let mut exit = phase.clone();
    let at_exit = exit.wait_for(|&now| now == Phase::Exit);
    tokio::select! {
        _ = connections.shutdown() => {
            let _ = drained.send(());
            let _ = phase.wait_for(|&now| now == Phase::Exit).await;
        }
        _ = at_exit => {}
    }
}

/// Accepts until draining begins; each connection is served on this loop.
async fn accept_loop(
    listener: TcpListener,
    app: &Arc<App>,
    connections: &GracefulShutdown,
    phase: &mut watch::Receiver<Phase>,
) {
    let gateway = &app.gateway;
    let builders = Arc::new(Builders::new());
    let mut last_accept_warning: Option<Instant> = None;
    let mut refusals = Refusals::default();
    let stop = phase.wait_for(|&now| now >= Phase::Draining);
    tokio::pin!(stop);
    let injected_panic = faults::loop_panic_requested();
    tokio::pin!(injected_panic);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut injected_panic => panic!("fault injected: event loop {} panics", event_loops::current()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    throttled_accept_warning(&mut last_accept_warning, &error);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Some(slot) = app.slots.take() else {
            refuse(stream, app, &mut refusals);
            continue;
        };
        // Linux: inherited from the listener (`event_loops::bind`).
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        debug!(%peer, event_loop = event_loops::current(), "connection opened");
        let (mut stream, handle) = watchdog::watch(stream);
        let service = OneAtATime(RefCell::new(pipeline(app.clone(), peer, handle.clone())));
        // Counts the connection in the loop's drain from now on.
        let watcher = connections.watcher();
        let builders = builders.clone();
        let write_timeout = gateway.config.write_timeout;
        // The drain, as a connection hears it: `Shutdown::begin` fires it
        // just after the loops' phase turns to draining. A signal rather
        // than the phase's `watch`: it is polled at every wake-up of the
        // connection, and that costs an atomic load, not a lock.
        let mut draining = gateway.shutdown.requested();
        let stop = gateway.shutdown.requested();
        tokio::spawn(async move {
            // A connection that has sent nothing when the drain begins is
            // closed unserved (as hyper-util's `auto` builder did), and so
            // is one silent for HEADER_READ_TIMEOUT (from then on, for
            // HTTP/1, the watchdog's head deadline counts from the accept
            // too): a silent connection would otherwise hold its
            // MAX_HTTP_CONNECTIONS slot for good.
            let protocol = tokio::select! {
                protocol = stream.sniff() => protocol,
                () = &mut draining => Err(io::ErrorKind::Interrupted.into()),
                _ = tokio::time::sleep(HEADER_READ_TIMEOUT) => {
                    Err(io::ErrorKind::TimedOut.into())
                }
            };
            let io = TokioIo::new(stream);
            let http1 = matches!(protocol, Ok(Protocol::Http1));
            let connection = match protocol {
                Ok(Protocol::Http1) => {
                    let service = Heads::new(service, handle.clone());
                    let connection = builders.http1.serve_connection(io, service);
                    Either::Left(until_drained(
                        connection.with_upgrades(),
                        |connection| connection.graceful_shutdown(),
                        draining,
                        watcher,
                    ))
                }
                Ok(Protocol::Http2) => Either::Right(until_drained(
                    builders.http2.serve_connection(io, service),
                    |connection| connection.graceful_shutdown(),
                    draining,
                    watcher,
                )),
                Err(error) => {
                    debug!(%peer, %error, "connection closed before a request");
                    drop(slot);
                    return;
                }
            };
            let mut connection = Watchdog::new(connection, &handle, write_timeout, stop);
            if http1 {
                connection = connection.with_head_deadline(HEADER_READ_TIMEOUT);
            }
            match connection.await {
                watchdog::Ending::Finished(Ok(())) => debug!(%peer, "connection closed"),
                watchdog::Ending::Finished(Err(error)) => {
                    debug!(%peer, %error, "connection closed with error")
                }
                ending => debug!(%peer, ?ending, "connection closed by its watchdog"),
            }
            // hyper is done with it (closed, or handed over at an upgrade).
            drop(slot);
            // A WebSocket's hand-over (`ws::upgrade`): its upgrade is done,
            // or failed, by now.
            if let Some(then) = handle.take_then() {
                then.await;
            }
        });
    }
}

/// Serves `connection` until it ends; once `draining` fires (the gateway's
/// shutdown signal), first tells it to finish (`graceful_shutdown`: hyper
/// closes it after the request in flight). `counted` keeps it in the
/// loop's drain (`GracefulShutdown`, whose own `watch` has no impl for
/// hyper's upgradeable HTTP/1 connection in hyper-util 0.1).
async fn until_drained<C: Future>(
    connection: C,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    mut draining: Signal,
    counted: Watcher,
) -> C::Output {
    tokio::pin!(connection);
    tokio::select! {
        biased;
        () = &mut draining => {}
        ended = &mut connection => return ended,
    }
    graceful_shutdown(connection.as_mut());
    let ended = connection.await;
    drop(counted);
    ended
}

/// What a loop counts of the connections it refused, for its warning.
#[derive(Default)]
struct Refusals {
    last_warning: Option<Instant>,
    since_warning: u64,
}

/// A connection past MAX_HTTP_CONNECTIONS: answered 503 and closed, on a
/// task of its own (see [`answer_and_close`]), with a warning a second at
/// most. Like nginx at `worker_connections`, the gateway never queues it;
/// unlike nginx, which closes it unanswered, it says why (see
/// docs/operations.md). Past [`REFUSALS_AT_ONCE`] being answered, it is
/// closed at once.
fn refuse(stream: TcpStream, app: &App, refusals: &mut Refusals) {
    refusals.since_warning += 1;
    let now = Instant::now();
    if refusals
        .last_warning
        .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
    {
        warn!(
            max_http_connections = app.slots.max(),
            refused = refusals.since_warning,
            "MAX_HTTP_CONNECTIONS reached: new connections are answered 503 and closed"
        );
        refusals.last_warning = Some(now);
        refusals.since_warning = 0;
    }
    let Some(answering) = app.refusing.take() else {
        return;
    };
    let answer = app.refusal.clone();
    tokio::spawn(async move {
        answer_and_close(stream, answer).await;
        drop(answering);
    });
}

/// Reads the request (for at most [`REFUSAL_WAIT`]: a client that has not
/// sent it yet would take an early answer for garbage), writes `answer`,
/// shuts the sending side, then reads until the client closes (at most 64
/// KiB, [`REFUSAL_WAIT`]): closing on unread bytes sends a reset, which
/// can discard the answer before the client reads it.
async fn answer_and_close(mut stream: TcpStream, answer: Bytes) {
    let mut scratch = [0u8; 2048];
    let _ = tokio::time::timeout(REFUSAL_WAIT, stream.read(&mut scratch)).await;
    match tokio::time::timeout(REFUSAL_WAIT, stream.write_all(&answer)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_WAIT, drain).await;
}

/// hyper's settings for every accepted connection, one set per loop:
/// HTTP/1.1 with size limits (its head deadline is the watchdog's), or h2c (with
/// prior knowledge), as the connection's first bytes tell
/// ([`Watched::sniff`](crate::watchdog::Watched::sniff)).
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Builders {
        let mut http1 = http1::Builder::new();
        // No timer, so no header read timeout of hyper's: the watchdog's
        // head deadline is that, without a timer per request.
        http1
            .max_buf_size(MAX_HEADER_BYTES)
            // Checked on the parsed head too: the buffer's bound alone
            // lets one large read past it (how hyper reads, after the
            // first 8 KiB, decides).
            .max_header_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        Builders { http1, http2 }
    }
}

/// A reserved route's or a page's stack, boxed: one type whatever layers
/// it has.
type Routes = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// Built once at start: the gateway and the tower stacks in front of its
/// handlers (see [`layers`] for the picture). Each loop has a copy
/// ([`App::for_loop`]) sharing all of it but [`App::refusing`].
struct App {
    gateway: Arc<Gateway>,
    /// `/_switchyard/*`: trace, then [`reserved`].
    reserved: Routes,
    /// The console at `/` (no dashboard): gzip when asked.
    console: Routes,
    /// MAX_HTTP_CONNECTIONS, for every loop.
    slots: Arc<Slots>,
    /// What a connection past MAX_HTTP_CONNECTIONS is answered.
    refusal: Bytes,
    /// Refused connections this loop is answering ([`REFUSALS_AT_ONCE`]).
    refusing: Arc<Slots>,
}

impl App {
    fn new(gateway: Arc<Gateway>) -> App {
        let pages = {
            let gateway = gateway.clone();
            ServiceBuilder::new()
                .map_response(layers::rebox)
                .layer(layers::pages::compression())
                .service_fn(move |request: Request<Incoming>| {
                    let answer = page(&gateway, &request);
                    std::future::ready(Ok::<_, Infallible>(answer))
                })
        };
        let pages = Routes::new(pages);
        let reserved = {
            let gateway = gateway.clone();
            let pages = pages.clone();
            ServiceBuilder::new()
                .map_response(layers::rebox)
                .layer(layers::request_id::trace())
                .service_fn(move |request: Request<Incoming>| {
                    reserved(gateway.clone(), pages.clone(), request)
                })
        };
        let max = gateway.config.max_http_connections;
        App {
            reserved: Routes::new(reserved),
            console: pages,
            slots: Slots::new(max),
            refusal: layers::shed::refused_connection(max),
            refusing: Slots::new(REFUSALS_AT_ONCE),
            gateway,
        }
    }

    fn for_loop(&self) -> App {
        App {
            gateway: self.gateway.clone(),
            reserved: self.reserved.clone(),
            console: self.console.clone(),
            slots: self.slots.clone(),
            refusal: self.refusal.clone(),
            refusing: Slots::new(REFUSALS_AT_ONCE),
        }
    }
}

/// Every request's way through the gateway, proxied or not, outermost
/// first: its id ([`RequestIdLayer`]), catch-panic ([`CatchPanicLayer`]),
/// load shedding ([`ShedLayer`], MAX_HTTP_CONNECTIONS), then [`handle`].
/// One per connection (it knows the peer and the connection's watchdog).
/// Each layer is ours, with a concrete future and nothing allocated per
/// request; [`handle`]'s future is boxed once (see `layers` for the cost).
fn pipeline(
    app: Arc<App>,
    peer: SocketAddr,
    connection: ConnectionHandle,
) -> impl Service<
    Request<Incoming>,
    Response = Response<CatchPanicBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
       + 'static {
    let slots = app.slots.clone();
    let handler = tower::service_fn(move |mut request: Request<Incoming>| {
        let fault = faults::requested(peer, &request);
        if let Some(fault) = fault {
            faults::apply_on_loop(fault);
        }
        let gateway = &app.gateway;
        let proxied = gateway.proxy.is_some() && is_proxied(gateway, request.uri().path());
        // Only routed requests carry the connection's handle (the SSE
        // handler registers with it): an extension costs allocations.
        if !proxied {
            request.extensions_mut().insert(connection.clone());
        }
        let panics = fault == Some(faults::Fault::Panic);
        handle(app.clone(), peer, proxied, panics, request)
    });
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(CatchPanicLayer)
        .layer(ShedLayer::new(slots))
        .service(handler)
}

/// A connection's [`pipeline`] as hyper calls it: through `&self`, where a
/// tower service is called through `&mut self`. hyper calls a connection's
/// service one request at a time, and the borrow lasts only as long as
/// `call` (which returns the request's future), so it never meets
/// another; no clone of the stack per request. `poll_ready` is not asked:
/// no layer of the pipeline applies backpressure (the shed layer answers
/// 503 in `call` instead), and `tower::service_fn` is always ready.
struct OneAtATime<S>(RefCell<S>);

impl<S> hyper::service::Service<Request<Incoming>> for OneAtATime<S>
where
    S: Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: Request<Incoming>) -> S::Future {
        self.0.borrow_mut().call(request)
    }
}

/// The handler at the bottom of the pipeline: a dashboard request to the
/// proxy, anything else to [`route`]. Both futures are boxed once (the
/// proxy's by [`proxied`], under 1 KB): a request's future is moved into each
/// layer's and then into hyper's, so unboxed its bytes were copied five
/// times per request (a quarter of what the pipeline cost the proxy path
/// under callgrind, more than the one allocation this costs).
/// `panics` is the fault injected by tests (`faults`).
fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    proxied: bool,
    panics: bool,
    request: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    if proxied && app.gateway.proxy.is_some() {
        Either::Left(self::proxied(app, peer, panics, request))
    } else {
        Either::Right(Box::pin(route(app, peer, request)))
    }
}

/// A dashboard request: the site password, then this replica's dashboard,
/// or (sticky sessions) the replica that holds the browser's session.
///
/// Boxed here, as an `async` block inside `Box::pin`: built in its
/// allocation, where the future an `async fn` returns would be copied
/// into it whole. And one `forward` is awaited, whichever the route: each
/// call site took a room of its own (~4 KB) in the future; with three, and
/// the block `handle` awaited this in, it was 15.5 KB per request. What
/// the block awaits is built before its own future exists (`forward`,
/// the exchange, the pool's send) and the rare paths are boxed (the
/// password check, the hop to another replica): see
/// `a_proxied_requests_future_stays_small` for why under 1 KB.
fn proxied(
    app: Arc<App>,
    peer: SocketAddr,
    panics: bool,
    mut request: Request<Incoming>,
) -> Pin<Box<impl Future<Output = Result<Response<Body>, Infallible>> + Send>> {
    Box::pin(async move {
        let gateway = &app.gateway;
        let Some(proxy) = gateway.proxy.as_ref() else {
            return Ok(response::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no dashboard",
            ));
        };
        if panics {
            panic!("fault injected: a proxied request panics");
        }
        let route = match &gateway.replicas {
            Some(replicas) => replicas.route(&mut request, peer),
            None => Route::Local {
                forwarding: Forwarding::Client,
                pin: false,
                secure: false,
                from_replica: false,
            },
        };
        // Where it goes; whether this replica's cookie goes on the answer
        // (with `Secure` or not); whether it was admitted already: a hop was
        // (and scrubbed, its X-Forwarded-User set) by the replica the client
        // reached.
        let (forwarding, replica, pin_secure, admitted) = match route {
            Route::Refuse(refusal) => return Ok(refusal),
            Route::Local {
                forwarding,
                pin,
                secure,
                from_replica,
            } => (forwarding, None, pin.then_some(secure), from_replica),
            Route::Peer(replica, hop) => (hop, Some(replica), None, false),
        };
        if !admitted {
            if let Err(refusal) = admit_to_dashboard(gateway, peer, &mut request).await {
                return Ok(refusal);
            }
        }
        // A GET the pinned replica failed (it died since the last round) is
        // sent again to this same URL, now pinned here.
        let retry = match (&gateway.replicas, &replica) {
            (Some(replicas), Some(_)) => replicas.retry(&request, peer),
            _ => None,
        };
        let started = Instant::now();
        // Boxed, the hop to another replica: its future wraps a second
        // `forward` and would double this one's size for every request.
        let forwarded = match &replica {
            None => Either::Left(proxy.forward(request, peer, forwarding)),
            Some(replica) => Either::Right(Box::pin(replica.forward(request, peer, forwarding))),
        };
        let mut answer = forwarded.await;
        if let Some(replicas) = &gateway.replicas {
            if let Some(secure) = pin_secure {
                replicas.pin(&mut answer, secure);
            }
            if let Some(retry) = retry {
                if answer.status() == StatusCode::BAD_GATEWAY {
                    answer = replicas.moved(retry);
                }
            }
        }
        gateway
            .metrics
            .record_proxied(answer.status(), started.elapsed());
        Ok(answer)
    })
}

/// The site password for a dashboard request; then the gateway's own
/// credentials are taken off it and the dashboard learns who signed in
/// (X-Forwarded-User).
async fn admit_to_dashboard(
    gateway: &Gateway,
    peer: SocketAddr,
    request: &mut Request<Incoming>,
) -> Result<(), Response<Body>> {
    let user = admit(gateway, peer, request).await?;
    gateway.access.scrub_for_dashboard(request, user.as_deref());
    Ok(())
}

/// True when `path` is the dashboard's: none of the gateway's own routes.
fn is_proxied(gateway: &Gateway, path: &str) -> bool {
    path != "/health"
        && path != gateway.config.websocket_path
        && !path.starts_with(RESERVED_PREFIX)
        && path != "/_switchyard"
}

/// What every request goes through first: the `request` debug line (query
/// redacted) and, on every route but `/health`, the site password. `Ok`
/// holds the user who signed in with it, if any.
async fn admit<B>(
    gateway: &Gateway,
    peer: SocketAddr,
    request: &Request<B>,
) -> Result<Option<String>, Response<Body>> {
    let path = request.uri().path();
    if tracing::enabled!(tracing::Level::DEBUG) {
        let query = request.uri().query().map(auth::redacted_query);
        debug!(%peer, method = %request.method(), path, query, "request");
    }
    if path == "/health" {
        return Ok(None);
    }
    gateway.access.pass_site(peer, request).await
}

/// The router: one hop from a path to the module that answers it.
async fn route(
    app: Arc<App>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let gateway = &app.gateway;
    if let Err(refusal) = admit(gateway, peer, &request).await {
        return Ok(refusal);
    }
    let path = request.uri().path();
    let answer = if path == "/health" {
        let sources = health::Sources {
            connections: gateway.broadcaster.clients(),
            websocket_enabled: gateway.config.websocket_enabled,
            upstream: &gateway.upstream,
            dashboard: gateway.dashboard.as_deref(),
            worker: gateway.worker.as_deref(),
            worker_lease: gateway.worker_lease.as_deref(),
            hub: gateway.broadcaster.hub.as_ref(),
            replicas: gateway.replicas.as_deref(),
        };
        health::respond(sources, request.method())
    } else if path == gateway.config.websocket_path {
        ws::upgrade(
            &gateway.broadcaster,
            &gateway.access,
            &gateway.config,
            peer,
            request,
        )
    } else if path.starts_with(RESERVED_PREFIX) || path == "/_switchyard" {
        request.extensions_mut().insert(Peer(peer));
        app.reserved.clone().oneshot(request).await?
    } else if path == "/" && matches!(*request.method(), Method::GET | Method::HEAD) {
        // With a dashboard, `/` is the dashboard's: `pipeline` sent it there.
        app.console.clone().oneshot(request).await?
    } else {
        let wants_json = response::wants_json(request.headers());
        response::error_page(
            StatusCode::NOT_FOUND,
            "Nothing here: no dashboard is configured (DASHBOARD_URL).",
            wants_json,
        )
    };
    Ok(answer)
}

/// The `/_switchyard/*` HTTP routes, with CORS around them; the console
/// and client.js go through `pages` (compression).
async fn reserved(
    gateway: Arc<Gateway>,
    pages: Routes,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let config = &gateway.config;
    if request.method() == Method::OPTIONS {
        return Ok(cors::preflight(config, request.headers()));
    }
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return Ok(response::json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no client address",
        ));
    };
    let request_headers = request.headers().clone();
    let mut answer = match request.uri().path().strip_prefix(RESERVED_PREFIX) {
        Some("publish") => {
            publish::handle(
                config,
                &gateway.access,
                gateway.broadcaster.hub.as_ref(),
                &gateway.shutdown,
                peer,
                request,
            )
            .await
        }
        Some("state") => state::handle(&gateway.broadcaster, &gateway.access, request).await,
        Some("events") => sse::handle(&gateway.broadcaster, &gateway.access, request).await,
        Some("config") => public_config::respond(config),
        Some("metrics") => match admin(&gateway.access, &request) {
            Ok(()) => gateway.metrics.respond(),
            Err(refusal) => refusal.response(),
        },
        Some("client.js") | Some("") => pages.oneshot(request).await?,
        None => redirect_to_console(),
        _ => response::json_error(StatusCode::NOT_FOUND, "no such switchyard route"),
    };
    cors::decorate(config, &request_headers, &mut answer);
    Ok(answer)
}

/// The console page or client.js (the `pages` stack's handler).
fn page<B>(gateway: &Gateway, request: &Request<B>) -> Response<Body> {
    match request.uri().path().strip_prefix(RESERVED_PREFIX) {
        Some("client.js") => assets::client_js(request.uri().query()),
        _ => console(&gateway.access, request),
    }
}

/// Console and metrics: open without AUTH_SECRET, else an admin token.
fn admin<B>(access: &Access, request: &Request<B>) -> Result<(), auth::Denied> {
    let query_token = auth::query_token(request.uri().query());
    let token = auth::presented(request.headers(), query_token.as_deref());
    let reader = access.reader(token)?;
    if reader.is_admin() {
        Ok(())
    } else {
        Err(auth::Denied::Forbidden(
            "the console and metrics (admin only)".into(),
        ))
    }
}

/// The console page. It holds no data itself, so without an admin token
/// it is still sent, with the refusal's status: the page then asks for a
/// token and uses it for everything it reads.
fn console<B>(access: &Access, request: &Request<B>) -> Response<Body> {
    let mut page = assets::console_page();
    if let Err(refusal) = admin(access, request) {
        *page.status_mut() = refusal.status();
    }
    page
}

/// `/_switchyard` → `/_switchyard/`, where the console is.
fn redirect_to_console() -> Response<Body> {
    let mut answer = Response::new(response::empty());
    *answer.status_mut() = StatusCode::PERMANENT_REDIRECT;
    answer.headers_mut().insert(
        http::header::LOCATION,
        http::HeaderValue::from_static(RESERVED_PREFIX),
    );
    answer
}

/// Accept errors come in bursts (EMFILE while at the fd limit): one warning
/// a second at most.
fn throttled_accept_warning(last: &mut Option<Instant>, error: &io::Error) {
    let now = Instant::now();
    if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
        *last = Some(now);
        warn!(%error, "accept failed; backing off");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed_future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> Pin<Box<F>>) -> usize {
        std::mem::size_of::<F>()
    }

    /// A proxied request's future is allocated (and, with its layers,
    /// polled through) once per request. It must stay within what glibc's
    /// malloc serves from its per-thread cache (chunks up to 1,032 bytes,
    /// so requests up to 1,016): past it, the allocation and its free take
    /// the locked, searching path. One `forward` call site in it, not one
    /// per route (with three it was 15.5 KB); 3.4 KB while each layer
    /// (`proxied`, `forward`, the exchange, the pool's send) kept its own
    /// copy of the request; 944 bytes since they are built before their
    /// futures exist and the rare paths are boxed.
    #[test]
    fn a_proxied_requests_future_stays_small() {
        let bytes = boxed_future_size(proxied);
        println!("proxied request future: {bytes} bytes");
        assert!(
            bytes <= 1000,
            "a proxied request's future grew to {bytes} bytes"
        );
    }
}
