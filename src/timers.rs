//! Timers reused on an event loop: the proxy's upstream deadline, the timer
//! every proxied request arms.
//!
//! A new tokio `Sleep` is registered in the loop's timer wheel on its first
//! poll and taken out again when dropped (a lock and a wheel update each
//! way; the proxy armed a `timeout` per exchange). A `Sleep` moved to a
//! later instant is only re-stamped (one compare-and-swap): the wheel keeps
//! the old slot and, when it comes, files the entry again under its new
//! instant without waking anyone. So each event loop keeps the timers that
//! finished ([`KEPT`] at most) and hands them out again. Their instants only
//! move forward ("now + UPSTREAM_TIMEOUT_SECS"): a reused timer is then
//! almost always re-stamped, not re-registered. A kept timer may fire once,
//! idle, at its old instant: it wakes the task that used it last, which
//! finds nothing to do (and until then holds that task's allocation: at
//! most [`KEPT`] per loop, for at most one timeout).
//!
//! Only on an event loop's thread (see `event_loops`): its runtime lives as
//! long as the thread, so a kept timer never outlives its wheel. Elsewhere
//! (other runtimes, tests' own) a timer is made and dropped each time.
//!
//! Owns: [`Deadline`], a future that completes at an instant, and
//! [`Before`], a future raced against one. Does not own:
//! which instants (`proxy`), or the request-head deadline, which needs no
//! timer per request (`watchdog`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::event_loops;

/// Timers one loop keeps for reuse; more than in flight at once is waste.
const KEPT: usize = 256;

thread_local! {
    /// This loop's finished upstream deadlines.
    static KEPT_TIMERS: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// Completes at its instant; its timer goes back to the loop when dropped.
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub fn at(instant: Instant) -> Deadline {
        let kept = if event_loops::current() != 0 {
            KEPT_TIMERS
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
        Deadline { sleep: Some(sleep) }
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
        let _ = KEPT_TIMERS.try_with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < KEPT {
                kept.push(sleep);
            }
        });
    }
}

pin_project! {
    /// `future`'s output, or `None` once `deadline` passes first. A plain
    /// struct rather than an `async` block with `select!`: such a block
    /// stores the future it is handed twice (as its capture and as what it
    /// awaits), and the proxy's is a request's whole exchange.
    pub struct Before<F> {
        #[pin]
        future: F,
        deadline: Deadline,
    }
}

/// `future`, given up at `deadline` (see [`Before`]).
pub fn before<F: Future>(future: F, deadline: Deadline) -> Before<F> {
    Before { future, deadline }
}

impl<F: Future> Future for Before<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        // The future first: an answer that came with the deadline counts.
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        Pin::new(this.deadline).poll(cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn completes_at_its_instant() {
        let start = Instant::now();
        Deadline::at(start + Duration::from_secs(3)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn before_gives_up_at_the_deadline_but_not_on_a_ready_answer() {
        let start = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(5));
        let given_up = before(slow, Deadline::at(start + Duration::from_secs(2))).await;
        assert_eq!(given_up, None);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let ready = std::future::ready(7);
        let answered = before(ready, Deadline::at(start)).await;
        assert_eq!(answered, Some(7));
    }

    #[test]
    fn nothing_is_kept_off_a_loop_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            drop(Deadline::at(Instant::now()));
        });
        assert_eq!(KEPT_TIMERS.with_borrow(Vec::len), 0);
    }
}
