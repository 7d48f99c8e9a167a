//! [`ClientQueue`]: the bounded queue between the hub and one client.
//!
//! A `VecDeque` behind a mutex, with the reader's waker stored under the
//! same mutex. Chosen over `tokio::sync::mpsc` for what an idle connection
//! costs: an empty queue allocates nothing (tokio's channel allocates a
//! 32-slot block and its shared state up front, about 1 KiB per client), and
//! tens of thousands of idle clients are the common case. The lock is held
//! only to push or drain, never across an `.await`, and the wake happens
//! after it is released.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
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

#[derive(Debug)]
pub struct ClientQueue {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Delivery>,
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
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.items.len() >= self.capacity {
            return Err(PushError::Full);
        }
        state.items.push_back(delivery);
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(())
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
    /// 0 means closed and drained.
    pub async fn recv_many(&self, out: &mut Vec<Delivery>, limit: usize) -> usize {
        poll_fn(|cx| {
            let mut state = self.lock();
            if !state.items.is_empty() {
                let take = state.items.len().min(limit.max(1));
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
        assert_eq!(queue.recv_many(&mut out, 10).await, 2);
        assert_eq!(out.iter().map(Delivery::seq).collect::<Vec<_>>(), [1, 2]);

        let reader = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let n = queue.recv_many(&mut out, 10).await;
                (n, out.first().map(Delivery::seq))
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.push(delivery(4)).unwrap();
        assert_eq!(reader.await.unwrap(), (1, Some(4)));

        queue.close();
        assert_eq!(queue.push(delivery(5)), Err(PushError::Closed));
        assert_eq!(queue.recv_many(&mut Vec::new(), 10).await, 0);
    }
}
