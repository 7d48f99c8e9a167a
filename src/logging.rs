//! Log setup: `pretty` for people, `json` (one object per line) for machines.
//! The level comes from `RUST_LOG` (default `info`).
//!
//! Owns: the subscriber, and getting its lines to stdout without ever
//! blocking the thread that logs. Lines go through a bounded queue
//! ([`BUFFERED_LINES`]) to one writer thread (tracing-appender's
//! non-blocking writer, lossy): when stdout does not keep up (a full pipe, a
//! stalled collector) new lines are dropped and counted
//! ([`dropped_lines`], `switchyard_log_lines_dropped_total`) instead of
//! stalling the hub, a handler or the runtime. [`LogGuard::flush`] writes
//! out what is queued at exit, within a bounded time.
//!
//! Does not own: what is logged, or errors before logging starts (bad
//! configuration goes straight to stderr from `main`).

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines queued for stdout at most; past this, lines are dropped. Large
/// enough that a reader that keeps up never loses one (a burst of debug
/// lines included); its memory is this many lines of their length (a few
/// hundred bytes each, a forwarded dashboard line at most 16 KiB).
pub const BUFFERED_LINES: usize = 128 * 1024;

/// The counter of the installed writer.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because stdout did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Keeps the writer thread; [`LogGuard::flush`] (or dropping it) writes out
/// the queued lines. Keep it alive until the process exits.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(Option<WorkerGuard>);

impl LogGuard {
    /// Writes out the queued lines, waiting at most `limit`: a stdout that
    /// does not drain never holds up the exit.
    pub fn flush(mut self, limit: Duration) {
        let Some(guard) = self.0.take() else {
            return;
        };
        let (done, flushed) = std::sync::mpsc::sync_channel(1);
        let flusher = std::thread::Builder::new()
            .name("log-flush".to_owned())
            .spawn(move || {
                drop(guard);
                let _ = done.send(());
            });
        if flusher.is_ok() {
            let _ = flushed.recv_timeout(limit);
        }
    }
}

/// Installs the subscriber (the first call wins: tests calling `run` twice
/// keep the first one).
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("switchyard-log")
        .finish(std::io::stdout());
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    if installed.is_ok() {
        let _ = DROPPED.set(counter);
        LogGuard(Some(guard))
    } else {
        LogGuard(None)
    }
}
