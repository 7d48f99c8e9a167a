//! Load generator for switchyard's WebSocket broadcaster.
//!
//! Run as `cargo bench --bench loadgen -- <args>` (release build; `--help`
//! lists the arguments). Needs the server binary: `cargo build --release`,
//! or point `SWITCHYARD_BIN` at one. `benches/broadcast.sh` runs the issue's
//! scenarios with it.
//!
//! One run:
//!   1. starts `switchyard` itself on a free port of 127.0.0.1 (RUST_LOG=warn,
//!      MAX_CONNECTIONS large, plus every `--server-env K=V`); the server gets
//!      SIGKILL if this process dies (PR_SET_PDEATHSIG) and SIGTERM at the end;
//!   2. opens `--clients` WebSockets to it, each from its own socket bound to
//!      one of a few source addresses 127.A.B.x (a fresh A.B per run, so
//!      ephemeral ports never run out and no TIME_WAIT of a previous run is in
//!      the way), and waits for every `hello`;
//!   3. publishes on a fixed, open-loop schedule over a small pool of
//!      keep-alive HTTP/1.1 connections (`POST /_switchyard/publish`) from a
//!      thread of its own, so a busy client side cannot delay the schedule;
//!      each event's data is `{"t":<wall-clock ns at send>,"p":"xxx..."}`;
//!   4. counts, per client, events, seq gaps, duplicates and publish->receive
//!      latency (a hand scan of `seq` and `t`; latencies go into a fixed-size
//!      log-linear histogram per worker thread, never a list of samples);
//!   5. after the schedule ends, waits until every live client has the last
//!      seq (or `--drain` seconds), then reads the server's CPU time
//!      (/proc/PID/stat utime+stime) and RSS (/proc/PID/status VmRSS) and
//!      prints one table.
//!
//! `--stall K`: the first K clients read normally until `--stall-at` (a
//! fraction of the run), then stop reading until publishing ends, then read
//! again to see how the server closed them. Their sockets get a small
//! SO_RCVBUF (`--stall-rcvbuf`), otherwise loopback autotuning (tcp_rmem up
//! to 32 MiB here) hides the stall from the server for most of a run. The
//! other clients' latency is split by publish time into "before the stall"
//! and "during the stall".
//!
//! `--idle`: only connects, holds the connections for `--duration` seconds
//! and reports the server's RSS per connection.
//!
//! Reading the CPU figures: on loopback the kernel's receive path of a
//! segment (the clients' sockets, softirq) mostly runs in the sending
//! process's syscall, so the server's sys time includes work that remote
//! clients' machines would do, and the load generator's includes the
//! server's ACK processing; the table splits user and sys for that reason.
//! Cost per message also falls as load rises, because a client that is
//! behind gets several events per write and per read.
//!
//! Without `--bench` (that is, under `cargo test --all-targets`) it only
//! runs a quick self-check of its parsing and histogram code and exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

const USAGE: &str = "\
usage: cargo bench --bench loadgen -- [options]

load:
  --clients N            WebSocket clients (default 1000)
  --rate R               events/s published, open loop (default 100)
  --duration S           seconds of publishing; with --idle, seconds to hold (default 20)
  --size B               bytes of each event's data (default 256)
  --topics T             publish round-robin on bench/0..T-1, client i subscribes to
                         bench/(i mod T) (default: one topic, every client gets everything)
  --stall K              K clients stop reading at --stall-at (default 0)
  --stall-at F           when the stall starts, as a fraction of --duration (default 0.5)
  --stall-rcvbuf B       SO_RCVBUF of stalled clients' sockets (default 65536)
  --idle                 only connect, hold, report RSS per connection
  --server-env K=V       extra environment for the server (repeatable)
publisher:
  --pool P               keep-alive HTTP/1.1 connections (default 4)
  --tick-ms M            publish tick when rate > 1000/M (default 10)
  --max-body B           largest publish body; bigger ticks are split (default 60000)
client side:
  --connect-concurrency C  handshakes in flight (default 256)
  --read-buffer B        tungstenite read buffer per client; tungstenite zero-fills it
                         before every read, so keep it small (default: 2 frames, 4-64 KiB)
  --drain S              seconds to wait for stragglers after publishing (default 10)
report:
  --label TEXT           title of the table
  --target-zero-loss     PASS/MISS: no event missing for any client
  --target-no-waits      PASS/MISS: no publish had to wait
  --target-cpu-us X      PASS/MISS: server CPU per delivered message <= X us
  --target-p99-ms X      PASS/MISS: publish->receive p99 <= X ms
  --target-rss-kib X     PASS/MISS: server RSS per connection <= X KiB
  --target-stall         PASS/MISS: others' p99 during stall <= 1.5x before, stalled clients
                         closed with 1008, RSS growth during the stall < CLIENT_QUEUE x frame size

env: SWITCHYARD_BIN (default <crate>/target/release/switchyard)
";

// ---------------------------------------------------------------- arguments

#[derive(Clone, Debug)]
struct Args {
    clients: usize,
    rate: f64,
    duration: f64,
    size: usize,
    topics: Option<usize>,
    stall: usize,
    stall_at: f64,
    stall_rcvbuf: usize,
    idle: bool,
    server_env: Vec<(String, String)>,
    pool: usize,
    tick_ms: f64,
    max_body: usize,
    connect_concurrency: usize,
    /// 0 until parsed: then sized from --size.
    read_buffer: usize,
    drain: f64,
    label: Option<String>,
    target_zero_loss: bool,
    target_no_waits: bool,
    target_cpu_us: Option<f64>,
    target_p99_ms: Option<f64>,
    target_rss_kib: Option<f64>,
    target_stall: bool,
    /// The arguments as given, for the table's command line.
    raw: Vec<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        // `cargo bench` appends `--bench` for harness = false targets.
        let raw: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        let mut args = Args {
            clients: 1000,
            rate: 100.0,
            duration: 20.0,
            size: 256,
            topics: None,
            stall: 0,
            stall_at: 0.5,
            stall_rcvbuf: 65536,
            idle: false,
            server_env: Vec::new(),
            pool: 4,
            tick_ms: 10.0,
            max_body: 60_000,
            connect_concurrency: 256,
            read_buffer: 0,
            drain: 10.0,
            label: None,
            target_zero_loss: false,
            target_no_waits: false,
            target_cpu_us: None,
            target_p99_ms: None,
            target_rss_kib: None,
            target_stall: false,
            raw: raw.clone(),
        };
        let mut it = raw.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
                v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
            }
            match flag.as_str() {
                "--clients" => args.clients = num(&flag, value()?)?,
                "--rate" => args.rate = num(&flag, value()?)?,
                "--duration" => args.duration = num(&flag, value()?)?,
                "--size" => args.size = num(&flag, value()?)?,
                "--topics" => args.topics = Some(num(&flag, value()?)?),
                "--stall" => args.stall = num(&flag, value()?)?,
                "--stall-at" => args.stall_at = num(&flag, value()?)?,
                "--stall-rcvbuf" => args.stall_rcvbuf = num(&flag, value()?)?,
                "--idle" => args.idle = true,
                "--server-env" => {
                    let kv = value()?;
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--server-env wants K=V, got {kv}"))?;
                    args.server_env.push((k.to_owned(), v.to_owned()));
                }
                "--pool" => args.pool = num(&flag, value()?)?,
                "--tick-ms" => args.tick_ms = num(&flag, value()?)?,
                "--max-body" => args.max_body = num(&flag, value()?)?,
                "--connect-concurrency" => args.connect_concurrency = num(&flag, value()?)?,
                "--read-buffer" => args.read_buffer = num(&flag, value()?)?,
                "--drain" => args.drain = num(&flag, value()?)?,
                "--label" => args.label = Some(value()?),
                "--target-zero-loss" => args.target_zero_loss = true,
                "--target-no-waits" => args.target_no_waits = true,
                "--target-cpu-us" => args.target_cpu_us = Some(num(&flag, value()?)?),
                "--target-p99-ms" => args.target_p99_ms = Some(num(&flag, value()?)?),
                "--target-rss-kib" => args.target_rss_kib = Some(num(&flag, value()?)?),
                "--target-stall" => args.target_stall = true,
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other} (see --help)")),
            }
        }
        if args.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        let not_positive = |x: f64| x.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater);
        if !args.idle && (not_positive(args.rate) || not_positive(args.duration)) {
            return Err("--rate and --duration must be positive".into());
        }
        if args.stall > args.clients {
            return Err("--stall cannot exceed --clients".into());
        }
        if args.topics == Some(0) || args.pool == 0 || args.connect_concurrency == 0 {
            return Err("--topics, --pool and --connect-concurrency must be at least 1".into());
        }
        if !(0.0..1.0).contains(&args.stall_at) {
            return Err("--stall-at is a fraction in [0, 1)".into());
        }
        if args.read_buffer == 0 {
            args.read_buffer = (2 * args.size + 512).next_power_of_two().clamp(4096, 65536);
        }
        Ok(args)
    }

    fn server_env(&self, name: &str) -> Option<&str> {
        self.server_env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn command_line(&self) -> String {
        let mut line = String::from("cargo bench --bench loadgen --");
        for a in &self.raw {
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$#&;|<>*?()".contains(c))
            {
                let _ = write!(line, " '{}'", a.replace('\'', r"'\''"));
            } else {
                let _ = write!(line, " {a}");
            }
        }
        line
    }

    fn topic(&self, event_index: u64) -> usize {
        self.topics.map_or(0, |t| (event_index % t as u64) as usize)
    }

    fn topic_name(&self, topic: usize) -> String {
        match self.topics {
            Some(_) => format!("bench/{topic}"),
            None => "bench/load".to_owned(),
        }
    }
}

// ---------------------------------------------------------------- latency histogram

/// Log-linear buckets over microseconds: exact below 128, then 64 buckets
/// per power of two (about 1.6 % wide) up to 2^40 us.
const BUCKETS: usize = 2304;
/// Latencies are split by publish time: 0 before the stall, 1 during it.
const PHASES: usize = 2;

fn bucket_of(us: u64) -> usize {
    let us = us.min((1 << 40) - 1);
    if us < 64 {
        us as usize
    } else {
        let e = 63 - us.leading_zeros() as u64;
        ((e - 6) * 64 + (us >> (e - 6))) as usize
    }
}

fn bucket_low(i: usize) -> u64 {
    if i < 128 {
        i as u64
    } else {
        let e = (i / 64 + 5) as u64;
        ((i % 64 + 64) as u64) << (e - 6)
    }
}

/// One worker thread's histograms: written by that thread only, read after
/// the run; atomics only so the reader may look without unsafe code.
struct ThreadHist {
    counts: Vec<AtomicU64>,
    max: [AtomicU64; PHASES],
}

static ALL_HISTS: Mutex<Vec<Arc<ThreadHist>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL_HIST: Arc<ThreadHist> = {
        let hist = Arc::new(ThreadHist {
            counts: (0..BUCKETS * PHASES).map(|_| AtomicU64::new(0)).collect(),
            max: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        ALL_HISTS.lock().unwrap().push(hist.clone());
        hist
    };
}

fn record_latency(phase: usize, us: u64) {
    LOCAL_HIST.with(|h| {
        bump(&h.counts[phase * BUCKETS + bucket_of(us)], 1);
        if us > h.max[phase].load(Relaxed) {
            h.max[phase].store(us, Relaxed);
        }
    });
}

/// A merged (or single-owner) histogram.
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    max: u64,
    total: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS],
            max: 0,
            total: 0,
        }
    }

    fn record(&mut self, us: u64) {
        self.counts[bucket_of(us)] += 1;
        self.max = self.max.max(us);
        self.total += 1;
    }

    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    /// The q-quantile in us: the upper edge of its bucket, never above max.
    fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = if i + 1 < BUCKETS {
                    bucket_low(i + 1) - 1
                } else {
                    u64::MAX
                };
                return Some(upper.min(self.max));
            }
        }
        Some(self.max)
    }

    /// The worker threads' histograms of one phase, merged.
    fn collect(phase: usize) -> Hist {
        let mut merged = Hist::new();
        for h in ALL_HISTS.lock().unwrap().iter() {
            for (i, c) in h.counts[phase * BUCKETS..(phase + 1) * BUCKETS]
                .iter()
                .enumerate()
            {
                let c = c.load(Relaxed);
                merged.counts[i] += c;
                merged.total += c;
            }
            merged.max = merged.max.max(h.max[phase].load(Relaxed));
        }
        merged
    }

    fn summary_ms(&self) -> String {
        match (
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
        ) {
            (Some(p50), Some(p99), Some(p999)) => format!(
                "p50 {} / p99 {} / p99.9 {} / max {} ms  ({} samples)",
                ms(p50),
                ms(p99),
                ms(p999),
                ms(self.max),
                self.total
            ),
            _ => "no samples".into(),
        }
    }
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `+= n` on a counter that only one task writes: a plain load and store,
/// no locked instruction.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------- /proc

/// (utime, stime) of a process ("self" or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after "pid (comm) " the fields start at 3; utime is 14, stime 15
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time of the server and of this process over a window.
struct CpuWindow {
    server: (u64, u64),
    me: (u64, u64),
    machine: (u64, u64),
    at: Instant,
}

impl CpuWindow {
    fn now(server_pid: u32) -> CpuWindow {
        CpuWindow {
            server: cpu_ticks(&server_pid.to_string()).unwrap_or_default(),
            me: cpu_ticks("self").unwrap_or_default(),
            machine: machine_jiffies().unwrap_or((0, 0)),
            at: Instant::now(),
        }
    }
}

// ---------------------------------------------------------------- the server

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    bin: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(args: &Args) -> Result<Server, String> {
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
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            probe.local_addr().map_err(|e| e.to_string())?.port()
        };
        let log =
            std::env::temp_dir().join(format!("switchyard-loadgen-{}.log", std::process::id()));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env(
                "MAX_CONNECTIONS",
                (args.clients * 2).max(1_000_000).to_string(),
            )
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "pretty");
        for (k, v) in &args.server_env {
            cmd.env(k, v);
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
        let mut server = Server {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            bin,
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
                return Ok(server);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "server not listening after 20 s:\n{}",
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, up to 15 s to drain, then SIGKILL. Says how it ended.
    fn stop(&mut self) -> String {
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

/// How a client's connection ended (`close`): 0 still open, 1..=4999 the
/// close code the server sent, or one of these.
const CLOSE_EOF: u32 = 10_000;
const CLOSE_ERROR: u32 = 10_001;
const CONNECT_FAILED: u32 = 10_002;
const NO_HELLO: u64 = u64::MAX;

fn close_name(code: u32) -> String {
    match code {
        0 => "open".into(),
        CLOSE_EOF => "EOF without close frame".into(),
        CLOSE_ERROR => "socket error".into(),
        CONNECT_FAILED => "connect failed".into(),
        c => format!("close {c}"),
    }
}

/// One client's counters; only its own task writes them. Aligned so two
/// clients on two workers never share a cache line.
#[repr(align(64))]
struct ClientStats {
    /// seq of its hello, NO_HELLO until then.
    hello_seq: AtomicU64,
    /// Highest seq received (hello's seq at first).
    last_seq: AtomicU64,
    /// Event frames received.
    received: AtomicU64,
    /// Bytes of event frames received.
    bytes: AtomicU64,
    /// Seqs skipped, counted when it subscribes to everything.
    gap_seqs: AtomicU64,
    /// Times the seq jumped.
    gaps: AtomicU64,
    /// Events whose seq was not above the last one.
    dups: AtomicU64,
    /// See CLOSE_*.
    close: AtomicU32,
    /// A stalled client's last seq before it stopped reading.
    seq_at_stall: AtomicU64,
    /// A stalled client's publish time (wall ns) of the last event it got.
    last_t: AtomicU64,
}

impl ClientStats {
    fn new() -> ClientStats {
        ClientStats {
            hello_seq: AtomicU64::new(NO_HELLO),
            last_seq: AtomicU64::new(0),
            received: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            gap_seqs: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            close: AtomicU32::new(0),
            seq_at_stall: AtomicU64::new(0),
            last_t: AtomicU64::new(0),
        }
    }

    fn set_close(&self, code: u32) {
        let _ = self.close.compare_exchange(0, code, Relaxed, Relaxed);
    }
}

#[derive(Clone, Copy, Debug)]
struct Schedule {
    stall_at: Instant,
    resume_at: Instant,
}

/// Everything the client tasks share.
struct Ctx {
    args: Args,
    server: SocketAddr,
    ws_path: String,
    sources: Vec<Ipv4Addr>,
    ws_config: WebSocketConfig,
    stats: Vec<ClientStats>,
    connect_gate: Semaphore,
    connected: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Events published at or after this wall-clock ns are "during the stall".
    stall_wall_ns: AtomicU64,
    schedule: watch::Receiver<Option<Schedule>>,
}

impl Ctx {
    fn url(&self, idx: usize) -> String {
        match self.args.topics {
            Some(t) => format!(
                "ws://{}{}?topics=bench/{}",
                self.server,
                self.ws_path,
                idx % t
            ),
            None => format!("ws://{}{}", self.server, self.ws_path),
        }
    }

    fn is_stalled(&self, idx: usize) -> bool {
        idx < self.args.stall
    }
}

/// A few source addresses 127.A.B.2.., fresh per run, each serving at most
/// 10,000 clients (the ephemeral range here is ~28,000 ports per address).
fn source_addresses(clients: usize) -> Vec<Ipv4Addr> {
    let count = clients.div_ceil(10_000).max(1);
    let seed = (wall_ns() / 1000) ^ (u64::from(std::process::id()) << 20);
    let a = 1 + (seed % 250) as u8;
    let b = ((seed / 250) % 256) as u8;
    (0..count)
        .map(|k| Ipv4Addr::new(127, a, b, 2 + k as u8))
        .collect()
}

async fn connect_ws(ctx: &Ctx, idx: usize) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if ctx.is_stalled(idx) {
        socket
            .set_recv_buffer_size(ctx.args.stall_rcvbuf as u32)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    let source = ctx.sources[idx % ctx.sources.len()];
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(ctx.server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(ctx.url(idx), stream, Some(ctx.ws_config))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

const EVENT_PREFIX: &[u8] = br#"{"type":"event","seq":"#;
const HELLO_PREFIX: &[u8] = br#"{"type":"hello","#;

/// Digits at `from`, and where they end.
#[inline]
fn digits(b: &[u8], mut i: usize) -> (u64, usize) {
    let mut v = 0u64;
    while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        v = v * 10 + u64::from(d - b'0');
        i += 1;
    }
    (v, i)
}

/// Where the first `pat` at or after `from` ends.
#[inline]
fn find_after(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| from + p + pat.len())
}

fn hello_seq(b: &[u8]) -> Option<u64> {
    if !b.starts_with(HELLO_PREFIX) {
        return None;
    }
    let at = find_after(b, HELLO_PREFIX.len(), br#","seq":"#)?;
    Some(digits(b, at).0)
}

/// Reads one client's frames and keeps its counters.
struct Reader<'a> {
    ctx: &'a Ctx,
    st: &'a ClientStats,
    next: u64,
    /// Subscribed to everything: every seq is ours, so a jump is a gap.
    gap_check: bool,
    /// Stalled clients' latency says nothing about the server.
    record: bool,
}

impl Reader<'_> {
    /// Handles one read; false when the connection is over.
    #[inline]
    fn on(&mut self, msg: Result<Message, tungstenite::Error>) -> bool {
        match msg {
            Ok(Message::Text(text)) => {
                self.frame(text.as_bytes());
                true
            }
            Ok(Message::Close(frame)) => {
                self.st
                    .set_close(frame.map_or(1005, |f| u32::from(u16::from(f.code))));
                false
            }
            Ok(_) => true,
            Err(_) => {
                self.st.set_close(CLOSE_ERROR);
                false
            }
        }
    }

    #[inline]
    fn frame(&mut self, b: &[u8]) {
        if !b.starts_with(EVENT_PREFIX) {
            return; // hello, subscribed, reset, error: not counted
        }
        let (seq, end) = digits(b, EVENT_PREFIX.len());
        let st = self.st;
        bump(&st.received, 1);
        bump(&st.bytes, b.len() as u64);
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            if self.gap_check {
                bump(&st.gaps, 1);
                bump(&st.gap_seqs, seq - self.next);
            }
            self.next = seq + 1;
        } else {
            bump(&st.dups, 1);
        }
        st.last_seq.store(self.next - 1, Relaxed);
        if let Some(at) = find_after(b, end, br#"{"t":"#) {
            let t = digits(b, at).0;
            if self.record {
                let us = wall_ns().saturating_sub(t) / 1000;
                let phase = usize::from(t >= self.ctx.stall_wall_ns.load(Relaxed));
                record_latency(phase, us);
            } else {
                st.last_t.store(t, Relaxed);
            }
        }
    }
}

async fn client_task(idx: usize, ctx: Arc<Ctx>) {
    let st = &ctx.stats[idx];
    let fail = |why: String| {
        st.set_close(CONNECT_FAILED);
        ctx.first_error.lock().unwrap().get_or_insert(why);
        ctx.failed.fetch_add(1, Relaxed);
    };
    let Ok(permit) = ctx.connect_gate.acquire().await else {
        return;
    };
    let mut ws = None;
    let mut why = String::new();
    for attempt in 0..4u32 {
        match connect_ws(&ctx, idx).await {
            Ok(w) => {
                ws = Some(w);
                break;
            }
            Err(e) => {
                why = e;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
            }
        }
    }
    let Some(mut ws) = ws else { return fail(why) };
    let hello = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => hello_seq(text.as_bytes()),
        _ => None,
    };
    drop(permit);
    let Some(hello) = hello else {
        return fail("no hello frame within 30 s".into());
    };
    st.hello_seq.store(hello, Relaxed);
    st.last_seq.store(hello, Relaxed);
    ctx.connected.fetch_add(1, Relaxed);

    let stalled = ctx.is_stalled(idx);
    let mut reader = Reader {
        ctx: &ctx,
        st,
        next: hello + 1,
        gap_check: ctx.args.topics.is_none(),
        record: !stalled,
    };
    if !stalled {
        while let Some(msg) = ws.next().await {
            if !reader.on(msg) {
                return;
            }
        }
        return st.set_close(CLOSE_EOF);
    }

    // A stalled client: reads until stall_at, then nothing until resume_at,
    // then reads again to see how the server ended it.
    let mut schedule = ctx.schedule.clone();
    let plan = loop {
        if let Some(plan) = *schedule.borrow_and_update() {
            break plan;
        }
        if schedule.changed().await.is_err() {
            return;
        }
    };
    loop {
        match tokio::time::timeout_at(plan.stall_at, ws.next()).await {
            Err(_) => break,
            Ok(Some(msg)) => {
                if !reader.on(msg) {
                    return;
                }
            }
            Ok(None) => return st.set_close(CLOSE_EOF),
        }
    }
    st.seq_at_stall.store(reader.next - 1, Relaxed);
    tokio::time::sleep_until(plan.resume_at).await;
    let give_up = plan.resume_at + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(give_up, ws.next()).await {
            Err(_) => return, // still open: close stays 0
            Ok(Some(msg)) => {
                if !reader.on(msg) {
                    return;
                }
            }
            Ok(None) => return st.set_close(CLOSE_EOF),
        }
    }
}

// ---------------------------------------------------------------- publisher

struct PubConfig {
    args: Args,
    server: SocketAddr,
    start: Instant,
}

#[derive(Default)]
struct PubReport {
    ticks: u64,
    requests: u64,
    events_sent: u64,
    /// (seq, topic) of every accepted event.
    accepted: Vec<(u64, usize)>,
    epochs: Vec<String>,
    failed_events: u64,
    first_error: Option<String>,
    /// No keep-alive connection was free at the scheduled time.
    waited_for_conn: u64,
    /// The request took longer than a tick.
    slow: u64,
    /// Publishes with either of the above.
    had_to_wait: u64,
    /// Ticks started more than a tick late (after waiting for a connection,
    /// or because this thread did not get a core in time).
    late_ticks: u64,
    max_late: Duration,
    /// How late the publisher thread woke up from its timer when it had to
    /// sleep: the load generator's own lag (CPU starvation), not the server's.
    wake_late: u64,
    max_wake_delay: Duration,
    rtt: Option<Hist>,
    tick: Duration,
    elapsed: Duration,
}

#[derive(Deserialize)]
struct Receipt {
    epoch: Option<String>,
    seq: Option<u64>,
    seqs: Option<Vec<u64>>,
}

type Sender = SendRequest<Full<Bytes>>;

async fn open_publish_conn(server: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("publish connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("publish handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The body of `n` events starting at event index `first`, stamped now.
fn publish_body(args: &Args, first: u64, n: u64, pad: &str) -> (Bytes, Vec<usize>) {
    let t = wall_ns();
    let mut s = String::with_capacity(n as usize * (args.size + 64) + 2);
    let mut topics = Vec::with_capacity(n as usize);
    if n > 1 {
        s.push('[');
    }
    for k in first..first + n {
        if k > first {
            s.push(',');
        }
        let topic = args.topic(k);
        topics.push(topic);
        let _ = write!(
            s,
            r#"{{"topic":"{}","data":{{"t":{t},"p":"{pad}"}}}}"#,
            args.topic_name(topic)
        );
    }
    if n > 1 {
        s.push(']');
    }
    (Bytes::from(s), topics)
}

fn run_publisher(config: PubConfig) -> PubReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("publisher runtime");
    runtime.block_on(publish_loop(config))
}

async fn publish_loop(config: PubConfig) -> PubReport {
    let args = &config.args;
    let tick = Duration::from_secs_f64((1.0 / args.rate).max(args.tick_ms / 1000.0));
    let report = Arc::new(Mutex::new(PubReport {
        tick,
        rtt: Some(Hist::new()),
        ..PubReport::default()
    }));
    let (free_tx, mut free_rx) = mpsc::unbounded_channel::<Sender>();
    for _ in 0..args.pool {
        match open_publish_conn(config.server).await {
            Ok(sender) => {
                let _ = free_tx.send(sender);
            }
            Err(e) => {
                let mut r = report.lock().unwrap();
                r.first_error = Some(e);
                return std::mem::take(&mut *r);
            }
        }
    }
    let total = (args.rate * args.duration).round() as u64;
    let n_ticks = (args.duration / tick.as_secs_f64()).round().max(1.0) as u64;
    let due_by = |i: u64| ((args.rate * tick.as_secs_f64() * i as f64).round() as u64).min(total);
    // data is {"t":<19 digits>,"p":"<pad>"}: 32 bytes around the pad
    let pad = "x".repeat(args.size.saturating_sub(32));
    let per_body = (args.max_body / (args.size + 80)).max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = 0u64;
    for i in 0..n_ticks {
        let due = config.start + tick * i as u32;
        let slept = Instant::now() < due;
        tokio::time::sleep_until(due).await;
        let late = Instant::now().saturating_duration_since(due);
        let mut remaining = due_by(i + 1) - k;
        {
            let mut r = report.lock().unwrap();
            r.ticks += 1;
            r.max_late = r.max_late.max(late);
            r.late_ticks += u64::from(late > tick);
            if slept {
                r.max_wake_delay = r.max_wake_delay.max(late);
                r.wake_late += u64::from(late > tick);
            }
        }
        while remaining > 0 {
            let n = remaining.min(per_body);
            let (mut sender, waited) = match free_rx.try_recv() {
                Ok(s) => (s, false),
                Err(_) => match free_rx.recv().await {
                    Some(s) => (s, true),
                    None => unreachable!("free_tx lives here"),
                },
            };
            let (body, topics) = publish_body(args, k, n, &pad);
            k += n;
            remaining -= n;
            let report = report.clone();
            let free_tx = free_tx.clone();
            let server = config.server;
            tasks.spawn(async move {
                let request = http::Request::post("/_switchyard/publish")
                    .header(http::header::HOST, server.to_string())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))
                    .expect("request");
                let sent = Instant::now();
                let outcome = async {
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body))
                }
                .await;
                let rtt = sent.elapsed();
                let healthy = outcome.is_ok();
                {
                    let mut r = report.lock().unwrap();
                    r.requests += 1;
                    r.events_sent += n;
                    if let Some(h) = r.rtt.as_mut() {
                        h.record(rtt.as_micros() as u64);
                    }
                    let slow = rtt > tick;
                    r.slow += u64::from(slow);
                    r.waited_for_conn += u64::from(waited);
                    r.had_to_wait += u64::from(slow || waited);
                    let receipt = match &outcome {
                        Ok((status, body)) if *status == http::StatusCode::ACCEPTED => {
                            serde_json::from_slice::<Receipt>(body).ok()
                        }
                        _ => None,
                    };
                    let seqs = receipt.as_ref().map(|rc| match (&rc.seqs, rc.seq) {
                        (Some(seqs), _) => seqs.clone(),
                        (None, Some(seq)) => vec![seq],
                        (None, None) => Vec::new(),
                    });
                    match seqs {
                        Some(seqs) if seqs.len() as u64 == n => {
                            r.accepted.extend(seqs.into_iter().zip(topics));
                            if let Some(epoch) = receipt.and_then(|rc| rc.epoch) {
                                if !r.epochs.contains(&epoch) {
                                    r.epochs.push(epoch);
                                }
                            }
                        }
                        _ => {
                            r.failed_events += n;
                            if r.first_error.is_none() {
                                r.first_error = Some(match &outcome {
                                    Ok((status, body)) => format!(
                                        "publish answered {status}: {}",
                                        String::from_utf8_lossy(&body[..body.len().min(200)])
                                    ),
                                    Err(e) => format!("publish failed: {e}"),
                                });
                            }
                        }
                    }
                }
                if healthy && !sender.is_closed() {
                    let _ = free_tx.send(sender);
                } else if let Ok(fresh) = open_publish_conn(server).await {
                    let _ = free_tx.send(fresh);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut r = report.lock().unwrap();
    r.elapsed = config.start.elapsed();
    std::mem::take(&mut *r)
}

// ---------------------------------------------------------------- the run

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (CI) runs
    // this binary without it, like criterion's test mode: check the pure
    // parts quickly and start nothing.
    if !std::env::args().skip(1).any(|a| a == "--bench") {
        self_check();
        println!(
            "loadgen: self-check passed; no load run without --bench \
             (run `cargo bench --bench loadgen -- --help`)"
        );
        return;
    }
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let fd_limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("loadgen: cannot raise the fd limit: {e}");
            std::process::exit(1);
        }
    };
    if (args.clients + args.pool + 64) as u64 > fd_limit {
        eprintln!(
            "loadgen: {} clients need more file descriptors than the limit of {fd_limit}",
            args.clients
        );
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The server is spawned from this (the main) thread inside block_on, so
    // its PR_SET_PDEATHSIG fires only when the whole program ends.
    let code = runtime.block_on(run(args, fd_limit));
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn run(args: Args, fd_limit: u64) -> i32 {
    let mut server = match Server::start(&args) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 1;
        }
    };
    let clk_tck = clock_ticks_per_sec();
    // What else keeps the cores busy (the server is idle): a second of /proc/stat.
    let quiet0 = machine_jiffies();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let background = match (quiet0, machine_jiffies()) {
        (Some(a), Some(b)) if b.1 > a.1 => 100.0 * (b.0 - a.0) as f64 / (b.1 - a.1) as f64,
        _ => 0.0,
    };
    let rss_before = rss_kib(server.pid).unwrap_or(0);

    let (schedule_tx, schedule_rx) = watch::channel(None);
    let ctx = Arc::new(Ctx {
        ws_path: args
            .server_env("WEBSOCKET_PATH")
            .unwrap_or("/ws")
            .to_owned(),
        server: server.addr,
        sources: source_addresses(args.clients),
        ws_config: WebSocketConfig::default()
            .read_buffer_size(args.read_buffer)
            .write_buffer_size(0),
        stats: (0..args.clients).map(|_| ClientStats::new()).collect(),
        connect_gate: Semaphore::new(args.connect_concurrency),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
        stall_wall_ns: AtomicU64::new(u64::MAX),
        schedule: schedule_rx,
        args: args.clone(),
    });

    // ---- connect
    let connect_start = Instant::now();
    let mut handles = Vec::with_capacity(args.clients);
    for idx in 0..args.clients {
        handles.push(tokio::spawn(client_task(idx, ctx.clone())));
    }
    let connect_deadline = connect_start + Duration::from_secs(120 + args.clients as u64 / 100);
    loop {
        let done = ctx.connected.load(Relaxed) + ctx.failed.load(Relaxed);
        if done >= args.clients || Instant::now() > connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let connected = ctx.connected.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_connected = rss_kib(server.pid).unwrap_or(0);

    let mut table = Table::new(&args, &server, &ctx, fd_limit);
    table.head.push(format!(
        "background: {background:.0} % of {} cores busy before the run (other processes on this machine)",
        cores()
    ));
    table.row(
        "clients connected",
        format!(
            "{connected}/{} in {connect_secs:.1} s, from {} source address(es) {}..",
            args.clients,
            ctx.sources.len(),
            ctx.sources[0]
        ),
    );
    if connected < args.clients {
        let why = ctx
            .first_error
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "timed out".into());
        table.row(
            "connect failures",
            format!("{} (first: {why})", args.clients - connected),
        );
    }
    let per_conn = |rss: u64| {
        if connected == 0 {
            0.0
        } else {
            rss.saturating_sub(rss_before) as f64 / connected as f64
        }
    };

    let code = if args.idle {
        idle_run(
            &args,
            &mut server,
            &mut table,
            rss_before,
            rss_connected,
            clk_tck,
            connected,
            per_conn,
        )
        .await
    } else {
        broadcast_run(
            &args,
            &mut server,
            &ctx,
            &schedule_tx,
            &mut table,
            &handles,
            rss_before,
            rss_connected,
            clk_tck,
            per_conn,
        )
        .await
    };

    let alive = server.alive();
    let stopped = server.stop();
    table.row(
        "server stop",
        format!(
            "{}{stopped}",
            if alive { "" } else { "DIED DURING THE RUN; " }
        ),
    );
    for h in &handles {
        h.abort();
    }
    table.print();
    if !alive {
        eprintln!(
            "--- server log tail ({})\n{}",
            server.log.display(),
            server.log_tail()
        );
    } else {
        let _ = std::fs::remove_file(&server.log);
    }
    if alive {
        code
    } else {
        1
    }
}

#[allow(clippy::too_many_arguments)]
async fn idle_run(
    args: &Args,
    server: &mut Server,
    table: &mut Table,
    rss_before: u64,
    rss_connected: u64,
    clk_tck: u64,
    connected: usize,
    per_conn: impl Fn(u64) -> f64,
) -> i32 {
    let cpu0 = CpuWindow::now(server.pid);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let cpu1 = CpuWindow::now(server.pid);
    let rss_end = rss_kib(server.pid).unwrap_or(0);
    let secs = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    table.row("idle hold", format!("{:.1} s", secs));
    table.row(
        "server RSS",
        format!(
            "before connect {} / after connect {} / after hold {}",
            kib(rss_before),
            kib(rss_connected),
            kib(rss_end)
        ),
    );
    let at_connect = per_conn(rss_connected);
    table.row(
        "server RSS per connection",
        format!(
            "{at_connect:.2} KiB after connect, {:.2} KiB after hold  ((RSS - before) / {connected})",
            per_conn(rss_end)
        ),
    );
    let server_cpu =
        (cpu1.server.0 + cpu1.server.1 - cpu0.server.0 - cpu0.server.1) as f64 / clk_tck as f64;
    table.row(
        "server CPU while idle",
        format!(
            "{:.2} s over {secs:.1} s ({:.1} % of a core)",
            server_cpu,
            100.0 * server_cpu / secs
        ),
    );
    if let Some(target) = args.target_rss_kib {
        table.target(
            &format!("RSS per connection <= {target} KiB"),
            connected > 0 && at_connect <= target,
            format!("{at_connect:.2} KiB"),
        );
    }
    let _ = server;
    0
}

#[allow(clippy::too_many_arguments)]
async fn broadcast_run(
    args: &Args,
    server: &mut Server,
    ctx: &Arc<Ctx>,
    schedule_tx: &watch::Sender<Option<Schedule>>,
    table: &mut Table,
    handles: &[tokio::task::JoinHandle<()>],
    rss_before: u64,
    rss_connected: u64,
    clk_tck: u64,
    per_conn: impl Fn(u64) -> f64,
) -> i32 {
    // ---- schedule
    let start = Instant::now() + Duration::from_millis(300);
    let run_len = Duration::from_secs_f64(args.duration);
    let stalling = args.stall > 0;
    let stall_offset = Duration::from_secs_f64(args.duration * args.stall_at);
    let plan = Schedule {
        stall_at: start + stall_offset,
        resume_at: start + run_len,
    };
    if stalling {
        let start_wall = wall_ns() + 300_000_000;
        ctx.stall_wall_ns
            .store(start_wall + stall_offset.as_nanos() as u64, Relaxed);
    }
    let _ = schedule_tx.send(Some(plan));

    // RSS samples every 100 ms: (seconds since start, KiB)
    let sampling = Arc::new(AtomicU32::new(1));
    let samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampler = {
        let (sampling, samples, pid) = (sampling.clone(), samples.clone(), server.pid);
        tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let mut every = tokio::time::interval(Duration::from_millis(100));
            while sampling.load(Relaxed) == 1 {
                every.tick().await;
                if let Some(rss) = rss_kib(pid) {
                    samples
                        .lock()
                        .unwrap()
                        .push((start.elapsed().as_secs_f64(), rss));
                }
            }
        })
    };

    tokio::time::sleep_until(start).await;
    let cpu0 = CpuWindow::now(server.pid);
    let (report_tx, report_rx) = oneshot::channel();
    {
        let config = PubConfig {
            args: args.clone(),
            server: server.addr,
            start,
        };
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let _ = report_tx.send(run_publisher(config));
            })
            .expect("publisher thread");
    }
    let report = report_rx.await.unwrap_or_default();
    let publish_end = Instant::now();

    // ---- what each client should have: accepted seqs of its topic(s)
    let n_topics = args.topics.unwrap_or(1);
    let mut seqs_by_topic: Vec<Vec<u64>> = vec![Vec::new(); n_topics];
    for &(seq, topic) in &report.accepted {
        seqs_by_topic[topic].push(seq);
    }
    for v in &mut seqs_by_topic {
        v.sort_unstable();
    }
    let topic_of = |idx: usize| args.topics.map_or(0, |t| idx % t);
    let target_seq = |idx: usize| seqs_by_topic[topic_of(idx)].last().copied().unwrap_or(0);

    // ---- drain: every live, non-stalled client has its last seq
    let drain_deadline = publish_end + Duration::from_secs_f64(args.drain);
    let behind = loop {
        let behind = (0..args.clients)
            .filter(|&i| !ctx.is_stalled(i))
            .filter(|&i| {
                let s = &ctx.stats[i];
                s.hello_seq.load(Relaxed) != NO_HELLO
                    && s.close.load(Relaxed) == 0
                    && s.last_seq.load(Relaxed) < target_seq(i)
            })
            .count();
        if behind == 0 || Instant::now() >= drain_deadline {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cpu1 = CpuWindow::now(server.pid);
    let drain_secs = cpu1.at.duration_since(publish_end).as_secs_f64();
    let window = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let rss_end = rss_kib(server.pid).unwrap_or(0);

    // ---- snapshot the clients
    let mut expected = 0u64;
    let mut missing = 0u64;
    let mut lossy_clients = 0usize;
    let mut gaps = 0u64;
    let mut gap_seqs = 0u64;
    let mut dups = 0u64;
    let mut delivered = 0u64;
    let mut frame_bytes = 0u64;
    let mut closes: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, s) in ctx.stats.iter().enumerate() {
        let received = s.received.load(Relaxed);
        delivered += received;
        frame_bytes += s.bytes.load(Relaxed);
        let hello = s.hello_seq.load(Relaxed);
        if ctx.is_stalled(i) || hello == NO_HELLO {
            continue;
        }
        *closes.entry(s.close.load(Relaxed)).or_default() += 1;
        let seqs = &seqs_by_topic[topic_of(i)];
        let want = (seqs.len() - seqs.partition_point(|&q| q <= hello)) as u64;
        let d = s.dups.load(Relaxed);
        let got = received - d;
        expected += want;
        let lost = want.saturating_sub(got);
        missing += lost;
        lossy_clients += usize::from(lost > 0);
        gaps += s.gaps.load(Relaxed);
        gap_seqs += s.gap_seqs.load(Relaxed);
        dups += d;
    }
    let frame_avg = if delivered > 0 {
        frame_bytes as f64 / delivered as f64
    } else {
        0.0
    };

    // ---- stalled clients: they read again from resume_at, up to 15 s
    let mut stalled_report = Vec::new();
    if stalling {
        for h in handles.iter().take(args.stall) {
            let wait_until = plan.resume_at + Duration::from_secs(16);
            while !h.is_finished() && Instant::now() < wait_until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for s in ctx.stats.iter().take(args.stall) {
            stalled_report.push((
                s.close.load(Relaxed),
                s.seq_at_stall.load(Relaxed),
                s.last_seq.load(Relaxed),
                s.last_t.load(Relaxed),
            ));
        }
    }
    sampling.store(0, Relaxed);
    let _ = sampler.await;
    let samples = std::mem::take(&mut *samples.lock().unwrap());

    // ---- the table
    let published = report.accepted.len() as u64;
    let epochs = if report.epochs.len() == 1 {
        "1 epoch".to_owned()
    } else {
        format!("{} EPOCHS", report.epochs.len())
    };
    table.row(
        "offered load",
        format!(
            "{} ev/s x {} B data for {} s = {} events; x {} clients = {:.0} deliveries/s",
            args.rate,
            args.size,
            args.duration,
            (args.rate * args.duration).round(),
            ctx.connected.load(Relaxed),
            args.rate * ctx.connected.load(Relaxed) as f64
        ),
    );
    table.row(
        "published",
        format!(
            "{published} accepted ({epochs}), {} failed, in {} requests over {} ticks of {:.0} ms, {:.2} s",
            report.failed_events,
            report.requests,
            report.ticks,
            report.tick.as_secs_f64() * 1000.0,
            report.elapsed.as_secs_f64()
        ),
    );
    if let Some(e) = &report.first_error {
        table.row("publish error", e.clone());
    }
    table.row(
        "publishes that had to wait",
        format!(
            "{} of {}  (no free connection: {}, took > 1 tick: {}; pool of {})",
            report.had_to_wait, report.requests, report.waited_for_conn, report.slow, args.pool
        ),
    );
    table.row(
        "publish RTT",
        report.rtt.as_ref().map_or("-".into(), |h| h.summary_ms()),
    );
    table.row(
        "publish schedule",
        format!(
            "{} ticks started > 1 tick late (max {:.1} ms); publisher thread woke > 1 tick late {} times \
             (max {:.1} ms: this side's own lag)",
            report.late_ticks,
            report.max_late.as_secs_f64() * 1000.0,
            report.wake_late,
            report.max_wake_delay.as_secs_f64() * 1000.0
        ),
    );
    table.row(
        "delivered",
        format!(
            "{delivered} events, {:.0} ev/s over {window:.2} s (publish {:.2} s + drain {drain_secs:.2} s); avg frame {frame_avg:.0} B",
            delivered as f64 / window,
            publish_end.duration_since(cpu0.at).as_secs_f64()
        ),
    );
    if behind > 0 {
        table.row(
            "still behind at drain end",
            format!("{behind} clients (drain {} s)", args.drain),
        );
    }
    table.row(
        "loss (non-stalled clients)",
        format!(
            "{missing} missing of {expected} expected ({:.4} %), {lossy_clients} clients lost events",
            if expected > 0 { 100.0 * missing as f64 / expected as f64 } else { 0.0 },
        ),
    );
    table.row(
        "gaps / duplicates by seq",
        if args.topics.is_none() {
            format!("{gaps} gaps ({gap_seqs} seqs skipped) / {dups} duplicates or out of order")
        } else {
            format!("gaps not checkable with --topics / {dups} duplicates or out of order")
        },
    );
    let closes_text = closes
        .iter()
        .map(|(code, n)| format!("{}: {n}", close_name(*code)))
        .collect::<Vec<_>>()
        .join(", ");
    table.row("non-stalled clients at end", closes_text);

    let all = {
        let mut h = Hist::collect(0);
        h.merge(&Hist::collect(1));
        h
    };
    table.row("latency publish->receive", all.summary_ms());
    let (before, during) = (Hist::collect(0), Hist::collect(1));
    if stalling {
        table.row("  others, before stall", before.summary_ms());
        table.row("  others, during stall", during.summary_ms());
    }

    let secs = |a: u64, b: u64| (b - a) as f64 / clk_tck as f64;
    let (server_user, server_sys) = (
        secs(cpu0.server.0, cpu1.server.0),
        secs(cpu0.server.1, cpu1.server.1),
    );
    let (my_user, my_sys) = (secs(cpu0.me.0, cpu1.me.0), secs(cpu0.me.1, cpu1.me.1));
    let (server_cpu, my_cpu) = (server_user + server_sys, my_user + my_sys);
    let per_msg = |cpu: f64| {
        if delivered > 0 {
            cpu * 1e6 / delivered as f64
        } else {
            f64::NAN
        }
    };
    table.row(
        "server CPU",
        format!(
            "{server_cpu:.2} s (user {server_user:.2} + sys {server_sys:.2}) = {:.0} % of a core; \
             {:.2} us per delivered message",
            100.0 * server_cpu / window,
            per_msg(server_cpu)
        ),
    );
    table.row(
        "loadgen CPU",
        format!(
            "{my_cpu:.2} s (user {my_user:.2} + sys {my_sys:.2}) = {:.0} % of a core; \
             {:.2} us per delivered message",
            100.0 * my_cpu / window,
            per_msg(my_cpu)
        ),
    );
    let (busy, total) = (
        cpu1.machine.0 - cpu0.machine.0,
        cpu1.machine.1 - cpu0.machine.1,
    );
    let machine_busy = if total > 0 {
        100.0 * busy as f64 / total as f64
    } else {
        0.0
    };
    let saturated = machine_busy > 90.0;
    table.row(
        "machine",
        format!(
            "{machine_busy:.0} % busy over {} cores{}",
            cores(),
            if saturated {
                format!(
                    " — CPU-saturated: server and load generator compete for the cores{}",
                    if my_cpu >= server_cpu {
                        "; the load generator uses as much as the server or more"
                    } else {
                        ""
                    }
                )
            } else {
                String::new()
            }
        ),
    );
    let peak = samples
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(rss_end)
        .max(rss_end);
    table.row(
        "server RSS",
        format!(
            "before connect {} / after connect {} / end {} / peak {}",
            kib(rss_before),
            kib(rss_connected),
            kib(rss_end),
            kib(peak)
        ),
    );
    table.row(
        "server RSS per connection",
        format!(
            "{:.2} KiB ((after connect - before) / connected)",
            per_conn(rss_connected)
        ),
    );

    let mut stall_ok = None;
    if stalling {
        let stall_s = stall_offset.as_secs_f64();
        let at_stall = samples
            .iter()
            .rfind(|s| s.0 <= stall_s)
            .map_or(rss_connected, |s| s.1);
        let peak_during = samples
            .iter()
            .filter(|s| s.0 >= stall_s)
            .map(|s| s.1)
            .max()
            .unwrap_or(at_stall);
        let growth = peak_during.saturating_sub(at_stall);
        let client_queue: u64 = args
            .server_env("CLIENT_QUEUE")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let budget_kib = client_queue as f64 * frame_avg / 1024.0;
        let stall_wall = ctx.stall_wall_ns.load(Relaxed);
        for (i, (close, at, last, last_t)) in stalled_report.iter().enumerate() {
            table.row(
                &format!("stalled client {i}"),
                format!(
                    "{}; stopped reading at seq {at} (t+{stall_s:.1} s); afterwards read up to seq {last}{}",
                    close_name(*close),
                    if *close == 0 {
                        String::new()
                    } else {
                        format!(
                            ", published {:.1} s into the stall (the server's last event to it)",
                            last_t.saturating_sub(stall_wall) as f64 / 1e9
                        )
                    }
                ),
            );
        }
        table.row(
            "RSS growth during stall",
            format!(
                "{} (peak after t+{stall_s:.1} s {} - at stall {}); budget CLIENT_QUEUE {client_queue} x {frame_avg:.0} B = {}",
                kib(growth),
                kib(peak_during),
                kib(at_stall),
                kib(budget_kib as u64)
            ),
        );
        let p99 = |h: &Hist| h.quantile(0.99);
        let ratio_ok = match (p99(&before), p99(&during)) {
            (Some(b), Some(d)) => Some((d as f64 <= 1.5 * b as f64, d as f64 / b.max(1) as f64)),
            _ => None,
        };
        let closed_ok = stalled_report.iter().all(|s| s.0 == 1008);
        stall_ok = Some((
            ratio_ok,
            closed_ok,
            (growth as f64) < budget_kib,
            growth,
            budget_kib,
        ));
    }

    // ---- targets
    if args.target_zero_loss {
        table.target(
            "zero loss",
            missing == 0 && dups == 0 && gaps == 0 && published > 0 && report.failed_events == 0,
            format!(
                "{missing} missing, {gaps} gaps, {dups} dups, {} publish failures",
                report.failed_events
            ),
        );
    }
    if args.target_no_waits {
        table.target(
            "no publish waits",
            report.had_to_wait == 0,
            format!("{} of {}", report.had_to_wait, report.requests),
        );
    }
    if let Some(target) = args.target_cpu_us {
        let v = per_msg(server_cpu);
        table.target(
            &format!("server CPU <= {target} us per delivered message"),
            v <= target,
            format!("{v:.2} us"),
        );
    }
    if let Some(target) = args.target_p99_ms {
        let p99 = all.quantile(0.99);
        table.target(
            &format!("p99 <= {target} ms"),
            p99.is_some_and(|p| p as f64 / 1000.0 <= target),
            p99.map_or("no samples".into(), |p| format!("{} ms", ms(p))),
        );
    }
    if let Some(target) = args.target_rss_kib {
        let v = per_conn(rss_connected);
        table.target(
            &format!("RSS per connection <= {target} KiB"),
            v <= target,
            format!("{v:.2} KiB"),
        );
    }
    if args.target_stall {
        match stall_ok {
            None => table.target("stall", false, "no --stall in this run".into()),
            Some((ratio, closed, rss_ok, growth, budget)) => {
                table.target(
                    "others' p99 during stall <= 1.5x before",
                    ratio.is_some_and(|r| r.0),
                    ratio.map_or("no samples".into(), |r| format!("{:.2}x", r.1)),
                );
                table.target(
                    "stalled clients closed with 1008",
                    closed,
                    stalled_report
                        .iter()
                        .map(|s| close_name(s.0))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                table.target(
                    "RSS growth during stall < CLIENT_QUEUE x frame size",
                    rss_ok,
                    format!("{} < {}", kib(growth), kib(budget as u64)),
                );
            }
        }
    }
    0
}

fn kib(v: u64) -> String {
    if v >= 10 * 1024 {
        format!("{:.1} MiB", v as f64 / 1024.0)
    } else {
        format!("{v} KiB")
    }
}

// ---------------------------------------------------------------- output

struct Table {
    title: String,
    head: Vec<String>,
    rows: Vec<(String, String)>,
    targets: Vec<String>,
}

impl Table {
    fn new(args: &Args, server: &Server, ctx: &Ctx, fd_limit: u64) -> Table {
        let title = args.label.clone().unwrap_or_else(|| {
            if args.idle {
                format!("{} idle connections", args.clients)
            } else {
                format!(
                    "{} clients x {} ev/s x {} B{}",
                    args.clients,
                    args.rate,
                    args.size,
                    if args.stall > 0 {
                        format!(", {} stalled", args.stall)
                    } else {
                        String::new()
                    }
                )
            }
        });
        let extra = args
            .server_env
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect::<String>();
        Table {
            title,
            head: vec![
                format!("command: {}", args.command_line()),
                format!(
                    "server: {} pid {} on {} (HOST=127.0.0.1 RUST_LOG=warn MAX_CONNECTIONS={}{extra})",
                    server.bin.display(),
                    server.pid,
                    server.addr,
                    (args.clients * 2).max(1_000_000)
                ),
                format!(
                    "loadgen: 2 tokio workers + 1 publisher thread, fd limit {fd_limit}, read buffer {} B/client, {} cores",
                    ctx.args.read_buffer,
                    cores()
                ),
            ],
            rows: Vec::new(),
            targets: Vec::new(),
        }
    }

    fn row(&mut self, name: &str, value: String) {
        self.rows.push((name.to_owned(), value));
    }

    fn target(&mut self, name: &str, ok: bool, measured: String) {
        self.targets.push(format!(
            "{}  {name}  (measured: {measured})",
            if ok { "PASS" } else { "MISS" }
        ));
    }

    fn print(&self) {
        let width = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "\n=== switchyard loadgen: {} ===", self.title);
        for h in &self.head {
            let _ = writeln!(out, "{h}");
        }
        let _ = writeln!(out, "{}", "-".repeat(78));
        for (name, value) in &self.rows {
            let _ = writeln!(out, "{name:<width$}  {value}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "{}", "-".repeat(78));
            for t in &self.targets {
                let _ = writeln!(out, "target: {t}");
            }
        }
        print!("{out}");
    }
}

// ---------------------------------------------------------------- self-check

/// The pure parts, checked when run by `cargo test` instead of `cargo bench`.
fn self_check() {
    // every value lands in a bucket whose range holds it
    let mut v = 0u64;
    while v < (1 << 40) {
        let b = bucket_of(v);
        assert!(b < BUCKETS, "bucket of {v}");
        assert!(bucket_low(b) <= v, "low edge of {v}");
        assert!(
            b + 1 == BUCKETS || v < bucket_low(b + 1),
            "high edge of {v}"
        );
        v = v * 17 / 16 + 1;
    }
    let mut h = Hist::new();
    for us in 1..=1000 {
        h.record(us);
    }
    let p50 = h.quantile(0.5).unwrap();
    let p99 = h.quantile(0.99).unwrap();
    assert!((500..=510).contains(&p50), "p50 {p50}");
    assert!((990..=1000).contains(&p99), "p99 {p99}");
    assert_eq!(h.quantile(1.0), Some(1000));

    // the hand scan reads what the server writes
    let hello = br#"{"type":"hello","epoch":"e1","seq":41,"resumed":false,"state":{}}"#;
    assert_eq!(hello_seq(hello), Some(41));
    let event = br#"{"type":"event","seq":42,"topic":"bench/load","data":{"t":1700000000000000000,"p":"xx"},"ts":"2024-01-01T00:00:00Z"}"#;
    assert!(event.starts_with(EVENT_PREFIX));
    assert_eq!(digits(event, EVENT_PREFIX.len()).0, 42);
    let at = find_after(event, EVENT_PREFIX.len(), br#"{"t":"#).unwrap();
    assert_eq!(digits(event, at).0, 1_700_000_000_000_000_000);

    // a publish body is valid JSON of the requested data size
    let args = Args {
        clients: 1,
        rate: 1.0,
        duration: 1.0,
        size: 256,
        topics: Some(3),
        stall: 0,
        stall_at: 0.5,
        stall_rcvbuf: 0,
        idle: false,
        server_env: Vec::new(),
        pool: 1,
        tick_ms: 10.0,
        max_body: 60_000,
        connect_concurrency: 1,
        read_buffer: 4096,
        drain: 1.0,
        label: None,
        target_zero_loss: false,
        target_no_waits: false,
        target_cpu_us: None,
        target_p99_ms: None,
        target_rss_kib: None,
        target_stall: false,
        raw: Vec::new(),
    };
    let pad = "x".repeat(args.size - 32);
    let (body, topics) = publish_body(&args, 4, 2, &pad);
    assert_eq!(topics, [1, 2]);
    let parsed: Vec<serde_json::Value> =
        serde_json::from_slice(&body).expect("publish body is JSON");
    assert_eq!(parsed[0]["topic"], "bench/1");
    assert_eq!(
        serde_json::to_string(&parsed[1]["data"]).unwrap().len(),
        256
    );
}
