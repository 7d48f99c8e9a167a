//! The Redis backplane when Redis misbehaves the way a real one does:
//! restored from an older snapshot, failed over to a lagging replica,
//! flushed, a publish reply lost, two replicas noticing one loss together,
//! and killed and restarted empty under load.
//!
//! Each test starts its own `redis-server` (a free port, its own directory,
//! `--save ''`) and two gateways (real binaries) pointing at it; they skip,
//! saying so, only when `redis-server` is not installed. The promise checked
//! everywhere: every client sees every event exactly once, in order, or is
//! told (`reset`, `resumed:false`); no (epoch, seq) ever names two events.
//!
//! A "URL that follows" a failover is a small TCP forwarder in this file (as
//! a Sentinel-aware proxy or a DNS name would be in production): the
//! gateways keep running and keep their memory of what Redis held, which is
//! what lets them notice that the promoted replica lagged. The same
//! forwarder can hold Redis's replies back, to lose a publish reply after
//! the script ran.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{connect, get, json_body, publish, Gateway, PrivateRedis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const PREFIX: &str = "faults:";

async fn gateway(url: &str) -> Gateway {
    let gateway = Gateway::start(&[("REDIS_URL", url), ("REDIS_PREFIX", PREFIX)]).await;
    wait_for_redis(&gateway, "up").await;
    gateway
}

async fn wait_for_redis(gateway: &Gateway, want: &str) {
    for _ in 0..300 {
        if gateway.health().await.1["redis"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis never became {want}: {:?}", gateway.health().await);
}

/// Every frame a WebSocket client receives, collected by a task.
struct Watcher {
    frames: Arc<Mutex<Vec<Value>>>,
}

impl Watcher {
    async fn start(gateway: &Gateway, query: &str) -> Watcher {
        let mut client = connect(gateway, query).await;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sink = frames.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = client.next().await {
                if let Message::Text(text) = message {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let watcher = Watcher { frames };
        watcher
            .wait_for(|frames| !frames.is_empty(), "a hello")
            .await;
        watcher
    }

    fn frames(&self) -> Vec<Value> {
        self.frames.lock().unwrap().clone()
    }

    async fn wait_for(&self, done: impl Fn(&[Value]) -> bool, what: &str) {
        for _ in 0..400 {
            if done(&self.frames()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("never got {what}: {:#?}", self.frames());
    }

    /// Waits until the client has seen `epoch` up to `seq`.
    async fn wait_until_at(&self, epoch: &str, seq: u64) {
        self.wait_for(
            |frames| audit(frames).position() == (epoch.to_owned(), seq),
            &format!("({epoch}, {seq})"),
        )
        .await;
    }
}

/// One publish the gateway accepted.
#[derive(Clone, Debug)]
struct Accepted {
    epoch: String,
    seq: u64,
    data: Value,
}

async fn publish_data(gateway: &Gateway, data: Value) -> Option<Accepted> {
    let body = json!({"topic": "t", "data": data}).to_string();
    let (status, answer) = publish(gateway, &body).await;
    (status == 202).then(|| Accepted {
        epoch: answer["epoch"].as_str().unwrap().to_owned(),
        seq: answer["seq"].as_u64().unwrap(),
        data,
    })
}

/// What one client's frames say, checked as they are walked: a hello
/// first, then events whose seqs follow without a gap or a repeat from the
/// last hello or reset.
struct Audit {
    /// (epoch, seq) → data of every event seen.
    seen: HashMap<(String, u64), Value>,
    epoch: String,
    seq: u64,
    /// Each reset: (epoch, seq).
    resets: Vec<(String, u64)>,
    resumed: Option<bool>,
}

impl Audit {
    fn position(&self) -> (String, u64) {
        (self.epoch.clone(), self.seq)
    }
}

fn audit(frames: &[Value]) -> Audit {
    let mut audit = Audit {
        seen: HashMap::new(),
        epoch: String::new(),
        seq: 0,
        resets: Vec::new(),
        resumed: None,
    };
    for (i, frame) in frames.iter().enumerate() {
        let seq = frame["seq"].as_u64().unwrap_or(0);
        match frame["type"].as_str() {
            Some("hello") => {
                assert_eq!(i, 0, "hello first: {frames:#?}");
                audit.epoch = frame["epoch"].as_str().unwrap().to_owned();
                audit.seq = seq;
                audit.resumed = frame["resumed"].as_bool();
            }
            Some("reset") => {
                audit.epoch = frame["epoch"].as_str().unwrap().to_owned();
                audit.seq = seq;
                audit.resets.push((audit.epoch.clone(), seq));
            }
            Some("event") => {
                assert_eq!(
                    seq,
                    audit.seq + 1,
                    "a hole or a repeat at frame {i}: {frames:#?}"
                );
                audit.seq = seq;
                let key = (audit.epoch.clone(), seq);
                let previous = audit.seen.insert(key, frame["data"].clone());
                assert!(previous.is_none(), "seen twice: {frame}");
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    audit
}

/// No (epoch, seq) names two payloads, across every receipt and every
/// client; each client saw every accepted event of its current epoch after
/// the point it was (re)started at, with the published data.
fn assert_one_history(accepted: &[Accepted], clients: &[&Watcher]) {
    let mut names: HashMap<(String, u64), Value> = HashMap::new();
    let mut claim = |epoch: &str, seq: u64, data: &Value, source: &str| {
        let key = (epoch.to_owned(), seq);
        if let Some(other) = names.insert(key, data.clone()) {
            assert_eq!(&other, data, "({epoch}, {seq}) names two events ({source})");
        }
    };
    for a in accepted {
        claim(&a.epoch, a.seq, &a.data, "receipts");
    }
    for (n, client) in clients.iter().enumerate() {
        let frames = client.frames();
        let seen = audit(&frames);
        for ((epoch, seq), data) in &seen.seen {
            claim(epoch, *seq, data, &format!("client {n}"));
        }
        let start = seen
            .resets
            .iter()
            .rev()
            .find(|(epoch, _)| *epoch == seen.epoch)
            .map(|(_, seq)| *seq)
            .unwrap_or_else(|| frames[0]["seq"].as_u64().unwrap());
        for a in accepted
            .iter()
            .filter(|a| a.epoch == seen.epoch && a.seq > start)
        {
            assert_eq!(
                seen.seen.get(&(a.epoch.clone(), a.seq)),
                Some(&a.data),
                "client {n} missed ({}, {}): {frames:#?}",
                a.epoch,
                a.seq
            );
        }
    }
}

/// Two gateways on `url`, each with a watching client.
async fn two_watched_gateways(url: &str) -> (Gateway, Gateway, Watcher, Watcher) {
    let a = gateway(url).await;
    let b = gateway(url).await;
    let on_a = Watcher::start(&a, "").await;
    let on_b = Watcher::start(&b, "").await;
    (a, b, on_a, on_b)
}

/// Publishes `"p<i>"` for each i, alternately through `b` (odd) and `a`.
async fn publish_numbered(
    a: &Gateway,
    b: &Gateway,
    numbers: std::ops::RangeInclusive<u32>,
    accepted: &mut Vec<Accepted>,
) {
    for i in numbers {
        let on = if i % 2 == 0 { a } else { b };
        accepted.push(publish_data(on, json!(format!("p{i}"))).await.unwrap());
    }
}

fn last_epoch(accepted: &[Accepted]) -> String {
    accepted.last().unwrap().epoch.clone()
}

async fn state(gateway: &Gateway) -> (u16, Value) {
    let response = get(&gateway.url("/_switchyard/state")).await;
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

async fn command<T: redis::FromRedisValue>(redis: &PrivateRedis, args: &[&str]) -> T {
    let mut admin = redis.admin().await;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut admin).await.unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn a_restore_from_an_older_snapshot_starts_one_new_epoch() {
    if !support::redis_server_installed("the restore test") {
        return;
    }
    let mut redis = PrivateRedis::start(&[]).await;
    let (a, b, on_a, on_b) = two_watched_gateways(&redis.url()).await;
    let mut accepted = Vec::new();
    publish_numbered(&a, &b, 1..=5, &mut accepted).await;
    let _: String = command(&redis, &["SAVE"]).await;
    publish_numbered(&a, &b, 6..=10, &mut accepted).await;
    let old = last_epoch(&accepted);
    assert_eq!(accepted.last().unwrap().seq, 10);
    on_a.wait_until_at(&old, 10).await;
    on_b.wait_until_at(&old, 10).await;

    let mut admin = redis.admin().await;
    let _: Result<(), _> = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async(&mut admin)
        .await;
    redis.wait_exit().await;
    redis.restart().await;
    let restored: String = command(&redis, &["GET", &format!("{PREFIX}seq")]).await;
    assert_eq!(restored, "5", "the snapshot is the older one");
    wait_for_redis(&a, "up").await;
    wait_for_redis(&b, "up").await;

    publish_numbered(&a, &b, 11..=17, &mut accepted).await;
    let new = last_epoch(&accepted);
    assert_ne!(new, old, "the epoch went on over a history that went back");
    let new_seqs: Vec<u64> = accepted[10..].iter().map(|a| a.seq).collect();
    assert_eq!(new_seqs, (1..=7).collect::<Vec<_>>());
    assert!(accepted[10..].iter().all(|a| a.epoch == new));

    let resumed = Watcher::start(&a, &format!("?epoch={old}&since=10")).await;
    assert_eq!(audit(&resumed.frames()).resumed, Some(false));
    for client in [&on_a, &on_b] {
        client.wait_until_at(&new, 7).await;
        let seen = audit(&client.frames());
        assert_eq!(seen.resets, [(new.clone(), 0)], "one reset, to the start");
    }
    assert_one_history(&accepted, &[&on_a, &on_b, &resumed]);
}

/// A TCP forwarder from a local port to a Redis port, re-pointable (cutting
/// every open connection), and able to hold Redis's replies back.
struct Forwarder {
    port: u16,
    target: Arc<Mutex<u16>>,
    hold: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Forwarder {
    async fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarder = Forwarder {
            port,
            target: Arc::new(Mutex::new(target)),
            hold: Arc::new(AtomicBool::new(false)),
            cut: watch::channel(0).0,
        };
        let (target, hold, cut) = (
            forwarder.target.clone(),
            forwarder.hold.clone(),
            forwarder.cut.clone(),
        );
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let to = *target.lock().unwrap();
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                tokio::spawn(pipe(inbound, outbound, hold.clone(), cut.subscribe()));
            }
        });
        forwarder
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Points new connections at `port` and cuts the open ones.
    fn retarget(&self, port: u16) {
        *self.target.lock().unwrap() = port;
        self.cut_all();
    }

    fn cut_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    fn hold_replies(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    hold: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::io::copy(&mut client_read, &mut server_write);
    let down = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = server_read.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            while hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client_write.write_all(&buffer[..n]).await?;
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn a_failover_to_a_lagging_replica_starts_one_new_epoch() {
    if !support::redis_server_installed("the failover test") {
        return;
    }
    let mut primary = PrivateRedis::start(&[]).await;
    let primary_port = primary.port.to_string();
    let replica = PrivateRedis::start(&["--replicaof", "127.0.0.1", &primary_port]).await;
    let follow = Forwarder::start(primary.port).await;
    let (a, b, on_a, on_b) = two_watched_gateways(&follow.url()).await;
    let mut accepted = Vec::new();
    publish_numbered(&a, &b, 1..=5, &mut accepted).await;
    let seq_key = format!("{PREFIX}seq");
    for _ in 0..200 {
        let copied: Option<String> = command(&replica, &["GET", &seq_key]).await;
        if copied.as_deref() == Some("5") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Replication stops: the replica follows a primary that is not there.
    let nowhere = support::dead_port().to_string();
    let _: String = command(&replica, &["REPLICAOF", "127.0.0.1", &nowhere]).await;
    publish_numbered(&a, &b, 6..=10, &mut accepted).await;
    let old = last_epoch(&accepted);
    on_a.wait_until_at(&old, 10).await;
    on_b.wait_until_at(&old, 10).await;
    let lagging: String = command(&replica, &["GET", &seq_key]).await;
    assert_eq!(lagging, "5", "the replica lags");

    // Promote the replica and fail over to it.
    let _: String = command(&replica, &["REPLICAOF", "NO", "ONE"]).await;
    primary.kill().await;
    follow.retarget(replica.port);
    wait_for_redis(&a, "up").await;
    wait_for_redis(&b, "up").await;
    for i in 11..=17 {
        let on = if i % 2 == 0 { &a } else { &b };
        // The first publishes may still meet the cut connection: retry 503s.
        let mut published = None;
        for _ in 0..40 {
            published = publish_data(on, json!(format!("p{i}"))).await;
            if published.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        accepted.push(published.expect("publish after the failover"));
    }
    let new = last_epoch(&accepted);
    assert_ne!(new, old, "the epoch went on over a lagging replica");
    assert!(accepted[10..].iter().all(|a| a.epoch == new));
    let new_seqs: Vec<u64> = accepted[10..].iter().map(|a| a.seq).collect();
    assert_eq!(new_seqs, (1..=7).collect::<Vec<_>>());

    let resumed = Watcher::start(&b, &format!("?epoch={old}&since=10")).await;
    assert_eq!(audit(&resumed.frames()).resumed, Some(false));
    for client in [&on_a, &on_b] {
        client.wait_until_at(&new, 7).await;
        assert_eq!(audit(&client.frames()).resets.len(), 1, "one reset");
    }
    assert_one_history(&accepted, &[&on_a, &on_b, &resumed]);
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn a_flush_without_publishing_is_noticed_within_three_seconds() {
    if !support::redis_server_installed("the flush test") {
        return;
    }
    let redis = PrivateRedis::start(&[]).await;
    let (a, b, on_a, on_b) = two_watched_gateways(&redis.url()).await;
    let mut accepted = Vec::new();
    for i in 1..=3 {
        accepted.push(publish_data(&a, json!(i)).await.unwrap());
    }
    let old = last_epoch(&accepted);
    let _: String = command(&redis, &["FLUSHALL"]).await;
    let flushed = tokio::time::Instant::now();

    // Connected clients are reset, once, into one new epoch.
    for client in [&on_a, &on_b] {
        client
            .wait_for(|frames| audit(frames).resets.len() == 1, "a reset")
            .await;
    }
    let new = audit(&on_a.frames()).resets[0].0.clone();
    assert_ne!(new, old);
    assert_eq!(audit(&on_b.frames()).resets, [(new.clone(), 0)]);
    // New clients get a hello and state answers 200, on both replicas, in
    // that epoch; /health agrees.
    for gateway in [&a, &b] {
        let fresh = Watcher::start(gateway, "").await;
        let hello = &fresh.frames()[0];
        assert_eq!(
            (hello["type"].as_str(), hello["epoch"].as_str()),
            (Some("hello"), Some(new.as_str()))
        );
        let (status, body) = state(gateway).await;
        assert_eq!((status, body["epoch"].as_str()), (200, Some(new.as_str())));
        assert_eq!(gateway.health().await.1["redis"], "up");
    }
    let took = flushed.elapsed();
    assert!(took < Duration::from_secs(3), "noticed after {took:?}");
    // Nothing more came: one reset each, and publishing goes on at seq 1.
    let next = publish_data(&b, json!("after")).await.unwrap();
    assert_eq!((next.epoch.as_str(), next.seq), (new.as_str(), 1));
    accepted.push(next);
    for client in [&on_a, &on_b] {
        client.wait_until_at(&new, 1).await;
        assert_eq!(audit(&client.frames()).resets.len(), 1);
    }
    assert_one_history(&accepted, &[&on_a, &on_b]);
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn a_publish_whose_reply_was_lost_is_applied_once_when_retried() {
    if !support::redis_server_installed("the lost-reply test") {
        return;
    }
    let redis = PrivateRedis::start(&[]).await;
    let forwarder = Forwarder::start(redis.port).await;
    let a = gateway(&forwarder.url()).await;
    let on_a = Watcher::start(&a, "").await;
    let first = publish_data(&a, json!("first")).await.unwrap();
    let body = json!({"topic": "t", "data": "once", "id": "order-17"}).to_string();

    // The script runs; its reply is held past the gateway's 2 s timeout.
    forwarder.hold_replies(true);
    let (status, answer) = publish(&a, &body).await;
    assert_eq!(
        (status, answer),
        (503, json!({"error": "backplane unavailable"}))
    );
    forwarder.hold_replies(false);
    forwarder.cut_all();
    let applied: String = command(&redis, &["GET", &format!("{PREFIX}seq")]).await;
    assert_eq!(applied, "2", "the script ran although the reply was lost");
    wait_for_redis(&a, "up").await;

    // The retry is answered with the original, and applied once.
    let (status, answer) = publish(&a, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"epoch": first.epoch, "seq": 2}));
    // The same through Idempotency-Key, and in a batch of repeats only.
    let keyed = support::send(
        http::Request::post(a.url("/_switchyard/publish"))
            .header("Idempotency-Key", "order-17")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                r#"{"topic":"t","data":"once"}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(keyed.status(), 200);
    assert_eq!(json_body(keyed).await["seq"], 2);
    let (status, answer) = publish(&a, r#"[{"topic":"t","data":"once","id":"order-17"}]"#).await;
    assert_eq!(
        (status, answer),
        (200, json!({"epoch": first.epoch, "seqs": [2]}))
    );
    // A batch mixing a repeat and a new event: 409, nothing applied.
    let mixed = r#"[{"topic":"t","data":"new","id":"order-18"},{"topic":"t","data":"once","id":"order-17"}]"#;
    let (status, answer) = publish(&a, mixed).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .starts_with("id: \"order-17\""));
    // A new id and no id publish as usual.
    let (status, answer) = publish(&a, r#"{"topic":"t","data":"next","id":"order-18"}"#).await;
    assert_eq!((status, answer["seq"].as_u64()), (202, Some(3)));
    let last = publish_data(&a, json!("last")).await.unwrap();
    assert_eq!(last.seq, 4);

    let history: Vec<String> =
        command(&redis, &["LRANGE", &format!("{PREFIX}history"), "0", "-1"]).await;
    assert_eq!(history.len(), 4, "{history:#?}");
    on_a.wait_until_at(&first.epoch, 4).await;
    let seen = audit(&on_a.frames());
    let once: Vec<u64> = seen
        .seen
        .iter()
        .filter(|(_, data)| **data == json!("once"))
        .map(|((_, seq), _)| *seq)
        .collect();
    assert_eq!(once, [2], "delivered once");
    assert!(seen.resets.is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn two_replicas_noticing_one_loss_together_create_one_epoch() {
    if !support::redis_server_installed("the simultaneous-loss test") {
        return;
    }
    let redis = PrivateRedis::start(&[]).await;
    let (a, b, on_a, on_b) = two_watched_gateways(&redis.url()).await;
    let mut accepted = vec![publish_data(&a, json!("start")).await.unwrap()];
    let mut epochs = vec![last_epoch(&accepted)];
    for round in 0..20 {
        // Alternately: everything flushed, or the seq gone back.
        if round % 2 == 0 {
            let _: String = command(&redis, &["FLUSHALL"]).await;
        } else {
            let _: String = command(&redis, &["SET", &format!("{PREFIX}seq"), "0"]).await;
        }
        let (on_a_, on_b_) = tokio::join!(
            publish_data(&a, json!(format!("a{round}"))),
            publish_data(&b, json!(format!("b{round}")))
        );
        let (from_a, from_b) = (on_a_.unwrap(), on_b_.unwrap());
        assert_eq!(from_a.epoch, from_b.epoch, "round {round}: two new epochs");
        assert!(
            !epochs.contains(&from_a.epoch),
            "round {round}: no new epoch"
        );
        let mut seqs = [from_a.seq, from_b.seq];
        seqs.sort();
        assert_eq!(seqs, [1, 2], "round {round}");
        epochs.push(from_a.epoch.clone());
        accepted.extend([from_a, from_b]);
        for client in [&on_a, &on_b] {
            client.wait_until_at(epochs.last().unwrap(), 2).await;
        }
    }
    for client in [&on_a, &on_b] {
        let resets: Vec<String> = audit(&client.frames())
            .resets
            .into_iter()
            .map(|(epoch, seq)| {
                assert_eq!(seq, 0);
                epoch
            })
            .collect();
        assert_eq!(resets, epochs[1..], "exactly one reset per new epoch");
    }
    assert_one_history(&accepted, &[&on_a, &on_b]);
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn redis_restarted_empty_under_load_delivers_every_event_of_the_new_epoch() {
    if !support::redis_server_installed("the restart-under-load test") {
        return;
    }
    let mut redis = PrivateRedis::start(&[]).await;
    let a = gateway(&redis.url()).await;
    let b = gateway(&redis.url()).await;
    let clients = [
        Watcher::start(&a, "").await,
        Watcher::start(&b, "").await,
        Watcher::start(&a, "").await,
        Watcher::start(&b, "").await,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut publishers = Vec::new();
    for (n, gateway) in [&a, &b].into_iter().enumerate() {
        let url = gateway.url("/_switchyard/publish");
        let (stop, accepted) = (stop.clone(), accepted.clone());
        publishers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let data = json!(format!("g{n}-{i}"));
                let body = json!({"topic": "t", "data": data}).to_string();
                let response = support::post(&url, body).await;
                if response.status() == 202 {
                    let answer = json_body(response).await;
                    accepted.lock().unwrap().push(Accepted {
                        epoch: answer["epoch"].as_str().unwrap().to_owned(),
                        seq: answer["seq"].as_u64().unwrap(),
                        data,
                    });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill().await;
    // Its directory holds no snapshot (`--save ''`): it comes back empty.
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let old = accepted[0].epoch.clone();
    let new = last_epoch(&accepted);
    assert_ne!(old, new);
    let in_new: Vec<u64> = {
        let mut seqs: Vec<u64> = accepted
            .iter()
            .filter(|a| a.epoch == new)
            .map(|a| a.seq)
            .collect();
        seqs.sort();
        seqs
    };
    assert!(in_new.len() > 20, "publishing went on: {}", in_new.len());
    assert_eq!(in_new, (1..=in_new.len() as u64).collect::<Vec<_>>());
    let last = *in_new.last().unwrap();
    for client in &clients {
        client.wait_until_at(&new, last).await;
        let seen = audit(&client.frames());
        let into_new: Vec<&(String, u64)> = seen
            .resets
            .iter()
            .filter(|(epoch, _)| *epoch == new)
            .collect();
        assert_eq!(into_new, [&(new.clone(), 0)], "one reset, to the start");
    }
    let refs: Vec<&Watcher> = clients.iter().collect();
    assert_one_history(&accepted, &refs);
}
