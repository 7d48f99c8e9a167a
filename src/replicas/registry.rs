//! This replica's entry in Redis and its view of the others.
//!
//! Every [`RENEW`], in one round trip: `{prefix}replicas:<id>` = REPLICA_URL
//! with a [`TTL`], the id added to the set `{prefix}replicas`, the shared
//! key `{prefix}replica-key` created if missing (`SET NX` of 32 random
//! bytes: the first replica's key wins and every replica reads it back),
//! and the set's members; then their URLs (`MGET`), dropping from the set
//! the ids whose entry expired. A replica that stops renewing (SIGKILL,
//! partition) is gone for the others within [`TTL`]; one that shuts down
//! deletes its entry at once. Peers found refusing connections are probed
//! (a TCP connect) each round and count again once they accept.
//!
//! Owns: the keys above and the loop that keeps them. Does not own: what a
//! request does with the table (`replicas`).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use redis::aio::MultiplexedConnection;
use redis::Client;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{random_u64, valid_id, Replicas};
use crate::config::{parse_upstream_url, UpstreamUrl};
use crate::shutdown::Shutdown;

/// How often this replica renews its entry and rereads the others.
pub const RENEW: Duration = Duration::from_secs(2);

/// How long an entry lives without renewal: a replica silent this long is gone.
pub const TTL: Duration = Duration::from_secs(8);

/// How long deregistering at shutdown may take.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a probe of a peer that refused connections may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many replicas are read from the set (it bounds the work of
/// a round, whatever the set holds).
const MAX_REPLICAS: usize = 256;

/// Longest REPLICA_URL read back from Redis.
const MAX_URL_LEN: usize = 512;

/// The Redis keys, built once.
struct Keys {
    /// `{prefix}replicas`: the ids.
    set: String,
    /// `{prefix}replicas:`: the prefix of each id's entry.
    entry: String,
    /// `{prefix}replica-key`: the shared key.
    key: String,
}

/// Starts the loop (tracked by `shutdown`, which ends it and deletes this
/// replica's entry). Fails only on a REDIS_URL the client cannot parse.
pub fn start(
    replicas: Arc<Replicas>,
    redis_url: &str,
    prefix: &str,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let client = Client::open(redis_url).map_err(|error| format!("REDIS_URL: {error}"))?;
    let keys = Keys {
        set: format!("{prefix}replicas"),
        entry: format!("{prefix}replicas:"),
        key: format!("{prefix}replica-key"),
    };
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut registry = Registry {
            client,
            connection: None,
            keys,
            replicas,
            failing: false,
            registered: false,
            known: Vec::new(),
        };
        let mut ticks = tokio::time::interval(RENEW);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => registry.round().await,
                _ = stop.requested() => break,
            }
        }
        registry.deregister().await;
    });
    Ok(())
}

struct Registry {
    client: Client,
    /// Opened on demand, dropped on any failure.
    connection: Option<MultiplexedConnection>,
    keys: Keys,
    replicas: Arc<Replicas>,
    /// The last round failed (to log transitions only).
    failing: bool,
    /// A round has succeeded once.
    registered: bool,
    /// The peer ids of the last round (to log changes only).
    known: Vec<String>,
}

impl Registry {
    async fn round(&mut self) {
        match self.renew().await {
            Ok(listed) => {
                if !self.registered || self.failing {
                    info!(replica = self.replicas.id(), url = %self.replicas.url(), "replica registered in redis");
                    self.registered = true;
                }
                self.failing = false;
                let mut ids: Vec<String> = listed.iter().map(|(id, _)| id.clone()).collect();
                ids.sort();
                if ids != self.known {
                    info!(replica = self.replicas.id(), peers = ?ids, "replicas changed");
                    let own = self.replicas.url();
                    if listed.iter().any(|(_, url)| url == own) {
                        warn!(url = %own, "another replica registered this replica's REPLICA_URL; each replica needs its own address (leave REPLICA_URL unset to detect it)");
                    }
                    self.known = ids;
                }
                self.replicas.update(listed, Instant::now().into_std());
            }
            Err(error) => {
                self.connection = None;
                if !self.failing {
                    warn!(%error, "replica registry: redis call failed; retrying");
                    self.failing = true;
                }
                self.replicas.expire(Instant::now().into_std());
            }
        }
        for peer in self.replicas.down_peers() {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(&peer.connect_to));
            if let Ok(Ok(_)) = probe.await {
                peer.proxy.health().mark_up();
            }
        }
    }

    async fn connection(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let connection = crate::hub::redis::connect(&self.client).await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// One round: renew, read the key and the others.
    async fn renew(&mut self) -> redis::RedisResult<Vec<(String, UpstreamUrl)>> {
        let mut connection = self.connection().await?;
        let id = self.replicas.id().to_owned();
        let url = self.replicas.url().to_string();
        let entry = |id: &str| format!("{}{id}", self.keys.entry);
        let candidate = format!("{:016x}{:016x}", random_u64(), random_u64())
            + &format!("{:016x}{:016x}", random_u64(), random_u64());
        let (key, members): (Option<String>, Vec<String>) = redis::pipe()
            .cmd("SET")
            .arg(entry(&id))
            .arg(&url)
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(&self.keys.set)
            .arg(&id)
            .ignore()
            .cmd("SET")
            .arg(&self.keys.key)
            .arg(&candidate)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&self.keys.key)
            .cmd("SMEMBERS")
            .arg(&self.keys.set)
            .query_async(&mut connection)
            .await?;
        if let Some(key) = key
            .filter(|key| (32..=256).contains(&key.len()))
            .and_then(|key| HeaderValue::from_str(&key).ok())
        {
            self.replicas.set_key(key);
        }
        let others: Vec<String> = members
            .into_iter()
            .filter(|member| *member != id)
            .take(MAX_REPLICAS)
            .collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<String> = others.iter().map(|other| entry(other)).collect();
        let urls: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&entries)
            .query_async(&mut connection)
            .await?;
        let mut listed = Vec::with_capacity(others.len());
        let mut expired = Vec::new();
        for (other, url) in others.into_iter().zip(urls) {
            let parsed = url
                .filter(|url| url.len() <= MAX_URL_LEN)
                .and_then(|url| parse_upstream_url(&url));
            match parsed {
                Some(url) if valid_id(&other) => listed.push((other, url)),
                _ => expired.push(other),
            }
        }
        if !expired.is_empty() {
            redis::cmd("SREM")
                .arg(&self.keys.set)
                .arg(&expired)
                .query_async::<()>(&mut connection)
                .await?;
        }
        Ok(listed)
    }

    /// On shutdown: the others stop forwarding here at their next round.
    async fn deregister(&mut self) {
        let id = self.replicas.id().to_owned();
        let entry = format!("{}{id}", self.keys.entry);
        let set = self.keys.set.clone();
        let work = async {
            let mut connection = self.connection().await?;
            redis::pipe()
                .cmd("DEL")
                .arg(entry)
                .ignore()
                .cmd("SREM")
                .arg(set)
                .arg(&id)
                .ignore()
                .query_async::<()>(&mut connection)
                .await
        };
        match tokio::time::timeout(DEREGISTER_TIMEOUT, work).await {
            Ok(Ok(())) => info!(replica = %id, "replica left the registry"),
            Ok(Err(error)) => warn!(%error, "replica registry: could not deregister"),
            Err(_) => warn!("replica registry: deregistering timed out"),
        }
    }
}
