//! The command connection to Redis and how a script is called on it.
//!
//! Owns: the one multiplexed command connection (opened on demand with a
//! connect timeout, dropped on any failure so the next call reconnects),
//! the common script arguments (keys and this replica's belief), and
//! marking Redis up or down. Does not own: what the scripts do
//! ([`scripts`](super::scripts)) or the pub/sub connection (the
//! [`listener`](super::listener)).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, Script, ScriptInvocation};
use tracing::{info, warn};

use super::{lock, RedisHub, REDIS_TIMEOUT};
use crate::hub::{Epoch, HubError};

/// A multiplexed command connection whose connect and every reply are
/// bounded by [`REDIS_TIMEOUT`] (also the replica registry's, see
/// `replicas::registry`).
pub async fn connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// First pause between two "redis unreachable" warnings; it doubles up to
/// [`DOWN_LOG_MAX`] while Redis stays down, so a wrong REDIS_URL is said at
/// once and then again and again, without flooding the log.
const DOWN_LOG_FIRST: Duration = Duration::from_secs(2);
const DOWN_LOG_MAX: Duration = Duration::from_secs(60);

/// The warning, with `host` and `reason` beside it.
const REDIS_UNREACHABLE: &str =
    "redis unreachable; retrying with backoff (publishes answer 503 until it is back)";

/// When the next "redis unreachable" warning may go out.
#[derive(Debug, Default)]
pub(super) struct DownLog {
    /// `None`: the next failure is said at once (at start, or after Redis
    /// was up).
    next: Option<Instant>,
    every: Duration,
}

impl RedisHub {
    pub(super) fn set_up(&self, up: bool, reason: &str) {
        let was_up = self.up.swap(up, Ordering::AcqRel);
        if up {
            *lock(&self.down_log) = DownLog::default();
            if !was_up {
                info!(host = %self.host, "redis is up");
            }
            return;
        }
        let now = Instant::now();
        let due = {
            let mut log = lock(&self.down_log);
            let due = was_up || log.next.is_none_or(|next| now >= next);
            if due {
                log.every = match log.next {
                    None => DOWN_LOG_FIRST,
                    Some(_) => (log.every * 2).min(DOWN_LOG_MAX),
                };
                log.next = Some(now + log.every);
            }
            due
        };
        if due {
            warn!(
                host = %self.host,
                reason,
                "{REDIS_UNREACHABLE}"
            );
        }
    }

    /// The command connection, connecting when there is none.
    pub(super) async fn commands(&self) -> Result<MultiplexedConnection, HubError> {
        let existing = lock(&self.commands).clone();
        if let Some(connection) = existing {
            return Ok(connection);
        }
        let connection = connect(&self.client).await.map_err(|error| {
            self.set_up(false, &error.to_string());
            HubError::Unavailable
        })?;
        *lock(&self.commands) = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a broken command connection so the next call reconnects.
    pub(super) fn drop_commands(&self) {
        *lock(&self.commands) = None;
    }

    /// A script call with the keys and the common arguments (the belief).
    pub(super) fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let belief = lock(&self.belief).args();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .key(&self.keys.history)
            .key(&self.keys.state)
            .key(&self.keys.state_sizes)
            .key(&self.keys.retained_bytes)
            .key(&self.keys.history_bytes)
            .arg(&self.keys.channel)
            .arg(belief.epoch)
            .arg(belief.floor)
            .arg(belief.retired)
            .arg(Epoch::generate().as_str());
        invocation
    }

    /// Runs a script; any failure drops the connection and marks Redis down.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        what: &'static str,
    ) -> Result<T, HubError> {
        let mut connection = self.commands().await?;
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| {
                self.drop_commands();
                self.set_up(false, &error.to_string());
                warn!(%error, what, "redis call failed");
                HubError::Unavailable
            })
    }
}
