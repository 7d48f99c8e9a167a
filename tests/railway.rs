//! The Railway deployment files: they parse, start the binary directly (a
//! shell as PID 1 would swallow SIGTERM), point the health check at
//! /health, and give the gateway a drain window it honours.

mod support;

use std::time::{Duration, Instant};

use support::upstream::Upstream;
use support::{get, Gateway};

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect("repo file")
}

/// A command that execs one program: no shell syntax around it.
fn execs_the_binary_directly(command: &str) {
    assert_eq!(
        command.split_whitespace().next(),
        Some("./bin/switchyard"),
        "{command}"
    );
    for shell_syntax in [";", "&&", "||", "|", "sh -c", "bash", "$(", "`"] {
        assert!(
            !command.contains(shell_syntax),
            "{command:?} contains {shell_syntax:?}"
        );
    }
}

#[test]
fn procfile_has_a_web_line_that_execs_the_binary() {
    let procfile = repo_file("Procfile");
    let web: Vec<&str> = procfile
        .lines()
        .filter_map(|line| line.strip_prefix("web:"))
        .map(str::trim)
        .collect();
    assert_eq!(web.len(), 1, "{procfile}");
    execs_the_binary_directly(web[0]);
}

#[test]
fn railway_json_checks_health_and_sizes_the_drain() {
    let config: serde_json::Value =
        serde_json::from_str(&repo_file("config/railway.json")).expect("valid JSON");
    let deploy = &config["deploy"];
    execs_the_binary_directly(deploy["startCommand"].as_str().expect("startCommand"));
    assert_eq!(
        deploy["startCommand"].as_str(),
        repo_file("Procfile")
            .trim()
            .strip_prefix("web:")
            .map(str::trim)
    );
    assert_eq!(deploy["healthcheckPath"], "/health");
    // Streamlit can take a while on a cold container.
    assert!(deploy["healthcheckTimeout"].as_u64().expect("a number") >= 120);
    assert_eq!(deploy["restartPolicyType"], "ON_FAILURE");
    // Railway rejects a string here; it must be a JSON number.
    let draining = deploy["drainingSeconds"]
        .as_u64()
        .expect("drainingSeconds is a number");
    assert!(draining >= 5);
    let build = config["build"]["buildCommand"]
        .as_str()
        .expect("buildCommand");
    assert!(build.contains("cargo build --release"));
    assert!(build.contains("bin/switchyard"));
}

#[test]
fn example_env_lists_every_variable() {
    let example = repo_file("config/example.env");
    let names = switchyard::config::GROUPS
        .iter()
        .flat_map(|(_, vars)| vars.iter().map(|v| v.name));
    for name in names {
        let listed = example.lines().any(|line| {
            line.trim_start_matches("# ")
                .starts_with(&format!("{name}="))
        });
        assert!(listed, "{name} missing from config/example.env");
    }
    // And the defaults written there are accepted as they are.
    let pairs: Vec<(String, String)> = example
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains('='))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    switchyard::Config::from_vars(pairs).expect("example.env parses");
}

#[tokio::test]
async fn railway_draining_seconds_bound_the_shutdown() {
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::start(&[
        ("DASHBOARD_URL", &upstream.url()),
        ("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "3"),
    ])
    .await;
    // A response that would outlast Railway's SIGKILL.
    let slow = tokio::spawn({
        let url = gateway.url("/slow?ms=8000");
        async move { get(&url).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "exit after {took:?}, past Railway's SIGKILL"
    );
    // The drain gets the 2 s grace less the 300 ms the loops have to
    // return (server::LOOP_EXIT_WAIT), and the loops return at once.
    assert!(
        took >= Duration::from_millis(1650),
        "grace of 2 s not used: {took:?}"
    );
    let _ = slow.await;
}

#[test]
fn the_configuration_page_documents_every_variable() {
    let page = repo_file("docs/configuration.md");
    let groups = switchyard::config::GROUPS
        .iter()
        .flat_map(|(_, vars)| vars.iter());
    for v in groups.chain(switchyard::config::OTHER_VARIABLES) {
        assert!(
            page.contains(&format!("`{}`", v.name)),
            "{} missing from docs/configuration.md",
            v.name
        );
    }
}
