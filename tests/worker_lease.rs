//! With REDIS_URL the worker runs on exactly one replica: several real
//! gateways, one private `redis-server`, real worker processes (each writes
//! its pid into a shared directory and publishes through its gateway), and
//! a sampler that checks every 100 ms, for the whole test, that never two
//! workers are alive. The workers ignore SIGTERM, the worst case: only the
//! SIGKILL deadlines keep them from overlapping.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::alive;
use support::{
    connect, dead_port, next_json, redis_server_installed, unique_prefix, Client, Gateway,
    PrivateRedis,
};

/// The lease's TTL (src/lease.rs): no replica may take over before it.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// A directory of the test's own: the worker script and one file per
/// worker process, named by its pid.
struct WorkerDir(PathBuf);

impl WorkerDir {
    /// `stubborn`: the worker ignores SIGTERM (and so do curl and sleep:
    /// an ignored signal stays ignored across exec); only SIGKILL stops it.
    fn new(name: &str, stubborn: bool) -> WorkerDir {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-lease-{name}-{}-{}",
            std::process::id(),
            dead_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pids")).unwrap();
        // Publishes its pid every 200 ms through its own gateway.
        let script = format!(
            "{trap}echo $$ > {pids}/$$\n\
             while :; do\n\
             \x20 curl -s -o /dev/null -m 2 -H 'content-type: application/json' \
             -d \"{{\\\"topic\\\":\\\"engine/tick\\\",\\\"data\\\":$$}}\" \"$SWITCHYARD_PUBLISH_URL\"\n\
             \x20 sleep 0.2\n\
             done\n",
            trap = if stubborn { "trap '' TERM\n" } else { "" },
            pids = dir.join("pids").display()
        );
        std::fs::write(dir.join("worker.sh"), script).unwrap();
        WorkerDir(dir)
    }

    fn command(&self) -> String {
        format!("exec sh {}", self.0.join("worker.sh").display())
    }

    fn alive(&self) -> Vec<u32> {
        alive_in(&self.0)
    }
}

/// The workers of `dir` alive now.
fn alive_in(dir: &Path) -> Vec<u32> {
    let started: Vec<u32> = std::fs::read_dir(dir.join("pids"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    started.into_iter().filter(|pid| alive(*pid)).collect()
}

impl Drop for WorkerDir {
    fn drop(&mut self) {
        for pid in self.alive() {
            support::process::kill(pid);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// When, and which workers were alive then.
type Sample = (Instant, Vec<u32>);

/// Which workers were alive, every 100 ms.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(dir: &Path) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = samples.clone();
        let dir = dir.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let alive = alive_in(&dir);
                sink.lock().unwrap().push((Instant::now(), alive));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Sampler { samples, task }
    }

    fn now(&self) -> Vec<u32> {
        self.samples
            .lock()
            .unwrap()
            .last()
            .map(|(_, alive)| alive.clone())
            .unwrap_or_default()
    }

    /// Waits up to `limit` for a sample with exactly one worker that is not
    /// in `except`.
    async fn wait_for_one(&self, except: &[u32], limit: Duration) -> (u32, Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let [pid] = self.now()[..] {
                if !except.contains(&pid) {
                    return (pid, started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new worker within {limit:?}: {:?}", self.now());
    }

    /// Stops sampling; answers the number of samples and the most workers
    /// alive in one, with when.
    fn finish(self) -> (usize, usize, Vec<Sample>) {
        self.task.abort();
        let samples = self.samples.lock().unwrap().clone();
        let most = samples.iter().map(|(_, a)| a.len()).max().unwrap_or(0);
        let crowded = samples
            .iter()
            .filter(|(_, a)| a.len() > 1)
            .cloned()
            .collect();
        (samples.len(), most, crowded)
    }

    /// The last sample `pid` was alive in and the first another was.
    fn handover(&self, pid: u32) -> (Option<Instant>, Option<Instant>) {
        let samples = self.samples.lock().unwrap();
        let last = samples
            .iter()
            .filter(|(_, a)| a.contains(&pid))
            .map(|(t, _)| *t)
            .next_back();
        let next = samples
            .iter()
            .find(|(_, a)| a.iter().any(|p| *p != pid))
            .map(|(t, _)| *t);
        (last, next)
    }
}

async fn replica(redis: &PrivateRedis, prefix: &str, workers: &WorkerDir) -> Gateway {
    Gateway::start(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_PREFIX", prefix),
        ("WORKER_COMMAND", &workers.command()),
    ])
    .await
}

/// `/health`'s worker field of each gateway, once exactly one runs and the
/// others are on standby naming it; answers the running one's index.
async fn wait_for_one_running(gateways: &[&Gateway]) -> usize {
    let mut last = Vec::new();
    for _ in 0..100 {
        last.clear();
        for gateway in gateways {
            last.push(gateway.health().await.1["worker"].clone());
        }
        let running: Vec<usize> = (0..last.len())
            .filter(|i| last[*i]["state"] == "running")
            .collect();
        if let [holder] = running[..] {
            let id = &last[holder]["holder"];
            let agreed = last
                .iter()
                .enumerate()
                .all(|(i, w)| w["holder"] == *id && (i == holder || w["state"] == "standby"));
            if id.is_string() && agreed {
                return holder;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never exactly one running worker: {last:?}");
}

/// Reads `client` until an event from worker `pid` arrives.
async fn event_from(client: &mut Client, pid: u32, limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        let frame = next_json(client).await;
        if frame["type"] == "event" && frame["data"] == pid {
            return;
        }
    }
    panic!("no event from worker {pid} within {limit:?}");
}

#[tokio::test]
async fn one_worker_across_three_replicas_and_a_new_one_soon_after_the_holder_dies() {
    if !redis_server_installed("the worker lease test") {
        return;
    }
    let redis = PrivateRedis::start(&[]).await;
    let prefix = unique_prefix("lease");
    let workers = WorkerDir::new("three", true);
    let sampler = Sampler::start(&workers.0);
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(replica(&redis, &prefix, &workers).await);
    }
    let (first, _) = sampler.wait_for_one(&[], Duration::from_secs(10)).await;
    let holder = wait_for_one_running(&gateways.iter().collect::<Vec<_>>()).await;

    // Its events reach clients on every replica.
    let mut clients = Vec::new();
    for gateway in &gateways {
        let mut client = connect(gateway, "?topics=engine/%23").await;
        assert_eq!(next_json(&mut client).await["type"], "hello");
        clients.push(client);
    }
    for client in &mut clients {
        event_from(client, first, Duration::from_secs(5)).await;
    }

    let mut dead = gateways.remove(holder);
    drop(clients.remove(holder));
    dead.signal("KILL");
    dead.wait_exit(Duration::from_secs(5)).await;
    let (second, took) = sampler
        .wait_for_one(&[first], Duration::from_secs(20))
        .await;
    println!("holder SIGKILLed: a new worker after {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!alive(first), "the old worker outlived its gateway");
    for client in &mut clients {
        event_from(client, second, Duration::from_secs(5)).await;
    }
    let now_holding = wait_for_one_running(&gateways.iter().collect::<Vec<_>>()).await;

    // A gateway that drains gives the lease up: the other starts at once
    // (long before the lease's TTL).
    let mut leaving = gateways.remove(now_holding);
    leaving.signal("TERM");
    leaving.wait_exit(Duration::from_secs(15)).await;
    let (_, after_drain) = sampler
        .wait_for_one(&[first, second], Duration::from_secs(20))
        .await;
    println!("holder drained: a new worker after {after_drain:?}");
    assert!(after_drain < LEASE_TTL / 2, "{after_drain:?}");

    let (samples, most, crowded) = sampler.finish();
    println!("{samples} samples, at most {most} worker(s) alive at once");
    assert!(crowded.is_empty(), "two workers at once: {crowded:?}");
    assert!(samples > 100);
}

#[tokio::test]
async fn a_holder_that_cannot_reach_redis_stops_its_worker_before_another_starts() {
    if !redis_server_installed("the worker lease pause test") {
        return;
    }
    let redis = PrivateRedis::start(&[]).await;
    let prefix = unique_prefix("lease-pause");
    let workers = WorkerDir::new("pause", true);
    let sampler = Sampler::start(&workers.0);
    let gateways = [
        replica(&redis, &prefix, &workers).await,
        replica(&redis, &prefix, &workers).await,
    ];
    let (first, _) = sampler.wait_for_one(&[], Duration::from_secs(10)).await;
    let holder = wait_for_one_running(&[&gateways[0], &gateways[1]]).await;
    // Renewals have been going on for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let redis_pid = redis.pid().unwrap().to_string();
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .args([name, &redis_pid])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let paused = Instant::now();
    while alive(first) && paused.elapsed() < LEASE_TTL + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_after = paused.elapsed();
    let still_alive = alive(first);
    let health = gateways[holder].health().await.1;
    // Paused for longer than the lease.
    tokio::time::sleep((LEASE_TTL + Duration::from_secs(3)).saturating_sub(paused.elapsed())).await;
    let during_pause = sampler.now();
    assert!(signal("-CONT").success());
    println!("redis paused: the holder SIGKILLed its worker (which ignores SIGTERM) after {stopped_after:?}");
    assert!(!still_alive, "the worker ran on with no lease");
    assert!(stopped_after < LEASE_TTL, "{stopped_after:?}");
    assert_eq!(health["worker"]["state"], "standby", "{health}");
    assert!(during_pause.is_empty(), "{during_pause:?}");

    let (second, took) = sampler
        .wait_for_one(&[first], Duration::from_secs(20))
        .await;
    println!("redis back: a worker (pid {second}) after {took:?}");
    let (last_first, first_other) = sampler.handover(first);
    assert!(last_first < first_other, "{last_first:?} {first_other:?}");
    wait_for_one_running(&[&gateways[0], &gateways[1]]).await;

    let (samples, most, crowded) = sampler.finish();
    println!("{samples} samples, at most {most} worker(s) alive at once");
    assert!(crowded.is_empty(), "two workers at once: {crowded:?}");
}
