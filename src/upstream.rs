//! Whether the dashboard is answering: the state `/health` reports and the
//! proxy consults to tell "starting" from "down".
//!
//! Owns: the state machine (none → starting → up ⇄ down) and the background
//! probe, a plain TCP connect every [`PROBE_INTERVAL`] — the same layer-4
//! check haproxy makes by default; it costs the dashboard nothing and fills
//! no access log. The proxy reports passively too: any response means up, a
//! refused connection means down.
//!
//! Does not own: starting or restarting the dashboard (see `supervisor`).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;

/// How often the background probe connects to the dashboard.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long one probe may take before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamState {
    /// No dashboard configured.
    None,
    /// Configured, and has not answered even once yet.
    Starting,
    Up,
    Down,
}

impl UpstreamState {
    fn from_u8(value: u8) -> UpstreamState {
        match value {
            1 => UpstreamState::Starting,
            2 => UpstreamState::Up,
            3 => UpstreamState::Down,
            _ => UpstreamState::None,
        }
    }
}

/// Shared between the prober, the proxy and `/health`; lock-free.
#[derive(Debug)]
pub struct UpstreamHealth {
    state: AtomicU8,
    /// Another replica's (see `replicas`), not the dashboard: its changes
    /// are logged as the replica's.
    replica: bool,
}

impl UpstreamHealth {
    pub fn new(configured: bool) -> UpstreamHealth {
        let initial = if configured {
            UpstreamState::Starting
        } else {
            UpstreamState::None
        };
        UpstreamHealth {
            state: AtomicU8::new(initial as u8),
            replica: false,
        }
    }

    /// Another replica's state, as the forwarding proxy finds it: none
    /// until the first exchange.
    pub fn replica() -> UpstreamHealth {
        UpstreamHealth {
            state: AtomicU8::new(UpstreamState::None as u8),
            replica: true,
        }
    }

    pub fn state(&self) -> UpstreamState {
        UpstreamState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The dashboard answered.
    pub fn mark_up(&self) {
        let previous = self.swap(UpstreamState::Up);
        if previous != UpstreamState::Up {
            if self.replica {
                debug!(previous = ?previous, "replica answers");
            } else {
                info!(previous = ?previous, "dashboard is up");
            }
        }
    }

    /// The dashboard refused or did not answer. Before its first answer it
    /// is still starting, not down.
    pub fn mark_down(&self, reason: &str) {
        if self.state() == UpstreamState::Starting {
            return;
        }
        let previous = self.swap(UpstreamState::Down);
        if self.replica && previous != UpstreamState::Down {
            warn!(
                reason,
                "replica failed; its sessions are served where they land"
            );
        } else if previous == UpstreamState::Up && !self.replica {
            warn!(reason, "dashboard is down");
        }
    }

    /// A supervised dashboard that exited will answer again only after its
    /// restart; until then it is down (or still starting, if it never ran).
    pub fn mark_exited(&self) {
        self.mark_down("process exited");
    }

    fn swap(&self, state: UpstreamState) -> UpstreamState {
        UpstreamState::from_u8(self.state.swap(state as u8, Ordering::AcqRel))
    }
}

/// Probes `connect_to` until shutdown.
pub fn spawn_probe(health: Arc<UpstreamHealth>, connect_to: String, shutdown: Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut ticks = tokio::time::interval(PROBE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.requested() => return,
            }
            match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(&connect_to)).await {
                Ok(Ok(_)) => health.mark_up(),
                Ok(Err(error)) => health.mark_down(&error.to_string()),
                Err(_) => health.mark_down("probe timed out"),
            }
        }
    });
}
