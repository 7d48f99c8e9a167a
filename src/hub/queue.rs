//! [`ClientQueue`]: the bounded queue between the hub and one client.
//!
//! A `VecDeque` behind a mutex, with the reader's waker stored under the
//! same mutex. Chosen over `tokio::sync::mpsc` for what an idle connection
//! costs: an empty queue allocates nothing (tokio's channel allocates a
//! 32-slot block and its shared state up front, about 1 KiB per client), and
//! tens of thousands of idle clients are the common case. The lock is held
//! only to push or drain, never across an `.await`, and the wake happens
//! after it is released.
//!
//! Direct writes: a transport may attach a [`Sink`] (its socket). While the
//! transport's task is not writing, a delivery pushed with
//! [`ClientQueue::push_direct`] is written by whoever fans out, straight to
//! the socket, without waking the task: an idle client costs one
//! non-blocking write per event, not a task wake-up, a poll and a write.
//! What the socket does not take stays queued (with how much of its first
//! item is out) and the task is woken to write it under WRITE_TIMEOUT_SECS,
//! so the bound (CLIENT_QUEUE), the cut-off and the order are those of the
//! queue. The task marks when it writes itself ([`ClientQueue::begin_write`]
//! / [`ClientQueue::end_write`], and a drain by `recv_many`): then nobody
//! else writes, so bytes never interleave. The direct write happens under
//! this queue's own lock (one client's), never under a hub lock.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

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
/// never waits. Implemented by the transport (the hub knows no framing).
pub trait Sink: Send + Sync {
    /// Writes as much of `items` as the socket takes without blocking, the
    /// first `skip` bytes of the first item being out already; answers the
    /// bytes written (0 when it would block).
    fn write_now(&self, items: &VecDeque<Delivery>, skip: usize) -> std::io::Result<usize>;
    /// Bytes `delivery` takes on the wire.
    fn wire_len(&self, delivery: &Delivery) -> usize;
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
    /// Bytes of `items[0]` already written directly.
    skip: usize,
    /// The socket, for direct writes (attached once the transport's own
    /// first write, the hello, is out).
    sink: Option<Arc<dyn Sink>>,
    /// The transport's task is writing: nobody else may.
    writing: bool,
    /// A pusher has taken it on to call [`ClientQueue::flush`].
    flush_owed: bool,
    /// The reader waiting for the next item, if it is waiting.
    reader: Option<Waker>,
    /// A task waiting for the queue to close (a write in progress that a
    /// cut-off must interrupt).
    closer: Option<Waker>,
    closed: bool,
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
        if state.sink.is_some() && !state.writing {
            let owe = !state.flush_owed;
            state.flush_owed = true;
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
    pub fn flush(&self) {
        let mut state = self.lock();
        state.flush_owed = false;
        if state.items.is_empty() {
            return;
        }
        if !state.closed && !state.writing {
            if let Some(sink) = state.sink.clone() {
                if let Ok(written) = sink.write_now(&state.items, state.skip) {
                    state.advance(sink.as_ref(), written);
                }
                // An error is the reader's to find: its own write fails.
            }
        }
        if state.items.is_empty() {
            return;
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// Lets the fan-out write to `sink` while the transport is not writing.
    pub fn attach_sink(&self, sink: Arc<dyn Sink>) {
        self.lock().sink = Some(sink);
    }

    /// No more direct writes; answers the sink (to drop with no lock held).
    pub fn detach_sink(&self) -> Option<Arc<dyn Sink>> {
        self.lock().sink.take()
    }

    /// The transport writes: no direct write until [`ClientQueue::end_write`].
    /// Answers the first delivery if a direct write left it part-written,
    /// with the bytes of it already out: the transport must write its rest
    /// before anything else.
    pub fn begin_write(&self) -> Option<(Delivery, usize)> {
        let mut state = self.lock();
        state.writing = true;
        if state.skip == 0 {
            return None;
        }
        let skip = std::mem::take(&mut state.skip);
        state.items.pop_front().map(|first| (first, skip))
    }

    /// The transport has written everything it took.
    pub fn end_write(&self) {
        self.lock().writing = false;
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

    /// Waits for at least one delivery and moves up to `limit` into `out`;
    /// 0 means closed and drained. `skip` is set to the bytes of the first
    /// one already written directly. The caller is writing from then on
    /// (see [`ClientQueue::end_write`]).
    pub async fn recv_many(
        &self,
        out: &mut Vec<Delivery>,
        limit: usize,
        skip: &mut usize,
    ) -> usize {
        poll_fn(|cx| {
            let mut state = self.lock();
            if !state.items.is_empty() {
                let take = state.items.len().min(limit.max(1));
                state.writing = true;
                *skip = std::mem::take(&mut state.skip);
                out.extend(state.items.drain(..take));
                // A burst can leave a large buffer behind; give it back once
                // the client has caught up, so idle clients stay small.
                if state.items.is_empty() && state.items.capacity() > 64 {
                    state.items = VecDeque::new();
                }
                return Poll::Ready(take);
            }
            if state.closed {
                return Poll::Ready(0);
            }
            match &mut state.reader {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Takes one delivery if one is queued (tests and drains).
    pub fn try_pop(&self) -> Option<Delivery> {
        self.lock().items.pop_front()
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

    /// `written` more bytes of the queue are out: drops the items wholly
    /// written and remembers how much of the next one is.
    fn advance(&mut self, sink: &dyn Sink, mut written: usize) {
        while written > 0 {
            let Some(first) = self.items.front() else {
                break;
            };
            let left = sink.wire_len(first) - self.skip;
            if written < left {
                self.skip += written;
                break;
            }
            written -= left;
            self.skip = 0;
            self.items.pop_front();
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::hub::{Event, Publication, Topic};
    use serde_json::value::RawValue;

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
        assert_eq!(queue.recv_many(&mut out, 10, &mut 0).await, 2);
        assert_eq!(out.iter().map(Delivery::seq).collect::<Vec<_>>(), [1, 2]);

        let reader = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let n = queue.recv_many(&mut out, 10, &mut 0).await;
                (n, out.first().map(Delivery::seq))
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.push(delivery(4)).unwrap();
        assert_eq!(reader.await.unwrap(), (1, Some(4)));

        queue.close();
        assert_eq!(queue.push(delivery(5)), Err(PushError::Closed));
        assert_eq!(queue.recv_many(&mut Vec::new(), 10, &mut 0).await, 0);
    }
}
