//! [`ClientStream`]: one subscriber's stream, the same for every transport.
//!
//! Owns: the order of what a client is sent — the hello (with the resumed
//! events, if any) first, then live deliveries (events and resets) in
//! batches, keepalive ticks between them — and the reasons it ends: cut off
//! (the hub closed the queue because the client fell CLIENT_QUEUE behind)
//! or shutdown. Once the hello has been handed out, it is released (its
//! state or catch-up, and the snapshot itself), and each batch is handed
//! out whole, so an idle client holds neither. It waits on one signal, the
//! keepalive clock, which closes at the drain (see `beacon`): 32 bytes per
//! client, not 64 for a clock and a drain signal apart.
//!
//! Does not own: encoding (each transport's framing), writing (each
//! transport, under WRITE_TIMEOUT_SECS), or who may write to a socket and
//! how much of a delivery is on it (`hub::queue`'s write state).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::beacon::Signal;
use crate::hub::queue::ClientQueue;
use crate::hub::{Delivery, Snapshot, Subscribed, Subscription};

/// Most queued deliveries handed out in one step.
pub const BATCH: usize = 256;

/// What to send next.
#[derive(Debug)]
pub enum Step<'a> {
    /// First, once: the hello's snapshot (state, or the resumed events).
    Hello(&'a Snapshot),
    /// Live deliveries, in order, handed over. Empty when all there was is
    /// the rest of a delivery the fan-out began writing to the socket
    /// itself (only with a sink attached to the queue; see `hub::queue`):
    /// the transport gets it from `ClientQueue::begin_write`.
    Deliveries(Vec<Delivery>),
    /// The keepalive clock ticked (PING_INTERVAL_SECS).
    Keepalive,
    /// Nothing more to send.
    End(End),
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The hub cut the client off for falling CLIENT_QUEUE behind.
    CutOff,
    /// The gateway is draining.
    Shutdown,
}

/// What [`ClientStream::poll_found`] found: a [`Step`] before it borrows
/// from the stream.
#[derive(Debug)]
enum Found {
    Hello,
    Deliveries(Vec<Delivery>),
    Keepalive,
    End(End),
}

pub struct ClientStream {
    subscription: Subscription,
    /// The hello, boxed and released at the step after it: an idle client
    /// keeps neither its state nor its catch-up.
    hello: Option<Box<Snapshot>>,
    hello_given: bool,
    /// A keepalive tick seen by [`ClientStream::guard`] during a write,
    /// handed out at the next step.
    tick_due: bool,
    /// The keepalive clock, closed at the drain; one per client, polled
    /// for an atomic load.
    clock: Signal,
}

impl ClientStream {
    /// `clock`: the keepalive clock, which must close when the gateway
    /// drains (`lib` closes it).
    pub(super) fn new(subscribed: Subscribed, clock: Signal) -> ClientStream {
        ClientStream {
            subscription: subscribed.subscription,
            hello: Some(Box::new(subscribed.snapshot)),
            hello_given: false,
            tick_due: false,
            clock,
        }
    }

    /// The hub subscription (for subscribe / unsubscribe frames).
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// The hello's snapshot, until the step after the hello.
    pub fn hello(&self) -> Option<&Snapshot> {
        self.hello.as_deref()
    }

    /// The client's queue (the connection watches it to close a cut-off
    /// client at once, even while its socket is full).
    pub fn queue(&self) -> &Arc<ClientQueue> {
        &self.subscription.queue
    }

    /// Runs `work` (a write) unless the client is cut off or the gateway
    /// drains first: a stalled socket must not hold either up.
    pub async fn guard<F: Future>(&mut self, work: F) -> Result<F::Output, End> {
        let ClientStream {
            subscription,
            tick_due,
            clock,
            ..
        } = self;
        // The clock's ticks meanwhile are kept for the next step; only its
        // close (the drain) stops the write.
        let drain = std::future::poll_fn(|cx| {
            while Pin::new(&mut *clock).poll(cx).is_ready() {
                if clock.is_closed() {
                    return Poll::Ready(());
                }
                *tick_due = true;
            }
            Poll::Pending
        });
        tokio::select! {
            biased;
            _ = subscription.queue.closed() => Err(End::CutOff),
            _ = drain => Err(End::Shutdown),
            done = work => Ok(done),
        }
    }

    /// The next thing to send. Cancel-safe: nothing is lost when the
    /// future is dropped before it resolves.
    pub async fn next(&mut self) -> Step<'_> {
        let found = std::future::poll_fn(|cx| self.poll_found(cx)).await;
        self.step(found)
    }

    /// [`ClientStream::next`] as a poll, for a caller that polls it among
    /// other things with no future of its own to keep (a WebSocket client's
    /// idle wait). Nothing is lost when it answers `Pending`.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Step<'_>> {
        let found = std::task::ready!(self.poll_found(cx));
        Poll::Ready(self.step(found))
    }

    /// What comes next, in this order: the hello; the end if the client
    /// is cut off (not after writing what is still queued); the drain; a
    /// keepalive tick; queued deliveries (moved into a batch of their own).
    fn poll_found(&mut self, cx: &mut Context<'_>) -> Poll<Found> {
        if !self.hello_given {
            self.hello_given = true;
            return Poll::Ready(Found::Hello);
        }
        // The hello has been written: it need not stay with us.
        self.hello = None;
        let queue = &self.subscription.queue;
        if queue.is_closed() {
            return Poll::Ready(Found::End(End::CutOff));
        }
        // Polled even with a tick due, so its waker stays registered.
        let ticked = Pin::new(&mut self.clock).poll(cx).is_ready();
        if self.clock.is_closed() {
            return Poll::Ready(Found::End(End::Shutdown));
        }
        if ticked || self.tick_due {
            self.tick_due = false;
            return Poll::Ready(Found::Keepalive);
        }
        let mut batch = Vec::new();
        queue.poll_recv_many(cx, &mut batch, BATCH).map(|open| {
            if open {
                Found::Deliveries(batch)
            } else {
                Found::End(End::CutOff)
            }
        })
    }

    /// The step `found` stands for, lent from the stream.
    fn step(&self, found: Found) -> Step<'_> {
        match found {
            Found::Hello => match &self.hello {
                Some(snapshot) => Step::Hello(snapshot),
                // Not reached: the hello is released only at the step
                // after it.
                None => Step::End(End::Shutdown),
            },
            Found::Deliveries(batch) => Step::Deliveries(batch),
            Found::Keepalive => Step::Keepalive,
            Found::End(end) => Step::End(end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beacon::Beacon;
    use crate::hub::memory::MemoryHub;
    use crate::hub::{Hub, Pattern};

    async fn stream(clock: &Arc<Beacon>) -> ClientStream {
        let hub: Arc<dyn Hub> = Arc::new(MemoryHub::new(10));
        let subscribed = hub
            .subscribe(vec![Pattern::everything()], None, 10)
            .await
            .unwrap();
        ClientStream::new(subscribed, clock.next_firing())
    }

    /// A write that has not finished yet.
    fn stuck() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_tick_during_a_write_comes_next_and_the_close_ends_the_stream() {
        let clock = Beacon::new();
        let mut stream = stream(&clock).await;
        assert!(matches!(stream.next().await, Step::Hello(_)));
        // The clock ticks while a write is under way: the write goes on,
        // and the tick is the next step.
        let write = stream.guard(async {
            clock.fire();
            tokio::task::yield_now().await;
            "written"
        });
        assert_eq!(write.await, Ok("written"));
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await;
        assert!(
            matches!(next, Ok(Step::Keepalive)),
            "the tick was lost: {next:?}"
        );
        // The drain closes the clock: a write under way stops, and the
        // stream ends.
        let closer = clock.clone();
        let write = stream.guard(async move {
            closer.close();
            stuck().await
        });
        assert_eq!(write.await, Err(End::Shutdown));
        assert!(matches!(stream.next().await, Step::End(End::Shutdown)));
        // A stream made after the close ends at once, after its hello.
        let mut late = self::stream(&clock).await;
        assert!(matches!(late.next().await, Step::Hello(_)));
        assert!(matches!(late.next().await, Step::End(End::Shutdown)));
    }
}
