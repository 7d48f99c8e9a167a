//! What runs where: every thread and runtime of the gateway, and which
//! reactor drives which socket. `main` builds the runtimes here and `server`
//! starts the loops here; nothing else creates a thread or a runtime
//! (besides the log writer, `logging`).
//!
//! | thread | runtime | runs | its reactor drives |
//! |---|---|---|---|
//! | main | chores (current-thread, [`chores_runtime`]) | signals; `run` and the drain; the dashboard's probe and supervisor; the ping clock; the proxy pool's upkeep | the probe's sockets, the child's pipes |
//! | `http-loop-N`, one per core ([`count`]) | one current-thread runtime each ([`start`]) | its own listener (`SO_REUSEPORT`: the kernel spreads connections) and every connection it accepts, for that connection's whole life: routes, SSE, long-polls, proxied requests and WebSocket tunnels, the dashboard connections those use, and each broadcaster WebSocket's task after its upgrade | those sockets |
//! | its blocking pool | — | heavy CPU work of a request ([`off_loop`]: a `/state` snapshot and its encoding), [`HEAVY_AT_ONCE`] at a time | nothing |
//! | `switchyard-hub` (TOKIO_WORKER_THREADS) | multi-thread ([`hub_runtime`]) | the in-memory hub's fan-out task, or the Redis hub's connections and listener | the Redis sockets |
//!
//! A connection never changes threads: the loop whose reactor accepted its
//! socket drives that socket, and runs its tasks, until it closes. The one
//! thing done to a socket from elsewhere is the fan-out's direct write of a
//! delivery to a broadcaster WebSocket that is keeping up (a non-blocking
//! `writev` from the hub's runtime, under that client's queue lock: see
//! `hub::queue`); whatever it does not take, the client's task finishes on
//! its loop.
//!
//! The rules that keep a busy loop from delaying anyone else:
//! - a loop only runs short steps: heavy work goes to [`off_loop`]; the
//!   fan-out never runs on a loop (past its backlog limit a publisher
//!   awaits room, `hub::memory`), and a client is written to by the
//!   fan-out or by its own task in batches, never by a publisher;
//! - so a broadcaster WebSocket's writes and pongs, like `/health`, wait at
//!   most for one such short step of its loop, and nothing a loop does
//!   delays the others (`tests/event_loops.rs` measures both).
//!
//! A client's start is kept short the same way: with a retained state past
//! `broadcast::LARGE_STATE_BYTES`, a subscriber's snapshot and a
//! WebSocket's encoding of its hello's state are made off the loop. Still
//! on the loop, and long with a state of many megabytes: an SSE client's
//! hello (encoded and copied into its first chunk), the state a WebSocket's
//! `subscribe` frame adds, and every hello with `REDIS_URL` (that hub does
//! not know its state's size without asking Redis).
//!
//! Why WebSockets stay on their loop: until issue 24 each one's task and
//! socket moved to a runtime of their own after the upgrade (`drive_here`:
//! the socket off one reactor and onto another, and a task spawned across
//! threads). That hand-over was the whole of switchyard's distance to
//! uWebSockets.js in accepts per second: 28.7 and 24.7 µs of server CPU per
//! accept with it, 19.3 and 17.3 µs without, in two interleaved runs of
//! `loadgen --accept` (15,000 connections; 26,140 and 29,209 against
//! 31,190 and 31,706 accepts/s); the fan-out's CPU per delivered message
//! did not move (10k clients x 10 ev/s: 4.13 and 4.01 µs with it, 3.84 and
//! 4.32 without). With the loops running only short steps, the move bought
//! no isolation the loops do not already give.
//!
//! Why one loop per core: a proxied request touches two sockets, the
//! client's and the dashboard's. On one multi-thread runtime their tasks
//! may sit on different workers and wake each other across threads for
//! every request (a futex wake and a context switch each way; ~13% of the
//! proxy's time in a profile). On a loop of its own, a connection, the
//! requests it carries and the dashboard connections they use stay on one
//! thread, and a wake is a push onto that thread's own queue. [`current`]
//! tells code which loop it runs on, so the proxy keeps each loop's
//! dashboard connections on that loop.
//!
//! A loop that panics (outside a task: tokio catches a task's panic and
//! drops that one connection) is logged at ERROR, and the gateway drains
//! the other loops and exits 1 ([`Failures`]). It is not restarted in
//! place: such a panic is a bug on the accept path that would most likely
//! recur, the loop's connections are gone either way, and a process that
//! keeps answering `/health` with a loop missing or crash-looping hides
//! the bug; the platform restarts a process that exits non-zero. At
//! shutdown a loop stuck in a blocking call is abandoned (`server` logs it
//! at ERROR) and the process exits within the grace all the same.
//!
//! Does not own: what a loop does with a connection (`server`).

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tracing::error;

/// Pending connections each listener's kernel queue holds (capped by
/// `net.core.somaxconn`). `TcpListener::bind` asked for 128: a burst of
/// WebSocket connects (256 in flight in `benches/broadcast.sh`) overflowed
/// it and waited out a 1 s SYN retransmit; nginx and uWS ask for 511/512.
const BACKLOG: u32 = 1024;

/// Longest a loop's runtime waits for its tasks at exit; what is left is
/// cut (the grace period is over by then).
const EXIT_LIMIT: Duration = Duration::from_millis(100);

thread_local! {
    /// 1 + this thread's loop number; 0 on any other thread.
    static LOOP: Cell<usize> = const { Cell::new(0) };
}

/// How many loops serve HTTP: TOKIO_WORKER_THREADS when set to a positive
/// number (the variable that sizes tokio's own runtimes), else one per
/// CPU the process may use.
pub fn count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|value| value.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(NonZeroUsize::get)
        })
        .unwrap_or(1)
}

/// Which loop the calling thread is: `1..=count()` on a loop's thread, `0`
/// anywhere else (the main runtime, the broadcaster's, a test's).
pub fn current() -> usize {
    LOOP.with(Cell::get)
}

/// Makes the calling thread count as loop `number` for [`current`], as a
/// loop's own thread does: for tests of code that keeps state per loop.
/// The thread then also keeps finished timers for reuse (`timers`), which
/// a loop may because its runtime lives as long as its thread: pretend
/// only on a test's own thread, in code that arms none (the pool's test).
#[cfg(test)]
pub fn pretend_loop(number: usize) {
    LOOP.with(|cell| cell.set(number));
}

/// `loops` listeners on `addr`, all on one port (the first one's, when
/// `addr` asks for port 0), with TCP_NODELAY for the sockets they accept.
/// With more than one, each has `SO_REUSEPORT`.
///
/// `SO_REUSEPORT` would also let a second process of the same user join
/// the port silently, so a plain bind checks first that the port is free:
/// a second gateway on a taken port fails to start, as it did with one
/// listener. Call it inside a tokio runtime (see [`listen`]).
pub fn bind(addr: SocketAddr, loops: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let loops = loops.max(1);
    if loops > 1 && addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut at = addr;
    let mut listeners = Vec::with_capacity(loops);
    for _ in 0..loops {
        let socket = match at {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        // Linux hands TCP_NODELAY on to every accepted socket: one
        // `setsockopt(2)` per connection fewer (on other systems `server`
        // sets it on each).
        socket.set_nodelay(true)?;
        if loops > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(at)?;
        at = socket.local_addr()?;
        listeners.push(listen(socket)?);
    }
    Ok(listeners)
}

/// `listen(2)`, handing the listener back to std: tokio registers a
/// listening socket with the calling runtime (so `bind` must run inside
/// one), and `into_std` takes it off again for the loop that will serve it.
fn listen(socket: TcpSocket) -> io::Result<std::net::TcpListener> {
    socket.listen(BACKLOG)?.into_std()
}

/// Keeps a timer at most [`ANCHOR`] away in the loop's timer wheel.
///
/// Why: when a timer is armed earlier than the earliest one the driver
/// went to sleep with, tokio wakes the driver through its eventfd, even
/// from the driver's own thread while it runs. Every proxied request arms
/// one (the dashboard timeout; the head deadline's timer is moved on only
/// when it fires, see `watchdog`), seconds away; when it armed two (with
/// hyper's header-read timeout) and no nearer timer was in the wheel, a
/// quarter of the requests at
/// 64 connections paid a `write(2)` to the eventfd (`perf stat -e
/// syscalls:sys_enter_write`: 0.26 per request, 0.00 with this tick,
/// two runs each). It costs one wake-up a second.
async fn anchor_timers() {
    let mut ticks = tokio::time::interval(ANCHOR);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
    }
}

/// See [`anchor_timers`]: nearer than any timeout the proxy arms.
const ANCHOR: Duration = Duration::from_secs(1);

/// The main thread's runtime: signals, the drain, background chores.
pub fn chores_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The hub's runtime: a multi-thread runtime with I/O and timers;
/// TOKIO_WORKER_THREADS sets its size, as tokio's default does.
pub fn hub_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("switchyard-hub")
        .enable_all()
        .build()
}

/// How many pieces of heavy work ([`off_loop`]) run at once; the rest
/// wait their turn without blocking anything.
const HEAVY_AT_ONCE: usize = 2;

static HEAVY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HEAVY_AT_ONCE);

/// Runs `work` (CPU-bound, tens of milliseconds: encoding a large
/// `/state` answer) on the runtime's blocking pool, at most
/// [`HEAVY_AT_ONCE`] at a time, so the HTTP loop that asked keeps serving
/// its other connections meanwhile. A panic in `work` resumes in the
/// caller (catch-panic answers 500); `None` when the runtime is shutting
/// down and cancelled it.
pub async fn off_loop<T, F>(work: F) -> Option<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // The semaphore is never closed, so a permit always comes.
    let _permit = HEAVY.acquire().await;
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Some(value),
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_cancelled) => None,
        },
    }
}

/// Loops whose thread panicked: counted, and the first one wakes whoever
/// waits in [`Failures::first`] (the server, which then shuts down).
#[derive(Clone, Debug, Default)]
pub struct Failures(Arc<FailureRecord>);

#[derive(Debug, Default)]
struct FailureRecord {
    count: AtomicUsize,
    /// `notify_one` keeps a permit: a waiter that comes later still wakes.
    first: Notify,
}

impl Failures {
    fn report(&self) {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        self.0.first.notify_one();
    }

    /// How many loops have panicked.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::SeqCst)
    }

    /// Resolves once a loop has panicked.
    pub async fn first(&self) {
        self.0.first.notified().await;
    }
}

/// A loop's thread: runs `serve` on a current-thread runtime and returns
/// when it does, then cuts whatever tasks are left. A panic that escapes
/// `serve` (tokio catches those of spawned tasks, not of the loop itself)
/// is logged at ERROR and reported to `failures`.
pub fn start<F, Fut>(
    number: usize,
    failures: Failures,
    serve: F,
) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("http-loop-{number}"))
        .spawn(move || {
            LOOP.with(|cell| cell.set(number));
            runtime.spawn(anchor_timers());
            let served = catch_unwind(AssertUnwindSafe(|| runtime.block_on(serve())));
            if let Err(panic) = served {
                error!(
                    event_loop = number,
                    panic = panic_message(panic.as_ref()),
                    "an event loop panicked; shutting down"
                );
                failures.report();
            }
            runtime.shutdown_timeout(EXIT_LIMIT);
        })
}

/// The text a panic was raised with.
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
