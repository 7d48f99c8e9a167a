//! A signal that thousands of long-lived tasks wait on (the drain, the
//! keepalive clock), made cheap to wait on.
//!
//! Owns: a generation counter and the list of waiting tasks. A [`Signal`]
//! registers its task in the shared list once per firing; when its task
//! is woken for anything else (an event to write, a frame to read) and
//! polls it again, the check is one atomic load. tokio's `watch` and
//! tokio-util's `CancellationToken` take a lock shared by every waiter at
//! each such poll, and with 10,000 WebSocket clients each woken per event
//! those locks were a measurable share of the broadcaster's CPU.
//!
//! Does not own: what a firing means (`shutdown`, the ping clock in `lib`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Beacon {
    /// How many times it has fired.
    generation: AtomicU64,
    waiting: Arc<Notify>,
}

impl Beacon {
    pub fn new() -> Arc<Beacon> {
        Arc::new(Beacon::default())
    }

    /// Wakes every waiting [`Signal`].
    pub fn fire(&self) {
        // Counted before the wake-up: a woken Signal sees the new generation.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.waiting.notify_waiters();
    }

    /// A signal that resolves at the next firing, then at each one after.
    pub fn next_firing(self: &Arc<Self>) -> Signal {
        Signal::new(self.clone(), self.generation.load(Ordering::Acquire))
    }

    /// A signal that resolves once the beacon has fired at all, even if
    /// that was before this call.
    pub fn fired(self: &Arc<Self>) -> Signal {
        Signal::new(self.clone(), 0)
    }
}

/// Resolves when its [`Beacon`] fires; poll it again to wait for the next
/// firing. Unpin, so one can live in a task and be polled by reference.
#[derive(Debug)]
pub struct Signal {
    beacon: Arc<Beacon>,
    /// The generation this signal has already reported.
    seen: u64,
    /// Our place in the beacon's list, and the waker it will wake.
    registered: Option<(Pin<Box<OwnedNotified>>, Waker)>,
}

impl Signal {
    fn new(beacon: Arc<Beacon>, seen: u64) -> Signal {
        Signal {
            beacon,
            seen,
            registered: None,
        }
    }

    /// True (and reported) when the beacon fired since last reported.
    fn take_firing(&mut self) -> bool {
        let now = self.beacon.generation.load(Ordering::Acquire);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        self.registered = None;
        true
    }
}

impl Future for Signal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.take_firing() {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &this.registered {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let mut notified = Box::pin(this.beacon.waiting.clone().notified_owned());
        notified.as_mut().enable();
        // A firing between the first check and `enable` is seen here; one
        // after `enable` wakes us through `notified`.
        if this.take_firing() {
            return Poll::Ready(());
        }
        if notified.as_mut().poll(cx).is_ready() {
            this.take_firing();
            return Poll::Ready(());
        }
        this.registered = Some((notified, cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_signal_resolves_at_each_firing() {
        let beacon = Beacon::new();
        let mut ticks = beacon.next_firing();
        let waiter = tokio::spawn(async move {
            (&mut ticks).await;
            (&mut ticks).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        beacon.fire();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "resolved twice on one firing");
        beacon.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("second firing seen")
            .expect("no panic");
    }

    #[tokio::test]
    async fn fired_is_ready_after_the_fact_and_next_firing_is_not() {
        let beacon = Beacon::new();
        beacon.fire();
        tokio::time::timeout(Duration::from_secs(1), beacon.fired())
            .await
            .expect("already fired");
        let next = beacon.next_firing();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), next)
                .await
                .is_err(),
            "an old firing counted as the next one"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_firing_is_lost_while_tasks_are_woken_for_other_reasons() {
        let beacon = Beacon::new();
        let other = Arc::new(Notify::new());
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let mut stop = beacon.fired();
                let other = other.clone();
                tokio::spawn(async move {
                    let mut woken = 0u32;
                    loop {
                        tokio::select! {
                            _ = &mut stop => return woken,
                            _ = other.notified() => woken += 1,
                        }
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            other.notify_waiters();
            tokio::task::yield_now().await;
        }
        beacon.fire();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("every waiter saw the firing")
                .expect("no panic");
        }
    }
}
