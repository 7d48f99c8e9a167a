//! Timers reused on an event loop: the proxy's upstream deadline and
//! hyper's header-read timeout, the two timers every proxied request arms.
//!
//! A new tokio `Sleep` is registered in the loop's timer wheel on its first
//! poll and taken out again when dropped (a lock and a wheel update each
//! way; hyper's own timer drops the header-read one once a head is read
//! and makes another for the next, and the proxy armed a `timeout` per
//! exchange). A `Sleep` moved to a later instant is only re-stamped (one
//! compare-and-swap): the wheel keeps the old slot and, when it comes,
//! files the entry again under its new instant without waking anyone. So
//! each event loop keeps the timers that finished ([`KEPT`] per kind at
//! most) and hands them out again. Each kind has its own list because its
//! instants only move forward ("now + UPSTREAM_TIMEOUT_SECS", "now + the
//! header read timeout"): a reused timer is then almost always re-stamped,
//! not re-registered. A kept timer may fire once, idle, at its old instant:
//! it wakes the task that used it last, which finds nothing to do (and
//! until then holds that task's allocation: at most [`KEPT`] per kind per
//! loop, for at most one timeout).
//!
//! Only on an event loop's thread (see `event_loops`): its runtime lives as
//! long as the thread, so a kept timer never outlives its wheel. Elsewhere
//! (other runtimes, tests' own) a timer is made and dropped each time.
//!
//! Owns: [`Deadline`], a future that completes at an instant, and
//! [`LoopTimer`], hyper's timer made of them. Does not own: which instants
//! (`proxy`, `server`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::event_loops;

/// Timers one loop keeps for reuse, per kind; more than in flight at once
/// is waste.
const KEPT: usize = 256;

/// One loop's kept timers of one kind.
type Kept = RefCell<Vec<Pin<Box<Sleep>>>>;

thread_local! {
    /// The proxy's upstream deadlines.
    static UPSTREAM: Kept = const { RefCell::new(Vec::new()) };
    /// hyper's timers (the header read timeout).
    static HYPER: Kept = const { RefCell::new(Vec::new()) };
}

/// Which list a [`Deadline`] is taken from and goes back to.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Upstream,
    Hyper,
}

impl Kind {
    fn kept(self) -> &'static LocalKey<Kept> {
        match self {
            Kind::Upstream => &UPSTREAM,
            Kind::Hyper => &HYPER,
        }
    }
}

/// Completes at its instant; its timer goes back to the loop when dropped.
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
    kind: Kind,
}

impl Deadline {
    pub fn at(instant: Instant, kind: Kind) -> Deadline {
        let kept = if event_loops::current() != 0 {
            kind.kept()
                .try_with(|kept| kept.borrow_mut().pop())
                .ok()
                .flatten()
        } else {
            None
        };
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(instant);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(instant)),
        };
        Deadline {
            sleep: Some(sleep),
            kind,
        }
    }

    /// Moves the instant (earlier or later).
    pub fn reset(&mut self, instant: Instant) {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().reset(instant),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(instant))),
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        if event_loops::current() == 0 {
            return;
        }
        // At thread exit the list may be gone: the timer is then dropped.
        let _ = self.kind.kept().try_with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < KEPT {
                kept.push(sleep);
            }
        });
    }
}

impl hyper::rt::Sleep for Deadline {}

/// hyper's timer for the connections a loop serves: hyper_util's
/// `TokioTimer`, with its sleeps kept and reused ([`Kind::Hyper`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopTimer;

impl hyper::rt::Timer for LoopTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::at(after(duration), Kind::Hyper))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::at(deadline.into(), Kind::Hyper))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(deadline) => deadline.get_mut().reset(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into()
    }
}

/// `duration` from now; a duration too long to add is about thirty years
/// (as tokio's `sleep` does).
fn after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer as _;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn completes_at_its_instant() {
        let start = Instant::now();
        Deadline::at(start + Duration::from_secs(3), Kind::Upstream).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_sleeps_complete_and_reset() {
        let start = Instant::now();
        let mut sleep = LoopTimer.sleep(Duration::from_secs(5));
        LoopTimer.reset(&mut sleep, (start + Duration::from_secs(2)).into());
        sleep.await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        LoopTimer
            .sleep_until((start + Duration::from_secs(4)).into())
            .await;
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[test]
    fn nothing_is_kept_off_a_loop_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            drop(Deadline::at(Instant::now(), Kind::Upstream));
        });
        assert_eq!(UPSTREAM.with_borrow(Vec::len), 0);
    }
}
