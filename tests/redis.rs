//! The Redis backplane with a real Redis: replicas that act as one, seq
//! order under concurrent publishers, and Redis lost and back empty.
//!
//! Needs SWITCHYARD_TEST_REDIS (e.g. redis://127.0.0.1:6379; `.ci/run` sets
//! it). Without it these tests print that they are skipped. Each test uses
//! its own key prefix; the fault test runs its own `redis-server`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    connect, get, json_body, next_json, publish, publish_one, redis_url, unique_prefix, Client,
    Gateway,
};
use tokio::process::{Child, Command};

async fn replica(url: &str, prefix: &str, extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![("REDIS_URL", url), ("REDIS_PREFIX", prefix)];
    env.extend_from_slice(extra);
    let gateway = Gateway::start(&env).await;
    wait_for_redis(&gateway, "up").await;
    gateway
}

async fn wait_for_redis(gateway: &Gateway, want: &str) {
    for _ in 0..200 {
        if gateway.health().await.1["redis"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis never became {want}: {:?}", gateway.health().await);
}

async fn hello(client: &mut Client) -> Value {
    let hello = next_json(client).await;
    assert_eq!(hello["type"], "hello");
    hello
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn two_replicas_share_seqs_state_and_resume() {
    let Some(url) = redis_url("Redis backplane tests") else {
        return;
    };
    let prefix = unique_prefix("two");
    let a = replica(&url, &prefix, &[]).await;
    let b = replica(&url, &prefix, &[]).await;

    let mut on_a = connect(&a, "").await;
    let epoch = hello(&mut on_a).await["epoch"].as_str().unwrap().to_owned();
    assert_eq!(publish_one(&b, "t", json!("from b")).await, 1);
    assert_eq!(publish_one(&a, "t", json!("from a")).await, 2);
    assert_eq!(publish_one(&b, "t", json!("b again")).await, 3);
    for (seq, data) in [(1, "from b"), (2, "from a"), (3, "b again")] {
        let event = next_json(&mut on_a).await;
        assert_eq!(
            (event["seq"].as_u64(), event["data"].as_str()),
            (Some(seq), Some(data))
        );
    }

    // Retained state set through A is in a hello on B.
    let body = json!({"topic": "positions/X", "data": {"qty": 7}, "retain": true}).to_string();
    let (status, answer) = publish(&a, &body).await;
    assert_eq!(status, 202);
    assert_eq!(answer["epoch"], epoch.as_str());
    let mut on_b = connect(&b, "?topics=positions/%23").await;
    let hello_b = hello(&mut on_b).await;
    assert_eq!(hello_b["epoch"], epoch.as_str());
    assert_eq!(
        hello_b["state"],
        json!({"positions/X": {"seq": 4, "data": {"qty": 7}}})
    );

    // `?history=N` reads Redis's history: the same on either replica.
    let history = json_body(get(&b.url("/_switchyard/state?topics=t&history=2")).await).await;
    let seqs: Vec<u64> = history["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3], "{history}");
    assert_eq!(history["epoch"], epoch.as_str());

    // Resume on B after leaving A: nothing lost.
    assert_eq!(next_json(&mut on_a).await["seq"], 4);
    drop(on_a);
    publish_one(&a, "t", json!(5)).await;
    publish_one(&b, "t", json!(6)).await;
    let mut resumed = connect(&b, &format!("?epoch={epoch}&since=4")).await;
    let hello_r = hello(&mut resumed).await;
    assert_eq!(hello_r["resumed"], true);
    assert_eq!(next_json(&mut resumed).await["seq"], 5);
    assert_eq!(next_json(&mut resumed).await["seq"], 6);
    let (_, health) = a.health().await;
    assert_eq!(health["redis"], "up");
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn four_publishers_across_two_replicas_give_one_order() {
    let Some(url) = redis_url("Redis backplane tests") else {
        return;
    };
    let prefix = unique_prefix("four");
    let settings = [("HISTORY_SIZE", "20000"), ("CLIENT_QUEUE", "20000")];
    let a = replica(&url, &prefix, &settings).await;
    let b = replica(&url, &prefix, &settings).await;
    let mut readers = Vec::new();
    for gateway in [&a, &b, &a, &b] {
        let mut client = connect(gateway, "").await;
        hello(&mut client).await;
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(10_000);
            while seqs.len() < 10_000 {
                seqs.push(next_json(&mut client).await["seq"].as_u64().unwrap());
            }
            seqs
        }));
    }
    let mut publishers = Vec::new();
    for p in 0..4u64 {
        let url = if p % 2 == 0 {
            a.url("/_switchyard/publish")
        } else {
            b.url("/_switchyard/publish")
        };
        publishers.push(tokio::spawn(async move {
            for chunk in 0..50u64 {
                let batch: Vec<Value> = (0..50u64)
                    .map(|i| json!({"topic": format!("p{p}"), "data": chunk * 50 + i}))
                    .collect();
                let response = support::post(&url, Value::from(batch).to_string()).await;
                assert_eq!(response.status(), 202);
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let expected: Vec<u64> = (1..=10_000).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }
}

/// A throwaway redis-server on its own port, killable.
struct OwnRedis {
    child: Child,
}

impl OwnRedis {
    async fn start_on(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on PATH");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return OwnRedis { child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on {port}");
    }

    async fn kill(mut self) {
        self.child.kill().await.expect("kill redis");
    }
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn redis_lost_then_back_empty_means_503s_then_one_new_epoch_and_resets() {
    let Some(_) = redis_url("Redis backplane tests") else {
        return;
    };
    let port = support::dead_port();
    let redis = OwnRedis::start_on(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = unique_prefix("lost");
    let a = replica(&url, &prefix, &[]).await;
    let b = replica(&url, &prefix, &[]).await;
    let mut clients = Vec::new();
    for gateway in [&a, &b] {
        let mut client = connect(gateway, "").await;
        hello(&mut client).await;
        clients.push(client);
    }
    for i in 1..=3 {
        publish_one(if i % 2 == 0 { &a } else { &b }, "t", json!(i)).await;
    }
    let old_epoch = json_body(get(&a.url("/_switchyard/state")).await).await["epoch"].clone();
    for client in &mut clients {
        for seq in 1..=3 {
            assert_eq!(next_json(client).await["seq"], seq);
        }
    }

    redis.kill().await;
    wait_for_redis(&a, "down").await;
    wait_for_redis(&b, "down").await;
    let (status, answer) = publish(&a, r#"{"topic":"t","data":"lost"}"#).await;
    assert_eq!(
        (status, answer),
        (503, json!({"error": "backplane unavailable"}))
    );
    let (status, health) = b.health().await;
    assert_eq!((status, health["redis"].as_str()), (200, Some("down")));

    let _redis = OwnRedis::start_on(port).await; // back, and empty
    wait_for_redis(&a, "up").await;
    wait_for_redis(&b, "up").await;
    // Each client stayed connected and was told to start over.
    let mut new_epochs = Vec::new();
    for client in &mut clients {
        let reset = next_json(client).await;
        assert_eq!(reset["type"], "reset", "{reset}");
        assert_ne!(reset["epoch"], old_epoch);
        new_epochs.push(reset["epoch"].clone());
    }
    assert_eq!(
        new_epochs[0], new_epochs[1],
        "the replicas disagree on the new epoch"
    );
    let state_a = json_body(get(&a.url("/_switchyard/state")).await).await;
    let state_b = json_body(get(&b.url("/_switchyard/state")).await).await;
    assert_eq!(state_a["epoch"], new_epochs[0]);
    assert_eq!(state_b["epoch"], new_epochs[0]);

    // Delivery resumes in the new epoch, from seq 1, on both replicas.
    assert_eq!(publish_one(&b, "t", json!("new")).await, 1);
    for client in &mut clients {
        let event = next_json(client).await;
        assert_eq!(
            (event["seq"].as_u64(), event["data"].as_str()),
            (Some(1), Some("new"))
        );
    }
    // An old resume point is not resumable any more.
    let mut stale = connect(
        &a,
        &format!("?epoch={}&since=3", old_epoch.as_str().unwrap()),
    )
    .await;
    assert_eq!(hello(&mut stale).await["resumed"], false);
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn a_replica_that_missed_messages_fills_the_gap_from_history() {
    let Some(url) = redis_url("Redis backplane tests") else {
        return;
    };
    let prefix = unique_prefix("gap");
    let a = replica(&url, &prefix, &[]).await;
    let b = replica(&url, &prefix, &[]).await;
    let mut on_a = connect(&a, "").await;
    hello(&mut on_a).await;
    publish_one(&b, "t", json!(1)).await;
    assert_eq!(next_json(&mut on_a).await["seq"], 1);

    // Cut every subscription connection (both replicas'), then publish
    // while they reconnect: those messages never reach A's listener.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    for i in 2..=6 {
        publish_one(&b, "t", json!(i)).await;
    }
    for seq in 2..=6 {
        let event = next_json(&mut on_a).await;
        assert_eq!(
            event["type"], "event",
            "a gap must be filled, not reset: {event}"
        );
        assert_eq!(event["seq"], seq);
    }
    publish_one(&a, "t", json!(7)).await;
    assert_eq!(next_json(&mut on_a).await["seq"], 7);
}

#[tokio::test]
#[cfg_attr(
    not(switchyard_test_redis),
    ignore = "needs Redis: set SWITCHYARD_TEST_REDIS=redis://127.0.0.1:6379 and install redis-server"
)]
async fn an_unreadable_history_entry_means_a_reset_never_a_hole_or_a_stall() {
    let Some(url) = redis_url("Redis backplane tests") else {
        return;
    };
    let prefix = unique_prefix("unreadable");
    let a = replica(&url, &prefix, &[]).await;
    let mut on_a = connect(&a, "").await;
    let epoch = hello(&mut on_a).await["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        publish_one(&a, "t", json!(i)).await;
        assert_eq!(next_json(&mut on_a).await["seq"], i);
    }
    // Seq 4 exists but its history entry cannot be read, and no message
    // announces it: only the periodic check can see that A is behind.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .cmd("RPUSH")
        .arg(format!("{prefix}history"))
        .arg("{not an event")
        .ignore()
        .cmd("INCR")
        .arg(format!("{prefix}seq"))
        .ignore()
        .query_async(&mut admin)
        .await
        .unwrap();
    let reset = next_json(&mut on_a).await;
    assert_eq!(
        (
            reset["type"].as_str(),
            reset["epoch"].as_str(),
            reset["seq"].as_u64()
        ),
        (Some("reset"), Some(epoch.as_str()), Some(4)),
        "{reset}"
    );
    // Not stalled: the next event follows.
    assert_eq!(publish_one(&a, "t", json!(5)).await, 5);
    assert_eq!(next_json(&mut on_a).await["seq"], 5);
    // A resume across the entry is not served with a hole.
    let mut resuming = connect(&a, &format!("?epoch={epoch}&since=2")).await;
    let hello_r = hello(&mut resuming).await;
    assert_eq!(
        (hello_r["resumed"].as_bool(), hello_r["seq"].as_u64()),
        (Some(false), Some(5))
    );
    let polled =
        json_body(get(&a.url(&format!("/_switchyard/state?epoch={epoch}&since=2"))).await).await;
    assert_eq!(polled["resumed"], false, "{polled}");
    // From after it, resuming works.
    let mut after = connect(&a, &format!("?epoch={epoch}&since=4")).await;
    assert_eq!(hello(&mut after).await["resumed"], true);
    assert_eq!(next_json(&mut after).await["seq"], 5);
}

/// A wrong REDIS_URL is said at once (WARN, with the host, never the
/// password) and again with backoff, and `/health` says `degraded` (still
/// 200: a restart would not bring Redis back). Needs no Redis: nothing
/// listens on the port.
#[tokio::test]
async fn an_unreachable_redis_is_said_at_once_and_health_is_degraded() {
    let port = support::dead_port();
    let gateway = Gateway::start(&[(
        "REDIS_URL",
        &format!("redis://:hunter2-secret@127.0.0.1:{port}/0"),
    )])
    .await;
    let unreachable =
        "redis unreachable; retrying with backoff (publishes answer 503 until it is back)";
    let warned = gateway.wait_for_log(unreachable, 1).await;
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["host"], format!("127.0.0.1:{port}"));
    let (status, health) = gateway.health().await;
    assert_eq!(
        (status, health["status"].as_str(), health["redis"].as_str()),
        (200, Some("degraded"), Some("down")),
        "{health}"
    );
    // Said again while it stays down (2 s, then 4 s, … up to 60 s apart).
    let again = gateway.wait_for_log(unreachable, 2).await;
    assert!(again.len() >= 2);
    assert!(
        gateway.logs().iter().all(|line| !line.contains("hunter2")),
        "the password reached the log"
    );
}
