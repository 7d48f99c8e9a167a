//! Bad configuration: exit code 2 and a message naming each variable.

use std::process::Command;

fn run_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env_clear()
        .env("PORT", "0")
        .envs(env.iter().copied())
        .output()
        .expect("run switchyard");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_bad_value_exits_2_naming_the_variable() {
    let cases = [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("HOST", "localhost:80"),
        ("WEBSOCKET_ENABLED", "perhaps"),
        ("WEBSOCKET_PATH", "ws"),
        ("WEBSOCKET_PATH", "/_switchyard/ws"),
        ("DASHBOARD_URL", "ftp://127.0.0.1:21"),
        ("DASHBOARD_URL", "http://127.0.0.1:8501/app"),
        ("DASHBOARD_URL", "127.0.0.1:8501"),
        ("UPSTREAM_TIMEOUT_SECS", "0"),
        ("UPSTREAM_TIMEOUT_SECS", "-5"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("CORS_ORIGINS", "example.com"),
        ("HISTORY_SIZE", "lots"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_MESSAGE_BYTES", "1.5"),
        ("CLIENT_QUEUE", "0"),
        ("PING_INTERVAL_SECS", "0"),
        ("SHUTDOWN_GRACE_SECS", "soon"),
        ("WRITE_TIMEOUT_SECS", "0"),
        ("MAX_PATTERNS_PER_CLIENT", "0"),
        ("MAX_RETAINED_BYTES", "10"),
        ("HISTORY_MAX_BYTES", "many"),
        ("MAX_TUNNELS", "0"),
        ("TUNNEL_IDLE_SECS", "-1"),
        ("REDIS_URL", "localhost:6379"),
        ("AUTH_SECRET", "too-short"),
        ("BASIC_AUTH", "alice:plaintext"),
        ("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "ten"),
        ("LOG_FORMAT", "xml"),
    ];
    for (name, value) in cases {
        let (code, stderr) = run_with(&[(name, value)]);
        assert_eq!(code, Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
        assert!(stderr.contains("expected"), "{name}={value}: {stderr}");
    }
}

#[test]
fn secrets_in_bad_values_are_not_echoed() {
    for (name, value) in [
        ("REDIS_URL", "http://user:hunter2-redis@redis.internal:6379"),
        ("AUTH_SECRET", "hunter2-short"),
        ("BASIC_AUTH", "alice:hunter2-not-bcrypt"),
    ] {
        let (code, stderr) = run_with(&[(name, value)]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "{name} echoed its value: {stderr}"
        );
    }
}

#[test]
fn all_problems_are_reported_together() {
    let (code, stderr) = run_with(&[
        ("PORT", "x"),
        ("LOG_FORMAT", "xml"),
        ("CLIENT_QUEUE", "none"),
    ]);
    assert_eq!(code, Some(2));
    for name in ["PORT", "LOG_FORMAT", "CLIENT_QUEUE"] {
        assert!(stderr.contains(name), "{stderr}");
    }
}

#[test]
fn a_taken_port_is_a_start_error_not_a_config_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env_clear()
        .env("PORT", &port)
        .env("HOST", "127.0.0.1")
        .output()
        .expect("run switchyard");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("cannot serve"));
}

/// A REDIS_URL that starts right but does not parse (a space in the host,
/// a port that is not a number, no host) is a config error like any other:
/// exit 2 naming REDIS_URL, without echoing the URL (it may hold a
/// password), not a start error from the Redis client.
#[test]
fn a_redis_url_that_does_not_parse_exits_2() {
    for value in [
        "redis://bad host:6379",
        "redis://:hunter2@bad host:6379",
        "redis://hunter2-host:port",
        "rediss://",
        "redis://127.0.0.1:6379/not-a-db",
    ] {
        let (code, stderr) = run_with(&[("REDIS_URL", value)]);
        assert_eq!(code, Some(2), "{value}: {stderr}");
        assert!(stderr.contains("REDIS_URL"), "{value}: {stderr}");
        assert!(stderr.contains("expected"), "{value}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{value} echoed: {stderr}");
    }
}
