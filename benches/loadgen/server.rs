//! One server under test, switchyard or a peer (`--server node:SCRIPT`):
//! started on a free port, stopped at the end. A peer is started, watched and
//! measured exactly like switchyard (same PORT/HOST environment, same
//! readiness probe, its one process's /proc figures); only the command differs.

use super::*;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    /// What runs, for the table: the binary, or `node` and the script.
    pub(crate) bin: PathBuf,
    pub(crate) log: PathBuf,
}

/// The program and its arguments for `--server`.
fn command_for(kind: &ServerKind) -> Result<(PathBuf, Vec<PathBuf>), String> {
    match kind {
        ServerKind::Switchyard => {
            let bin = std::env::var_os("SWITCHYARD_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/switchyard")
                });
            if !bin.is_file() {
                return Err(format!(
                    "{} not found: run `cargo build --release` first, or set SWITCHYARD_BIN",
                    bin.display()
                ));
            }
            Ok((bin, Vec::new()))
        }
        ServerKind::Node(script) => {
            let script = script
                .canonicalize()
                .map_err(|e| format!("--server node:{}: {e}", script.display()))?;
            let node =
                std::env::var_os("NODE_BIN").map_or_else(|| PathBuf::from("node"), PathBuf::from);
            Ok((node, vec![script]))
        }
    }
}

impl Server {
    /// Starts replica number `replica` and waits until it listens (and,
    /// with Redis, until its `/health` says `"redis":"up"`: its listener has
    /// the epoch, so a hello cannot race the first catch-up).
    pub(crate) fn start(args: &Args, replica: usize) -> Result<Server, String> {
        let (bin, bin_args) = command_for(&args.server)?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            probe.local_addr().map_err(|e| e.to_string())?.port()
        };
        let log = std::env::temp_dir().join(format!(
            "switchyard-loadgen-{}-r{replica}.log",
            std::process::id()
        ));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.args(&bin_args)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env(
                "MAX_CONNECTIONS",
                (args.clients * 2).max(1_000_000).to_string(),
            )
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "pretty")
            // only --redis-url makes a Redis run, never this shell's environment
            .env_remove("REDIS_URL")
            .env_remove("REDIS_PREFIX");
        for (k, v) in &args.server_env {
            cmd.env(k, v);
        }
        if let (Some(url), Some(prefix)) = (&args.redis_url, &args.redis_prefix) {
            cmd.env("REDIS_URL", url).env("REDIS_PREFIX", prefix);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure runs between fork and exec, where only
        // async-signal-safe work is allowed: one raw prctl syscall through
        // rustix, no allocation. The server must not outlive us (Ctrl-C,
        // panic, kill -9).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
        let pid = child.id();
        let mut shown = bin.into_os_string();
        for a in &bin_args {
            shown.push(" ");
            shown.push(a);
        }
        let mut server = Server {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            bin: PathBuf::from(shown),
            log,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "server exited at start ({status}):\n{}",
                    server.log_tail()
                ));
            }
            if std::net::TcpStream::connect(server.addr).is_ok() {
                if args.redis_url.is_none() {
                    return Ok(server);
                }
                if let Some((_, body)) = http_get(server.addr, "/health") {
                    if body.contains(r#""redis":"up""#) {
                        return Ok(server);
                    }
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "replica {replica} not listening{} after 20 s:\n{}",
                    if args.redis_url.is_some() {
                        " with redis up"
                    } else {
                        ""
                    },
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, up to 15 s to drain, then SIGKILL. Says how it ended.
    pub(crate) fn stop(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited ({status})");
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!(
                    "SIGTERM: exited in {:.1} s ({status})",
                    start.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "SIGTERM ignored for 15 s: killed".into()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- clients
