//! Child processes seen from the test: who is whose child, who is alive.

use std::time::Duration;

/// Every pid whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(pid)
        {
            found.push(child);
        }
    }
    found
}

/// The shell the gateway spawned and every process below it.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid];
    while let Some(next) = frontier.pop() {
        for child in children(next) {
            all.push(child);
            frontier.push(child);
        }
    }
    all
}

/// Running (a zombie is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Polls `check` every 50 ms for up to 10 s; panics naming `what`.
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A pid a child wrote into `file`, once it is there.
pub async fn pid_in(file: &std::path::Path) -> u32 {
    let mut pid = 0;
    wait_for("a pid file", || {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        pid != 0
    })
    .await;
    pid
}

/// SIGKILL, for cleaning up after a failed check.
pub fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// How a process that ignores SIGTERM died after its gateway was SIGKILLed.
pub struct Death {
    /// Still alive 500 ms after: it got SIGTERM and a grace, not SIGKILL.
    pub alive_during_grace: bool,
    /// From the gateway's death to its own (or to giving up).
    pub gone_after: Duration,
    /// Still alive `grace` + 10 s after (then SIGKILLed by the test).
    pub survived: bool,
}

impl Death {
    /// The child (`what`) had its grace (SIGTERM first, still alive 500 ms
    /// later) and was gone within `grace` + 2 s of its gateway's SIGKILL.
    pub fn assert_within_grace(&self, what: &str, grace: Duration) {
        println!(
            "{what} ignoring SIGTERM gone {:?} after the gateway's SIGKILL (grace {grace:?})",
            self.gone_after
        );
        assert!(
            !self.survived,
            "the {what} outlived the gateway by {:?}",
            self.gone_after
        );
        assert!(self.alive_during_grace, "the {what} got no grace");
        assert!(
            self.gone_after <= grace + Duration::from_secs(2),
            "gone only after {:?}",
            self.gone_after
        );
    }
}

/// Watches `pid` from the moment its gateway died until it is gone, at most
/// `grace` + 10 s; kills it if it survives, so no test leaves it behind.
pub async fn watch_death(pid: u32, grace: Duration) -> Death {
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive_during_grace = alive(pid);
    while alive(pid) && killed.elapsed() < grace + Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_after = killed.elapsed();
    let survived = alive(pid);
    if survived {
        kill(pid);
    }
    Death {
        alive_during_grace,
        gone_after,
        survived,
    }
}

/// SIGTERM to the gateway: it exits 0 in less than `within`, and every pid
/// of `family` (its children, taken before) is gone soon after.
pub async fn sigterm_leaves_nothing(
    gateway: &mut super::Gateway,
    family: &[u32],
    within: Duration,
) {
    let started = std::time::Instant::now();
    gateway.signal("TERM");
    assert_eq!(
        gateway
            .wait_exit(within + Duration::from_secs(2))
            .await
            .code(),
        Some(0)
    );
    assert!(started.elapsed() < within, "{:?}", started.elapsed());
    wait_for("the child groups to be gone", || {
        family.iter().all(|pid| !alive(*pid))
    })
    .await;
}
