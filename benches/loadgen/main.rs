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
//! `--accept`: opens `--clients` WebSockets as fast as the server takes
//! them (`--connect-concurrency` in flight, each done at its hello, all kept
//! open), and reports connections/s and server CPU per accepted connection.
//!
//! `--server node:SCRIPT`: the server under test is a peer (benches/peers/,
//! uWebSockets.js or Node `ws` speaking the subset of the protocol used here)
//! instead of switchyard; started, probed and measured the same way.
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
//!
//! Modules: `main` (this: start the servers, pick the scenario, clean up);
//! one per scenario, `broadcast` (the default, with `--stall`,
//! `--replicas`, `--throughput`), `idle`, `accept` and `hostile`; shared by them,
//! `args`, `server` (the server under test), `client` (WebSocket clients
//! and their counters), `publisher` (the publish schedule), `hist`
//! (latency histograms), `machine` (CPU / RSS readings), `redis_admin`
//! (INFO and key cleanup) and `table` (the report); `self_check`.

mod accept;
mod args;
mod broadcast;
mod client;
mod hist;
mod hostile;
mod idle;
mod machine;
mod publisher;
mod redis_admin;
mod self_check;
mod server;
mod table;

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

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

use accept::*;
use args::*;
use broadcast::*;
use client::*;
use hist::*;
use hostile::*;
use idle::*;
use machine::*;
use publisher::*;
use redis_admin::*;
use self_check::*;
use server::*;
use table::*;

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

    if args.accept {
        let mut table = Table::new(args, &servers, &ctx, fd_limit);
        table.head.push(format!(
            "background: {background:.0} % of {} cores busy before the run (other processes on this machine)",
            cores()
        ));
        let code = accept_run(args, &servers, &ctx, &mut table, clk_tck, rss_before).await;
        let all_alive = stop_servers(args, &mut servers, &mut table);
        return (if all_alive { code } else { 1 }, Some(table));
    }

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

    let all_alive = stop_servers(args, &mut servers, &mut table);
    for h in &handles {
        h.abort();
    }
    (if all_alive { code } else { 1 }, Some(table))
}

/// Stops every server, with a row each saying how; false if one had died.
fn stop_servers(args: &Args, servers: &mut [Server], table: &mut Table) -> bool {
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
    all_alive
}
