//! switchyard: one port for a whole real-time dashboard app.
//!
//! `run` is the whole gateway; `main` only reads the config, sets up logs and
//! waits for a signal. Tests call the binary, which calls this.

pub mod assets;
pub mod config;
pub mod health;
pub mod logging;
pub mod proxy;
pub mod response;
pub mod server;
pub mod shutdown;
pub mod upstream;

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

pub use config::Config;

use crate::proxy::Proxy;
use crate::server::Gateway;
use crate::shutdown::Shutdown;
use crate::upstream::UpstreamHealth;

/// Binds the public port and serves until `signal` resolves, then drains.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen_addr).await?;
    let addr = listener.local_addr()?;
    info!(config = ?config, "configuration");

    let shutdown = Shutdown::new();
    let upstream = Arc::new(UpstreamHealth::new(config.dashboard_url.is_some()));
    let proxy = config.dashboard_url.clone().map(|url| {
        upstream::spawn_probe(upstream.clone(), url.connect_to.clone(), shutdown.clone());
        Proxy::new(&config, url, upstream.clone(), shutdown.clone())
    });
    let dashboard = config
        .dashboard_url
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    info!(%addr, dashboard, "listening");

    let gateway = Arc::new(Gateway {
        config,
        proxy,
        upstream,
        clients: AtomicUsize::new(0),
        shutdown,
    });
    server::serve(listener, gateway, signal).await;
    Ok(())
}
