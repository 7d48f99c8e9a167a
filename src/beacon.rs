//! A signal that thousands of long-lived tasks wait on (the drain, the
//! keepalive clock), made cheap to wait on.
//!
//! Owns: a generation counter and the list of waiting tasks' wakers. A
//! [`Signal`] puts its task's waker in the shared list once per firing;
//! when its task is woken for anything else (an event to write, a frame to
//! read) and polls it again, the check is one atomic load. tokio's `watch`
//! and tokio-util's `CancellationToken` take a lock shared by every waiter
//! at each such poll, and with 10,000 WebSocket clients each woken per
//! event those locks were a measurable share of the broadcaster's CPU. A
//! waiting signal costs one slot of the shared list (a waker): no
//! allocation of its own, where a `Notify` waiter is a boxed node of 64
//! bytes — for every idle connection, twice.
//!
//! A beacon can also be closed: its last firing, after which every signal
//! on it is ready at each poll. The keepalive clock closes at the drain, so
//! a client waits on one signal for both (see `broadcast::stream`).
//!
//! Does not own: what a firing means (`shutdown`, the ping clock in `lib`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use slab::Slab;

#[derive(Debug, Default)]
pub struct Beacon {
    /// How many times it has fired (wrapping: a signal only asks whether
    /// it changed); changes only under `waiting`'s lock, together with the
    /// list being taken.
    generation: AtomicU32,
    /// Set by [`Beacon::close`]: no firing comes after, every signal is
    /// ready.
    closed: AtomicBool,
    /// The wakers of the signals waiting for the next firing.
    waiting: Mutex<Slab<Waker>>,
}

impl Beacon {
    pub fn new() -> Arc<Beacon> {
        Arc::new(Beacon::default())
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Waker>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes every waiting [`Signal`].
    pub fn fire(&self) {
        let waiting = {
            let mut waiting = self.lock();
            // Counted with the list taken: a signal that saw the old
            // generation is in this list, a later one sees the new one.
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *waiting)
        };
        for (_, waker) in waiting {
            waker.wake();
        }
    }

    /// Fires one last time: from now on every [`Signal`] on it, old or
    /// new, resolves at each poll and answers [`Signal::is_closed`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.fire();
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
/// 32 bytes: every idle WebSocket client holds two.
#[derive(Debug)]
pub struct Signal {
    beacon: Arc<Beacon>,
    /// The generation this signal has already reported.
    seen: u32,
    /// Our slot in the beacon's list while `registered` is set (valid
    /// while the generation is `seen`: a firing takes the whole list).
    slot: u32,
    /// The waker our slot holds; `None` when we hold no slot.
    registered: Option<Waker>,
}

impl Signal {
    fn new(beacon: Arc<Beacon>, seen: u32) -> Signal {
        Signal {
            beacon,
            seen,
            slot: 0,
            registered: None,
        }
    }

    /// True once its beacon is closed (see [`Beacon::close`]).
    pub fn is_closed(&self) -> bool {
        self.beacon.closed.load(Ordering::Acquire)
    }

    /// True (and reported) when the beacon fired since last reported.
    fn take_firing(&mut self) -> bool {
        let now = self.beacon.generation.load(Ordering::Acquire);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        // The firing took the list, and our slot with it.
        self.registered = None;
        true
    }
}

impl Future for Signal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.take_firing() || this.is_closed() {
            return Poll::Ready(());
        }
        if let Some(waker) = &this.registered {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let beacon = Arc::clone(&this.beacon);
        let mut waiting = beacon.lock();
        // A firing since the check above took the list: nothing to join.
        if this.take_firing() {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        match &mut this.registered {
            Some(held) => {
                if let Some(listed) = waiting.get_mut(this.slot as usize) {
                    *listed = waker.clone();
                }
                *held = waker;
            }
            None => {
                let entry = waiting.vacant_entry();
                // Beyond u32::MAX waiters the slot is not kept: the next
                // poll joins again, and the firing takes both.
                if let Ok(slot) = u32::try_from(entry.key()) {
                    this.slot = slot;
                    this.registered = Some(waker.clone());
                }
                entry.insert(waker);
            }
        }
        Poll::Pending
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        if self.registered.take().is_none() {
            return;
        }
        let mut waiting = self.beacon.lock();
        // Only a slot of the list in force is ours: a firing took the one
        // we joined, and its slots are someone else's now.
        if self.beacon.generation.load(Ordering::Acquire) == self.seen {
            waiting.try_remove(self.slot as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn a_waiting_signal_holds_one_slot_until_it_fires_or_is_dropped() {
        let beacon = Beacon::new();
        let mut first = beacon.next_firing();
        let mut second = beacon.next_firing();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        assert_eq!(beacon.lock().len(), 2, "one slot per waiting signal");
        drop(second);
        assert_eq!(beacon.lock().len(), 1);
        beacon.fire();
        assert_eq!(beacon.lock().len(), 0, "a firing takes the list");
        // Joins the new list, leaves it on drop; the old slot number is
        // not taken from whoever holds it now.
        let mut third = beacon.next_firing();
        assert!(Pin::new(&mut third).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut first).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert_eq!(beacon.lock().len(), 2);
        drop(first);
        assert_eq!(beacon.lock().len(), 1);
        drop(third);
        assert_eq!(beacon.lock().len(), 0);
    }

    #[test]
    fn a_closed_beacon_keeps_every_signal_ready() {
        let beacon = Beacon::new();
        let mut old = beacon.next_firing();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut old).poll(&mut cx).is_pending());
        assert!(!old.is_closed());
        beacon.close();
        assert_eq!(beacon.lock().len(), 0, "the close takes the list");
        let mut new = beacon.next_firing();
        for _ in 0..3 {
            assert!(Pin::new(&mut old).poll(&mut cx).is_ready());
            assert!(Pin::new(&mut new).poll(&mut cx).is_ready());
        }
        assert!(old.is_closed() && new.is_closed());
        assert_eq!(beacon.lock().len(), 0, "a closed beacon lists no one");
    }

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
