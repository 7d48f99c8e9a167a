//! Forged publishes from a real second address: a network namespace joined
//! to this host by a veth pair (10.77.X.2 in the namespace, 10.77.X.1 here),
//! with PUBLISH_TOKEN unset. 10.77.X.2 is a private address, so it is a
//! trusted proxy by default; it still never counts as loopback, whatever
//! `X-Forwarded-For`, `X-Real-IP` or `Forwarded` it sends.
//!
//! Needs root and `ip` (iproute2) and `curl`. Without them the test prints a
//! `SKIPPED` line and passes, unless SWITCHYARD_TEST_NETNS=1 (set by
//! .ci/run, which runs as root): then it fails and says why.

mod support;

use std::process::{Command, Output};

use support::{get, json_body, publish, Gateway};

/// A network namespace and a veth pair, removed on drop (a panic included).
struct Namespace {
    name: String,
    host_link: String,
    /// The host side's address, where the gateway is reached from inside.
    host_ip: String,
    /// The namespace's own address, the forger's.
    inner_ip: String,
}

impl Namespace {
    /// Creates the namespace and the pair on an unused 10.77.X.0/30.
    fn create() -> Result<Namespace, String> {
        let pid = std::process::id();
        let name = format!("swy-forge-{pid}");
        let host_link = format!("syh{pid}");
        let inner_link = format!("syn{pid}");
        let used = run("ip", &["-4", "-o", "addr", "show"])?;
        let used = String::from_utf8_lossy(&used.stdout).into_owned();
        let third = (0..250u32)
            .map(|i| (pid + i) % 250)
            .find(|x| !used.contains(&format!("10.77.{x}.")))
            .ok_or("no free 10.77.X.0/30")?;
        let host_ip = format!("10.77.{third}.1");
        let inner_ip = format!("10.77.{third}.2");
        // From here on, drop cleans up whatever was made.
        let namespace = Namespace {
            name,
            host_link,
            host_ip,
            inner_ip,
        };
        let ns = namespace.name.as_str();
        let host = namespace.host_link.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &[
                "link",
                "add",
                host,
                "type",
                "veth",
                "peer",
                "name",
                &inner_link,
            ],
            &["link", "set", &inner_link, "netns", ns],
            &[
                "addr",
                "add",
                &format!("{}/30", namespace.host_ip),
                "dev",
                host,
            ],
            &["link", "set", host, "up"],
            &[
                "netns",
                "exec",
                ns,
                "ip",
                "addr",
                "add",
                &format!("{}/30", namespace.inner_ip),
                "dev",
                &inner_link,
            ],
            &["netns", "exec", ns, "ip", "link", "set", &inner_link, "up"],
            &["netns", "exec", ns, "ip", "link", "set", "lo", "up"],
        ];
        for step in steps {
            let output = run("ip", step)?;
            if !output.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(namespace)
    }

    /// POSTs `body` with `headers` from inside the namespace (curl);
    /// answers the status code and the body.
    fn post(&self, url: &str, headers: &[&str], body: &str) -> (u16, String) {
        let mut args: Vec<&str> = vec![
            "netns",
            "exec",
            &self.name,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
        ];
        for header in headers {
            args.extend(["-H", header]);
        }
        args.extend(["--data-binary", body, url]);
        let output = run("ip", &args).expect("run curl in the namespace");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (answer, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl in the namespace gave no status: {text:?} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (status, answer.to_owned())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes the inner end, and with it the pair.
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &self.host_link]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("cannot run {program}: {error}"))
}

/// The namespace, or why there is none (after the SKIPPED line, or a panic
/// when SWITCHYARD_TEST_NETNS=1 demands it).
fn namespace_or_skip() -> Option<Namespace> {
    let required = std::env::var("SWITCHYARD_TEST_NETNS").is_ok_and(|v| v == "1");
    let is_root = run("id", &["-u"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let has_curl = run("curl", &["--version"]).is_ok_and(|o| o.status.success());
    let made = if !is_root {
        Err("not root".to_owned())
    } else if !has_curl {
        Err("curl is missing".to_owned())
    } else {
        Namespace::create()
    };
    match made {
        Ok(namespace) => Some(namespace),
        Err(why) if required => {
            panic!("SWITCHYARD_TEST_NETNS=1 but no network namespace could be made: {why}")
        }
        Err(why) => {
            println!("SKIPPED forged_publish: no network namespace ({why}); run as root with iproute2 and curl, or set SWITCHYARD_TEST_NETNS=1 to make this a failure");
            eprintln!("SKIPPED forged_publish: {why}");
            None
        }
    }
}

const FORGED: &str = r#"{"topic":"positions/X","data":{"forged":true},"retain":true}"#;

async fn retained(gateway: &Gateway) -> serde_json::Value {
    let state = json_body(get(&gateway.url("/_switchyard/state")).await).await;
    state["state"]["positions/X"].clone()
}

#[tokio::test]
async fn a_peer_off_loopback_cannot_publish_as_loopback() {
    let Some(namespace) = namespace_or_skip() else {
        return;
    };
    // Every address, PUBLISH_TOKEN unset, default TRUSTED_PROXIES.
    let gateway = Gateway::start(&[("HOST", "::")]).await;
    let (status, answer) = publish(
        &gateway,
        r#"{"topic":"positions/X","data":{"engine":1},"retain":true}"#,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let before = retained(&gateway).await;
    assert_eq!(before["data"], serde_json::json!({"engine": 1}));

    let url = format!(
        "http://{}:{}/_switchyard/publish",
        namespace.host_ip,
        gateway.addr.port()
    );
    let forgeries: [&[&str]; 10] = [
        &[],
        &["X-Forwarded-For: 127.0.0.1"],
        &["X-Real-IP: 127.0.0.1"],
        &["Forwarded: for=127.0.0.1"],
        &["X-Forwarded-For: ::1"],
        &["X-Forwarded-For: ::ffff:127.0.0.1"],
        &["X-Forwarded-For: 127.0.0.1, 127.0.0.1"],
        &["X-Forwarded-For: 127.0.0.1, 10.1.2.3"],
        &[
            "X-Forwarded-For: 127.0.0.1",
            "X-Real-IP: 127.0.0.1",
            "Forwarded: for=\"[::1]\"",
        ],
        &["X-Forwarded-For: [::1]:443"],
    ];
    for headers in forgeries {
        let (status, answer) = namespace.post(&url, headers, FORGED);
        println!(
            "from {}: {headers:?} -> {status} {answer}",
            namespace.inner_ip
        );
        assert_eq!(status, 401, "{headers:?} from the namespace: {answer}");
        assert!(answer.contains("not_publisher"), "{headers:?}: {answer}");
    }
    assert_eq!(
        retained(&gateway).await,
        before,
        "the retained state changed"
    );

    // The engine beside the gateway still publishes without a token.
    let (status, answer) = publish(&gateway, FORGED.replace("forged", "real").as_str()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        retained(&gateway).await["data"],
        serde_json::json!({"real": true})
    );
}
