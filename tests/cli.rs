//! The binary's subcommands, run as a user would: `switchyard token`
//! (its output verifies with the gateway's own Verifier and carries the
//! claims and lifetime asked for), `switchyard hash-password` (its hash
//! verifies and works as BASIC_AUTH in a running gateway), `help`, and
//! exit code 2 with the problem named for every bad input.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use http::Method;
use support::*;
use switchyard::auth::token::{now_secs, Verifier};

const SECRET: &str = "cli-test-secret-0123456789abcdef-xyz";

fn switchyard(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run switchyard");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("switchyard output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn token_prints_a_token_the_gateway_accepts() {
    let output = switchyard(
        &[
            "token",
            "--subscribe",
            "positions/#",
            "--subscribe=trades,quotes/+",
            "--publish",
            "orders/+",
            "--ttl",
            "1h",
            "--sub",
            "alice",
        ],
        &[("AUTH_SECRET", SECRET)],
        b"",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert_eq!(
        printed.lines().count(),
        1,
        "only the token on stdout: {printed}"
    );
    let grant = Verifier::new(SECRET)
        .verify(printed.trim())
        .expect("verifies");
    let names = |patterns: &[switchyard::hub::topics::Pattern]| {
        patterns
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&grant.subscribe),
        ["positions/#", "trades", "quotes/+"]
    );
    assert_eq!(names(&grant.publish), ["orders/+"]);
    assert_eq!(grant.subject.as_deref(), Some("alice"));
    assert!(!grant.admin);
    let exp = grant
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let now = now_secs();
    assert!(
        (now + 3590..=now + 3600).contains(&exp),
        "exp {exp}, now {now}"
    );
    // Signed with another secret, it does not verify.
    assert!(Verifier::new(&"x".repeat(32))
        .verify(printed.trim())
        .is_err());

    let admin = switchyard(
        &["token", "--admin", "--ttl", "90s"],
        &[("AUTH_SECRET", SECRET)],
        b"",
    );
    assert!(admin.status.success(), "{}", stderr(&admin));
    let grant = Verifier::new(SECRET).verify(stdout(&admin).trim()).unwrap();
    assert!(grant.admin);
}

/// Arguments, environment, and what stderr must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn token_names_what_is_wrong_and_exits_2() {
    let cases: [Case; 7] = [
        (
            &["token", "--subscribe", "a/#", "--ttl", "1h"],
            &[],
            "AUTH_SECRET",
        ),
        (
            &["token", "--subscribe", "a/#", "--ttl", "1h"],
            &[("AUTH_SECRET", "too-short")],
            "AUTH_SECRET",
        ),
        (
            &["token", "--subscribe", "a/#,a/#/b", "--ttl", "1h"],
            &[("AUTH_SECRET", SECRET)],
            "a/#/b",
        ),
        (
            &["token", "--subscribe", "a/#", "--ttl", "soon"],
            &[("AUTH_SECRET", SECRET)],
            "--ttl",
        ),
        (
            &["token", "--subscribe", "a/#"],
            &[("AUTH_SECRET", SECRET)],
            "--ttl",
        ),
        (
            &["token", "--ttl", "1h"],
            &[("AUTH_SECRET", SECRET)],
            "--subscribe",
        ),
        (
            &["token", "--subscribe", "a/#", "--ttl", "1h", "--expire"],
            &[("AUTH_SECRET", SECRET)],
            "--expire",
        ),
    ];
    for (args, env, named) in cases {
        let output = switchyard(args, env, b"");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
        let message = stderr(&output);
        assert!(message.contains(named), "{args:?}: {message}");
        assert!(!message.contains(SECRET), "{message}");
    }
}

#[test]
fn help_and_unknown_commands() {
    for help in ["help", "--help", "-h"] {
        let output = switchyard(&[help], &[], b"");
        assert!(output.status.success());
        assert!(stdout(&output).contains("switchyard token"));
        assert!(stdout(&output).contains("hash-password"));
    }
    // Every variable, with its default, under its group.
    let help = stdout(&switchyard(&["--help"], &[], b""));
    for (group, vars) in switchyard::config::GROUPS {
        assert!(
            help.contains(&format!("\n{group}:\n")),
            "{group} missing:\n{help}"
        );
        for v in vars.iter() {
            assert!(
                help.contains(&format!("{}={}", v.name, v.default)),
                "{} missing:\n{help}",
                v.name
            );
        }
    }
    assert!(help.contains("PORT=8080"), "{help}");
    let output = switchyard(&["frobnicate"], &[], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(stdout(&output).is_empty());
    assert!(stderr(&output).contains("frobnicate"));
    assert!(stderr(&output).contains("Usage:"));
    let output = switchyard(&["hash-password", "extra"], &[], b"");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn hash_password_refuses_empty_and_over_long_passwords() {
    let empty = switchyard(&["hash-password"], &[], b"\n");
    assert_eq!(empty.status.code(), Some(2));
    assert!(stdout(&empty).is_empty());
    let long = switchyard(&["hash-password"], &[], &[b'x'; 80]);
    assert_eq!(long.status.code(), Some(2));
    assert!(stderr(&long).contains("71 bytes"), "{}", stderr(&long));
}

#[tokio::test]
async fn hash_password_output_logs_into_a_gateway() {
    let password = "s3cret with spaces";
    let output = switchyard(&["hash-password"], &[], format!("{password}\n").as_bytes());
    assert!(output.status.success(), "{}", stderr(&output));
    let hash = stdout(&output).trim().to_owned();
    assert!(hash.starts_with("$2y$10$"), "{hash}");
    assert!(bcrypt::verify(password, &hash).unwrap());
    assert!(!bcrypt::verify("s3cret", &hash).unwrap());
    // A line ending in \r\n (Windows) hashes the same password.
    let crlf = switchyard(
        &["hash-password"],
        &[],
        format!("{password}\r\n").as_bytes(),
    );
    assert!(bcrypt::verify(password, stdout(&crlf).trim()).unwrap());

    let basic_auth_var = format!("ops:{hash}");
    let gateway = Gateway::start(&[("BASIC_AUTH", &basic_auth_var)]).await;
    let url = gateway.url("/_switchyard/config");
    let refused = request_with(Method::GET, &url, &[], "").await;
    assert_eq!(refused.status(), 401);
    let right = basic_auth("ops", password);
    let admitted = request_with(Method::GET, &url, &[("authorization", &right)], "").await;
    assert_eq!(admitted.status(), 200);
    let wrong = basic_auth("ops", "s3cret");
    let refused = request_with(Method::GET, &url, &[("authorization", &wrong)], "").await;
    assert_eq!(refused.status(), 401);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for line in gateway.logs() {
        assert!(
            !line.contains(password) && !line.contains(&hash[7..]),
            "{line}"
        );
    }
}
