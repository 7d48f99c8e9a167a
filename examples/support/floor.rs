//! What the two floor binaries (`hyper_floor`, `ws_floor`) share:
//! switchyard's HTTP threading without switchyard. One current-thread loop
//! per core (`TOKIO_WORKER_THREADS` when set), each on its own thread with
//! its own `SO_REUSEPORT` listener on `HOST`:`PORT` (default
//! 127.0.0.1:8080) and TCP_NODELAY, as `event_loops` sets them up.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpSocket;

/// Runs `serve` on one thread per loop, each given its own listener;
/// returns when every loop has (an error or a panic of one is returned).
pub fn run_loops<F>(serve: F) -> io::Result<()>
where
    F: Fn(std::net::TcpListener) -> io::Result<()> + Clone + Send + 'static,
{
    let port: u16 = env_or("PORT", "8080").parse().map_err(invalid)?;
    let host: IpAddr = env_or("HOST", "127.0.0.1").parse().map_err(invalid)?;
    let addr = SocketAddr::new(host, port);
    let threads = (0..loops())
        .map(|_| {
            let listener = listener(addr)?;
            let serve = serve.clone();
            Ok(std::thread::spawn(move || serve(listener)))
        })
        .collect::<io::Result<Vec<_>>>()?;
    for thread in threads {
        thread
            .join()
            .map_err(|_| io::Error::other("a loop panicked"))??;
    }
    Ok(())
}

/// A configuration error, as an `io::Error` for `main` to return.
pub fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error.to_string())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// TOKIO_WORKER_THREADS when a positive number, else one per CPU.
fn loops() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    // A runtime only to create the socket; the loop's own takes it over.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let _inside = runtime.enter();
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}
