//! Logging never blocks: with stdout a pipe nobody reads, the gateway keeps
//! answering and publishing as promptly as with a reader, and counts the
//! lines it drops (`switchyard_log_lines_dropped_total`).
//!
//! The gateway is spawned here (not through `support::Gateway`, which reads
//! stdout to the end): the test reads its first lines to find the port and
//! then, in the stalled run, never reads again. The log is filled by a
//! chatty dashboard (DASHBOARD_COMMAND printing more lines than the queue
//! holds, each forwarded as a log event) and by the requests themselves
//! (RUST_LOG=debug logs each connection and publish).

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{dead_port, get, is_listening_line, post, text_body};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Lines the dashboard prints at once: more than the log queue holds.
const FLOOD_LINES: u64 = 200_000;
/// Requests measured in each run (a publish and a `/health` each round).
const ROUNDS: usize = 200;
/// A request that takes this long means the gateway is stuck.
const STUCK: Duration = Duration::from_secs(10);

struct Run {
    child: Child,
    addr: SocketAddr,
    /// Held, never read again, in the stalled run.
    _stdout: Option<BufReader<ChildStdout>>,
    /// Lines read so far, in the read run.
    lines_read: Arc<AtomicU64>,
}

async fn start(keep_reading: bool) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .env("DASHBOARD_URL", format!("http://127.0.0.1:{}", dead_port()))
        .env(
            "DASHBOARD_COMMAND",
            format!("seq 1 {FLOOD_LINES}; exec sleep 600"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).await.unwrap() > 0,
                "no listening line"
            );
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if is_listening_line(&value) {
                let port: u16 = value["addr"]
                    .as_str()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
        }
    })
    .await
    .expect("gateway did not start");
    let lines_read = Arc::new(AtomicU64::new(0));
    let stdout = if keep_reading {
        let count = lines_read.clone();
        tokio::spawn(async move {
            let mut lines = stdout.lines();
            while let Ok(Some(_)) = lines.next_line().await {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        None
    } else {
        Some(stdout)
    };
    Run {
        child,
        addr,
        _stdout: stdout,
        lines_read,
    }
}

impl Run {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn metric(&self, name: &str) -> u64 {
        let response = tokio::time::timeout(STUCK, get(&self.url("/_switchyard/metrics")))
            .await
            .expect("metrics did not answer: the gateway is stuck");
        assert_eq!(response.status(), 200);
        text_body(response)
            .await
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics"))
    }

    /// Round trips of a publish and a `/health` (new connections, so each
    /// logs its own lines); returns the sorted latencies.
    async fn measure(&self) -> Vec<Duration> {
        let mut took = Vec::with_capacity(ROUNDS * 2);
        for round in 0..ROUNDS {
            let started = Instant::now();
            let body = format!(r#"{{"topic":"log/test","data":{round}}}"#);
            let response =
                tokio::time::timeout(STUCK, post(&self.url("/_switchyard/publish"), body))
                    .await
                    .unwrap_or_else(|_| panic!("publish {round} stuck for {STUCK:?}"));
            assert_eq!(response.status(), 202);
            took.push(started.elapsed());

            let started = Instant::now();
            let response = tokio::time::timeout(STUCK, get(&self.url("/health")))
                .await
                .unwrap_or_else(|_| panic!("/health {round} stuck for {STUCK:?}"));
            assert!(matches!(response.status().as_u16(), 200 | 503));
            took.push(started.elapsed());
        }
        took.sort();
        took
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_drops_and_counts_lines_and_never_blocks_the_gateway() {
    // Quiet run: stdout read as fast as it comes.
    let mut read = start(true).await;
    let flood_seen = Instant::now();
    while read.lines_read.load(Ordering::Relaxed) < FLOOD_LINES {
        assert!(
            flood_seen.elapsed() < Duration::from_secs(120),
            "the dashboard's lines did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = read.measure().await;
    let dropped_read = read.metric("switchyard_log_lines_dropped_total").await;
    let _ = read.child.kill().await;

    // Stalled run: after the listening line, stdout is never read again.
    let mut stalled = start(false).await;
    let waited = Instant::now();
    loop {
        if stalled.metric("switchyard_log_lines_dropped_total").await > 0 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "no line was dropped (is stdout still blocking?)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blocked = stalled.measure().await;
    let dropped = stalled.metric("switchyard_log_lines_dropped_total").await;
    let _ = stalled.child.kill().await;

    let (quiet_p50, quiet_p99) = (percentile(&quiet, 0.5), percentile(&quiet, 0.99));
    let (blocked_p50, blocked_p99) = (percentile(&blocked, 0.5), percentile(&blocked, 0.99));
    println!(
        "stdout read:    p50 {quiet_p50:?} p99 {quiet_p99:?}, dropped lines {dropped_read}\n\
         stdout stalled: p50 {blocked_p50:?} p99 {blocked_p99:?}, dropped lines {dropped}"
    );
    assert!(dropped > 0);
    // Generous: the machine is shared; a blocked logger would hang instead.
    let bound = |quiet: Duration| quiet * 5 + Duration::from_millis(250);
    assert!(
        blocked_p50 <= bound(quiet_p50),
        "p50 {blocked_p50:?} with stdout stalled vs {quiet_p50:?}"
    );
    assert!(
        blocked_p99 <= bound(quiet_p99),
        "p99 {blocked_p99:?} with stdout stalled vs {quiet_p99:?}"
    );
}
