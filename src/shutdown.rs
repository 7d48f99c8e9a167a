//! Shutdown, threaded explicitly.
//!
//! hyper's graceful shutdown tracks HTTP connections until they upgrade;
//! after that a WebSocket client or a proxied tunnel is a task of its own.
//! [`Shutdown`] is what those tasks hold: a token that tells them to finish
//! (send close 1001, stop copying) and a tracker the server waits on, within
//! the grace period, before it exits.

use std::future::Future;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled once, when the gateway starts draining.
    token: CancellationToken,
    /// Every long-lived task spawned after an upgrade (and the prober).
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Spawns a task the drain waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Spawns a task the drain waits for, on another runtime.
    pub fn spawn_on<F>(&self, task: F, runtime: &tokio::runtime::Handle)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn_on(task, runtime);
    }

    /// Resolves when draining has begun.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// Like [`Shutdown::requested`], owning what it needs, for state that
    /// keeps one drain signal for its whole life (an SSE stream).
    pub fn requested_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Tells every task to finish; waits for none.
    pub fn begin(&self) {
        self.tasks.close();
        self.token.cancel();
    }

    /// Resolves when every tracked task has finished (after `begin`).
    pub async fn drained(&self) {
        self.tasks.wait().await
    }
}
