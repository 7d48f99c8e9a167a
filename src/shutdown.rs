//! Shutdown, threaded explicitly.
//!
//! hyper's graceful shutdown tracks HTTP connections until they upgrade;
//! after that a WebSocket client or a proxied tunnel is a task of its own.
//! [`Shutdown`] is what those tasks hold: a signal that tells them to finish
//! (send close 1001, stop copying) and a tracker the server waits on, within
//! the grace period, before it exits. Subscribed clients (WebSocket and
//! SSE streams) hear the drain through the keepalive clock, which `lib`
//! closes when it begins: one signal per client for both.

use std::future::Future;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::beacon::{Beacon, Signal};

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Fires once, when the gateway starts draining.
    drain: Arc<Beacon>,
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

    /// Resolves once draining has begun (at once if it already has). A
    /// task that keeps one for its whole life and polls it at every wake-up
    /// pays an atomic load, not a lock.
    pub fn requested(&self) -> Signal {
        self.drain.fired()
    }

    /// Tells every task to finish; waits for none.
    pub fn begin(&self) {
        self.tasks.close();
        self.drain.fire();
    }

    /// Resolves when every tracked task has finished (after `begin`).
    pub async fn drained(&self) {
        self.tasks.wait().await
    }
}
