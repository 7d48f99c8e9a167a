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
//! and reports the server's RSS per connection. `--retained N` publishes N
//! retained topics of `--retained-size` bytes first, so every hello carries
//! them (20 x 3 KB: a 60 KB hello; any mode, but made for `--idle`).
//!
//! `--hostile`: one server, one set of clients, two phases of `--duration`
//! each: quiet, then the same schedule while one anonymous WebSocket client
//! (no Origin, no token, no topics) writes `--flood-frames` subscribe frames
//! of `--flood-patterns` distinct patterns as fast as the socket takes them.
//! Reports publish RTT (POST to 202) p50/p99 of both phases and their
//! ratio, the RTT of the publishes sent while the flood was being answered,
//! how the flooder was answered (subscribed / error frames, closed or not),
//! and the clients' loss over both phases. Nothing is sent or waited for
//! after `--duration + --drain` from a phase's start: an unanswered publish
//! then counts as failed, with its age as its RTT (a lower bound).
//!
//! `--replicas N --redis-url URL`: starts N servers sharing one Redis
//! backplane under one `REDIS_PREFIX` unique to the run (`--redis-prefix`),
//! each only once its `/health` says `"redis":"up"`; client i connects to
//! replica i mod N, publishes go round-robin (`--pool` connections per
//! replica). Loss, gaps, duplicates and latency are reported per replica and
//! overall, server CPU and RSS summed, Redis's own CPU and script time from
//! INFO; the first hello's epoch must match on every replica and every
//! receipt. At the end the run deletes its keys (SCAN MATCH prefix*, DEL).
//!
//! `--throughput`: instead of a schedule, `--pool` closed-loop connections
//! per replica publish arrays of `--batch` events back to back for
//! `--duration` seconds; reports accepted events/s and whether the (few)
//! subscribers got every seq exactly once.
//!
//! The last line, `result: key=value ...`, is for scripts (benches/redis.sh).
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
  --retained N           before the clients connect, publish N retained topics
                         bench/retained/0..N-1 (one request each), so every hello
                         carries them (default 0: a tiny hello)
  --retained-size B      bytes of each retained topic's data (default 3072)
  --hostile              two phases of --duration each on one server and one set of
                         clients: quiet, then the same while one anonymous WebSocket
                         client (no Origin) floods subscribe frames; reports publish RTT
                         quiet vs under flood and how the flooder was answered
  --flood-frames N       subscribe frames the flooder sends (default 30)
  --flood-patterns N     distinct patterns per frame, flood/<n in base 36>/+/x
                         (default 3600; a frame must fit MAX_MESSAGE_BYTES)
  --server-env K=V       extra environment for the server(s) (repeatable)
  --throughput           (alias --max-rate) publish as fast as possible for --duration instead
                         of --rate: --pool closed-loop connections per replica, --batch events
                         per request; reports accepted events/s and whether every subscriber
                         got every seq exactly once
  --batch N              events per request with --throughput (default 50)
replicas:
  --replicas N           switchyard processes (default 1); clients are spread evenly over
                         them (client i -> replica i mod N), publishes go round-robin;
                         N > 1 needs --redis-url
  --redis-url URL        REDIS_URL of every replica (default: none, the in-process hub)
  --redis-prefix P       REDIS_PREFIX of every replica (default bench:<pid>:<nanos>:, unique
                         per run); the run deletes the keys under it at the end
publisher:
  --pool P               keep-alive HTTP/1.1 connections per replica (default 4)
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
  --target-events-per-s X  PASS/MISS (--throughput): accepted events/s >= X
  --target-flood-ratio X PASS/MISS (--hostile): publish RTT p99 under flood <= X x quiet
  with --replicas > 1 a PASS/MISS line for one epoch is always printed: the first hello on
  every replica and every publish receipt carry the same epoch

The last line of the report is `result: key=value ...` for scripts (benches/redis.sh).

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
    target_events_per_s: Option<f64>,
    target_flood_ratio: Option<f64>,
    retained: usize,
    retained_size: usize,
    hostile: bool,
    flood_frames: usize,
    flood_patterns: usize,
    throughput: bool,
    batch: usize,
    replicas: usize,
    redis_url: Option<String>,
    /// Set whenever redis_url is: given, or unique per run.
    redis_prefix: Option<String>,
    /// The arguments as given, for the table's command line.
    raw: Vec<String>,
}

impl Args {
    /// Every flag at its default (what `--help` lists).
    fn defaults() -> Args {
        Args {
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
            target_events_per_s: None,
            target_flood_ratio: None,
            retained: 0,
            retained_size: 3072,
            hostile: false,
            flood_frames: 30,
            flood_patterns: 3600,
            throughput: false,
            batch: 50,
            replicas: 1,
            redis_url: None,
            redis_prefix: None,
            raw: Vec::new(),
        }
    }

    fn parse() -> Result<Args, String> {
        // `cargo bench` appends `--bench` for harness = false targets.
        let raw: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        let mut args = Args {
            raw: raw.clone(),
            ..Args::defaults()
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
                "--retained" => args.retained = num(&flag, value()?)?,
                "--retained-size" => args.retained_size = num(&flag, value()?)?,
                "--hostile" => args.hostile = true,
                "--flood-frames" => args.flood_frames = num(&flag, value()?)?,
                "--flood-patterns" => args.flood_patterns = num(&flag, value()?)?,
                "--target-flood-ratio" => args.target_flood_ratio = Some(num(&flag, value()?)?),
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
                "--target-events-per-s" => args.target_events_per_s = Some(num(&flag, value()?)?),
                "--throughput" | "--max-rate" => args.throughput = true,
                "--batch" => args.batch = num(&flag, value()?)?,
                "--replicas" => args.replicas = num(&flag, value()?)?,
                "--redis-url" => args.redis_url = Some(value()?),
                "--redis-prefix" => args.redis_prefix = Some(value()?),
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other} (see --help)")),
            }
        }
        if args.clients == 0 && !args.throughput {
            return Err("--clients must be at least 1 (0 only with --throughput)".into());
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
        if args.replicas == 0 || args.batch == 0 {
            return Err("--replicas and --batch must be at least 1".into());
        }
        if args.replicas > 1 && args.redis_url.is_none() {
            return Err(
                "--replicas > 1 needs --redis-url: in-process hubs do not share events".into(),
            );
        }
        if args.redis_url.is_none() && args.redis_prefix.is_some() {
            return Err("--redis-prefix needs --redis-url".into());
        }
        if args
            .server_env
            .iter()
            .any(|(k, _)| k == "REDIS_URL" || k == "REDIS_PREFIX")
        {
            return Err("use --redis-url and --redis-prefix, not --server-env REDIS_*".into());
        }
        if args.throughput && (args.idle || args.stall > 0) {
            return Err("--throughput does not combine with --idle or --stall".into());
        }
        if args.hostile && (args.idle || args.throughput || args.stall > 0 || args.replicas > 1) {
            return Err(
                "--hostile does not combine with --idle, --throughput, --stall or --replicas"
                    .into(),
            );
        }
        if args.hostile && args.topics.is_some() {
            return Err("--hostile: every client subscribes to everything (no --topics)".into());
        }
        if args.hostile && (args.flood_frames == 0 || args.flood_patterns == 0) {
            return Err("--flood-frames and --flood-patterns must be at least 1".into());
        }
        if args.retained > 0 && args.retained_size < 16 {
            return Err("--retained-size must be at least 16".into());
        }
        if args.redis_url.is_some() && args.redis_prefix.is_none() {
            args.redis_prefix = Some(format!("bench:{}:{}:", std::process::id(), wall_ns()));
        }
        if let Some(prefix) = &args.redis_prefix {
            if prefix.is_empty() || prefix.len() > 64 || prefix.contains(char::is_whitespace) {
                return Err("--redis-prefix: 1-64 characters without spaces".into());
            }
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

    /// Which replica client `idx` connects to.
    fn replica_of(&self, idx: usize) -> usize {
        idx % self.replicas
    }

    /// "in-process hub" or "Redis", for titles and the result line.
    fn hub_name(&self) -> &'static str {
        if self.redis_url.is_some() {
            "redis"
        } else {
            "in-process"
        }
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
/// Histogram slots per worker thread: PHASES per replica (replica r, phase
/// p is slot r * PHASES + p). Set once in main, before any client runs.
static HIST_SLOTS: AtomicUsize = AtomicUsize::new(PHASES);

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
    max: Vec<AtomicU64>,
}

static ALL_HISTS: Mutex<Vec<Arc<ThreadHist>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL_HIST: Arc<ThreadHist> = {
        let slots = HIST_SLOTS.load(Relaxed);
        let hist = Arc::new(ThreadHist {
            counts: (0..BUCKETS * slots).map(|_| AtomicU64::new(0)).collect(),
            max: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        });
        ALL_HISTS.lock().unwrap().push(hist.clone());
        hist
    };
}

/// `slot`: replica * PHASES + phase.
fn record_latency(slot: usize, us: u64) {
    LOCAL_HIST.with(|h| {
        bump(&h.counts[slot * BUCKETS + bucket_of(us)], 1);
        if us > h.max[slot].load(Relaxed) {
            h.max[slot].store(us, Relaxed);
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

    /// The worker threads' histograms, merged: of one replica or all, of
    /// one phase or both.
    fn collect(replica: Option<usize>, phase: Option<usize>) -> Hist {
        let mut merged = Hist::new();
        for h in ALL_HISTS.lock().unwrap().iter() {
            for slot in 0..h.max.len() {
                if replica.is_some_and(|r| slot / PHASES != r)
                    || phase.is_some_and(|p| slot % PHASES != p)
                {
                    continue;
                }
                for (i, c) in h.counts[slot * BUCKETS..(slot + 1) * BUCKETS]
                    .iter()
                    .enumerate()
                {
                    let c = c.load(Relaxed);
                    merged.counts[i] += c;
                    merged.total += c;
                }
                merged.max = merged.max.max(h.max[slot].load(Relaxed));
            }
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

/// CPU time of the servers and of this process over a window.
struct CpuWindow {
    /// Summed over the replicas.
    server: (u64, u64),
    /// Per replica.
    servers: Vec<(u64, u64)>,
    me: (u64, u64),
    machine: (u64, u64),
    at: Instant,
}

impl CpuWindow {
    fn now(servers: &[Server]) -> CpuWindow {
        let per: Vec<(u64, u64)> = servers
            .iter()
            .map(|s| cpu_ticks(&s.pid.to_string()).unwrap_or_default())
            .collect();
        CpuWindow {
            server: per.iter().fold((0, 0), |acc, t| (acc.0 + t.0, acc.1 + t.1)),
            servers: per,
            me: cpu_ticks("self").unwrap_or_default(),
            machine: machine_jiffies().unwrap_or((0, 0)),
            at: Instant::now(),
        }
    }
}

/// RSS summed over the replicas.
fn rss_sum(servers: &[Server]) -> u64 {
    servers.iter().map(|s| rss_kib(s.pid).unwrap_or(0)).sum()
}

/// A plain HTTP/1.1 GET with `Connection: close`: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    Some((status, body))
}

// ---------------------------------------------------------------- Redis

/// What INFO says about the Redis server, for the cost of the backplane.
#[derive(Clone, Default)]
struct RedisInfo {
    /// used_cpu_user + used_cpu_sys, seconds.
    cpu: (f64, f64),
    /// cmdstat_evalsha (calls, usec) plus cmdstat_eval.
    scripts: (u64, u64),
    /// cmdstat_publish (calls, usec): the scripts' PUBLISH calls.
    publish: (u64, u64),
    /// Connected clients (all of them, not only ours).
    clients: u64,
}

async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "redis: connect timed out".to_owned())?
    .map_err(|e| format!("redis: {e}"))
}

async fn redis_info(connection: &mut redis::aio::MultiplexedConnection) -> Option<RedisInfo> {
    let text: String = redis::cmd("INFO")
        .arg("all")
        .query_async(connection)
        .await
        .ok()?;
    let field = |name: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let float = |name: &str| {
        field(name)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cmdstat = |name: &str| -> (u64, u64) {
        let Some(v) = field(name) else { return (0, 0) };
        let get = |key: &str| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (get("calls"), get("usec"))
    };
    let (evalsha, eval) = (cmdstat("cmdstat_evalsha"), cmdstat("cmdstat_eval"));
    Some(RedisInfo {
        cpu: (float("used_cpu_user"), float("used_cpu_sys")),
        scripts: (evalsha.0 + eval.0, evalsha.1 + eval.1),
        publish: cmdstat("cmdstat_publish"),
        clients: field("connected_clients")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

async fn scan_keys(
    connection: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .map_err(|e| format!("redis SCAN: {e}"))?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Deletes every key under `prefix`: (deleted, still there afterwards).
async fn redis_cleanup(url: &str, prefix: &str) -> Result<(u64, u64), String> {
    let mut connection = redis_connection(url).await?;
    // the prefix is literal: escape MATCH's glob characters
    let mut pattern = String::new();
    for c in prefix.chars() {
        if "*?[]\\".contains(c) {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    let keys = scan_keys(&mut connection, &pattern).await?;
    let mut deleted = 0u64;
    for chunk in keys.chunks(500) {
        let n: u64 = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await
            .map_err(|e| format!("redis DEL: {e}"))?;
        deleted += n;
    }
    let left = scan_keys(&mut connection, &pattern).await?.len() as u64;
    Ok((deleted, left))
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
    /// Starts replica number `replica` and waits until it listens (and,
    /// with Redis, until its `/health` says `"redis":"up"`: its listener has
    /// the epoch, so a hello cannot race the first catch-up).
    fn start(args: &Args, replica: usize) -> Result<Server, String> {
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
        let log = std::env::temp_dir().join(format!(
            "switchyard-loadgen-{}-r{replica}.log",
            std::process::id()
        ));
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

/// The epochs of the hellos, per replica.
struct EpochTally {
    /// The epoch of each replica's first hello.
    first: Vec<Option<String>>,
    /// epoch -> hellos per replica.
    counts: BTreeMap<String, Vec<usize>>,
}

/// Everything the client tasks share.
struct Ctx {
    args: Args,
    servers: Vec<SocketAddr>,
    ws_path: String,
    sources: Vec<Ipv4Addr>,
    ws_config: WebSocketConfig,
    stats: Vec<ClientStats>,
    connect_gate: Semaphore,
    connected: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    epochs: Mutex<EpochTally>,
    /// The largest hello frame any client got, bytes.
    hello_bytes: AtomicUsize,
    /// Events published at or after this wall-clock ns are "during the stall".
    stall_wall_ns: AtomicU64,
    schedule: watch::Receiver<Option<Schedule>>,
}

impl Ctx {
    fn server_of(&self, idx: usize) -> SocketAddr {
        self.servers[self.args.replica_of(idx)]
    }

    fn url(&self, idx: usize) -> String {
        match self.args.topics {
            Some(t) => format!(
                "ws://{}{}?topics=bench/{}",
                self.server_of(idx),
                self.ws_path,
                idx % t
            ),
            None => format!("ws://{}{}", self.server_of(idx), self.ws_path),
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
        .connect(ctx.server_of(idx))
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

/// A hello's (epoch, seq).
fn hello_info(b: &[u8]) -> Option<(String, u64)> {
    if !b.starts_with(HELLO_PREFIX) {
        return None;
    }
    let at = find_after(b, HELLO_PREFIX.len(), br#""epoch":""#)?;
    let len = b.get(at..)?.iter().position(|&c| c == b'"')?;
    let epoch = String::from_utf8_lossy(&b[at..at + len]).into_owned();
    let at = find_after(b, HELLO_PREFIX.len(), br#","seq":"#)?;
    Some((epoch, digits(b, at).0))
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
    /// Histogram slot of phase 0: replica * PHASES.
    slot: usize,
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
                record_latency(self.slot + phase, us);
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
        Ok(Some(Ok(Message::Text(text)))) => {
            ctx.hello_bytes.fetch_max(text.len(), Relaxed);
            hello_info(text.as_bytes())
        }
        _ => None,
    };
    drop(permit);
    let Some((epoch, hello)) = hello else {
        return fail("no hello frame within 30 s".into());
    };
    let replica = ctx.args.replica_of(idx);
    {
        let mut tally = ctx.epochs.lock().unwrap();
        tally.first[replica].get_or_insert_with(|| epoch.clone());
        let replicas = ctx.args.replicas;
        tally
            .counts
            .entry(epoch)
            .or_insert_with(|| vec![0; replicas])[replica] += 1;
    }
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
        slot: replica * PHASES,
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
    servers: Vec<SocketAddr>,
    start: Instant,
    /// `--hostile`: no request is sent, and none is waited for, after this;
    /// one still unanswered counts as failed, its RTT as its age then.
    cutoff: Option<Instant>,
    /// `--hostile`: keep (send time, RTT) of every request.
    log: bool,
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
    /// Requests sent to each replica, and how many were accepted (202).
    per_replica: Vec<(u64, u64)>,
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
    /// (send time, RTT) of every request, when PubConfig::log.
    log: Option<Vec<(Instant, Duration)>>,
    /// Events the schedule held: rate x duration.
    planned: u64,
    /// Requests still unanswered at the cutoff, and their events.
    unanswered: u64,
    unanswered_events: u64,
    /// Events of the schedule never sent: the cutoff came first.
    not_sent: u64,
    tick: Duration,
    /// From the scheduled start to the last response.
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

/// One request of a publisher.
struct Publish {
    replica: usize,
    server: SocketAddr,
    body: Bytes,
    topics: Vec<usize>,
    /// Slower than this counts as "had to wait" (the rate mode's tick).
    tick: Option<Duration>,
    /// No connection was free when it was due.
    waited: bool,
    /// See PubConfig::cutoff.
    cutoff: Option<Instant>,
}

/// One `POST /_switchyard/publish` on a kept connection: its status and body.
async fn post_publish(
    sender: &mut Sender,
    server: SocketAddr,
    body: Bytes,
) -> Result<(http::StatusCode, Bytes), hyper::Error> {
    let request = http::Request::post("/_switchyard/publish")
        .header(http::header::HOST, server.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a publish request from valid parts");
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Sends one publish and records the outcome; false when the connection
/// cannot be used again.
async fn publish_once(sender: &mut Sender, p: Publish, report: &Mutex<PubReport>) -> bool {
    let n = p.topics.len() as u64;
    let sent = Instant::now();
    let exchange = post_publish(sender, p.server, p.body);
    let (outcome, cut_off) = match p.cutoff {
        None => (exchange.await, false),
        Some(cutoff) => match tokio::time::timeout_at(cutoff, exchange).await {
            Ok(outcome) => (outcome, false),
            Err(_) => (Ok((http::StatusCode::GATEWAY_TIMEOUT, Bytes::new())), true),
        },
    };
    let rtt = sent.elapsed();
    let mut r = report.lock().unwrap();
    r.requests += 1;
    r.events_sent += n;
    r.per_replica[p.replica].0 += 1;
    if let Some(h) = r.rtt.as_mut() {
        h.record(rtt.as_micros() as u64);
    }
    if let Some(log) = r.log.as_mut() {
        log.push((sent, rtt));
    }
    if cut_off {
        r.unanswered += 1;
        r.unanswered_events += n;
        r.failed_events += n;
        if r.first_error.is_none() {
            r.first_error = Some(format!(
                "publish to replica {}: no answer within {:.1} s (the run's cutoff)",
                p.replica,
                rtt.as_secs_f64()
            ));
        }
        return false;
    }
    let slow = p.tick.is_some_and(|tick| rtt > tick);
    r.slow += u64::from(slow);
    r.waited_for_conn += u64::from(p.waited);
    r.had_to_wait += u64::from(slow || p.waited);
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
            r.per_replica[p.replica].1 += 1;
            r.accepted.extend(seqs.into_iter().zip(p.topics));
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
                        "publish to replica {} answered {status}: {}",
                        p.replica,
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ),
                    Err(e) => format!("publish to replica {} failed: {e}", p.replica),
                });
            }
        }
    }
    outcome.is_ok() && !sender.is_closed()
}

/// Runs the publisher on a thread of its own (so its timing never waits for
/// the clients' runtime) and waits for its report.
async fn publish_on_own_thread(config: PubConfig) -> PubReport {
    let (report_tx, report_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let _ = report_tx.send(run_publisher(config));
        })
        .expect("publisher thread");
    report_rx.await.unwrap_or_default()
}

fn run_publisher(config: PubConfig) -> PubReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("publisher runtime");
    if config.args.throughput {
        runtime.block_on(throughput_loop(config))
    } else {
        runtime.block_on(publish_loop(config))
    }
}

/// The open-loop schedule: `--rate` events/s in ticks, request k to
/// replica k mod N, each over a free keep-alive connection of that replica.
async fn publish_loop(config: PubConfig) -> PubReport {
    let args = &config.args;
    let replicas = config.servers.len();
    let tick = Duration::from_secs_f64((1.0 / args.rate).max(args.tick_ms / 1000.0));
    let report = Arc::new(Mutex::new(PubReport {
        tick,
        rtt: Some(Hist::new()),
        log: config.log.then(Vec::new),
        per_replica: vec![(0, 0); replicas],
        ..PubReport::default()
    }));
    let mut pools = Vec::with_capacity(replicas);
    for &server in &config.servers {
        let (free_tx, free_rx) = mpsc::unbounded_channel::<Sender>();
        for _ in 0..args.pool {
            match open_publish_conn(server).await {
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
        pools.push((free_tx, free_rx));
    }
    let total = (args.rate * args.duration).round() as u64;
    report.lock().unwrap().planned = total;
    let cutoff = config.cutoff;
    let n_ticks = (args.duration / tick.as_secs_f64()).round().max(1.0) as u64;
    let due_by = |i: u64| ((args.rate * tick.as_secs_f64() * i as f64).round() as u64).min(total);
    // data is {"t":<19 digits>,"p":"<pad>"}: 32 bytes around the pad
    let pad = "x".repeat(args.size.saturating_sub(32));
    let per_body = (args.max_body / (args.size + 80)).max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = 0u64;
    let mut request_no = 0usize;
    'ticks: for i in 0..n_ticks {
        let due = config.start + tick * i as u32;
        if cutoff.is_some_and(|c| due >= c) {
            break;
        }
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
            let replica = request_no % replicas;
            request_no += 1;
            let (free_tx, free_rx) = &mut pools[replica];
            let (mut sender, waited) = match free_rx.try_recv() {
                Ok(s) => (s, false),
                Err(_) => {
                    let free = match cutoff {
                        Some(c) => match tokio::time::timeout_at(c, free_rx.recv()).await {
                            Ok(free) => free,
                            Err(_) => break 'ticks,
                        },
                        None => free_rx.recv().await,
                    };
                    match free {
                        Some(s) => (s, true),
                        None => unreachable!("free_tx lives here"),
                    }
                }
            };
            let (body, topics) = publish_body(args, k, n, &pad);
            k += n;
            remaining -= n;
            let report = report.clone();
            let free_tx = free_tx.clone();
            let server = config.servers[replica];
            tasks.spawn(async move {
                let publish = Publish {
                    replica,
                    server,
                    body,
                    topics,
                    tick: Some(tick),
                    waited,
                    cutoff,
                };
                if publish_once(&mut sender, publish, &report).await {
                    let _ = free_tx.send(sender);
                } else if cutoff.is_some_and(|c| Instant::now() >= c) {
                    // past the cutoff nothing more is sent
                } else if let Ok(fresh) = open_publish_conn(server).await {
                    let _ = free_tx.send(fresh);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut r = report.lock().unwrap();
    r.not_sent = total.saturating_sub(k);
    r.elapsed = config.start.elapsed();
    std::mem::take(&mut *r)
}

/// `--throughput`: `--pool` connections per replica (interleaved, so the
/// requests alternate between replicas), each sending `--batch` events per
/// request back to back until `--duration` is over.
async fn throughput_loop(config: PubConfig) -> PubReport {
    let args = Arc::new(config.args.clone());
    let replicas = config.servers.len();
    let report = Arc::new(Mutex::new(PubReport {
        rtt: Some(Hist::new()),
        per_replica: vec![(0, 0); replicas],
        ..PubReport::default()
    }));
    let mut senders = Vec::new();
    for _ in 0..args.pool {
        for (replica, &server) in config.servers.iter().enumerate() {
            match open_publish_conn(server).await {
                Ok(sender) => senders.push((replica, server, sender)),
                Err(e) => {
                    let mut r = report.lock().unwrap();
                    r.first_error = Some(e);
                    return std::mem::take(&mut *r);
                }
            }
        }
    }
    let pad: Arc<str> = Arc::from("x".repeat(args.size.saturating_sub(32)));
    let end = config.start + Duration::from_secs_f64(args.duration);
    let next_event = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (replica, server, mut sender) in senders {
        let (args, pad, report, next_event) = (
            args.clone(),
            pad.clone(),
            report.clone(),
            next_event.clone(),
        );
        let start = config.start;
        tasks.spawn(async move {
            tokio::time::sleep_until(start).await;
            let batch = args.batch as u64;
            while Instant::now() < end {
                let first = next_event.fetch_add(batch, Relaxed);
                let (body, topics) = publish_body(&args, first, batch, &pad);
                let publish = Publish {
                    replica,
                    server,
                    body,
                    topics,
                    tick: None,
                    waited: false,
                    cutoff: None,
                };
                if !publish_once(&mut sender, publish, &report).await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match open_publish_conn(server).await {
                        Ok(fresh) => sender = fresh,
                        Err(_) => return,
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut r = report.lock().unwrap();
    r.ticks = 0;
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
    if (args.clients + args.pool * args.replicas + 64) as u64 > fd_limit {
        eprintln!(
            "loadgen: {} clients need more file descriptors than the limit of {fd_limit}",
            args.clients
        );
        std::process::exit(1);
    }
    HIST_SLOTS.store(args.replicas * PHASES, Relaxed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The servers are spawned from this (the main) thread inside block_on,
    // so their PR_SET_PDEATHSIG fires only when the whole program ends.
    let code = runtime.block_on(run(args, fd_limit));
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

/// Runs, then deletes the run's Redis keys (the servers are stopped by
/// then, so nothing writes them again).
async fn run(args: Args, fd_limit: u64) -> i32 {
    let (code, table) = run_servers(&args, fd_limit).await;
    let cleanup = match (&args.redis_url, &args.redis_prefix) {
        (Some(url), Some(prefix)) => Some(match redis_cleanup(url, prefix).await {
            Ok((deleted, 0)) => (true, format!("deleted {deleted} keys under {prefix}")),
            Ok((deleted, left)) => (
                false,
                format!("deleted {deleted} keys under {prefix}, but {left} are still there"),
            ),
            Err(e) => (
                false,
                format!("could not delete the keys under {prefix}: {e}"),
            ),
        }),
        _ => None,
    };
    match table {
        Some(mut table) => {
            if let Some((_, text)) = &cleanup {
                table.row("redis keys after the run", text.clone());
            }
            table.print();
        }
        None => {
            if let Some((_, text)) = &cleanup {
                eprintln!("loadgen: redis: {text}");
            }
        }
    }
    if cleanup.is_some_and(|c| !c.0) {
        return code.max(1);
    }
    code
}

async fn run_servers(args: &Args, fd_limit: u64) -> (i32, Option<Table>) {
    let mut servers: Vec<Server> = Vec::with_capacity(args.replicas);
    for replica in 0..args.replicas {
        match Server::start(args, replica) {
            Ok(server) => servers.push(server),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return (1, None); // Drop kills the ones already started
            }
        }
    }
    let mut redis = None;
    if let Some(url) = &args.redis_url {
        match redis_connection(url).await {
            Ok(connection) => redis = Some(connection),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return (1, None);
            }
        }
    }
    if args.retained > 0 {
        if let Err(e) = publish_retained(args, servers[0].addr).await {
            eprintln!("loadgen: --retained: {e}");
            return (1, None);
        }
    }
    let clk_tck = clock_ticks_per_sec();
    // What else keeps the cores busy (the servers are idle): a second of /proc/stat.
    let quiet0 = machine_jiffies();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let background = match (quiet0, machine_jiffies()) {
        (Some(a), Some(b)) if b.1 > a.1 => 100.0 * (b.0 - a.0) as f64 / (b.1 - a.1) as f64,
        _ => 0.0,
    };
    let rss_before = rss_sum(&servers);

    let (schedule_tx, schedule_rx) = watch::channel(None);
    let ctx = Arc::new(Ctx {
        ws_path: args
            .server_env("WEBSOCKET_PATH")
            .unwrap_or("/ws")
            .to_owned(),
        servers: servers.iter().map(|s| s.addr).collect(),
        sources: source_addresses(args.clients),
        ws_config: WebSocketConfig::default()
            .read_buffer_size(args.read_buffer)
            .write_buffer_size(0),
        stats: (0..args.clients).map(|_| ClientStats::new()).collect(),
        connect_gate: Semaphore::new(args.connect_concurrency),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
        hello_bytes: AtomicUsize::new(0),
        epochs: Mutex::new(EpochTally {
            first: vec![None; args.replicas],
            counts: BTreeMap::new(),
        }),
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
    let rss_connected = rss_sum(&servers);

    let mut table = Table::new(args, &servers, &ctx, fd_limit);
    table.head.push(format!(
        "background: {background:.0} % of {} cores busy before the run (other processes on this machine)",
        cores()
    ));
    table.row(
        "clients connected",
        format!(
            "{connected}/{} in {connect_secs:.1} s, from {} source address(es) {}..{}",
            args.clients,
            ctx.sources.len(),
            ctx.sources[0],
            if args.replicas > 1 {
                format!(
                    "; client i on replica i mod {} ({} each)",
                    args.replicas,
                    args.clients / args.replicas
                )
            } else {
                String::new()
            }
        ),
    );
    table.row(
        "hello frame",
        format!(
            "largest {} B{}",
            ctx.hello_bytes.load(Relaxed),
            if args.retained > 0 {
                format!(
                    " ({} retained topics of {} B data, published before the clients connected)",
                    args.retained, args.retained_size
                )
            } else {
                String::new()
            }
        ),
    );
    table.result("hello_bytes", ctx.hello_bytes.load(Relaxed).to_string());
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
            args,
            &servers,
            &mut table,
            rss_before,
            rss_connected,
            clk_tck,
            connected,
            per_conn,
        )
        .await
    } else if args.hostile {
        hostile_run(args, &servers, &ctx, &mut table, clk_tck, rss_connected).await
    } else {
        broadcast_run(
            args,
            &servers,
            &ctx,
            &schedule_tx,
            &mut table,
            &handles,
            rss_before,
            rss_connected,
            clk_tck,
            per_conn,
            redis.as_mut(),
        )
        .await
    };

    let mut all_alive = true;
    for (i, server) in servers.iter_mut().enumerate() {
        let alive = server.alive();
        all_alive &= alive;
        let stopped = server.stop();
        table.row(
            &if args.replicas > 1 {
                format!("server stop, replica {i}")
            } else {
                "server stop".to_owned()
            },
            format!(
                "{}{stopped}",
                if alive { "" } else { "DIED DURING THE RUN; " }
            ),
        );
        if !alive {
            eprintln!(
                "--- replica {i}: server log tail ({})\n{}",
                server.log.display(),
                server.log_tail()
            );
        } else {
            let _ = std::fs::remove_file(&server.log);
        }
    }
    for h in &handles {
        h.abort();
    }
    (if all_alive { code } else { 1 }, Some(table))
}

#[allow(clippy::too_many_arguments)]
async fn idle_run(
    args: &Args,
    servers: &[Server],
    table: &mut Table,
    rss_before: u64,
    rss_connected: u64,
    clk_tck: u64,
    connected: usize,
    per_conn: impl Fn(u64) -> f64,
) -> i32 {
    let cpu0 = CpuWindow::now(servers);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let cpu1 = CpuWindow::now(servers);
    let rss_end = rss_sum(servers);
    let secs = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    table.row("idle hold", format!("{:.1} s", secs));
    table.row(
        "server RSS",
        format!(
            "before connect {} / after connect {} / after hold {}{}",
            kib(rss_before),
            kib(rss_connected),
            kib(rss_end),
            if servers.len() > 1 {
                " (summed over the replicas)"
            } else {
                ""
            }
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
    table.result("mode", "idle".into());
    table.result("rss_per_conn_kib", format!("{at_connect:.2}"));
    0
}

/// Loss, gaps and duplicates of a set of clients (one replica's, or all).
#[derive(Default)]
struct Tally {
    clients: usize,
    expected: u64,
    missing: u64,
    lossy_clients: usize,
    gaps: u64,
    gap_seqs: u64,
    dups: u64,
    delivered: u64,
    frame_bytes: u64,
    behind: usize,
    closes: BTreeMap<u32, usize>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.clients += o.clients;
        self.expected += o.expected;
        self.missing += o.missing;
        self.lossy_clients += o.lossy_clients;
        self.gaps += o.gaps;
        self.gap_seqs += o.gap_seqs;
        self.dups += o.dups;
        self.delivered += o.delivered;
        self.frame_bytes += o.frame_bytes;
        self.behind += o.behind;
        for (code, n) in &o.closes {
            *self.closes.entry(*code).or_default() += n;
        }
    }

    fn loss_text(&self) -> String {
        format!(
            "{} missing of {} expected ({:.4} %), {} clients lost events",
            self.missing,
            self.expected,
            if self.expected > 0 {
                100.0 * self.missing as f64 / self.expected as f64
            } else {
                0.0
            },
            self.lossy_clients
        )
    }

    fn closes_text(&self) -> String {
        self.closes
            .iter()
            .map(|(code, n)| format!("{}: {n}", close_name(*code)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Clients whose connection ended.
    fn closed(&self) -> usize {
        self.closes
            .iter()
            .filter(|(code, _)| **code != 0)
            .map(|(_, n)| n)
            .sum()
    }
}

#[allow(clippy::too_many_arguments)]
async fn broadcast_run(
    args: &Args,
    servers: &[Server],
    ctx: &Arc<Ctx>,
    schedule_tx: &watch::Sender<Option<Schedule>>,
    table: &mut Table,
    handles: &[tokio::task::JoinHandle<()>],
    rss_before: u64,
    rss_connected: u64,
    clk_tck: u64,
    per_conn: impl Fn(u64) -> f64,
    mut redis: Option<&mut redis::aio::MultiplexedConnection>,
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

    // RSS (summed over the replicas) every 100 ms: (seconds since start, KiB)
    let sampling = Arc::new(AtomicU32::new(1));
    let samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampler = {
        let (sampling, samples) = (sampling.clone(), samples.clone());
        let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
        tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let mut every = tokio::time::interval(Duration::from_millis(100));
            while sampling.load(Relaxed) == 1 {
                every.tick().await;
                let rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
                samples
                    .lock()
                    .unwrap()
                    .push((start.elapsed().as_secs_f64(), rss));
            }
        })
    };

    let redis0 = match redis.as_deref_mut() {
        Some(connection) => redis_info(connection).await,
        None => None,
    };
    tokio::time::sleep_until(start).await;
    let cpu0 = CpuWindow::now(servers);
    let report = publish_on_own_thread(PubConfig {
        args: args.clone(),
        servers: servers.iter().map(|s| s.addr).collect(),
        start,
        cutoff: None,
        log: false,
    })
    .await;
    let publish_end = Instant::now();
    let cpu_pub = CpuWindow::now(servers);
    let redis_pub = match redis.as_deref_mut() {
        Some(connection) => redis_info(connection).await,
        None => None,
    };

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
    let is_behind = |i: usize| {
        let s = &ctx.stats[i];
        !ctx.is_stalled(i)
            && s.hello_seq.load(Relaxed) != NO_HELLO
            && s.close.load(Relaxed) == 0
            && s.last_seq.load(Relaxed) < target_seq(i)
    };

    // ---- drain: every live, non-stalled client has its last seq
    let drain_deadline = publish_end + Duration::from_secs_f64(args.drain);
    loop {
        let behind = (0..args.clients).filter(|&i| is_behind(i)).count();
        if behind == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = CpuWindow::now(servers);
    let redis1 = match redis {
        Some(connection) => redis_info(connection).await,
        None => None,
    };
    let drain_secs = cpu1.at.duration_since(publish_end).as_secs_f64();
    let window = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let rss_end = rss_sum(servers);
    let rss_end_each: Vec<u64> = servers
        .iter()
        .map(|s| rss_kib(s.pid).unwrap_or(0))
        .collect();

    // ---- snapshot the clients, per replica
    let mut tallies: Vec<Tally> = (0..args.replicas).map(|_| Tally::default()).collect();
    for (i, s) in ctx.stats.iter().enumerate() {
        let t = &mut tallies[args.replica_of(i)];
        let received = s.received.load(Relaxed);
        t.delivered += received;
        t.frame_bytes += s.bytes.load(Relaxed);
        let hello = s.hello_seq.load(Relaxed);
        if ctx.is_stalled(i) || hello == NO_HELLO {
            continue;
        }
        t.clients += 1;
        t.behind += usize::from(is_behind(i));
        *t.closes.entry(s.close.load(Relaxed)).or_default() += 1;
        let seqs = &seqs_by_topic[topic_of(i)];
        let want = (seqs.len() - seqs.partition_point(|&q| q <= hello)) as u64;
        let d = s.dups.load(Relaxed);
        let got = received - d;
        t.expected += want;
        let lost = want.saturating_sub(got);
        t.missing += lost;
        t.lossy_clients += usize::from(lost > 0);
        t.gaps += s.gaps.load(Relaxed);
        t.gap_seqs += s.gap_seqs.load(Relaxed);
        t.dups += d;
    }
    let mut total = Tally::default();
    for t in &tallies {
        total.add(t);
    }
    let delivered = total.delivered;
    let frame_avg = if delivered > 0 {
        total.frame_bytes as f64 / delivered as f64
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

    // ---- epochs: every hello on every replica, and every receipt, in one
    let (epoch_ok, epoch_text) = {
        let tally = ctx.epochs.lock().unwrap();
        let first: Vec<&str> = tally
            .first
            .iter()
            .map(|e| e.as_deref().unwrap_or("-"))
            .collect();
        // no subscribers (--throughput --clients 0): the receipts alone
        let no_hellos = tally.counts.is_empty();
        let same_first = no_hellos
            || tally
                .first
                .iter()
                .all(|e| e.is_some() && *e == tally.first[0]);
        let one = no_hellos || tally.counts.len() == 1;
        let receipts_agree = no_hellos
            || report
                .epochs
                .iter()
                .all(|e| Some(e) == tally.first[0].as_ref());
        let detail = tally
            .counts
            .iter()
            .map(|(e, per)| {
                format!(
                    "{e}: {} hellos",
                    per.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" + ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        (
            same_first && one && receipts_agree && report.epochs.len() <= 1,
            format!(
                "first hello per replica: {}; {detail}{}; publish receipts: {}",
                first.join(", "),
                if args.replicas > 1 {
                    " (per replica)"
                } else {
                    ""
                },
                if report.epochs.is_empty() {
                    "none".to_owned()
                } else {
                    report.epochs.join(", ")
                }
            ),
        )
    };

    // ---- the table
    let published = report.accepted.len() as u64;
    let pub_secs = report.elapsed.as_secs_f64();
    let events_per_s = if pub_secs > 0.0 {
        published as f64 / pub_secs
    } else {
        0.0
    };
    let epochs = if report.epochs.len() == 1 {
        "1 epoch".to_owned()
    } else {
        format!("{} EPOCHS", report.epochs.len())
    };
    let live = ctx.connected.load(Relaxed);
    if args.throughput {
        table.row(
            "offered load",
            format!(
                "as fast as possible for {} s: {} closed-loop connection(s) per replica x {} \
                 replica(s), {} events of {} B data per request; {live} subscribers",
                args.duration, args.pool, args.replicas, args.batch, args.size
            ),
        );
    } else {
        table.row(
            "offered load",
            format!(
                "{} ev/s x {} B data for {} s = {} events; x {live} clients = {:.0} deliveries/s",
                args.rate,
                args.size,
                args.duration,
                (args.rate * args.duration).round(),
                args.rate * live as f64
            ),
        );
    }
    table.row(
        "published",
        if args.throughput {
            format!(
                "{published} accepted ({epochs}), {} failed, in {} requests, {pub_secs:.2} s",
                report.failed_events, report.requests
            )
        } else {
            format!(
                "{published} accepted ({epochs}), {} failed, in {} requests over {} ticks of {:.0} ms, {pub_secs:.2} s",
                report.failed_events,
                report.requests,
                report.ticks,
                report.tick.as_secs_f64() * 1000.0,
            )
        },
    );
    if args.replicas > 1 {
        table.row(
            "published via",
            report
                .per_replica
                .iter()
                .enumerate()
                .map(|(i, (sent, ok))| format!("replica {i}: {ok}/{sent} requests accepted"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(e) = &report.first_error {
        table.row("publish error", e.clone());
    }
    if args.throughput {
        table.row(
            "publish throughput",
            format!(
                "{events_per_s:.0} accepted events/s ({:.0} requests/s of {} events; \
                 202s x batch / time to the last response)",
                report.per_replica.iter().map(|p| p.1).sum::<u64>() as f64 / pub_secs.max(1e-9),
                args.batch
            ),
        );
    } else {
        table.row(
            "publishes that had to wait",
            format!(
                "{} of {}  (no free connection: {}, took > 1 tick: {}; pool of {} per replica)",
                report.had_to_wait, report.requests, report.waited_for_conn, report.slow, args.pool
            ),
        );
    }
    table.row(
        "publish RTT",
        report.rtt.as_ref().map_or("-".into(), |h| h.summary_ms()),
    );
    if !args.throughput {
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
    }
    table.row(
        "delivered",
        format!(
            "{delivered} events, {:.0} ev/s over {window:.2} s (publish {:.2} s + drain {drain_secs:.2} s); avg frame {frame_avg:.0} B",
            delivered as f64 / window,
            publish_end.duration_since(cpu0.at).as_secs_f64()
        ),
    );
    if total.behind > 0 {
        table.row(
            "still behind at drain end",
            format!("{} clients (drain {} s)", total.behind, args.drain),
        );
    }
    table.row("loss (non-stalled clients)", total.loss_text());
    let gaps_text = |t: &Tally| {
        if args.topics.is_none() {
            format!(
                "{} gaps ({} seqs skipped) / {} duplicates or out of order",
                t.gaps, t.gap_seqs, t.dups
            )
        } else {
            format!(
                "gaps not checkable with --topics / {} duplicates or out of order",
                t.dups
            )
        }
    };
    table.row("gaps / duplicates by seq", gaps_text(&total));
    table.row("non-stalled clients at end", total.closes_text());

    let all = Hist::collect(None, None);
    table.row("latency publish->receive", all.summary_ms());
    let (before, during) = (Hist::collect(None, Some(0)), Hist::collect(None, Some(1)));
    if stalling {
        table.row("  others, before stall", before.summary_ms());
        table.row("  others, during stall", during.summary_ms());
    }

    let secs = |a: u64, b: u64| (b - a) as f64 / clk_tck as f64;
    if args.replicas > 1 {
        for (r, t) in tallies.iter().enumerate() {
            let (u, s) = (cpu0.servers[r], cpu1.servers[r]);
            table.row(
                &format!("replica {r}"),
                format!(
                    "{} clients; {}; {}; {}{}; latency {}; CPU {:.2} s; RSS at end {}",
                    t.clients,
                    t.loss_text(),
                    gaps_text(t),
                    t.closes_text(),
                    if t.behind > 0 {
                        format!(", {} behind at drain end", t.behind)
                    } else {
                        String::new()
                    },
                    Hist::collect(Some(r), None).summary_ms(),
                    secs(u.0, s.0) + secs(u.1, s.1),
                    kib(rss_end_each[r])
                ),
            );
        }
    }
    table.row("hello epochs", epoch_text);

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
             {:.2} us per delivered message{}",
            100.0 * server_cpu / window,
            per_msg(server_cpu),
            if args.replicas > 1 {
                " (summed over the replicas)"
            } else {
                ""
            }
        ),
    );
    if args.throughput {
        let pub_window = cpu_pub.at.duration_since(cpu0.at).as_secs_f64();
        let cpu = secs(cpu0.server.0, cpu_pub.server.0) + secs(cpu0.server.1, cpu_pub.server.1);
        table.row(
            "server CPU while publishing",
            format!(
                "{cpu:.2} s over {pub_window:.2} s = {:.0} % of a core; {:.2} us per accepted event \
                 (all replicas, fan-out included)",
                100.0 * cpu / pub_window,
                if published > 0 {
                    cpu * 1e6 / published as f64
                } else {
                    f64::NAN
                }
            ),
        );
    }
    let mut redis_cpu = None;
    let mut script_us_per_event = None;
    if let (Some(r0), Some(r1)) = (&redis0, &redis1) {
        let cpu = (r1.cpu.0 - r0.cpu.0) + (r1.cpu.1 - r0.cpu.1);
        redis_cpu = Some(cpu);
        let calls = r1.scripts.0.saturating_sub(r0.scripts.0);
        let usec = r1.scripts.1.saturating_sub(r0.scripts.1);
        let publishes = r1.publish.0.saturating_sub(r0.publish.0);
        let publish_usec = r1.publish.1.saturating_sub(r0.publish.1);
        if published > 0 {
            script_us_per_event = Some(usec as f64 / published as f64);
        }
        table.row(
            "redis",
            format!(
                "CPU {cpu:.2} s (user {:.2} + sys {:.2}) = {:.0} % of a core over {window:.2} s; \
                 scripts (EVAL/EVALSHA, all clients): {calls} calls, {:.1} ms = {:.1} us per call, \
                 {:.2} us per accepted event; PUBLISH {publishes} calls, {:.2} us each; \
                 {} clients connected (INFO, whole server: other users of this Redis count too)",
                r1.cpu.0 - r0.cpu.0,
                r1.cpu.1 - r0.cpu.1,
                100.0 * cpu / window,
                usec as f64 / 1000.0,
                if calls > 0 {
                    usec as f64 / calls as f64
                } else {
                    0.0
                },
                script_us_per_event.unwrap_or(f64::NAN),
                if publishes > 0 {
                    publish_usec as f64 / publishes as f64
                } else {
                    0.0
                },
                r1.clients
            ),
        );
        if let (true, Some(rp)) = (args.throughput, &redis_pub) {
            let pub_window = cpu_pub.at.duration_since(cpu0.at).as_secs_f64();
            let cpu = (rp.cpu.0 - r0.cpu.0) + (rp.cpu.1 - r0.cpu.1);
            table.row(
                "redis while publishing",
                format!(
                    "CPU {cpu:.2} s over {pub_window:.2} s = {:.0} % of a core; {:.2} us per accepted event",
                    100.0 * cpu / pub_window,
                    if published > 0 {
                        cpu * 1e6 / published as f64
                    } else {
                        f64::NAN
                    }
                ),
            );
        }
    }
    table.row(
        "loadgen CPU",
        format!(
            "{my_cpu:.2} s (user {my_user:.2} + sys {my_sys:.2}) = {:.0} % of a core; \
             {:.2} us per delivered message",
            100.0 * my_cpu / window,
            per_msg(my_cpu)
        ),
    );
    let (busy, total_jiffies) = (
        cpu1.machine.0 - cpu0.machine.0,
        cpu1.machine.1 - cpu0.machine.1,
    );
    let machine_busy = if total_jiffies > 0 {
        100.0 * busy as f64 / total_jiffies as f64
    } else {
        0.0
    };
    let saturated = machine_busy > 90.0;
    // What the rest of the machine did meanwhile: busy CPU time not spent in
    // the servers, this process or Redis (a compile or another benchmark
    // makes a run worthless; so does a Redis busy with other clients).
    let capacity = total_jiffies as f64 / clk_tck as f64;
    let others =
        (busy as f64 / clk_tck as f64 - server_cpu - my_cpu - redis_cpu.unwrap_or(0.0)).max(0.0);
    let others_pct = if capacity > 0.0 {
        100.0 * others / capacity
    } else {
        0.0
    };
    table.row(
        "machine",
        format!(
            "{machine_busy:.0} % busy over {} cores{}",
            cores(),
            if saturated {
                format!(
                    " — CPU-saturated: server(s){}, load generator and anything else compete for the cores{}",
                    if redis_cpu.is_some() { ", redis" } else { "" },
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
    table.row(
        "other processes",
        format!(
            "{others:.2} s of CPU = {others_pct:.0} % of the machine over the run (busy time - servers - loadgen{}){}",
            if redis_cpu.is_some() { " - redis" } else { "" },
            if others_pct > 10.0 {
                " — NOT A QUIET MACHINE: the figures above are disturbed"
            } else {
                ""
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
            "before connect {} / after connect {} / end {} / peak {}{}",
            kib(rss_before),
            kib(rss_connected),
            kib(rss_end),
            kib(peak),
            if args.replicas > 1 {
                " (summed over the replicas)"
            } else {
                ""
            }
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
    let (missing, gaps, dups) = (total.missing, total.gaps, total.dups);
    let zero_loss =
        missing == 0 && dups == 0 && gaps == 0 && published > 0 && report.failed_events == 0;
    if args.target_zero_loss {
        table.target(
            "zero loss",
            zero_loss,
            format!(
                "{missing} missing, {gaps} gaps, {dups} dups, {} publish failures",
                report.failed_events
            ),
        );
    }
    if args.replicas > 1 {
        table.target(
            "one epoch: first hello on every replica = every hello = every receipt",
            epoch_ok,
            if epoch_ok {
                ctx.epochs.lock().unwrap().first[0]
                    .clone()
                    .or_else(|| report.epochs.first().cloned())
                    .unwrap_or_default()
            } else {
                "see \"hello epochs\"".into()
            },
        );
    }
    if let Some(target) = args.target_events_per_s {
        table.target(
            &format!("accepted events/s >= {target}"),
            events_per_s >= target,
            format!("{events_per_s:.0} events/s"),
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

    // ---- one line for scripts
    let quantile = |q: f64| all.quantile(q).map_or("-".into(), |v| v.to_string());
    let results = [
        (
            "mode",
            if args.throughput {
                "throughput"
            } else {
                "rate"
            }
            .to_owned(),
        ),
        ("hub", args.hub_name().to_owned()),
        ("replicas", args.replicas.to_string()),
        ("clients", live.to_string()),
        ("published", published.to_string()),
        ("failed", report.failed_events.to_string()),
        ("events_per_s", format!("{events_per_s:.0}")),
        ("p50_us", quantile(0.5)),
        ("p99_us", quantile(0.99)),
        ("p999_us", quantile(0.999)),
        ("max_us", all.max.to_string()),
        ("missing", missing.to_string()),
        ("gaps", gaps.to_string()),
        ("dups", dups.to_string()),
        ("behind", total.behind.to_string()),
        ("closed", total.closed().to_string()),
        ("zero_loss", u8::from(zero_loss).to_string()),
        ("one_epoch", u8::from(epoch_ok).to_string()),
        ("server_cpu_s", format!("{server_cpu:.2}")),
        (
            "redis_cpu_s",
            redis_cpu.map_or("-".into(), |c| format!("{c:.2}")),
        ),
        (
            "script_us_per_event",
            script_us_per_event.map_or("-".into(), |c| format!("{c:.2}")),
        ),
        ("loadgen_cpu_s", format!("{my_cpu:.2}")),
        ("machine_busy_pct", format!("{machine_busy:.0}")),
        ("others_pct", format!("{others_pct:.0}")),
        (
            "rtt_p99_us",
            report
                .rtt
                .as_ref()
                .and_then(|h| h.quantile(0.99))
                .map_or("-".into(), |v| v.to_string()),
        ),
    ];
    for (k, v) in results {
        table.result(k, v);
    }
    0
}

// ---------------------------------------------------------------- retained state, hostile client

/// `--retained`: N retained topics of `--retained-size` bytes of data,
/// published to `server` one request each before any client connects, so
/// every hello carries them (20 x 3072 B: the issue's 60 KB hello).
async fn publish_retained(args: &Args, server: SocketAddr) -> Result<(), String> {
    let mut sender = open_publish_conn(server).await?;
    // data is {"p":"<pad>"}: 8 bytes around the pad
    let pad = "x".repeat(args.retained_size.saturating_sub(8));
    for i in 0..args.retained {
        let topic = format!("bench/retained/{i}");
        let body = format!(r#"{{"topic":"{topic}","retain":true,"data":{{"p":"{pad}"}}}}"#);
        let exchange = post_publish(&mut sender, server, Bytes::from(body));
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| format!("publish of {topic}: no answer within 10 s"))?
            .map_err(|e| format!("publish of {topic}: {e}"))?;
        if status != http::StatusCode::ACCEPTED {
            return Err(format!(
                "publish of {topic} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
    }
    Ok(())
}

/// `n` in base 36: short, distinct pattern levels.
fn base36(mut n: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().map(|&d| char::from(d)).collect()
}

/// The flooder's subscribe frames: `frames` frames of `patterns` distinct,
/// valid patterns `flood/<n>/+/x` each (n counts on across the frames, in
/// base 36 so that 3,600 of them fit a 64 KiB frame). None matches a topic
/// anyone publishes to.
fn flood_frames(frames: usize, patterns: usize) -> Vec<String> {
    (0..frames)
        .map(|f| {
            let mut s = String::with_capacity(32 + patterns * 17);
            s.push_str(r#"{"type":"subscribe","topics":["#);
            for k in 0..patterns {
                if k > 0 {
                    s.push(',');
                }
                let _ = write!(s, r#""flood/{}/+/x""#, base36(f * patterns + k));
            }
            s.push_str("]}");
            s
        })
        .collect()
}

/// What the flooder saw; times are from the moment it started sending.
#[derive(Default)]
struct FloodOutcome {
    /// Frames written, and when the last write returned.
    sent: usize,
    all_sent: Option<Duration>,
    send_error: Option<String>,
    /// Answers: `subscribed` and `error` frames, and the first error's text.
    subscribed: usize,
    errors: usize,
    first_error: Option<String>,
    /// When the last answer arrived.
    last_answer: Option<Duration>,
    /// Event frames (it is subscribed to everything, like any anonymous
    /// client that names no topics) and anything else.
    events: u64,
    other: usize,
    /// See CLOSE_*; 0 while open.
    close: u32,
}

/// The flooder's connection: plain `client_async`, so no Origin header and
/// no token; no `topics` (everything). Returns once its hello arrived.
async fn connect_flooder(ctx: &Ctx) -> Result<Ws, String> {
    let server = ctx.servers[0];
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{server}{}", ctx.ws_path);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if hello_info(text.as_bytes()).is_some() => Ok(ws),
        _ => Err("no hello frame within 30 s".into()),
    }
}

/// Sends every frame as fast as the socket takes them from `at` on, and
/// reads (and classifies) everything the server answers, until aborted.
fn start_flood(
    ws: Ws,
    frames: Vec<String>,
    at: Instant,
    outcome: &Arc<Mutex<FloodOutcome>>,
) -> [tokio::task::JoinHandle<()>; 2] {
    use futures_util::SinkExt;
    let (mut sink, mut stream) = ws.split();
    let reader = {
        let outcome = outcome.clone();
        tokio::spawn(async move {
            let close = loop {
                let Some(msg) = stream.next().await else {
                    break CLOSE_EOF;
                };
                let text = match msg {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(frame)) => {
                        break frame.map_or(1005, |f| u32::from(u16::from(f.code)))
                    }
                    Ok(_) => continue,
                    Err(_) => break CLOSE_ERROR,
                };
                let b = text.as_bytes();
                let mut o = outcome.lock().unwrap();
                if b.starts_with(EVENT_PREFIX) {
                    o.events += 1;
                } else if b.starts_with(br#"{"type":"subscribed""#) {
                    o.subscribed += 1;
                    o.last_answer = Some(at.elapsed());
                } else if b.starts_with(br#"{"type":"error""#) {
                    o.errors += 1;
                    o.last_answer = Some(at.elapsed());
                    if o.first_error.is_none() {
                        let message = serde_json::from_slice::<serde_json::Value>(b)
                            .ok()
                            .and_then(|v| v["message"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        o.first_error = Some(message.chars().take(200).collect());
                    }
                } else {
                    o.other += 1;
                }
            };
            outcome.lock().unwrap().close = close;
        })
    };
    let writer = {
        let outcome = outcome.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            for frame in frames {
                if let Err(e) = sink.send(Message::text(frame)).await {
                    outcome.lock().unwrap().send_error = Some(e.to_string());
                    break;
                }
                outcome.lock().unwrap().sent += 1;
            }
            outcome.lock().unwrap().all_sent = Some(at.elapsed());
            // keep the connection open until the run aborts this task
            std::future::pending::<()>().await;
        })
    };
    [reader, writer]
}

/// One phase of `--hostile`: the open-loop schedule for `--duration` from
/// `start` (nothing sent or waited for after `--duration + --drain`), then
/// up to `--drain` s for every connected client to have the last seq.
struct Phase {
    report: PubReport,
    cpu0: CpuWindow,
    cpu1: CpuWindow,
    /// Connected clients without the phase's last seq at the end.
    behind: usize,
    rss_end: u64,
}

async fn hostile_phase(args: &Args, servers: &[Server], ctx: &Ctx, start: Instant) -> Phase {
    let cutoff = start + Duration::from_secs_f64(args.duration + args.drain);
    tokio::time::sleep_until(start).await;
    let cpu0 = CpuWindow::now(servers);
    let report = publish_on_own_thread(PubConfig {
        args: args.clone(),
        servers: servers.iter().map(|s| s.addr).collect(),
        start,
        cutoff: Some(cutoff),
        log: true,
    })
    .await;
    let last = report.accepted.iter().map(|a| a.0).max().unwrap_or(0);
    let behind = || {
        ctx.stats
            .iter()
            .filter(|s| {
                s.hello_seq.load(Relaxed) != NO_HELLO
                    && s.close.load(Relaxed) == 0
                    && s.last_seq.load(Relaxed) < last
            })
            .count()
    };
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    while behind() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Phase {
        report,
        cpu0,
        cpu1: CpuWindow::now(servers),
        behind: behind(),
        rss_end: rss_sum(servers),
    }
}

/// A phase's CPU: (text, share of the machine other processes used, %).
fn phase_cpu(p: &Phase, clk_tck: u64) -> (String, f64) {
    let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / clk_tck as f64;
    let (a, b) = (&p.cpu0, &p.cpu1);
    let window = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let server = secs(a.server.0, b.server.0) + secs(a.server.1, b.server.1);
    let me = secs(a.me.0, b.me.0) + secs(a.me.1, b.me.1);
    let busy = b.machine.0.saturating_sub(a.machine.0);
    let total = b.machine.1.saturating_sub(a.machine.1).max(1);
    let busy_pct = 100.0 * busy as f64 / total as f64;
    let others = (busy as f64 / clk_tck as f64 - server - me).max(0.0);
    let others_pct = 100.0 * others / (total as f64 / clk_tck as f64);
    (
        format!(
            "server {server:.2} s = {:.0} % of a core, loadgen {me:.2} s over {window:.1} s; \
             machine {busy_pct:.0} % busy over {} cores, other processes {others_pct:.0} % of it{}",
            100.0 * server / window,
            cores(),
            if others_pct > 10.0 {
                " — NOT A QUIET MACHINE"
            } else {
                ""
            }
        ),
        others_pct,
    )
}

/// `--hostile`: a quiet phase, then the same phase while one anonymous
/// WebSocket client floods subscribe frames; publish RTT p50/p99 of both,
/// how the flooder was answered, and whether the clients lost events.
async fn hostile_run(
    args: &Args,
    servers: &[Server],
    ctx: &Arc<Ctx>,
    table: &mut Table,
    clk_tck: u64,
    rss_connected: u64,
) -> i32 {
    let frames = flood_frames(args.flood_frames, args.flood_patterns);
    let largest = frames.iter().map(String::len).max().unwrap_or(0);
    let limit: usize = args
        .server_env("MAX_MESSAGE_BYTES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(65_536);
    if largest > limit {
        table.row(
            "flood",
            format!(
                "NOT RUN: a frame of {largest} B exceeds MAX_MESSAGE_BYTES ({limit}): \
                 fewer --flood-patterns"
            ),
        );
        return 1;
    }
    let live = ctx.connected.load(Relaxed);
    table.row(
        "offered load",
        format!(
            "two phases of {} s, each {} ev/s x {} B data to {live} clients subscribed to \
             everything: quiet, then the same under flood; nothing is sent or awaited after \
             {} s from a phase's start",
            args.duration,
            args.rate,
            args.size,
            args.duration + args.drain
        ),
    );

    // ---- quiet
    let quiet = hostile_phase(
        args,
        servers,
        ctx,
        Instant::now() + Duration::from_millis(300),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // ---- flood: the flooder connects first, floods a little into the phase
    let ws = match connect_flooder(ctx).await {
        Ok(ws) => ws,
        Err(e) => {
            table.row("flooder", format!("could not connect: {e}"));
            return 1;
        }
    };
    let lead = Duration::from_millis(500);
    let start = Instant::now() + lead;
    // latencies of events published from here on go to phase 1
    ctx.stall_wall_ns
        .store(wall_ns() + lead.as_nanos() as u64, Relaxed);
    let flood_offset = Duration::from_secs_f64(args.duration / 10.0).min(Duration::from_secs(1));
    let flood_at = start + flood_offset;
    let outcome = Arc::new(Mutex::new(FloodOutcome::default()));
    let flooder = start_flood(ws, frames, flood_at, &outcome);
    let flood = hostile_phase(args, servers, ctx, start).await;
    // up to --drain s more for the answers to the rest of the flood
    let answers_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let flood_over = || {
        let o = outcome.lock().unwrap();
        o.subscribed + o.errors >= args.flood_frames || o.close != 0 || o.send_error.is_some()
    };
    while !flood_over() && Instant::now() < answers_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after_answers = rss_sum(servers);
    for task in &flooder {
        task.abort();
    }
    let o = std::mem::take(&mut *outcome.lock().unwrap());

    // ---- the flood and its answers
    table.row(
        "flood",
        format!(
            "{} subscribe frames x {} distinct patterns flood/<n>/+/x ({} in all), largest frame \
             {largest} B, from one anonymous WebSocket client (no Origin, no token, no topics), \
             starting {:.1} s into the flood phase",
            args.flood_frames,
            args.flood_patterns,
            args.flood_frames * args.flood_patterns,
            flood_offset.as_secs_f64()
        ),
    );
    table.row(
        "flood sent",
        format!(
            "{}/{} frames written{}{}",
            o.sent,
            args.flood_frames,
            o.all_sent.map_or(String::new(), |d| format!(
                " in {} ms",
                ms(d.as_micros() as u64)
            )),
            o.send_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (write failed: {e})"))
        ),
    );
    table.row(
        "flooder answered",
        format!(
            "{}/{} frames answered{}: {} subscribed, {} error{}; last answer {}; {} events, \
             {} other frames; connection at the end: {}",
            o.subscribed + o.errors,
            args.flood_frames,
            if o.subscribed + o.errors < args.flood_frames {
                format!(
                    " (the rest still unanswered {} s after the flood phase)",
                    args.drain
                )
            } else {
                String::new()
            },
            o.subscribed,
            o.errors,
            o.first_error
                .as_ref()
                .map_or(String::new(), |m| format!(" (first: {m:?})")),
            o.last_answer.map_or("none".into(), |d| format!(
                "{:.2} s after the first frame",
                d.as_secs_f64()
            )),
            o.events,
            o.other,
            if o.close == 0 {
                "open".to_owned()
            } else {
                format!("CLOSED ({})", close_name(o.close))
            }
        ),
    );

    // ---- publishes, quiet vs flood
    let published_text = |p: &PubReport| {
        format!(
            "{}/{} accepted, {} failed ({} unanswered at the cutoff), {} never sent; \
             {} of {} requests had to wait",
            p.accepted.len(),
            p.planned,
            p.failed_events,
            p.unanswered_events,
            p.not_sent,
            p.had_to_wait,
            p.requests
        )
    };
    let rtt_text = |p: &PubReport| p.rtt.as_ref().map_or("-".into(), |h| h.summary_ms());
    table.row("quiet: published", published_text(&quiet.report));
    table.row("quiet: publish RTT", rtt_text(&quiet.report));
    table.row("flood: published", published_text(&flood.report));
    table.row(
        "flood: publish RTT",
        rtt_text(&flood.report)
            + if flood.report.unanswered > 0 {
                "  (unanswered ones count at their age at the cutoff: a lower bound)"
            } else {
                ""
            },
    );
    // the publishes sent while the server was answering the flood
    let window_end = match (o.last_answer, o.sent == args.flood_frames) {
        (Some(d), true) if o.subscribed + o.errors >= args.flood_frames => flood_at + d,
        _ => flood.cpu1.at,
    };
    let mut in_window = Hist::new();
    for &(sent, rtt) in flood.report.log.iter().flatten() {
        if sent >= flood_at && sent <= window_end {
            in_window.record(rtt.as_micros() as u64);
        }
    }
    table.row(
        "flood: RTT while answering",
        format!(
            "publishes sent between the first flood frame and its last answer ({:.2} s): {}",
            window_end.saturating_duration_since(flood_at).as_secs_f64(),
            in_window.summary_ms()
        ),
    );
    let (lat_quiet, lat_flood) = (Hist::collect(None, Some(0)), Hist::collect(None, Some(1)));
    table.row("quiet: publish->receive", lat_quiet.summary_ms());
    table.row("flood: publish->receive", lat_flood.summary_ms());

    // ---- the clients, over both phases
    let mut seqs: Vec<u64> = quiet
        .report
        .accepted
        .iter()
        .chain(&flood.report.accepted)
        .map(|a| a.0)
        .collect();
    seqs.sort_unstable();
    let mut total = Tally::default();
    for s in &ctx.stats {
        let hello = s.hello_seq.load(Relaxed);
        if hello == NO_HELLO {
            continue;
        }
        let received = s.received.load(Relaxed);
        total.clients += 1;
        total.delivered += received;
        *total.closes.entry(s.close.load(Relaxed)).or_default() += 1;
        let want = (seqs.len() - seqs.partition_point(|&q| q <= hello)) as u64;
        let dups = s.dups.load(Relaxed);
        let lost = want.saturating_sub(received - dups);
        total.expected += want;
        total.missing += lost;
        total.lossy_clients += usize::from(lost > 0);
        total.gaps += s.gaps.load(Relaxed);
        total.gap_seqs += s.gap_seqs.load(Relaxed);
        total.dups += dups;
    }
    table.row(
        "loss (both phases)",
        format!(
            "{}; {} gaps ({} seqs skipped), {} duplicates{}",
            total.loss_text(),
            total.gaps,
            total.gap_seqs,
            total.dups,
            if quiet.behind + flood.behind > 0 {
                format!(
                    "; still behind at drain end: {} after quiet, {} after flood (count as missing)",
                    quiet.behind, flood.behind
                )
            } else {
                String::new()
            }
        ),
    );
    table.row("clients at end", total.closes_text());
    let (quiet_cpu, quiet_others) = phase_cpu(&quiet, clk_tck);
    let (flood_cpu, flood_others) = phase_cpu(&flood, clk_tck);
    table.row("quiet: CPU", quiet_cpu);
    table.row("flood: CPU", flood_cpu);
    table.row(
        "server RSS",
        format!(
            "after connect {} / after quiet {} / after flood phase {} / after the flood's answers {}",
            kib(rss_connected),
            kib(quiet.rss_end),
            kib(flood.rss_end),
            kib(rss_after_answers)
        ),
    );

    // ---- targets
    let p = |r: &PubReport, q: f64| r.rtt.as_ref().and_then(|h| h.quantile(q));
    let (q99, f99) = (p(&quiet.report, 0.99), p(&flood.report, 0.99));
    let ratio = match (q99, f99) {
        (Some(q), Some(f)) => Some(f as f64 / q.max(1) as f64),
        _ => None,
    };
    let complete = flood.report.failed_events == 0 && flood.report.not_sent == 0;
    if let Some(target) = args.target_flood_ratio {
        table.target(
            &format!("publish RTT p99 under flood <= {target}x quiet, every publish answered"),
            complete && ratio.is_some_and(|r| r <= target),
            match (q99, f99, ratio) {
                (Some(q), Some(f), Some(r)) => format!(
                    "quiet {} ms, flood {} ms = {r:.2}x{}",
                    ms(q),
                    ms(f),
                    if complete {
                        String::new()
                    } else {
                        format!(
                            "; {} events failed, {} never sent",
                            flood.report.failed_events, flood.report.not_sent
                        )
                    }
                ),
                _ => "no samples".into(),
            },
        );
    }
    let failed = quiet.report.failed_events + flood.report.failed_events;
    let zero_loss = total.missing == 0 && total.gaps == 0 && total.dups == 0 && failed == 0;
    if args.target_zero_loss {
        table.target(
            "zero loss (both phases)",
            zero_loss,
            format!(
                "{} missing, {} gaps, {} dups, {failed} publish failures",
                total.missing, total.gaps, total.dups
            ),
        );
    }
    let us = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let results = [
        ("mode", "hostile".to_owned()),
        ("clients", live.to_string()),
        ("quiet_published", quiet.report.accepted.len().to_string()),
        ("flood_published", flood.report.accepted.len().to_string()),
        ("planned", flood.report.planned.to_string()),
        ("quiet_rtt_p50_us", us(p(&quiet.report, 0.5))),
        ("quiet_rtt_p99_us", us(q99)),
        ("flood_rtt_p50_us", us(p(&flood.report, 0.5))),
        ("flood_rtt_p99_us", us(f99)),
        (
            "flood_ratio",
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
        ),
        ("flood_subscribed", o.subscribed.to_string()),
        ("flood_errors", o.errors.to_string()),
        (
            "flood_last_answer_s",
            o.last_answer
                .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
        ),
        ("flood_closed", u8::from(o.close != 0).to_string()),
        ("missing", total.missing.to_string()),
        ("zero_loss", u8::from(zero_loss).to_string()),
        ("others_pct_quiet", format!("{quiet_others:.0}")),
        ("others_pct_flood", format!("{flood_others:.0}")),
    ];
    for (k, v) in results {
        table.result(k, v);
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
    /// `key=value` pairs of the last line, for scripts.
    results: Vec<(String, String)>,
}

/// A Redis URL without its password, for printing.
fn masked_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Table {
    fn new(args: &Args, servers: &[Server], ctx: &Ctx, fd_limit: u64) -> Table {
        let hub = match &args.redis_url {
            Some(_) => format!(", Redis, {} replica(s)", args.replicas),
            None => String::new(),
        };
        let title = args.label.clone().unwrap_or_else(|| {
            if args.idle {
                format!("{} idle connections{hub}", args.clients)
            } else if args.throughput {
                format!(
                    "publish throughput, {} B events in batches of {}, {} subscribers{hub}",
                    args.size, args.batch, args.clients
                )
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
                ) + &hub
            }
        });
        let extra = args
            .server_env
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect::<String>();
        let redis = match (&args.redis_url, &args.redis_prefix) {
            (Some(url), Some(prefix)) => {
                format!(" REDIS_URL={} REDIS_PREFIX={prefix}", masked_url(url))
            }
            _ => String::new(),
        };
        let mut head = vec![format!("command: {}", args.command_line())];
        for (i, server) in servers.iter().enumerate() {
            head.push(format!(
                "{}: {} pid {} on {} (HOST=127.0.0.1 RUST_LOG=warn MAX_CONNECTIONS={}{extra}{redis})",
                if servers.len() > 1 {
                    format!("replica {i}")
                } else {
                    "server".to_owned()
                },
                server.bin.display(),
                server.pid,
                server.addr,
                (args.clients * 2).max(1_000_000)
            ));
        }
        head.push(format!(
            "loadgen: 2 tokio workers + 1 publisher thread, fd limit {fd_limit}, read buffer {} B/client, {} cores",
            ctx.args.read_buffer,
            cores()
        ));
        Table {
            title,
            head,
            rows: Vec::new(),
            targets: Vec::new(),
            results: Vec::new(),
        }
    }

    fn row(&mut self, name: &str, value: String) {
        self.rows.push((name.to_owned(), value));
    }

    fn result(&mut self, key: &str, value: String) {
        self.results.push((key.to_owned(), value));
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
        if !self.results.is_empty() {
            let line = self
                .results
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace(char::is_whitespace, "_")))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(out, "result: {line}");
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
    assert_eq!(hello_info(hello), Some(("e1".to_owned(), 41)));
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
        topics: Some(3),
        stall_rcvbuf: 0,
        pool: 1,
        connect_concurrency: 1,
        read_buffer: 4096,
        drain: 1.0,
        replicas: 2,
        ..Args::defaults()
    };
    assert_eq!((args.replica_of(0), args.replica_of(3)), (0, 1));
    assert_eq!(
        masked_url("redis://user:secret@127.0.0.1:6379/0"),
        "redis://***@127.0.0.1:6379/0"
    );
    assert_eq!(
        masked_url("redis://127.0.0.1:6379"),
        "redis://127.0.0.1:6379"
    );
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

    // the flood: valid subscribe frames of distinct patterns that fit the
    // default MAX_MESSAGE_BYTES at the default 3,600 per frame
    assert_eq!(
        [base36(0), base36(35), base36(36), base36(107_999)],
        ["0", "z", "10", "2bbz"]
    );
    let frames = flood_frames(3, 3600);
    let mut seen = std::collections::HashSet::new();
    for frame in &frames {
        assert!(frame.len() <= 65_536, "flood frame of {} B", frame.len());
        let v: serde_json::Value = serde_json::from_str(frame).expect("flood frame is JSON");
        assert_eq!(v["type"], "subscribe");
        let topics = v["topics"].as_array().expect("topics");
        assert_eq!(topics.len(), 3600);
        for t in topics {
            let t = t.as_str().expect("a string");
            assert!(t.starts_with("flood/") && t.ends_with("/+/x"), "{t}");
            assert!(seen.insert(t.to_owned()), "{t} twice");
        }
    }
    assert!(flood_frames(30, 3600).iter().all(|f| f.len() <= 65_536));
}
