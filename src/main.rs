//! The `switchyard` binary: config, logs, signals, exit codes; the
//! `token` and `hash-password` subcommands live in `cli`.
//!
//! Exit codes: 0 after a clean drain, 1 when the gateway cannot start (port
//! taken, no signal handlers), 2 for a bad configuration (or bad usage of a
//! subcommand).
//!
//! Logs are written by a thread of their own (see `logging`); every exit
//! after logging starts returns through `main`, which flushes them (bounded:
//! a stdout that does not drain never holds up the exit).

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use switchyard::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

fn main() -> ExitCode {
    if let cli::Command::Ran(code) = cli::run(std::env::args_os().skip(1)) {
        return code;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("switchyard: {error}");
            return ExitCode::from(2);
        }
    };
    let log = switchyard::logging::init(config.log_format);
    let code = serve(config);
    log.flush(LOG_FLUSH_LIMIT);
    code
}

/// Longest wait at exit for queued log lines to reach stdout.
const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Runs the gateway until it has drained; the process's exit code.
fn serve(config: Config) -> ExitCode {
    // What runs on which thread and runtime: see `event_loops`.
    let chores = switchyard::event_loops::chores_runtime();
    let hub = switchyard::event_loops::hub_runtime();
    let (runtime, hub) = match (chores, hub) {
        (Ok(runtime), Ok(hub)) => (runtime, hub),
        (Err(error), _) | (_, Err(error)) => {
            error!(%error, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    let hub_runtime = hub.handle().clone();
    let outcome = runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let signalled = async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            info!(signal = name, "shutdown requested");
        };
        switchyard::run(config, signalled, hub_runtime).await
    });
    // Connections still open after the grace period are cut here.
    runtime.shutdown_timeout(Duration::from_millis(100));
    hub.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(%error, "cannot serve");
            ExitCode::from(1)
        }
    }
}
