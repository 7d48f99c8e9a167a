//! WORKER_COMMAND: the background process (the trading engine), supervised
//! by the same code as the dashboard. Real child processes through `sh`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::process::{
    alive, descendants, kill, pid_in, sigterm_leaves_nothing, wait_for, watch_death,
};
use support::{connect, dead_port, next_json, Gateway};

/// A file name of this test process's own in the temp directory.
fn temp_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "switchyard-worker-{name}-{}-{}",
        std::process::id(),
        dead_port()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// A worker that writes its own pid (not the supervisor shell's) to
/// `pid_file`, says `hello` and sleeps; `prefix` runs first.
fn sleeping_worker(prefix: &str, pid_file: &std::path::Path) -> String {
    format!(
        "{prefix}sh -c 'echo $$ > {}; echo worker says hello; exec sleep 600'",
        pid_file.display()
    )
}

/// Log lines (parsed) logged under `target`.
fn lines_of(gateway: &Gateway, target: &str) -> Vec<serde_json::Value> {
    gateway
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == target)
        .collect()
}

#[tokio::test]
async fn a_worker_that_exits_is_restarted_with_backoff_and_never_holds_readiness_back() {
    let gateway = Gateway::start(&[("WORKER_COMMAND", "echo engine up; exit 3")]).await;
    // Ready at once: the worker is not something /health waits for.
    let (status, health) = gateway.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["upstream"], "none");
    assert!(health["worker"]["restarts"].is_u64(), "{health}");
    assert!(health.get("restarts").is_none(), "no dashboard: {health}");

    // Restarts are due at about 0 s, 1 s and 3 s (backoff 1, 2, 4); the
    // fourth not before 7 s.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let restarts = gateway.log_events("restarting the worker");
    let backoffs: Vec<u64> = restarts
        .iter()
        .map(|l| l["backoff_secs"].as_u64().unwrap())
        .collect();
    assert_eq!(backoffs, [1, 2, 4]);
    assert!(restarts.iter().all(|l| l["target"] == "worker"));
    let exits = gateway.log_events("worker exited");
    assert!(
        exits.len() >= 3 && exits.iter().all(|e| e["code"] == 3),
        "{exits:?}"
    );
    // Its output, under its own target.
    let said: Vec<_> = lines_of(&gateway, "worker")
        .into_iter()
        .filter(|v| v["message"] == "engine up")
        .collect();
    assert!(said.len() >= 3, "{said:?}");
    assert_eq!(said[0]["stream"], "stdout");

    let (status, health) = gateway.health().await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["worker"]["restarts"], 3);
    assert_eq!(health["worker"]["state"], "restarting");
    let metrics =
        support::text_body(support::get(&gateway.url("/_switchyard/metrics")).await).await;
    assert!(
        metrics.contains("\nswitchyard_worker_restarts_total 3\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_worker_gets_the_switchyard_variables_and_its_events_reach_clients() {
    let env_file = temp_file("env");
    let command = format!(
        "env > {}; while true; do \
         curl -s -o /dev/null -H 'content-type: application/json' \
         -d '{{\"topic\":\"engine/tick\",\"data\":\"from the worker\"}}' \"$SWITCHYARD_PUBLISH_URL\"; \
         sleep 0.2; done",
        env_file.display()
    );
    let gateway = Gateway::start(&[
        ("WORKER_COMMAND", &command),
        ("RAILWAY_PUBLIC_DOMAIN", "app.up.railway.app"),
    ])
    .await;
    let mut client = connect(&gateway, "?topics=engine/%23").await;
    assert_eq!(next_json(&mut client).await["type"], "hello");
    let event = next_json(&mut client).await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["topic"], "engine/tick");
    assert_eq!(event["data"], "from the worker");

    let text = std::fs::read_to_string(&env_file).unwrap();
    let _ = std::fs::remove_file(&env_file);
    let vars: std::collections::HashMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    let port = gateway.addr.port();
    assert_eq!(
        vars.get("SWITCHYARD_PUBLISH_URL").copied(),
        Some(format!("http://127.0.0.1:{port}/_switchyard/publish").as_str())
    );
    assert_eq!(
        vars.get("SWITCHYARD_WS_URL").copied(),
        Some(format!("ws://127.0.0.1:{port}/ws").as_str())
    );
    assert_eq!(
        vars.get("WEBSOCKET_PUBLIC_URI").copied(),
        Some("wss://app.up.railway.app/ws")
    );
    assert_eq!(vars.get("WEBSOCKET_ENABLED").copied(), Some("true"));
    // Not the gateway's public port, not the gateway's own child settings.
    for absent in [
        "PORT",
        "WORKER_COMMAND",
        "DASHBOARD_COMMAND",
        "DASHBOARD_URL",
    ] {
        assert!(!vars.contains_key(absent), "{absent} in {text}");
    }
    let (_, health) = gateway.health().await;
    assert_eq!(health["worker"]["state"], "running");
    assert_eq!(health["worker"]["restarts"], 0);
}

#[tokio::test]
async fn beside_a_dashboard_each_child_logs_under_its_own_target_and_sigterm_stops_both() {
    let pid_file = temp_file("pid");
    let port = dead_port();
    let dashboard = format!(
        "HOST=127.0.0.1 LOG_FORMAT=json RUST_LOG=info exec {}",
        env!("CARGO_BIN_EXE_switchyard")
    );
    let mut gateway = Gateway::start(&[
        ("DASHBOARD_URL", &format!("http://127.0.0.1:{port}")),
        ("DASHBOARD_COMMAND", &dashboard),
        ("WORKER_COMMAND", &sleeping_worker("", &pid_file)),
        ("SHUTDOWN_GRACE_SECS", "6"),
    ])
    .await;
    let worker = pid_in(&pid_file).await;
    let _ = std::fs::remove_file(&pid_file);
    gateway.wait_upstream("up").await;
    let (status, health) = gateway.health().await;
    assert_eq!(status, 200);
    assert_eq!(health["restarts"], 0);
    assert_eq!(health["worker"]["state"], "running");
    wait_for("the worker's line", || {
        lines_of(&gateway, "worker")
            .iter()
            .any(|v| v["message"] == "worker says hello")
    })
    .await;
    assert!(lines_of(&gateway, "dashboard").iter().any(|v| v["message"]
        .as_str()
        .is_some_and(|m| m.contains(" listening on http://"))));
    assert!(!lines_of(&gateway, "dashboard")
        .iter()
        .any(|v| v["message"] == "worker says hello"));

    let family = descendants(gateway.pid());
    assert!(family.contains(&worker), "{family:?}");
    assert!(
        family.len() >= 4,
        "two shells, dashboard, worker: {family:?}"
    );
    sigterm_leaves_nothing(&mut gateway, &family, Duration::from_secs(6)).await;
    for child in ["worker", "dashboard"] {
        let stopping = gateway
            .wait_for_log(&format!("stopping the {child} (SIGTERM)"), 1)
            .await;
        assert_eq!(stopping.len(), 1, "{child}");
        assert_eq!(stopping[0]["target"], child);
    }
}

#[tokio::test]
async fn a_sigkilled_gateway_takes_its_worker_along() {
    let pid_file = temp_file("pid");
    let mut gateway = Gateway::start(&[("WORKER_COMMAND", &sleeping_worker("", &pid_file))]).await;
    let worker = pid_in(&pid_file).await;
    let _ = std::fs::remove_file(&pid_file);
    assert!(alive(worker));
    let family = descendants(gateway.pid());
    gateway.signal("KILL");
    gateway.wait_exit(Duration::from_secs(5)).await;
    let killed = Instant::now();
    wait_for("the orphaned worker to be gone", || {
        family.iter().all(|pid| !alive(*pid))
    })
    .await;
    println!(
        "worker gone {:?} after the gateway's SIGKILL",
        killed.elapsed()
    );
}

/// A worker whose processes ignore SIGTERM (an ignored signal stays ignored
/// across exec), with its pid in a file.
async fn stubborn_worker(grace: Duration) -> (Gateway, u32) {
    let pid_file = temp_file("stubborn");
    let gateway = Gateway::start(&[
        (
            "WORKER_COMMAND",
            &sleeping_worker("trap '' TERM; ", &pid_file),
        ),
        ("SHUTDOWN_GRACE_SECS", &grace.as_secs().to_string()),
    ])
    .await;
    let stubborn = pid_in(&pid_file).await;
    let _ = std::fs::remove_file(&pid_file);
    assert!(alive(stubborn));
    (gateway, stubborn)
}

#[tokio::test]
async fn a_worker_that_ignores_sigterm_is_killed_at_the_deadline() {
    let grace = Duration::from_secs(4);
    let (mut gateway, stubborn) = stubborn_worker(grace).await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive_during_grace = alive(stubborn);
    let code = gateway
        .wait_exit(grace + Duration::from_secs(2))
        .await
        .code();
    let exited_after = signalled.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let still_alive = alive(stubborn);
    if still_alive {
        kill(stubborn);
    }
    println!("gateway exited {exited_after:?} after SIGTERM (grace {grace:?})");
    assert_eq!(code, Some(0));
    assert!(alive_during_grace, "the worker got no SIGTERM grace");
    assert!(!still_alive, "the worker outlived the gateway");
    assert!(
        exited_after <= grace + Duration::from_secs(1),
        "{exited_after:?}"
    );
    // SIGKILLed by whichever comes first: the gateway at its deadline
    // ("still running at the deadline") or the child's shell at the end of
    // the grace it counts from its own SIGTERM.
    assert!(!gateway
        .wait_for_log("stopping the worker (SIGTERM)", 1)
        .await
        .is_empty());
}

#[tokio::test]
async fn a_worker_that_ignores_sigterm_is_gone_within_the_grace_after_the_gateway_is_sigkilled() {
    let grace = Duration::from_secs(3);
    let (mut gateway, stubborn) = stubborn_worker(grace).await;
    gateway.signal("KILL");
    gateway.wait_exit(Duration::from_secs(5)).await;
    let death = watch_death(stubborn, grace).await;
    death.assert_within_grace("worker", grace);
}
