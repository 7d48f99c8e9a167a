//! Test-only fault injection: ways for a test to make an event loop stall
//! or panic, and a proxied request panic, where nothing real can be made
//! to (every panic the code knows of is a bug, and is fixed).
//!
//! Off unless the process starts with `SWITCHYARD_TEST_FAULTS=1` (not part
//! of the contract; never set it in production). When on, a request from a
//! loopback peer carrying `x-switchyard-fault: VALUE` asks for:
//!
//! - `stall-loop=SECS`: the event loop that reads it sleeps SECS seconds
//!   on its thread (a loop stuck in a blocking call);
//! - `panic-loop`: the event loop that reads it panics on its own thread,
//!   outside any task (what tokio would not catch);
//! - `panic`: the request's handler panics (used on the proxied path).
//!
//! Owns: reading the variable once, and the meaning of the header. Does not
//! own: what happens after the fault (that is what the tests check).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use http::Request;
use tokio::sync::Notify;

/// The header a test sends.
pub const HEADER: &str = "x-switchyard-fault";

static ENABLED: OnceLock<bool> = OnceLock::new();

thread_local! {
    /// Fired by a `panic-loop` request; the loop's accept loop listens.
    static LOOP_PANIC: RefCell<Option<Rc<Notify>>> = const { RefCell::new(None) };
}

/// Whether fault injection is on (read from the environment once).
pub fn enabled() -> bool {
    *ENABLED.get_or_init(|| {
        std::env::var("SWITCHYARD_TEST_FAULTS").is_ok_and(|value| value.trim() == "1")
    })
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    StallLoop(Duration),
    PanicLoop,
    Panic,
}

/// The fault `request` asks for: `None` unless injection is on, the peer
/// is on loopback and the header names one.
pub fn requested<B>(peer: SocketAddr, request: &Request<B>) -> Option<Fault> {
    if !enabled() || !peer.ip().is_loopback() {
        return None;
    }
    let value = request.headers().get(HEADER)?.to_str().ok()?.trim();
    match value {
        "panic-loop" => Some(Fault::PanicLoop),
        "panic" => Some(Fault::Panic),
        _ => {
            let secs = value.strip_prefix("stall-loop=")?.parse::<u64>().ok()?;
            Some(Fault::StallLoop(Duration::from_secs(secs.min(600))))
        }
    }
}

/// Does what `fault` asks, where it must happen on the loop's thread
/// (`Panic` is left to the handler, see [`requested`]).
pub fn apply_on_loop(fault: Fault) {
    match fault {
        Fault::StallLoop(how_long) => {
            tracing::warn!(?how_long, "fault injected: this event loop stalls");
            std::thread::sleep(how_long);
        }
        Fault::PanicLoop => LOOP_PANIC.with(|cell| {
            if let Some(notify) = cell.borrow().as_ref() {
                notify.notify_one();
            }
        }),
        Fault::Panic => {}
    }
}

/// Resolves when a `panic-loop` request reached this thread's loop; never
/// when injection is off.
pub async fn loop_panic_requested() {
    if !enabled() {
        return std::future::pending().await;
    }
    let notify = LOOP_PANIC.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(Default::default)
            .clone()
    });
    notify.notified().await;
}
