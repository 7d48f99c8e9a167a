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

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;

/// How often the background probe connects to the dashboard.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// `last_code` when the last exit had no code (a signal).
const NO_CODE: i64 = i64::MIN;

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

/// A supervised dashboard that exited this many times in a row before it
/// ever answered is crash-looping: its "starting" page says so.
pub const CRASH_LOOP_EXITS: u32 = 3;

/// A dashboard that keeps exiting before it answers (a typo in the script's
/// name, a missing module): what the "starting" page tells the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashLoop {
    /// Exits before its first answer.
    pub exits: u32,
    /// The last one's exit code (`None`: killed by a signal).
    pub code: Option<i32>,
}

/// Shared between the prober, the proxy and `/health`; lock-free.
#[derive(Debug)]
pub struct UpstreamHealth {
    state: AtomicU8,
    /// Exits of a supervised dashboard before its first answer.
    early_exits: AtomicU32,
    /// The last exit's code; NO_CODE for a signal.
    last_code: AtomicI64,
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
            early_exits: AtomicU32::new(0),
            last_code: AtomicI64::new(NO_CODE),
            replica: false,
        }
    }

    /// Another replica's state, as the forwarding proxy finds it: none
    /// until the first exchange.
    pub fn replica() -> UpstreamHealth {
        UpstreamHealth {
            state: AtomicU8::new(UpstreamState::None as u8),
            early_exits: AtomicU32::new(0),
            last_code: AtomicI64::new(NO_CODE),
            replica: true,
        }
    }

    pub fn state(&self) -> UpstreamState {
        UpstreamState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The dashboard answered.
    pub fn mark_up(&self) {
        // Every proxied answer lands here: a read, which every loop can
        // hold at once, rather than a write they would pass between them.
        if self.state() == UpstreamState::Up {
            return;
        }
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

    /// A supervised dashboard that exited (with `code`; `None` for a
    /// signal) will answer again only after its restart; until then it is
    /// down, or still starting if it never answered (then the exit counts
    /// towards a [`CrashLoop`]).
    pub fn mark_exited(&self, code: Option<i32>) {
        if self.state() == UpstreamState::Starting {
            self.last_code
                .store(code.map_or(NO_CODE, i64::from), Ordering::Release);
            self.early_exits.fetch_add(1, Ordering::AcqRel);
        }
        self.mark_down("process exited");
    }

    /// Some while the dashboard has exited CRASH_LOOP_EXITS times or more
    /// without ever answering.
    pub fn crash_loop(&self) -> Option<CrashLoop> {
        let exits = self.early_exits.load(Ordering::Acquire);
        if self.state() != UpstreamState::Starting || exits < CRASH_LOOP_EXITS {
            return None;
        }
        let code = self.last_code.load(Ordering::Acquire);
        Some(CrashLoop {
            exits,
            code: (code != NO_CODE).then_some(code as i32),
        })
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
