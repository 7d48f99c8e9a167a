//! [`ClientQueue`]: the bounded queue between the hub and one client.
//!
//! A `VecDeque` behind a mutex, with the reader's waker stored under the
//! same mutex. Chosen over `tokio::sync::mpsc` for what an idle connection
//! costs: an empty queue allocates nothing (tokio's channel allocates a
//! 32-slot block and its shared state up front, about 1 KiB per client), and
//! tens of thousands of idle clients are the common case. The lock is held
//! only to push, drain or write directly (one non-blocking write), never
//! across an `.await`, and the wake happens after it is released.
//!
//! Direct writes: a transport may attach a [`Sink`] (its socket). While the
//! transport's task is not writing, a delivery pushed with
//! [`ClientQueue::push_direct`] is written by whoever fans out, straight to
//! the socket, without waking the task: an idle client costs one
//! non-blocking write per event, not a task wake-up, a poll and a write.
//! What the socket does not take stays queued and the task is woken to
//! write it under WRITE_TIMEOUT_SECS, so the bound (CLIENT_QUEUE), the
//! cut-off and the order are those of the queue. The direct write happens
//! under this queue's own lock (one client's), never under a hub lock.
//!
//! Owns: [`WriteState`], the one owner of a client socket's write state —
//! who may write to it now (the fan-out, or the transport's task) and how
//! many bytes of the first queued delivery are on it already. It changes
//! under the same lock as the items it counts in: the fan-out writes only
//! through it ([`ClientQueue::flush`]); the task takes the socket from it
//! ([`ClientQueue::poll_recv_many`], [`ClientQueue::begin_write`], which hands
//! over a delivery a direct write stopped inside, with its bytes already
//! out) and gives it back ([`ClientQueue::end_write`]) once it has written
//! everything it took, so the socket always changes hands at a frame
//! boundary or through that hand-over, and bytes never interleave.
//!
//! Does not own: how a delivery looks on the wire or how many bytes it
//! takes (the [`Sink`], i.e. the transport: the hub knows no framing), or
//! how the task writes (its transport).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::Delivery;

/// Why a push did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The client is CLIENT_QUEUE behind.
    Full,
    /// The client is gone.
    Closed,
}

/// A client's socket, as the fan-out sees it: writes what it takes now,
/// never waits. Implemented by the transport, which alone knows how a
/// delivery looks on the wire.
pub trait Sink: Send + Sync {
    /// Writes as much of `items` as the socket takes without blocking, the
    /// first `head_written` bytes of the first item being out already;
    /// answers how far it got (nothing when it would block).
    fn write_now(
        &self,
        items: &VecDeque<Delivery>,
        head_written: usize,
    ) -> std::io::Result<Progress>;
}

/// How far a direct write got, as its [`Sink`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The first `whole` items are out.
    pub whole: usize,
    /// Bytes of the item after them that are out.
    pub into_next: usize,
}

/// A delivery a direct write stopped inside: the task that takes the
/// socket writes the rest of it before anything else.
#[derive(Debug)]
pub struct PartWritten {
    pub delivery: Delivery,
    /// Bytes of it already out (as the [`Sink`] counted them).
    pub written: usize,
}

pub struct ClientQueue {
    capacity: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for ClientQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientQueue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    items: VecDeque<Delivery>,
    /// Who may write to the socket, and how much of `items[0]` is on it.
    write: WriteState,
    /// The reader waiting for the next item, if it is waiting.
    reader: Option<Waker>,
    /// A task waiting for the queue to close (a write in progress that a
    /// cut-off must interrupt).
    closer: Option<Waker>,
    closed: bool,
}

/// A client socket's write state: who may write to it now, and how many
/// bytes of the first queued delivery are on it already. Kept in the
/// queue's [`State`], so it changes under the lock that guards the items it
/// counts in; nothing else keeps either.
#[derive(Default)]
struct WriteState {
    /// The socket, for direct writes (attached once the transport's own
    /// first write, the hello, is out).
    sink: Option<Arc<dyn Sink>>,
    /// The transport's task has the socket: nobody else may write.
    task_writing: bool,
    /// Bytes of the first queued delivery a direct write put on the socket.
    head_written: usize,
    /// A pusher has taken it on to call [`ClientQueue::flush`].
    flush_owed: bool,
}

impl WriteState {
    /// A push may leave the write to the fan-out: answers whether the
    /// pusher is the one to flush (false when a flush is owed already).
    /// `None`: the task writes, so it must be woken.
    fn owe_flush(&mut self) -> Option<bool> {
        if self.sink.is_none() || self.task_writing {
            return None;
        }
        let owe = !self.flush_owed;
        self.flush_owed = true;
        Some(owe)
    }

    /// The fan-out's write: as much of `items` as the socket takes now,
    /// wholly written ones dropped. Answers whether it stopped inside one.
    fn write_directly(&mut self, items: &mut VecDeque<Delivery>) -> bool {
        let Some(sink) = self.sink.as_ref().filter(|_| !self.task_writing) else {
            return false;
        };
        let before = self.head_written;
        // An error is the task's to find: its own write fails.
        let Ok(progress) = sink.write_now(items, before) else {
            return false;
        };
        items.drain(..progress.whole.min(items.len()));
        self.head_written = progress.into_next;
        if items.is_empty() && items.capacity() > 64 {
            *items = VecDeque::new();
        }
        progress.into_next > 0 && (progress.whole > 0 || progress.into_next > before)
    }

    /// The task takes the socket: nobody else writes until
    /// [`WriteState::task_returns`].
    fn task_takes(&mut self) {
        self.task_writing = true;
    }

    /// The first item, if a direct write stopped inside it: it leaves the
    /// queue for the task, with the count (now the task's to keep).
    fn take_part_written(&mut self, items: &mut VecDeque<Delivery>) -> Option<PartWritten> {
        if self.head_written == 0 {
            return None;
        }
        let written = std::mem::take(&mut self.head_written);
        items
            .pop_front()
            .map(|delivery| PartWritten { delivery, written })
    }

    /// The task has written all it took: the socket is at a frame
    /// boundary, and the fan-out may write again.
    fn task_returns(&mut self) {
        self.task_writing = false;
    }
}

impl ClientQueue {
    pub fn new(capacity: usize) -> ClientQueue {
        ClientQueue {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one delivery without waiting; wakes the reader if it waits.
    pub fn push(&self, delivery: Delivery) -> Result<(), PushError> {
        let mut state = self.lock();
        state.append(delivery, self.capacity)?;
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(())
    }

    /// Queues one delivery for a direct write: `Ok(true)` when the caller
    /// must call [`ClientQueue::flush`] (soon, holding no hub lock) — the
    /// reader was not woken; `Ok(false)` when nothing more is owed (the
    /// reader was woken, or a flush is owed already).
    pub fn push_direct(&self, delivery: Delivery) -> Result<bool, PushError> {
        let mut state = self.lock();
        state.append(delivery, self.capacity)?;
        if let Some(owe) = state.write.owe_flush() {
            return Ok(owe);
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(false)
    }

    /// Writes what is queued straight to the socket if the transport is
    /// not writing; whatever the socket does not take (or all of it, when
    /// the transport is writing) is left to the reader, which is woken.
    /// Answers whether the write stopped inside a delivery (the reader
    /// then finishes it).
    pub fn flush(&self) -> bool {
        let mut state = self.lock();
        state.write.flush_owed = false;
        if state.items.is_empty() {
            return false;
        }
        let State {
            items,
            write,
            closed,
            ..
        } = &mut *state;
        let stopped_inside = !*closed && write.write_directly(items);
        if state.items.is_empty() {
            return false;
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        stopped_inside
    }

    /// Lets the fan-out write to `sink` while the transport is not writing.
    pub fn attach_sink(&self, sink: Arc<dyn Sink>) {
        self.lock().write.sink = Some(sink);
    }

    /// No more direct writes; answers the sink (to drop with no lock held).
    pub fn detach_sink(&self) -> Option<Arc<dyn Sink>> {
        self.lock().write.sink.take()
    }

    /// The transport's task takes the socket: no direct write until
    /// [`ClientQueue::end_write`]. Answers the first delivery if a direct
    /// write stopped inside it: the task must write its rest before
    /// anything else.
    pub fn begin_write(&self) -> Option<PartWritten> {
        let mut state = self.lock();
        let State { items, write, .. } = &mut *state;
        write.task_takes();
        write.take_part_written(items)
    }

    /// The transport has written everything it took.
    pub fn end_write(&self) {
        self.lock().write.task_returns();
    }

    /// No more pushes; the reader drains what is left, then gets 0. The hub
    /// closes a queue when it drops the client (cut off as too slow).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let wakers = [state.reader.take(), state.closer.take()];
        drop(state);
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.closed {
                return Poll::Ready(());
            }
            match &mut state.closer {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Moves up to `limit` queued deliveries into `out`: `Ready(true)`
    /// once something is queued, `Ready(false)` once the queue is closed
    /// and drained, else `Pending` with the task's waker kept. The caller
    /// takes the socket (see [`ClientQueue::end_write`]); a delivery a
    /// direct write stopped inside is not moved (so `out` may stay empty):
    /// [`ClientQueue::begin_write`] hands it over, with its count.
    pub fn poll_recv_many(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Delivery>,
        limit: usize,
    ) -> Poll<bool> {
        let mut state = self.lock();
        if !state.items.is_empty() {
            state.write.task_takes();
            let first = usize::from(state.write.head_written > 0);
            let take = (state.items.len() - first).min(limit.max(1));
            out.extend(state.items.drain(first..first + take));
            // A burst can leave a large buffer behind; give it back once
            // the client has caught up, so idle clients stay small.
            if state.items.is_empty() && state.items.capacity() > 64 {
                state.items = VecDeque::new();
            }
            return Poll::Ready(true);
        }
        if state.closed {
            return Poll::Ready(false);
        }
        match &mut state.reader {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes one delivery if one is queued (tests and drains).
    pub fn try_pop(&self) -> Option<Delivery> {
        let mut state = self.lock();
        state.write.head_written = 0;
        state.items.pop_front()
    }
}

impl State {
    /// Queues `delivery` at the back, unless the queue is closed or holds
    /// `capacity` already.
    fn append(&mut self, delivery: Delivery, capacity: usize) -> Result<(), PushError> {
        if self.closed {
            return Err(PushError::Closed);
        }
        if self.items.len() >= capacity {
            return Err(PushError::Full);
        }
        self.items.push_back(delivery);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::hub::{Event, Publication, Topic};
    use serde_json::value::RawValue;

    /// Waits for up to 10 deliveries.
    async fn recv_many(queue: &ClientQueue, out: &mut Vec<Delivery>) -> bool {
        poll_fn(|cx| queue.poll_recv_many(cx, out, 10)).await
    }

    fn delivery(seq: u64) -> Delivery {
        Delivery::Event(Arc::new(Event::new(
            seq,
            Publication {
                topic: Topic::parse("t").unwrap(),
                data: RawValue::from_string("1".into()).unwrap(),
                retain: false,
                id: None,
            },
        )))
    }

    #[tokio::test]
    async fn bounded_ordered_and_wakes_the_reader() {
        let queue = Arc::new(ClientQueue::new(2));
        assert_eq!(queue.push(delivery(1)), Ok(()));
        assert_eq!(queue.push(delivery(2)), Ok(()));
        assert_eq!(queue.push(delivery(3)), Err(PushError::Full));
        let mut out = Vec::new();
        assert!(recv_many(&queue, &mut out).await);
        assert_eq!(out.iter().map(Delivery::seq).collect::<Vec<_>>(), [1, 2]);

        let reader = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let open = recv_many(&queue, &mut out).await;
                (open, out.len(), out.first().map(Delivery::seq))
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.push(delivery(4)).unwrap();
        assert_eq!(reader.await.unwrap(), (true, 1, Some(4)));

        queue.close();
        assert_eq!(queue.push(delivery(5)), Err(PushError::Closed));
        assert!(!recv_many(&queue, &mut Vec::new()).await);
    }

    /// A socket that takes, at each write, what it was told to report.
    struct Scripted(Mutex<VecDeque<Progress>>);

    impl Sink for Scripted {
        fn write_now(&self, _: &VecDeque<Delivery>, _: usize) -> std::io::Result<Progress> {
            let mut script = self.0.lock().unwrap();
            Ok(script.pop_front().unwrap_or(Progress {
                whole: 0,
                into_next: 0,
            }))
        }
    }

    #[tokio::test]
    async fn a_delivery_a_direct_write_stopped_inside_is_handed_to_the_task_first() {
        let queue = ClientQueue::new(8);
        let progress = |whole, into_next| Progress { whole, into_next };
        let sink = Scripted(Mutex::new([progress(1, 5)].into()));
        queue.attach_sink(Arc::new(sink));
        assert_eq!(queue.push_direct(delivery(1)), Ok(true));
        assert_eq!(queue.push_direct(delivery(2)), Ok(false), "a flush is owed");
        assert_eq!(queue.push_direct(delivery(3)), Ok(false));
        // 1 went whole, 2 in part: the task is woken for the rest.
        assert!(queue.flush());
        // The task takes the socket; the part-written one is not in the
        // batch but handed over with its count, ahead of it.
        let mut out = Vec::new();
        assert!(recv_many(&queue, &mut out).await);
        assert_eq!(out.iter().map(Delivery::seq).collect::<Vec<_>>(), [3]);
        let part = queue.begin_write().expect("the part-written delivery");
        assert_eq!((part.delivery.seq(), part.written), (2, 5));
        // While the task writes, the fan-out leaves the socket alone.
        assert_eq!(queue.push_direct(delivery(4)), Ok(false));
        assert!(!queue.flush());
        assert!(queue.begin_write().is_none(), "handed over once");
        queue.end_write();
        // Given back: direct writes again, from a frame boundary.
        assert_eq!(queue.push_direct(delivery(5)), Ok(true));
        assert!(queue.detach_sink().is_some());
        assert_eq!(queue.push_direct(delivery(6)), Ok(false));
    }
}
