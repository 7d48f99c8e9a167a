//! Sticky dashboard sessions across replicas (SPEC.md "Several replicas,
//! dashboard included"): real gateway processes, each with its own real
//! upstream, sharing one real Redis (SWITCHYARD_TEST_REDIS with a prefix of
//! the test's own, or a private `redis-server`).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::upstream::Upstream;
use support::{get, json_body, request_with, text_body, Gateway, PrivateRedis};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The shared Redis of one test: CI's with a fresh prefix, or a private one.
struct TestRedis {
    url: String,
    prefix: String,
    _private: Option<PrivateRedis>,
}

impl TestRedis {
    async fn start(name: &str) -> Option<TestRedis> {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_REDIS") {
            if !url.is_empty() {
                let prefix = support::unique_prefix(name);
                return Some(TestRedis {
                    url,
                    prefix,
                    _private: None,
                });
            }
        }
        if !support::redis_server_installed(name) {
            return None;
        }
        let private = PrivateRedis::start(&[]).await;
        Some(TestRedis {
            url: private.url(),
            prefix: "switchyard:".into(),
            _private: Some(private),
        })
    }

    async fn get(&self, key: &str) -> Option<String> {
        let client = redis::Client::open(self.url.as_str()).expect("redis url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        redis::cmd("GET")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut connection)
            .await
            .expect("GET")
    }
}

/// One replica: a gateway and its own dashboard.
struct Replica {
    gateway: Gateway,
    upstream: Upstream,
    id: String,
}

impl Replica {
    /// `explicit_url`: REPLICA_URL set to the port given; otherwise the
    /// gateway detects it (HOST=127.0.0.1 is what it finds).
    async fn start(redis: &TestRedis, explicit_url: bool) -> Replica {
        let upstream = Upstream::start().await;
        let dashboard = upstream.url();
        let port = support::dead_port().to_string();
        let replica_url = format!("http://127.0.0.1:{port}");
        let mut env = vec![
            ("DASHBOARD_URL", dashboard.as_str()),
            ("REDIS_URL", redis.url.as_str()),
            ("REDIS_PREFIX", redis.prefix.as_str()),
        ];
        if explicit_url {
            env.push(("PORT", port.as_str()));
            env.push(("REPLICA_URL", replica_url.as_str()));
        }
        let gateway = Gateway::start(&env).await;
        gateway.wait_upstream("up").await;
        let (_, health) = gateway.health().await;
        let id = health["replica"]
            .as_str()
            .unwrap_or_else(|| panic!("/health names the replica: {health}"))
            .to_owned();
        Replica {
            gateway,
            upstream,
            id,
        }
    }

    fn cookie(&self) -> String {
        format!("switchyard_replica={}", self.id)
    }

    /// Requests its dashboard saw on `path`.
    fn saw(&self, path: &str) -> usize {
        self.upstream
            .requests()
            .iter()
            .filter(|(_, uri, _)| uri.starts_with(path))
            .count()
    }
}

/// Polls every replica's /health until each knows `count` live replicas.
async fn wait_for_replicas(replicas: &[&Replica], count: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for replica in replicas {
        loop {
            let (_, health) = replica.gateway.health().await;
            if health["replicas"] == count {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} never knew {count} replicas: {health}",
                replica.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn set_cookie(response: &http::Response<hyper::body::Incoming>) -> Option<String> {
    response
        .headers()
        .get("set-cookie")
        .map(|value| value.to_str().expect("ascii cookie").to_owned())
}

/// The headers the dashboard saw, from `/inspect`'s answer.
fn inspected(answer: &serde_json::Value, name: &str) -> Option<String> {
    answer["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .find(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().expect("value").to_owned())
}

async fn three_replicas(name: &str) -> Option<(TestRedis, Replica, Replica, Replica)> {
    let redis = TestRedis::start(name).await?;
    let a = Replica::start(&redis, true).await;
    let b = Replica::start(&redis, false).await;
    let c = Replica::start(&redis, false).await;
    wait_for_replicas(&[&a, &b, &c], 3).await;
    Some((redis, a, b, c))
}

#[tokio::test]
async fn a_pinned_request_reaches_its_replica_http_and_websocket() {
    let Some((_redis, a, b, c)) = three_replicas("sticky-pinned").await else {
        return;
    };

    // No cookie: served by A, pinned to A.
    let response = get(&a.gateway.url("/inspect")).await;
    assert_eq!(response.status(), 200);
    let pin = set_cookie(&response).expect("the first answer pins the session");
    assert_eq!(
        pin,
        format!(
            "switchyard_replica={}; Path=/; HttpOnly; SameSite=Lax",
            a.id
        )
    );
    assert_eq!(a.saw("/inspect"), 1);
    // Over https (as a trusted edge says): the cookie is Secure.
    let response = request_with(
        Method::GET,
        &a.gateway.url("/inspect"),
        &[("x-forwarded-proto", "https")],
        "",
    )
    .await;
    assert_eq!(set_cookie(&response), Some(format!("{pin}; Secure")));

    // Pinned to B, sent to A by the balancer, from a trusted edge that says
    // https: B's dashboard sees what A's would have, and no key.
    let edge_headers = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example"),
        ("host", "app.example"),
    ];
    let mut headers = edge_headers.to_vec();
    let cookie_b = b.cookie();
    headers.push(("cookie", cookie_b.as_str()));
    let response = request_with(Method::GET, &a.gateway.url("/inspect?via=a"), &headers, "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(set_cookie(&response), None, "already pinned to B");
    let at_b = json_body(response).await;
    assert_eq!(b.saw("/inspect?via=a"), 1, "B's dashboard served it");
    assert_eq!(a.saw("/inspect?via=a"), 0);
    assert_eq!(c.saw("/inspect?via=a"), 0);

    let mut headers = edge_headers.to_vec();
    let cookie_a = a.cookie();
    headers.push(("cookie", cookie_a.as_str()));
    let response = request_with(Method::GET, &a.gateway.url("/inspect?direct"), &headers, "").await;
    let at_a = json_body(response).await;
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
    ] {
        assert_eq!(
            inspected(&at_b, name),
            inspected(&at_a, name),
            "{name}: B's dashboard sees what A's would"
        );
    }
    assert_eq!(
        inspected(&at_b, "x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(inspected(&at_b, "x-switchyard-replica-key"), None);
    assert_eq!(inspected(&at_b, "x-switchyard-hop"), None);

    // A body crosses the hop whole.
    let body = "x".repeat(1 << 20);
    let cookie_c = c.cookie();
    let response = request_with(
        Method::POST,
        &a.gateway.url("/upload"),
        &[("cookie", cookie_c.as_str())],
        &body,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(text_body(response).await, (1 << 20).to_string());
    assert_eq!((c.saw("/upload"), a.saw("/upload")), (1, 0));

    // A WebSocket pinned to C, opened on B: echoed by C's dashboard.
    let url = b.gateway.ws_url("/_stcore/stream");
    let mut socket = support::ws_connect_with(&url, &[("cookie", cookie_c.as_str())])
        .await
        .expect("tunnel through B to C");
    socket
        .send(Message::Text("ping through two hops".into()))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("frame");
    assert_eq!(echoed, Message::Text("ping through two hops".into()));
    assert_eq!(c.saw("/_stcore/stream"), 1);
    assert_eq!((a.saw("/_stcore/stream"), b.saw("/_stcore/stream")), (0, 0));
    drop(socket);

    // The metrics count what each replica forwarded.
    let metrics = text_body(get(&a.gateway.url("/_switchyard/metrics")).await).await;
    assert!(
        metrics.contains("switchyard_replica_forwarded_requests_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_replicas 3"), "{metrics}");
    let metrics = text_body(get(&b.gateway.url("/_switchyard/metrics")).await).await;
    assert!(
        metrics.contains("switchyard_replica_forwarded_requests_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_cookie_of_a_dead_or_unknown_replica_is_served_here_and_pinned_again() {
    let Some((_redis, a, b, mut c)) = three_replicas("sticky-dead").await else {
        return;
    };
    let response = request_with(
        Method::GET,
        &a.gateway.url("/unknown"),
        &[("cookie", "theme=dark; switchyard_replica=0123456789abcdef")],
        "",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        set_cookie(&response).as_deref(),
        Some(a.cookie().as_str())
            .map(|c| format!("{c}; Path=/; HttpOnly; SameSite=Lax"))
            .as_deref()
    );
    assert_eq!(a.saw("/unknown"), 1);

    // C is SIGKILLed. A GET of C's session that A forwards and C fails
    // (before A's registry notices) is answered 307 to the same URL,
    // pinned to A: the browser asks again and A serves it. Never a 502.
    let mut cookie = c.cookie();
    c.gateway.signal("KILL");
    let killed = Instant::now();
    c.gateway.wait_exit(Duration::from_secs(5)).await;
    let mut redirects = 0;
    loop {
        let response = request_with(
            Method::GET,
            &a.gateway.url("/after-kill?x=1"),
            &[("cookie", cookie.as_str())],
            "",
        )
        .await;
        if cookie != a.cookie() {
            let pin = set_cookie(&response).expect("pinned again");
            assert!(pin.starts_with(&a.cookie()), "{pin}");
        }
        match response.status().as_u16() {
            200 => break,
            307 => {
                assert_eq!(response.headers()["location"], "/after-kill?x=1");
                redirects += 1;
                assert_eq!(redirects, 1, "one redirect re-pins the session");
                cookie = a.cookie();
            }
            other => panic!("{other} for C's session after the kill"),
        }
    }
    eprintln!(
        "C's session served by A {:?} after the SIGKILL, after {redirects} redirect(s)",
        killed.elapsed()
    );
    assert_eq!(a.saw("/after-kill"), 1);
    let said = a
        .gateway
        .wait_for_log("replica failed; its sessions are served where they land", 1)
        .await;
    assert_eq!(said.len(), 1, "A says once that C failed");
    wait_for_replicas(&[&a, &b], 2).await;
}

#[tokio::test]
async fn the_hop_refuses_a_forged_forward_and_never_loops() {
    let Some((redis, a, b, _c)) = three_replicas("sticky-hop").await else {
        return;
    };
    let cookie_b = b.cookie();
    for forged in [
        vec![("x-switchyard-hop", b.id.as_str())],
        vec![
            ("x-switchyard-hop", b.id.as_str()),
            ("x-switchyard-replica-key", "not-the-key"),
        ],
        vec![("x-switchyard-replica-key", "")],
    ] {
        let mut headers = forged.clone();
        headers.push(("cookie", cookie_b.as_str()));
        let response = request_with(Method::GET, &a.gateway.url("/forged"), &headers, "").await;
        assert_eq!(response.status(), 403, "{forged:?}");
        let answer = json_body(response).await;
        assert!(
            answer["error"].as_str().unwrap_or("").contains("key"),
            "{answer}"
        );
    }
    let ws = support::ws_connect_with(
        &a.gateway.ws_url("/_stcore/stream"),
        &[("x-switchyard-hop", "x"), ("cookie", cookie_b.as_str())],
    )
    .await;
    assert_eq!(ws.err(), Some(403), "a forged WebSocket hop");
    assert_eq!((a.saw("/forged"), b.saw("/forged")), (0, 0));
    assert_eq!(a.saw("/_stcore/stream") + b.saw("/_stcore/stream"), 0);

    // With the key (a replica's hop), a request is served where it lands,
    // whatever its cookie says: never forwarded a second time.
    let key = redis.get("replica-key").await.expect("the shared key");
    assert_eq!(key.len(), 64);
    let response = request_with(
        Method::GET,
        &a.gateway.url("/inspect?hop"),
        &[
            ("x-switchyard-replica-key", key.as_str()),
            ("x-switchyard-hop", b.id.as_str()),
            ("cookie", cookie_b.as_str()),
        ],
        "",
    )
    .await;
    assert_eq!(response.status(), 200);
    let seen = json_body(response).await;
    assert_eq!((a.saw("/inspect?hop"), b.saw("/inspect?hop")), (1, 0));
    assert_eq!(inspected(&seen, "x-switchyard-replica-key"), None);
    assert_eq!(inspected(&seen, "x-switchyard-hop"), None);
}

#[tokio::test]
async fn without_redis_nothing_is_pinned() {
    let upstream = Upstream::start().await;
    let dashboard = upstream.url();
    let gateway = Gateway::start(&[("DASHBOARD_URL", dashboard.as_str())]).await;
    gateway.wait_upstream("up").await;
    let response = get(&gateway.url("/page")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(set_cookie(&response), None);
    let (_, health) = gateway.health().await;
    assert!(health.get("replicas").is_none(), "{health}");
}

/// Sends `count` GETs on one keep-alive connection; each round trip's time.
async fn round_trips(url: &str, cookie: &str, count: usize) -> Vec<Duration> {
    let uri: http::Uri = url.parse().expect("url");
    let authority = uri.authority().expect("authority").to_string();
    let stream = TcpStream::connect(&authority).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let request = Request::get(uri.path())
            .header("host", &authority)
            .header("cookie", cookie)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let started = Instant::now();
        let response = sender.send_request(request).await.expect("answer");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
        times.push(started.elapsed());
    }
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// The benchmark figure: what the hop adds to a request, against the same
/// request served directly, in the same run (printed, not asserted: a
/// timing assertion on a shared machine would be a coin toss).
#[tokio::test]
async fn forwarded_request_overhead() {
    let Some(redis) = TestRedis::start("sticky-overhead").await else {
        return;
    };
    let a = Replica::start(&redis, true).await;
    let b = Replica::start(&redis, false).await;
    wait_for_replicas(&[&a, &b], 2).await;
    const WARMUP: usize = 50;
    const COUNT: usize = 1000;
    let url = a.gateway.url("/hello");
    let _ = round_trips(&url, &a.cookie(), WARMUP).await;
    let _ = round_trips(&url, &b.cookie(), WARMUP).await;
    let mut direct = Vec::new();
    let mut forwarded = Vec::new();
    // Interleaved in rounds, so a noisy moment hits both alike.
    for _ in 0..5 {
        direct.extend(round_trips(&url, &a.cookie(), COUNT / 5).await);
        forwarded.extend(round_trips(&url, &b.cookie(), COUNT / 5).await);
    }
    direct.sort();
    forwarded.sort();
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (f50, f99) = (percentile(&forwarded, 0.5), percentile(&forwarded, 0.99));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "replica hop, {COUNT} GETs each on one keep-alive connection (debug build unless --release):\n  \
         direct    p50 {:.3} ms  p99 {:.3} ms\n  \
         forwarded p50 {:.3} ms  p99 {:.3} ms\n  \
         added     p50 {:+.3} ms  p99 {:+.3} ms",
        ms(d50),
        ms(d99),
        ms(f50),
        ms(f99),
        ms(f50) - ms(d50),
        ms(f99) - ms(d99),
    );
    assert_eq!(a.saw("/hello"), WARMUP + COUNT);
    assert_eq!(b.saw("/hello"), WARMUP + COUNT);
}
