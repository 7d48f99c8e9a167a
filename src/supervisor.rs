//! The supervised child processes: the dashboard (`DASHBOARD_COMMAND`) and
//! the worker (`WORKER_COMMAND`, the user's trading engine). One piece of
//! code serves both; [`ChildKind`] names which one a [`Supervisor`] runs.
//!
//! Owns: spawning the command through `sh` in its own process group with
//! the switchyard variables in its environment; forwarding its stdout and
//! stderr line by line into the log (target `dashboard` or `worker`);
//! restarting it with exponential backoff (1 s doubling to 30 s, reset after
//! 60 s of running); stopping the whole group (SIGTERM, then SIGKILL at the
//! deadline); and the state `/health` reports ([`ChildStatus`]).
//!
//! No orphan survives the gateway: at shutdown the group is signalled; and
//! if the gateway itself is SIGKILLed, the kernel sends the child shell
//! SIGTERM (PR_SET_PDEATHSIG), whose trap passes it to the whole group,
//! waits up to the grace (`SHUTDOWN_GRACE_SECS`) for the group to be gone,
//! and SIGKILLs whatever is left of it: a child that ignores SIGTERM
//! does not outlive the gateway by more than the grace.
//!
//! Does not own: whether the dashboard answers (see `upstream`), or which
//! environment each child gets (the caller builds it; see `lib.rs`).

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::upstream::UpstreamHealth;

/// First wait before a restart.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: the next backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Longest line forwarded to the log; longer ones are cut in pieces.
const MAX_LINE: usize = 16 * 1024;

/// Variables of the gateway that no child inherits: with them a child that
/// is itself a switchyard would proxy to itself or supervise more copies.
const NOT_INHERITED: &[&str] = &["DASHBOARD_URL", "DASHBOARD_COMMAND", "WORKER_COMMAND"];

/// Which child a supervisor runs: it names the log target, the messages
/// and what the child inherits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// `DASHBOARD_COMMAND`, the upstream of the proxy.
    Dashboard,
    /// `WORKER_COMMAND`, a background process (the trading engine).
    Worker,
}

impl ChildKind {
    /// The log target and the word in log messages.
    pub fn name(self) -> &'static str {
        match self {
            ChildKind::Dashboard => "dashboard",
            ChildKind::Worker => "worker",
        }
    }

    /// Whether the child inherits the gateway's `PORT`. The worker does
    /// not: the public port is the gateway's, and a worker that listened on
    /// it would fail or steal it. (The dashboard's `PORT` is set to its own
    /// port by the caller.)
    fn inherits_port(self) -> bool {
        self == ChildKind::Dashboard
    }
}

/// Logs under the child's own target: tracing wants the target as a
/// constant, so each kind gets its own call site.
macro_rules! child_log {
    ($level:ident, $kind:expr, $($rest:tt)+) => {
        match $kind {
            ChildKind::Dashboard => tracing::$level!(target: "dashboard", $($rest)+),
            ChildKind::Worker => tracing::$level!(target: "worker", $($rest)+),
        }
    };
}

/// What a supervised child is doing, as `/health` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildState {
    /// Started and not (yet) exited.
    Running,
    /// Exited; waiting out the backoff before the next start.
    Restarting,
    /// Not allowed to run here: another replica holds the worker's lease
    /// (see `lease`), or this one has not got it yet.
    Standby,
}

impl ChildState {
    fn from_u8(value: u8) -> ChildState {
        match value {
            1 => ChildState::Restarting,
            2 => ChildState::Standby,
            _ => ChildState::Running,
        }
    }
}

/// Shared with `/health` and the metrics; lock-free.
#[derive(Debug, Default)]
pub struct ChildStatus {
    state: AtomicU8,
    restarts: AtomicU64,
}

impl ChildStatus {
    pub fn state(&self) -> ChildState {
        ChildState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Restarts since the gateway started.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn set(&self, state: ChildState) {
        self.state.store(state as u8, Ordering::Release);
    }
}

/// Whether a child may run now. Without a gate a child always may; the
/// worker's lease (see `lease`) gates the worker when REDIS_URL is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Run it (start it if it is not running).
    Run,
    /// Do not run it: SIGTERM now, SIGKILL at `kill_at` at the latest.
    Hold { kill_at: Instant },
}

/// One child to supervise.
pub struct ChildSpec {
    pub kind: ChildKind,
    /// The shell command, run as `sh -c`.
    pub command: String,
    /// Variables set on top of the gateway's own environment.
    pub env: Vec<(String, String)>,
    /// How long the child's shell lets the group handle a SIGTERM it did
    /// not get from us (the gateway died) before SIGKILL.
    pub grace: Duration,
    /// The dashboard's health, told when the process exits; `None` for the
    /// worker.
    pub upstream: Option<Arc<UpstreamHealth>>,
    /// When present, the child runs only while it reads [`Permit::Run`].
    /// The sender going away counts as `Hold` now: a child never runs
    /// unchecked.
    pub gate: Option<watch::Receiver<Permit>>,
}

/// What the gateway keeps of the supervisor.
pub struct Supervisor {
    /// State and restarts, for `/health` and the metrics.
    pub status: Arc<ChildStatus>,
    /// Cancelled to stop the child; carries the deadline for SIGKILL.
    stop: CancellationToken,
    stop_deadline: Arc<std::sync::Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts the child now (or when its gate opens) and keeps it running
    /// until [`Supervisor::stop`].
    pub fn start(spec: ChildSpec) -> Supervisor {
        let status = Arc::new(ChildStatus::default());
        if spec.gate.is_some() {
            status.set(ChildState::Standby);
        }
        let stop = CancellationToken::new();
        let stop_deadline = Arc::new(std::sync::Mutex::new(None));
        let task = tokio::spawn(supervise(
            spec,
            status.clone(),
            stop.clone(),
            stop_deadline.clone(),
        ));
        Supervisor {
            status,
            stop,
            stop_deadline,
            task,
        }
    }

    /// Sends SIGTERM to the child's group, SIGKILL at `deadline`, and waits
    /// for it to be gone.
    pub async fn stop(self, deadline: Instant) {
        if let Ok(mut slot) = self.stop_deadline.lock() {
            *slot = Some(deadline);
        }
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn supervise(
    spec: ChildSpec,
    status: Arc<ChildStatus>,
    stop: CancellationToken,
    stop_deadline: Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let ChildSpec {
        kind,
        command,
        env,
        grace,
        upstream,
        mut gate,
    } = spec;
    let name = kind.name();
    let script = script(&command, grace);
    let last = Arc::new(LastLines::default());
    let mut backoff = FIRST_BACKOFF;
    loop {
        if let Some(gate) = &mut gate {
            if !gate_open(gate) {
                status.set(ChildState::Standby);
                child_log!(info, kind, "{name} on standby");
                tokio::select! {
                    opened = async { gate.wait_for(|permit| *permit == Permit::Run).await.is_ok() } => {
                        if !opened {
                            // The lease is gone for good: nothing will
                            // open the gate again.
                            stop.cancelled().await;
                            return;
                        }
                    }
                    _ = stop.cancelled() => return,
                }
                backoff = FIRST_BACKOFF;
            }
        }
        let started = Instant::now();
        status.set(ChildState::Running);
        last.take();
        match spawn(kind, &script, &env, &last) {
            Ok((mut child, stderr)) => {
                let pid = child.id();
                child_log!(info, kind, pid, command, "{name} started");
                tokio::select! {
                    status = child.wait() => {
                        // The shell is gone; whatever it left in its group
                        // (a child whose shell was killed) goes too, or
                        // it would keep the port from the next start.
                        if let Some(group) = pid.and_then(|id| Pid::from_raw(id as i32)) {
                            let _ = rustix::process::kill_process_group(group, Signal::KILL);
                            group_gone(group).await;
                        }
                        let code = status.as_ref().ok().and_then(ExitStatus::code);
                        if let Some(upstream) = &upstream {
                            upstream.mark_exited(code);
                        }
                        // Its last stderr lines, once the pipe is drained
                        // (a grandchild may hold it open: not for long).
                        if let Some(stderr) = stderr {
                            let _ = tokio::time::timeout(STDERR_DRAIN, stderr).await;
                        }
                        log_exit(kind, status, started.elapsed(), &last.take());
                    }
                    _ = stop.cancelled() => {
                        let deadline = stop_deadline.lock().ok().and_then(|d| *d).unwrap_or_else(Instant::now);
                        terminate(kind, &mut child, deadline, started).await;
                        return;
                    }
                    kill_at = closed(&mut gate) => {
                        status.set(ChildState::Standby);
                        terminate(kind, &mut child, kill_at, started).await;
                        continue;
                    }
                }
            }
            Err(spawn_error) => {
                child_log!(error, kind, %spawn_error, command, "cannot start the {name}");
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        status.set(ChildState::Restarting);
        let count = status.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        child_log!(
            warn,
            kind,
            restart = count,
            backoff_secs = backoff.as_secs(),
            "restarting the {name}"
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
            _ = closed(&mut gate) => continue,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether the gate reads `Run` (a gate whose sender is gone is closed).
fn gate_open(gate: &mut watch::Receiver<Permit>) -> bool {
    gate.has_changed().is_ok() && *gate.borrow_and_update() == Permit::Run
}

/// Resolves when the gate closes, with the SIGKILL deadline; never without
/// a gate.
async fn closed(gate: &mut Option<watch::Receiver<Permit>>) -> Instant {
    let Some(gate) = gate else {
        return std::future::pending().await;
    };
    match gate
        .wait_for(|permit| matches!(permit, Permit::Hold { .. }))
        .await
    {
        Ok(permit) => match *permit {
            Permit::Hold { kill_at } => kill_at,
            Permit::Run => Instant::now(),
        },
        Err(_) => Instant::now(),
    }
}

/// Longest wait for a killed group to be gone before the next start.
const GROUP_EXIT_LIMIT: Duration = Duration::from_secs(2);

/// Waits (at most GROUP_EXIT_LIMIT) until no process of `group` is left:
/// SIGKILL is delivered at once but a process needs CPU time to exit, and
/// on a busy machine the next start would otherwise find the old one still
/// holding the port. A zombie does not count (it holds no port; whoever
/// reaps it may take its time), as in the shell script's own check.
async fn group_gone(group: Pid) {
    let deadline = Instant::now() + GROUP_EXIT_LIMIT;
    while group_has_live_member(group) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process other than a zombie is in `group` (read from `/proc`;
/// without it, the group counts as gone).
fn group_has_live_member(group: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let group = group.as_raw_nonzero().get().to_string();
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...: the fields after the command.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1);
        pgrp == Some(group.as_str()) && state != Some("Z")
    })
}

/// How long an exit's log line waits for the rest of the child's stderr.
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// A child that exited by itself: WARN, with its last stderr lines.
fn log_exit(kind: ChildKind, status: std::io::Result<ExitStatus>, ran: Duration, last: &str) {
    let name = kind.name();
    let ran_secs = ran.as_secs_f64();
    match status {
        Ok(status) => child_log!(
            warn,
            kind,
            %status,
            code = status.code(),
            ran_secs,
            last_stderr = last,
            "{name} exited"
        ),
        Err(wait_error) => {
            child_log!(error, kind, %wait_error, ran_secs, "cannot wait for the {name}")
        }
    }
}

/// The shell script the child runs. The command runs as a background job
/// of a shell that waits for it, so the shell can pass a SIGTERM (ours, or
/// the kernel's when the gateway dies) to the whole process group.
///
/// After passing it on, the shell stays until nothing but itself is left in
/// the group (read from `/proc`; a zombie does not count), at most `grace`
/// (whole seconds, rounded up; `date +%s` counts whole seconds, so at least
/// one second less); then it SIGKILLs the group. When the gateway
/// is alive it kills the group at its own deadline anyway; when the gateway
/// was SIGKILLed, this is the only thing that stops a child that ignores
/// SIGTERM. Without `/proc` the group counts as alive: the shell waits out
/// the grace.
fn script(command: &str, grace: Duration) -> String {
    let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    format!(
        "_switchyard_group_left() {{\n\
         \x20 [ -d /proc/$$ ] || return 0\n\
         \x20 for _sy_stat in /proc/[0-9]*/stat; do\n\
         \x20   read -r _sy_line 2>/dev/null <\"$_sy_stat\" || continue\n\
         \x20   set -- ${{_sy_line##*) }}\n\
         \x20   [ \"$3\" = \"$$\" ] && [ \"$1\" != Z ] && [ \"${{_sy_line%% *}}\" != \"$$\" ] && return 0\n\
         \x20 done\n\
         \x20 return 1\n\
         }}\n\
         trap 'trap \"\" TERM; kill -TERM 0 2>/dev/null\n\
         \x20 _sy_end=$(( $(date +%s) + {grace_secs} ))\n\
         \x20 while _switchyard_group_left && [ \"$(date +%s)\" -lt \"$_sy_end\" ]; do sleep 0.1; done\n\
         \x20 _switchyard_group_left && kill -KILL 0 2>/dev/null\n\
         \x20 exit 143' TERM\n\
         {{ {command}\n}} &\n\
         wait $!\n"
    )
}

/// Starts `sh -c script` in a group of its own.
fn spawn(
    kind: ChildKind,
    script: &str,
    env: &[(String, String)],
    last: &Arc<LastLines>,
) -> std::io::Result<(Child, Option<tokio::task::JoinHandle<()>>)> {
    let gateway_pid = std::process::id();
    let mut child = Command::new("sh");
    for variable in NOT_INHERITED {
        child.env_remove(variable);
    }
    if !kind.inherits_port() {
        child.env_remove("PORT");
    }
    child
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: it makes two raw syscalls through
    // rustix (prctl and getppid) and allocates nothing.
    unsafe {
        child.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
            // The gateway may have died before the prctl took effect.
            if rustix::process::getppid()
                .map(Pid::as_raw_nonzero)
                .map(|p| p.get() as u32)
                != Some(gateway_pid)
            {
                return Err(std::io::Error::other("gateway exited during spawn"));
            }
            Ok(())
        });
    }
    let mut child = child.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(kind, stdout, "stdout", None));
    }
    let stderr = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(forward_lines(kind, stderr, "stderr", Some(last.clone()))));
    Ok((child, stderr))
}

/// The last lines a child wrote to stderr, for the log line of its exit:
/// a dashboard that dies at start says why there (a typo in the script's
/// name), not only in lines scrolled away.
#[derive(Default)]
struct LastLines(std::sync::Mutex<std::collections::VecDeque<String>>);

/// How many stderr lines an exit's log line carries, at most.
const LAST_LINES: usize = 10;
/// How long one of those lines may be.
const LAST_LINE_CHARS: usize = 300;

impl LastLines {
    fn push(&self, line: &str) {
        let line: String = line.chars().take(LAST_LINE_CHARS).collect();
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() == LAST_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The lines so far, joined, and forgotten (the next run starts empty).
    fn take(&self) -> String {
        self.0
            .lock()
            .map(|mut lines| lines.drain(..).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// Copies a pipe into the log, one event per line, never mid-line; blank
/// lines are left out.
async fn forward_lines(
    kind: ChildKind,
    pipe: impl AsyncRead + Unpin,
    stream: &'static str,
    last: Option<Arc<LastLines>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if text.trim().is_empty() {
                    continue;
                }
                if let Some(last) = &last {
                    last.push(text);
                }
                child_log!(info, kind, stream, "{text}");
            }
        }
    }
}

/// SIGTERM to the group, then SIGKILL at `deadline`; reaps the child.
async fn terminate(kind: ChildKind, child: &mut Child, deadline: Instant, started: Instant) {
    let name = kind.name();
    let Some(group) = child.id().and_then(|id| Pid::from_raw(id as i32)) else {
        return;
    };
    child_log!(
        info,
        kind,
        pid = group.as_raw_nonzero().get(),
        "stopping the {name} (SIGTERM)"
    );
    let _ = rustix::process::kill_process_group(group, Signal::TERM);
    match tokio::time::timeout_at(deadline, child.wait()).await {
        // We stopped it: not a warning, whatever its exit status (143 for
        // SIGTERM).
        Ok(status) => {
            let code = status.as_ref().ok().and_then(ExitStatus::code);
            let ran_secs = started.elapsed().as_secs_f64();
            child_log!(info, kind, code, ran_secs, "{name} stopped");
        }
        Err(_) => {
            child_log!(warn, kind, "{name} still running at the deadline; SIGKILL");
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
            let _ = child.wait().await;
        }
    }
    // Whatever else is left in the group (the shell is gone, a grandchild
    // may not be) goes too.
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::script;

    #[test]
    fn the_command_is_one_background_group() {
        let text = script(
            "cd /app && streamlit run app.py; echo done",
            Duration::from_millis(2500),
        );
        assert!(text.contains("{ cd /app && streamlit run app.py; echo done\n} &"));
        assert!(text.contains("\ntrap '"));
        assert!(text.contains("$(date +%s) + 3 ))"), "{text}");
        assert!(text.contains("kill -KILL 0"));
    }
}
