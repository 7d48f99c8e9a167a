//! switchyard: one port for a whole real-time dashboard app.
//!
//! `run` is the whole gateway; `main` only reads the config, sets up logs and
//! waits for a signal. Tests call the binary, which calls this.

pub mod assets;
pub mod auth;
pub mod beacon;
pub mod broadcast;
pub mod config;
pub mod cors;
pub mod event_loops;
pub mod faults;
pub mod health;
pub mod hub;
pub mod layers;
pub mod lease;
pub mod linger;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod public_config;
pub mod publish;
pub mod replicas;
pub mod response;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod state;
pub mod supervisor;
pub mod timers;
pub mod upstream;
pub mod watchdog;
pub mod ws;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use config::Config;

use crate::beacon::Beacon;
use crate::broadcast::Broadcaster;
use crate::config::RESERVED_DESCRIPTORS;
use crate::hub::memory::MemoryHub;
use crate::hub::redis::RedisHub;
use crate::hub::Hub;
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::replicas::Replicas;
use crate::server::Gateway;
use crate::shutdown::Shutdown;
use crate::supervisor::{ChildKind, ChildSpec, Supervisor};
use crate::upstream::UpstreamHealth;

/// Binds the public port and serves until `signal` resolves, then drains.
/// `hub_runtime` runs the hub: the in-memory fan-out task or the Redis
/// connections (it may be the current runtime's handle; see
/// `event_loops`).
pub async fn run(
    mut config: Config,
    signal: impl Future<Output = ()>,
    hub_runtime: tokio::runtime::Handle,
) -> std::io::Result<()> {
    let listeners = event_loops::bind(config.listen_addr, event_loops::count())?;
    let addr = match listeners.first() {
        Some(listener) => listener.local_addr()?,
        None => return Err(std::io::Error::other("no listener")),
    };
    config.settle_bound_port(addr.port());
    debug!(config = ?config, "configuration");

    raise_open_file_limit(config.max_connections);

    let shutdown = Shutdown::new();
    let hub: Arc<dyn Hub> = match &config.redis_url {
        Some(url) => RedisHub::start(
            url.expose(),
            &config.redis_prefix,
            hub::Limits::from(&config),
            &shutdown,
            &hub_runtime,
        )
        .map_err(std::io::Error::other)?,
        None => MemoryHub::start(hub::Limits::from(&config), &shutdown, &hub_runtime),
    };
    let upstream = Arc::new(UpstreamHealth::new(config.dashboard_url.is_some()));
    let proxy = config.dashboard_url.clone().map(|url| {
        upstream::spawn_probe(upstream.clone(), url.connect_to.clone(), shutdown.clone());
        Arc::new(Proxy::new(&config, url, upstream.clone(), shutdown.clone()))
    });
    let replicas = match (&config.redis_url, &proxy) {
        (Some(redis_url), Some(proxy)) => Some(start_replicas(
            &config,
            redis_url.expose(),
            addr,
            proxy,
            &shutdown,
        )?),
        _ => None,
    };
    let dashboard = config
        .dashboard_url
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    info!(%addr, dashboard, "{}", startup_line(&config, addr));

    // With Redis, the worker runs on one replica at a time: the lease opens
    // its gate, and its shell kills it within the lease's own grace if
    // the gateway dies (see `lease`).
    let (lease, gate) = match (&config.worker_command, &config.redis_url) {
        (Some(_), Some(url)) => {
            let (lease, gate) =
                Lease::start(url.expose(), &config.redis_prefix).map_err(std::io::Error::other)?;
            (Some(lease), Some(gate))
        }
        _ => (None, None),
    };
    let worker_grace = match gate {
        Some(_) => config.shutdown_grace.min(lease::KILL_GRACE),
        None => config.shutdown_grace,
    };
    let supervise = |kind, command: &Option<String>, upstream, gate, grace| {
        command.clone().map(|command| {
            Supervisor::start(ChildSpec {
                kind,
                command,
                env: child_environment(&config, addr, kind),
                grace,
                upstream,
                gate,
            })
        })
    };
    let dashboard = supervise(
        ChildKind::Dashboard,
        &config.dashboard_command,
        Some(upstream.clone()),
        None,
        config.shutdown_grace,
    );
    let worker = supervise(
        ChildKind::Worker,
        &config.worker_command,
        None,
        gate,
        worker_grace,
    );
    let dashboard_status = dashboard.as_ref().map(|s| s.status.clone());
    let worker_status = worker.as_ref().map(|s| s.status.clone());
    let mut metrics = Metrics::new(
        hub.clone(),
        upstream.clone(),
        dashboard_status.clone(),
        worker_status.clone(),
    );
    if let Some(replicas) = &replicas {
        metrics.register_replicas(replicas.clone());
    }
    let ping_clock = spawn_ping_clock(config.ping_interval, &shutdown);
    let broadcaster = Arc::new(Broadcaster::new(
        hub,
        broadcast::Limits::from(&config),
        metrics.connection_gauges(),
        ping_clock,
        shutdown.clone(),
    ));
    let gateway = Arc::new(Gateway {
        access: Arc::new(auth::Access::new(&config)),
        broadcaster,
        proxy,
        upstream,
        dashboard: dashboard_status,
        worker: worker_status,
        worker_lease: lease.as_ref().map(|lease| lease.view.clone()),
        metrics,
        replicas,
        shutdown,
        config,
    });

    // The grace covers draining and then stopping the children; they get
    // up to half of it (at most 5 s) for their own SIGTERM handling.
    let children: Vec<Supervisor> = dashboard.into_iter().chain(worker).collect();
    let grace = gateway.config.shutdown_grace;
    let child_budget = if children.is_empty() {
        Duration::ZERO
    } else {
        (grace / 2).min(Duration::from_secs(5))
    };
    let signalled_at = Arc::new(OnceLock::new());
    let mark = signalled_at.clone();
    let signal = async move {
        signal.await;
        let _ = mark.set(Instant::now());
    };
    let served = server::serve(listeners, gateway, signal, grace - child_budget).await;
    let signalled = signalled_at.get().copied().unwrap_or_else(Instant::now);
    futures_util::future::join_all(
        children
            .into_iter()
            .map(|child| child.stop(signalled + grace)),
    )
    .await;
    // Only once the worker is gone: another replica may start one at once.
    // Within the grace; a lease not released lapses by itself.
    if let Some(lease) = lease {
        let _ = tokio::time::timeout_at(signalled + grace, lease.release()).await;
    }
    served
}

/// Sticky sessions: this replica's URL (REPLICA_URL, or detected from the
/// host's addresses and the bound port) registered in Redis.
fn start_replicas(
    config: &Config,
    redis_url: &str,
    bound: SocketAddr,
    proxy: &Arc<Proxy>,
    shutdown: &Shutdown,
) -> std::io::Result<Arc<Replicas>> {
    let url = match &config.replica_url {
        Some(url) => url.clone(),
        None => replicas::address::detect(bound).ok_or_else(|| {
            std::io::Error::other(
                "REPLICA_URL is not set and this host has no address other replicas could reach; set REPLICA_URL",
            )
        })?,
    };
    let replicas = Arc::new(Replicas::new(
        url,
        proxy.clone(),
        config.trusted_proxies.clone(),
    ));
    replicas::start(replicas.clone(), redis_url, &config.redis_prefix, shutdown)
        .map_err(std::io::Error::other)?;
    info!(replica = replicas.id(), url = %replicas.url(), "sticky dashboard sessions on");
    Ok(replicas)
}

/// What a supervised child finds in its environment besides ours: where to
/// publish and subscribe on loopback and the public WebSocket URI. The
/// dashboard also gets `PORT` set to its own port (so an app that honours
/// PORT listens where the proxy looks); the worker gets no `PORT` at all
/// (see [`ChildKind`]).
fn child_environment(config: &Config, bound: SocketAddr, kind: ChildKind) -> Vec<(String, String)> {
    let local = match bound.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let port = bound.port();
    let mut env = vec![
        (
            "SWITCHYARD_PUBLISH_URL".to_owned(),
            format!("http://{local}:{port}/_switchyard/publish"),
        ),
        (
            "SWITCHYARD_WS_URL".to_owned(),
            format!("ws://{local}:{port}{}", config.websocket_path),
        ),
        (
            "WEBSOCKET_PUBLIC_URI".to_owned(),
            config.public_websocket_uri.clone(),
        ),
        (
            "WEBSOCKET_ENABLED".to_owned(),
            config.websocket_enabled.to_string(),
        ),
    ];
    if let (ChildKind::Dashboard, Some(url)) = (kind, &config.dashboard_url) {
        env.push((
            "PORT".to_owned(),
            url.authority.port_u16().unwrap_or(80).to_string(),
        ));
    }
    env
}

/// Raises the soft open-file limit to the hard one (a process may always do
/// that) and warns once when MAX_CONNECTIONS cannot fit under it.
fn raise_open_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = max_connections as u64 + RESERVED_DESCRIPTORS;
            let fits_about = limit.saturating_sub(RESERVED_DESCRIPTORS);
            if limit >= needed {
                debug!(open_file_limit = limit, "open-file limit");
            } else if max_connections == config::DEFAULT_MAX_CONNECTIONS {
                // The default is a ceiling nobody chose: no warning on every
                // start, only the fact for whoever looks.
                debug!(
                    open_file_limit = limit,
                    max_connections, "the open-file limit allows about {fits_about} clients"
                );
            } else {
                warn!(
                    open_file_limit = limit,
                    max_connections,
                    "MAX_CONNECTIONS does not fit under the open-file limit; past about \
                     {fits_about} clients new connections fail to be accepted"
                );
            }
        }
        Err(error) => warn!(%error, "cannot read or raise the open-file limit"),
    }
}

/// The one start-up line a person reads: where to open it and what runs
/// behind it (`switchyard 0.1.0 listening on http://localhost:8080 ·
/// dashboard: … · worker: … · redis: …`); never a secret (Redis's host
/// only).
fn startup_line(config: &Config, addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() => "localhost".to_owned(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let dashboard = match (&config.dashboard_url, &config.dashboard_command) {
        (Some(url), Some(_)) => format!("{url} (started and supervised)"),
        (Some(url), None) => url.to_string(),
        (None, _) => "none (the console is at /)".to_owned(),
    };
    let worker = if config.worker_command.is_some() {
        "supervised"
    } else {
        "none"
    };
    let redis = config
        .redis_url
        .as_ref()
        .map_or_else(|| "off".to_owned(), |url| config::redis_host(url.expose()));
    format!(
        "switchyard {} listening on http://{host}:{} · dashboard: {dashboard} · worker: {worker} · redis: {redis}",
        env!("CARGO_PKG_VERSION"),
        addr.port()
    )
}

/// Ticks for every client's keepalive until shutdown, and is closed then:
/// a client's stream waits on this one clock for both (see
/// `broadcast::stream`).
fn spawn_ping_clock(interval: Duration, shutdown: &Shutdown) -> Arc<Beacon> {
    let clock = Beacon::new();
    let ticks = clock.clone();
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut timer = tokio::time::interval_at(Instant::now() + interval, interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = timer.tick() => ticks.fire(),
                _ = stop.requested() => break,
            }
        }
        ticks.close();
    });
    clock
}
