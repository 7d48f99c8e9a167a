//! Reading the machine and the processes: CPU ticks, RSS, cores, a CPU window, a bare HTTP GET.

use super::*;

/// `+= n` on a counter that only one task writes: a plain load and store,
/// no locked instruction.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

pub(crate) fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------- /proc

/// (utime, stime) of a process ("self" or a pid), in clock ticks.
pub(crate) fn cpu_ticks(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after "pid (comm) " the fields start at 3; utime is 14, stime 15
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
pub(crate) fn machine_jiffies() -> Option<(u64, u64)> {
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

pub(crate) fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time of the servers and of this process over a window.
pub(crate) struct CpuWindow {
    /// Summed over the replicas.
    pub(crate) server: (u64, u64),
    /// Per replica.
    pub(crate) servers: Vec<(u64, u64)>,
    pub(crate) me: (u64, u64),
    pub(crate) machine: (u64, u64),
    pub(crate) at: Instant,
}

impl CpuWindow {
    pub(crate) fn now(servers: &[Server]) -> CpuWindow {
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
pub(crate) fn rss_sum(servers: &[Server]) -> u64 {
    servers.iter().map(|s| rss_kib(s.pid).unwrap_or(0)).sum()
}

/// A plain HTTP/1.1 GET with `Connection: close`: (status, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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
