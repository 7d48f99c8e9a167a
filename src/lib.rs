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
pub mod linger;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod public_config;
pub mod publish;
pub mod response;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod state;
pub mod supervisor;
pub mod upstream;
pub mod watchdog;
pub mod ws;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

pub use config::Config;

use crate::beacon::Beacon;
use crate::broadcast::Broadcaster;
use crate::hub::memory::MemoryHub;
use crate::hub::redis::RedisHub;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::Gateway;
use crate::shutdown::Shutdown;
use crate::supervisor::Supervisor;
use crate::upstream::UpstreamHealth;

/// Binds the public port and serves until `signal` resolves, then drains.
/// `client_runtime` runs the broadcaster's WebSocket clients (it may be the
/// current runtime's handle).
pub async fn run(
    mut config: Config,
    signal: impl Future<Output = ()>,
    client_runtime: tokio::runtime::Handle,
) -> std::io::Result<()> {
    let listeners = event_loops::bind(config.listen_addr, event_loops::count())?;
    let addr = match listeners.first() {
        Some(listener) => listener.local_addr()?,
        None => return Err(std::io::Error::other("no listener")),
    };
    config.settle_bound_port(addr.port());
    info!(config = ?config, "configuration");

    raise_open_file_limit(config.max_connections);

    let shutdown = Shutdown::new();
    let hub: Arc<dyn Hub> = match &config.redis_url {
        Some(url) => RedisHub::start(
            url.expose(),
            &config.redis_prefix,
            hub::Limits::from(&config),
            &shutdown,
            &client_runtime,
        )
        .map_err(std::io::Error::other)?,
        None => MemoryHub::start(hub::Limits::from(&config), &shutdown, &client_runtime),
    };
    let upstream = Arc::new(UpstreamHealth::new(config.dashboard_url.is_some()));
    let proxy = config.dashboard_url.clone().map(|url| {
        upstream::spawn_probe(upstream.clone(), url.connect_to.clone(), shutdown.clone());
        Arc::new(Proxy::new(&config, url, upstream.clone(), shutdown.clone()))
    });
    let dashboard = config
        .dashboard_url
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    info!(%addr, dashboard, "listening");

    let supervisor = config.dashboard_command.clone().map(|command| {
        Supervisor::start(
            command,
            child_environment(&config, addr),
            upstream.clone(),
            config.shutdown_grace,
        )
    });
    let restarts = supervisor.as_ref().map(|s| s.restarts.clone());
    let metrics = Metrics::new(hub.clone(), upstream.clone(), restarts.clone());
    let ping_clock = spawn_ping_clock(config.ping_interval, &shutdown);
    let broadcaster = Arc::new(Broadcaster::new(
        hub,
        broadcast::Limits::from(&config),
        metrics.connection_gauges(),
        ping_clock,
        shutdown.clone(),
        client_runtime,
    ));
    let gateway = Arc::new(Gateway {
        access: Arc::new(auth::Access::new(&config)),
        broadcaster,
        proxy,
        upstream,
        dashboard_restarts: restarts,
        metrics,
        shutdown,
        config,
    });

    // The grace covers draining and then stopping the child; the child gets
    // up to half of it (at most 5 s) for its own SIGTERM handling.
    let grace = gateway.config.shutdown_grace;
    let child_budget = if supervisor.is_some() {
        (grace / 2).min(Duration::from_secs(5))
    } else {
        Duration::ZERO
    };
    let signalled_at = Arc::new(OnceLock::new());
    let mark = signalled_at.clone();
    let signal = async move {
        signal.await;
        let _ = mark.set(Instant::now());
    };
    let served = server::serve(listeners, gateway, signal, grace - child_budget).await;
    if let Some(supervisor) = supervisor {
        let signalled = signalled_at.get().copied().unwrap_or_else(Instant::now);
        supervisor.stop(signalled + grace).await;
    }
    served
}

/// What the supervised dashboard finds in its environment besides ours:
/// where to publish and subscribe on loopback, the public WebSocket URI, and
/// `PORT` set to the dashboard's own port (so an app that honours PORT
/// listens where the proxy looks).
fn child_environment(config: &Config, bound: SocketAddr) -> Vec<(String, String)> {
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
    if let Some(url) = &config.dashboard_url {
        env.push((
            "PORT".to_owned(),
            url.authority.port_u16().unwrap_or(80).to_string(),
        ));
    }
    env
}

/// Descriptors the process needs besides its clients: listener, dashboard
/// connections, logs, the child process.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft open-file limit to the hard one (a process may always do
/// that) and warns once when MAX_CONNECTIONS cannot fit under it.
fn raise_open_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = max_connections as u64 + RESERVED_DESCRIPTORS;
            if limit < needed {
                warn!(
                    open_file_limit = limit,
                    max_connections,
                    "MAX_CONNECTIONS does not fit under the open-file limit; past about {} clients \
                     new connections fail to be accepted",
                    limit.saturating_sub(RESERVED_DESCRIPTORS)
                );
            } else {
                info!(open_file_limit = limit, "open-file limit");
            }
        }
        Err(error) => warn!(%error, "cannot read or raise the open-file limit"),
    }
}

/// Ticks for every client's keepalive until shutdown.
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
                _ = stop.requested() => return,
            }
        }
    });
    clock
}
