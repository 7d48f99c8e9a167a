//! Shared test helpers: the real gateway binary as a child process, a real
//! upstream HTTP + WebSocket server, and a small HTTP client over real TCP.
#![allow(dead_code)]

pub mod process;
pub mod upstream;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The `switchyard` binary, started with `PORT=0` and JSON logs.
pub struct Gateway {
    child: Child,
    /// Where it listens (on 127.0.0.1).
    pub addr: SocketAddr,
    /// Every stdout line so far (one JSON object each).
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway with `env` on top of a clean environment and waits
    /// for its `listening` line.
    pub async fn start(env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_prefix(&[], env).await
    }

    /// Like `start`, with the binary run through `prefix` (e.g. `prlimit …`).
    pub async fn start_with_prefix(prefix: &[&str], env: &[(&str, &str)]) -> Gateway {
        let binary = env!("CARGO_BIN_EXE_switchyard");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn switchyard");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if is_listening_line(&value) {
                        let port: u16 = value["addr"]
                            .as_str()
                            .and_then(|a| a.rsplit(':').next())
                            .and_then(|p| p.parse().ok())
                            .expect("port in listening line");
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(SocketAddr::from(([127, 0, 0, 1], port)));
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(20), addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!("gateway did not start; logs: {:#?}", logs.lock().unwrap()),
        };
        Gateway { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("gateway still running")
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("gateway exits in time")
            .expect("wait for gateway")
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines (parsed) whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|value| value["message"] == message)
            .collect()
    }

    /// Waits (up to 10 s) until at least `at_least` log lines carry
    /// `message`, then returns all of them. The logs are read by a task of
    /// the test's runtime, so a line the gateway has written may not be in
    /// `log_events` yet.
    pub async fn wait_for_log(&self, message: &str, at_least: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.log_events(message);
            if events.len() >= at_least || tokio::time::Instant::now() >= deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `(VmRSS, VmHWM)` of the gateway process in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
                .expect("memory field")
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// GET /health as JSON (status code, body).
    pub async fn health(&self) -> (u16, serde_json::Value) {
        let response = get(&self.url("/health")).await;
        let status = response.status().as_u16();
        (status, json_body(response).await)
    }

    /// Polls /health until `upstream` reads `want`.
    pub async fn wait_upstream(&self, want: &str) {
        for _ in 0..100 {
            let (_, body) = self.health().await;
            if body["upstream"] == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("upstream never became {want}: {:?}", self.health().await);
    }
}

/// Opens one HTTP/1.1 connection to the URL's host and sends `request` on it.
pub async fn send<B>(request: Request<B>) -> Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let authority = request.uri().authority().expect("absolute URL").to_string();
    let stream = TcpStream::connect(&authority).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection.with_upgrades());
    let mut request = request;
    if !request.headers().contains_key(http::header::HOST) {
        request
            .headers_mut()
            .insert(http::header::HOST, authority.parse().expect("host header"));
    }
    // Send the path only (origin-form), as a browser does.
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *request.uri_mut() = path.parse().expect("path");
    sender.send_request(request).await.expect("send request")
}

pub async fn get(url: &str) -> Response<Incoming> {
    send(Request::get(url).body(Empty::<Bytes>::new()).unwrap()).await
}

pub async fn post(url: &str, body: impl Into<Bytes>) -> Response<Incoming> {
    send(Request::post(url).body(Full::new(body.into())).unwrap()).await
}

pub async fn body_bytes(response: Response<Incoming>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes()
}

pub async fn text_body(response: Response<Incoming>) -> String {
    String::from_utf8(body_bytes(response).await.to_vec()).expect("utf-8 body")
}

pub async fn json_body(response: Response<Incoming>) -> serde_json::Value {
    let bytes = body_bytes(response).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("JSON body, got {:?}", String::from_utf8_lossy(&bytes)))
}

/// A 127.0.0.1 port on which nothing listens (bound, then released).
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A WebSocket client of the broadcaster.
pub type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects to `/ws` + `query` (e.g. `?topics=a/%23`).
pub async fn connect(gateway: &Gateway, query: &str) -> Client {
    let (client, _) = tokio_tungstenite::connect_async(gateway.ws_url(&format!("/ws{query}")))
        .await
        .expect("websocket connect");
    client
}

/// The next text frame as JSON (pings and pongs skipped); panics after 5 s.
pub async fn next_json(client: &mut Client) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("a frame within 5 s")
            .expect("connection open")
            .expect("valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code.
pub async fn close_code(client: &mut Client, limit: Duration) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Err(_) => panic!("no close within {limit:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
        }
    }
}

/// POSTs a publish body from loopback; answers (status, JSON).
pub async fn publish(gateway: &Gateway, body: &str) -> (u16, serde_json::Value) {
    let response = post(&gateway.url("/_switchyard/publish"), body.to_owned()).await;
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

/// Publishes `{"topic":topic,"data":data}` and answers its seq.
pub async fn publish_one(gateway: &Gateway, topic: &str, data: serde_json::Value) -> u64 {
    let body = serde_json::json!({"topic": topic, "data": data}).to_string();
    let (status, answer) = publish(gateway, &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["seq"].as_u64().expect("seq")
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which is in parentheses.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The gateway's start-up line (`switchyard 0.1.0 listening on http://…`),
/// which carries the bound address as `addr`.
pub fn is_listening_line(value: &serde_json::Value) -> bool {
    value["addr"].is_string()
        && value["message"]
            .as_str()
            .is_some_and(|m| m.contains(" listening on http://"))
}

/// The Redis of `SWITCHYARD_TEST_REDIS`; without it the caller says what it
/// skipped (`.ci/run` always sets it, so CI never skips).
pub fn redis_url(skipped: &str) -> Option<String> {
    match std::env::var("SWITCHYARD_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED: SWITCHYARD_TEST_REDIS is not set; {skipped} did not run");
            None
        }
    }
}

/// A key prefix no other test (or earlier run) uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("switchyard-test:{name}:{}:{nanos}:", std::process::id())
}

/// Whether `redis-server` can be run here; a fault test that needs its own
/// Redis says it skipped when not (CI installs it, so CI never skips).
pub fn redis_server_installed(skipped: &str) -> bool {
    let installed = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        // With SWITCHYARD_TEST_REDIS set (always in CI) the Redis tests are
        // meant to run: a missing redis-server is a failure, not a skip.
        assert!(
            std::env::var_os("SWITCHYARD_TEST_REDIS").is_none(),
            "SWITCHYARD_TEST_REDIS is set but redis-server is not installed: {skipped} cannot run"
        );
        eprintln!("SKIPPED: redis-server is not installed; {skipped} did not run");
    }
    installed
}

/// A private `redis-server` on a free port with its own directory (removed
/// on drop), `--save ''` and no AOF unless `extra` says otherwise. It can be
/// stopped and started again on the same port and directory.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: std::path::PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start(extra: &[&str]) -> PrivateRedis {
        let port = dead_port();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "switchyard-redis-{}-{port}-{nanos}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut redis = PrivateRedis {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// Starts the server (again), on the same port and directory.
    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut admin) = self.try_admin().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut admin).await;
                if pong.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid while it runs (for SIGSTOP / SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn try_admin(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// A fresh connection for the test's own commands.
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        self.try_admin().await.expect("connect to private redis")
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Waits for the server to exit on its own (after SHUTDOWN).
    pub async fn wait_exit(&mut self) {
        if let Some(mut child) = self.child.take() {
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("redis-server exits")
                .expect("wait for redis-server");
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `method url` with `headers` and `body` on a connection of its own.
pub async fn request_with(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Incoming> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(
        builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

/// POSTs a publish body with `headers`; answers (status, JSON).
pub async fn publish_with(
    gateway: &Gateway,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let url = gateway.url("/_switchyard/publish");
    let response = request_with(http::Method::POST, &url, headers, body).await;
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

/// `Basic base64(user:password)`, an Authorization header value.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A WebSocket handshake to `url` with extra `headers`: the client, or the
/// refusal's status code.
pub async fn ws_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("websocket request");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((client, _)) => Ok(client),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("websocket handshake to {url} failed: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Access control (AUTH_SECRET) helpers
// ---------------------------------------------------------------------------

/// An AUTH_SECRET for tests (32+ bytes).
pub const AUTH_SECRET: &str = "switchyard-test-auth-secret-0123456789";

/// An access token signed with [`AUTH_SECRET`]: `subscribe` and `publish`
/// patterns, `admin`, expiring `ttl_secs` from now (negative: already
/// expired).
pub fn access_token(subscribe: &[&str], publish: &[&str], admin: bool, ttl_secs: i64) -> String {
    use switchyard::auth::token::{mint, now_secs, Claims};
    let claims = Claims {
        exp: (now_secs() as i64 + ttl_secs) as u64,
        sub: Some("test-user".into()),
        subscribe: subscribe.iter().map(|p| p.to_string()).collect(),
        publish: publish.iter().map(|p| p.to_string()).collect(),
        admin,
    };
    mint(AUTH_SECRET, &claims).expect("mint a token")
}

/// GET with `Authorization: Bearer <token>` when a token is given.
pub async fn get_bearer(url: &str, token: Option<&str>) -> Response<Incoming> {
    let mut request = Request::get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(request.body(Empty::<Bytes>::new()).unwrap()).await
}

/// Connects to `/ws` + `query`, with `Authorization: Bearer <token>` when
/// one is given; a refused upgrade answers its status and JSON body.
pub async fn connect_bearer(
    gateway: &Gateway,
    query: &str,
    token: Option<&str>,
) -> Result<Client, (u16, serde_json::Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = gateway
        .ws_url(&format!("/ws{query}"))
        .into_client_request()
        .expect("websocket request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((client, _)) => Ok(client),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            Err((status, json))
        }
        Err(error) => panic!("websocket connect failed: {error}"),
    }
}

/// The next message of any kind (pings and pongs skipped), or `None` when
/// none comes within `limit`.
pub async fn next_message(
    client: &mut Client,
    limit: Duration,
) -> Option<tokio_tungstenite::tungstenite::Message> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(message))) => return Some(message),
            Ok(Some(Err(error))) => panic!("websocket error: {error}"),
            Ok(None) => panic!("connection ended without a close frame"),
        }
    }
}
