//! switchyard: one port for a whole real-time dashboard app.
//!
//! `run` is the whole gateway; `main` only reads the config, sets up logs and
//! waits for a signal. Tests call the binary, which calls this.

pub mod assets;
pub mod config;
pub mod cors;
pub mod health;
pub mod hub;
pub mod logging;
pub mod protocol;
pub mod proxy;
pub mod publish;
pub mod response;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod upstream;
pub mod ws;

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

pub use config::Config;

use crate::hub::memory::MemoryHub;
use crate::hub::Hub;
use crate::proxy::Proxy;
use crate::server::Gateway;
use crate::shutdown::Shutdown;
use crate::upstream::UpstreamHealth;

/// Binds the public port and serves until `signal` resolves, then drains.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen_addr).await?;
    let addr = listener.local_addr()?;
    info!(config = ?config, "configuration");

    raise_open_file_limit(config.max_connections);

    let shutdown = Shutdown::new();
    let hub: Arc<dyn Hub> = Arc::new(MemoryHub::new(config.history_size));
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
        hub,
        proxy,
        upstream,
        clients: AtomicUsize::new(0),
        shutdown,
    });
    server::serve(listener, gateway, signal).await;
    Ok(())
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
