//! DASHBOARD_COMMAND: a real child process, supervised. The child here is a
//! second switchyard binary (a real HTTP + WebSocket server) started through
//! the shell, exactly as a Streamlit command would be.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::process::{
    alive, children, descendants, pid_in, sigterm_leaves_nothing, wait_for, watch_death,
};
use support::{dead_port, get, text_body, Gateway};
use tokio_tungstenite::tungstenite::Message;

/// The dashboard: switchyard itself with its own WebSocket at the path
/// Streamlit uses, on the port the gateway hands it in `PORT`.
fn child_command(prefix: &str) -> String {
    format!(
        "{prefix}echo \"child sees publish=$SWITCHYARD_PUBLISH_URL ws=$SWITCHYARD_WS_URL public=$WEBSOCKET_PUBLIC_URI enabled=$WEBSOCKET_ENABLED port=$PORT\"; \
         HOST=127.0.0.1 WEBSOCKET_PATH=/_stcore/stream LOG_FORMAT=json RUST_LOG=info exec {}",
        env!("CARGO_BIN_EXE_switchyard")
    )
}

#[tokio::test]
async fn supervises_a_child_restarts_it_after_a_crash_and_logs_its_output() {
    let port = dead_port();
    let dashboard = format!("http://127.0.0.1:{port}");
    let command = child_command("");
    let gateway = Gateway::start(&[
        ("DASHBOARD_URL", &dashboard),
        ("DASHBOARD_COMMAND", &command),
        ("RAILWAY_PUBLIC_DOMAIN", "app.up.railway.app"),
    ])
    .await;
    gateway.wait_upstream("up").await;
    let (status, health) = gateway.health().await;
    assert_eq!(status, 200);
    assert_eq!(health["restarts"], 0);

    // The child got the switchyard variables and its own port.
    let logs = gateway.logs().join("\n");
    let expected = format!(
        "child sees publish=http://127.0.0.1:{gw}/_switchyard/publish ws=ws://127.0.0.1:{gw}/ws \
         public=wss://app.up.railway.app/ws enabled=true port={port}",
        gw = gateway.addr.port()
    );
    assert!(logs.contains(&expected), "{logs}");
    // Its output is in our log, line by line, under target `dashboard`.
    let lines = gateway.logs();
    let child_line = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["target"] == "dashboard"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(" listening on http://"))
        })
        .expect("the child's own listening line, forwarded");
    assert_eq!(child_line["stream"], "stdout");

    // HTTP and WebSocket reach the child through the gateway.
    let page = text_body(get(&gateway.url("/")).await).await;
    assert!(page.contains("switchyard"));
    let (mut socket, _) = tokio_tungstenite::connect_async(gateway.ws_url("/_stcore/stream"))
        .await
        .unwrap();
    let hello = socket.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"hello\""));
    socket.send(Message::Close(None)).await.unwrap();

    // Crash it.
    let shell = children(gateway.pid());
    assert_eq!(shell.len(), 1, "one shell: {shell:?}");
    let victims = descendants(gateway.pid());
    for pid in &victims {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
    gateway.wait_upstream("down").await;
    let response = get(&gateway.url("/")).await;
    assert_eq!(response.status(), 502);
    // Restarted after 1 s, and serving again.
    gateway.wait_upstream("up").await;
    let (_, health) = gateway.health().await;
    assert_eq!(health["restarts"], 1);
    assert_eq!(get(&gateway.url("/")).await.status(), 200);
    let metrics = text_body(get(&gateway.url("/_switchyard/metrics")).await).await;
    assert!(
        metrics.contains("\nswitchyard_dashboard_restarts_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nswitchyard_upstream_up 1\n"),
        "{metrics}"
    );
    let exits = gateway.wait_for_log("dashboard exited", 1).await;
    assert!(!exits.is_empty());
    assert!(
        exits[0]["status"].as_str().unwrap().contains("signal"),
        "{:?}",
        exits[0]
    );
    assert_eq!(
        gateway.wait_for_log("restarting the dashboard", 1).await[0]["backoff_secs"],
        1
    );
}

#[tokio::test]
async fn a_child_that_keeps_failing_backs_off_exponentially() {
    let gateway = Gateway::start(&[
        (
            "DASHBOARD_URL",
            &format!("http://127.0.0.1:{}", dead_port()),
        ),
        (
            "DASHBOARD_COMMAND",
            "echo failing; echo; echo 'No such file: app.py' >&2; exit 3",
        ),
    ])
    .await;
    // Restarts are due at about 0 s, 1 s and 3 s (backoff 1, 2, 4); the
    // fourth not before 7 s.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let backoffs: Vec<u64> = gateway
        .log_events("restarting the dashboard")
        .iter()
        .map(|l| l["backoff_secs"].as_u64().unwrap())
        .collect();
    assert_eq!(backoffs, [1, 2, 4]);
    let exits = gateway.log_events("dashboard exited");
    assert!(exits.iter().all(|e| e["code"] == 3));
    // The exit is a warning that carries what the child said on stderr,
    // and the blank line it printed is not logged.
    assert!(exits.iter().all(|e| e["level"] == "WARN"
        && e["last_stderr"]
            .as_str()
            .is_some_and(|t| t.contains("No such file: app.py"))));
    assert!(gateway
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .all(|line| line["target"] != "dashboard" || line["message"] != ""));
    // Never answered: still starting, and the health check says so.
    let (status, health) = gateway.health().await;
    assert_eq!(status, 503);
    assert_eq!(health["status"], "starting");
    assert_eq!(health["restarts"], 3);
    // The page says why instead of "starting" forever.
    let response = get(&gateway.url("/")).await;
    assert_eq!(response.status(), 503);
    let page = text_body(response).await;
    assert!(
        page.contains("exits with code 3 before it answers") && page.contains("times in a row"),
        "{page}"
    );
}

#[tokio::test]
async fn until_the_child_answers_pages_say_starting() {
    let port = dead_port();
    let gateway = Gateway::start(&[
        ("DASHBOARD_URL", &format!("http://127.0.0.1:{port}")),
        ("DASHBOARD_COMMAND", &child_command("sleep 2; ")),
    ])
    .await;
    let (status, health) = gateway.health().await;
    assert_eq!((status, health["status"].as_str()), (503, Some("starting")));
    let response = get(&gateway.url("/anything")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    assert!(text_body(response).await.contains("starting"));
    gateway.wait_upstream("up").await;
    assert_eq!(get(&gateway.url("/")).await.status(), 200);
}

#[tokio::test]
async fn sigterm_stops_the_child_group_and_leaves_no_orphan() {
    let port = dead_port();
    let mut gateway = Gateway::start(&[
        ("DASHBOARD_URL", &format!("http://127.0.0.1:{port}")),
        ("DASHBOARD_COMMAND", &child_command("")),
        ("SHUTDOWN_GRACE_SECS", "6"),
    ])
    .await;
    gateway.wait_upstream("up").await;
    let family = descendants(gateway.pid());
    assert!(family.len() >= 2, "shell and dashboard: {family:?}");
    sigterm_leaves_nothing(&mut gateway, &family, Duration::from_secs(6)).await;
    assert!(!gateway
        .wait_for_log("stopping the dashboard (SIGTERM)", 1)
        .await
        .is_empty());
    // We stopped it: an INFO line, no warning about its exit status.
    let stopped = gateway.wait_for_log("dashboard stopped", 1).await;
    assert_eq!(stopped[0]["level"], "INFO");
    assert!(gateway.log_events("dashboard exited").is_empty());
}

#[tokio::test]
async fn a_sigkilled_gateway_takes_its_child_along() {
    let port = dead_port();
    let mut gateway = Gateway::start(&[
        ("DASHBOARD_URL", &format!("http://127.0.0.1:{port}")),
        ("DASHBOARD_COMMAND", &child_command("")),
    ])
    .await;
    gateway.wait_upstream("up").await;
    let family = descendants(gateway.pid());
    assert!(family.len() >= 2, "shell and dashboard: {family:?}");
    gateway.signal("KILL");
    gateway.wait_exit(Duration::from_secs(5)).await;
    wait_for("the orphaned child group to be gone", || {
        family.iter().all(|pid| !alive(*pid))
    })
    .await;
}

#[tokio::test]
async fn long_lines_from_both_streams_are_logged_whole() {
    let command = "for i in 1 2 3 4 5 6 7 8 9 10; do \
                   printf 'out%04d-%s\\n' $i $(head -c 3000 /dev/zero | tr '\\0' o) & \
                   printf 'err%04d-%s\\n' $i $(head -c 3000 /dev/zero | tr '\\0' e) >&2 & \
                   done; wait; sleep 60";
    let gateway = Gateway::start(&[
        (
            "DASHBOARD_URL",
            &format!("http://127.0.0.1:{}", dead_port()),
        ),
        ("DASHBOARD_COMMAND", command),
    ])
    .await;
    let lines = || -> Vec<serde_json::Value> {
        gateway
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "dashboard" && v.get("stream").is_some())
            .collect()
    };
    wait_for("20 forwarded lines", || lines().len() >= 20).await;
    for line in lines() {
        let message = line["message"].as_str().unwrap();
        let (tag, body) = message.split_once('-').unwrap();
        let expected = if tag.starts_with("out") { 'o' } else { 'e' };
        assert_eq!(body.len(), 3000, "{tag} cut or mixed");
        assert!(body.chars().all(|c| c == expected), "{tag} interleaved");
        assert_eq!(
            line["stream"],
            if expected == 'o' { "stdout" } else { "stderr" }
        );
    }
}

#[tokio::test]
async fn when_only_the_shell_dies_the_whole_group_is_replaced() {
    let port = dead_port();
    let gateway = Gateway::start(&[
        ("DASHBOARD_URL", &format!("http://127.0.0.1:{port}")),
        ("DASHBOARD_COMMAND", &child_command("")),
    ])
    .await;
    gateway.wait_upstream("up").await;
    let shell = children(gateway.pid());
    let old_dashboard: Vec<u32> = descendants(gateway.pid())
        .into_iter()
        .filter(|pid| !shell.contains(pid))
        .collect();
    assert_eq!((shell.len(), old_dashboard.len()), (1, 1));
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(shell[0].to_string())
        .status();

    wait_for("the orphaned dashboard to be killed", || {
        !alive(old_dashboard[0])
    })
    .await;
    wait_for("a restarted dashboard", || {
        descendants(gateway.pid())
            .iter()
            .any(|pid| !old_dashboard.contains(pid) && !shell.contains(pid))
    })
    .await;
    gateway.wait_upstream("up").await;
    assert_eq!(
        gateway.health().await.1["restarts"],
        1,
        "the restarted dashboard exited again: {:#?}",
        gateway.log_events("dashboard exited")
    );
    assert_eq!(get(&gateway.url("/")).await.status(), 200);
    // The new child got the port: no "address in use" exit after the restart.
    assert_eq!(gateway.wait_for_log("dashboard exited", 1).await.len(), 1);
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_within_the_grace_after_the_gateway_is_sigkilled() {
    let pid_file = std::env::temp_dir().join(format!(
        "switchyard-stubborn-{}-{}",
        std::process::id(),
        dead_port()
    ));
    let _ = std::fs::remove_file(&pid_file);
    // The command ignores SIGTERM, and so does the process it starts (an
    // ignored signal stays ignored across exec).
    let command = format!(
        "trap '' TERM; sh -c 'echo $$ > {}; exec sleep 600'",
        pid_file.display()
    );
    let grace = Duration::from_secs(3);
    let mut gateway = Gateway::start(&[
        (
            "DASHBOARD_URL",
            &format!("http://127.0.0.1:{}", dead_port()),
        ),
        ("DASHBOARD_COMMAND", &command),
        ("SHUTDOWN_GRACE_SECS", &grace.as_secs().to_string()),
    ])
    .await;
    let stubborn = pid_in(&pid_file).await;
    assert!(alive(stubborn));

    gateway.signal("KILL");
    gateway.wait_exit(Duration::from_secs(5)).await;
    // It had its grace: SIGTERM (ignored) first, not an immediate SIGKILL.
    let death = watch_death(stubborn, grace).await;
    let _ = std::fs::remove_file(&pid_file);
    death.assert_within_grace("child", grace);
}
