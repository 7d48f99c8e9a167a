//! A proxied WebSocket (or any HTTP/1.1 upgrade): once the dashboard has
//! answered 101, the client gets the same 101 with the dashboard's handshake
//! headers (Sec-WebSocket-Accept, -Protocol, -Extensions, so subprotocols
//! and permessage-deflate are negotiated end to end), and the bytes are
//! copied both ways until either side closes, the tunnel idles, a side
//! stops accepting bytes, or the gateway drains.
//!
//! Owns: the tunnel count and its cap (MAX_TUNNELS), the copy loop with one
//! bounded buffer per direction ([`BUFFER_BYTES`]), the idle timeout
//! (TUNNEL_IDLE_SECS: no byte either way) and the write timeout
//! (WRITE_TIMEOUT_SECS: bytes waiting for a side that takes none). A tunnel
//! that ends for any reason drops both connections and its place.
//!
//! Does not own: the upgrade request or the 503 page (`proxy`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::Response;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::headers;
use crate::response::{self, Body};
use crate::shutdown::Shutdown;

/// Bytes read from one side and not yet written to the other, per direction.
const BUFFER_BYTES: usize = 16 * 1024;

/// The open tunnels, against MAX_TUNNELS.
#[derive(Debug)]
pub struct Tunnels {
    open: AtomicUsize,
    max: usize,
    /// No byte either way for this long: closed.
    idle: Duration,
    /// Bytes waiting this long for a side that accepts none: closed.
    write_timeout: Duration,
}

/// One tunnel's place; given back when dropped.
pub struct Slot {
    tunnels: Arc<Tunnels>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tunnels.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tunnels {
    pub fn new(max: usize, idle: Duration, write_timeout: Duration) -> Arc<Tunnels> {
        Arc::new(Tunnels {
            open: AtomicUsize::new(0),
            max,
            idle,
            write_timeout,
        })
    }

    /// Takes a place, if fewer than MAX_TUNNELS are open (or opening).
    pub fn reserve(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            tunnels: self.clone(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Answers the client's upgrade with the dashboard's 101 and spawns the copy.
pub fn open(
    client_upgrade: OnUpgrade,
    mut answer: Response<Incoming>,
    shutdown: &Shutdown,
    path: String,
    slot: Slot,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut answer);
    let (mut parts, _) = answer.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    if !parts.headers.contains_key(header::UPGRADE) {
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }

    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(error) => {
                warn!(path, %error, "tunnel upgrade failed");
                return;
            }
        };
        debug!(path, "tunnel opened");
        let limits = (slot.tunnels.idle, slot.tunnels.write_timeout);
        let ended = tokio::select! {
            ended = copy(TokioIo::new(client), TokioIo::new(upstream), limits.0, limits.1) => ended,
            _ = stop.requested() => Ended::Shutdown,
        };
        // Both connections are gone; the place is free before it is logged.
        drop(slot);
        match ended {
            Ended::Closed { up, down } => {
                debug!(path, bytes_up = up, bytes_down = down, "tunnel closed")
            }
            Ended::Error(error) => debug!(path, %error, "tunnel closed by error"),
            Ended::Idle => debug!(path, reason = "idle", "tunnel timed out"),
            Ended::Stalled(side) => {
                debug!(path, reason = "write stalled", side, "tunnel timed out")
            }
            Ended::Shutdown => debug!(path, "tunnel closed for shutdown"),
        }
    });
    Response::from_parts(parts, response::empty())
}

/// How a tunnel ended; both connections are dropped in every case.
enum Ended {
    /// Both sides closed: bytes copied client → dashboard and back.
    Closed {
        up: u64,
        down: u64,
    },
    Error(std::io::Error),
    /// No byte either way for TUNNEL_IDLE_SECS.
    Idle,
    /// This side accepted none of the bytes waiting for it for WRITE_TIMEOUT_SECS.
    Stalled(&'static str),
    Shutdown,
}

/// Milliseconds since the tunnel opened, shared by both directions and the
/// watchdog (one task: atomics only so the future stays `Send`).
struct Clock {
    origin: Instant,
    /// Last byte read or written, either way.
    last_activity: AtomicU64,
}

/// No bytes are waiting in a direction.
const NOTHING_PENDING: u64 = u64::MAX;

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.origin + Duration::from_millis(millis)
    }
}

/// One direction's write progress: since when its buffered bytes have been
/// waiting for the writer to take some, or [`NOTHING_PENDING`].
struct Direction {
    waiting_since: AtomicU64,
}

impl Direction {
    fn new() -> Direction {
        Direction {
            waiting_since: AtomicU64::new(NOTHING_PENDING),
        }
    }
}

/// Copies both ways until both sides have closed (each close passed on as a
/// half-close), or a watchdog limit fires.
async fn copy<C, U>(client: C, upstream: U, idle: Duration, write_timeout: Duration) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Clock {
        origin: Instant::now(),
        last_activity: AtomicU64::new(0),
    };
    let up = Direction::new();
    let down = Direction::new();
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let pumps = async {
        tokio::try_join!(
            pump(client_read, upstream_write, &clock, &up),
            pump(upstream_read, client_write, &clock, &down),
        )
    };
    let watchdog = async {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX / 4);
        let write_ms = u64::try_from(write_timeout.as_millis()).unwrap_or(u64::MAX / 4);
        loop {
            let now = clock.now();
            let last = clock.last_activity.load(Ordering::Acquire);
            if now.saturating_sub(last) >= idle_ms {
                return Ended::Idle;
            }
            let mut next = last + idle_ms;
            for (direction, side) in [(&up, "dashboard"), (&down, "client")] {
                let since = direction.waiting_since.load(Ordering::Acquire);
                if since == NOTHING_PENDING {
                    // Anything that starts waiting now is looked at in time.
                    next = next.min(now + write_ms);
                } else if now.saturating_sub(since) >= write_ms {
                    return Ended::Stalled(side);
                } else {
                    next = next.min(since + write_ms);
                }
            }
            tokio::time::sleep_until(clock.at(next).into()).await;
        }
    };
    tokio::select! {
        copied = pumps => match copied {
            Ok((up, down)) => Ended::Closed { up, down },
            Err(error) => Ended::Error(error),
        },
        ended = watchdog => ended,
    }
}

/// Reads from `from` into one bounded buffer and writes it all to `to`
/// before reading again, recording progress for the watchdog. At the end of
/// `from`, half-closes `to`.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    clock: &Clock,
    direction: &Direction,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let mut total: u64 = 0;
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        let now = clock.now();
        clock.last_activity.store(now, Ordering::Release);
        direction.waiting_since.store(now, Ordering::Release);
        let mut written = 0;
        while written < read {
            let n = to.write(&buffer[written..read]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            written += n;
            let now = clock.now();
            clock.last_activity.store(now, Ordering::Release);
            direction.waiting_since.store(now, Ordering::Release);
        }
        to.flush().await?;
        direction
            .waiting_since
            .store(NOTHING_PENDING, Ordering::Release);
        total += read as u64;
    }
}
