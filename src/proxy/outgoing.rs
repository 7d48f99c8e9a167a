//! The body of a proxied request as the dashboard's connection reads it:
//! the client's body passed through frame by frame, reporting who the
//! exchange is waiting on, so the upstream timeout counts only the
//! dashboard's time, never the client's upload (and a client that stalls
//! mid-body is timed on its own, see `proxy::CLIENT_BODY_TIMEOUT`).
//!
//! Owns: the [`Progress`] of one request body (waiting on the client, on the
//! dashboard since when, or done since when), and lingering on a body the
//! dashboard's connection dropped before its end (a 502/504 answered while
//! the client still uploads; see `linger`).
//!
//! Does not own: the timer itself (`proxy` arms it from the progress).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::watch;

use crate::linger;
use crate::shutdown::Shutdown;

/// Who a proxied exchange is waiting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The dashboard, since this instant: it has not taken the bytes it was
    /// offered (or the request head), or owes the response head.
    Dashboard(Instant),
    /// The client, since this instant, to send more of its body: the
    /// upstream timer does not run.
    Client(Instant),
    /// The body has been sent whole (or abandoned) at this instant; the
    /// dashboard owes the response head.
    Sent(Instant),
}

/// A request body on its way to the dashboard. An empty one is just that.
pub struct Outgoing {
    streaming: Option<Box<Streaming>>,
}

struct Streaming {
    body: Incoming,
    progress: watch::Sender<Progress>,
    /// The body reported its end (or failed): nothing left to linger on.
    ended: bool,
    /// Set when the client sent `Expect: 100-continue` (see `linger`).
    lingers: bool,
    linger_bytes: u64,
    shutdown: Shutdown,
}

impl Outgoing {
    /// No body (a GET, or a request replayed without one).
    pub fn empty() -> Outgoing {
        Outgoing { streaming: None }
    }

    /// Wraps the client's body. An empty one needs no watching: answers
    /// `None` for the progress, and the timer runs from the start.
    pub fn new(
        body: Incoming,
        started: Instant,
        lingers: bool,
        linger_bytes: u64,
        shutdown: &Shutdown,
    ) -> (Outgoing, Option<watch::Receiver<Progress>>) {
        if body.is_end_stream() {
            return (Outgoing::empty(), None);
        }
        let (progress, watcher) = watch::channel(Progress::Dashboard(started));
        let streaming = Streaming {
            body,
            progress,
            ended: false,
            lingers,
            linger_bytes,
            shutdown: shutdown.clone(),
        };
        let outgoing = Outgoing {
            streaming: Some(Box::new(streaming)),
        };
        (outgoing, Some(watcher))
    }
}

impl Streaming {
    /// Records a new state. Receivers are woken only when who is awaited
    /// changes, not each time the dashboard takes another frame: the timer
    /// rereads the instant when it fires.
    fn set(&self, next: Progress) {
        self.progress.send_if_modified(|current| {
            let woken = std::mem::discriminant(current) != std::mem::discriminant(&next);
            *current = next;
            woken
        });
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(streaming) = self.get_mut().streaming.as_deref_mut() else {
            return Poll::Ready(None);
        };
        if streaming.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut streaming.body).poll_frame(cx) {
            Poll::Pending => {
                // Since the first poll that found nothing, not the latest.
                if !matches!(*streaming.progress.borrow(), Progress::Client(_)) {
                    streaming.set(Progress::Client(Instant::now()));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                streaming.set(Progress::Dashboard(Instant::now()));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                streaming.ended = true;
                streaming.set(Progress::Sent(Instant::now()));
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                streaming.ended = true;
                streaming.set(Progress::Sent(Instant::now()));
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.streaming {
            None => true,
            Some(streaming) => streaming.ended || streaming.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.streaming {
            None => SizeHint::with_exact(0),
            Some(streaming) => streaming.body.size_hint(),
        }
    }
}

impl Drop for Outgoing {
    /// Dropped before its end (the dashboard's connection failed, was never
    /// made, or the timeout fired): whoever is still uploading gets a
    /// lingering close, so our error page reaches them.
    fn drop(&mut self) {
        let Some(streaming) = self.streaming.take() else {
            return;
        };
        let Streaming {
            body,
            progress,
            ended,
            lingers,
            linger_bytes,
            shutdown,
        } = *streaming;
        // Waiting on the client no more: the timer runs from now.
        progress.send_if_modified(|current| {
            if matches!(current, Progress::Client(_)) {
                *current = Progress::Sent(Instant::now());
                true
            } else {
                false
            }
        });
        if !ended && lingers {
            linger::discard(body, linger_bytes, &shutdown);
        }
    }
}
