//! The worker's lease: with REDIS_URL, `WORKER_COMMAND` runs on exactly one
//! replica at a time.
//!
//! Owns: the lease key `<REDIS_PREFIX>worker:lease` (value: the holder's
//! replica id, a TTL of [`LEASE_TTL`]); claiming and renewing it; opening
//! and closing the worker's gate ([`Permit`]) in the supervisor; releasing
//! it on drain; and what `/health` says about it (the holder).
//!
//! One script ([`CLAIM`]) does both halves of the protocol atomically: when
//! the key is missing it is `SET … PX` to this replica (the `SET NX PX` of
//! the classic lock), when it holds this replica's id its TTL is extended
//! (compare-and-extend), and otherwise nothing changes; it answers the
//! holder. A standby replica runs it every [`POLL_EVERY`], the holder every
//! [`RENEW_EVERY`]. [`RELEASE`] deletes the key only if it is still ours.
//!
//! # Never two workers
//!
//! Redis expires the key `LEASE_TTL` after it received the last renewal;
//! the holder counts from when it *sent* that renewal, which is earlier, so
//! its own idea of the expiry is never late. From that point (`valid_until`)
//! it works back: the worker gets SIGTERM at `valid_until - STOP_MARGIN`
//! and SIGKILL at `valid_until - KILL_MARGIN`, so a holder that cannot renew
//! (Redis down, paused, partitioned) has stopped its worker before any other
//! replica can claim the lease. A claim that answers another holder while
//! we believed we held it (it cannot happen while clocks run at the same
//! rate) stops the worker at once. After closing the gate, the lease is not
//! granted again before the SIGKILL deadline has passed, so the supervisor
//! always sees the closed gate.
//!
//! When the holder's gateway is SIGKILLed, its worker's shell gets SIGTERM
//! from the kernel and SIGKILLs the group [`KILL_GRACE`] later at most (the
//! caller passes that as the worker's grace), before the lease can expire
//! and another replica start a worker: a new worker starts within about
//! `LEASE_TTL + POLL_EVERY` (11 s).
//!
//! Its own Redis connection, not the hub's: a renewal must not queue behind
//! publish scripts, and a slow renewal must not mark the backplane down.
//!
//! Does not own: the worker process (see `supervisor`), the replica's
//! address for other replicas (`REPLICA_URL`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::supervisor::Permit;

/// How long a claim or renewal keeps the lease.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a standby replica tries to claim.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// One Redis call (connect or script) may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// From SIGTERM to SIGKILL when the lease is about to lapse, and the most
/// the worker's shell waits after the gateway died.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// The worker is SIGKILLed this long before the lease can expire.
const KILL_MARGIN: Duration = Duration::from_secs(2);
/// The worker gets SIGTERM this long before the lease can expire.
const STOP_MARGIN: Duration = Duration::from_secs(KILL_GRACE.as_secs() + KILL_MARGIN.as_secs());

// The holder survives a failed renewal or two (each bounded by twice
// CALL_TIMEOUT) before it stops its worker, and the SIGKILL comes before
// the lease can lapse.
const _: () = assert!(
    RENEW_EVERY.as_secs() + 2 * CALL_TIMEOUT.as_secs()
        < LEASE_TTL.as_secs() - STOP_MARGIN.as_secs()
        && KILL_MARGIN.as_secs() > 0
        && STOP_MARGIN.as_secs() < LEASE_TTL.as_secs()
);

/// KEYS[1] the lease, ARGV[1] this replica, ARGV[2] the TTL in ms; answers
/// the holder after the call.
const CLAIM: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
";

/// KEYS[1] the lease, ARGV[1] this replica: deletes it if it is ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What `/health` shows about the lease.
#[derive(Debug)]
pub struct LeaseView {
    /// This replica's id in the lease.
    pub replica: String,
    /// The holder the last successful claim answered.
    holder: Mutex<Option<String>>,
}

impl LeaseView {
    pub fn holder(&self) -> Option<String> {
        self.holder.lock().ok().and_then(|holder| holder.clone())
    }

    fn set_holder(&self, holder: &str) {
        if let Ok(mut slot) = self.holder.lock() {
            if slot.as_deref() != Some(holder) {
                *slot = Some(holder.to_owned());
            }
        }
    }
}

/// The running lease task.
pub struct Lease {
    pub view: Arc<LeaseView>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Lease {
    /// Starts claiming the lease under `prefix`; the receiver is the
    /// worker's gate.
    pub fn start(url: &str, prefix: &str) -> Result<(Lease, watch::Receiver<Permit>), String> {
        let client = Client::open(url).map_err(|error| format!("REDIS_URL: {error}"))?;
        let view = Arc::new(LeaseView {
            replica: replica_id(),
            holder: Mutex::new(None),
        });
        let (gate, permit) = watch::channel(Permit::Hold {
            kill_at: Instant::now(),
        });
        let claimer = Claimer {
            client,
            connection: None,
            key: format!("{prefix}worker:lease"),
            view: view.clone(),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            gate,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(claimer.run(stop.clone()));
        Ok((Lease { view, stop, task }, permit))
    }

    /// Stops claiming and gives the lease up (call it once the worker is
    /// stopped), so another replica can start its worker at once.
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The lease task's state.
struct Claimer {
    client: Client,
    /// Dropped on any failure; the next call reconnects.
    connection: Option<MultiplexedConnection>,
    key: String,
    view: Arc<LeaseView>,
    claim: Script,
    release: Script,
    /// The worker's gate in the supervisor.
    gate: watch::Sender<Permit>,
}

impl Claimer {
    async fn run(mut self, stop: CancellationToken) {
        // While the gate is open: when the lease ends by our own count.
        let mut valid_until: Option<Instant> = None;
        // After the gate closed: no new grant before this.
        let mut closed_until = Instant::now();
        let mut failing = false;
        loop {
            let sent = Instant::now();
            let term_at = valid_until.map(|until| until - STOP_MARGIN);
            let answer = tokio::select! {
                answer = self.call_claim() => Some(answer),
                _ = sleep_until(term_at) => None,
                _ = stop.cancelled() => break,
            };
            match answer {
                Some(Ok(holder)) => {
                    if failing {
                        info!("worker lease: redis answers again");
                        failing = false;
                    }
                    self.view.set_holder(&holder);
                    let ours = holder == self.view.replica;
                    if ours && Instant::now() >= closed_until {
                        if valid_until.is_none() {
                            info!(replica = %holder, "worker lease acquired; starting the worker");
                            self.gate.send_replace(Permit::Run);
                        }
                        valid_until = Some(sent + LEASE_TTL);
                    } else if !ours && valid_until.take().is_some() {
                        warn!(%holder, "worker lease taken by another replica; stopping the worker now");
                        closed_until = self.close(Instant::now());
                    }
                }
                Some(Err(error)) if !failing => {
                    warn!(%error, "worker lease: cannot reach redis; retrying");
                    failing = true;
                }
                Some(Err(_)) | None => {}
            }
            if let Some(until) = valid_until {
                if Instant::now() >= until - STOP_MARGIN {
                    warn!(
                        "worker lease not renewed in time; stopping the worker before it can lapse"
                    );
                    valid_until = None;
                    closed_until = self.close(until - KILL_MARGIN);
                }
            }
            let every = if valid_until.is_some() {
                RENEW_EVERY
            } else {
                POLL_EVERY
            };
            let term_at = valid_until.map(|until| until - STOP_MARGIN);
            tokio::select! {
                _ = tokio::time::sleep_until(sent + every) => {}
                _ = sleep_until(term_at) => {}
                _ = stop.cancelled() => break,
            }
        }
        self.gate.send_replace(Permit::Hold {
            kill_at: Instant::now(),
        });
        if let Err(error) = self.call_release().await {
            warn!(%error, "worker lease: cannot release it; it lapses by itself");
        }
    }

    /// Closes the gate with SIGKILL at `kill_at`; answers when the lease may
    /// be granted again.
    fn close(&self, kill_at: Instant) -> Instant {
        self.gate.send_replace(Permit::Hold { kill_at });
        kill_at.max(Instant::now())
    }

    /// One claim, bounded by twice [`CALL_TIMEOUT`] (connect + script).
    async fn call_claim(&mut self) -> Result<String, String> {
        let answer = tokio::time::timeout(2 * CALL_TIMEOUT, self.claim_once()).await;
        answer.unwrap_or_else(|_| {
            self.connection = None;
            Err("timed out".to_owned())
        })
    }

    async fn claim_once(&mut self) -> Result<String, String> {
        let ttl_ms = LEASE_TTL.as_millis() as u64;
        let mut connection = self.connection().await?;
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(&self.view.replica)
            .arg(ttl_ms);
        let answer = invocation.invoke_async(&mut connection).await;
        answer.map_err(|error| {
            self.connection = None;
            error.to_string()
        })
    }

    /// The release, bounded like a claim.
    async fn call_release(&mut self) -> Result<(), String> {
        tokio::time::timeout(2 * CALL_TIMEOUT, self.release_once())
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()))
    }

    async fn release_once(&mut self) -> Result<(), String> {
        let mut connection = self.connection().await?;
        let mut invocation = self.release.prepare_invoke();
        invocation.key(&self.key).arg(&self.view.replica);
        let released: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
        if released == 1 {
            info!("worker lease released");
        }
        Ok(())
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, String> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| error.to_string())?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// This replica in the lease: the host name (a container's id on Railway)
/// and a random part, so two gateways on one host differ.
fn replica_id() -> String {
    use std::hash::BuildHasher;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "replica".to_owned());
    let random = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{host}-{:08x}", random as u32)
}
